//! Noticing that we moved: a router renumbered on a PPPoE reconnect or DHCP renewal, a NAT that
//! forgot its table, a laptop on another network. DHT nodes tell us in every answer where they
//! see us; a few of them are asked every [`WATCH_EVERY`], and our own interface addresses are
//! read as often. A share that moved must announce again at once (DHT nodes forward handshakes
//! to the address it announced from), a connect must drop the holes it punched from the old
//! address. The decision is [`moved`], a pure function; the watch only feeds it.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use peeroxide_dht::hyperdht::HyperDhtHandle;
use tokio::sync::watch;
use tracing::info;

use crate::dht::KnownNodes;

/// How often we look. The target is new connections working within 5 s of a move: a share
/// notices within this, then announces (well under a second on a healthy DHT).
pub(crate) const WATCH_EVERY: Duration = Duration::from_secs(2);
/// How many DHT nodes are asked each time (a majority of them decides our public address).
const ASKED: usize = 3;
const PING_TIMEOUT: Duration = Duration::from_millis(1500);

/// Where we are as far as we can tell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Whereabouts {
    /// The public host most of the DHT nodes asked see us at; `None` when none answered.
    /// Hosts only: behind a randomising NAT every node sees another port.
    pub(crate) public: Option<Ipv4Addr>,
    /// Our own IPv4 interface addresses (loopback aside).
    pub(crate) local: BTreeSet<Ipv4Addr>,
}

/// What changed between two looks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Move {
    /// The public host before and after, when it changed.
    pub(crate) public: Option<(Option<Ipv4Addr>, Ipv4Addr)>,
    /// Whether our interface addresses changed.
    pub(crate) local: bool,
}

impl fmt::Display for Move {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.public {
            Some((Some(old), new)) => write!(f, "public address {old} -> {new}")?,
            Some((None, new)) => write!(f, "public address now {new}")?,
            None => f.write_str("public address unchanged")?,
        }
        if self.local {
            f.write_str(", local interfaces changed")?;
        }
        Ok(())
    }
}

/// The host most of `seen` agree on (on a tie, the one seen first).
pub(crate) fn consensus(seen: &[Ipv4Addr]) -> Option<Ipv4Addr> {
    let mut best: Option<(Ipv4Addr, usize)> = None;
    for host in seen {
        let n = seen.iter().filter(|h| *h == host).count();
        if best.is_none_or(|(_, m)| n > m) {
            best = Some((*host, n));
        }
    }
    best.map(|(host, _)| host)
}

/// Whether we moved from `before` to `now`. Not hearing from any DHT node is being offline (or
/// asleep), not moving: the public side counts only when both looks have an answer, or when the
/// first answer comes after we knew none.
pub(crate) fn moved(before: &Whereabouts, now: &Whereabouts) -> Option<Move> {
    let public = match (before.public, now.public) {
        (Some(old), Some(new)) if old != new => Some((Some(old), new)),
        _ => None,
    };
    let local = before.local != now.local;
    (public.is_some() || local).then_some(Move { public, local })
}

/// Our own IPv4 interface addresses.
fn local_addresses() -> BTreeSet<Ipv4Addr> {
    if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|iface| match iface.ip() {
            IpAddr::V4(ip) if !ip.is_loopback() => Some(ip),
            _ => None,
        })
        .collect()
}

/// Asks up to [`ASKED`] of `nodes` where they see us.
async fn look(dht: &HyperDhtHandle, nodes: &[SocketAddr]) -> Whereabouts {
    let mut pings = tokio::task::JoinSet::new();
    for node in nodes.iter().filter(|n| n.is_ipv4()).take(ASKED) {
        let rpc = dht.dht().clone();
        let node = *node;
        pings.spawn(async move {
            tokio::time::timeout(PING_TIMEOUT, rpc.ping(&node.ip().to_string(), node.port())).await
        });
    }
    let mut seen = Vec::new();
    while let Some(joined) = pings.join_next().await {
        if let Ok(Ok(Ok(pong))) = joined {
            if let Some(host) = pong.to.and_then(|to| to.host.parse().ok()) {
                seen.push(host);
            }
        }
    }
    Whereabouts {
        public: consensus(&seen),
        local: local_addresses(),
    }
}

/// Watches where we are, in the background: the receiver sees the count of moves so far. It
/// stops once every receiver is gone.
pub(crate) fn watch_moves(dht: HyperDhtHandle, nodes: KnownNodes) -> watch::Receiver<u64> {
    let (tx, rx) = watch::channel(0u64);
    tokio::spawn(async move {
        let mut last = look(&dht, &nodes.list()).await;
        let mut every = tokio::time::interval(WATCH_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                _ = every.tick() => {}
            }
            let now = look(&dht, &nodes.list()).await;
            if let Some(change) = moved(&last, &now) {
                info!(%change, "our address changed");
                tx.send_modify(|n| *n += 1);
            }
            // An empty look (offline for a moment) keeps the last public address known.
            last = Whereabouts {
                public: now.public.or(last.public),
                local: now.local,
            };
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn at(public: Option<&str>, local: &[&str]) -> Whereabouts {
        Whereabouts {
            public: public.map(ip),
            local: local.iter().map(|s| ip(s)).collect(),
        }
    }

    #[test]
    fn the_majority_decides_the_public_host() {
        assert_eq!(consensus(&[]), None);
        let (a, b) = (ip("198.18.1.1"), ip("198.18.9.1"));
        assert_eq!(consensus(&[a]), Some(a));
        assert_eq!(consensus(&[a, b, b]), Some(b));
        assert_eq!(consensus(&[b, a]), Some(b), "a tie keeps the first seen");
    }

    #[test]
    fn a_move_is_a_new_public_host_or_new_interfaces_not_silence() {
        let home = at(Some("198.18.1.1"), &["10.1.0.2"]);
        let table = [
            (at(Some("198.18.1.1"), &["10.1.0.2"]), None),
            (
                at(Some("198.18.9.1"), &["10.1.0.2"]),
                Some(Move {
                    public: Some((Some(ip("198.18.1.1")), ip("198.18.9.1"))),
                    local: false,
                }),
            ),
            // Nobody answered: offline or asleep, not moved.
            (at(None, &["10.1.0.2"]), None),
            (
                at(None, &["10.7.0.5"]),
                Some(Move {
                    public: None,
                    local: true,
                }),
            ),
        ];
        for (now, expect) in table {
            assert_eq!(moved(&home, &now), expect, "{now:?}");
        }
        assert_eq!(moved(&at(None, &[]), &home).map(|m| m.local), Some(true));
        assert_eq!(moved(&at(None, &["10.1.0.2"]), &home), None);
    }
}
