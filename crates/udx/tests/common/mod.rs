//! Helpers shared by the integration tests: deterministic data, hashing pumps, a lossy UDP
//! forwarder, and the Node peer process.
#![allow(dead_code)] // each test binary uses a different subset

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UdpSocket;
use udx::{UdxSocket, UdxStream};

pub const MIB: usize = 1 << 20;

pub fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Writes `len` pseudo-random bytes (seeded) in varied chunk sizes, then shuts down the
/// write side. Returns the SHA-256 of what was written.
pub async fn send_random(
    stream: &mut (impl AsyncWriteExt + Unpin),
    len: usize,
    seed: u64,
) -> String {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut left = len;
    while left > 0 {
        let n = rng.random_range(1..=buf.len()).min(left);
        rng.fill_bytes(&mut buf[..n]);
        hash.update(&buf[..n]);
        stream.write_all(&buf[..n]).await.expect("write");
        left -= n;
    }
    stream.shutdown().await.expect("shutdown");
    hex::encode(hash.finalize())
}

/// Reads until EOF; returns (bytes, SHA-256).
pub async fn recv_all(stream: &mut (impl AsyncReadExt + Unpin)) -> (usize, String) {
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 128 * 1024];
    let mut total = 0;
    loop {
        let n = stream.read(&mut buf).await.expect("read");
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        total += n;
    }
    (total, hex::encode(hash.finalize()))
}

/// Two sockets with one connected stream pair.
pub async fn stream_pair(
    a: &UdxSocket,
    b: &UdxSocket,
    a_id: u32,
    b_id: u32,
) -> (UdxStream, UdxStream) {
    let sa = a.create_stream(a_id).unwrap();
    let sb = b.create_stream(b_id).unwrap();
    sa.connect(b_id, b.local_addr().unwrap()).unwrap();
    sb.connect(a_id, a.local_addr().unwrap()).unwrap();
    (sa, sb)
}

/// Sends `len` bytes each way over the pair and checks both directions by hash.
pub async fn exchange(sa: UdxStream, sb: UdxStream, len: usize) {
    let (mut ra, mut wa) = tokio::io::split(sa);
    let (mut rb, mut wb) = tokio::io::split(sb);
    let t1 = tokio::spawn(async move { send_random(&mut wa, len, 1).await });
    let t2 = tokio::spawn(async move { send_random(&mut wb, len, 2).await });
    let t3 = tokio::spawn(async move { recv_all(&mut rb).await });
    let t4 = tokio::spawn(async move { recv_all(&mut ra).await });
    let (sent_a, sent_b) = (t1.await.unwrap(), t2.await.unwrap());
    let (got_b, got_a) = (t3.await.unwrap(), t4.await.unwrap());
    assert_eq!(got_b, (len, sent_a), "a -> b");
    assert_eq!(got_a, (len, sent_b), "b -> a");
}

/// A UDP forwarder between `a` and `b` that drops each datagram (both directions) with a
/// probability that can be changed while it runs.
pub struct Forwarder {
    /// `a` sends here to reach `b`.
    pub for_a: SocketAddr,
    /// `b` sends here to reach `a`.
    pub for_b: SocketAddr,
    loss_ppm: Arc<AtomicU32>,
}

impl Forwarder {
    pub async fn start(a: SocketAddr, b: SocketAddr, loss: f64) -> Forwarder {
        let to_b = Arc::new(UdpSocket::bind(localhost()).await.unwrap()); // faces a
        let to_a = Arc::new(UdpSocket::bind(localhost()).await.unwrap()); // faces b
        let loss_ppm = Arc::new(AtomicU32::new((loss * 1e6) as u32));
        let fwd = Forwarder {
            for_a: to_b.local_addr().unwrap(),
            for_b: to_a.local_addr().unwrap(),
            loss_ppm,
        };
        for (inbound, outbound, dest) in [(to_b.clone(), to_a.clone(), b), (to_a, to_b, a)] {
            let loss = fwd.loss_ppm.clone();
            tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(dest.port() as u64);
                let mut buf = vec![0u8; 65536];
                // Ends with the test's runtime.
                while let Ok(n) = inbound.recv(&mut buf).await {
                    if rng.random_range(0..1_000_000) >= loss.load(Ordering::Relaxed) {
                        let _ = outbound.send_to(&buf[..n], dest).await;
                    }
                }
            });
        }
        fwd
    }

    /// Changes the drop probability (1.0 cuts the path).
    pub fn set_loss(&self, loss: f64) {
        self.loss_ppm.store((loss * 1e6) as u32, Ordering::Relaxed);
    }
}

/// Runs `fut` with a deadline so a broken transport fails the test instead of hanging it.
pub async fn within<T>(secs: u64, what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what} did not finish within {secs} s"),
    }
}

/// Path of the Node interop folder; panics (fails the test) if Node or its modules are missing.
pub fn node_dir() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../interop/node");
    let ok = std::process::Command::new("node")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(ok, "`node` is not installed or not on PATH: install Node.js (>= 18), then run `npm ci` in interop/node");
    assert!(
        dir.join("node_modules/udx-native").is_dir(),
        "interop/node/node_modules is missing: run `npm ci` in interop/node"
    );
    dir
}

/// A running `udx-peer.js`.
pub struct NodePeer {
    pub child: tokio::process::Child,
    pub port: u16,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl NodePeer {
    /// Starts the Node peer (stream id `local_id`) towards our stream `remote_id` at
    /// `remote_port`; it sends `send` bytes.
    pub async fn spawn(
        local_id: u32,
        remote_id: u32,
        remote_port: u16,
        send: usize,
        extra: &[&str],
    ) -> NodePeer {
        let port = remote_port.to_string();
        let mut args = vec!["--remote-port", &port];
        args.extend_from_slice(extra);
        Self::start(local_id, remote_id, send, &args).await
    }

    /// Starts the Node peer without a peer address; give it one with [`NodePeer::tell_port`].
    pub async fn spawn_unpaired(
        local_id: u32,
        remote_id: u32,
        send: usize,
        extra: &[&str],
    ) -> NodePeer {
        Self::start(local_id, remote_id, send, extra).await
    }

    async fn start(local_id: u32, remote_id: u32, send: usize, extra: &[&str]) -> NodePeer {
        let dir = node_dir();
        let mut child = tokio::process::Command::new("node")
            .arg("udx-peer.js")
            .args([
                "--local-id",
                &local_id.to_string(),
                "--remote-id",
                &remote_id.to_string(),
            ])
            .args(["--send", &send.to_string()])
            .args(extra)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn node");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = within(20, "node peer start", lines.next_line())
            .await
            .unwrap()
            .expect("node peer printed nothing");
        let v: serde_json_lite::Value = serde_json_lite::parse(&first);
        NodePeer {
            child,
            port: v.get_u64("port") as u16,
            lines,
        }
    }

    /// Tells a peer started without `--remote-port` where its peer is.
    pub async fn tell_port(&mut self, port: u16) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin
            .write_all(format!("{{\"port\":{port}}}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
    }

    /// Waits for the result line.
    pub async fn result(&mut self) -> serde_json_lite::Value {
        let line = self
            .lines
            .next_line()
            .await
            .unwrap()
            .expect("node peer exited without a result");
        serde_json_lite::parse(&line)
    }
}

/// Just enough JSON for the peer's flat one-line objects, to avoid a dependency.
pub mod serde_json_lite {
    use std::collections::HashMap;

    #[derive(Debug)]
    pub struct Value(HashMap<String, String>);

    impl Value {
        pub fn get_u64(&self, key: &str) -> u64 {
            let v = self
                .0
                .get(key)
                .unwrap_or_else(|| panic!("no {key} in {:?}", self.0));
            v.parse::<f64>()
                .unwrap_or_else(|_| panic!("{key} is not a number: {v}")) as u64
        }
        pub fn get_f64(&self, key: &str) -> f64 {
            self.0[key].parse().unwrap()
        }
        pub fn get_str(&self, key: &str) -> &str {
            &self.0[key]
        }
    }

    pub fn parse(line: &str) -> Value {
        let body = line.trim().trim_start_matches('{').trim_end_matches('}');
        let mut map = HashMap::new();
        for pair in body.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once(':')
                .unwrap_or_else(|| panic!("bad JSON from node peer: {line}"));
            map.insert(
                k.trim().trim_matches('"').to_string(),
                v.trim().trim_matches('"').to_string(),
            );
        }
        Value(map)
    }
}

/// Polls `cond` every 10 ms until it holds, failing the test after `secs`.
pub async fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not happen within {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
