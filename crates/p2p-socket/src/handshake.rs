//! The handshake both sides exchange through the DHT (hyperdht's PEER_HANDSHAKE): a Noise IK
//! message carrying a payload that says how to reach each other, and the rules for picking the
//! address the data path is opened on. The encodings are peeroxide-dht's; the decisions are
//! ours and follow Node hyperdht's `connect.js` and `server.js`, so Node peers meet us halfway.

use std::net::{Ipv4Addr, SocketAddr};

use peeroxide_dht::hyperdht_messages::{
    HandshakeMessage, HolepunchInfo, NoisePayload, SecretStreamInfo, UdxInfo, ERROR_NONE,
};
use peeroxide_dht::messages::Ipv4Peer;

use crate::addr::to_socket_addr;
use crate::nat::Firewall;

/// The payload version hyperdht speaks.
pub(crate) const PAYLOAD_VERSION: u64 = 1;

/// What we tell the other side in our half of the handshake: whether we are reachable
/// (`firewall`: Open makes the other side send first, anything else makes it dial or punch),
/// where, and, for a server, the DHT nodes a client can punch through (`holepunch`).
pub(crate) fn our_payload(
    stream_id: u32,
    addresses4: Vec<Ipv4Peer>,
    firewall: Firewall,
    holepunch: Option<HolepunchInfo>,
) -> NoisePayload {
    NoisePayload {
        version: PAYLOAD_VERSION,
        error: ERROR_NONE,
        firewall: firewall.wire(),
        holepunch,
        addresses4,
        addresses6: Vec::new(),
        udx: Some(UdxInfo {
            version: 1,
            // A socket punched for one connection takes the next handshake straight away
            // (hyperdht's reusableSocket): later connections skip the punch.
            reusable_socket: true,
            id: u64::from(stream_id),
            seq: 0,
        }),
        secret_stream: Some(SecretStreamInfo { version: 1 }),
        relay_through: None,
        relay_addresses: None,
    }
}

/// Checks the peer's half of the handshake; the error text names what is wrong.
pub(crate) fn check_remote(payload: &NoisePayload) -> Result<u32, String> {
    if payload.version != PAYLOAD_VERSION {
        return Err(format!("handshake version {}", payload.version));
    }
    if payload.error != ERROR_NONE {
        return Err(format!(
            "the peer refused with error code {}",
            payload.error
        ));
    }
    let udx = payload
        .udx
        .as_ref()
        .ok_or_else(|| "the peer sent no stream parameters".to_string())?;
    u32::try_from(udx.id).map_err(|_| format!("stream id {} out of range", udx.id))
}

/// Encodes a PEER_HANDSHAKE message.
pub(crate) fn message(mode: u64, noise: Vec<u8>, peer_address: Option<Ipv4Peer>) -> Vec<u8> {
    let msg = HandshakeMessage {
        mode,
        noise,
        peer_address,
        relay_address: None,
    };
    // Encoding only fails on impossible lengths (a noise message is under 1 KiB).
    peeroxide_dht::hyperdht_messages::encode_handshake_to_bytes(&msg)
        .expect("handshake message encodes")
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
}
