//! Addresses as the DHT's messages carry them (`Ipv4Peer`: a host string and a port) and as
//! sockets take them. Every layer converts between the two, so the rules live here, below all.

use std::net::{Ipv4Addr, SocketAddr};

use peeroxide_dht::messages::Ipv4Peer;

/// A peer's address to send to: an IPv4 host and a port other than 0.
pub(crate) fn to_socket_addr(peer: &Ipv4Peer) -> Option<SocketAddr> {
    to_socket_addr_any_port(peer).filter(|a| a.port() != 0)
}

/// Like [`to_socket_addr`], but keeps port 0: a randomising NAT's address comes with it (its
/// port is unknown), and punching still needs the host.
pub(crate) fn to_socket_addr_any_port(peer: &Ipv4Peer) -> Option<SocketAddr> {
    let ip: Ipv4Addr = peer.host.parse().ok()?;
    Some(SocketAddr::from((ip, peer.port)))
}

/// A socket address as the DHT's messages carry it.
pub(crate) fn ipv4_peer(addr: SocketAddr) -> Ipv4Peer {
    Ipv4Peer {
        host: addr.ip().to_string(),
        port: addr.port(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions() {
        let peer = |host: &str, port| Ipv4Peer {
            host: host.into(),
            port,
        };
        let a: SocketAddr = "10.0.0.1:5".parse().unwrap();
        assert_eq!(to_socket_addr(&ipv4_peer(a)), Some(a));
        assert_eq!(to_socket_addr(&peer("10.0.0.1", 0)), None);
        assert_eq!(
            to_socket_addr_any_port(&peer("10.0.0.1", 0)),
            Some("10.0.0.1:0".parse().unwrap())
        );
        assert_eq!(to_socket_addr(&peer("::1", 5)), None);
        assert_eq!(to_socket_addr(&peer("not an address", 5)), None);
    }
}
