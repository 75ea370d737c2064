//! Multiplexing between our own peers (docs/multiplexing.md), with the real binary on a local
//! DHT: many local connections ride one encrypted connection, streams do not starve each other,
//! server-first protocols and Node peers keep working, and a share that restarts leaves no
//! local connection hanging.

use test_support as support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use support::cli::{bin, ConnectProcess, LocalDht, ShareProcess};
use support::net::{assert_exchanged, exchange, pattern_sha, read_all, Behaviour, Service};
use support::node::{require_node, NodeClient, NodeServer};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const NODES: usize = 3;
const T: Duration = Duration::from_secs(120);

fn dial(addr: std::net::SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect to the local end of the tunnel");
    s.set_read_timeout(Some(T)).unwrap();
    s
}

/// Encrypted connections the share accepted, from its log (the `--json` events will replace
/// this scraping: one "peer connecting" line per handshake).
fn handshakes(share: &ShareProcess) -> usize {
    share.log().matches("peer connecting").count()
}

#[test]
fn fifty_connections_ride_one_encrypted_connection() {
    let dht = LocalDht::start(NODES);
    let volume = 256 * KIB;
    let service = Service::start(Behaviour::Exchange {
        send: volume,
        seed: 7,
    });
    let share = ShareProcess::start_with_log(&dht.bootstrap, service.port(), &[]);
    let connect = ConnectProcess::start(&dht.bootstrap, &share.key);
    let addr = connect.addr;
    let clients: Vec<_> = (0..50u64)
        .map(|i| thread::spawn(move || exchange(dial(addr), volume, 100 + i).unwrap()))
        .collect();
    let clients: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let mut servers: Vec<_> = (0..50).map(|_| service.next_tally(T)).collect();
    for (i, client) in clients.iter().enumerate() {
        let at = servers
            .iter()
            .position(|s| s.received_sha == client.sent_sha)
            .unwrap_or_else(|| panic!("connection {i}: the service never got its bytes"));
        let server = servers.swap_remove(at);
        assert_exchanged(client, &server, volume, 7, &format!("connection {i}"));
    }
    let log = share.log();
    assert_eq!(
        handshakes(&share),
        1,
        "50 local connections, one encrypted connection:\n{log}"
    );
    assert!(log.contains("multiplexed"), "{log}");
}

/// A local reader that takes `chunk` bytes at a time and pauses after each.
struct Slow<R> {
    inner: R,
    chunk: usize,
    pause: Duration,
}

impl<R: Read> Read for Slow<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        thread::sleep(self.pause);
        let n = buf.len().min(self.chunk);
        self.inner.read(&mut buf[..n])
    }
}

/// The connection's reader writes the peer's bytes into the local connection itself while it
/// takes them, and hands the rest to the stream's pipe when it does not: a local program that
/// reads slowly fills its socket, so both ways alternate through the transfer, and every byte
/// must still arrive once and in order, on both streams, while another stream runs at full
/// speed beside them.
#[test]
fn a_slow_local_reader_gets_every_byte_in_order_beside_a_fast_one() {
    let dht = LocalDht::start(NODES);
    let volume = 24 * MIB;
    let service = Service::start(Behaviour::SendAndClose {
        send: volume,
        seed: 11,
    });
    let share = ShareProcess::start(&dht.bootstrap, service.port(), &[]);
    let connect = ConnectProcess::start(&dht.bootstrap, &share.key);
    let addr = connect.addr;
    let readers: Vec<_> = [
        (16 * KIB as usize, Duration::from_micros(300)),
        (256 * KIB as usize, Duration::ZERO),
    ]
    .into_iter()
    .map(|(chunk, pause)| {
        thread::spawn(move || {
            let mut slow = Slow {
                inner: dial(addr),
                chunk,
                pause,
            };
            read_all(&mut slow).unwrap()
        })
    })
    .collect();
    for r in readers {
        assert_eq!(r.join().unwrap(), (volume, pattern_sha(volume, 11)));
    }
}

#[test]
fn an_interactive_round_trip_stays_quick_while_a_bulk_transfer_runs() {
    let dht = LocalDht::start(NODES);
    let service = Service::start(Behaviour::Echo);
    let share = ShareProcess::start_with_log(&dht.bootstrap, service.port(), &[]);
    let connect = ConnectProcess::start(&dht.bootstrap, &share.key);
    let addr = connect.addr;
    // The bulk stream: 200 MiB echoed back, verified.
    let bulk = thread::spawn(move || exchange(dial(addr), 200 * MIB, 9).unwrap());
    thread::sleep(Duration::from_millis(300));
    let mut chat = dial(addr);
    chat.set_nodelay(true).unwrap();
    let mut slowest = Duration::ZERO;
    let mut byte = [0u8; 1];
    for i in 0..100u8 {
        let sent = Instant::now();
        chat.write_all(&[i]).unwrap();
        chat.read_exact(&mut byte).unwrap();
        assert_eq!(byte[0], i);
        slowest = slowest.max(sent.elapsed());
    }
    let bulk_done = bulk.is_finished();
    let tally = bulk.join().unwrap();
    assert_eq!(tally.received, 200 * MIB);
    assert_eq!(
        tally.received_sha, tally.sent_sha,
        "the echo came back intact"
    );
    eprintln!("slowest interactive round trip during the bulk transfer: {slowest:?} (bulk over by then: {bulk_done})");
    // Generous: a starved stream would wait for the whole bulk transfer (seconds).
    assert!(
        slowest < Duration::from_secs(2),
        "an interactive round trip took {slowest:?} beside a bulk transfer"
    );
    assert_eq!(handshakes(&share), 1, "{}", share.log());
}

const BANNER: &[u8] = b"220 hello, speak after me\r\n";

/// Reads the banner before writing anything, then checks the echo.
fn banner_then_echo(addr: std::net::SocketAddr) {
    let mut s = dial(addr);
    let mut got = vec![0u8; BANNER.len()];
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.read_exact(&mut got)
        .expect("the banner arrives before the client says anything");
    assert_eq!(got, BANNER);
    s.write_all(b"ping").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"ping");
}

#[test]
fn a_server_first_service_speaks_first_through_our_connect_and_a_node_client() {
    require_node();
    let dht = LocalDht::start(NODES);
    let service = Service::start(Behaviour::Banner(BANNER));
    let share = ShareProcess::start_with_log(&dht.bootstrap, service.port(), &[]);
    let connect = ConnectProcess::start(&dht.bootstrap, &share.key);
    // The first (opens the connection) and a later one (a stream on it).
    banner_then_echo(connect.addr);
    banner_then_echo(connect.addr);
    let node = NodeClient::start(std::slice::from_ref(&dht.bootstrap), &share.key, 0);
    let node_addr = ([127, 0, 0, 1], node.port).into();
    banner_then_echo(node_addr);
    banner_then_echo(node_addr);
    let log = share.log();
    assert!(
        log.contains("peer connected, multiplexed"),
        "our connect multiplexes:\n{log}"
    );
    assert!(
        log.matches("peer connected").count() >= 3,
        "the Node client's connections are raw ones of their own:\n{log}"
    );
}

#[test]
fn our_connect_falls_back_to_raw_connections_with_a_node_server() {
    require_node();
    let dht = LocalDht::start(NODES);
    let service = Service::start(Behaviour::Exchange {
        send: MIB,
        seed: 11,
    });
    let server = NodeServer::start(std::slice::from_ref(&dht.bootstrap), service.port(), None);
    let connect = ConnectProcess::start(&dht.bootstrap, &server.public_key);
    let addr = connect.addr;
    let clients: Vec<_> = (0..4u64)
        .map(|i| thread::spawn(move || exchange(dial(addr), MIB, 20 + i).unwrap()))
        .collect();
    for (i, c) in clients.into_iter().enumerate() {
        let client = c.join().unwrap();
        assert_eq!(client.received, MIB, "connection {i}");
        assert_eq!(client.received_sha, pattern_sha(MIB, 11), "connection {i}");
        let server = service.next_tally(T);
        assert_eq!(server.received, MIB, "connection {i}");
    }
}

/// An identity file, so that a restarted share has the same key; removed when dropped.
struct Identity {
    dir: std::path::PathBuf,
    file: String,
}

impl Identity {
    fn create(name: &str) -> Identity {
        let dir =
            std::env::temp_dir().join(format!("p2p-socket-mux-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("identity.json").to_str().unwrap().to_string();
        let made = bin()
            .args(["create-id", "--identity", &file])
            .output()
            .unwrap();
        assert!(made.status.success(), "{made:?}");
        Identity { dir, file }
    }

    /// What a share with this identity is started with.
    fn share_args(&self) -> [&str; 4] {
        ["--identity", &self.file, "--key-derivation", "hashed"]
    }
}

impl Drop for Identity {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_restarted_share_ends_open_streams_and_the_next_connection_opens_a_new_one() {
    let dht = LocalDht::start(NODES);
    let service = Service::start(Behaviour::Echo);
    let identity = Identity::create("restart");
    let args = identity.share_args();
    let share = ShareProcess::start(&dht.bootstrap, service.port(), &args);
    let connect = ConnectProcess::start(&dht.bootstrap, &share.key);

    let mut open = dial(connect.addr);
    open.write_all(b"before").unwrap();
    let mut got = [0u8; 6];
    open.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"before");

    drop(share); // killed: no goodbye reaches the connect
                 // Bytes in flight to a dead peer: the stream must end (reset or EOF), not hang.
    let ended = Instant::now();
    let _ = open.write_all(&[1u8; 4096]);
    let mut buf = [0u8; 4096];
    let outcome = loop {
        match open.read(&mut buf) {
            Ok(0) => break "end of file",
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                panic!(
                    "the open connection still hangs after {:?}",
                    ended.elapsed()
                )
            }
            Err(_) => break "reset",
        }
    };
    eprintln!(
        "the open connection ended ({outcome}) {:?} after the share died",
        ended.elapsed()
    );

    let share = ShareProcess::start(&dht.bootstrap, service.port(), &args);
    let mut next = dial(connect.addr);
    next.write_all(b"after").unwrap();
    next.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    next.read_to_end(&mut back).unwrap();
    assert_eq!(
        back, b"after",
        "the next connection reached the restarted share"
    );
    drop(share);
}

/// The shared connection was idle when the share died (SIGKILL: no goodbye): the path is dead
/// but nothing was sent on it, so the transport has not noticed. The next local connection
/// must not be put on it and fail: the connect probes the idle connection, finds no answer,
/// and opens a new one to the restarted share (docs/multiplexing.md, "Liveness").
#[test]
fn a_connection_opened_after_an_idle_share_died_reaches_the_restarted_share() {
    let dht = LocalDht::start(NODES);
    let service = Service::start(Behaviour::Echo);
    let identity = Identity::create("idle");
    let args = identity.share_args();
    let volume = 64 * KIB;
    let verified = |seed: u64, connect: &ConnectProcess| {
        let t = exchange(dial(connect.addr), volume, seed)
            .unwrap_or_else(|e| panic!("connection {seed} failed: {e}"));
        assert_eq!(t.received, volume, "connection {seed}");
        assert_eq!(
            t.received_sha,
            pattern_sha(volume, seed),
            "connection {seed}"
        );
    };
    let share = ShareProcess::start(&dht.bootstrap, service.port(), &args);
    let connect = ConnectProcess::start(&dht.bootstrap, &share.key);
    verified(1, &connect);

    drop(share); // SIGKILL, while the shared connection is idle
    let share = ShareProcess::start(&dht.bootstrap, service.port(), &args);
    // Past the idle spell after which a shared connection is probed (1 s), whatever the time
    // the restart took.
    thread::sleep(Duration::from_millis(1500));
    verified(2, &connect);
    verified(3, &connect);
    drop(share);
}

/// How an open local connection ended: a reset (what a cut tunnel must look like), a clean end
/// of data (what it must not), or nothing within `limit`.
fn ending(stream: &mut TcpStream, limit: Duration) -> (&'static str, Duration) {
    let started = Instant::now();
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return ("end of data", started.elapsed()),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return ("reset", started.elapsed())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return ("nothing", started.elapsed())
            }
            Err(e) => panic!("unexpected error reading the local connection: {e}"),
        }
    }
}

/// A share stopped with SIGTERM tells the connect at once (a multiplexed connection gets a
/// CLOSE, a raw one its transport stream's end), and the connect resets the local connection
/// instead of ending it cleanly: the program sees a cut connection, not a complete answer. An
/// idle connection would otherwise learn of it only from its next unanswered bytes.
#[test]
fn a_share_stopped_with_sigterm_resets_the_open_local_connections_at_once() {
    for extra in [&[][..], &["--no-multiplex"][..]] {
        let dht = LocalDht::start(NODES);
        let service = Service::start(Behaviour::Echo);
        let mut share = ShareProcess::start(&dht.bootstrap, service.port(), &[]);
        let mut args = vec!["--port", "0"];
        args.extend_from_slice(extra);
        let connect = ConnectProcess::start_with(&dht.bootstrap, &share.key, &args);
        let mut open = dial(connect.addr);
        open.write_all(b"hello").unwrap();
        let mut got = [0u8; 5];
        open.read_exact(&mut got).unwrap();
        let stopped = Instant::now();
        share.terminate_and_expect_clean_exit();
        let (how, _) = ending(&mut open, Duration::from_secs(20));
        eprintln!(
            "{extra:?}: the open local connection ended ({how}) {:?} after SIGTERM",
            stopped.elapsed()
        );
        assert_eq!(how, "reset", "{extra:?}");
    }
}

/// The other way: a connect stopped with SIGTERM closes its connection to the share, and the
/// share resets its connection to the local service.
#[test]
fn a_connect_stopped_with_sigterm_resets_the_shares_service_connection_at_once() {
    for extra in [&[][..], &["--no-multiplex"][..]] {
        let dht = LocalDht::start(NODES);
        let service = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = service.local_addr().unwrap().port();
        let share = ShareProcess::start(&dht.bootstrap, port, &[]);
        let mut args = vec!["--port", "0"];
        args.extend_from_slice(extra);
        let mut connect = ConnectProcess::start_with(&dht.bootstrap, &share.key, &args);
        let mut open = dial(connect.addr);
        open.write_all(b"x").unwrap();
        let (mut served, _) = service.accept().unwrap();
        let mut got = [0u8; 1];
        served.set_read_timeout(Some(T)).unwrap();
        served.read_exact(&mut got).unwrap();
        let stopped = Instant::now();
        connect.process.terminate();
        let status = connect.process.wait_exit(Duration::from_secs(15));
        assert!(
            status.success(),
            "connect exited with {status} after SIGTERM"
        );
        let (how, _) = ending(&mut served, Duration::from_secs(20));
        eprintln!(
            "{extra:?}: the service's connection ended ({how}) {:?} after SIGTERM",
            stopped.elapsed()
        );
        assert_eq!(how, "reset", "{extra:?}");
    }
}

#[test]
fn connect_refuses_local_connections_beyond_max_connections() {
    let dht = LocalDht::start(NODES);
    let service = Service::start(Behaviour::Echo);
    let share = ShareProcess::start(&dht.bootstrap, service.port(), &[]);
    let connect =
        ConnectProcess::start_with(&dht.bootstrap, &share.key, &["--max-connections", "2"]);
    let round_trip = |s: &mut TcpStream| -> std::io::Result<()> {
        s.write_all(b"x")?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b)
    };
    let mut first = dial(connect.addr);
    let mut second = dial(connect.addr);
    round_trip(&mut first).unwrap();
    round_trip(&mut second).unwrap();
    let mut third = dial(connect.addr);
    assert!(
        round_trip(&mut third).is_err(),
        "a third local connection is closed at once"
    );
    drop(first);
    // The slot frees once the first connection's end has gone through; bounded retries.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut again = dial(connect.addr);
        if round_trip(&mut again).is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no slot freed after a connection closed"
        );
        thread::sleep(Duration::from_millis(200));
    }
    round_trip(&mut second).unwrap();
}
