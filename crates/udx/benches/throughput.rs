//! Loopback throughput of p2p-udx against itself and against Node's udx-native.
//!
//! `cargo bench -p p2p-udx --bench throughput` (release build). Sends `UDX_BENCH_MIB`
//! (default 512) MiB one way per case over 127.0.0.1 and prints MB/s (10^6 bytes/s),
//! measured at the receiver from its first byte to the sender's END. Node cases need
//! `npm ci` in interop/node. `UDX_BENCH_CASES` picks cases (comma list of
//! rust-rust, rust-node, node-rust, node-node); default: all. `UDX_BENCH_STATS=1` also prints
//! the Rust sender's counters.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use udx::{UdxSocket, UdxStream};

const CHUNK: usize = 256 * 1024;

fn node_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../interop/node")
}

/// Writes `len` bytes from a fixed buffer and ends the stream.
async fn source(mut stream: UdxStream, len: usize) -> udx::StreamStats {
    let buf = vec![0x5Au8; CHUNK];
    let mut left = len;
    while left > 0 {
        let n = left.min(CHUNK);
        stream.write_all(&buf[..n]).await.expect("write");
        left -= n;
    }
    stream.shutdown().await.expect("shutdown");
    // Keep the handle until the peer ends, so dropping it does not race the tail.
    let mut sink = [0u8; 1024];
    while stream.read(&mut sink).await.expect("read") > 0 {}
    stream.stats()
}

/// Reads to EOF; returns (bytes, time from first byte to EOF).
async fn sink(mut stream: UdxStream) -> (usize, Duration) {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0;
    let mut first = None;
    loop {
        let n = stream.read(&mut buf).await.expect("read");
        if n == 0 {
            break;
        }
        first.get_or_insert_with(Instant::now);
        total += n;
    }
    stream.shutdown().await.expect("shutdown");
    (total, first.map_or(Duration::ZERO, |t| t.elapsed()))
}

/// Sender-side counters, to see what a figure cost (losses, retransmissions, MTU).
fn report(stats: udx::StreamStats) {
    if std::env::var_os("UDX_BENCH_STATS").is_some() {
        println!("            sender {stats:?}");
    }
}

fn mbps(bytes: usize, took: Duration) -> f64 {
    bytes as f64 / 1e6 / took.as_secs_f64()
}

struct NodePeer {
    child: Child,
    port: u16,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

fn json_field(line: &str, key: &str) -> f64 {
    let at = line
        .find(&format!("\"{key}\":"))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        + key.len()
        + 3;
    let rest = &line[at..];
    let end = rest.find([',', '}']).unwrap();
    rest[..end].trim_matches('"').parse().unwrap()
}

async fn node_peer(
    local_id: u32,
    remote_id: u32,
    remote_port: Option<u16>,
    send: usize,
) -> NodePeer {
    let mut cmd = Command::new("node");
    cmd.arg("udx-peer.js")
        .args([
            "--local-id",
            &local_id.to_string(),
            "--remote-id",
            &remote_id.to_string(),
        ])
        .args(["--send", &send.to_string(), "--fast", "--no-hash"])
        .current_dir(node_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    if let Some(p) = remote_port {
        cmd.args(["--remote-port", &p.to_string()]);
    }
    let mut child = cmd
        .spawn()
        .expect("node must be installed (and `npm ci` run in interop/node)");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines
        .next_line()
        .await
        .unwrap()
        .expect("node peer did not start; run `npm ci` in interop/node");
    NodePeer {
        child,
        port: json_field(&first, "port") as u16,
        lines,
    }
}

impl NodePeer {
    async fn result(&mut self) -> String {
        self.lines
            .next_line()
            .await
            .unwrap()
            .expect("node peer died")
    }
}

async fn rust_rust(len: usize) -> f64 {
    let a = UdxSocket::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let b = UdxSocket::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let sa = a.create_stream(1).unwrap();
    let sb = b.create_stream(2).unwrap();
    sa.connect(2, b.local_addr().unwrap()).unwrap();
    sb.connect(1, a.local_addr().unwrap()).unwrap();
    let src = tokio::spawn(source(sa, len));
    let (got, took) = sink(sb).await;
    report(src.await.unwrap());
    assert_eq!(got, len);
    mbps(len, took)
}

async fn rust_node(len: usize) -> f64 {
    let sock = UdxSocket::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut peer = node_peer(7, 8, Some(sock.local_addr().unwrap().port()), 0).await;
    let s = sock.create_stream(8).unwrap();
    s.connect(7, format!("127.0.0.1:{}", peer.port).parse().unwrap())
        .unwrap();
    let src = tokio::spawn(source(s, len));
    let res = peer.result().await;
    report(src.await.unwrap());
    assert_eq!(json_field(&res, "received") as usize, len);
    let _ = peer.child.kill().await;
    len as f64 / 1e6 / (json_field(&res, "recvMs") / 1000.0)
}

async fn node_rust(len: usize) -> f64 {
    let sock = UdxSocket::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut peer = node_peer(7, 8, Some(sock.local_addr().unwrap().port()), len).await;
    let s = sock.create_stream(8).unwrap();
    s.connect(7, format!("127.0.0.1:{}", peer.port).parse().unwrap())
        .unwrap();
    let (got, took) = sink(s).await;
    assert_eq!(got, len);
    let _ = peer.result().await;
    let _ = peer.child.kill().await;
    mbps(len, took)
}

async fn node_node(len: usize) -> f64 {
    let mut a = node_peer(1, 2, None, len).await;
    let mut b = node_peer(2, 1, Some(a.port), 0).await;
    let stdin = a.child.stdin.as_mut().unwrap();
    stdin
        .write_all(format!("{{\"port\":{}}}\n", b.port).as_bytes())
        .await
        .unwrap();
    stdin.flush().await.unwrap();
    let res = b.result().await;
    let _ = a.result().await;
    assert_eq!(json_field(&res, "received") as usize, len);
    let _ = a.child.kill().await;
    let _ = b.child.kill().await;
    len as f64 / 1e6 / (json_field(&res, "recvMs") / 1000.0)
}

fn main() {
    let mib: usize = std::env::var("UDX_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    let cases = std::env::var("UDX_BENCH_CASES")
        .unwrap_or_else(|_| "rust-rust,rust-node,node-rust,node-node".into());
    let len = mib << 20;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!("p2p-udx loopback throughput, {mib} MiB one way per case");
    for case in cases.split(',') {
        let fut = async {
            match case {
                "rust-rust" => rust_rust(len).await,
                "rust-node" => rust_node(len).await,
                "node-rust" => node_rust(len).await,
                "node-node" => node_node(len).await,
                other => panic!("unknown case {other}"),
            }
        };
        let rate = rt.block_on(async { tokio::time::timeout(Duration::from_secs(300), fut).await });
        match rate {
            Ok(r) => println!("{case:>10}: {r:8.1} MB/s"),
            Err(_) => println!("{case:>10}: timed out"),
        }
    }
}
