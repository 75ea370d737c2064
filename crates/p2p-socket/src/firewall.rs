//! The kinds of NAT, as hyperdht's `FIREWALL` constants name them: what both sides of a punch
//! tell each other, and what an error reports. Judging which one we are behind is `nat`'s work.

use peeroxide_dht::hyperdht_messages::{
    FIREWALL_CONSISTENT, FIREWALL_OPEN, FIREWALL_RANDOM, FIREWALL_UNKNOWN,
};

/// How a NAT maps our socket, as hyperdht's `FIREWALL` constants encode it on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Firewall {
    /// Not known (yet).
    #[default]
    Unknown,
    /// Reachable from anywhere: no NAT or firewall filters unsolicited packets.
    Open,
    /// Same public port for every destination (a cone NAT).
    Consistent,
    /// A new public port per destination (a symmetric NAT).
    Random,
}

impl Firewall {
    pub(crate) fn from_wire(v: u64) -> Firewall {
        match v {
            FIREWALL_OPEN => Firewall::Open,
            FIREWALL_CONSISTENT => Firewall::Consistent,
            FIREWALL_RANDOM => Firewall::Random,
            _ => Firewall::Unknown,
        }
    }

    pub(crate) fn wire(self) -> u64 {
        match self {
            Firewall::Unknown => FIREWALL_UNKNOWN,
            Firewall::Open => FIREWALL_OPEN,
            Firewall::Consistent => FIREWALL_CONSISTENT,
            Firewall::Random => FIREWALL_RANDOM,
        }
    }

    /// For punching, an open side behaves like a consistent one: its port never changes.
    pub(crate) fn coerced(self) -> Firewall {
        match self {
            Firewall::Open => Firewall::Consistent,
            other => other,
        }
    }

    /// A word for log lines and error messages.
    pub fn describe(self) -> &'static str {
        match self {
            Firewall::Unknown => "unknown NAT",
            Firewall::Open => "no NAT (open)",
            Firewall::Consistent => "consistent (cone) NAT",
            Firewall::Random => "randomising (symmetric) NAT",
        }
    }
}

impl std::fmt::Display for Firewall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.describe())
    }
}
