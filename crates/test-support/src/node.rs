//! Real Node.js peers for interop tests: the scripts in `interop/node` run as
//! child processes (hyperdht 6.34.0 from the lock file), talk to the test over
//! JSON lines on stdout and die with it (they exit when their stdin closes).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::process::ChildProcess;

/// Generous for a loaded 2-core machine; a healthy testnet is ready in well under a second.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Where the Node fixture scripts live.
pub fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../interop/node")
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

/// Starts `interop/node/<script>` and returns it with the first JSON line it prints.
/// The script exits when its stdin closes, so it cannot outlive a crashed test.
fn start_script(script: &str, args: &[String]) -> (ChildProcess, Value) {
    require_node();
    start_on(Command::new("node"), "node", script, args)
}

/// The Bare runtime of the pinned npm package `bare-runtime-linux-x64`: holesail 2.4.1 is
/// built for Bare and fails under Node at require time.
pub fn bare() -> PathBuf {
    interop_dir().join("node_modules/.bin/bare")
}

/// Starts `interop/node/<script>` on the Bare runtime, as [`start_script`] does on Node; panics
/// with what to do when the runtime is missing.
pub fn start_bare_script(script: &str, args: &[String]) -> (ChildProcess, Value) {
    let bare = bare();
    assert!(
        bare.is_file(),
        "{} is missing: run `npm ci` in interop/node (it installs the Bare runtime holesail needs)",
        bare.display()
    );
    start_on(Command::new(bare), "bare", script, args)
}

fn start_on(
    mut cmd: Command,
    runtime: &str,
    script: &str,
    args: &[String],
) -> (ChildProcess, Value) {
    cmd.arg(interop_dir().join(script))
        .args(args)
        .current_dir(interop_dir());
    let mut process = ChildProcess::spawn(cmd, &format!("{runtime} {script}"));
    let ready = process.wait_for(READY_TIMEOUT, |line| serde_json::from_str(line).ok());
    (process, ready)
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
    _process: ChildProcess,
}

impl NodeTestnet {
    pub fn start(nodes: usize) -> Self {
        let script = "testnet.js";
        let (process, ready) = start_script(script, &["--nodes".into(), nodes.to_string()]);
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
    pub process: ChildProcess,
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
        let (process, ready) = start_script(script, &args);
        let public_key = field(&ready, script, "publicKey")
            .as_str()
            .unwrap_or_else(|| panic!("`node {script}` publicKey is not a string: {ready}"))
            .to_owned();
        NodeServer {
            public_key,
            process,
        }
    }
}

/// A Node p2p-socket connect: a TCP listener on 127.0.0.1 tunnelling to `key`.
pub struct NodeClient {
    /// The TCP port it listens on (the OS-picked one when started with 0).
    pub port: u16,
    pub process: ChildProcess,
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
        let (process, ready) = start_script(script, &args);
        let port = field(&ready, script, "port")
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or_else(|| panic!("`node {script}` port is not a TCP port: {ready}"));
        NodeClient { port, process }
    }
}
