//! The real `p2p-socket` binary as the tests run it: a local DHT made of `bootstrap` processes,
//! `share` and `connect` processes, each run with `--json` and waited for by its `listening`
//! event (docs/json.md), never by the wording of its text.
//!
//! One scrape remains: the relay's log is read for what it relayed (see [`RelayProcess::log`]),
//! which no event says yet. The Node fixtures speak JSON lines too (see `node`).

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::process::ChildProcess;

/// Joining, announcing and looking up on loopback takes milliseconds; a loaded 2-core CI
/// machine running several tests at once can be much slower.
pub const READY: Duration = Duration::from_secs(30);

/// The `p2p-socket` binary cargo built beside the running test or benchmark (cargo builds a
/// package's binaries before its integration tests and benchmarks).
pub fn binary() -> PathBuf {
    netlab::find_binary("p2p-socket").unwrap_or_else(|e| panic!("{e}"))
}

pub fn bin() -> Command {
    let mut cmd = Command::new(binary());
    cmd.env_remove("P2P_SOCKET_BOOTSTRAP");
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "warn,p2p_socket=info,udx=info");
    }
    cmd
}

/// A private DHT on 127.0.0.1: one bootstrap node and `nodes - 1` more, each its own process.
pub struct LocalDht {
    pub bootstrap: String,
    _nodes: Vec<ChildProcess>,
}

/// The `--json` event `name` (docs/json.md), if `line` is one.
pub fn event(line: &str, name: &str) -> Option<serde_json::Value> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    (value["event"] == name).then_some(value)
}

/// A string field of the `listening` event, if `line` is that event.
fn listening(line: &str, field: &str) -> Option<String> {
    event(line, "listening")?[field].as_str().map(String::from)
}

/// Where a `listening` line says a share or relay is: its key.
pub fn listening_key(line: &str) -> Option<String> {
    listening(line, "key")
}

/// Where a `listening` line says a connect or bootstrap node is: its local address.
pub fn listening_addr(line: &str) -> Option<SocketAddr> {
    listening(line, "local")?.parse().ok()
}

fn start_node(join: Option<&str>) -> (ChildProcess, String) {
    let mut cmd = bin();
    cmd.args(["bootstrap", "--json", "--host", "127.0.0.1", "--port", "0"]);
    if let Some(b) = join {
        cmd.args(["--bootstrap", b]);
    }
    let mut p = ChildProcess::spawn(cmd, "dht node");
    let addr = p.wait_for(READY, listening_addr);
    (p, addr.to_string())
}

impl LocalDht {
    pub fn start(nodes: usize) -> LocalDht {
        let (first, bootstrap) = start_node(None);
        let mut all = vec![first];
        for _ in 1..nodes {
            all.push(start_node(Some(&bootstrap)).0);
        }
        LocalDht {
            bootstrap,
            _nodes: all,
        }
    }
}

/// A running `p2p-socket share`.
pub struct ShareProcess {
    pub key: String,
    pub process: ChildProcess,
}

impl ShareProcess {
    pub fn start(bootstrap: &str, service_port: u16, extra: &[&str]) -> ShareProcess {
        let port = service_port.to_string();
        let mut args = vec!["--host", "127.0.0.1", "--port", &port];
        args.extend_from_slice(extra);
        Self::start_with(bootstrap, &args)
    }

    /// `p2p-socket share` with exactly these arguments (plus --bootstrap).
    pub fn start_with(bootstrap: &str, args: &[&str]) -> ShareProcess {
        let mut cmd = bin();
        cmd.args(["share", "--json"])
            .args(args)
            .args(["--bootstrap", bootstrap]);
        let mut process = ChildProcess::spawn(cmd, "share");
        let key = process.wait_for(READY, listening_key);
        ShareProcess { key, process }
    }
}

impl ShareProcess {
    /// SIGTERM, then a clean exit (0) after withdrawing the announcement.
    pub fn terminate_and_expect_clean_exit(&mut self) {
        self.process.terminate();
        let status = self.process.wait_exit(Duration::from_secs(15));
        assert!(status.success(), "share exited with {status} after SIGTERM");
    }
}

/// A running `p2p-socket relay`, its log (stderr) kept in a file so a test can see what it
/// relayed.
pub struct RelayProcess {
    pub key: String,
    pub process: ChildProcess,
    log: std::path::PathBuf,
}

impl RelayProcess {
    pub fn start(bootstrap: &str) -> RelayProcess {
        Self::start_with(bootstrap, &[])
    }

    /// `p2p-socket relay` with `extra` arguments.
    pub fn start_with(bootstrap: &str, extra: &[&str]) -> RelayProcess {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log =
            std::env::temp_dir().join(format!("p2p-socket-relay-{}-{n}.log", std::process::id()));
        let mut cmd = Command::new("sh");
        cmd.args(["-c", r#"exec "$0" "$@" 2>"$RELAY_LOG""#])
            .arg(bin().get_program())
            .args(["relay", "--json", "--bootstrap", bootstrap])
            .args(extra)
            .env_remove("P2P_SOCKET_BOOTSTRAP")
            .env("RELAY_LOG", &log)
            .env("RUST_LOG", "warn,p2p_socket=info");
        let mut process = ChildProcess::spawn(cmd, "relay");
        let key = process.wait_for(READY, listening_key);
        RelayProcess { key, process, log }
    }

    /// What it logged so far. Its wording is not an interface: read it only for what the relay
    /// has no machine-readable output for yet (which pairs it relayed, which cap it reached).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("[relay log]\n{}", self.log());
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A running `p2p-socket connect`.
pub struct ConnectProcess {
    pub addr: SocketAddr,
    pub process: ChildProcess,
}

impl ConnectProcess {
    pub fn start(bootstrap: &str, key: &str) -> ConnectProcess {
        Self::start_with(bootstrap, key, &[])
    }

    /// `p2p-socket connect --key KEY` with `extra` arguments.
    pub fn start_with(bootstrap: &str, key: &str, extra: &[&str]) -> ConnectProcess {
        let mut cmd = bin();
        cmd.args(["connect", "--json", "--key", key, "--bootstrap", bootstrap])
            .args(extra);
        let mut process = ChildProcess::spawn(cmd, "connect");
        let addr = process.wait_for(READY, listening_addr);
        ConnectProcess { addr, process }
    }
}

/// Runs the binary to completion (bounded) and returns (exit code, stderr).
pub fn run(args: &[&str], limit: Duration) -> (i32, String, Duration) {
    let started = Instant::now();
    let mut child = bin()
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start p2p-socket");
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status.code().unwrap_or(-1), err, started.elapsed());
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("p2p-socket {args:?} was still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A failure as a user should see it: a non-zero exit and one `error:` line that mentions
/// `expect`, no panic.
pub fn assert_clear_error(code: i32, stderr: &str, expect: &str) {
    assert_ne!(code, 0, "should fail; stderr: {stderr}");
    assert!(
        !stderr.contains("panicked"),
        "a panic is not an error message: {stderr}"
    );
    let error_lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(
        error_lines.len(),
        1,
        "one error line expected, got: {stderr}"
    );
    assert!(
        error_lines[0].contains(expect),
        "error should mention {expect:?}: {}",
        error_lines[0]
    );
}
