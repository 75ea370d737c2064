//! The transport across a bad internet, measured in the NAT lab: two homes behind cone NATs,
//! a punched path, and in each cell one verified fetch through our tunnel and one through
//! Node's hyperdht tunnel, in the same lab, one after the other. Cells: loss 0, 1, 5, 10 % on
//! each uplink x a round trip of about 10, 100, 300 ms (half of it on each uplink), and one
//! where each uplink reorders (10 ms plus 0-20 ms random per packet). Prints a Markdown table.
//!
//! Needs root, iproute2/iptables/conntrack and the Node fixtures (`npm ci` in interop/node):
//!
//! ```text
//! cargo bench --bench lab_transport               # 13 cells, 10 MiB, 60 s per fetch
//! cargo bench --bench lab_transport -- --quick    # 3 cells, 2 MiB, 30 s per fetch
//! ```
//!
//! `LAB_BENCH_MIB` and `LAB_BENCH_DEADLINE_S` change the volume and the time each fetch gets; a
//! fetch that does not finish is reported as "> N s".

use test_support as support;

use std::time::{Duration, Instant};

use netlab::{LabSpec, Nat};
use support::lab::{fetch_run, FetchRun, FirstFetch, Tunnel, TwoHomes};

const MIB: u64 = 1024 * 1024;

/// What one cell's uplinks do.
#[derive(Clone, Copy)]
struct Uplinks {
    loss: f64,
    /// One way, on each uplink.
    delay: Duration,
    jitter: Duration,
}

impl Uplinks {
    fn spec(self) -> LabSpec {
        LabSpec::homes([Nat::Cone, Nat::Cone])
            .loss(self.loss)
            .delay(self.delay)
            .jitter(self.jitter)
    }

    /// The round trip between the two homes: each direction crosses one uplink.
    fn rtt(self) -> String {
        let ms = |d: Duration| 2 * d.as_millis();
        if self.jitter.is_zero() {
            format!("{} ms", ms(self.delay))
        } else {
            format!("{}-{} ms", ms(self.delay), ms(self.delay + self.jitter))
        }
    }

    fn describe(self) -> String {
        let reorder = if self.jitter.is_zero() {
            String::new()
        } else {
            format!(
                ", reordering ({} ms + 0-{} ms per packet)",
                self.delay.as_millis(),
                self.jitter.as_millis()
            )
        };
        format!(
            "{:.0} % loss, RTT {}{reorder}",
            self.loss * 100.0,
            self.rtt()
        )
    }
}

fn cells(quick: bool) -> Vec<Uplinks> {
    let (losses, rtts): (&[f64], &[u64]) = if quick {
        (&[0.0, 0.05], &[100])
    } else {
        (&[0.0, 0.01, 0.05, 0.10], &[10, 100, 300])
    };
    let mut cells = Vec::new();
    for &rtt in rtts {
        for &loss in losses {
            cells.push(Uplinks {
                loss,
                delay: Duration::from_millis(rtt / 2),
                jitter: Duration::ZERO,
            });
        }
    }
    cells.push(Uplinks {
        loss: 0.0,
        delay: Duration::from_millis(10),
        jitter: Duration::from_millis(20),
    });
    cells
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        Err(_) => default,
    }
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split(' ').take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// "2.3 s | 4.6 MB/s", or why there is no figure.
fn figures(run: &FetchRun) -> String {
    match (run.fetches.first(), &run.failure) {
        (Some(f), None) => format!(
            "{:.1} s | {:.2} MB/s",
            f.elapsed.as_secs_f64(),
            f.throughput() / 1e6
        ),
        (_, Some(why)) => {
            let first = why.lines().next().unwrap_or("failed");
            let first = first.strip_prefix("fetch 1: ").unwrap_or(first);
            let mut cell: String = first.chars().take(70).collect();
            if why.contains("panicked at") {
                cell += " (PANIC)";
            }
            format!("{} | -", cell.replace('|', "/"))
        }
        (None, None) => "no fetch | -".into(),
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let volume = env_u64("LAB_BENCH_MIB", if quick { 2 } else { 10 }) * MIB;
    let deadline =
        Duration::from_secs(env_u64("LAB_BENCH_DEADLINE_S", if quick { 30 } else { 60 }));
    let cells = cells(quick);
    let load_before = load();
    let started = Instant::now();
    let mut rows = Vec::new();
    for (i, uplinks) in cells.iter().enumerate() {
        eprintln!("[{}/{}] {}", i + 1, cells.len(), uplinks.describe());
        let homes = TwoHomes::new(uplinks.spec());
        let runs: Vec<FetchRun> = [Tunnel::Rust, Tunnel::Node]
            .into_iter()
            .map(|tunnel| {
                // Cold, as Node's is: the fetch pays for reaching the sharer, as in earlier
                // rows of docs/transport.md.
                let run = fetch_run(&homes, tunnel, volume, 1, deadline, FirstFetch::AtOnce);
                eprintln!("    {:<14} {}", tunnel.name(), figures(&run));
                if let Some(why) = &run.failure {
                    eprintln!("{why}");
                }
                run
            })
            .collect();
        drop(homes);
        rows.push(format!(
            "| {:.0} % | {} | {} | {} |",
            uplinks.loss * 100.0,
            uplinks.rtt(),
            figures(&runs[0]),
            figures(&runs[1]),
        ));
    }
    println!(
        "\nLab transport benchmark: cone x cone, one verified {} MiB fetch per tunnel and cell, \
         {} s each at most; loss and half the RTT on each home uplink. Load average before {}, \
         after {}; {} cells in {:.0} s.\n",
        volume / MIB,
        deadline.as_secs(),
        load_before,
        load(),
        cells.len(),
        started.elapsed().as_secs_f64()
    );
    println!("| loss per uplink | RTT | ours: time | ours: throughput | Node hyperdht: time | Node hyperdht: throughput |");
    println!("|---|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
}
