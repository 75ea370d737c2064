//! What the lab tests share: a lab that fails the test with the lab's own message, and the
//! `netlab` binary's UDP echo and probe run inside the lab's namespaces.

// Each test binary includes this module but uses only part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Once;
use std::time::Duration;

use netlab::probe::TargetReport;
use netlab::{Lab, LabProcess, LabSpec};

const NETLAB: &str = env!("CARGO_BIN_EXE_netlab");

/// The lab's log (and its processes' output) in the test's captured output.
pub fn init_logging() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "info".into()),
            )
            .with_test_writer()
            .with_ansi(false)
            .try_init();
    });
}

/// A lab, or a failed test saying why there cannot be one here (never a silent skip).
pub fn lab(spec: LabSpec) -> Lab {
    init_logging();
    Lab::new(spec).unwrap_or_else(|e| panic!("cannot build the NAT lab: {e}"))
}

/// `netlab udp-echo` on `port` inside `netns`, ready when returned.
pub fn echo(lab: &Lab, netns: &str, port: u16) -> LabProcess {
    let mut cmd = lab.exec(netns, NETLAB);
    cmd.args(["udp-echo", "--bind", &format!("0.0.0.0:{port}")]);
    let mut p = lab
        .spawn(&format!("echo {netns}:{port}"), cmd)
        .expect("start udp-echo");
    p.wait_for(Duration::from_secs(10), |l| {
        l.starts_with("udp-echo listening").then_some(())
    })
    .expect("udp-echo ready");
    p
}

/// Probe options beyond the targets.
pub struct Probe {
    pub from_port: u16,
    pub count: u32,
    pub ttl: Option<u32>,
    pub wait_ms: u64,
}

impl Default for Probe {
    fn default() -> Self {
        Probe {
            from_port: 40000,
            count: 5,
            ttl: None,
            wait_ms: 500,
        }
    }
}

impl Probe {
    pub fn port(mut self, port: u16) -> Self {
        self.from_port = port;
        self
    }
    pub fn count(mut self, count: u32) -> Self {
        self.count = count;
        self
    }
    pub fn ttl(mut self, ttl: u32) -> Self {
        self.ttl = Some(ttl);
        self
    }
    pub fn wait_ms(mut self, ms: u64) -> Self {
        self.wait_ms = ms;
        self
    }
}

/// Runs `netlab udp-probe` inside `netns` from one socket to each target; one report each.
pub fn probe(lab: &Lab, netns: &str, targets: &[SocketAddr], p: Probe) -> Vec<TargetReport> {
    let mut cmd = lab.exec(netns, NETLAB);
    cmd.args([
        "udp-probe",
        "--bind",
        &format!("0.0.0.0:{}", p.from_port),
        "--count",
        &p.count.to_string(),
        "--wait-ms",
        &p.wait_ms.to_string(),
    ]);
    if let Some(ttl) = p.ttl {
        cmd.args(["--ttl", &ttl.to_string()]);
    }
    for t in targets {
        cmd.args(["--to", &t.to_string()]);
    }
    // Bounded by the probe itself: count * targets * 1 ms, then wait_ms.
    let out = cmd.output().expect("run udp-probe");
    assert!(
        out.status.success(),
        "udp-probe in {netns} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reports: Vec<TargetReport> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.parse().unwrap_or_else(|e| panic!("{e}")))
        .collect();
    for r in &reports {
        eprintln!("probe from {netns}: {r}");
    }
    assert_eq!(reports.len(), targets.len(), "one report per target");
    reports
}

pub fn addr(ip: std::net::Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}
