mod common;
use common::*;
use udx::UdxSocket;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_smoke() {
    let sock = UdxSocket::bind(localhost()).await.unwrap();
    let len = 8 * MIB;
    let mut peer = NodePeer::spawn(7, 8, sock.local_addr().unwrap().port(), len, &[]).await;
    let stream = sock.create_stream(8).unwrap();
    stream
        .connect(7, format!("127.0.0.1:{}", peer.port).parse().unwrap())
        .unwrap();
    let (mut r, mut w) = tokio::io::split(stream);
    let send = tokio::spawn(async move { send_random(&mut w, len, 9).await });
    let (got, got_hash) = within(60, "recv", recv_all(&mut r)).await;
    let sent_hash = send.await.unwrap();
    let res = within(60, "node result", peer.result()).await;
    assert_eq!(got, len);
    assert_eq!(got_hash, res.get_str("sentSha256"));
    assert_eq!(res.get_u64("received") as usize, len);
    assert_eq!(res.get_str("receivedSha256"), sent_hash);
}
