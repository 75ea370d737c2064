//! Share and connect in the NAT lab (crates/netlab): our binary and the Node hyperdht fixtures
//! started inside a lab's homes, their logs, and verified fetches through a tunnel between two
//! homes with a deadline, for the lab tests and the lab benchmark alike.

use std::fs;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use netlab::{Lab, LabProcess, LabSpec};
use sha2::{Digest, Sha256};

use crate::cli::{binary, listening_addr, listening_key};
use crate::net::{exchange, pattern_sha, Behaviour, Service};
use crate::node::{interop_dir, require_node};

pub use crate::cli::READY;

/// A lab, or a failure saying why there cannot be one here (never a silent skip).
pub fn lab(spec: LabSpec) -> Lab {
    Lab::new(spec).unwrap_or_else(|e| panic!("cannot build the NAT lab: {e}"))
}

/// Where a lab process's log goes, so that the caller can read how each connection went.
pub struct Log(pub PathBuf);

impl Log {
    pub fn new(name: &str) -> Log {
        let dir = std::env::temp_dir().join(format!("p2p-socket-nat-lab-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("create the log directory");
        Log(dir.join(format!("{name}.log")))
    }

    pub fn text(&self) -> String {
        fs::read_to_string(&self.0).unwrap_or_default()
    }

    /// The log line about connection `n` that contains `what`.
    pub fn line(&self, what: &str, n: u64) -> Option<String> {
        let conn = format!(" connection={n}");
        self.text()
            .lines()
            .find(|l| {
                l.contains(what)
                    && l.match_indices(&conn).any(|(at, _)| {
                        l[at + conn.len()..].starts_with(' ') || at + conn.len() == l.len()
                    })
            })
            .map(str::to_string)
    }

    /// The value of `key=` in the log line about connection `n` that contains `what`.
    pub fn field(&self, what: &str, n: u64, key: &str) -> Option<String> {
        let line = self.line(what, n)?;
        let at = line.find(&format!(" {key}="))? + key.len() + 2;
        Some(line[at..].split(' ').next().unwrap_or("").to_string())
    }

    /// The lines of the log that report a panic (Rust's `panicked at`).
    pub fn panics(&self) -> Vec<String> {
        self.text()
            .lines()
            .filter(|l| l.contains("panicked at"))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// The logs, each under its path, for a failure message.
pub fn dump(logs: &[&Log]) -> String {
    logs.iter()
        .map(|l| format!("--- {}\n{}", l.0.display(), l.text()))
        .collect()
}

/// The last `n` lines of each log: enough to see how a long transfer ended.
fn tails(logs: &[&Log], n: usize) -> String {
    logs.iter()
        .map(|l| {
            let text = l.text();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(n)..].join("\n");
            format!("--- {} (last {n} lines)\n{tail}\n", l.0.display())
        })
        .collect()
}

pub fn panic_text(e: Box<dyn std::any::Any + Send>) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panicked".into())
}

/// `p2p-socket args...` in `netns`, its log (stderr) going to `log`.
pub fn p2p_socket_in(lab: &Lab, netns: &str, name: &str, log: &Log, args: &[&str]) -> LabProcess {
    let mut cmd = lab.exec(netns, "sh");
    cmd.args(["-c", r#"exec "$0" "$@" 2>"$P2P_LAB_LOG""#])
        .arg(binary())
        .args(args)
        .env("P2P_LAB_LOG", &log.0)
        .env("RUST_LOG", "info,p2p_socket=debug");
    lab.spawn(name, cmd)
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"))
}

/// `node <script> args...` in `netns`. The fixtures stop when their stdin closes, so they get
/// one that stays open; the lab kills what is left in its namespaces when it goes.
pub fn node_in(lab: &Lab, netns: &str, script: &str, args: &[&str]) -> LabProcess {
    require_node();
    let mut cmd = lab.exec(netns, "sh");
    cmd.args(["-c", r#"sleep 3600 | node "$@""#, "sh"])
        .arg(interop_dir().join(script))
        .args(args)
        .current_dir(interop_dir());
    lab.spawn(&format!("node {script}"), cmd)
        .unwrap_or_else(|e| panic!("cannot start node {script}: {e}"))
}

/// The key in the `listening` event of a share or relay run with `--json`.
pub fn share_key(share: &mut LabProcess) -> String {
    share
        .wait_for(READY, listening_key)
        .unwrap_or_else(|e| panic!("share printed no key: {e}"))
}

/// The address in the `listening` event of a connect run with `--json`.
pub fn listening(connect: &mut LabProcess) -> SocketAddr {
    connect
        .wait_for(READY, listening_addr)
        .unwrap_or_else(|e| panic!("connect did not listen: {e}"))
}

/// How long a connect took to reach the sharer when it started (its `sharer_reached` event), as
/// a user who starts it and then types a command would find it; none if it could not.
pub fn reached_at_start(connect: &mut LabProcess) -> Option<Duration> {
    let event = connect
        .wait_for(READY, |l| {
            crate::cli::event(l, "sharer_reached")
                .or_else(|| crate::cli::event(l, "sharer_unreachable"))
        })
        .unwrap_or_else(|e| panic!("connect said nothing about reaching the sharer: {e}"));
    event["took_ms"].as_u64().map(Duration::from_millis)
}

pub fn json_field(process: &mut LabProcess, name: &str) -> serde_json::Value {
    process
        .wait_for(READY, |l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get(name).cloned())
        })
        .unwrap_or_else(|e| panic!("{} printed no {name:?}: {e}", process.name()))
}

/// One probe's patience in [`recovery`]: a connection that has not echoed by then counts as
/// not working.
const PROBE: Duration = Duration::from_secs(2);
const PROBE_BYTES: u64 = 16 * 1024;

/// Time from `since` until a connection made to `listen` (inside `netns`) echoes verified
/// bytes, probing again every 100 ms while they do not; `None` if none did within `patience`.
pub fn recovery(
    netns: &str,
    listen: SocketAddr,
    since: Instant,
    patience: Duration,
) -> Option<Duration> {
    let mut seed = 0;
    while since.elapsed() < patience {
        seed += 1;
        let stream = netlab::in_netns(netns, move || TcpStream::connect(listen))
            .unwrap_or_else(|e| panic!("cannot enter {netns}: {e}"));
        if let Ok(stream) = stream {
            stream.set_read_timeout(Some(PROBE)).unwrap();
            if let Ok(t) = exchange(stream, PROBE_BYTES, seed) {
                if t.received == PROBE_BYTES && t.received_sha == pattern_sha(PROBE_BYTES, seed) {
                    return Some(since.elapsed());
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// A service in `netns` whose n-th connection (from 0) behaves as `pick(n)` says.
pub fn service_in(
    lab: &Lab,
    netns: &str,
    pick: impl Fn(u64) -> Behaviour + Send + 'static,
) -> Service {
    lab.in_netns(netns, move || Service::start_seq(pick))
        .unwrap_or_else(|e| panic!("cannot start the service: {e}"))
}

/// Two homes and the lab's DHT: the first home shares, the second connects.
pub struct TwoHomes {
    pub lab: Lab,
    pub bootstrap: String,
}

impl TwoHomes {
    pub fn new(spec: LabSpec) -> TwoHomes {
        let lab = lab(spec);
        let bootstrap = lab
            .start_dht(&binary())
            .unwrap_or_else(|e| panic!("cannot start the lab's DHT: {e}"));
        TwoHomes { lab, bootstrap }
    }

    pub fn sharing_home(&self) -> &str {
        &self.lab.homes()[0].host.netns
    }

    pub fn connecting_home(&self) -> &str {
        &self.lab.homes()[1].host.netns
    }

    /// The test service in the sharing home: an echo for the first connection (an interactive
    /// session), an exchange of `volume` bytes each way (seed 20 + n) for the next ones.
    pub fn echo_then_exchange(&self, volume: u64) -> Service {
        service_in(&self.lab, self.sharing_home(), move |n| match n {
            0 => Behaviour::Echo,
            _ => Behaviour::Exchange {
                send: volume,
                seed: 20 + n,
            },
        })
    }

    /// A `p2p-socket relay` on the lab's public relay host; returns it with its key.
    pub fn relay(&self, log: &Log) -> (LabProcess, String) {
        let args = ["relay", "--json", "--bootstrap", &self.bootstrap];
        let netns = &self.lab.relay_host().netns;
        let mut relay = p2p_socket_in(&self.lab, netns, "relay", log, &args);
        let key = share_key(&mut relay);
        (relay, key)
    }

    /// A Rust share of 127.0.0.1:`port` (`extra` arguments added); returns it with its key.
    pub fn rust_share(&self, port: u16, log: &Log, extra: &[&str]) -> (LabProcess, String) {
        let port = port.to_string();
        let mut args = vec![
            "share",
            "--json",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--bootstrap",
            &self.bootstrap,
        ];
        args.extend_from_slice(extra);
        let mut share = p2p_socket_in(&self.lab, self.sharing_home(), "share", log, &args);
        let key = share_key(&mut share);
        (share, key)
    }

    /// A Rust connect to `key` (`extra` arguments added); returns it with where it listens.
    pub fn rust_connect(&self, key: &str, log: &Log, extra: &[&str]) -> (LabProcess, SocketAddr) {
        let mut args = vec![
            "connect",
            "--json",
            "--key",
            key,
            "--bootstrap",
            &self.bootstrap,
        ];
        args.extend_from_slice(extra);
        let mut connect = p2p_socket_in(&self.lab, self.connecting_home(), "connect", log, &args);
        let listen = listening(&mut connect);
        (connect, listen)
    }

    /// A Node hyperdht server (interop/node/server.js) in the sharing home, forwarding to
    /// 127.0.0.1:`port`; returns it with its key.
    pub fn node_server(&self, port: u16) -> (LabProcess, String) {
        self.node_server_with(port, &[])
    }

    /// [`TwoHomes::node_server`] with `extra` arguments (`--relay KEY`, say).
    pub fn node_server_with(&self, port: u16, extra: &[&str]) -> (LabProcess, String) {
        let port = port.to_string();
        let mut args = vec![
            "--bootstrap",
            &self.bootstrap,
            "--target-host",
            "127.0.0.1",
            "--target-port",
            &port,
            "--host",
            "0.0.0.0",
        ];
        args.extend_from_slice(extra);
        let mut server = node_in(&self.lab, self.sharing_home(), "server.js", &args);
        let key = json_field(&mut server, "publicKey")
            .as_str()
            .expect("the Node server's key")
            .to_string();
        (server, key)
    }

    /// A Node hyperdht client (interop/node/client.js) in the connecting home, dialling `key`
    /// for every TCP connection; returns it with where it listens.
    pub fn node_client(&self, key: &str) -> (LabProcess, SocketAddr) {
        let args = [
            "--bootstrap",
            &self.bootstrap,
            "--key",
            key,
            "--port",
            "0",
            "--host",
            "0.0.0.0",
        ];
        let mut client = node_in(&self.lab, self.connecting_home(), "client.js", &args);
        let port = json_field(&mut client, "port")
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .expect("the Node client's port");
        (client, SocketAddr::from(([127, 0, 0, 1], port)))
    }
}

/// Whose tunnel a fetch goes through: our share and connect, or Node's hyperdht pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tunnel {
    Rust,
    Node,
}

impl Tunnel {
    pub fn name(self) -> &'static str {
        match self {
            Tunnel::Rust => "ours",
            Tunnel::Node => "Node hyperdht",
        }
    }
}

/// One verified fetch.
#[derive(Debug, Clone)]
pub struct Fetch {
    /// From dialling the tunnel to the last byte.
    pub elapsed: Duration,
    pub first_byte: Duration,
    pub volume: u64,
}

impl Fetch {
    /// Bytes per second while the data moved (after the first byte, so without the setup).
    pub fn throughput(&self) -> f64 {
        self.volume as f64 / self.elapsed.saturating_sub(self.first_byte).as_secs_f64()
    }

    /// Bytes per second over the whole fetch, from dialling the tunnel to the last byte, as
    /// the user waits for it.
    pub fn overall(&self) -> f64 {
        self.volume as f64 / self.elapsed.as_secs_f64()
    }
}

/// The fetches through one tunnel, in order, and why the run stopped early, if it did.
#[derive(Debug)]
pub struct FetchRun {
    pub tunnel: Tunnel,
    pub fetches: Vec<Fetch>,
    pub failure: Option<String>,
    /// How long our connect took to reach the sharer when it started, before the first fetch
    /// (Node's client dials for each connection: none).
    pub reached_at_start: Option<Duration>,
}

/// When the first fetch of a [`fetch_run`] starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstFetch {
    /// As soon as the tunnel listens: our connect's dial at start is still under way, so the
    /// fetch pays for reaching the sharer, as Node's does (the benchmark's cold fetch).
    AtOnce,
    /// Once our connect reached the sharer (its `sharer_reached` event), as a user's first
    /// command comes a moment after starting it (docs/warm.md).
    WhenReached,
}

/// `fetches` fetches of `volume` bytes in a row through one tunnel of `tunnel`'s kind, from a
/// service in the sharing home to the connecting home, each verified (length and sha256) and
/// each given `deadline`. Our tunnel uses one long-lived connect for all of them. Stops at the
/// first failure. Afterwards, whatever happened, checks that no process of the tunnel
/// panicked or exited.
pub fn fetch_run(
    homes: &TwoHomes,
    tunnel: Tunnel,
    volume: u64,
    fetches: u64,
    deadline: Duration,
    first: FirstFetch,
) -> FetchRun {
    let service = service_in(&homes.lab, homes.sharing_home(), move |n| {
        Behaviour::SendAndClose {
            send: volume,
            seed: 20 + n,
        }
    });
    let name = match tunnel {
        Tunnel::Rust => "rust",
        Tunnel::Node => "node",
    };
    let share_log = Log::new(&format!("{name}-share"));
    let connect_log = Log::new(&format!("{name}-connect"));
    let mut run = FetchRun {
        tunnel,
        fetches: Vec::new(),
        failure: None,
        reached_at_start: None,
    };
    // Set up inside catch_unwind: a tunnel that never comes up is a failed run, not a crash of
    // the caller (which wants the other tunnel's figures too).
    let started = catch_unwind(AssertUnwindSafe(|| match tunnel {
        Tunnel::Rust => {
            let (share, key) = homes.rust_share(service.port(), &share_log, &[]);
            let (mut connect, listen) = homes.rust_connect(&key, &connect_log, &[]);
            if first == FirstFetch::WhenReached {
                run.reached_at_start = reached_at_start(&mut connect);
            }
            (vec![share, connect], listen)
        }
        Tunnel::Node => {
            let (server, key) = homes.node_server(service.port());
            let (client, listen) = homes.node_client(&key);
            (vec![server, client], listen)
        }
    }));
    let (mut processes, listen) = match started {
        Ok(started) => started,
        Err(e) => {
            run.failure = Some(format!("the tunnel did not come up: {}", panic_text(e)));
            return run;
        }
    };
    for n in 0..fetches {
        let fetched = homes
            .lab
            .in_netns(homes.connecting_home(), move || TcpStream::connect(listen))
            .map_err(|e| e.to_string())
            .and_then(|dialled| dialled.map_err(|e| format!("dial the tunnel: {e}")))
            .and_then(|stream| {
                // A panicked share or connect never finishes the fetch: stop waiting for it.
                let crashed = || {
                    let panics: Vec<String> = [&share_log, &connect_log]
                        .iter()
                        .flat_map(|l| l.panics())
                        .collect();
                    (!panics.is_empty()).then(|| panics.join("\n"))
                };
                fetch(stream, volume, 20 + n, deadline, crashed)
            });
        match fetched {
            Ok(f) => run.fetches.push(f),
            Err(why) => {
                run.failure = Some(format!("fetch {}: {why}", n + 1));
                break;
            }
        }
    }
    let logs = [&share_log, &connect_log];
    let mut trouble: Vec<String> = logs.iter().flat_map(|l| l.panics()).collect();
    for p in &mut processes {
        if let Ok(Some(status)) = p.try_wait() {
            trouble.push(format!("{} exited ({status})", p.name()));
        }
    }
    if !trouble.is_empty() || run.failure.is_some() {
        let why = [run.failure.take().unwrap_or_default(), trouble.join("\n")].join("\n");
        let logs = match tunnel {
            Tunnel::Rust => tails(&logs, 40),
            // Node's output goes to this process's log, not to files.
            Tunnel::Node => String::new(),
        };
        run.failure = Some(format!("{}\n{logs}", why.trim()));
    }
    run
}

/// Reads what the service sends until it closes, within `deadline`, and checks it is exactly
/// `volume` bytes of the pattern with `seed`. Gives up early when `crashed` (asked about once
/// a second while nothing arrives) says why the tunnel can no longer deliver.
fn fetch(
    stream: TcpStream,
    volume: u64,
    seed: u64,
    deadline: Duration,
    crashed: impl Fn() -> Option<String>,
) -> Result<Fetch, String> {
    let started = Instant::now();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut received = 0u64;
    let mut first_byte = None;
    loop {
        let left = deadline.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Err(format!(
                "> {} s: {received} of {volume} bytes arrived in time",
                deadline.as_secs()
            ));
        }
        stream
            .set_read_timeout(Some(left.min(Duration::from_secs(1))))
            .map_err(|e| e.to_string())?;
        let n = match (&stream).read(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if let Some(why) = crashed() {
                    return Err(format!("stopped after {received} of {volume} bytes: {why}"));
                }
                continue;
            }
            Err(e) => return Err(format!("after {received} of {volume} bytes: {e}")),
        };
        if n == 0 {
            break;
        }
        first_byte.get_or_insert_with(|| started.elapsed());
        h.update(&buf[..n]);
        received += n as u64;
    }
    let elapsed = started.elapsed();
    if received != volume {
        return Err(format!(
            "the tunnel closed after {received} of {volume} bytes"
        ));
    }
    if hex::encode(h.finalize()) != pattern_sha(volume, seed) {
        return Err(format!("{volume} bytes arrived but not the bytes sent"));
    }
    Ok(Fetch {
        elapsed,
        first_byte: first_byte.unwrap_or(elapsed),
        volume,
    })
}
