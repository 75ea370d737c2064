//! The real `p2p-socket` binary as the tests run it: a local DHT made of `bootstrap` processes,
//! `share` and `connect` processes, each waited for by the line it prints when ready.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use super::process::ChildProcess;

/// Joining, announcing and looking up on loopback takes milliseconds; a loaded 2-core CI
/// machine running several tests at once can be much slower.
pub const READY: Duration = Duration::from_secs(30);

pub fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_p2p-socket"));
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
        cmd.arg("share").args(args).args(["--bootstrap", bootstrap]);
        let mut process = ChildProcess::spawn(cmd, "share");
        let key = process.wait_for(READY, |line| {
            let l = line.trim();
            (l.len() == 64 && l.bytes().all(|b| b.is_ascii_hexdigit())).then(|| l.to_string())
        });
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

/// A running `p2p-socket connect`.
pub struct ConnectProcess {
    pub addr: SocketAddr,
    pub process: ChildProcess,
}

impl ConnectProcess {
    pub fn start(bootstrap: &str, key: &str) -> ConnectProcess {
        let mut cmd = bin();
        cmd.args(["connect", "--key", key, "--bootstrap", bootstrap]);
        let mut process = ChildProcess::spawn(cmd, "connect");
        let addr = process.wait_for(READY, |line| {
            line.strip_prefix("Listening on ")
                .and_then(|a| a.trim().parse().ok())
        });
        ConnectProcess { addr, process }
    }
}
