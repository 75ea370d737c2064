//! The tunnel benchmark: the same transfers through a Rust share/connect pair and through the
//! Node hyperdht pair (the npm p2p-socket's wiring), on one private loopback DHT, in one run.
//!
//! `cargo bench --bench tunnel` (set `TUNNEL_BENCH_MIB` to change the 1024 MiB volume).
//! Reports throughput each way, time to first byte of fresh connections, and peak RSS.

use test_support as support;

use std::io::Read;
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use support::cli::{ConnectProcess, LocalDht, ShareProcess};
use support::net::{read_all, send_pattern, Behaviour, Service};
use support::node::{NodeClient, NodeServer};

const MIB: u64 = 1024 * 1024;

struct Figures {
    download_mb_s: f64,
    upload_mb_s: f64,
    ttfb_ms: Vec<f64>,
}

fn mb_s(bytes: u64, t: Duration) -> f64 {
    bytes as f64 / 1e6 / t.as_secs_f64()
}

/// Downloads `volume` from a sending service, then uploads `volume` to an echo-less sink, then
/// measures time to first byte of 20 fresh connections to a banner service.
fn measure(port_down: u16, port_up: u16, port_banner: u16, volume: u64) -> Figures {
    let mut s = TcpStream::connect(("127.0.0.1", port_down)).unwrap();
    let t = Instant::now();
    let (n, _) = read_all(&mut s).unwrap();
    let download = t.elapsed();
    assert_eq!(n, volume, "download incomplete");

    let mut s = TcpStream::connect(("127.0.0.1", port_up)).unwrap();
    let t = Instant::now();
    send_pattern(&mut s, volume, 9).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    let upload = t.elapsed();

    let mut ttfb_ms = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let mut s = TcpStream::connect(("127.0.0.1", port_banner)).unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        ttfb_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    ttfb_ms.sort_by(f64::total_cmp);
    Figures {
        download_mb_s: mb_s(volume, download),
        upload_mb_s: mb_s(volume, upload),
        ttfb_ms,
    }
}

fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
        .unwrap_or(f64::NAN)
}

fn report(name: &str, f: &Figures, rss: (f64, f64)) {
    let median = f.ttfb_ms[f.ttfb_ms.len() / 2];
    println!(
        "{name:<14} download {:>7.1} MB/s   upload {:>7.1} MB/s   first byte median {:>5.1} ms (min {:.1}, max {:.1})   peak RSS share {:.0} MiB, connect {:.0} MiB",
        f.download_mb_s, f.upload_mb_s, median, f.ttfb_ms[0], f.ttfb_ms[f.ttfb_ms.len() - 1], rss.0, rss.1
    );
}

fn main() {
    let volume = std::env::var("TUNNEL_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
        * MIB;
    println!(
        "tunnel benchmark: {} MiB each way, loopback, private DHT of 10 nodes",
        volume / MIB
    );
    let dht = LocalDht::start(10);
    let bootstrap = vec![dht.bootstrap.clone()];
    let down = Service::start(Behaviour::SendAndClose {
        send: volume,
        seed: 1,
    });
    let up = Service::start(Behaviour::Exchange { send: 0, seed: 0 });
    let banner = Service::start(Behaviour::Banner(b"!"));

    // Rust to Rust: one share and one connect per service.
    let shares: Vec<ShareProcess> = [&down, &up, &banner]
        .iter()
        .map(|s| ShareProcess::start(&dht.bootstrap, s.port(), &[]))
        .collect();
    let connects: Vec<ConnectProcess> = shares
        .iter()
        .map(|s| ConnectProcess::start(&dht.bootstrap, &s.key))
        .collect();
    let rust = measure(
        connects[0].addr.port(),
        connects[1].addr.port(),
        connects[2].addr.port(),
        volume,
    );
    let rust_rss = (
        peak_rss_mib(shares[0].process.pid()),
        peak_rss_mib(connects[0].process.pid()),
    );
    drop((connects, shares));

    // Node to Node, same services, same DHT.
    let servers: Vec<NodeServer> = [&down, &up, &banner]
        .iter()
        .map(|s| NodeServer::start(&bootstrap, s.port(), None))
        .collect();
    let clients: Vec<NodeClient> = servers
        .iter()
        .map(|s| NodeClient::start(&bootstrap, &s.public_key, 0))
        .collect();
    let node = measure(clients[0].port, clients[1].port, clients[2].port, volume);
    let node_rss = (
        peak_rss_mib(servers[0].process.pid()),
        peak_rss_mib(clients[0].process.pid()),
    );

    report("rust -> rust", &rust, rust_rss);
    report("node -> node", &node, node_rss);
}
