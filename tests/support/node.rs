//! Real Node.js peers for interop tests: the scripts in `interop/node` run as
//! child processes (hyperdht 6.34.0 from the lock file), talk to the test over
//! JSON lines on stdout and die with it (they exit when their stdin closes).

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use serde_json::Value;

/// Generous for a loaded 2-core machine; a healthy testnet is ready in well under a second.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop/node")
}

/// Panics with what to do when Node or the pinned npm packages are missing: an
/// interop test that silently skips would pass without testing anything.
pub fn require_node() {
    let version = Command::new("node").arg("--version").output();
    match version {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "`node --version` failed ({}): install Node.js 20, then run `npm ci` in interop/node",
            out.status
        ),
        Err(err) => panic!(
            "cannot run `node` ({err}): install Node.js 20 and put it on PATH, then run `npm ci` in interop/node"
        ),
    }
    let hyperdht = interop_dir().join("node_modules/hyperdht");
    assert!(
        hyperdht.is_dir(),
        "{} is missing: run `npm ci` in interop/node",
        hyperdht.display()
    );
}

/// A running fixture script. Dropping it closes its stdin, kills it and reaps it.
struct NodeProcess {
    child: Child,
    // Held only so the script's stdin stays open for as long as this handle lives.
    _stdin: ChildStdin,
}

impl NodeProcess {
    /// Starts `interop/node/<script>` and returns it with the first JSON line it prints.
    fn start(script: &str, args: &[String]) -> (Self, Value) {
        require_node();
        let mut child = Command::new("node")
            .arg(interop_dir().join(script))
            .args(args)
            .current_dir(interop_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start `node {script}`: {err}"));
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let process = NodeProcess {
            child,
            _stdin: stdin,
        };

        forward_lines(stderr, format!("[node {script}]"), None);
        let (tx, rx) = mpsc::channel();
        forward_lines(stdout, format!("[node {script} stdout]"), Some(tx));

        match rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) => {
                let value = serde_json::from_str(&line).unwrap_or_else(|err| {
                    panic!("`node {script}` printed {line:?}, which is not JSON: {err}")
                });
                (process, value)
            }
            Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                "`node {script}` printed no ready line within {READY_TIMEOUT:?}; its stderr is above"
            ),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let mut process = process;
                let status = process.child.wait();
                panic!("`node {script}` exited ({status:?}) before printing its ready line; its stderr is above")
            }
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        // Killing an already exited child fails harmlessly; waiting reaps it either way.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Copies a child's output lines into the test's output with `prefix` (threads
/// spawned by a test inherit its output capture). With `first`, the first line goes
/// to that channel instead of being printed.
fn forward_lines(
    pipe: impl Read + Send + 'static,
    prefix: String,
    first: Option<mpsc::Sender<String>>,
) {
    thread::spawn(move || {
        let mut first = first;
        // Ends when the child exits and its end of the pipe closes.
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            match first.take() {
                Some(tx) => {
                    let _ = tx.send(line);
                }
                None => eprintln!("{prefix} {line}"),
            }
        }
    });
}

fn field<'a>(value: &'a Value, script: &str, name: &str) -> &'a Value {
    value
        .get(name)
        .unwrap_or_else(|| panic!("`node {script}` ready line {value} has no {name:?}"))
}

/// A HyperDHT testnet on 127.0.0.1: one bootstrap node plus `nodes - 1` others.
pub struct NodeTestnet {
    /// `host:port` of the bootstrap node(s).
    pub bootstrap: Vec<String>,
    _process: NodeProcess,
}

impl NodeTestnet {
    pub fn start(nodes: usize) -> Self {
        let script = "testnet.js";
        let (process, ready) = NodeProcess::start(script, &["--nodes".into(), nodes.to_string()]);
        let bootstrap = field(&ready, script, "bootstrap")
            .as_array()
            .and_then(|list| list.iter().map(|v| v.as_str().map(String::from)).collect())
            .unwrap_or_else(|| {
                panic!("`node {script}` bootstrap is not a list of strings: {ready}")
            });
        NodeTestnet {
            bootstrap,
            _process: process,
        }
    }
}

/// A Node p2p-socket share: forwards every DHT connection to 127.0.0.1:`target_port`.
pub struct NodeServer {
    /// Hex public key that clients connect to.
    pub public_key: String,
    _process: NodeProcess,
}

impl NodeServer {
    /// `seed` fixes the key pair (`DHT.keyPair(seed)`); `None` picks a random one.
    pub fn start(bootstrap: &[String], target_port: u16, seed: Option<[u8; 32]>) -> Self {
        let script = "server.js";
        let mut args = vec![
            "--bootstrap".into(),
            bootstrap.join(","),
            "--target-host".into(),
            "127.0.0.1".into(),
            "--target-port".into(),
            target_port.to_string(),
        ];
        if let Some(seed) = seed {
            args.extend(["--seed".into(), hex::encode(seed)]);
        }
        let (process, ready) = NodeProcess::start(script, &args);
        let public_key = field(&ready, script, "publicKey")
            .as_str()
            .unwrap_or_else(|| panic!("`node {script}` publicKey is not a string: {ready}"))
            .to_owned();
        NodeServer {
            public_key,
            _process: process,
        }
    }
}

/// A Node p2p-socket connect: a TCP listener on 127.0.0.1 tunnelling to `key`.
pub struct NodeClient {
    /// The TCP port it listens on (the OS-picked one when started with 0).
    pub port: u16,
    _process: NodeProcess,
}

impl NodeClient {
    pub fn start(bootstrap: &[String], key: &str, port: u16) -> Self {
        let script = "client.js";
        let args = [
            "--bootstrap".into(),
            bootstrap.join(","),
            "--key".into(),
            key.to_owned(),
            "--port".into(),
            port.to_string(),
        ];
        let (process, ready) = NodeProcess::start(script, &args);
        let port = field(&ready, script, "port")
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or_else(|| panic!("`node {script}` port is not a TCP port: {ready}"));
        NodeClient {
            port,
            _process: process,
        }
    }
}
