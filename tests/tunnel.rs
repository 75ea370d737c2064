//! Rust share to Rust connect over a private DHT of real `p2p-socket bootstrap` processes on
//! loopback: every byte arrives, ends are passed on, nothing leaks.

use test_support as support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::thread;
use std::time::Duration;

use support::cli::{ConnectProcess, LocalDht, ShareProcess};
use support::net::{exchange, pattern_sha, read_all, Behaviour, Service};

const MIB: u64 = 1024 * 1024;
const NODES: usize = 5;
const T: Duration = Duration::from_secs(120);

struct Tunnel {
    service: Service,
    share: ShareProcess,
    connect: ConnectProcess,
    _dht: LocalDht,
}

fn tunnel(behaviour: Behaviour) -> Tunnel {
    let dht = LocalDht::start(NODES);
    let service = Service::start(behaviour);
    let share = ShareProcess::start(&dht.bootstrap, service.port(), &[]);
    let connect = ConnectProcess::start(&dht.bootstrap, &share.key);
    Tunnel {
        service,
        share,
        connect,
        _dht: dht,
    }
}

fn dial(t: &Tunnel) -> TcpStream {
    let s = TcpStream::connect(t.connect.addr).expect("connect to the local end of the tunnel");
    s.set_read_timeout(Some(T)).unwrap();
    s
}

#[test]
fn hundred_mib_each_way_arrive_exactly() {
    let t = tunnel(Behaviour::Exchange {
        send: 100 * MIB,
        seed: 1,
    });
    let client = exchange(dial(&t), 100 * MIB, 2).unwrap();
    let server = t.service.next_tally(T);
    assert_eq!(client.received, 100 * MIB, "bytes from the service");
    assert_eq!(client.received_sha, pattern_sha(100 * MIB, 1));
    assert_eq!(server.received, 100 * MIB, "bytes to the service");
    assert_eq!(server.received_sha, client.sent_sha);
}

#[test]
fn a_service_that_closes_right_after_sending_loses_nothing() {
    let t = tunnel(Behaviour::SendAndClose {
        send: 8 * MIB,
        seed: 3,
    });
    for _ in 0..3 {
        let mut s = dial(&t);
        let (n, sha) = read_all(&mut s).unwrap();
        assert_eq!(n, 8 * MIB);
        assert_eq!(sha, pattern_sha(8 * MIB, 3));
    }
}

#[test]
fn half_close_works_in_both_directions() {
    // The service ends its side after 1 KiB while the client keeps sending 16 MiB...
    let t = tunnel(Behaviour::Exchange {
        send: 1024,
        seed: 4,
    });
    let client = exchange(dial(&t), 16 * MIB, 5).unwrap();
    let server = t.service.next_tally(T);
    assert_eq!(client.received_sha, pattern_sha(1024, 4));
    assert_eq!(server.received, 16 * MIB);
    assert_eq!(server.received_sha, client.sent_sha);

    // ...and the client ends its side first while the service echoes on.
    let t = tunnel(Behaviour::Echo);
    let mut s = dial(&t);
    let mut w = s.try_clone().unwrap();
    let sender = thread::spawn(move || {
        let sha = support::net::send_pattern(&mut w, 4 * MIB, 6).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
        sha
    });
    let (n, sha) = read_all(&mut s).unwrap();
    assert_eq!(n, 4 * MIB);
    assert_eq!(sha, sender.join().unwrap());
}

#[test]
fn a_server_first_protocol_gets_its_banner_through() {
    const BANNER: &[u8] = b"220 ready, you go second\r\n";
    let t = tunnel(Behaviour::Banner(BANNER));
    let mut s = dial(&t);
    let mut got = vec![0u8; BANNER.len()];
    s.read_exact(&mut got)
        .expect("the banner arrives before we say anything");
    assert_eq!(got, BANNER);
    s.write_all(b"hello").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"hello");
}

#[test]
fn fifty_concurrent_connections_each_arrive_intact() {
    let t = tunnel(Behaviour::Echo);
    let workers: Vec<_> = (0..50u64)
        .map(|i| {
            let s = dial(&t);
            thread::spawn(move || {
                let tally = exchange(s, MIB, 100 + i).unwrap();
                assert_eq!(tally.received, MIB, "connection {i}");
                assert_eq!(tally.received_sha, tally.sent_sha, "connection {i}");
            })
        })
        .collect();
    for w in workers {
        w.join().expect("a connection failed");
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn five_hundred_sequential_connections_leak_nothing() {
    let t = tunnel(Behaviour::Echo);
    let round = |i: u64| {
        let tally = exchange(dial(&t), 4096, i).unwrap();
        assert_eq!(tally.received_sha, tally.sent_sha, "connection {i}");
    };
    for i in 0..50 {
        round(i);
    }
    // Let lingering streams finish their goodbyes before taking the baseline.
    thread::sleep(Duration::from_secs(2));
    let pids = [t.share.process.pid(), t.connect.process.pid()];
    let fds_before: Vec<usize> = pids.iter().map(|&p| open_fds(p)).collect();
    let rss_before: Vec<u64> = pids.iter().map(|&p| rss_kib(p)).collect();
    for i in 50..500 {
        round(i);
    }
    thread::sleep(Duration::from_secs(2));
    for (k, &pid) in pids.iter().enumerate() {
        let fds = open_fds(pid);
        let rss = rss_kib(pid);
        assert!(
            fds <= fds_before[k] + 8,
            "process {pid} held {} descriptors after 50 connections and {fds} after 500",
            fds_before[k]
        );
        assert!(
            rss <= rss_before[k] + 32 * 1024,
            "process {pid} grew from {} KiB to {rss} KiB over 450 connections",
            rss_before[k]
        );
    }
}
