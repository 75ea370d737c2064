//! Address changes in the NAT lab (crates/netlab, docs/lab.md): the sharing home's router gets
//! a new public address and forgets its NAT table (a PPPoE reconnect, a DHCP renewal) in one
//! cell, the connecting home's in another (so one change's aftermath cannot blur the other's
//! figure). After each, new connections through our tunnel must work within 5 s.
//! Node's hyperdht tunnel runs in the same cell (its server.js beside our share, its client.js
//! beside our connect) and its figure is reported beside ours, not asserted.
//!
//! Needs root (the lab builds network namespaces) and `conntrack`; without them the test fails
//! saying so.

use test_support as support;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use netlab::{LabSpec, Nat};
use support::lab::{dump, recovery, service_in, Log, TwoHomes};
use support::net::Behaviour;

/// New connections must work this soon after an address change (ours).
const RECOVERY: Duration = Duration::from_secs(5);
/// How long Node's tunnel is given before it is reported as not recovered.
const NODE_PATIENCE: Duration = Duration::from_secs(30);
fn figure(d: Option<Duration>) -> String {
    d.map_or_else(
        || "not recovered".into(),
        |d| format!("{} ms", d.as_millis()),
    )
}

/// A cone x cone cell with both tunnels, each connected once; then home `home` (1 shares,
/// 2 connects) gets the public address `wan`, and both tunnels are probed from that moment.
fn address_change(home: usize, wan: Ipv4Addr) {
    let side = if home == 1 { "sharing" } else { "connecting" };
    let mut homes = TwoHomes::new(LabSpec::homes([Nat::Cone, Nat::Cone]));
    let service = service_in(&homes.lab, homes.sharing_home(), |_| Behaviour::Echo);
    let share_log = Log::new(&format!("recovery-{side}-share"));
    let connect_log = Log::new(&format!("recovery-{side}-connect"));
    let (_share, key) = homes.rust_share(service.port(), &share_log, &[]);
    // Raw connections, one per probe: an idle multiplexed connection over the path that just
    // died is noticed only by the transport's timeout, and a probe sent down it in the
    // meantime fails (a known gap of multiplexing, docs/multiplexing.md).
    let (_connect, ours) = homes.rust_connect(&key, &connect_log, &["--no-multiplex"]);
    let (_server, node_key) = homes.node_server(service.port());
    let (_client, node) = homes.node_client(&node_key);
    let logs = [&share_log, &connect_log];

    let netns = homes.connecting_home().to_string();
    for (name, listen) in [("ours", ours), ("Node", node)] {
        let first = recovery(&netns, listen, Instant::now(), Duration::from_secs(30));
        assert!(
            first.is_some(),
            "{name}: no first connection\n{}",
            dump(&logs)
        );
    }

    homes
        .lab
        .renumber(home, wan)
        .unwrap_or_else(|e| panic!("cannot renumber home {home}: {e}"));
    let changed = Instant::now();
    let (ours_took, node_took) = std::thread::scope(|s| {
        let ours_probe = s.spawn(|| recovery(&netns, ours, changed, RECOVERY * 4));
        let node_probe = s.spawn(|| recovery(&netns, node, changed, NODE_PATIENCE));
        (ours_probe.join().unwrap(), node_probe.join().unwrap())
    });
    eprintln!(
        "\n| event (cone x cone) | ours | Node hyperdht |\n|---|---|---|\n| the {side} home gets a new public address | {} | {} |",
        figure(ours_took),
        figure(node_took)
    );
    assert!(
        ours_took.is_some_and(|d| d <= RECOVERY),
        "new connections did not work within {RECOVERY:?} of the {side} home's change: {}\n{}",
        figure(ours_took),
        dump(&logs)
    );
}

#[test]
fn new_connections_work_within_5_s_of_the_sharing_homes_address_change() {
    address_change(1, Ipv4Addr::new(198, 18, 101, 1));
}

#[test]
fn new_connections_work_within_5_s_of_the_connecting_homes_address_change() {
    address_change(2, Ipv4Addr::new(198, 18, 102, 1));
}
