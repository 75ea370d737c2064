//! Interop with Node's udx-native 1.21.3 (the C libudx): a real `node` process runs
//! interop/node/udx-peer.js and exchanges data with our stream over 127.0.0.1.
//! Fails (never skips) when node or interop/node/node_modules is missing.

mod common;

use std::io::ErrorKind;
use std::net::SocketAddr;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use udx::{UdxSocket, UdxStream};

const RUST_ID: u32 = 8;
const NODE_ID: u32 = 7;

fn node_addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Sends `ours` bytes to the Node peer while it sends `theirs`; checks both by SHA-256.
async fn exchange_with_node(
    sock: &UdxSocket,
    stream: UdxStream,
    peer: &mut NodePeer,
    ours: usize,
    theirs: usize,
) {
    let (mut r, mut w) = tokio::io::split(stream);
    let send = tokio::spawn(async move { send_random(&mut w, ours, 42).await });
    let (got, got_hash) = recv_all(&mut r).await;
    let sent_hash = send.await.unwrap();
    let res = peer.result().await;
    assert_eq!(got as u64, res.get_u64("sent"), "bytes Node -> Rust");
    assert_eq!(got, theirs);
    assert_eq!(got_hash, res.get_str("sentSha256"), "Node -> Rust content");
    assert_eq!(res.get_u64("received") as usize, ours, "bytes Rust -> Node");
    assert_eq!(
        res.get_str("receivedSha256"),
        sent_hash,
        "Rust -> Node content"
    );
    drop(r);
    let _ = sock;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_256_mib_each_way() {
    let sock = UdxSocket::bind(localhost()).await.unwrap();
    let len = 256 * MIB;
    let mut peer = NodePeer::spawn(
        NODE_ID,
        RUST_ID,
        sock.local_addr().unwrap().port(),
        len,
        &[],
    )
    .await;
    let stream = sock.create_stream(RUST_ID).unwrap();
    stream.connect(NODE_ID, node_addr(peer.port)).unwrap();
    within(
        300,
        "256 MiB each way with Node",
        exchange_with_node(&sock, stream, &mut peer, len, len),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_256_mib_each_way_at_five_percent_loss() {
    let sock = UdxSocket::bind(localhost()).await.unwrap();
    let len = 256 * MIB;
    // Node must learn the forwarder's address as its peer, and the forwarder needs Node's
    // port: start Node unpaired, then tell it where to send.
    let rust_addr = sock.local_addr().unwrap();
    let mut peer = NodePeer::spawn_unpaired(NODE_ID, RUST_ID, len, &[]).await;
    let fwd = Forwarder::start(rust_addr, node_addr(peer.port), 0.05).await;
    peer.tell_port(fwd.for_b.port()).await;
    let stream = sock.create_stream(RUST_ID).unwrap();
    stream.connect(NODE_ID, fwd.for_a).unwrap();
    within(
        600,
        "256 MiB each way with Node at 5% loss",
        exchange_with_node(&sock, stream, &mut peer, len, len),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_half_close_in_both_directions() {
    // Node ends at once and only reads; we keep writing after its END.
    let sock = UdxSocket::bind(localhost()).await.unwrap();
    let mut peer =
        NodePeer::spawn(NODE_ID, RUST_ID, sock.local_addr().unwrap().port(), 0, &[]).await;
    let stream = sock.create_stream(RUST_ID).unwrap();
    stream.connect(NODE_ID, node_addr(peer.port)).unwrap();
    within(
        60,
        "Node ends first",
        exchange_with_node(&sock, stream, &mut peer, 8 * MIB, 0),
    )
    .await;

    // We end at once and only read; Node keeps writing after our END.
    let mut peer = NodePeer::spawn(
        NODE_ID + 10,
        RUST_ID + 10,
        sock.local_addr().unwrap().port(),
        8 * MIB,
        &[],
    )
    .await;
    let stream = sock.create_stream(RUST_ID + 10).unwrap();
    stream.connect(NODE_ID + 10, node_addr(peer.port)).unwrap();
    within(
        60,
        "Rust ends first",
        exchange_with_node(&sock, stream, &mut peer, 0, 8 * MIB),
    )
    .await;
    eventually(10, "streams finish", || sock.stream_count() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_destroy_in_both_directions() {
    let sock = UdxSocket::bind(localhost()).await.unwrap();

    // Node destroys after 1 MiB: our read fails with ConnectionReset.
    let mut peer = NodePeer::spawn(
        NODE_ID,
        RUST_ID,
        sock.local_addr().unwrap().port(),
        0,
        &["--destroy-after", "1048576"],
    )
    .await;
    let mut stream = sock.create_stream(RUST_ID).unwrap();
    stream.connect(NODE_ID, node_addr(peer.port)).unwrap();
    let err = within(60, "Node's DESTROY", async {
        let chunk = vec![1u8; 64 * 1024];
        loop {
            if let Err(e) = stream.write_all(&chunk).await {
                break e;
            }
            let mut probe = [0u8; 1];
            if let Ok(Err(e)) =
                tokio::time::timeout(std::time::Duration::from_millis(1), stream.read(&mut probe))
                    .await
            {
                break e;
            }
        }
    })
    .await;
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    let res = peer.result().await;
    assert_eq!(res.get_str("destroyed"), "true");

    // We destroy: the Node stream errors out.
    let mut peer = NodePeer::spawn(
        NODE_ID + 1,
        RUST_ID + 1,
        sock.local_addr().unwrap().port(),
        64 * MIB,
        &[],
    )
    .await;
    let mut stream = sock.create_stream(RUST_ID + 1).unwrap();
    stream.connect(NODE_ID + 1, node_addr(peer.port)).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    within(60, "first MiB from Node", stream.read_exact(&mut buf))
        .await
        .unwrap();
    stream.destroy();
    let res = within(30, "Node sees our DESTROY", peer.result()).await;
    assert_eq!(res.get_str("error"), "ECONNRESET");
}
