//! Relaying (`UdxStream::relay_to`): two peers whose streams meet only at a relay socket in
//! the middle, which passes packets on without taking part in the connection.

mod common;

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use common::{localhost, recv_all, send_random, MIB};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;
use udx::{wire, UdxSocket, UdxStream};

const T: Duration = Duration::from_secs(60);

/// Peer A's stream (id 1) and peer B's stream (id 2), joined by streams 10 and 11 on `relay`.
struct Relayed {
    a: UdxStream,
    b: UdxStream,
    ra: UdxStream,
    rb: UdxStream,
    relay_addr: SocketAddr,
    _sockets: [UdxSocket; 3],
}

async fn relayed() -> Relayed {
    let sa = UdxSocket::bind(localhost()).await.unwrap();
    let sb = UdxSocket::bind(localhost()).await.unwrap();
    let relay = UdxSocket::bind(localhost()).await.unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let ra = relay.create_stream(10).unwrap();
    let rb = relay.create_stream(11).unwrap();
    ra.relay_to(&rb).unwrap();
    rb.relay_to(&ra).unwrap();
    ra.connect(1, sa.local_addr().unwrap()).unwrap();
    rb.connect(2, sb.local_addr().unwrap()).unwrap();
    let a = sa.create_stream(1).unwrap();
    let b = sb.create_stream(2).unwrap();
    a.connect(10, relay_addr).unwrap();
    b.connect(11, relay_addr).unwrap();
    Relayed {
        a,
        b,
        ra,
        rb,
        relay_addr,
        _sockets: [sa, sb, relay],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_mib_each_way_pass_through_the_relay_intact() {
    let mut r = relayed().await;
    let (mut ar, mut aw) = tokio::io::split(&mut r.a);
    let (mut br, mut bw) = tokio::io::split(&mut r.b);
    let run = async {
        tokio::join!(
            send_random(&mut aw, 10 * MIB, 1),
            send_random(&mut bw, 10 * MIB, 2),
            recv_all(&mut ar),
            recv_all(&mut br),
        )
    };
    let (sent_a, sent_b, got_a, got_b) = timeout(T, run).await.expect("transfer timed out");
    assert_eq!(got_b, (10 * MIB, sent_a), "a -> b");
    assert_eq!(got_a, (10 * MIB, sent_b), "b -> a");
    // The relay streams forwarded, and took in nothing themselves.
    assert!(r.ra.stats().packets_sent == 0 && r.rb.stats().packets_sent == 0);
}

#[tokio::test]
async fn a_destroy_passes_through_and_ends_the_relaying() {
    let Relayed {
        mut a,
        mut b,
        ra,
        rb,
        ..
    } = relayed().await;
    a.write_all(b"hello").await.unwrap();
    let mut got = [0u8; 5];
    timeout(T, b.read_exact(&mut got)).await.unwrap().unwrap();
    assert_eq!(&got, b"hello");

    a.destroy();
    let err = timeout(Duration::from_secs(5), b.read(&mut got))
        .await
        .expect("b learns of the destroy at once")
        .expect_err("b's stream is reset");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset);
    timeout(Duration::from_secs(5), async {
        tokio::join!(ra.observer().done(), rb.observer().done())
    })
    .await
    .expect("both relay streams end");
    assert!(ra.stats().packets_received >= 2, "{:?}", ra.stats());
}

/// Sends, from a fresh socket bound to `from`, a DESTROY for the relay's stream 10 (A's way in).
async fn destroy_stream_10_from(from: SocketAddr, relay_addr: SocketAddr) {
    let sender = tokio::net::UdpSocket::bind(from).await.unwrap();
    let mut packet = [0u8; wire::HEADER_SIZE];
    wire::Header {
        flags: wire::FLAG_DESTROY,
        data_offset: 0,
        stream_id: 10,
        recv_window: 0,
        seq: 0,
        ack: 0,
    }
    .encode(&mut packet);
    sender.send_to(&packet, relay_addr).await.unwrap();
}

#[tokio::test]
async fn only_the_paired_peers_host_is_relayed() {
    let Relayed {
        mut a,
        mut b,
        ra,
        rb,
        relay_addr,
        ..
    } = relayed().await;
    // A stranger on another host (127.0.0.2: loopback answers all of 127/8).
    destroy_stream_10_from("127.0.0.2:0".parse().unwrap(), relay_addr).await;

    a.write_all(b"still here").await.unwrap();
    let mut got = [0u8; 10];
    timeout(T, b.read_exact(&mut got)).await.unwrap().unwrap();
    assert_eq!(&got, b"still here");
    b.write_all(b"and back").await.unwrap();
    let mut got = [0u8; 8];
    timeout(T, a.read_exact(&mut got)).await.unwrap().unwrap();
    assert_eq!(&got, b"and back");
    drop((ra, rb));
}

/// A hyperdht server that moved to a punched path resends a packet it had sent on the relay
/// path from its new socket: another port of the paired peer's host, which must get through.
#[tokio::test]
async fn another_port_of_the_paired_peers_host_is_relayed() {
    let Relayed {
        a,
        mut b,
        ra,
        rb,
        relay_addr,
        ..
    } = relayed().await;
    destroy_stream_10_from(localhost(), relay_addr).await;
    let err = timeout(Duration::from_secs(5), b.read(&mut [0u8; 1]))
        .await
        .expect("b learns of the destroy at once")
        .expect_err("b's stream is reset");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset);
    drop((a, ra, rb));
}

#[tokio::test]
async fn dropping_a_relay_stream_ends_its_partner_too() {
    let Relayed { ra, rb, .. } = relayed().await;
    let done = rb.observer().done();
    drop(ra);
    timeout(Duration::from_secs(5), done)
        .await
        .expect("the stream relaying into a dropped one ends too");
}

#[tokio::test]
async fn relay_to_is_refused_after_connect_and_across_sockets() {
    let s1 = UdxSocket::bind(localhost()).await.unwrap();
    let s2 = UdxSocket::bind(localhost()).await.unwrap();
    let x = s1.create_stream(1).unwrap();
    let y = s1.create_stream(2).unwrap();
    let z = s2.create_stream(3).unwrap();
    assert!(x.relay_to(&z).is_err(), "different sockets");
    assert!(x.relay_to(&x).is_err(), "itself");
    y.connect(9, s2.local_addr().unwrap()).unwrap();
    assert!(y.relay_to(&x).is_err(), "after connect");
    x.relay_to(&y).unwrap();
}
