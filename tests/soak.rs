//! The soak (docs/soak.md): a share and a connect in the NAT lab (cone x cone, a relay named)
//! for a set time while events are injected on a schedule (either home's public address
//! changes, the share restarts with its identity, the relay restarts with its key, a burst of
//! UDP loss, either process stopped for a while as a laptop's lid) and traffic runs all along:
//! one long-lived stream whose echo is checked byte by byte, and bursts of short connections,
//! each checked by length and sha256. It reports what connected, what failed and why, the
//! recovery after each event and the memory and descriptors of each process, as Markdown and
//! JSON, and exits 1 if a pass criterion failed.
//!
//! `scripts/soak --minutes N` runs it (10 in CI, hours by hand). It is not part of
//! `cargo test` (`test = false` in Cargo.toml): it runs for minutes on purpose. Needs root,
//! `iptables` and `conntrack`; without them it fails saying so.

use test_support as support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use netlab::{LabProcess, LabSpec, Nat};
use serde_json::{json, Value};
use support::cli::{bin, event, succeed};
use support::lab::{p2p_socket_in, recovery, service_in, share_key, Log, TwoHomes};
use support::net::{exchange, pattern_sha, Behaviour, Pattern, Service};
use support::process::kill;

/// connect's bound on reaching the sharer for one local connection (`ATTEMPT_TIMEOUT`), plus
/// room for a loaded machine: a connection quiet for longer than this is hung.
const HUNG: Duration = Duration::from_secs(45 + 15);
/// New connections must work this soon after each event (issue 11).
const RECOVERY: Duration = Duration::from_secs(5);
/// How long recovery is waited for before the event counts as not recovered.
const PATIENCE: Duration = Duration::from_secs(30);
/// Short connections opened at once in a burst, and how often a burst starts.
const BURST: u64 = 6;
const BURST_EVERY: Duration = Duration::from_secs(5);
/// The long-lived stream writes a chunk, reads its echo, checks it and pauses: about
/// 300 kB/s each way, a steady trickle rather than a bulk transfer.
const CHUNK: usize = 16 * 1024;
const CHUNK_PAUSE: Duration = Duration::from_millis(50);
/// UDP loss in a loss burst, for how long.
const LOSS: &str = "0.3";
const LOSS_BURST: Duration = Duration::from_secs(10);
/// Growth allowed from the first sample to the last (see docs/soak.md for why these).
const RSS_GROWTH_KIB: u64 = 24 * 1024;
const FD_GROWTH: u64 = 16;

struct Options {
    minutes: f64,
    every: Duration,
    sleep: Duration,
    out: PathBuf,
    multiplex: bool,
}

const USAGE: &str =
    "usage: soak [--minutes N] [--every SECONDS] [--sleep SECONDS] [--out DIR] [--no-multiplex]";

fn options() -> Result<Options, String> {
    let mut o = Options {
        minutes: 10.0,
        every: Duration::from_secs(40),
        sleep: Duration::from_secs(20),
        out: PathBuf::from("target/soak"),
        // connect's default, what users run.
        multiplex: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |what: &str| {
            args.next()
                .ok_or_else(|| format!("{arg} needs {what}\n{USAGE}"))
        };
        let seconds = |v: String| {
            v.parse::<u64>()
                .map(Duration::from_secs)
                .map_err(|e| format!("{arg} {v}: {e}\n{USAGE}"))
        };
        match arg.as_str() {
            "--minutes" => {
                let v = value("a number of minutes")?;
                o.minutes = v
                    .parse()
                    .ok()
                    .filter(|m: &f64| *m > 0.0)
                    .ok_or_else(|| format!("--minutes {v}: not a positive number\n{USAGE}"))?;
            }
            "--every" => o.every = seconds(value("seconds")?)?,
            "--sleep" => o.sleep = seconds(value("seconds")?)?,
            "--out" => o.out = PathBuf::from(value("a directory")?),
            "--no-multiplex" => o.multiplex = false,
            // What `cargo test` may pass to a test binary.
            "--nocapture" | "--quiet" => {}
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if o.every < o.sleep + RECOVERY {
        return Err(format!(
            "--every must leave room for a {}-s sleep and the recovery after it\n{USAGE}",
            o.sleep.as_secs()
        ));
    }
    Ok(o)
}

/// What the soak does to the cell, in the order it cycles through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    SharingHomeRenumbered,
    ConnectingHomeRenumbered,
    ShareRestarted,
    LossBurst,
    ShareSlept,
    ConnectSlept,
    RelayRestarted,
}

impl Kind {
    const ALL: [Kind; 7] = [
        Kind::SharingHomeRenumbered,
        Kind::ConnectingHomeRenumbered,
        Kind::ShareRestarted,
        Kind::LossBurst,
        Kind::ShareSlept,
        Kind::ConnectSlept,
        Kind::RelayRestarted,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::SharingHomeRenumbered => "the sharing home gets a new public address",
            Kind::ConnectingHomeRenumbered => "the connecting home gets a new public address",
            Kind::ShareRestarted => "share restarts (same identity)",
            Kind::LossBurst => "30 % UDP loss for 10 s (connecting home)",
            Kind::ShareSlept => "share stopped (SIGSTOP) and resumed",
            Kind::ConnectSlept => "connect stopped (SIGSTOP) and resumed",
            Kind::RelayRestarted => "the relay restarts (same key)",
        }
    }
}

/// What the traffic saw, shared by its threads.
#[derive(Default)]
struct Traffic {
    attempted: u64,
    verified: u64,
    bytes_verified: u64,
    /// Failed short connections by what the client saw.
    failed: BTreeMap<String, u64>,
    /// The longest a failed short connection took to fail.
    slowest_failure: Duration,
    /// Breaches of the pass criteria: bytes that arrived wrong, connections quiet past [`HUNG`].
    corrupt: Vec<String>,
    hung: Vec<String>,
    steady_streams: u64,
    /// Why each long-lived stream ended before the soak did.
    steady_breaks: BTreeMap<String, u64>,
    /// The long-lived stream open now: its seed and when its last echo was verified.
    steady_open: Option<(u64, Duration)>,
    /// How each long-lived stream that ended early ended, by seed.
    steady_ended: BTreeMap<u64, String>,
}

fn lock(traffic: &Mutex<Traffic>) -> std::sync::MutexGuard<'_, Traffic> {
    traffic.lock().unwrap_or_else(|p| p.into_inner())
}

/// A TCP connection to connect's local port, made inside the connecting home.
fn dial(netns: &str, listen: SocketAddr) -> Result<TcpStream, String> {
    netlab::in_netns(netns, move || TcpStream::connect(listen))
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("dial connect: {e}"))
}

/// Why a long-lived stream stopped.
enum Broke {
    Cleanly(String),
    Corrupt(String),
    Hung(String),
}

/// Writes chunks of the pattern with `seed` and checks that each comes back, in order, until
/// `stop` or the stream breaks.
fn steady_stream(
    mut stream: TcpStream,
    seed: u64,
    soak: Instant,
    stop: &AtomicBool,
    traffic: &Mutex<Traffic>,
) -> Result<(), Broke> {
    let mut last_echo = soak.elapsed();
    let io = |e: std::io::Error, doing: &str, after: u64, last: Duration| {
        match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => Broke::Hung(format!(
            "long-lived stream {seed}: {doing}: nothing for {} s after {after} bytes, the last echo at {} s of the soak",
            HUNG.as_secs(),
            last.as_secs()
        )),
        std::io::ErrorKind::UnexpectedEof => Broke::Cleanly(format!("{doing}: closed")),
        _ => Broke::Cleanly(format!("{doing}: {}", e.kind())),
    }
    };
    let _ = stream.set_read_timeout(Some(HUNG));
    let _ = stream.set_write_timeout(Some(HUNG));
    let (mut out, mut expect) = (Pattern::new(seed), Pattern::new(seed));
    let (mut chunk, mut got, mut want) = (vec![0; CHUNK], vec![0; CHUNK], vec![0; CHUNK]);
    let mut echoed = 0u64;
    while !stop.load(Ordering::Relaxed) {
        out.fill(&mut chunk);
        stream
            .write_all(&chunk)
            .map_err(|e| io(e, "write", echoed, last_echo))?;
        stream
            .read_exact(&mut got)
            .map_err(|e| io(e, "read", echoed, last_echo))?;
        expect.fill(&mut want);
        if got != want {
            return Err(Broke::Corrupt(format!(
                "long-lived stream {seed}: the echo differs from what was sent after {echoed} good bytes"
            )));
        }
        echoed += CHUNK as u64;
        last_echo = soak.elapsed();
        let mut t = lock(traffic);
        t.bytes_verified += CHUNK as u64;
        t.steady_open = Some((seed, last_echo));
        drop(t);
        std::thread::sleep(CHUNK_PAUSE);
    }
    Ok(())
}

/// One long-lived stream after another, for as long as the soak (started at `soak`) runs.
fn steady(
    netns: &str,
    listen: SocketAddr,
    soak: Instant,
    stop: &AtomicBool,
    traffic: &Mutex<Traffic>,
) {
    let mut seed = 1_000_000;
    while !stop.load(Ordering::Relaxed) {
        seed += 1;
        let broke = match dial(netns, listen) {
            Ok(stream) => {
                let mut t = lock(traffic);
                t.steady_streams += 1;
                t.steady_open = Some((seed, soak.elapsed()));
                drop(t);
                steady_stream(stream, seed, soak, stop, traffic)
            }
            Err(e) => Err(Broke::Cleanly(e)),
        };
        let mut t = lock(traffic);
        t.steady_open = None;
        let ended = match broke {
            Ok(()) => None,
            Err(Broke::Cleanly(why)) => {
                *t.steady_breaks.entry(why.clone()).or_default() += 1;
                Some(format!("ended cleanly ({why})"))
            }
            Err(Broke::Corrupt(why)) => {
                t.corrupt.push(why);
                Some("corrupt".into())
            }
            Err(Broke::Hung(why)) => {
                t.hung.push(why);
                Some("hung".into())
            }
        };
        if let Some(how) = ended {
            t.steady_ended.insert(seed, how);
        }
        drop(t);
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One short connection: `size` bytes of the pattern with `seed` sent, the same echoed.
fn short_connection(
    netns: &str,
    listen: SocketAddr,
    seed: u64,
    size: u64,
    traffic: &Mutex<Traffic>,
) {
    lock(traffic).attempted += 1;
    let started = Instant::now();
    let result = dial(netns, listen)
        .and_then(|stream| exchange(stream, size, seed).map_err(|e| format!("{}", e.kind())));
    let took = started.elapsed();
    let mut t = lock(traffic);
    let failure = match result {
        Ok(tally) if tally.received == size && tally.received_sha == pattern_sha(size, seed) => {
            t.verified += 1;
            t.bytes_verified += size;
            return;
        }
        Ok(tally) if tally.received >= size => {
            t.corrupt.push(format!(
                "short connection {seed}: {} bytes came back for {size} sent, not the bytes sent",
                tally.received
            ));
            return;
        }
        Ok(tally) if tally.received == 0 => "closed before any byte came back".to_string(),
        Ok(_) => "closed before all bytes came back".to_string(),
        Err(e) => e,
    };
    if took > HUNG {
        t.hung.push(format!(
            "short connection {seed}: failed only after {} s ({failure})",
            took.as_secs()
        ));
    }
    t.slowest_failure = t.slowest_failure.max(took);
    *t.failed.entry(failure).or_default() += 1;
}

/// Bursts of [`BURST`] short connections at once, every [`BURST_EVERY`], sizes from 1 byte to
/// 64 KiB.
fn bursts(netns: &str, listen: SocketAddr, stop: &AtomicBool, traffic: &Mutex<Traffic>) {
    let mut seed = 0u64;
    let mut sizes = Pattern::new(7);
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..BURST {
                seed += 1;
                let mut b = [0u8; 8];
                sizes.fill(&mut b);
                let size = u64::from_le_bytes(b) % (64 * 1024) + 1;
                s.spawn(move || short_connection(netns, listen, seed, size, traffic));
            }
        });
        let left = BURST_EVERY.saturating_sub(started.elapsed());
        let until = Instant::now() + left;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Resident memory (KiB) and open descriptors of a process, from /proc.
fn usage(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some((rss, fds))
}

/// The cell and its processes.
struct Cell {
    homes: TwoHomes,
    /// The echo service in the sharing home; it runs while this is held.
    _service: Service,
    service_port: u16,
    identity: PathBuf,
    share: LabProcess,
    share_key: String,
    relay: LabProcess,
    relay_key: String,
    connect: LabProcess,
    listen: SocketAddr,
    logs: Vec<Log>,
    renumbered: [u8; 2],
}

/// The relay's key comes from these words, so a restarted relay has the same key.
const RELAY_SEED: [&str; 3] = ["p2p-socket", "soak", "relay"];

impl Cell {
    fn start(o: &Options) -> Cell {
        let homes = TwoHomes::new(LabSpec::homes([Nat::Cone, Nat::Cone]));
        let service = service_in(&homes.lab, homes.sharing_home(), |_| Behaviour::Echo);
        let service_port = service.port();
        let identity =
            std::env::temp_dir().join(format!("p2p-socket-soak-{}.json", std::process::id()));
        let _ = std::fs::remove_file(&identity);
        succeed(bin().args(["create-id", "--identity"]).arg(&identity));
        let mut logs = vec![Log::new("soak-relay-1"), Log::new("soak-share-1")];
        let (relay, relay_key) = start_relay(&homes, &logs[0]);
        let (share, share_key) = start_share(&homes, service_port, &identity, &logs[1]);
        let connect_log = Log::new("soak-connect");
        let mut extra = vec!["--relay", &relay_key];
        if !o.multiplex {
            extra.push("--no-multiplex");
        }
        let (connect, listen) = homes.rust_connect(&share_key, &connect_log, &extra);
        logs.push(connect_log);
        Cell {
            homes,
            _service: service,
            service_port,
            identity,
            share,
            share_key,
            relay,
            relay_key,
            connect,
            listen,
            logs,
            renumbered: [0, 0],
        }
    }

    fn connecting_netns(&self) -> String {
        self.homes.connecting_home().to_string()
    }

    /// Does `kind` to the cell; returns when it is over (the process back, the loss gone),
    /// the moment recovery is measured from.
    fn inject(&mut self, kind: Kind, o: &Options) -> Result<String, String> {
        match kind {
            Kind::SharingHomeRenumbered | Kind::ConnectingHomeRenumbered => {
                let home = if kind == Kind::SharingHomeRenumbered {
                    1
                } else {
                    2
                };
                let n = &mut self.renumbered[home - 1];
                *n = *n % 250 + 1;
                let wan = Ipv4Addr::new(198, 18, 100 + home as u8, *n);
                self.homes
                    .lab
                    .renumber(home, wan)
                    .map_err(|e| format!("renumber home {home}: {e}"))?;
                Ok(format!("home {home} is now {wan}"))
            }
            Kind::ShareRestarted => {
                stop(&mut self.share)?;
                let log = Log::new(&format!("soak-share-{}", self.logs.len()));
                let (share, key) =
                    start_share(&self.homes, self.service_port, &self.identity, &log);
                self.logs.push(log);
                self.share = share;
                if key != self.share_key {
                    return Err(format!(
                        "the share came back with key {key}, not {}",
                        self.share_key
                    ));
                }
                Ok("same key".into())
            }
            Kind::RelayRestarted => {
                stop(&mut self.relay)?;
                let log = Log::new(&format!("soak-relay-{}", self.logs.len()));
                let (relay, key) = start_relay(&self.homes, &log);
                self.logs.push(log);
                self.relay = relay;
                if key != self.relay_key {
                    return Err(format!(
                        "the relay came back with key {key}, not {}",
                        self.relay_key
                    ));
                }
                Ok("same key".into())
            }
            Kind::LossBurst => {
                let router = self.homes.lab.homes()[1].router.netns.clone();
                let rule = [
                    "FORWARD",
                    "-p",
                    "udp",
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    LOSS,
                    "-j",
                    "DROP",
                ];
                let iptables = |op: &str| {
                    let status = self
                        .homes
                        .lab
                        .exec(&router, "iptables")
                        .arg(op)
                        .args(rule)
                        .status()
                        .map_err(|e| format!("iptables: {e}"))?;
                    status
                        .success()
                        .then_some(())
                        .ok_or_else(|| format!("iptables {op} {rule:?} failed ({status})"))
                };
                iptables("-I")?;
                std::thread::sleep(LOSS_BURST);
                iptables("-D")?;
                Ok(format!("{LOSS} of UDP through the router dropped"))
            }
            Kind::ShareSlept | Kind::ConnectSlept => {
                let process = if kind == Kind::ShareSlept {
                    &self.share
                } else {
                    &self.connect
                };
                kill(process.pid(), "STOP");
                std::thread::sleep(o.sleep);
                kill(process.pid(), "CONT");
                Ok(format!("stopped {} s", o.sleep.as_secs()))
            }
        }
    }

    /// The processes that should be running and are not.
    fn exited(&mut self) -> Vec<String> {
        [&mut self.share, &mut self.relay, &mut self.connect]
            .into_iter()
            .filter_map(|p| match p.try_wait() {
                Ok(Some(status)) => Some(format!("{} exited ({status})", p.name())),
                _ => None,
            })
            .collect()
    }

    fn sample(&self, at: &str, elapsed: Duration) -> Value {
        let mut s = json!({"at": at, "seconds": elapsed.as_secs()});
        for (name, p) in [
            ("share", &self.share),
            ("connect", &self.connect),
            ("relay", &self.relay),
        ] {
            if let Some((rss, fds)) = usage(p.pid()) {
                s[name] = json!({"pid": p.pid(), "rss_kib": rss, "fds": fds});
            }
        }
        s
    }
}

fn start_share(homes: &TwoHomes, port: u16, identity: &Path, log: &Log) -> (LabProcess, String) {
    let identity = identity.to_str().expect("a UTF-8 temp path");
    homes.rust_share(
        port,
        log,
        &["--identity", identity, "--key-derivation", "hashed"],
    )
}

fn start_relay(homes: &TwoHomes, log: &Log) -> (LabProcess, String) {
    let mut args = vec!["relay", "--json", "--bootstrap", &homes.bootstrap, "--seed"];
    args.extend(RELAY_SEED);
    let netns = homes.lab.relay_host().netns.clone();
    let mut relay = p2p_socket_in(&homes.lab, &netns, "relay", log, &args);
    let key = share_key(&mut relay);
    (relay, key)
}

/// SIGTERM, and a clean exit within 15 s.
fn stop(p: &mut LabProcess) -> Result<(), String> {
    p.terminate();
    match p.wait_exit(Duration::from_secs(15)) {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(format!("{} exited with {status} after SIGTERM", p.name())),
        Err(e) => Err(format!("{} did not exit after SIGTERM: {e}", p.name())),
    }
}

/// Counts connect's `--json` lines so far by event, and its `connection_failed` reasons.
fn tally_events(
    connect: &mut LabProcess,
    events: &mut BTreeMap<String, u64>,
    failures: &mut BTreeMap<String, u64>,
) {
    for line in connect.drain_lines() {
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if let Some(reason) =
            event(&line, "connection_failed").and_then(|f| f["reason"].as_str().map(shape))
        {
            *failures.entry(reason).or_default() += 1;
        }
        *events
            .entry(v["event"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
}

/// A reason with its numbers and keys blanked, so that the same failure counts once.
fn shape(reason: &str) -> String {
    let mut out = String::new();
    for c in reason.chars() {
        let blank = c.is_ascii_digit() || (c.is_ascii_hexdigit() && c.is_ascii_lowercase());
        if !(blank && out.ends_with('#')) {
            out.push(if c.is_ascii_digit() { '#' } else { c });
        }
    }
    out
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split(' ').take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

struct EventRecord {
    kind: Kind,
    at: Duration,
    detail: String,
    recovery: Option<Duration>,
    /// The long-lived stream open when the event began, and what became of it by the next
    /// event (or the end of the soak).
    stream: Option<u64>,
    fate: Option<Fate>,
    /// When the event was over (the moment recovery is measured from).
    over: Duration,
}

/// What became of the long-lived stream an event caught.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fate {
    /// Still open, with an echo verified after the event was over.
    Survived,
    /// It ended, and how (cleanly, hung, corrupt).
    Ended(String),
    /// Still open but nothing echoed since the event was over.
    Silent,
}

impl Fate {
    fn name(&self) -> String {
        match self {
            Fate::Survived => "survived".into(),
            Fate::Ended(how) => how.clone(),
            Fate::Silent => "open but silent since".into(),
        }
    }
}

/// Settles the fate of the stream the last event caught, if not yet settled.
fn settle(events: &mut [EventRecord], traffic: &Mutex<Traffic>) {
    let Some(e) = events.last_mut() else { return };
    let (Some(seed), None) = (e.stream, &e.fate) else {
        return;
    };
    let t = lock(traffic);
    e.fate = Some(match (t.steady_open, t.steady_ended.get(&seed)) {
        (_, Some(how)) => Fate::Ended(how.clone()),
        (Some((open, last_echo)), _) if open == seed && last_echo > e.over => Fate::Survived,
        (Some((open, _)), _) if open == seed => Fate::Silent,
        // The stream is gone but its end not recorded yet: the thread is between the two.
        _ => Fate::Ended("ended".into()),
    });
}

fn main() {
    let o = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let load_before = load_average();
    let mut cell = Cell::start(&o);
    let netns = cell.connecting_netns();
    let listen = cell.listen;
    let first = recovery(&netns, listen, Instant::now(), PATIENCE);
    assert!(
        first.is_some(),
        "the tunnel never carried a first connection within {PATIENCE:?}"
    );

    let traffic = Mutex::new(Traffic::default());
    let stop_traffic = AtomicBool::new(false);
    let duration = Duration::from_secs_f64(o.minutes * 60.0);
    let started = Instant::now();
    let mut events = Vec::new();
    let mut samples = Vec::new();
    let mut problems = Vec::new();
    let mut json_events: BTreeMap<String, u64> = BTreeMap::new();
    let mut connect_failures: BTreeMap<String, u64> = BTreeMap::new();
    std::thread::scope(|s| {
        s.spawn(|| steady(&netns, listen, started, &stop_traffic, &traffic));
        s.spawn(|| bursts(&netns, listen, &stop_traffic, &traffic));
        // The baseline once the traffic has run a while (threads started, buffers and the
        // allocator's arenas warmed up), just before the first event.
        std::thread::sleep(o.every.saturating_sub(Duration::from_secs(1)));
        samples.push(cell.sample("start", started.elapsed()));
        let mut n = 0;
        let mut middle_taken = false;
        // Events on a fixed schedule, each only where a whole slot after it (for its sleep
        // and the recovery) fits before the end.
        loop {
            let slot = o.every * (n as u32 + 1);
            if slot + o.every > duration {
                break;
            }
            std::thread::sleep((started + slot).saturating_duration_since(Instant::now()));
            settle(&mut events, &traffic);
            let kind = Kind::ALL[n % Kind::ALL.len()];
            n += 1;
            let at = started.elapsed();
            let stream = lock(&traffic).steady_open.map(|(seed, _)| seed);
            eprintln!("soak: {:>4} s: {}", at.as_secs(), kind.name());
            match cell.inject(kind, &o) {
                Ok(detail) => {
                    let over = started.elapsed();
                    let took = recovery(&netns, listen, Instant::now(), PATIENCE);
                    eprintln!(
                        "soak: {:>4} s: new connections work again after {}",
                        started.elapsed().as_secs(),
                        figure(took)
                    );
                    events.push(EventRecord {
                        kind,
                        at,
                        detail,
                        recovery: took,
                        stream,
                        fate: None,
                        over,
                    });
                }
                Err(e) => {
                    problems.push(format!("could not inject {}: {e}", kind.name()));
                    break;
                }
            }
            tally_events(&mut cell.connect, &mut json_events, &mut connect_failures);
            let gone = cell.exited();
            if !gone.is_empty() {
                problems.extend(gone);
                break;
            }
            if !middle_taken && started.elapsed() >= duration / 2 {
                samples.push(cell.sample("middle", started.elapsed()));
                middle_taken = true;
            }
        }
        std::thread::sleep(duration.saturating_sub(started.elapsed()));
        settle(&mut events, &traffic);
        samples.push(cell.sample("end", started.elapsed()));
        stop_traffic.store(true, Ordering::Relaxed);
    });
    tally_events(&mut cell.connect, &mut json_events, &mut connect_failures);
    let traffic = traffic.into_inner().unwrap_or_else(|p| p.into_inner());
    let load_after = load_average();

    // The pass criteria.
    problems.extend(traffic.corrupt.iter().map(|c| format!("corrupt: {c}")));
    problems.extend(traffic.hung.iter().map(|h| format!("hung: {h}")));
    for e in &events {
        if e.recovery.is_none_or(|d| d > RECOVERY) {
            problems.push(format!(
                "at {} s, after {}: new connections worked only after {}",
                e.at.as_secs(),
                e.kind.name(),
                figure(e.recovery)
            ));
        }
    }
    for e in &events {
        // Roaming (docs/roaming.md) carries an open multiplexed session over the connecting
        // side's move; without multiplexing there is nothing to roam.
        let must_survive = o.multiplex && e.kind == Kind::ConnectingHomeRenumbered;
        match &e.fate {
            Some(f) if must_survive && *f != Fate::Survived => problems.push(format!(
                "at {} s, after {}: the long-lived stream did not roam: {}",
                e.at.as_secs(),
                e.kind.name(),
                f.name()
            )),
            _ => {}
        }
    }
    if traffic.verified == 0 {
        problems.push("no short connection was verified".into());
    }
    let (start, end) = (&samples[0], &samples[samples.len() - 1]);
    for name in ["share", "connect", "relay"] {
        let growth = |field: &str| {
            end[name][field]
                .as_u64()
                .zip(start[name][field].as_u64())
                .map(|(e, s)| e.saturating_sub(s))
        };
        if growth("rss_kib").is_some_and(|g| g > RSS_GROWTH_KIB) {
            problems.push(format!(
                "{name}'s memory grew by {} KiB (bound {RSS_GROWTH_KIB} KiB)",
                growth("rss_kib").unwrap_or(0)
            ));
        }
        if growth("fds").is_some_and(|g| g > FD_GROWTH) {
            problems.push(format!(
                "{name}'s open descriptors grew by {} (bound {FD_GROWTH})",
                growth("fds").unwrap_or(0)
            ));
        }
    }

    let summary = Summary {
        o: &o,
        elapsed: started.elapsed(),
        load: (&load_before, &load_after),
        traffic: &traffic,
        events: &events,
        samples: &samples,
        json_events: &json_events,
        connect_failures: &connect_failures,
        problems: &problems,
    };
    let markdown = summary.markdown();
    print!("{markdown}");
    if let Err(e) = summary.write(&markdown, &cell.logs) {
        eprintln!(
            "soak: could not write the summary under {}: {e}",
            o.out.display()
        );
    }
    let _ = std::fs::remove_file(&cell.identity);
    if !problems.is_empty() {
        std::process::exit(1);
    }
}

fn figure(d: Option<Duration>) -> String {
    d.map_or_else(
        || format!("not within {} s", PATIENCE.as_secs()),
        |d| format!("{} ms", d.as_millis()),
    )
}

struct Summary<'a> {
    o: &'a Options,
    elapsed: Duration,
    load: (&'a str, &'a str),
    traffic: &'a Traffic,
    events: &'a [EventRecord],
    samples: &'a [Value],
    json_events: &'a BTreeMap<String, u64>,
    connect_failures: &'a BTreeMap<String, u64>,
    problems: &'a [String],
}

impl Summary<'_> {
    fn markdown(&self) -> String {
        let t = self.traffic;
        let mut m = String::new();
        let verdict = if self.problems.is_empty() {
            "PASS"
        } else {
            "FAIL"
        };
        m += &format!(
            "# Soak: {verdict}, {:.1} min in the NAT lab (cone x cone, relay named{})\n\n",
            self.elapsed.as_secs_f64() / 60.0,
            if self.o.multiplex {
                ", multiplexed"
            } else {
                ", --no-multiplex"
            }
        );
        m += &format!(
            "Load average (1, 5, 15 min) before: {}; after: {}. An event every {} s, sleeps of {} s.\n\n",
            self.load.0,
            self.load.1,
            self.o.every.as_secs(),
            self.o.sleep.as_secs()
        );
        m += "| traffic | |\n|---|---|\n";
        m += &format!(
            "| short connections attempted / verified / failed | {} / {} / {} |\n",
            t.attempted,
            t.verified,
            t.failed.values().sum::<u64>()
        );
        m += &format!("| bytes verified (both kinds) | {} |\n", t.bytes_verified);
        m += &format!(
            "| long-lived streams opened / ended early | {} / {} |\n",
            t.steady_streams,
            t.steady_breaks.values().sum::<u64>()
        );
        m += &format!(
            "| slowest failure of a short connection | {} ms |\n",
            t.slowest_failure.as_millis()
        );
        m += &format!(
            "| corrupt / hung connections | {} / {} |\n\n",
            t.corrupt.len(),
            t.hung.len()
        );
        m += "| event | times | longest recovery | each (ms) |\n|---|---|---|---|\n";
        let mut by_kind: BTreeMap<Kind, Vec<&EventRecord>> = BTreeMap::new();
        for e in self.events {
            by_kind.entry(e.kind).or_default().push(e);
        }
        for (kind, list) in &by_kind {
            let longest = list
                .iter()
                .map(|e| e.recovery.unwrap_or(Duration::MAX))
                .max()
                .filter(|d| *d != Duration::MAX);
            let each: Vec<String> = list
                .iter()
                .map(|e| e.recovery.map_or("-".into(), |d| d.as_millis().to_string()))
                .collect();
            m += &format!(
                "| {} | {} | {} | {} |\n",
                kind.name(),
                list.len(),
                figure(longest),
                each.join(", ")
            );
        }
        m += "\nThe long-lived stream open when each event began, by the next event:\n\n";
        m += "| event | caught | survived | ended | silent |\n|---|---|---|---|---|\n";
        for (kind, list) in &by_kind {
            let fates: Vec<&Fate> = list.iter().filter_map(|e| e.fate.as_ref()).collect();
            let count = |f: fn(&Fate) -> bool| fates.iter().filter(|x| f(x)).count();
            m += &format!(
                "| {} | {} | {} | {} | {} |\n",
                kind.name(),
                fates.len(),
                count(|f| *f == Fate::Survived),
                count(|f| matches!(f, Fate::Ended(_))),
                count(|f| *f == Fate::Silent)
            );
        }
        m += "\n| process | RSS start / middle / end (KiB) | descriptors start / middle / end |\n|---|---|---|\n";
        for name in ["share", "connect", "relay"] {
            let col = |field: &str| {
                self.samples
                    .iter()
                    .map(|s| {
                        s[name][field]
                            .as_u64()
                            .map_or("?".into(), |v| v.to_string())
                    })
                    .collect::<Vec<_>>()
                    .join(" / ")
            };
            m += &format!("| {name} | {} | {} |\n", col("rss_kib"), col("fds"));
        }
        let list = |title: &str, map: &BTreeMap<String, u64>| {
            if map.is_empty() {
                return String::new();
            }
            let mut s = format!("\n{title}:\n\n");
            for (reason, n) in map {
                s += &format!("- {n} × {reason}\n");
            }
            s
        };
        m += &list(
            "Short connections that failed, as the client saw it",
            &t.failed,
        );
        m += &list("Long-lived streams that ended early", &t.steady_breaks);
        m += &list(
            "connect's `connection_failed` reasons",
            self.connect_failures,
        );
        m += &list("connect's `--json` events", self.json_events);
        if !self.problems.is_empty() {
            m += "\nPass criteria not met:\n\n";
            for p in self.problems {
                m += &format!("- {p}\n");
            }
        }
        m
    }

    fn json(&self) -> Value {
        let t = self.traffic;
        json!({
            "pass": self.problems.is_empty(),
            "problems": self.problems,
            "minutes": self.elapsed.as_secs_f64() / 60.0,
            "multiplex": self.o.multiplex,
            "load_average": {"before": self.load.0, "after": self.load.1},
            "short_connections": {
                "attempted": t.attempted,
                "verified": t.verified,
                "failed": t.failed,
                "slowest_failure_ms": t.slowest_failure.as_millis() as u64,
            },
            "bytes_verified": t.bytes_verified,
            "long_lived_streams": {"opened": t.steady_streams, "ended_early": t.steady_breaks},
            "corrupt": t.corrupt,
            "hung": t.hung,
            "events": self.events.iter().map(|e| json!({
                "event": e.kind.name(),
                "at_s": e.at.as_secs(),
                "detail": e.detail,
                "recovery_ms": e.recovery.map(|d| d.as_millis() as u64),
                "long_lived_stream": e.stream,
                "long_lived_stream_fate": e.fate.as_ref().map(Fate::name),
            })).collect::<Vec<_>>(),
            "samples": self.samples,
            "connect_events": self.json_events,
            "connect_failures": self.connect_failures,
        })
    }

    /// summary.md, summary.json and each process's log under `--out`.
    fn write(&self, markdown: &str, logs: &[Log]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.o.out)?;
        std::fs::write(self.o.out.join("summary.md"), markdown)?;
        let json = serde_json::to_string_pretty(&self.json()).map_err(std::io::Error::other)?;
        std::fs::write(self.o.out.join("summary.json"), json)?;
        for log in logs {
            if let Some(name) = log.0.file_name() {
                std::fs::copy(&log.0, self.o.out.join(name))?;
            }
        }
        Ok(())
    }
}
