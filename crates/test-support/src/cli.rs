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
    // The user's own config file (~/.config/p2p-socket/config.toml) must not change what a
    // test runs: point the platform config dir at nowhere, and forget any explicit one.
    cmd.env("XDG_CONFIG_HOME", "/nonexistent/p2p-socket-tests")
        .env_remove("P2P_SOCKET_CONFIG");
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "warn,p2p_socket=info,udx=info");
    }
    cmd
}

/// A process's log (its stderr) kept in a file, for a test to read what it logged.
pub struct LogFile(PathBuf);

impl LogFile {
    pub fn new(name: &str) -> LogFile {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        LogFile(
            std::env::temp_dir().join(format!("p2p-socket-{name}-{}-{n}.log", std::process::id())),
        )
    }

    /// The binary, as [`bin`] runs it, with its stderr going to this file.
    pub fn bin(&self) -> Command {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", r#"exec "$0" "$@" 2>"$P2P_SOCKET_TEST_LOG""#])
            .arg(binary())
            .env_remove("P2P_SOCKET_BOOTSTRAP")
            .env("XDG_CONFIG_HOME", "/nonexistent/p2p-socket-tests")
            .env_remove("P2P_SOCKET_CONFIG")
            .env("P2P_SOCKET_TEST_LOG", &self.0);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "warn,p2p_socket=info");
        }
        cmd
    }

    /// What it logged so far. Its wording is not an interface: read it only for what has no
    /// machine-readable output yet.
    pub fn read(&self) -> String {
        std::fs::read_to_string(&self.0).unwrap_or_default()
    }

    /// Waits up to `timeout` for a logged line that contains `text`, and returns it.
    pub fn wait_for_line(&self, timeout: Duration, text: &str) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(line) = self.read().lines().find(|l| l.contains(text)) {
                return line.to_string();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no line with {text:?} logged within {timeout:?}; the log:\n{}",
                self.read()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for LogFile {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("[log {}]\n{}", self.0.display(), self.read());
        }
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs `cmd` to its end and returns its output; panics with its stderr unless it succeeded.
pub fn succeed(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().expect("the command runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
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
    /// The `hs://` string its `listening` event names.
    pub connection_string: Option<String>,
    pub process: ChildProcess,
    log: Option<LogFile>,
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
        Self::start_logged(bootstrap, args, None)
    }

    /// [`ShareProcess::start_with`], its log going to `log` if given.
    pub fn start_logged(bootstrap: &str, args: &[&str], log: Option<&LogFile>) -> ShareProcess {
        let mut cmd = log.map_or_else(bin, LogFile::bin);
        cmd.args(["share", "--json"])
            .args(args)
            .args(["--bootstrap", bootstrap]);
        let mut process = ChildProcess::spawn(cmd, "share");
        let (key, connection_string) = process.wait_for(READY, |line| {
            Some((listening_key(line)?, listening(line, "connection_string")))
        });
        ShareProcess {
            key,
            connection_string,
            process,
            log: None,
        }
    }

    /// Like [`ShareProcess::start`], with its log (stderr) kept for [`ShareProcess::log`].
    pub fn start_with_log(bootstrap: &str, service_port: u16, extra: &[&str]) -> ShareProcess {
        let port = service_port.to_string();
        let mut args = vec!["--host", "127.0.0.1", "--port", &port];
        args.extend_from_slice(extra);
        let log = LogFile::new("share");
        let mut share = Self::start_logged(bootstrap, &args, Some(&log));
        share.log = Some(log);
        share
    }

    /// What it logged so far (started with [`ShareProcess::start_with_log`]). Its wording is not
    /// an interface: read it only for what share has no machine-readable output for yet.
    pub fn log(&self) -> String {
        self.log.as_ref().map(LogFile::read).unwrap_or_default()
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

/// A running `p2p-socket relay`, its log kept in a file so a test can see what it relayed.
pub struct RelayProcess {
    pub key: String,
    pub process: ChildProcess,
    log: LogFile,
}

impl RelayProcess {
    pub fn start(bootstrap: &str) -> RelayProcess {
        Self::start_with(bootstrap, &[])
    }

    /// `p2p-socket relay` with `extra` arguments.
    pub fn start_with(bootstrap: &str, extra: &[&str]) -> RelayProcess {
        let log = LogFile::new("relay");
        let mut cmd = log.bin();
        cmd.args(["relay", "--json", "--bootstrap", bootstrap])
            .args(extra)
            .env("RUST_LOG", "warn,p2p_socket=info");
        let mut process = ChildProcess::spawn(cmd, "relay");
        let key = process.wait_for(READY, listening_key);
        RelayProcess { key, process, log }
    }

    /// What it logged so far: read it only for what the relay has no machine-readable output
    /// for yet (which pairs it relayed, which cap it reached).
    pub fn log(&self) -> String {
        self.log.read()
    }
}

/// A running `p2p-socket connect`.
pub struct ConnectProcess {
    pub addr: SocketAddr,
    pub process: ChildProcess,
}

impl ConnectProcess {
    /// `p2p-socket connect --key KEY` on a free port. (Without `--port`, connect would first
    /// read the sharer's service record for one: [`ConnectProcess::start_with`] with no
    /// arguments does that.)
    pub fn start(bootstrap: &str, key: &str) -> ConnectProcess {
        Self::start_with(bootstrap, key, &["--port", "0"])
    }

    /// `p2p-socket connect --key KEY` with `extra` arguments.
    pub fn start_with(bootstrap: &str, key: &str, extra: &[&str]) -> ConnectProcess {
        Self::start_logged(bootstrap, key, extra, None)
    }

    /// [`ConnectProcess::start_with`], its log going to `log` if given.
    pub fn start_logged(
        bootstrap: &str,
        key: &str,
        extra: &[&str],
        log: Option<&LogFile>,
    ) -> ConnectProcess {
        let mut args = vec!["--key", key];
        args.extend_from_slice(extra);
        Self::start_args_logged(bootstrap, &args, log)
    }

    /// `p2p-socket connect` with exactly these arguments (plus --bootstrap).
    pub fn start_args(bootstrap: &str, args: &[&str]) -> ConnectProcess {
        Self::start_args_logged(bootstrap, args, None)
    }

    fn start_args_logged(bootstrap: &str, args: &[&str], log: Option<&LogFile>) -> ConnectProcess {
        let mut cmd = log.map_or_else(bin, LogFile::bin);
        cmd.args(["connect", "--json", "--bootstrap", bootstrap])
            .args(args);
        let mut process = ChildProcess::spawn(cmd, "connect");
        let addr = process.wait_for(READY, listening_addr);
        ConnectProcess { addr, process }
    }

    /// Like [`ConnectProcess::start_with`], its log also kept in a file it returns.
    pub fn start_with_log(bootstrap: &str, key: &str, extra: &[&str]) -> (ConnectProcess, LogFile) {
        let log = LogFile::new("connect");
        let process = Self::start_logged(bootstrap, key, extra, Some(&log));
        (process, log)
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
