//! peeroxide-dht's DHT running on p2p-udx through this shim: real UDP on 127.0.0.1, against
//! peeroxide-dht nodes and against a Node hyperdht testnet.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use libudx::UdxRuntime;
use peeroxide_dht::crypto::hash;
use peeroxide_dht::hyperdht::{self, HyperDhtConfig, HyperDhtHandle, KeyPair};
use peeroxide_dht::rpc::DhtConfig;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

const STEP: Duration = Duration::from_secs(20);
const WHOLE_TEST: Duration = Duration::from_secs(120);

async fn within<T>(what: &str, limit: Duration, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {limit:?}"))
}

/// A DHT node on 127.0.0.1. `persistent` nodes (routing nodes with an id derived from their
/// address) are what bootstrap nodes and testnet nodes are; the others are ephemeral clients.
async fn spawn_node(
    runtime: &UdxRuntime,
    bootstrap: &[String],
    persistent: bool,
) -> HyperDhtHandle {
    let mut dht = DhtConfig::default();
    dht.bootstrap = bootstrap.to_vec();
    dht.host = "127.0.0.1".into();
    if persistent {
        dht.ephemeral = Some(false);
        dht.firewalled = false;
    }
    let mut config = HyperDhtConfig::default();
    config.dht = dht;
    let (_task, handle, _events) = hyperdht::spawn(runtime, config)
        .await
        .expect("start a DHT node");
    within("bootstrapping", STEP, handle.bootstrapped())
        .await
        .expect("bootstrap");
    handle
}

/// Announces a fresh key the way hyperdht servers do (target = hash(public key)) from one node
/// and finds it from another.
async fn announce_then_find(announcer: &HyperDhtHandle, finder: &HyperDhtHandle) {
    let key_pair = KeyPair::generate();
    let target = hash(&key_pair.public_key);
    let announced = within("announce", STEP, announcer.announce(target, &key_pair, &[]))
        .await
        .expect("announce");
    assert!(
        !announced.closest_nodes.is_empty(),
        "no DHT node took the announce"
    );

    let found = within("find_peer", STEP, finder.find_peer(target))
        .await
        .expect("find_peer")
        .expect("find_peer found no record for the announced key");
    assert_eq!(found.public_key, key_pair.public_key);

    let lookups = within("lookup", STEP, finder.lookup(target))
        .await
        .expect("lookup");
    assert!(
        lookups
            .iter()
            .flat_map(|r| &r.peers)
            .any(|p| p.public_key == key_pair.public_key),
        "lookup did not return the announced key"
    );
}

/// The DHT's own socket, as the engine gets it.
async fn dht_socket(node: &HyperDhtHandle) -> udx::UdxSocket {
    let socket = node
        .server_socket()
        .await
        .expect("server_socket")
        .expect("the DHT has a socket");
    socket.inner().expect("the DHT socket is bound").clone()
}

#[tokio::test]
async fn peeroxide_dht_network_runs_on_p2p_udx() {
    within("the whole test", WHOLE_TEST, async {
        let runtime = UdxRuntime::new().unwrap();
        let boot = spawn_node(&runtime, &[], true).await;
        let bootstrap = vec![format!("127.0.0.1:{}", boot.local_port().await.unwrap())];
        let mut routers = Vec::new();
        for _ in 0..4 {
            routers.push(spawn_node(&runtime, &bootstrap, true).await);
        }
        let announcer = spawn_node(&runtime, &bootstrap, false).await;
        let finder = spawn_node(&runtime, &bootstrap, false).await;
        assert!(
            finder.table_size().await.unwrap() >= 4,
            "the routing nodes are missing from the finder's table"
        );

        announce_then_find(&announcer, &finder).await;

        // Our own stream on the DHT's socket, with DHT traffic still flowing on it.
        let shared = dht_socket(&finder).await;
        let other = udx::UdxSocket::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let mut ours = shared.create_stream(101).unwrap();
        let mut theirs = other.create_stream(202).unwrap();
        ours.connect(202, other.local_addr().unwrap()).unwrap();
        theirs.connect(101, shared.local_addr().unwrap()).unwrap();
        ours.write_all(b"over the DHT socket").await.unwrap();
        ours.flush().await.unwrap();
        let mut got = [0u8; 19];
        within("the stream read", STEP, theirs.read_exact(&mut got))
            .await
            .unwrap();
        assert_eq!(&got, b"over the DHT socket");

        announce_then_find(&finder, &announcer).await;

        for node in [announcer, finder, boot].into_iter().chain(routers) {
            node.destroy().await.unwrap();
        }
    })
    .await;
}

/// `node interop/node/testnet.js`: a Node hyperdht testnet on 127.0.0.1 that lives until its
/// stdin closes.
struct NodeTestnet {
    child: Child,
    bootstrap: Vec<String>,
}

impl NodeTestnet {
    async fn start(nodes: usize) -> NodeTestnet {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../interop/node");
        assert!(
            dir.join("node_modules/hyperdht").is_dir(),
            "{}/node_modules has no hyperdht: run `npm ci` in that folder",
            dir.display()
        );
        let mut child = Command::new("node")
            .arg("testnet.js")
            .args(["--nodes", &nodes.to_string()])
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `node` (install Node.js 20+): {e}"));
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        within("the Node testnet start", STEP, stdout.read_line(&mut line))
            .await
            .expect("read testnet.js output");
        let ready: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("testnet.js printed {line:?}, not JSON: {e}"));
        let bootstrap = ready["bootstrap"]
            .as_array()
            .unwrap_or_else(|| panic!("testnet.js printed no bootstrap list: {line}"))
            .iter()
            .map(|a| a.as_str().expect("bootstrap entry is a string").to_string())
            .collect();
        NodeTestnet { child, bootstrap }
    }

    async fn stop(mut self) {
        drop(self.child.stdin.take());
        if within("the Node testnet exit", STEP, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

#[tokio::test]
async fn peeroxide_dht_on_p2p_udx_interoperates_with_node_testnet() {
    let testnet = NodeTestnet::start(10).await;
    within("the whole test", WHOLE_TEST, async {
        let runtime = UdxRuntime::new().unwrap();
        let announcer = spawn_node(&runtime, &testnet.bootstrap, false).await;
        let finder = spawn_node(&runtime, &testnet.bootstrap, false).await;

        // The Node nodes saw us on the very socket the engine will stream on.
        let seen = within("remote_address", STEP, finder.remote_address())
            .await
            .unwrap()
            .expect("the Node nodes reported no address for us");
        let seen: SocketAddr = format!("{}:{}", seen.host, seen.port).parse().unwrap();
        assert_eq!(seen, dht_socket(&finder).await.local_addr().unwrap());

        announce_then_find(&announcer, &finder).await;

        announcer.destroy().await.unwrap();
        finder.destroy().await.unwrap();
    })
    .await;
    testnet.stop().await;
}
