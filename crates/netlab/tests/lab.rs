//! The lab behaves like the internet it claims to be: real namespaces, real packets, the
//! `netlab` binary's UDP echo and probe as real processes inside them.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{addr, echo, lab, probe, Probe};
use netlab::probe::TargetReport;
use netlab::{Lab, LabSpec, Nat, MIN_ARRIVAL_TTL};

const ECHO_PORT: u16 = 7000;

fn namespaces_with_prefix(prefix: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .map(String::from)
        .collect()
}

#[test]
fn the_internet_and_an_open_host_reach_each_other() {
    let lab = lab(LabSpec::homes([Nat::Open]));
    let home = &lab.homes()[0];
    let server = &lab.dht_hosts()[1];

    let _home_echo = echo(&lab, &home.host.netns, 40000);
    let inbound = probe(
        &lab,
        &server.netns,
        &[addr(home.host.ip, 40000)],
        Probe::default().port(5000),
    );
    assert_eq!(
        inbound[0].received, inbound[0].sent,
        "internet -> open host"
    );
    assert_eq!(inbound[0].seen_as, Some(addr(server.ip, 5000)));

    let _server_echo = echo(&lab, &server.netns, ECHO_PORT);
    let outbound = probe(
        &lab,
        &home.host.netns,
        &[addr(server.ip, ECHO_PORT)],
        Probe::default().port(41000),
    );
    assert_eq!(
        outbound[0].received, outbound[0].sent,
        "open host -> internet"
    );
    assert_eq!(
        outbound[0].seen_as,
        Some(addr(home.host.ip, 41000)),
        "an open host is seen under its own address and port"
    );
}

/// Two echoes on two public hosts, and the public address each saw one inside socket as.
fn mappings(lab: &Lab, home_netns: &str) -> [std::net::SocketAddr; 2] {
    let (a, b) = (&lab.dht_hosts()[1], &lab.dht_hosts()[2]);
    let _echoes = [
        echo(lab, &a.netns, ECHO_PORT),
        echo(lab, &b.netns, ECHO_PORT),
    ];
    let r = probe(
        lab,
        home_netns,
        &[addr(a.ip, ECHO_PORT), addr(b.ip, ECHO_PORT)],
        Probe::default(),
    );
    for t in &r {
        assert_eq!(t.received, t.sent, "probe to {} from {home_netns}", t.to);
    }
    [r[0].seen_as.unwrap(), r[1].seen_as.unwrap()]
}

#[test]
fn a_cone_nat_keeps_one_public_port_for_one_socket_whatever_the_destination() {
    let lab = lab(LabSpec::homes([Nat::Cone]));
    let home = &lab.homes()[0];
    let [a, b] = mappings(&lab, &home.host.netns);
    eprintln!("cone: one inside socket 10.1.0.2:40000 seen as {a} and {b}");
    assert_eq!(
        a.ip(),
        home.router.wan_ip,
        "seen as the router's public address"
    );
    assert_eq!(
        a, b,
        "endpoint-independent mapping: the same public port for both"
    );
}

#[test]
fn a_symmetric_nat_gives_each_destination_its_own_port() {
    let lab = lab(LabSpec::homes([Nat::Symmetric]));
    let home = &lab.homes()[0];
    let [a, b] = mappings(&lab, &home.host.netns);
    eprintln!("symmetric: one inside socket 10.1.0.2:40000 seen as {a} and {b}");
    assert_eq!(a.ip(), home.router.wan_ip);
    assert_eq!(b.ip(), home.router.wan_ip);
    assert_ne!(a.port(), b.port(), "a new public port per destination");
}

/// Unsolicited packets die at the NAT (and leave no conntrack entry that would move the
/// inside's port); once the inside has sent to a peer, that peer, and only it, gets through.
#[test]
fn nat_routers_drop_unsolicited_inbound_and_pass_answers() {
    let lab = lab(LabSpec::homes([Nat::Cone, Nat::Symmetric]));
    let (peer, stranger) = (&lab.dht_hosts()[1], &lab.dht_hosts()[2]);
    for home in lab.homes() {
        let nat = home.nat();
        let inside = echo(&lab, &home.host.netns, 40000);
        let unsolicited = probe(
            &lab,
            &peer.netns,
            &[addr(home.router.wan_ip, 40000)],
            Probe::default().port(ECHO_PORT),
        );
        assert_eq!(
            unsolicited[0].received, 0,
            "{nat}: unsolicited inbound must be dropped"
        );
        let table = lab.conntrack(home).expect("conntrack -L");
        assert!(
            !table.contains(&format!("src={}", peer.ip)),
            "{nat}: the dropped packets left conntrack state:\n{table}"
        );
        drop(inside);

        // The inside sends to the peer: that opens a mapping.
        let peer_echo = echo(&lab, &peer.netns, ECHO_PORT);
        let out = probe(
            &lab,
            &home.host.netns,
            &[addr(peer.ip, ECHO_PORT)],
            Probe::default(),
        );
        let mapped = out[0].seen_as.expect("the peer's echo answered");
        if nat == Nat::Cone {
            assert_eq!(
                mapped.port(),
                40000,
                "the unsolicited packets must not have moved the inside's port"
            );
        }
        drop(peer_echo);

        let _inside = echo(&lab, &home.host.netns, 40000);
        for (sender, allowed) in [(peer, true), (stranger, false)] {
            let r = probe(
                &lab,
                &sender.netns,
                &[mapped],
                Probe::default().port(ECHO_PORT),
            );
            assert_eq!(
                r[0].received,
                if allowed { r[0].sent } else { 0 },
                "{nat}: packets from {} to the mapping {mapped}, which the inside opened \
                 toward {} only",
                sender.name,
                peer.name
            );
        }
    }
}

/// hyperdht sends some punch packets with a TTL of 5 to open its own NAT only; on the real
/// internet they die on the way, so in the lab they must die too, at the far router.
#[test]
fn packets_arriving_with_a_low_ttl_die_at_the_router() {
    let lab = lab(LabSpec::homes([Nat::Open, Nat::Cone]));
    let (open, cone) = (&lab.homes()[0], &lab.homes()[1]);
    let server = &lab.dht_hosts()[1];
    let _open_echo = echo(&lab, &open.host.netns, 40000);
    let target = [addr(open.host.ip, 40000)];
    let ttl = u32::from(MIN_ARRIVAL_TTL);

    // From a public host, one hop: the packet arrives at the open home's router as sent.
    let low = probe(&lab, &server.netns, &target, Probe::default().ttl(ttl - 1));
    assert_eq!(low[0].received, 0, "TTL {} on arrival must die", ttl - 1);
    let enough = probe(&lab, &server.netns, &target, Probe::default().ttl(ttl));
    assert_eq!(
        enough[0].received, enough[0].sent,
        "TTL {ttl} on arrival passes"
    );

    // From inside a NAT, as hyperdht does: TTL 5 leaves the home (and opens its mapping)...
    let punch = probe(
        &lab,
        &cone.host.netns,
        &target,
        Probe::default().ttl(5).port(41000),
    );
    assert_eq!(
        punch[0].received, 0,
        "a TTL 5 packet must not reach the other home"
    );
    let table = lab.conntrack(cone).expect("conntrack -L");
    assert!(
        table.contains(&format!("dst={} sport=41000 dport=40000", open.host.ip)),
        "the low-TTL packet should still have opened the sender's own NAT:\n{table}"
    );
}

/// A lab with one home, and a probe from its host to an echo on a public host.
fn round_trips(spec: LabSpec, p: Probe) -> TargetReport {
    let lab = lab(spec);
    let server = &lab.dht_hosts()[1];
    let _echo = echo(&lab, &server.netns, ECHO_PORT);
    let target = [addr(server.ip, ECHO_PORT)];
    probe(&lab, &lab.homes()[0].host.netns, &target, p).remove(0)
}

#[test]
fn loss_drops_about_the_configured_share() {
    const LOSS: f64 = 0.3;
    const COUNT: u32 = 1000;
    let r = round_trips(
        LabSpec::homes([Nat::Cone]).loss(LOSS),
        Probe::default().count(COUNT).wait_ms(1000),
    );
    // The uplink loses what leaves the home; the answers come back whole.
    let expected = 1.0 - LOSS;
    let measured = f64::from(r.received) / f64::from(COUNT);
    eprintln!(
        "loss {LOSS} outbound: {measured:.3} of round trips came back (expected {expected:.3})"
    );
    // Four standard deviations of a binomial of 1000 round trips is about 0.06.
    assert!(
        (measured - expected).abs() < 0.06,
        "measured {measured:.3} of round trips, expected {expected:.3}"
    );
}

#[test]
fn delay_holds_every_packet_on_the_uplink() {
    let delay = Duration::from_millis(50);
    let r = round_trips(
        LabSpec::homes([Nat::Cone]).delay(delay),
        Probe::default().count(50),
    );
    let (min, max) = (r.rtt_min.unwrap(), r.rtt_max.unwrap());
    eprintln!("delay {delay:?} outbound: round trips {min:?} to {max:?}");
    assert_eq!(r.received, r.sent, "delay must not lose packets");
    assert!(min >= delay, "round trip {min:?} is shorter than the delay");
    assert!(
        max < delay + Duration::from_millis(100),
        "round trip {max:?} is far longer than the delay"
    );
}

#[test]
fn jitter_reorders_packets_within_the_delay_bounds() {
    let delay = Duration::from_millis(10);
    let jitter = Duration::from_millis(20);
    const COUNT: u32 = 300;
    // One packet a millisecond, each held 10 to 30 ms: many are overtaken by later ones.
    let r = round_trips(
        LabSpec::homes([Nat::Cone]).delay(delay).jitter(jitter),
        Probe::default().count(COUNT),
    );
    let (min, max) = (r.rtt_min.unwrap(), r.rtt_max.unwrap());
    eprintln!(
        "delay {delay:?} + jitter {jitter:?} outbound: round trips {min:?} to {max:?}, {} of {COUNT} overtaken",
        r.reordered
    );
    assert_eq!(r.received, r.sent, "jitter must not lose packets");
    assert!(
        r.reordered > COUNT / 10,
        "only {} of {COUNT} packets were overtaken: the uplink does not reorder",
        r.reordered
    );
    assert!(min >= delay, "round trip {min:?} is shorter than the delay");
    assert!(
        max < delay + jitter + Duration::from_millis(100),
        "round trip {max:?} is far longer than delay plus jitter"
    );
}

#[test]
fn a_dropped_lab_leaves_nothing_behind_even_after_a_panic() {
    common::init_logging();
    // A normal drop, with a process still running in a home.
    let lab = lab(LabSpec::homes([Nat::Cone, Nat::Open]));
    let prefix = lab.prefix().to_string();
    assert!(!namespaces_with_prefix(&prefix).is_empty());
    let mut sleeper = lab
        .exec(&lab.homes()[0].host.netns, "sleep")
        .arg("600")
        .spawn()
        .expect("start sleep in the lab");
    drop(lab);
    assert_eq!(namespaces_with_prefix(&prefix), Vec::<String>::new());
    let deadline = Instant::now() + Duration::from_secs(5);
    while sleeper.try_wait().expect("try_wait").is_none() {
        assert!(Instant::now() < deadline, "the lab left a process running");
        std::thread::sleep(Duration::from_millis(20));
    }

    // A test that panics with a lab in hand.
    let (tx, rx) = std::sync::mpsc::channel();
    let panicked = std::thread::spawn(move || {
        let lab = common::lab(LabSpec::homes([Nat::Symmetric]).delay(Duration::from_millis(5)));
        tx.send(lab.prefix().to_string()).unwrap();
        panic!("a test failing with a lab in hand (expected by this test)");
    })
    .join();
    assert!(panicked.is_err());
    let prefix = rx.recv().expect("the panicking thread built its lab");
    assert_eq!(namespaces_with_prefix(&prefix), Vec::<String>::new());
}

#[test]
fn cleanup_removes_labs_whose_process_died() {
    common::init_logging();
    let mut dead = Command::new("true").spawn().expect("run true");
    let pid = dead.id();
    dead.wait().expect("wait true");
    let stale = format!("{}{pid}x0-inet", netlab::PREFIX);
    let made = Command::new("ip")
        .args(["netns", "add", &stale])
        .status()
        .expect("ip netns add");
    assert!(made.success(), "cannot make a namespace: are we root?");

    let out = Command::new(env!("CARGO_BIN_EXE_netlab"))
        .arg("cleanup")
        .output()
        .expect("run netlab cleanup");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A lab being built elsewhere in this run may have cleaned it up first; either way it is gone.
    let prefix = format!("{}{pid}x0", netlab::PREFIX);
    assert_eq!(namespaces_with_prefix(&prefix), Vec::<String>::new());
    // Our own, live process's labs stay.
    let lab = lab(LabSpec::homes([Nat::Open]));
    netlab::remove_stale_labs().expect("cleanup");
    assert!(!namespaces_with_prefix(lab.prefix()).is_empty());
}

/// Without the right to make namespaces, the lab says so plainly (and a test built on it fails
/// with that message rather than passing without having run).
#[test]
fn without_root_the_lab_says_namespaces_are_not_permitted() {
    // A copy anyone may run: the build directory may sit under a private home directory.
    let dir = std::env::temp_dir().join(format!("netlab-unprivileged-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("netlab");
    std::fs::copy(env!("CARGO_BIN_EXE_netlab"), &bin).unwrap();
    for p in [&dir, &bin] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .args(["up", "--homes", "open", "--p2p-socket", "/bin/true"])
        .output()
        .expect("run setpriv (util-linux)");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "netlab up as nobody should fail");
    assert!(
        stderr.contains("network namespaces are not permitted here"),
        "the error should say why: {stderr}"
    );
}
