//! Connections through a blind relay (`p2p-socket relay`), on loopback with real processes:
//! Rust share and connect forced through a Rust relay, and Node's hyperdht client and server
//! meeting through our relay with `relayThrough`. Every byte is verified at both ends, and the
//! relay's own log shows that the bytes went through it.

use test_support as support;

use std::io::Read;
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use support::cli::{ConnectProcess, LocalDht, RelayProcess, ShareProcess, READY};
use support::net::{exchange, pattern_sha, read_all, send_pattern, Behaviour, Service};
use support::node::{interop_dir, require_node, NodeServer, NodeTestnet};
use support::process::ChildProcess;

const MIB: u64 = 1024 * 1024;
const VOLUME: u64 = 10 * MIB;
const T: Duration = Duration::from_secs(120);
/// 10 MiB is over 7,000 UDX packets; acks go the other way. Fewer through the relay would mean
/// part of the transfer went some other way.
const MIN_PACKETS: u64 = 7_000;

/// One connection through the tunnel at `addr`: `VOLUME` each way, checked at both ends.
/// Returns how long it took.
fn transfer(addr: std::net::SocketAddr, service: &Service, seed: u64) -> Duration {
    let started = Instant::now();
    let stream = TcpStream::connect(addr).expect("connect to the local end of the tunnel");
    let client = exchange(stream, VOLUME, seed).expect("exchange through the tunnel");
    let took = started.elapsed();
    let server = service.next_tally(T);
    assert_eq!(client.received, VOLUME, "bytes from the service");
    assert_eq!(
        client.received_sha, server.sent_sha,
        "what the service sent"
    );
    assert_eq!(server.received, VOLUME, "bytes to the service");
    assert_eq!(server.received_sha, client.sent_sha, "what the client sent");
    took
}

/// The relay's "stopped relaying" lines: packets from and to the initiator for each pair.
fn relayed_pairs(relay: &RelayProcess, pairs: usize) -> Vec<(u64, u64)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let counts: Vec<(u64, u64)> = relay
            .log()
            .lines()
            .filter(|l| l.contains("stopped relaying a pair"))
            .map(|l| (field(l, "from_initiator"), field(l, "to_initiator")))
            .collect();
        if counts.len() >= pairs || Instant::now() > deadline {
            return counts;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn field(line: &str, key: &str) -> u64 {
    let at = line
        .find(&format!("{key}="))
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
        + key.len()
        + 1;
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{key} is not a number in {line:?}"))
}

fn assert_relayed(relay: &RelayProcess, pairs: usize) {
    let counts = relayed_pairs(relay, pairs);
    assert_eq!(
        counts.len(),
        pairs,
        "pairs relayed; relay log:\n{}",
        relay.log()
    );
    for (from, to) in counts {
        assert!(
            from >= MIN_PACKETS && to >= MIN_PACKETS,
            "a pair carried only {from} / {to} packets through the relay"
        );
    }
}

fn mib_per_s(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / MIB as f64 / took.as_secs_f64()
}

/// A private DHT, a relay on it, and a service that answers with `volume` bytes (`seed`).
fn relay_setup(volume: u64, seed: u64) -> (LocalDht, RelayProcess, Service) {
    let dht = LocalDht::start(3);
    let relay = RelayProcess::start(&dht.bootstrap);
    let service = Service::start(Behaviour::Exchange { send: volume, seed });
    (dht, relay, service)
}

#[test]
fn rust_connect_forced_through_a_rust_relay_moves_every_byte() {
    let (dht, relay, service) = relay_setup(VOLUME, 1);
    let share = ShareProcess::start(&dht.bootstrap, service.port(), &[]);
    let connect = ConnectProcess::start_with(
        &dht.bootstrap,
        &share.key,
        // Each local connection its own relayed connection (multiplexed, they would be one).
        &["--relay", &relay.key, "--force-relay", "--no-multiplex"],
    );
    for n in 0..3 {
        let took = transfer(connect.addr, &service, 10 + n);
        eprintln!(
            "relayed connection {}: 10 MiB each way in {:.2} s ({:.1} MiB/s each way)",
            n + 1,
            took.as_secs_f64(),
            mib_per_s(VOLUME, took)
        );
    }
    assert_relayed(&relay, 3);
}

#[test]
fn the_sharers_relay_carries_a_forced_connect() {
    let (dht, relay, service) = relay_setup(VOLUME, 2);
    let share = ShareProcess::start(&dht.bootstrap, service.port(), &["--relay", &relay.key]);
    // Its own connection, which ends with the transfer (a multiplexed one stays open for the
    // next local connection, and the relay reports a pair only once it stops).
    let connect = ConnectProcess::start_with(
        &dht.bootstrap,
        &share.key,
        &["--force-relay", "--no-multiplex"],
    );
    transfer(connect.addr, &service, 20);
    assert_relayed(&relay, 1);
}

#[test]
fn without_need_a_relay_is_left_alone() {
    let dht = LocalDht::start(3);
    let relay = RelayProcess::start(&dht.bootstrap);
    let service = Service::start(Behaviour::Exchange { send: MIB, seed: 3 });
    let share = ShareProcess::start(&dht.bootstrap, service.port(), &["--relay", &relay.key]);
    let connect = ConnectProcess::start_with(&dht.bootstrap, &share.key, &["--relay", &relay.key]);
    let stream = TcpStream::connect(connect.addr).unwrap();
    let tally = exchange(stream, MIB, 30).unwrap();
    assert_eq!(tally.received_sha, pattern_sha(MIB, 3));
    std::thread::sleep(Duration::from_millis(500));
    let log = relay.log();
    assert!(
        !log.contains("relaying a pair of peers"),
        "a direct connection went through the relay:\n{log}"
    );
}

/// `interop/node/relayed-pair.js`: a Node server and client that can only meet through the relay.
fn node_pair(bootstrap: &[String], relay: &str, target: u16, side: &str) -> (ChildProcess, u16) {
    require_node();
    let mut cmd = std::process::Command::new("node");
    cmd.arg(interop_dir().join("relayed-pair.js"))
        .args(["--bootstrap", &bootstrap.join(",")])
        .args(["--relay", relay])
        .args(["--target-host", "127.0.0.1"])
        .args(["--target-port", &target.to_string()])
        .args(["--relay-side", side])
        .current_dir(interop_dir());
    let mut process = ChildProcess::spawn(cmd, "node relayed-pair");
    let port = process.wait_for(READY, |line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        v.get("ready")?;
        u16::try_from(v.get("port")?.as_u64()?).ok()
    });
    (process, port)
}

/// A service that takes `VOLUME` bytes, then answers with `VOLUME` of its own, then waits for
/// the end and ends too. Returns the sha256 of what it took.
///
/// Turn by turn, not both ways at once: Node's secret stream destroys its UDX stream as soon
/// as both directions have ended, and libudx drops what a DESTROY overtakes, so with Node on
/// both ends the side that ends last loses whatever it still had in flight whenever a packet
/// of it needed resending (it happens through Node's own relay just the same; p2p-socket's
/// streams linger until acknowledged instead). Here the last side to end has nothing in flight.
fn turn_by_turn_service(seed: u64) -> (u16, std::sync::mpsc::Receiver<(u64, String)>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let Ok((conn, _)) = listener.accept() else {
            return;
        };
        conn.set_read_timeout(Some(T)).unwrap();
        let took = read_all(&mut (&conn).take(VOLUME)).unwrap();
        send_pattern(&mut &conn, VOLUME, seed).unwrap();
        let (after, _) = read_all(&mut &conn).unwrap();
        assert_eq!(after, 0, "the client sent more than asked");
        conn.shutdown(Shutdown::Write).unwrap();
        let _ = tx.send(took);
    });
    (port, rx)
}

/// One turn-by-turn connection to `addr`, against [`turn_by_turn_service`] started with
/// `service_seed`: `VOLUME` there, `VOLUME` back, both checked, then the ends.
fn turn_by_turn(
    addr: std::net::SocketAddr,
    service_seed: u64,
    took: &std::sync::mpsc::Receiver<(u64, String)>,
) {
    let conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(T)).unwrap();
    let sent = send_pattern(&mut &conn, VOLUME, service_seed + 100).unwrap();
    let answer = read_all(&mut (&conn).take(VOLUME)).unwrap();
    conn.shutdown(Shutdown::Write).unwrap();
    let (after, _) = read_all(&mut &conn).unwrap();
    assert_eq!(
        answer,
        (VOLUME, pattern_sha(VOLUME, service_seed)),
        "the answer"
    );
    assert_eq!(after, 0, "bytes after the answer");
    let took = took.recv_timeout(T).unwrap();
    assert_eq!(took, (VOLUME, sent), "what the service took");
}

fn node_peers_through_our_relay(side: &str) {
    let testnet = NodeTestnet::start(5);
    let relay = RelayProcess::start(&testnet.bootstrap[0]);
    let (service, took) = turn_by_turn_service(4);
    let (_pair, port) = node_pair(&testnet.bootstrap, &relay.key, service, side);
    let started = Instant::now();
    turn_by_turn(([127, 0, 0, 1], port).into(), 4, &took);
    eprintln!(
        "Node peers through our relay ({side} names it): 10 MiB each way in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    assert_relayed(&relay, 1);
}

#[test]
fn node_peers_meet_through_our_relay_when_the_client_names_it() {
    node_peers_through_our_relay("client");
}

#[test]
fn node_peers_meet_through_our_relay_when_the_server_names_it() {
    node_peers_through_our_relay("server");
}

#[test]
fn a_rust_connect_reaches_a_node_server_through_our_relay() {
    // The Node server takes the relay our handshake names (relayThrough) and pairs there.
    let testnet = NodeTestnet::start(5);
    let relay = RelayProcess::start(&testnet.bootstrap[0]);
    let (service, took) = turn_by_turn_service(5);
    let server = NodeServer::start(&testnet.bootstrap, service, None);
    let connect = ConnectProcess::start_with(
        &testnet.bootstrap[0],
        &server.public_key,
        &["--relay", &relay.key, "--force-relay"],
    );
    turn_by_turn(connect.addr, 5, &took);
    assert_relayed(&relay, 1);
}
