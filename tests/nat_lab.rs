//! Share and connect across NATs, in a lab of network namespaces (crates/netlab, docs/lab.md):
//! every pair of homes over {open, cone, symmetric}, each with one running `connect` carrying
//! three TCP connections in a row, 10 MiB each way verified at both ends, and a blind relay on
//! the lab's public relay host that both sides know (`--relay`): only the cell where no hole
//! can be punched (two randomising NATs) may go through it for every connection; where the
//! connect sits behind a randomising NAT and a hole can be punched, the first connection starts
//! on the relay and moves to the punched path (relay first, punch later), the next ones take
//! that hole; every other cell must not touch it. And Node's hyperdht on the other side across two cone NATs, both ways. Each test prints
//! a table of how every connection travelled, how long its first byte took and how fast it
//! moved.
//!
//! Needs root (the lab builds network namespaces); without it the tests fail saying so.

use test_support as support;

use std::net::{SocketAddr, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use netlab::{LabSpec, Nat};
use support::lab::{dump, panic_text, service_in, Log, TwoHomes};
use support::net::{assert_exchanged, exchange_timed, pattern_sha, Behaviour, Service};

const MIB: u64 = 1024 * 1024;
const VOLUME: u64 = 10 * MIB;
const CONNECTIONS: u64 = 3;
const LOSSY_VOLUME: u64 = 2 * MIB;
/// Longest a service may wait for the end of a connection's transfer.
const TRANSFER: Duration = Duration::from_secs(120);
/// How long the punch behind a connection that started on the relay may take to open (ours
/// gives up after 30 s).
const PUNCH_OPENS: Duration = Duration::from_secs(30);
/// Connections after the first reuse what the first found out, and must be quick.
const LATER_CONNECTION: Duration = Duration::from_secs(1);

/// The tests measure speed and time: one lab at a time keeps them from competing for the CPU.
static ONE_LAB_AT_A_TIME: Mutex<()> = Mutex::new(());

/// One TCP connection through the tunnel.
struct Connection {
    path: String,
    first_byte: Duration,
    elapsed: Duration,
    /// Bytes moved each way.
    volume: u64,
}

/// Three connections in a row to `listen` (inside `netns`), each moving `volume` bytes both
/// ways, verified at both ends. `path_of(n)` says how connection n travelled.
fn three_connections(
    lab: &netlab::Lab,
    netns: &str,
    listen: SocketAddr,
    service: &Service,
    volume: u64,
    path_of: impl Fn(u64) -> Option<String>,
) -> Vec<Connection> {
    (0..CONNECTIONS)
        .map(|round| {
            let stream = lab
                .in_netns(netns, move || TcpStream::connect(listen))
                .expect("enter the connecting home")
                .expect("dial the local end of the tunnel");
            let started = Instant::now();
            let (client, first_byte) = exchange_timed(stream, volume, 10 + round)
                .unwrap_or_else(|e| panic!("connection {}: the transfer failed: {e}", round + 1));
            let elapsed = started.elapsed();
            let server = service.next_tally(TRANSFER);
            let n = round + 1;
            assert_exchanged(
                &client,
                &server,
                volume,
                20 + round,
                &format!("connection {n}"),
            );
            Connection {
                path: path_of(n).unwrap_or_else(|| "?".into()),
                first_byte: first_byte.expect("a verified transfer has a first byte"),
                elapsed,
                volume,
            }
        })
        .collect()
}

/// How one cell of a table ended.
enum Outcome {
    Connected(Vec<Connection>),
    Failed(String),
}

struct Row {
    cell: String,
    outcome: Outcome,
}

fn print_table(title: &str, rows: &[Row]) {
    let w = rows.iter().map(|r| r.cell.len()).max().unwrap_or(0).max(4);
    let mut out = format!(
        "\n{title}: {CONNECTIONS} connections in a row per cell\n{:<w$} {:<26} {:<34} {}\n",
        "cell", "path", "time to first byte (1st/2nd/3rd)", "throughput each way"
    );
    for row in rows {
        let (path, first, speed) = match &row.outcome {
            Outcome::Connected(conns) => {
                let paths: Vec<&str> = conns.iter().map(|c| c.path.as_str()).collect();
                let path = if paths.iter().all(|p| *p == paths[0]) {
                    paths[0].to_string()
                } else {
                    paths.join(",")
                };
                let first: Vec<String> = conns
                    .iter()
                    .map(|c| format!("{}", c.first_byte.as_millis()))
                    .collect();
                // Moving the bytes, not setting the connection up (that is the other column).
                let total: Duration = conns
                    .iter()
                    .map(|c| c.elapsed.saturating_sub(c.first_byte))
                    .sum();
                let mib = conns.iter().map(|c| c.volume).sum::<u64>() as f64 / MIB as f64;
                let speed = mib / total.as_secs_f64();
                (
                    path,
                    format!("{} ms", first.join(" / ")),
                    format!(
                        "{speed:.prec$} MiB/s",
                        prec = if speed < 10.0 { 1 } else { 0 }
                    ),
                )
            }
            Outcome::Failed(why) => ("FAILED".into(), why.clone(), String::new()),
        };
        out += &format!("{:<w$} {:<26} {:<34} {}\n", row.cell, path, first, speed);
    }
    // Straight to the process's stderr, not through eprintln!: the test harness captures that
    // for passing tests, and this table is the lab's result, wanted in every CI log.
    let _ = std::io::Write::write_all(&mut std::io::stderr(), out.as_bytes());
}

/// Runs `cell`, turning a panic into a failed row (so that the table shows every cell).
fn run(cell: String, f: impl FnOnce() -> Outcome) -> Row {
    let outcome =
        catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|e| Outcome::Failed(panic_text(e)));
    Row { cell, outcome }
}

/// Two homes, the lab's DHT, and the test service in the first home (where shares run).
struct Cell {
    homes: TwoHomes,
    service: Service,
    /// Bytes each connection moves each way.
    volume: u64,
}

impl Cell {
    fn new(spec: LabSpec, volume: u64) -> Cell {
        let homes = TwoHomes::new(spec);
        // The n-th connection answers with seed 20 + n while taking what the client sends.
        let service = service_in(&homes.lab, homes.sharing_home(), move |n| {
            Behaviour::Exchange {
                send: volume,
                seed: 20 + n,
            }
        });
        Cell {
            homes,
            service,
            volume,
        }
    }

    fn rust_share(&self, log: &Log, extra: &[&str]) -> (netlab::LabProcess, String) {
        self.homes.rust_share(self.service.port(), log, extra)
    }

    /// Three connections to `listen`; a failure comes with the logs.
    fn connections(
        &self,
        listen: SocketAddr,
        path_of: impl Fn(u64) -> Option<String>,
        logs: &[&Log],
    ) -> Outcome {
        let run = catch_unwind(AssertUnwindSafe(|| {
            three_connections(
                &self.homes.lab,
                self.homes.connecting_home(),
                listen,
                &self.service,
                self.volume,
                path_of,
            )
        }));
        match run {
            Ok(conns) => Outcome::Connected(conns),
            Err(e) => Outcome::Failed(format!("{}\n{}", panic_text(e), dump(logs))),
        }
    }
}

/// A Rust share in a home behind `share_nat`, a Rust connect in one behind `connect_nat`, both
/// told about the lab's relay. Only two randomising NATs, between which no hole can be punched,
/// may go through it for every connection. When one side is behind a randomising NAT and the
/// other behind a cone NAT, the connect knows the pair is hard before punching (its own NAT
/// from its DHT nodes, the sharer's from the sharer's handshake): its first connection starts
/// on the relay and moves to the punched path (or, if it ended first, the punch goes on for
/// the next ones; those that start before it opened start on the relay too). Elsewhere the
/// relay must see no pairing (an open side is dialled directly).
fn rust_cell(share_nat: Nat, connect_nat: Nat) -> Outcome {
    let cell = Cell::new(LabSpec::homes([share_nat, connect_nat]), VOLUME);
    let name = format!("{share_nat}-{connect_nat}");
    let relay_log = Log::new(&format!("{name}-relay"));
    let share_log = Log::new(&format!("{name}-share"));
    let connect_log = Log::new(&format!("{name}-connect"));
    let (_relay, relay) = cell.homes.relay(&relay_log);
    let (_share, key) = cell.rust_share(&share_log, &["--relay", &relay]);
    // Each connection its own pairing at the relay (multiplexed, they would be one).
    let (_connect, listen) =
        cell.homes
            .rust_connect(&key, &connect_log, &["--relay", &relay, "--no-multiplex"]);
    let logs = [&share_log, &connect_log, &relay_log];
    let outcome = cell.connections(
        listen,
        |n| connect_log.field("connected to the sharer", n, "path"),
        &logs,
    );
    let Outcome::Connected(conns) = &outcome else {
        return outcome;
    };
    let needs_relay = share_nat == Nat::Symmetric && connect_nat == Nat::Symmetric;
    let relay_first = matches!(
        (share_nat, connect_nat),
        (Nat::Cone, Nat::Symmetric) | (Nat::Symmetric, Nat::Cone)
    );
    let relayed = conns.iter().filter(|c| c.path == "relayed").count();
    let pairs = relay_log.text().matches("relaying a pair of peers").count();
    let (want_relayed, want_pairs) = if needs_relay {
        (conns.len(), conns.len())
    } else if relay_first {
        // A connection that starts while the first one's punch still runs starts on the relay
        // too (10 MiB each way take some 200 ms, the punch 100 to 800 ms).
        (relayed.max(1), relayed.max(1))
    } else {
        (0, 0)
    };
    // Fast transfers may all end before the punch behind the first one opens: wait for it.
    let punched_later = || {
        let log = connect_log.text();
        log.contains("connection moved to the direct path")
            || log.contains("punched after the relayed connection ended")
    };
    let waited = Instant::now();
    while relay_first && !punched_later() && waited.elapsed() < PUNCH_OPENS {
        std::thread::sleep(Duration::from_millis(100));
    }
    if relay_first && (conns[0].path != "relayed" || !punched_later()) {
        return Outcome::Failed(format!(
            "the first connection must start on the relay and the punch behind it open\n{}",
            dump(&logs)
        ));
    }
    if relayed != want_relayed || pairs != want_pairs {
        return Outcome::Failed(format!(
            "{relayed} connections went through the relay and it relayed {pairs} pairs; expected {want_relayed} and {want_pairs}\n{}",
            dump(&logs)
        ));
    }
    outcome
}

#[test]
fn share_and_connect_meet_across_every_pair_of_nats() {
    let _one = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let mut rows = Vec::new();
    for share_nat in Nat::ALL {
        for connect_nat in Nat::ALL {
            let cell = format!("share {share_nat} <- connect {connect_nat}");
            rows.push(run(cell, || rust_cell(share_nat, connect_nat)));
        }
    }
    print_table(
        &format!("share x connect across NATs, {} MiB each way", VOLUME / MIB),
        &rows,
    );
    check(&rows, true);
}

/// Every cell connected, and with `fast_later`, connections after the first came quickly.
fn check(rows: &[Row], fast_later: bool) {
    let mut failures = Vec::new();
    for row in rows {
        match &row.outcome {
            Outcome::Connected(conns) if fast_later => {
                for (i, c) in conns.iter().enumerate().skip(1) {
                    if c.first_byte > LATER_CONNECTION {
                        failures.push(format!(
                            "{}: connection {} took {:?} to its first byte, more than {LATER_CONNECTION:?}",
                            row.cell,
                            i + 1,
                            c.first_byte
                        ));
                    }
                }
            }
            Outcome::Connected(_) => {}
            Outcome::Failed(why) => failures.push(format!("{}: {why}", row.cell)),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// A Node hyperdht client in a cone home reaching a Rust share in another.
fn node_client_to_rust_share() -> Outcome {
    let cell = Cell::new(LabSpec::homes([Nat::Cone, Nat::Cone]), VOLUME);
    let share_log = Log::new("node-client-share");
    let (_share, key) = cell.rust_share(&share_log, &[]);
    let (_client, listen) = cell.homes.node_client(&key);
    cell.connections(
        listen,
        |n| share_log.field("peer connected", n, "path"),
        &[&share_log],
    )
}

/// A Rust connect in a cone home reaching a Node hyperdht server in another.
fn rust_connect_to_node_server() -> Outcome {
    let cell = Cell::new(LabSpec::homes([Nat::Cone, Nat::Cone]), VOLUME);
    let (_server, key) = cell.homes.node_server(cell.service.port());
    let connect_log = Log::new("node-server-connect");
    let (_connect, listen) = cell.homes.rust_connect(&key, &connect_log, &[]);
    cell.connections(
        listen,
        |n| connect_log.field("connected to the sharer", n, "path"),
        &[&connect_log],
    )
}

#[test]
fn node_hyperdht_meets_us_across_cone_nats() {
    let _one = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let rows = vec![
        run(
            "Node client -> Rust share (cone, cone)".into(),
            node_client_to_rust_share,
        ),
        run(
            "Rust connect -> Node server (cone, cone)".into(),
            rust_connect_to_node_server,
        ),
    ];
    print_table(
        &format!(
            "Node hyperdht 6.34 across NATs, {} MiB each way",
            VOLUME / MIB
        ),
        &rows,
    );
    // Node's side punches afresh for every connection; only that they all get through counts.
    check(&rows, false);
}

/// 5 % loss and 50 ms of delay on both home uplinks (a 200 ms round trip).
const LOSS: f64 = 0.05;
const DELAY: Duration = Duration::from_millis(50);

/// Loss and delay on both uplinks between homes behind `nats`: every transfer still gets
/// through, verified, through a punched hole or, between two randomising NATs, through the
/// lab's relay (which every connection must then take). Less volume: at 5 % loss and a 200 ms
/// round trip any loss-driven congestion control moves a few hundred KiB a second.
fn lossy_cell(nats: [Nat; 2]) -> Outcome {
    let cell = Cell::new(LabSpec::homes(nats).loss(LOSS).delay(DELAY), LOSSY_VOLUME);
    let name = format!("lossy-{}-{}", nats[0], nats[1]);
    let relay_log = Log::new(&format!("{name}-relay"));
    let share_log = Log::new(&format!("{name}-share"));
    let connect_log = Log::new(&format!("{name}-connect"));
    let relayed = nats == [Nat::Symmetric, Nat::Symmetric];
    let relay = relayed.then(|| cell.homes.relay(&relay_log));
    let relay_args: Vec<&str> = match &relay {
        Some((_, key)) => vec!["--relay", key],
        None => Vec::new(),
    };
    let (_share, key) = cell.rust_share(&share_log, &[]);
    let (_connect, listen) = cell.homes.rust_connect(&key, &connect_log, &relay_args);
    let logs = [&share_log, &connect_log, &relay_log];
    let outcome = cell.connections(
        listen,
        |n| connect_log.field("connected to the sharer", n, "path"),
        &logs,
    );
    match outcome {
        Outcome::Connected(conns) if relayed && conns.iter().any(|c| c.path != "relayed") => {
            Outcome::Failed(format!("not every connection was relayed\n{}", dump(&logs)))
        }
        other => other,
    }
}

fn lossy_test(nats: [Nat; 2], title: &str) {
    let _one = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let cell = format!(
        "share {} <- connect {}, {:.0} % loss, {} ms per uplink, {} MiB",
        nats[0],
        nats[1],
        LOSS * 100.0,
        DELAY.as_millis(),
        LOSSY_VOLUME / MIB
    );
    let rows = vec![run(cell, || lossy_cell(nats))];
    print_table(title, &rows);
    check(&rows, false);
}

#[test]
fn a_punched_connection_survives_loss_and_delay() {
    lossy_test([Nat::Cone, Nat::Symmetric], "a lossy, slow internet");
}

#[test]
fn a_relayed_connection_survives_loss_and_delay() {
    lossy_test(
        [Nat::Symmetric, Nat::Symmetric],
        "a lossy, slow internet, through the relay",
    );
}

/// Issue 8's limit on random-port punches, with real processes: a sharer behind a randomising
/// NAT and two connects behind a cone NAT, each with its own key, opening a connection at the
/// same moment. A punch through a randomising NAT holds hundreds of sockets (or sprays probes)
/// for seconds, so the sharer runs one at a time and tells the other client to try later, as
/// Node's hyperdht does; that client retries and gets through once the first punch is done.
/// Both transfers arrive whole, and the sharer's descriptors stay below the usual soft limit.
#[test]
fn a_second_random_punch_is_told_to_try_later_and_still_gets_through() {
    let _one = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let cell = Cell::new(LabSpec::homes([Nat::Symmetric, Nat::Cone]), MIB);
    let share_log = Log::new("random-punch-share");
    let connect_logs = [
        Log::new("random-punch-connect-1"),
        Log::new("random-punch-connect-2"),
    ];
    let (share, key) = cell.rust_share(&share_log, &[]);
    // Both punch when their first local connections open, at once (`--lazy`): dialling at
    // start, the second connect, started later, would punch after the first had finished.
    let connects: Vec<_> = connect_logs
        .iter()
        .map(|log| cell.homes.rust_connect(&key, log, &["--lazy"]))
        .collect();
    let logs: Vec<&Log> = std::iter::once(&share_log)
        .chain(connect_logs.iter())
        .collect();
    let descriptors = || {
        std::fs::read_dir(format!("/proc/{}/fd", share.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let mut most_descriptors = descriptors();
    let received = std::thread::scope(|scope| {
        let transfers: Vec<_> = connects
            .iter()
            .enumerate()
            .map(|(i, (_, listen))| {
                let (lab, home, listen) = (&cell.homes.lab, cell.homes.connecting_home(), *listen);
                scope.spawn(move || {
                    let stream = lab
                        .in_netns(home, move || TcpStream::connect(listen))
                        .expect("enter the connecting home")
                        .expect("dial the local end of the tunnel");
                    exchange_timed(stream, MIB, 40 + i as u64)
                        .unwrap_or_else(|e| panic!("connect {}: the transfer failed: {e}", i + 1))
                        .0
                })
            })
            .collect();
        while transfers.iter().any(|t| !t.is_finished()) {
            most_descriptors = most_descriptors.max(descriptors());
            std::thread::sleep(Duration::from_millis(50));
        }
        transfers
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|e| panic!("{}\n{}", panic_text(e), dump(&logs)))
            })
            .collect::<Vec<_>>()
    });
    // The service answers its n-th connection (from 0) with the pattern of seed 20 + n, and the two
    // connections may reach it in either order.
    let answers = [pattern_sha(MIB, 20), pattern_sha(MIB, 21)];
    for (i, client) in received.iter().enumerate() {
        assert_eq!(client.received, MIB, "connect {}\n{}", i + 1, dump(&logs));
        assert!(
            answers.contains(&client.received_sha),
            "connect {}: the service's answer arrived altered\n{}",
            i + 1,
            dump(&logs)
        );
    }
    let mut sent: Vec<String> = received.iter().map(|c| c.sent_sha.clone()).collect();
    let mut got: Vec<String> = (0..2)
        .map(|_| cell.service.next_tally(TRANSFER).received_sha)
        .collect();
    sent.sort();
    got.sort();
    assert_eq!(
        sent,
        got,
        "what the clients sent arrived whole\n{}",
        dump(&logs)
    );
    assert!(
        share_log.text().contains("told this one to try later"),
        "the second punch was not told to wait its turn\n{}",
        dump(&logs)
    );
    // One random punch's sockets (256) and the rest of the share: far below 1,024.
    assert!(
        most_descriptors < 700,
        "the share held {most_descriptors} descriptors\n{}",
        dump(&logs)
    );
    println!("random punches one at a time: both transfers verified, the share held at most {most_descriptors} descriptors");
}
