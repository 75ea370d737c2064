//! The real `p2p-socket` binary as the tests run it: a local DHT made of `bootstrap` processes,
//! `share` and `connect` processes, each waited for by the line it prints when ready.
//!
//! Scraping remains here: the ready lines are the human-readable ones the CLI prints on stdout,
//! and the relay's log is read for what it relayed (see [`RelayProcess::log`]). The `--json`
//! output (the around-the-tunnel issue) is meant to replace both; the Node fixtures already
//! speak JSON lines (see `node`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

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

fn start_node(join: Option<&str>) -> (ChildProcess, String) {
    let mut cmd = bin();
    cmd.args(["bootstrap", "--host", "127.0.0.1", "--port", "0"]);
    if let Some(b) = join {
        cmd.args(["--bootstrap", b]);
    }
    let mut p = ChildProcess::spawn(cmd, "dht node");
    let addr = p.wait_for(READY, |line| {
        line.strip_prefix("Bootstrap node running on ")
            .and_then(|rest| rest.split_whitespace().next())
            .map(String::from)
    });
    (p, addr)
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

/// The line with the key that share and relay print.
fn key_line(line: &str) -> Option<String> {
    let l = line.trim();
    (l.len() == 64 && l.bytes().all(|b| b.is_ascii_hexdigit())).then(|| l.to_string())
}

/// A running `p2p-socket share`.
pub struct ShareProcess {
    pub key: String,
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
        cmd.arg("share").args(args).args(["--bootstrap", bootstrap]);
        let mut process = ChildProcess::spawn(cmd, "share");
        let key = process.wait_for(READY, key_line);
        ShareProcess {
            key,
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
        cmd.args(["relay", "--bootstrap", bootstrap])
            .args(extra)
            .env("RUST_LOG", "warn,p2p_socket=info");
        let mut process = ChildProcess::spawn(cmd, "relay");
        let key = process.wait_for(READY, key_line);
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
        cmd.args(["connect", "--bootstrap", bootstrap]).args(args);
        let mut process = ChildProcess::spawn(cmd, "connect");
        let addr = process.wait_for(READY, |line| {
            line.strip_prefix("Listening on ")
                .and_then(|a| a.trim().parse().ok())
        });
        ConnectProcess { addr, process }
    }

    /// Like [`ConnectProcess::start_with`], its log also kept in a file it returns.
    pub fn start_with_log(bootstrap: &str, key: &str, extra: &[&str]) -> (ConnectProcess, LogFile) {
        let log = LogFile::new("connect");
        let process = Self::start_logged(bootstrap, key, extra, Some(&log));
        (process, log)
    }
}
