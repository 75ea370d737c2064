//! The transport across a bad internet, in the NAT lab (crates/netlab, docs/lab.md): two homes
//! behind cone NATs, a punched path, and uplinks that reorder or lose packets. Through one
//! long-lived connect, each 10 MiB fetch from the sharing home must arrive whole and exact, and
//! no process may panic or stop. Node's hyperdht tunnel runs in the same lab, for comparison:
//! each test prints a table of both (time and throughput), but speed is the lab benchmark's
//! business (benches/lab_transport.rs), so only correctness is asserted.
//!
//! Needs root (the lab builds network namespaces) and the Node fixtures (`npm ci` in
//! interop/node); without them the tests fail saying so.

use test_support as support;

use std::sync::Mutex;
use std::time::Duration;

use netlab::{LabSpec, Nat};
use support::lab::{fetch_run, Fetch, FetchRun, FirstFetch, Tunnel, TwoHomes};

const MIB: u64 = 1024 * 1024;
const VOLUME: u64 = 10 * MIB;
const FETCHES: u64 = 3;
/// Generous: Node moves 10 MiB through either cell in a few seconds; a loaded 2-core machine
/// is much slower, and a hung transfer must still end the test.
const DEADLINE: Duration = Duration::from_secs(180);

/// Two labs at once would compete for the CPU, and their delay lines with it.
static ONE_LAB_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Both tunnels, ours first, in one lab of two cone homes built from `uplinks`.
fn both_tunnels(uplinks: LabSpec) -> Vec<FetchRun> {
    let homes = TwoHomes::new(uplinks);
    [Tunnel::Rust, Tunnel::Node]
        .into_iter()
        .map(|tunnel| {
            fetch_run(
                &homes,
                tunnel,
                VOLUME,
                FETCHES,
                DEADLINE,
                FirstFetch::WhenReached,
            )
        })
        .collect()
}

fn print_table(title: &str, runs: &[FetchRun]) {
    let mut out = format!(
        "\n{title}: {FETCHES} fetches of {} MiB in a row\n| tunnel | verified | time per fetch | first byte | throughput |\n|---|---|---|---|---|\n",
        VOLUME / MIB
    );
    // One cell: a figure of each fetch of the run, in order.
    let column = |run: &FetchRun, figure: &dyn Fn(&Fetch) -> String| -> String {
        run.fetches
            .iter()
            .map(figure)
            .collect::<Vec<_>>()
            .join(", ")
    };
    for run in runs {
        let times = column(run, &|f| format!("{:.1} s", f.elapsed.as_secs_f64()));
        let first = column(run, &|f| format!("{:.2} s", f.first_byte.as_secs_f64()));
        let speeds = column(run, &|f| format!("{:.1} MB/s", f.throughput() / 1e6));
        let stopped = run
            .failure
            .as_ref()
            .and_then(|why| why.lines().next())
            .map(|why| format!("; {}", why.replace('|', "/")))
            .unwrap_or_default();
        out += &format!(
            "| {} | {}/{FETCHES} | {}{stopped} | {} | {} |\n",
            run.tunnel.name(),
            run.fetches.len(),
            times,
            first,
            speeds,
        );
    }
    if let [ours, node] = runs {
        let ratio = |rate: fn(&Fetch) -> f64| -> String {
            ours.fetches
                .iter()
                .zip(&node.fetches)
                .map(|(a, b)| format!("{:.2}x", rate(a) / rate(b)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let end_to_end = ratio(Fetch::overall);
        let ratios = ratio(Fetch::throughput);
        // The tunnel's throughput over the whole cell, as the issue measured Node's (all the
        // bytes over all the fetches' time).
        let cell = |run: &FetchRun| -> f64 {
            let bytes: u64 = run.fetches.iter().map(|f| f.volume).sum();
            let time: f64 = run.fetches.iter().map(|f| f.elapsed.as_secs_f64()).sum();
            bytes as f64 / time
        };
        let (ours_cell, node_cell) = (cell(ours), cell(node));
        let reached = ours
            .reached_at_start
            .map(|t| format!("{:.1} s", t.as_secs_f64()))
            .unwrap_or_else(|| "-".into());
        out += &format!(
            "| ours / Node | | {end_to_end} | | {ratios} |\nall fetches, whole time: ours {:.1} MB/s, Node {:.1} MB/s, {:.2}x\nours reached the sharer {reached} after starting, before fetch 1; load average {}\n",
            ours_cell / 1e6,
            node_cell / 1e6,
            ours_cell / node_cell,
            std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .trim()
        );
    }
    // Straight to the process's stderr: the harness captures eprintln! of passing tests, and
    // this table is the result, wanted in every CI log.
    let _ = std::io::Write::write_all(&mut std::io::stderr(), out.as_bytes());
}

/// Every run fetched everything, verified, with no process panicking or stopping.
fn check(runs: &[FetchRun]) {
    let failures: Vec<String> = runs
        .iter()
        .filter_map(|r| {
            r.failure
                .as_ref()
                .map(|why| format!("{}: {why}", r.tunnel.name()))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    for r in runs {
        assert_eq!(r.fetches.len() as u64, FETCHES, "{}", r.tunnel.name());
    }
}

#[test]
fn three_fetches_through_one_connect_over_uplinks_that_reorder() {
    let _one = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    // 10 ms one way plus 0-20 ms per packet on each uplink: packets sent less than 20 ms apart
    // (every packet of a window) overtake each other, acks as well as data.
    let uplinks = LabSpec::homes([Nat::Cone, Nat::Cone])
        .delay(Duration::from_millis(10))
        .jitter(Duration::from_millis(20));
    let runs = both_tunnels(uplinks);
    print_table(
        "cone x cone, 10 ms + 0-20 ms random per packet on each uplink",
        &runs,
    );
    check(&runs);
}

#[test]
fn every_fetch_arrives_over_lossy_slow_uplinks() {
    let _one = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let uplinks = LabSpec::homes([Nat::Cone, Nat::Cone])
        .loss(0.05)
        .delay(Duration::from_millis(50));
    let runs = both_tunnels(uplinks);
    print_table("cone x cone, 5 % loss and 50 ms on each uplink", &runs);
    check(&runs);
}
