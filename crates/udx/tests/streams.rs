//! Rust-to-Rust stream behaviour over real UDP sockets on 127.0.0.1.

mod common;

use std::io::ErrorKind;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;
use udx::{UdxError, UdxSocket, DATAGRAM_QUEUE_BYTES, DATAGRAM_QUEUE_PACKETS};

async fn two_sockets() -> (UdxSocket, UdxSocket) {
    (
        UdxSocket::bind(localhost()).await.unwrap(),
        UdxSocket::bind(localhost()).await.unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_each_way() {
    let (a, b) = two_sockets().await;
    let (sa, sb) = stream_pair(&a, &b, 1, 2).await;
    within(120, "64 MiB each way", exchange(sa, sb, 64 * MIB)).await;
    eventually(10, "both streams finish", || {
        a.stream_count() == 0 && b.stream_count() == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_under_five_percent_loss_both_ways() {
    let (a, b) = two_sockets().await;
    let fwd = Forwarder::start(a.local_addr().unwrap(), b.local_addr().unwrap(), 0.05).await;
    let sa = a.create_stream(10).unwrap();
    let sb = b.create_stream(20).unwrap();
    sa.connect(20, fwd.for_a).unwrap();
    sb.connect(10, fwd.for_b).unwrap();
    let stats = within(
        120,
        "16 MiB each way at 5% loss",
        exchange_keep(sa, sb, 16 * MIB),
    )
    .await;
    assert!(
        stats.retransmits > 0,
        "the forwarder should have forced retransmissions: {stats:?}"
    );
}

/// Like `exchange` but returns the first stream's final stats.
async fn exchange_keep(sa: udx::UdxStream, sb: udx::UdxStream, len: usize) -> udx::StreamStats {
    let (mut ra, mut wa) = tokio::io::split(sa);
    let (mut rb, mut wb) = tokio::io::split(sb);
    let t1 = tokio::spawn(async move {
        let h = send_random(&mut wa, len, 11).await;
        (h, wa)
    });
    let t2 = tokio::spawn(async move { send_random(&mut wb, len, 12).await });
    let t3 = tokio::spawn(async move { recv_all(&mut rb).await });
    let got_a = recv_all(&mut ra).await;
    let (sent_a, wa) = t1.await.unwrap();
    let sent_b = t2.await.unwrap();
    assert_eq!(t3.await.unwrap(), (len, sent_a), "a -> b");
    assert_eq!(got_a, (len, sent_b), "b -> a");
    ra.unsplit(wa).stats()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_concurrent_streams_on_one_socket() {
    let (a, b) = two_sockets().await;
    let mut tasks = Vec::new();
    for i in 0..16u32 {
        let (sa, sb) = stream_pair(&a, &b, 100 + i, 200 + i).await;
        tasks.push(tokio::spawn(exchange(sa, sb, 4 * MIB)));
    }
    within(120, "16 concurrent streams", async {
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await;
    eventually(10, "all streams finish", || {
        a.stream_count() == 0 && b.stream_count() == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_and_close_200_streams_repeatedly_without_leaking() {
    let (a, b) = two_sockets().await;
    for round in 0..3u32 {
        let mut tasks = Vec::new();
        for i in 0..200u32 {
            let (mut sa, mut sb) = stream_pair(&a, &b, 1000 + i, 5000 + i).await;
            tasks.push(tokio::spawn(async move {
                let msg = format!("round {round} stream {i}");
                sa.write_all(msg.as_bytes()).await.unwrap();
                sa.shutdown().await.unwrap();
                let mut got = String::new();
                sb.read_to_string(&mut got).await.unwrap();
                assert_eq!(got, msg);
                sb.write_all(b"bye").await.unwrap();
                sb.shutdown().await.unwrap();
                let mut back = Vec::new();
                sa.read_to_end(&mut back).await.unwrap();
                assert_eq!(back, b"bye");
            }));
        }
        within(60, "200 streams", async {
            for t in tasks {
                t.await.unwrap();
            }
        })
        .await;
        eventually(10, "registered streams back to 0", || {
            a.stream_count() == 0 && b.stream_count() == 0
        })
        .await;
    }
    // Ids are free again.
    drop(a.create_stream(1000).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_in_both_directions() {
    let (a, b) = two_sockets().await;
    let (sa, sb) = stream_pair(&a, &b, 1, 2).await;
    let (mut ra, mut wa) = tokio::io::split(sa);
    let (mut rb, mut wb) = tokio::io::split(sb);
    within(30, "half close", async {
        // a ends its write side first; b sees EOF after a's data.
        wa.write_all(b"from a").await.unwrap();
        wa.shutdown().await.unwrap();
        let mut got = Vec::new();
        rb.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"from a");
        let err = wa.write_all(b"late").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BrokenPipe);

        // b can still send to a, which still reads; then b ends too.
        let big = vec![7u8; 3 * MIB];
        wb.write_all(&big).await.unwrap();
        wb.shutdown().await.unwrap();
        let mut back = Vec::new();
        ra.read_to_end(&mut back).await.unwrap();
        assert!(
            back == big,
            "a received {} bytes after its own END",
            back.len()
        );
    })
    .await;
    eventually(10, "streams finish after both ENDs", || {
        a.stream_count() == 0 && b.stream_count() == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_and_drop_without_shutdown_reset_the_peer() {
    let (a, b) = two_sockets().await;
    within(30, "destroy", async {
        let (mut sa, mut sb) = stream_pair(&a, &b, 1, 2).await;
        sa.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        sb.read_exact(&mut one).await.unwrap();
        sa.destroy();
        let err = sb.read(&mut one).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionReset);
        assert!(
            sa.write_all(b"y").await.is_err(),
            "writes fail after destroy"
        );
        assert!(sa.read(&mut one).await.is_err(), "reads fail after destroy");

        let (sc, mut sd) = stream_pair(&a, &b, 3, 4).await;
        sc.connected().await.unwrap();
        drop(sc);
        let err = sd.read(&mut one).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionReset);
    })
    .await;
    eventually(10, "destroyed streams unregister", || a.stream_count() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_fails_the_stream_in_bounded_time() {
    let (a, b) = two_sockets().await;
    let fwd = Forwarder::start(a.local_addr().unwrap(), b.local_addr().unwrap(), 0.0).await;
    let (mut sa, mut sb) = {
        let sa = a.create_stream(1).unwrap();
        let sb = b.create_stream(2).unwrap();
        sa.connect(2, fwd.for_a).unwrap();
        sb.connect(1, fwd.for_b).unwrap();
        (sa, sb)
    };
    sa.write_all(&[1u8; 100_000]).await.unwrap();
    let mut buf = vec![0u8; 100_000];
    sb.read_exact(&mut buf).await.unwrap();

    fwd.set_loss(1.0); // the peer vanishes without a word
    let started = Instant::now();
    let err = within(30, "timeout detection", async {
        loop {
            if let Err(e) = sa.write_all(&[2u8; 65536]).await {
                break e;
            }
        }
    })
    .await;
    assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    assert!(sa.connected().await.is_ok());
    drop(sb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_after_shutdown_still_delivers_everything() {
    let (a, b) = two_sockets().await;
    let (sa, mut sb) = stream_pair(&a, &b, 1, 2).await;
    let len = 8 * MIB;
    let reader = tokio::spawn(async move { recv_all(&mut sb).await });
    let mut wa = sa;
    let sent = within(60, "writing", send_random(&mut wa, len, 5)).await; // ends with shutdown
                                                                          // Most of the data is still queued or in flight: dropping the handle, and even the socket
                                                                          // handle, must not lose it - the stream lingers in the background until it is acked.
    drop(wa);
    drop(a);
    let got = within(60, "lingering delivery", reader).await.unwrap();
    assert_eq!(got, (len, sent));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_ids_are_exclusive_per_socket() {
    let a = UdxSocket::bind(localhost()).await.unwrap();
    let s = a.create_stream(5).unwrap();
    assert!(matches!(
        a.create_stream(5),
        Err(UdxError::StreamIdInUse(5))
    ));
    assert_eq!(a.stream_count(), 1);
    s.connect(6, "127.0.0.1:9".parse().unwrap()).unwrap();
    assert!(matches!(
        s.connect(6, "127.0.0.1:9".parse().unwrap()),
        Err(UdxError::AlreadyConnected)
    ));
    drop(s);
    eventually(5, "dropped stream unregisters", || a.stream_count() == 0).await;
    let _again = a.create_stream(5).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_stream_datagrams_reach_the_datagram_channel() {
    let a = UdxSocket::bind(localhost()).await.unwrap();
    let mut rx = a.take_datagrams();
    let plain = UdpSocket::bind(localhost()).await.unwrap();
    let target = a.local_addr().unwrap();

    plain.send_to(b"dht rpc message", target).await.unwrap();
    let d = within(5, "plain datagram", rx.recv()).await.unwrap();
    assert_eq!(d.data, b"dht rpc message");
    assert_eq!(d.addr, plain.local_addr().unwrap());

    // Looks like UDX but no stream 77 is registered: it is the DHT layer's business.
    let mut udx_like = vec![0xFF, 1, 1, 0];
    udx_like.extend_from_slice(&77u32.to_le_bytes());
    udx_like.extend_from_slice(&[0u8; 12]);
    plain.send_to(&udx_like, target).await.unwrap();
    let d = within(5, "unknown stream id", rx.recv()).await.unwrap();
    assert_eq!(d.data, udx_like);

    // Our own send_to reaches a plain socket.
    a.send_to(b"reply", plain.local_addr().unwrap()).unwrap();
    let mut buf = [0u8; 16];
    let (n, from) = within(5, "send_to", plain.recv_from(&mut buf))
        .await
        .unwrap();
    assert_eq!((&buf[..n], from), (&b"reply"[..], target));

    a.set_ttl(3).unwrap();
    assert_eq!(a.ttl().unwrap(), 3);
    a.set_ttl(64).unwrap();
}

/// Sends `count` datagrams of `size` bytes to `target`, pausing now and then so that the
/// kernel's receive buffer does not overflow before the socket driver reads it (we test our
/// queue, not the kernel's).
async fn flood(from: &UdpSocket, target: std::net::SocketAddr, count: usize, size: usize) {
    let payload = vec![0x42u8; size];
    for i in 0..count {
        from.send_to(&payload, target).await.unwrap();
        if i % 64 == 63 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_non_stream_datagrams_is_bounded_counted_and_then_flows_again() {
    let a = UdxSocket::bind(localhost()).await.unwrap();
    let mut rx = a.take_datagrams();
    let plain = UdpSocket::bind(localhost()).await.unwrap();
    let target = a.local_addr().unwrap();

    // Large datagrams while nobody reads: the byte bound is reached first.
    let big = 1400;
    let sent = 2 * DATAGRAM_QUEUE_BYTES / big;
    within(
        30,
        "flood of large datagrams",
        flood(&plain, target, sent, big),
    )
    .await;
    eventually(10, "drops counted", || a.datagrams_dropped() > 0).await;
    // An unbounded channel would hold every datagram the driver read, about twice these.
    assert!(
        rx.queued_bytes() <= DATAGRAM_QUEUE_BYTES,
        "{} bytes queued",
        rx.queued_bytes()
    );
    assert!(
        rx.len() <= DATAGRAM_QUEUE_BYTES / big,
        "{} datagrams queued",
        rx.len()
    );
    assert!(rx.len() as u64 + a.datagrams_dropped() <= sent as u64);

    // Reading frees the room again, byte for byte.
    let mut read = 0;
    while let Some(d) = rx.try_recv() {
        assert_eq!(d.data.len(), big);
        read += 1;
    }
    assert!(read > 0);
    assert_eq!(rx.queued_bytes(), 0);

    // Small datagrams while nobody reads: the count bound is reached first.
    let dropped_before = a.datagrams_dropped();
    let sent = 2 * DATAGRAM_QUEUE_PACKETS;
    within(
        30,
        "flood of small datagrams",
        flood(&plain, target, sent, 100),
    )
    .await;
    eventually(10, "drops counted again", || {
        a.datagrams_dropped() > dropped_before
    })
    .await;
    assert!(
        rx.len() <= DATAGRAM_QUEUE_PACKETS,
        "{} datagrams queued",
        rx.len()
    );
    while rx.try_recv().is_some() {}

    // Afterwards datagrams flow again.
    let dropped = a.datagrams_dropped();
    plain.send_to(b"after the flood", target).await.unwrap();
    let d = within(5, "datagram after the flood", rx.recv())
        .await
        .unwrap();
    assert_eq!(d.data, b"after the flood");
    assert_eq!(a.datagrams_dropped(), dropped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_before_connect_are_held_and_first_packet_connects() {
    let (a, b) = two_sockets().await;
    within(30, "held packets", async {
        // b registers its stream but connects only after a already sent data.
        let mut sa = a.create_stream(1).unwrap();
        let mut sb = b.create_stream(2).unwrap();
        sa.connect(2, b.local_addr().unwrap()).unwrap();
        sa.write_all(b"early bird").await.unwrap();
        sa.shutdown().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(sb.remote_addr(), None);
        sb.connect(1, a.local_addr().unwrap()).unwrap();
        let mut got = Vec::new();
        sb.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"early bird");

        // connect_on_first_packet: c learns d's address from d's first packet.
        let mut sc = a.create_stream(3).unwrap();
        sc.connect_on_first_packet(4);
        let mut sd = b.create_stream(4).unwrap();
        sd.connect(3, a.local_addr().unwrap()).unwrap();
        sd.write_all(b"hello c").await.unwrap();
        assert_eq!(sc.connected().await.unwrap(), b.local_addr().unwrap());
        let mut buf = [0u8; 7];
        sc.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello c");
        sc.write_all(b"hi d").await.unwrap();
        let mut buf = [0u8; 4];
        sd.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hi d");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_streams_send_keepalive_heartbeats() {
    let (a, b) = two_sockets().await;
    let (sa, sb) = stream_pair(&a, &b, 1, 2).await;
    sa.connected().await.unwrap();
    sa.set_keepalive(Some(Duration::from_millis(50)));
    let before = sb.stats().packets_received;
    tokio::time::sleep(Duration::from_millis(400)).await;
    // A heartbeat is answered with an ack: both sides keep seeing packets while idle.
    eventually(5, "heartbeats arrive", || {
        sb.stats().packets_received >= before + 3
    })
    .await;
    eventually(5, "heartbeats are answered", || {
        sa.stats().packets_received >= 3
    })
    .await;
}

#[test]
fn handles_are_send_and_sync() {
    fn check<T: Send + Sync + 'static>() {}
    check::<UdxSocket>();
    check::<udx::UdxStream>();
}

/// A UDX packet for stream `id` as a third party could forge it.
fn forged(flags: u8, id: u32, seq: u32, ack: u32, body: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    udx::wire::Header {
        flags,
        data_offset: 0,
        stream_id: id,
        recv_window: 0,
        seq,
        ack,
    }
    .write_to(&mut p);
    p.extend_from_slice(body);
    p
}

/// Sends what a third party who guessed stream `id` on `target` could try: a reset, stale
/// and impossible acks, a SACK of everything.
async fn attack(target: std::net::SocketAddr, id: u32) {
    use udx::wire::{FLAG_DESTROY, FLAG_SACK};
    let mallory = UdpSocket::bind(localhost()).await.unwrap();
    let mut sack_all = Vec::new();
    sack_all.extend_from_slice(&0u32.to_le_bytes());
    sack_all.extend_from_slice(&u32::MAX.to_le_bytes());
    for seq in [0, 1, 2, 1000] {
        for p in [
            forged(FLAG_DESTROY, id, seq, 0, &[]),
            forged(0, id, seq, 5, &[]),
            forged(0, id, seq, u32::MAX, &[]),
            forged(FLAG_SACK, id, seq, 0, &sack_all),
        ] {
            mallory.send_to(&p, target).await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_from_anyone_but_the_peer_are_ignored() {
    let (a, b) = two_sockets().await;
    within(30, "third-party packets", async {
        let (mut sa, mut sb) = stream_pair(&a, &b, 1, 2).await;
        sa.write_all(b"before").await.unwrap();
        let mut buf = [0u8; 6];
        sb.read_exact(&mut buf).await.unwrap();
        attack(a.local_addr().unwrap(), 1).await;
        attack(b.local_addr().unwrap(), 2).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        sa.write_all(b"after!").await.unwrap();
        sb.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"after!");
        sb.write_all(b"reply!").await.unwrap();
        sa.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"reply!");

        // connect_on_first_packet adopts the first sender, then hears only it.
        let mut sc = a.create_stream(3).unwrap();
        sc.connect_on_first_packet(4);
        let mut sd = b.create_stream(4).unwrap();
        sd.connect(3, a.local_addr().unwrap()).unwrap();
        sd.write_all(b"hello!").await.unwrap();
        sc.read_exact(&mut buf).await.unwrap();
        attack(a.local_addr().unwrap(), 3).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        sd.write_all(b"still?").await.unwrap();
        sc.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"still?");
        sc.write_all(b"yes!!!").await.unwrap();
        sd.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"yes!!!");
        assert_eq!(sc.remote_addr(), Some(b.local_addr().unwrap()));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_to_spawns_no_task_per_datagram_and_works_on_a_fresh_socket() {
    let plain = UdpSocket::bind(localhost()).await.unwrap();
    let a = UdxSocket::bind(localhost()).await.unwrap();
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    // A fresh socket, never seen writable by the reactor: before, every one of these went
    // to a task of its own.
    for i in 0..500u32 {
        a.send_to(&i.to_le_bytes(), plain.local_addr().unwrap())
            .unwrap();
    }
    assert!(
        metrics.num_alive_tasks() <= before + 1,
        "send_to spawned {} tasks",
        metrics.num_alive_tasks() - before
    );
    let mut buf = [0u8; 8];
    let (n, _) = within(5, "first datagram", plain.recv_from(&mut buf))
        .await
        .unwrap();
    assert_eq!(&buf[..n], &0u32.to_le_bytes());
}

/// Relay to direct on real sockets: a transfer starts through a forwarder (the relay), then
/// mid-transfer one side moves its stream to another socket and the other side, a moment
/// later, points its stream (on the same socket) at it. Every byte arrives once and in order
/// both ways, and the old socket lets go of the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_remote_moves_a_transfer_from_a_relay_to_a_direct_path() {
    let (a, b) = two_sockets().await;
    let a_direct = UdxSocket::bind(localhost()).await.unwrap();
    let relay = Forwarder::start(a.local_addr().unwrap(), b.local_addr().unwrap(), 0.0).await;
    let sa = a.create_stream(10).unwrap();
    let sb = b.create_stream(20).unwrap();
    sa.connect(20, relay.for_a).unwrap();
    sb.connect(10, relay.for_b).unwrap();
    let (oa, ob) = (sa.observer(), sb.observer());
    let transfer = tokio::spawn(exchange(sa, sb, 24 * MIB));

    eventually(30, "some data went through the relay", || {
        oa.stats().packets_received > 200 && ob.stats().packets_received > 200
    })
    .await;
    oa.change_remote(&a_direct, 20, b.local_addr().unwrap())
        .unwrap();
    assert_eq!(oa.remote_addr(), Some(b.local_addr().unwrap()));
    eventually(10, "the old socket let go of the stream", || {
        a.stream_count() == 0 && a_direct.stream_count() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    ob.change_remote(&b, 10, a_direct.local_addr().unwrap())
        .unwrap();
    within(10, "a's move completes", oa.remote_changed())
        .await
        .unwrap();
    within(10, "b's move completes", ob.remote_changed())
        .await
        .unwrap();
    let relayed = (oa.stats().packets_received, ob.stats().packets_received);
    within(120, "24 MiB each way across the move", transfer)
        .await
        .unwrap();
    let after = (oa.stats().packets_received, ob.stats().packets_received);
    assert!(
        after.0 > relayed.0 && after.1 > relayed.1,
        "the transfer went on by the direct path: {relayed:?} -> {after:?}"
    );
    eventually(10, "both streams finish", || {
        a_direct.stream_count() == 0 && b.stream_count() == 0
    })
    .await;
}

/// A stream that moved to another socket still hears its old remote on the socket it left:
/// libudx resends a packet lost before its own move to where it first sent it (the relay),
/// and a stream deaf there never acknowledges it, so the peer's move never completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_stream_still_hears_its_old_path() {
    let (a, b) = two_sockets().await;
    let a_direct = UdxSocket::bind(localhost()).await.unwrap();
    let relay = Forwarder::start(a.local_addr().unwrap(), b.local_addr().unwrap(), 0.0).await;
    let mut sa = a.create_stream(10).unwrap();
    let mut sb = b.create_stream(20).unwrap();
    sa.connect(20, relay.for_a).unwrap();
    sb.connect(10, relay.for_b).unwrap();
    let oa = sa.observer();
    oa.change_remote(&a_direct, 20, b.local_addr().unwrap())
        .unwrap();
    eventually(10, "the stream moved to the other socket", || {
        a.stream_count() == 0 && a_direct.stream_count() == 1
    })
    .await;
    // b has not moved: what it writes goes by the relay to the socket a's stream left.
    let late = b"sent by the old path after the move";
    sb.write_all(late).await.unwrap();
    let mut got = [0u8; 35];
    within(10, "the late bytes arrive", sa.read_exact(&mut got))
        .await
        .unwrap();
    assert_eq!(&got, late);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_remote_refuses_what_it_cannot_do() {
    let (a, b) = two_sockets().await;
    let other = UdxSocket::bind(localhost()).await.unwrap();
    let peer = b.local_addr().unwrap();
    let unconnected = a.create_stream(1).unwrap();
    assert!(matches!(
        unconnected.change_remote(&a, 2, peer),
        Err(UdxError::NotConnected)
    ));
    let (sa, _sb) = stream_pair(&a, &b, 3, 4).await;
    sa.connected().await.unwrap();
    let _taken = other.create_stream(3).unwrap();
    assert!(matches!(
        sa.change_remote(&other, 4, peer),
        Err(UdxError::StreamIdInUse(3))
    ));
    assert!(matches!(
        sa.change_remote(&a, 4, "127.0.0.1:0".parse().unwrap()),
        Err(UdxError::Io(_))
    ));
    sa.destroy();
    assert!(matches!(
        sa.change_remote(&a, 4, peer),
        Err(UdxError::StreamClosed)
    ));
    // The stream stayed where it was: moving it failed before anything moved.
    assert_eq!(other.stream_count(), 1);
}

/// Following a peer that moved first (hyperdht's server when its client's punch lands after
/// the relay carried the connection): a placeholder on the punched socket hears the peer's
/// first packet on the new path, and the stream moves into its place, processing what it
/// held. Then an empty message confirms the new path to the peer, as hyperdht sends one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_follows_a_peer_that_moved_first_into_a_placeholder() {
    let (a, b) = two_sockets().await;
    let (a_direct, b_direct) = two_sockets().await;
    let relay = Forwarder::start(a.local_addr().unwrap(), b.local_addr().unwrap(), 0.0).await;
    let sa = a.create_stream(10).unwrap();
    let sb = b.create_stream(20).unwrap();
    sa.connect(20, relay.for_a).unwrap();
    sb.connect(10, relay.for_b).unwrap();
    let (oa, ob) = (sa.observer(), sb.observer());
    let placeholder = b_direct.create_stream(20).unwrap();
    let transfer = tokio::spawn(exchange(sa, sb, 16 * MIB));
    eventually(30, "some data went through the relay", || {
        oa.stats().packets_received > 200 && ob.stats().packets_received > 200
    })
    .await;

    // a moves first, to b's direct socket; b learns of it from the first packet there.
    oa.change_remote(&a_direct, 20, b_direct.local_addr().unwrap())
        .unwrap();
    let from = within(
        10,
        "a's first packet on the new path",
        placeholder.first_packet_from(),
    )
    .await
    .unwrap();
    assert_eq!(from, a_direct.local_addr().unwrap());
    ob.change_remote_into(placeholder, 10, from).unwrap();
    within(10, "a's move completes", oa.remote_changed())
        .await
        .unwrap();
    within(10, "b's move completes", ob.remote_changed())
        .await
        .unwrap();
    ob.send_message(&[]);
    within(120, "16 MiB each way across the move", transfer)
        .await
        .unwrap();
    eventually(10, "both streams finish, on the new sockets", || {
        a.stream_count() + b.stream_count() + a_direct.stream_count() + b_direct.stream_count() == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placeholder_must_be_unconnected_and_have_the_same_id() {
    let (a, b) = two_sockets().await;
    let other = UdxSocket::bind(localhost()).await.unwrap();
    let (sa, _sb) = stream_pair(&a, &b, 3, 4).await;
    sa.connected().await.unwrap();
    let wrong_id = other.create_stream(5).unwrap();
    assert!(matches!(
        sa.change_remote_into(wrong_id, 4, b.local_addr().unwrap()),
        Err(UdxError::Io(_))
    ));
    let connected = other.create_stream(3).unwrap();
    connected.connect(4, b.local_addr().unwrap()).unwrap();
    assert!(matches!(
        sa.change_remote_into(connected, 4, b.local_addr().unwrap()),
        Err(UdxError::Io(_))
    ));
    // Still on its socket, still usable.
    assert_eq!(a.stream_count(), 1);
}

/// Read a chunk at a time, as the secret stream does: every byte arrives in order, more than
/// the receive window goes through (taking a chunk makes room, as a read does), and most
/// chunks lie right behind the one before, which is what lets a reader join them without a
/// copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_reads_hand_out_every_byte_and_chunks_lie_next_to_each_other() {
    use sha2::{Digest, Sha256};
    const MAX: usize = 100_000;
    let (a, b) = two_sockets().await;
    let (mut sa, sb) = stream_pair(&a, &b, 1, 2).await;
    let len = udx::proto::RECV_WINDOW * 3 / 2;
    let sender = tokio::spawn(async move { send_random(&mut sa, len, 7).await });
    let receive = async {
        let (mut hash, mut total, mut chunks, mut adjacent, mut prev_end) =
            (Sha256::new(), 0, 0, 0, 0);
        while let Some(chunk) = std::future::poll_fn(|cx| sb.poll_read_chunk(cx, MAX))
            .await
            .expect("read")
        {
            assert!(
                !chunk.is_empty() && chunk.len() <= MAX,
                "{} bytes",
                chunk.len()
            );
            adjacent += usize::from(chunk.as_ptr() as usize == prev_end);
            prev_end = chunk.as_ptr() as usize + chunk.len();
            hash.update(&chunk);
            total += chunk.len();
            chunks += 1;
        }
        (total, hex::encode(hash.finalize()), chunks, adjacent)
    };
    let (total, hash, chunks, adjacent) = within(60, "a chunked read", receive).await;
    assert_eq!(total, len);
    assert_eq!(hash, sender.await.unwrap());
    assert!(
        adjacent * 2 > chunks,
        "{adjacent} of {chunks} chunks lie behind the one before"
    );
}
