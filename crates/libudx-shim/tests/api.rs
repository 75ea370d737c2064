//! The libudx API of the shim over real UDP sockets on 127.0.0.1.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use libudx::{UdxError, UdxRuntime, UdxSocket, UdxStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

const STEP: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {STEP:?}"))
}

async fn bound_socket(runtime: &UdxRuntime) -> (UdxSocket, SocketAddr) {
    let socket = runtime.create_socket().await.unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = socket.local_addr().await.unwrap();
    (socket, addr)
}

/// Stream 1 on one socket dials stream 2 on another, which waits for its first packet and
/// reports to `seen` who sent it.
async fn dial_pair(
    accept: bool,
) -> (
    UdxStream,
    SocketAddr,
    UdxStream,
    oneshot::Receiver<(u16, IpAddr)>,
) {
    let runtime = UdxRuntime::new().unwrap();
    let (dialer_socket, dialer_addr) = bound_socket(&runtime).await;
    let (listener_socket, listener_addr) = bound_socket(&runtime).await;
    let dialer = runtime.create_stream(1).await.unwrap();
    let listener = runtime.create_stream(2).await.unwrap();
    let (seen_tx, seen) = oneshot::channel();
    listener
        .set_firewall_hook(&listener_socket, 1, move |_, port, ip| {
            let _ = seen_tx.send((port, ip));
            accept
        })
        .unwrap();
    dialer
        .connect(&dialer_socket, 2, listener_addr)
        .await
        .unwrap();
    (dialer, dialer_addr, listener, seen)
}

#[tokio::test]
async fn a_socket_is_unusable_until_bound_and_binds_once() {
    let runtime = UdxRuntime::new().unwrap();
    let socket = runtime.create_socket().await.unwrap();
    assert!(socket.inner().is_none());
    let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
    assert!(matches!(
        socket.send_to(b"x", peer),
        Err(UdxError::NotBound)
    ));
    assert!(matches!(socket.recv_start(), Err(UdxError::NotBound)));

    let (bound, addr) = bound_socket(&runtime).await;
    assert_eq!(bound.inner().unwrap().local_addr().unwrap(), addr);
    assert!(matches!(
        bound.bind("127.0.0.1:0".parse().unwrap()).await,
        Err(UdxError::AlreadyBound)
    ));
}

#[tokio::test]
async fn datagrams_reach_recv_start() {
    let runtime = UdxRuntime::new().unwrap();
    let (a, _) = bound_socket(&runtime).await;
    let (b, b_addr) = bound_socket(&runtime).await;
    let mut datagrams = b.recv_start().unwrap();
    a.send_to(b"dht message", b_addr).unwrap();
    let got = within("the datagram", datagrams.recv()).await.unwrap();
    assert_eq!(got.data, b"dht message");
    assert_eq!(got.addr, a.local_addr().await.unwrap());
}

#[tokio::test]
async fn streams_carry_bytes_both_ways_and_half_close() {
    let (dialer, dialer_addr, mut listener, seen) = dial_pair(true).await;
    dialer.write(b"hello").await.unwrap();
    let got = within("the listener's read", listener.read())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"hello");
    let (port, ip) = seen.await.expect("the firewall hook ran");
    assert_eq!(SocketAddr::new(ip, port), dialer_addr);

    let mut dialer = dialer.into_async_stream();
    listener.write(b"world").await.unwrap();
    listener.shutdown().await.unwrap();
    let mut back = Vec::new();
    within("the dialer's read to EOF", dialer.read_to_end(&mut back))
        .await
        .unwrap();
    assert_eq!(back, b"world");

    // Half-closed: the other direction still works.
    dialer.write_all(b"still open").await.unwrap();
    dialer.flush().await.unwrap();
    let got = within("the read after half-close", listener.read())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"still open");
    listener.destroy().await.unwrap();
}

#[tokio::test]
async fn a_rejected_first_sender_gets_no_data_through() {
    let (dialer, _, mut listener, seen) = dial_pair(false).await;
    dialer.write(b"let me in").await.unwrap();
    let refused = within("the listener's read", listener.read()).await;
    assert!(refused.is_err(), "read data from a rejected sender");
    assert!(seen.await.is_ok(), "the firewall hook never ran");
}

#[tokio::test]
async fn unconnected_streams_and_relays_fail_with_a_reason() {
    let runtime = UdxRuntime::new().unwrap();
    let mut stream = runtime.create_stream(7).await.unwrap();
    assert!(matches!(stream.read().await, Err(UdxError::NotConnected)));
    assert!(matches!(
        stream.write(b"x").await,
        Err(UdxError::NotConnected)
    ));
    let other = runtime.create_stream(8).await.unwrap();
    assert!(matches!(
        stream.relay_to(&other),
        Err(UdxError::Unsupported(_))
    ));

    let (socket, _) = bound_socket(&runtime).await;
    let (_peer_socket, peer) = bound_socket(&runtime).await;
    stream.connect(&socket, 9, peer).await.unwrap();
    assert!(matches!(
        stream.connect(&socket, 9, peer).await,
        Err(UdxError::AlreadyConnected)
    ));
    stream.destroy().await.unwrap();
}
