//! Real Node.js peers for interop tests: the scripts in `interop/node` run as
//! child processes (hyperdht 6.34.0 from the lock file), talk to the test over
//! JSON lines on stdout and die with it (they exit when their stdin closes).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::cli::READY;
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

/// Starts `interop/node/<script>` on the Bare runtime ([`bare`]), as `start_script` does
/// on Node.
pub fn start_bare_script(script: &str, args: &[String]) -> (ChildProcess, Value) {
    start_on(Command::new(bare()), "bare", script, args)
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

/// The Bare runtime that holesail needs (it loads Bare-only modules and fails under Node),
/// from the pinned npm package `bare-runtime-linux-x64`.
pub fn bare() -> PathBuf {
    let bare = interop_dir().join("node_modules/.bin/bare");
    assert!(
        bare.exists() && interop_dir().join("node_modules/holesail").is_dir(),
        "{} or holesail is missing: run `npm ci` in interop/node (it installs holesail 2.4.1 and the Bare runtime)",
        bare.display()
    );
    bare
}

/// Holesail needs a mutable put and a DHT join before it is ready: seconds on loopback, more
/// on a loaded machine.
const HOLESAIL_READY: Duration = Duration::from_secs(60);

/// The real holesail 2.4.1 (`interop/node/holesail.js` on the Bare runtime), on our test DHT.
pub struct Holesail {
    /// Holesail's `info` once ready: `url`, `port`, `host`, `key`, `publicKey`, `secure`...
    pub info: Value,
    pub process: ChildProcess,
}

impl Holesail {
    /// A holesail server of `host:port`, in secure mode or public mode.
    pub fn server(bootstrap: &[String], host: &str, port: u16, secure: bool) -> Self {
        let mut args = vec![
            "--role".into(),
            "server".into(),
            "--host".into(),
            host.into(),
            "--port".into(),
            port.to_string(),
        ];
        if secure {
            args.push("--secure".into());
        }
        Self::start(bootstrap, args)
    }

    /// A holesail client of `url` (an `hs://` string), listening on `host` and on `port` or,
    /// without one, on the port the server's DHT record names.
    pub fn client(bootstrap: &[String], url: &str, host: &str, port: Option<u16>) -> Self {
        let mut args = vec![
            "--role".into(),
            "client".into(),
            "--key".into(),
            url.into(),
            "--host".into(),
            host.into(),
        ];
        if let Some(port) = port {
            args.extend(["--port".into(), port.to_string()]);
        }
        Self::start(bootstrap, args)
    }

    fn start(bootstrap: &[String], args: Vec<String>) -> Self {
        let mut cmd = Command::new(bare());
        cmd.arg("holesail.js")
            .args(["--bootstrap", &bootstrap.join(",")])
            .args(&args)
            .current_dir(interop_dir());
        let mut process = ChildProcess::spawn(cmd, "holesail");
        let info = process.wait_for(HOLESAIL_READY, |line| serde_json::from_str(line).ok());
        Holesail { info, process }
    }

    /// A string field of `info`.
    pub fn get(&self, name: &str) -> &str {
        self.info
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("holesail info {} has no string {name:?}", self.info))
    }

    /// The port it listens on (a client) or serves (a server).
    pub fn port(&self) -> u16 {
        self.info
            .get("port")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or_else(|| panic!("holesail info {} has no port", self.info))
    }
}

/// A hypertele 1.1.4 CLI (`server.js` is hypertele-server, `client.js` hypertele) with its
/// test-only `--bootstrap PORT`, which means 127.0.0.1:PORT.
pub fn hypertele(script: &str, bootstrap: &str, args: &[&str]) -> ChildProcess {
    require_node();
    let dir = interop_dir().join("node_modules/hypertele");
    assert!(
        dir.is_dir(),
        "{} is missing: run `npm ci` in interop/node",
        dir.display()
    );
    let port = bootstrap.rsplit(':').next().unwrap();
    let mut cmd = Command::new("node");
    cmd.arg(dir.join(script))
        .args(args)
        .args(["--bootstrap", port])
        .current_dir(interop_dir());
    ChildProcess::spawn(cmd, &format!("hypertele {script}"))
}

/// A hypertele client and the local address it listens on.
pub fn hypertele_client(bootstrap: &str, args: &[&str]) -> (ChildProcess, SocketAddr) {
    let mut args = args.to_vec();
    args.extend(["-p", "0"]);
    let mut client = hypertele("client.js", bootstrap, &args);
    let addr = client.wait_for(READY, |line| {
        line.strip_prefix("Server ready @")
            .and_then(|a| a.trim().parse().ok())
    });
    (client, addr)
}

/// hypertele-server and the key it listens on.
pub fn hypertele_server(bootstrap: &str, port: u16, args: &[&str]) -> (ChildProcess, String) {
    let port = port.to_string();
    let mut all = vec!["-l", port.as_str()];
    all.extend(args);
    let mut server = hypertele("server.js", bootstrap, &all);
    // "hypertele: KEY", or in private mode "... (listening on KEY)".
    let key = server.wait_for(READY, |line| {
        let rest = line
            .split_once("listening on ")
            .map(|(_, rest)| rest)
            .or_else(|| line.strip_prefix("hypertele:"))?;
        let key = rest.trim().trim_end_matches(')');
        (key.len() == 64).then(|| key.to_owned())
    });
    (server, key)
}
