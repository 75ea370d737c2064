//! What kind of NAT a socket sits behind, judged from the addresses DHT nodes report seeing us
//! at (hyperdht's `nat.js` rules, so both sides of a punch agree on what a verdict means), and
//! whether we are reachable from the internet without punching at all.
//!
//! A socket behind a "consistent" NAT (endpoint-independent mapping, a cone) shows the same
//! public port to every node; one behind a "random" (symmetric) NAT shows a new port per node.
//! That difference decides how a hole is punched: two consistent sides just send to each other,
//! a random side needs the birthday approach, and two random sides cannot meet at all.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use peeroxide_dht::hyperdht_messages::{
    encode_holepunch_msg_to_bytes, HolepunchMessage, MODE_FROM_CLIENT, PEER_HOLEPUNCH,
};
use peeroxide_dht::messages::{Command, Ipv4Peer};
use tokio::sync::{mpsc, watch};
use tracing::debug;

pub(crate) use crate::firewall::Firewall;
use crate::lock::lock;
use crate::punch_socket::{PunchSocket, RpcMessage};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sample {
    addr: SocketAddr,
    hits: u32,
}

/// Counts one observation of `addr`, keeping the list sorted by hits (most first).
fn add_sample(samples: &mut Vec<Sample>, addr: SocketAddr) {
    match samples.iter().position(|s| s.addr == addr) {
        Some(mut i) => {
            samples[i].hits += 1;
            while i > 0 && samples[i - 1].hits < samples[i].hits {
                samples.swap(i - 1, i);
                i -= 1;
            }
        }
        None => samples.push(Sample { addr, hits: 1 }),
    }
}

/// Below this many samples no verdict is possible (nat.js waits for 3).
const MIN_VERDICT_SAMPLES: usize = 3;
/// How many samples sampling aims for before it stops waiting for more (nat.js's `_minSamples`).
pub(crate) const WANTED_SAMPLES: usize = 4;

/// The reflexive addresses one socket was seen at, and the verdict they support. (A socket of a
/// host known to be reachable is never sampled: it has nothing to punch.)
#[derive(Debug, Clone, Default)]
pub(crate) struct NatSampler {
    /// Samples by host only (port 0), and by host and port.
    hosts: Vec<Sample>,
    full: Vec<Sample>,
    /// DHT nodes that already gave a sample: each node counts once.
    seen_from: HashSet<SocketAddr>,
    sampled: usize,
    firewall: Firewall,
    addresses: Option<Vec<SocketAddr>>,
    frozen: bool,
}

impl NatSampler {
    /// Records that the DHT node at `from` saw us at `seen`.
    pub(crate) fn add(&mut self, seen: SocketAddr, from: SocketAddr) {
        if !self.seen_from.insert(from) {
            return;
        }
        add_sample(&mut self.hosts, SocketAddr::new(seen.ip(), 0));
        add_sample(&mut self.full, seen);
        self.sampled += 1;
        if self.sampled >= MIN_VERDICT_SAMPLES && !self.frozen {
            self.update();
        }
    }

    /// Whether sampling can stop: the verdict cannot change for the better any more.
    pub(crate) fn settled(&self) -> bool {
        self.firewall == Firewall::Consistent || self.sampled >= WANTED_SAMPLES
    }

    pub(crate) fn firewall(&self) -> Firewall {
        self.firewall
    }

    /// The addresses to tell the other side to punch to: for a consistent NAT the ports seen
    /// more than once (at least two), for a random one only the host (port 0: unknowable).
    pub(crate) fn addresses(&self) -> Option<Vec<SocketAddr>> {
        self.addresses.clone()
    }

    pub(crate) fn sampled(&self) -> usize {
        self.sampled
    }

    /// Stops the verdict from changing: once told to the other side, both must act on the same.
    pub(crate) fn freeze(&mut self) {
        self.frozen = true;
    }

    fn update(&mut self) {
        self.update_firewall();
        self.update_addresses();
    }

    fn update_firewall(&mut self) {
        if self.sampled < MIN_VERDICT_SAMPLES {
            return;
        }
        let top = self.full[0].hits;
        if top >= 3 {
            self.firewall = Firewall::Consistent;
        } else if top == 1 {
            self.firewall = Firewall::Random;
        } else if self.hosts.len() == 1 && self.sampled > 3 {
            // One host, two hits on one port and the rest elsewhere: ports move.
            self.firewall = Firewall::Random;
        } else if self.hosts.len() > 1 && self.full.get(1).is_some_and(|s| s.hits > 1) {
            // Two public hosts, each seen twice on one port (a multi-homed NAT).
            self.firewall = Firewall::Consistent;
        } else if self.sampled > WANTED_SAMPLES {
            self.firewall = Firewall::Random;
        }
    }

    fn update_addresses(&mut self) {
        self.addresses = match self.firewall {
            Firewall::Unknown | Firewall::Open => None,
            Firewall::Random => Some(vec![self.hosts[0].addr]),
            Firewall::Consistent => Some(
                self.full
                    .iter()
                    .enumerate()
                    .filter(|(i, s)| s.hits >= 2 || *i < 2)
                    .map(|(_, s)| s.addr)
                    .collect(),
            ),
        };
    }
}

/// How long one sampling ping waits for its answer, and how often it is tried.
const PING_TIMEOUT: Duration = Duration::from_millis(500);
const PING_TRIES: u32 = 3;

/// NAT sampling of one socket, running in the background: pings to DHT nodes whose replies say
/// where they saw us.
#[derive(Clone)]
pub(crate) struct NatProbe {
    sampler: Arc<Mutex<NatSampler>>,
    done: watch::Receiver<bool>,
}

impl NatProbe {
    /// Starts pinging `nodes` from `socket` (up to [`WANTED_SAMPLES`] at a time, more if some
    /// do not answer).
    pub(crate) fn start(socket: &PunchSocket, nodes: Vec<SocketAddr>) -> NatProbe {
        let sampler = Arc::new(Mutex::new(NatSampler::default()));
        let (done_tx, done) = watch::channel(false);
        let probe = NatProbe {
            sampler: Arc::clone(&sampler),
            done,
        };
        let socket = socket.clone();
        tokio::spawn(async move {
            let mut pending = tokio::task::JoinSet::new();
            let mut queue = nodes.into_iter();
            loop {
                let (settled, sampled) = {
                    let s = lock(&sampler);
                    (s.settled(), s.sampled())
                };
                if settled {
                    break;
                }
                // Keep enough pings in flight to reach the wanted number of samples.
                while sampled + pending.len() < WANTED_SAMPLES {
                    let Some(node) = queue.next() else { break };
                    let socket = socket.clone();
                    pending.spawn(async move {
                        let reply = socket
                            .request(
                                node,
                                RpcMessage::internal(Command::Ping as u64, None),
                                PING_TIMEOUT,
                                PING_TRIES,
                            )
                            .await;
                        (node, reply)
                    });
                }
                let Some(joined) = pending.join_next().await else {
                    break;
                };
                if let Ok((node, Ok(reply))) = joined {
                    if let Some(seen) = reply.to {
                        lock(&sampler).add(seen, node);
                    }
                }
            }
            let s = lock(&sampler);
            debug!(
                sampled = s.sampled(),
                firewall = s.firewall().describe(),
                "NAT sampling done"
            );
            drop(s);
            let _ = done_tx.send(true);
        });
        probe
    }

    /// Records a sample that came with another reply (a holepunch answer through a DHT node).
    pub(crate) fn add(&self, seen: SocketAddr, from: SocketAddr) {
        lock(&self.sampler).add(seen, from);
    }

    /// Waits until sampling settled or ran out of nodes, at most `max`; returns the verdict.
    pub(crate) async fn analyzed(&self, max: Duration) -> Firewall {
        let mut done = self.done.clone();
        let _ = tokio::time::timeout(max, async {
            loop {
                if *done.borrow() || lock(&self.sampler).settled() {
                    return;
                }
                if done.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        self.firewall()
    }

    pub(crate) fn firewall(&self) -> Firewall {
        lock(&self.sampler).firewall()
    }

    pub(crate) fn addresses(&self) -> Option<Vec<SocketAddr>> {
        lock(&self.sampler).addresses()
    }

    pub(crate) fn sampled(&self) -> usize {
        lock(&self.sampler).sampled()
    }

    pub(crate) fn freeze(&self) {
        lock(&self.sampler).freeze();
    }
}

/// How long the reachability check waits for DHT nodes to call back.
const OPEN_CHECK_TIMEOUT: Duration = Duration::from_millis(800);
/// How many nodes the reachability check asks.
const OPEN_CHECK_NODES: usize = 5;

/// Whether this host receives packets nobody asked for, on a port nobody was sent from
/// (dht-rpc's firewall test): a fresh socket asks DHT nodes to send to a second fresh socket,
/// which never sent anything to them. Two ways of asking, as DHT implementations differ:
///
/// - PING_NAT, whose answer dht-rpc sends to the port named in the request (peeroxide-dht
///   answers the asking port instead, which proves nothing and is not counted);
/// - a PEER_HOLEPUNCH message addressed to the second socket at our public host: every
///   HyperDHT node passes such a message on to the address it names, unread.
///
/// Open if enough distinct nodes got through (dht-rpc's rule: one from a small network, three
/// of five otherwise).
pub(crate) async fn check_open(
    bind: IpAddr,
    public_host: Option<IpAddr>,
    nodes: &[SocketAddr],
) -> bool {
    let nodes: Vec<SocketAddr> = nodes.iter().copied().take(OPEN_CHECK_NODES).collect();
    if nodes.is_empty() {
        return false;
    }
    let (asker, listener) = match (PunchSocket::bind(bind).await, PunchSocket::bind(bind).await) {
        (Ok(a), Ok(b)) => (a, b),
        _ => return false,
    };
    let Ok(listen_addr) = listener.local_addr() else {
        return false;
    };
    let (forwarded_tx, mut forwarded) = mpsc::unbounded_channel();
    listener.on_requests(forwarded_tx);
    let port = listen_addr.port().to_le_bytes().to_vec();
    let mut answers = tokio::task::JoinSet::new();
    for &node in &nodes {
        let msg = RpcMessage::internal(Command::PingNat as u64, Some(port.clone()));
        let answer = listener.clone().expect_reply_to(asker.clone(), node, msg);
        answers
            .spawn(async move { (node, tokio::time::timeout(OPEN_CHECK_TIMEOUT, answer).await) });
        if let Some(host) = public_host {
            let to_listener = HolepunchMessage {
                mode: MODE_FROM_CLIENT,
                id: 0,
                payload: vec![0],
                peer_address: Some(Ipv4Peer {
                    host: host.to_string(),
                    port: listen_addr.port(),
                }),
            };
            if let Ok(value) = encode_holepunch_msg_to_bytes(&to_listener) {
                asker.send_request(node, &RpcMessage::user(PEER_HOLEPUNCH, [0; 32], value));
            }
        }
    }
    let asked: HashSet<IpAddr> = nodes.iter().map(SocketAddr::ip).collect();
    let needed = if nodes.len() >= 5 { 3 } else { 1 };
    let mut heard = HashSet::new();
    let deadline = tokio::time::sleep(OPEN_CHECK_TIMEOUT);
    tokio::pin!(deadline);
    while heard.len() < needed {
        tokio::select! {
            Some(joined) = answers.join_next() => {
                if let Ok((node, Ok(Ok(reply)))) = joined {
                    if reply.to.is_some_and(|to| to.port() == listen_addr.port()) {
                        heard.insert(node.ip());
                    }
                }
            }
            Some(req) = forwarded.recv() => {
                if asked.contains(&req.from.ip()) {
                    heard.insert(req.from.ip());
                }
            }
            _ = &mut deadline => break,
        }
    }
    let open = heard.len() >= needed;
    debug!(
        heard = heard.len(),
        asked = nodes.len(),
        open,
        "reachability check"
    );
    open
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn sampler(seen: &[&str]) -> NatSampler {
        let mut n = NatSampler::default();
        for (i, s) in seen.iter().enumerate() {
            n.add(a(s), SocketAddr::from(([10, 0, 0, 1], 1000 + i as u16)));
        }
        n
    }

    #[test]
    fn same_port_everywhere_is_consistent() {
        let n = sampler(&["198.18.1.1:4000", "198.18.1.1:4000", "198.18.1.1:4000"]);
        assert_eq!(n.firewall(), Firewall::Consistent);
        assert_eq!(n.addresses(), Some(vec![a("198.18.1.1:4000")]));
        assert!(n.settled());
    }

    #[test]
    fn new_port_per_node_is_random() {
        let n = sampler(&["198.18.1.1:4000", "198.18.1.1:5000", "198.18.1.1:6000"]);
        assert_eq!(n.firewall(), Firewall::Random);
        assert_eq!(n.addresses(), Some(vec![a("198.18.1.1:0")]));
        assert!(!n.settled(), "a random verdict waits for the fourth sample");
    }

    #[test]
    fn two_samples_decide_nothing() {
        let n = sampler(&["198.18.1.1:4000", "198.18.1.1:4000"]);
        assert_eq!(n.firewall(), Firewall::Unknown);
        assert_eq!(n.addresses(), None);
    }

    #[test]
    fn two_of_four_on_one_port_is_random() {
        let n = sampler(&[
            "198.18.1.1:4000",
            "198.18.1.1:4000",
            "198.18.1.1:5000",
            "198.18.1.1:6000",
        ]);
        assert_eq!(n.firewall(), Firewall::Random);
    }

    #[test]
    fn a_node_counts_once() {
        let mut n = NatSampler::default();
        let node = a("198.18.0.2:49737");
        for _ in 0..5 {
            n.add(a("198.18.1.1:4000"), node);
        }
        assert_eq!(n.sampled(), 1);
        assert_eq!(n.firewall(), Firewall::Unknown);
    }

    #[test]
    fn frozen_verdicts_stay() {
        let mut n = sampler(&["198.18.1.1:4000", "198.18.1.1:4000", "198.18.1.1:4000"]);
        n.freeze();
        n.add(a("198.18.1.1:7000"), a("198.18.0.9:1"));
        n.add(a("198.18.1.1:8000"), a("198.18.0.9:2"));
        assert_eq!(n.firewall(), Firewall::Consistent);
    }

    #[test]
    fn firewall_wire_values_round_trip() {
        for f in [
            Firewall::Unknown,
            Firewall::Open,
            Firewall::Consistent,
            Firewall::Random,
        ] {
            assert_eq!(Firewall::from_wire(f.wire()), f);
        }
        assert_eq!(Firewall::Open.coerced(), Firewall::Consistent);
    }
}
