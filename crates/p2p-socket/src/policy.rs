//! What each side decides from a handshake, as pure functions of what it knows: whether we
//! say we are reachable, which relay a connection may go through and who initiates its pairing,
//! whether the sharer offers a punch, how its data path finds the client, which address to
//! dial, and the client's choice of path. They follow Node hyperdht's `connect.js` and
//! `server.js`, so Node peers meet us halfway; the listener and the dialer only carry them out.

use std::net::{Ipv4Addr, SocketAddr};

use peeroxide_dht::hyperdht_messages::RelayThroughInfo;
use peeroxide_dht::messages::Ipv4Peer;

use crate::addr::to_socket_addr;
use crate::identity::PublicKey;
use crate::nat::Firewall;
use crate::relay::wire::Token;

/// What we say about ourselves in the handshake: open only when the DHT found that anyone can
/// reach our socket; otherwise unknown (the other side then dials, punches or waits for us).
pub(crate) fn our_firewall(reachable: bool) -> Firewall {
    if reachable {
        Firewall::Open
    } else {
        Firewall::Unknown
    }
}

/// What a sharer says about itself: as [`our_firewall`], but Random when the DHT nodes saw its
/// NAT give each socket its own port. A p2p-socket connect then knows before any punch that the
/// pair is hard and starts on a relay if one is offered (`dialer/upgrade.rs`); a hyperdht client
/// reads anything but Open as "punch", and its punch's own messages overwrite it.
pub(crate) fn sharer_firewall(reachable: bool, nat: Firewall) -> Firewall {
    match our_firewall(reachable) {
        Firewall::Unknown if nat == Firewall::Random => Firewall::Random,
        said => said,
    }
}

/// A relay named in a handshake (`relayThrough`): its key, and the token both sides pair with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RelayOffer {
    pub(crate) relay: PublicKey,
    pub(crate) token: Token,
}

impl RelayOffer {
    pub(crate) fn from_wire(info: &RelayThroughInfo) -> Self {
        RelayOffer {
            relay: PublicKey::from(info.public_key),
            token: info.token,
        }
    }

    pub(crate) fn to_wire(self) -> RelayThroughInfo {
        RelayThroughInfo {
            version: 1,
            public_key: *self.relay.as_bytes(),
            token: self.token,
        }
    }
}

/// The relay a connection may go through, and whether we pair as the initiator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RelayPlan {
    pub(crate) offer: RelayOffer,
    pub(crate) is_initiator: bool,
}

/// Which relay a connection goes through when both sides may name one: the sharer's wins
/// (hyperdht's rule), and the side that named the chosen relay initiates the pairing.
pub(crate) fn relay_choice(
    sharers: Option<RelayOffer>,
    clients: Option<RelayOffer>,
    we_share: bool,
) -> Option<RelayPlan> {
    match (sharers, clients) {
        (Some(offer), _) => Some(RelayPlan {
            offer,
            is_initiator: we_share,
        }),
        (None, Some(offer)) => Some(RelayPlan {
            offer,
            is_initiator: !we_share,
        }),
        (None, None) => None,
    }
}

/// How a sharer's data path finds a new client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ServerPath {
    /// The client sent the handshake itself (not through a DHT node): it is where it sent
    /// from, and expects the connection there.
    ToSender,
    /// The client says it is reachable and waits for us to send first (server.js does too).
    DialClient,
    /// Wait for the client's first packet: on the DHT socket, a punched one, or the relay.
    AwaitClient,
}

/// The sharer's [`ServerPath`] for a client that came `direct`ly or not, and says it is
/// reachable (`client_open`) or not.
pub(crate) fn server_path(direct: bool, client_open: bool) -> ServerPath {
    match (direct, client_open) {
        (true, _) => ServerPath::ToSender,
        (false, true) => ServerPath::DialClient,
        (false, false) => ServerPath::AwaitClient,
    }
}

/// Whether the sharer offers a client a holepunch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PunchOffer {
    /// Offer one.
    Offer,
    /// None needed: we are reachable, or the client is, or it reached us itself.
    NotNeeded,
    /// None possible: no DHT node holding our announcement answers, so none can carry rounds.
    NoRelays,
    /// One would help, but too many punches are in progress.
    Full,
}

/// Whoever cannot be dialled gets a holepunch offer (server.js: when we have no public address
/// of our own), unless we reach the client otherwise.
pub(crate) fn punch_offer(
    we_are_open: bool,
    path: ServerPath,
    relays_known: bool,
    sessions_full: bool,
) -> PunchOffer {
    if we_are_open || path != ServerPath::AwaitClient {
        PunchOffer::NotNeeded
    } else if !relays_known {
        PunchOffer::NoRelays
    } else if sessions_full {
        PunchOffer::Full
    } else {
        PunchOffer::Offer
    }
}

/// How one connection of the client reaches the sharer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Send to this address from the DHT socket.
    Dial(SocketAddr),
    /// The sharer sends first, to our DHT socket.
    Wait,
    /// Punch a hole first.
    Punch,
}

/// What the client knows once the sharer answered its handshake.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Answered<'a> {
    /// The sharer says anyone can reach it.
    pub(crate) sharer_open: bool,
    /// The answer came through a DHT node (not from the sharer itself).
    pub(crate) relayed: bool,
    /// We said we are reachable, so a sharer that is not sends first.
    pub(crate) we_wait: bool,
    /// The sharer offered a holepunch with DHT nodes to punch through.
    pub(crate) holepunchable: bool,
    /// Where the DHT node saw the sharer.
    pub(crate) seen: SocketAddr,
    /// The addresses the sharer listed.
    pub(crate) advertised: &'a [Ipv4Peer],
    /// Our public host, as DHT nodes see it.
    pub(crate) our_public: Option<Ipv4Addr>,
    /// Our own addresses.
    pub(crate) our_local: &'a [Ipv4Addr],
}

/// The client's path (connect.js's `holepunch()` decisions).
pub(crate) fn client_path(a: &Answered<'_>) -> Decision {
    let dial = || dial_address(a.seen, a.advertised, a.our_public, a.our_local);
    if a.sharer_open || !a.relayed {
        // Reachable, or it answered us itself: dial it.
        return Decision::Dial(dial());
    }
    if a.we_wait {
        // We said we are reachable: a sharer that is not sends first (connect.js waits).
        return Decision::Wait;
    }
    if !a.holepunchable {
        // It offers nothing else; a Node sharer expects exactly this.
        return Decision::Dial(dial());
    }
    if let Some(lan) = lan_address(a.seen, a.advertised, a.our_public, a.our_local) {
        // Behind the same NAT as us: its LAN address needs no punching.
        return Decision::Dial(lan);
    }
    Decision::Punch
}

/// Addresses that are not on the public internet (the `bogon` package's rule, which hyperdht
/// uses to decide whether an advertised address is worth dialling from afar).
pub(crate) fn is_bogon(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_unspecified()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0
        || a >= 240
        || (a == 100 && (64..128).contains(&b))
        || (a == 198 && (b == 18 || b == 19))
}

fn v4(addr: SocketAddr) -> Option<Ipv4Addr> {
    match addr {
        SocketAddr::V4(a) => Some(*a.ip()),
        SocketAddr::V6(_) => None,
    }
}

/// The LAN address of a peer behind the same NAT as us (its public host is ours), if it
/// advertises one on our subnet: its public mapping may not hairpin, the LAN needs no punching.
/// Loopback does not count: peers on one machine are reachable anyway, or testing punching.
pub(crate) fn lan_address(
    seen: SocketAddr,
    advertised: &[Ipv4Peer],
    our_public: Option<Ipv4Addr>,
    our_local: &[Ipv4Addr],
) -> Option<SocketAddr> {
    let seen_ip = v4(seen)?;
    if seen_ip.is_loopback() || Some(seen_ip) != our_public {
        return None;
    }
    advertised.iter().filter_map(to_socket_addr).find(|a| {
        v4(*a).is_some_and(|ip| {
            !ip.is_loopback()
                && our_local
                    .iter()
                    .any(|l| !l.is_loopback() && l.octets()[..3] == ip.octets()[..3])
        })
    })
}

/// Where to send the first packet of a connection to a peer that waits for us.
///
/// `seen` is the peer's address as a DHT node saw it (its NAT's mapping for its DHT socket);
/// `advertised` is what the peer listed itself. A peer behind the same NAT as us (same public
/// host) or on this machine is dialled on a matching local address, since its public mapping
/// may not hairpin; anyone else on its first public address, or where the DHT saw it.
pub(crate) fn dial_address(
    seen: SocketAddr,
    advertised: &[Ipv4Peer],
    our_public: Option<Ipv4Addr>,
    our_local: &[Ipv4Addr],
) -> SocketAddr {
    if let Some(lan) = lan_address(seen, advertised, our_public, our_local) {
        return lan;
    }
    let advertised: Vec<SocketAddr> = advertised.iter().filter_map(to_socket_addr).collect();
    let seen_ip = v4(seen);
    let same_host = seen_ip.is_some_and(|ip| ip.is_loopback() || Some(ip) == our_public);
    if same_host {
        // On this machine: the advertised address on our subnet (loopback included).
        let same_subnet = |a: &SocketAddr| {
            v4(*a).is_some_and(|ip| {
                our_local
                    .iter()
                    .any(|l| l.octets()[..3] == ip.octets()[..3])
            })
        };
        return advertised.iter().copied().find(same_subnet).unwrap_or(seen);
    }
    advertised
        .iter()
        .find(|a| v4(**a).is_some_and(|ip| !is_bogon(ip)))
        .copied()
        .unwrap_or(seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(s: &str) -> Ipv4Peer {
        let a: SocketAddr = s.parse().unwrap();
        Ipv4Peer {
            host: a.ip().to_string(),
            port: a.port(),
        }
    }

    #[test]
    fn loopback_peer_is_dialled_where_the_dht_saw_it() {
        let seen = "127.0.0.1:4000".parse().unwrap();
        let got = dial_address(seen, &[peer("127.0.0.1:4000")], None, &[]);
        assert_eq!(got, seen);
    }

    #[test]
    fn remote_peer_is_dialled_on_its_public_address() {
        let seen = "203.0.113.9:4000".parse().unwrap();
        let adv = [peer("192.168.1.5:4000"), peer("8.8.4.4:5000")];
        let got = dial_address(seen, &adv, Some("8.8.8.8".parse().unwrap()), &[]);
        assert_eq!(got, "8.8.4.4:5000".parse().unwrap());
    }

    #[test]
    fn peer_behind_our_nat_is_dialled_on_its_lan_address() {
        let public: Ipv4Addr = "8.8.8.8".parse().unwrap();
        let seen = "8.8.8.8:4000".parse().unwrap();
        let adv = [peer("10.0.0.7:4000"), peer("192.168.1.5:4000")];
        let got = dial_address(seen, &adv, Some(public), &["192.168.1.2".parse().unwrap()]);
        assert_eq!(got, "192.168.1.5:4000".parse().unwrap());
    }

    #[test]
    fn bogons() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "198.18.0.5",
            "100.64.0.1",
        ] {
            assert!(is_bogon(ip.parse().unwrap()), "{ip}");
        }
        assert!(!is_bogon("8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn relay_choice_the_sharers_wins() {
        let ours = RelayOffer {
            relay: PublicKey::from([1; 32]),
            token: [1; 32],
        };
        let theirs = RelayOffer {
            relay: PublicKey::from([2; 32]),
            token: [2; 32],
        };
        let plan = |offer, is_initiator| {
            Some(RelayPlan {
                offer,
                is_initiator,
            })
        };
        // (sharer's, client's, we share, plan)
        let table = [
            (Some(ours), Some(theirs), true, plan(ours, true)),
            (Some(ours), None, true, plan(ours, true)),
            (None, Some(theirs), true, plan(theirs, false)),
            (Some(theirs), Some(ours), false, plan(theirs, false)),
            (None, Some(ours), false, plan(ours, true)),
            (None, None, false, None),
            (None, None, true, None),
        ];
        for (sharers, clients, we_share, want) in table {
            assert_eq!(relay_choice(sharers, clients, we_share), want);
        }
    }

    #[test]
    fn server_paths_and_punch_offers() {
        use PunchOffer::*;
        use ServerPath::*;
        // (direct, client open, path)
        for (direct, open, want) in [
            (true, true, ToSender),
            (true, false, ToSender),
            (false, true, DialClient),
            (false, false, AwaitClient),
        ] {
            assert_eq!(server_path(direct, open), want);
        }
        // (we are open, path, relays known, sessions full, offer)
        let table = [
            (true, AwaitClient, true, false, NotNeeded),
            (false, ToSender, true, false, NotNeeded),
            (false, DialClient, true, false, NotNeeded),
            (false, AwaitClient, false, false, NoRelays),
            (false, AwaitClient, true, true, Full),
            (false, AwaitClient, true, false, Offer),
        ];
        for (open, path, relays, full, want) in table {
            assert_eq!(
                punch_offer(open, path, relays, full),
                want,
                "{open} {path:?}"
            );
        }
        assert_eq!(our_firewall(true), Firewall::Open);
        assert_eq!(our_firewall(false), Firewall::Unknown);
        assert_eq!(sharer_firewall(false, Firewall::Random), Firewall::Random);
        assert_eq!(sharer_firewall(true, Firewall::Random), Firewall::Open);
        for nat in [Firewall::Unknown, Firewall::Open, Firewall::Consistent] {
            assert_eq!(sharer_firewall(false, nat), Firewall::Unknown, "{nat}");
        }
    }

    #[test]
    fn client_paths() {
        let public: Ipv4Addr = "8.8.8.8".parse().unwrap();
        let local = ["192.168.1.2".parse().unwrap()];
        let remote_seen: SocketAddr = "203.0.113.9:4000".parse().unwrap();
        let behind_our_nat: SocketAddr = "8.8.8.8:4000".parse().unwrap();
        let advertised = [peer("192.168.1.5:4000")];
        let answered = |seen| Answered {
            sharer_open: false,
            relayed: true,
            we_wait: false,
            holepunchable: true,
            seen,
            advertised: &advertised,
            our_public: Some(public),
            our_local: &local,
        };
        let base = answered(remote_seen);
        let table = [
            (
                Answered {
                    sharer_open: true,
                    ..base
                },
                Decision::Dial(remote_seen),
            ),
            (
                Answered {
                    relayed: false,
                    ..base
                },
                Decision::Dial(remote_seen),
            ),
            (
                Answered {
                    we_wait: true,
                    ..base
                },
                Decision::Wait,
            ),
            (
                Answered {
                    holepunchable: false,
                    ..base
                },
                Decision::Dial(remote_seen),
            ),
            (
                answered(behind_our_nat),
                Decision::Dial("192.168.1.5:4000".parse().unwrap()),
            ),
            (base, Decision::Punch),
        ];
        for (i, (a, want)) in table.into_iter().enumerate() {
            assert_eq!(client_path(&a), want, "row {i}");
        }
    }
}
