//! A connect dials the sharer when it starts (docs/warm.md), with the
//! real binary on a local DHT: the first local connection finds the shared connection open; a
//! sharer that cannot be reached is reported at start and served once it is back; a Node sharer,
//! which connects to its service for each of our connections, sees one spare connection at most,
//! used by the first local connection or closed after a bounded time.

use test_support as support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use support::cli::{event, ConnectProcess, LocalDht, ShareProcess, READY};
use support::net::{Behaviour, Service};
use support::node::{require_node, NodeServer};

const NODES: usize = 3;
/// One attempt to reach the sharer is bounded at 45 s; a loaded machine adds to it.
const ATTEMPT_BOUND: Duration = Duration::from_secs(60);
/// How long a raw connection dialed at start waits for a local connection (`SPARE_FOR`).
const SPARE_FOR: Duration = Duration::from_secs(15);

/// One echoed exchange through the connect at `addr`.
fn echo_once(addr: SocketAddr, what: &str) {
    let mut s = TcpStream::connect(addr).expect("connect to the local end of the tunnel");
    s.set_read_timeout(Some(ATTEMPT_BOUND)).unwrap();
    s.write_all(what.as_bytes()).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut back = String::new();
    s.read_to_string(&mut back).unwrap();
    assert_eq!(back, what);
}

/// Waits (bounded) until `done` holds.
fn eventually(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_first_local_connection_finds_the_shared_connection_open() {
    let dht = LocalDht::start(NODES);
    let service = Service::start(Behaviour::Echo);
    let share = ShareProcess::start_with_log(&dht.bootstrap, service.port(), &[]);
    let (mut connect, log) =
        ConnectProcess::start_with_log(&dht.bootstrap, &share.key, &["--port", "0"]);
    let reached = connect
        .process
        .wait_for(READY, |line| event(line, "sharer_reached"));
    assert_eq!(reached["key"], share.key.as_str(), "{reached}");
    assert_eq!(reached["multiplexed"], true, "{reached}");
    assert!(reached["took_ms"].is_u64(), "{reached}");
    // The share has our connection before any local program connected.
    eventually(READY, "the share logs the connection", || {
        share.log().contains("peer connected, multiplexed")
    });
    assert_eq!(service.accepted(), 0, "no stream, no service connection");

    echo_once(connect.addr, "first");
    let line = log.wait_for_line(READY, "connected to the sharer, multiplexed");
    assert!(
        line.contains("connection=1") && line.contains("fresh=false"),
        "the first local connection went on the connection opened at start: {line}"
    );
    echo_once(connect.addr, "second");
    assert_eq!(
        share.log().matches("peer connecting").count(),
        1,
        "one handshake for the start and both local connections:\n{}",
        share.log()
    );
}

#[test]
fn a_connect_started_while_the_sharer_is_down_says_so_and_serves_once_it_is_back() {
    let dht = LocalDht::start(NODES);
    let service = Service::start(Behaviour::Echo);
    let (gone, share_args) = killed_share(&dht, &service);
    let (mut connect, log) =
        ConnectProcess::start_with_log(&dht.bootstrap, &gone.key, &["--port", "0"]);
    let started = Instant::now();
    let unreachable = connect
        .process
        .wait_for(ATTEMPT_BOUND, |line| event(line, "sharer_unreachable"));
    eprintln!("the dial at start gave up after {:?}", started.elapsed());
    assert_eq!(unreachable["key"], gone.key.as_str(), "{unreachable}");
    assert!(
        unreachable["reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "{unreachable}"
    );
    let warned = log.wait_for_line(READY, "could not reach the sharer at start");
    assert!(
        warned.contains("WARN") && warned.contains("Is the share running"),
        "{warned}"
    );
    assert!(connect.process.is_running(), "the connect keeps listening");
    assert_eq!(
        log.read()
            .matches("could not reach the sharer at start")
            .count(),
        1,
        "said once, not retried in a loop"
    );

    let share_args: Vec<&str> = share_args.iter().map(String::as_str).collect();
    let back = ShareProcess::start_with(&dht.bootstrap, &share_args);
    assert_eq!(back.key, gone.key, "same seed, same key");
    echo_once(connect.addr, "back");
}

/// A share killed, not stopped: its announcement stays in the DHT, so a connect finds a
/// record and only its dial at start fails. Returns the share's arguments for a restart.
fn killed_share(dht: &LocalDht, service: &Service) -> (ShareProcess, Vec<String>) {
    let args: Vec<String> = [
        "--host",
        "127.0.0.1",
        "--port",
        &service.port().to_string(),
        "--seed",
        &"5e".repeat(32),
    ]
    .map(String::from)
    .to_vec();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut gone = ShareProcess::start_with(&dht.bootstrap, &refs);
    gone.process.signal("KILL");
    gone.process.wait_exit(READY);
    (gone, args)
}

#[test]
fn stopping_while_the_dial_at_start_is_under_way_does_not_wait_for_it() {
    let dht = LocalDht::start(NODES);
    let service = Service::start(Behaviour::Echo);
    let (gone, _) = killed_share(&dht, &service);
    let (mut connect, log) =
        ConnectProcess::start_with_log(&dht.bootstrap, &gone.key, &["--port", "0"]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !log.read().contains("could not reach the sharer at start"),
        "the dial is still under way when the stop comes"
    );
    let stopping = Instant::now();
    connect.process.terminate();
    let status = connect.process.wait_exit(Duration::from_secs(10));
    eprintln!("stopped {:?} after SIGTERM", stopping.elapsed());
    assert!(status.success(), "{status}");
    assert!(stopping.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_node_sharer_sees_one_spare_connection_taken_by_the_first_local_one_or_closed() {
    require_node();
    let dht = LocalDht::start(NODES);
    let service = Service::start(Behaviour::Echo);
    let server = NodeServer::start(std::slice::from_ref(&dht.bootstrap), service.port(), None);

    // Used: the first local connection takes the spare, the next one dials its own.
    let (mut connect, log) =
        ConnectProcess::start_with_log(&dht.bootstrap, &server.public_key, &["--port", "0"]);
    let reached = connect
        .process
        .wait_for(READY, |line| event(line, "sharer_reached"));
    assert_eq!(reached["multiplexed"], false, "{reached}");
    eventually(READY, "the Node sharer connects to its service", || {
        service.accepted() == 1
    });
    echo_once(connect.addr, "first");
    assert_eq!(
        service.accepted(),
        1,
        "the first local connection took the spare"
    );
    echo_once(connect.addr, "second");
    assert_eq!(service.accepted(), 2);
    assert!(!log.read().contains("closed the connection dialed at start"));
    for _ in 0..2 {
        service.next_tally(ATTEMPT_BOUND);
    }

    // Unused: closed after a bounded time, and nothing more is dialed.
    let (unused, log) =
        ConnectProcess::start_with_log(&dht.bootstrap, &server.public_key, &["--port", "0"]);
    eventually(READY, "the spare reaches the service", || {
        service.accepted() == 3
    });
    let started = Instant::now();
    let spare = service.next_tally(SPARE_FOR + ATTEMPT_BOUND);
    let closed_after = started.elapsed();
    eprintln!("the unused spare was closed after {closed_after:?}");
    assert_eq!(spare.received, 0, "nobody used it");
    assert!(
        closed_after > SPARE_FOR - Duration::from_secs(5),
        "{closed_after:?}"
    );
    log.wait_for_line(READY, "closed the connection dialed at start");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(service.accepted(), 3, "no further dials at start");
    echo_once(unused.addr, "later");
    assert_eq!(service.accepted(), 4);
}

#[test]
fn a_burst_at_start_to_a_node_sharer_uses_the_spare_and_adds_no_stray_connection() {
    require_node();
    let dht = LocalDht::start(NODES);
    let service = Service::start(Behaviour::Echo);
    let server = NodeServer::start(std::slice::from_ref(&dht.bootstrap), service.port(), None);
    let connect = ConnectProcess::start(&dht.bootstrap, &server.public_key);
    // At once, while the dial at start is under way (or just done).
    let addr = connect.addr;
    let clients: Vec<_> = (0..4)
        .map(|i| std::thread::spawn(move || echo_once(addr, &format!("burst {i}"))))
        .collect();
    for client in clients {
        client.join().expect("every local connection is echoed");
    }
    for _ in 0..4 {
        service.next_tally(ATTEMPT_BOUND);
    }
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        service.accepted(),
        4,
        "one service connection per local connection, the spare among them"
    );
}
