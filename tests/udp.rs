//! `share --udp` and `connect --udp`, the real binary over a real local DHT: datagrams round-trip
//! through a UDP echo service, flow by flow, verified byte for byte; every limit is driven past
//! while a well-behaved flow keeps being served; and holesail 2.4.1's UDP mode (on the Bare
//! runtime) works with us both ways.

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use test_support as support;

use support::cli::{ConnectProcess, LocalDht, LogFile, ShareProcess};
use support::net::Pattern;
use support::node::start_bare_script;
use support::process::ChildProcess;

/// Rust-only tests; Node's hyperdht (inside holesail) wants a bigger DHT to be reliable.
const NODES: usize = 3;
const HOLESAIL_NODES: usize = 10;

/// A flow's first datagram waits for its connection to open; a loaded machine can be slow.
const FIRST_REPLY: Duration = Duration::from_secs(30);
const REPLY: Duration = Duration::from_secs(10);
/// How long a datagram that must not be answered is given to prove it.
const NO_REPLY: Duration = Duration::from_secs(3);
const LOGGED: Duration = Duration::from_secs(15);

/// The largest UDP payload over IPv4, which the tunnel must carry whole.
const LARGEST_IPV4_DATAGRAM: usize = 65_507;

/// A UDP echo service on 127.0.0.1 that remembers from which addresses datagrams came (the share
/// gives each flow a socket of its own).
struct Echo {
    port: u16,
    sources: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Echo {
    fn start() -> Echo {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let port = socket.local_addr().unwrap().port();
        let sources = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen, stopped) = (Arc::clone(&sources), Arc::clone(&stop));
        let thread = thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while !stopped.load(Ordering::Relaxed) {
                let Ok((len, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                seen.lock().unwrap().push(from);
                let _ = socket.send_to(&buf[..len], from);
            }
        });
        Echo {
            port,
            sources,
            stop,
            thread: Some(thread),
        }
    }

    fn distinct_sources(&self) -> HashSet<SocketAddr> {
        self.sources.lock().unwrap().iter().copied().collect()
    }

    fn last_source(&self) -> SocketAddr {
        *self
            .sources
            .lock()
            .unwrap()
            .last()
            .expect("the echo got no datagram")
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A local UDP client of a connect: each datagram carries its client number and sequence, so a
/// datagram delivered to the wrong client, or out of order, or changed, is caught.
struct Client {
    id: u64,
    socket: UdpSocket,
    to: SocketAddr,
    seq: u64,
}

impl Client {
    fn new(id: u64, to: SocketAddr) -> Client {
        Client {
            id,
            socket: UdpSocket::bind("127.0.0.1:0").unwrap(),
            to,
            seq: 0,
        }
    }

    /// The next datagram of this client, `len` bytes (at least 16).
    fn next_datagram(&mut self, len: usize) -> Vec<u8> {
        self.seq += 1;
        let mut d = vec![0u8; len.max(16)];
        d[..8].copy_from_slice(&self.id.to_be_bytes());
        d[8..16].copy_from_slice(&self.seq.to_be_bytes());
        Pattern::new(self.id << 32 | self.seq).fill(&mut d[16..]);
        d
    }

    fn send(&mut self, len: usize) -> Vec<u8> {
        let d = self.next_datagram(len);
        self.socket.send_to(&d, self.to).unwrap();
        d
    }

    fn receive(&self, within: Duration) -> Option<Vec<u8>> {
        self.socket.set_read_timeout(Some(within)).unwrap();
        let mut buf = vec![0u8; 65_536];
        match self.socket.recv_from(&mut buf) {
            Ok((len, from)) => {
                assert_eq!(
                    from, self.to,
                    "client {}: a datagram from elsewhere",
                    self.id
                );
                Some(buf[..len].to_vec())
            }
            Err(_) => None,
        }
    }

    /// Sends one datagram of `len` bytes and checks that exactly it comes back.
    fn round_trip(&mut self, len: usize, within: Duration) {
        let sent = self.send(len);
        let got = self.receive(within).unwrap_or_else(|| {
            panic!(
                "client {}: no echo of datagram {} ({len} bytes) within {within:?}",
                self.id, self.seq
            )
        });
        assert_eq!(got.len(), sent.len(), "client {}: echo length", self.id);
        assert!(
            got == sent,
            "client {}: the echo of datagram {} differs (client {} seq {} came back)",
            self.id,
            self.seq,
            u64::from_be_bytes(got[..8].try_into().unwrap()),
            u64::from_be_bytes(got[8..16].try_into().unwrap()),
        );
    }

    /// Sends one datagram and checks that nothing comes back within [`NO_REPLY`].
    fn unanswered(&mut self) {
        self.send(64);
        assert!(
            self.receive(NO_REPLY).is_none(),
            "client {}: got an answer that the limit should have prevented",
            self.id
        );
    }
}

/// Several clients at once, each round-tripping datagrams of many sizes (the largest included).
fn many_clients_round_trip(to: SocketAddr, clients: u64) {
    let threads: Vec<_> = (1..=clients)
        .map(|id| {
            thread::spawn(move || {
                let mut c = Client::new(id, to);
                c.round_trip(100, FIRST_REPLY);
                for len in [
                    16,
                    1,
                    512,
                    1200,
                    1472,
                    4096,
                    9000,
                    30_000,
                    LARGEST_IPV4_DATAGRAM,
                ] {
                    c.round_trip(len, REPLY);
                }
                for i in 0..30 {
                    c.round_trip(16 + i * 37, REPLY);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a client failed");
    }
}

fn udp_share(dht: &LocalDht, echo: &Echo, extra: &[&str], log: Option<&LogFile>) -> ShareProcess {
    let port = echo.port.to_string();
    let mut args = vec!["--udp", "--host", "127.0.0.1", "--port", &port];
    args.extend_from_slice(extra);
    ShareProcess::start_logged(&dht.bootstrap, &args, log)
}

fn udp_connect(dht: &LocalDht, key: &str, extra: &[&str], log: Option<&LogFile>) -> ConnectProcess {
    let mut args = vec!["--udp", "--port", "0"];
    args.extend_from_slice(extra);
    ConnectProcess::start_logged(&dht.bootstrap, key, &args, log)
}

/// Our share of an echo service and our connect to it, on a DHT of their own; `log` keeps one
/// side's log.
struct Tunnel {
    echo: Echo,
    connect: ConnectProcess,
    _share: ShareProcess,
    _dht: LocalDht,
}

enum Side {
    Share,
    Connect,
}

impl Tunnel {
    fn start(
        share_flags: &[&str],
        connect_flags: &[&str],
        log: Option<(&LogFile, Side)>,
    ) -> Tunnel {
        let dht = LocalDht::start(NODES);
        let echo = Echo::start();
        let (share_log, connect_log) = match log {
            Some((log, Side::Share)) => (Some(log), None),
            Some((log, Side::Connect)) => (None, Some(log)),
            None => (None, None),
        };
        let share = udp_share(&dht, &echo, share_flags, share_log);
        let connect = udp_connect(&dht, &share.key, connect_flags, connect_log);
        Tunnel {
            echo,
            connect,
            _share: share,
            _dht: dht,
        }
    }

    fn client(&self, id: u64) -> Client {
        Client::new(id, self.connect.addr)
    }
}

#[test]
fn datagrams_round_trip_between_our_connect_and_share_one_flow_per_client() {
    let t = Tunnel::start(&[], &[], None);
    many_clients_round_trip(t.connect.addr, 4);
    assert_eq!(
        t.echo.distinct_sources().len(),
        4,
        "each client should reach the service from a socket of its own"
    );
}

#[test]
fn connect_drops_datagrams_of_clients_past_its_flow_limit() {
    let log = LogFile::new("connect");
    let t = Tunnel::start(&[], &["--udp-max-flows", "2"], Some((&log, Side::Connect)));
    let (mut a, mut b) = (t.client(1), t.client(2));
    a.round_trip(100, FIRST_REPLY);
    b.round_trip(100, FIRST_REPLY);
    t.client(3).unanswered();
    log.wait_for_line(LOGGED, "dropping datagrams from new UDP clients");
    a.round_trip(1000, REPLY);
    b.round_trip(1000, REPLY);
}

#[test]
fn share_refuses_flows_past_its_limit() {
    let log = LogFile::new("share");
    let t = Tunnel::start(&["--udp-max-flows", "1"], &[], Some((&log, Side::Share)));
    let mut a = t.client(1);
    a.round_trip(100, FIRST_REPLY);
    t.client(2).unanswered();
    log.wait_for_line(LOGGED, "refused a peer's UDP flow");
    a.round_trip(1000, REPLY);
    assert_eq!(t.echo.distinct_sources().len(), 1);
}

#[test]
fn a_quiet_flow_ends_after_the_idle_timeout_and_the_next_datagram_opens_another() {
    let log = LogFile::new("connect");
    let t = Tunnel::start(
        &[],
        &["--udp-idle-timeout", "1"],
        Some((&log, Side::Connect)),
    );
    let mut a = t.client(1);
    a.round_trip(100, FIRST_REPLY);
    let first = t.echo.last_source();
    log.wait_for_line(LOGGED, "reason=Idle");
    a.round_trip(100, FIRST_REPLY);
    assert_ne!(
        t.echo.last_source(),
        first,
        "after the idle timeout the share should serve the client on a new flow"
    );
}

#[test]
fn a_full_flow_queue_drops_and_counts_while_other_flows_are_served() {
    let log = LogFile::new("connect");
    let flags = ["--udp-queue", "2", "--udp-idle-timeout", "2"];
    let t = Tunnel::start(&[], &flags, Some((&log, Side::Connect)));
    let mut calm = t.client(1);
    calm.round_trip(100, FIRST_REPLY);
    // A burst far longer than the queue, sent before the burst's own flow can have opened.
    // 100 datagrams fit connect's socket buffer (about 1 KiB of kernel memory each against
    // 208 KiB), so the kernel never drops the calm client's datagram behind them: what is
    // dropped is dropped by the flow's queue, which is what this test counts.
    let mut burst = t.client(2);
    for _ in 0..100 {
        burst.send(200);
    }
    log.wait_for_line(LOGGED, "queue is full");
    calm.round_trip(1000, REPLY);
    let mut echoed = 0;
    while burst.receive(Duration::from_secs(2)).is_some() {
        echoed += 1;
    }
    assert!(echoed < 100, "all 100 came back through a queue of 2");
    let closed = log.wait_for_line(LOGGED, "flow=2 reason=Idle");
    let dropped: u64 = closed
        .split_whitespace()
        .find_map(|f| f.strip_prefix("dropped="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no dropped count in {closed:?}"));
    assert!(dropped > 0, "the drops were not counted: {closed:?}");
}

/// holesail's UDP fixture on the Bare runtime, with its ready line.
fn holesail(args: &[&str]) -> (ChildProcess, serde_json::Value) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    start_bare_script("holesail-udp.js", &args)
}

#[test]
fn a_frame_longer_than_any_datagram_closes_only_that_flow() {
    let dht = LocalDht::start(HOLESAIL_NODES);
    let echo = Echo::start();
    let log = LogFile::new("share");
    let share = udp_share(&dht, &echo, &[], Some(&log));
    let connect = udp_connect(&dht, &share.key, &[], None);
    let mut calm = Client::new(1, connect.addr);
    calm.round_trip(100, FIRST_REPLY);
    let (mut junk, _) = holesail(&[
        "--mode",
        "junk",
        "--bootstrap",
        &dht.bootstrap,
        "--key",
        &share.key,
    ]);
    let wait = |process: &mut ChildProcess, field: &str| {
        process.wait_for(FIRST_REPLY, |line| {
            serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .filter(|v| v.get(field).is_some())
        })
    };
    wait(&mut junk, "echoed");
    wait(&mut junk, "closed");
    log.wait_for_line(LOGGED, "does not speak holesail's UDP framing");
    calm.round_trip(1000, REPLY);
}

#[test]
fn holesail_udp_server_serves_our_connect() {
    let dht = LocalDht::start(HOLESAIL_NODES);
    let echo = Echo::start();
    let port = echo.port.to_string();
    let (_server, ready) = holesail(&[
        "--mode",
        "server",
        "--bootstrap",
        &dht.bootstrap,
        "--port",
        &port,
    ]);
    let key = ready["key"].as_str().expect("the holesail server's key");
    let connect = udp_connect(&dht, key, &[], None);
    many_clients_round_trip(connect.addr, 3);
    assert_eq!(echo.distinct_sources().len(), 3);
}

#[test]
fn holesail_udp_client_reaches_our_share() {
    let dht = LocalDht::start(HOLESAIL_NODES);
    let echo = Echo::start();
    let share = udp_share(&dht, &echo, &[], None);
    let (_client, ready) = holesail(&[
        "--mode",
        "client",
        "--bootstrap",
        &dht.bootstrap,
        "--key",
        &share.key,
        "--port",
        "0",
    ]);
    let port = ready["port"].as_u64().expect("the holesail client's port") as u16;
    many_clients_round_trip(SocketAddr::from(([127, 0, 0, 1], port)), 3);
    assert_eq!(echo.distinct_sources().len(), 3);
}
