mod common;
use common::*;
use udx::UdxSocket;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_small_exchange() {
    let a = UdxSocket::bind(localhost()).await.unwrap();
    let b = UdxSocket::bind(localhost()).await.unwrap();
    let (sa, sb) = stream_pair(&a, &b, 1, 2).await;
    within(30, "exchange", exchange(sa, sb, 4 * MIB)).await;
}
