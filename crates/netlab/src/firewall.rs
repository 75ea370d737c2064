//! The iptables rules of each lab machine, as iptables-restore input.
//!
//! Where each rule sits matters:
//! - The uplink's TTL check, loss and delay are in the raw table's PREROUTING, before conntrack:
//!   a packet held by the delay line has no conntrack entry yet, so two packets of a new flow
//!   cannot race each other into two NAT mappings, and a packet lost on the uplink never
//!   creates state, as on a real wire.
//! - A NAT router drops everything from the WAN addressed to itself (INPUT). Without that, the
//!   first punch packet from outside, arriving before the inside has sent, leaves a conntrack
//!   entry for the router's own port; MASQUERADE then sees that port as taken and gives the
//!   inside another one, which breaks punching between two cone NATs.

use std::fmt::Write;

use crate::delay::QUEUE;
use crate::spec::{HomeSpec, Nat};

/// The internet between two homes is several routers long; hyperdht relies on that, sending
/// some punch packets with a TTL of 5 only to open its own NAT. A packet that arrives with less
/// than this would have died on the way.
pub const MIN_ARRIVAL_TTL: u8 = 8;

/// A home router: `wan` faces the internet, `lan` the home's host.
pub(crate) fn router(home: &HomeSpec) -> String {
    let mut r = String::from("*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    let _ = writeln!(
        r,
        "-A PREROUTING -i wan -m ttl --ttl-lt {MIN_ARRIVAL_TTL} -j DROP"
    );
    // Loss and delay shape what leaves the home, as netem on the uplink's egress would: between
    // two homes each direction gets the sender's loss and delay once. They match packets as
    // they come in from the LAN, before conntrack and NAT see them.
    if home.loss > 0.0 {
        let _ = writeln!(
            r,
            "-A PREROUTING -i lan -m statistic --mode random --probability {:.6} -j DROP",
            home.loss
        );
    }
    if home.holds() {
        let _ = writeln!(r, "-A PREROUTING -i lan -j NFQUEUE --queue-num {QUEUE}");
    }
    r.push_str("COMMIT\n");
    if home.nat == Nat::Open {
        return r;
    }
    let random = if home.nat == Nat::Symmetric {
        // A new random port for every new conntrack entry, that is for every destination.
        " --random-fully"
    } else {
        ""
    };
    let _ = write!(
        r,
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
         -A POSTROUTING -o wan -j MASQUERADE{random}\n\
         COMMIT\n\
         *filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n\
         -A INPUT -i wan -j DROP\n\
         -A FORWARD -i lan -o wan -j ACCEPT\n\
         -A FORWARD -i wan -o lan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n\
         COMMIT\n"
    );
    r
}

/// A public server on the internet (DHT node, relay): only the TTL rule.
pub(crate) fn public_host() -> String {
    format!(
        "*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
         -A PREROUTING -i eth0 -m ttl --ttl-lt {MIN_ARRIVAL_TTL} -j DROP\n\
         COMMIT\n"
    )
}
