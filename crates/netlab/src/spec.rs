//! What a lab is made of: its homes, the NAT type of each, and how bad each home's uplink is.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::error::LabError;

/// How a home's router treats the traffic of the host behind it (RFC 4787 terms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Nat {
    /// No NAT: the host has a public address and anyone can reach it.
    Open,
    /// Endpoint-independent mapping: one inside socket keeps one public port whatever the
    /// destination. Filtering is address-and-port-dependent: inbound packets pass only from a
    /// destination the inside has sent to.
    Cone,
    /// Address-and-port-dependent mapping: every new destination gets a new random public port.
    Symmetric,
}

impl Nat {
    pub const ALL: [Nat; 3] = [Nat::Open, Nat::Cone, Nat::Symmetric];

    pub fn as_str(self) -> &'static str {
        match self {
            Nat::Open => "open",
            Nat::Cone => "cone",
            Nat::Symmetric => "symmetric",
        }
    }
}

impl fmt::Display for Nat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Nat {
    type Err = LabError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Nat::ALL
            .into_iter()
            .find(|n| n.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                LabError::Spec(format!(
                    "unknown NAT type {s:?}; use one of open, cone, symmetric"
                ))
            })
    }
}

/// One home: a router with the given NAT in front of one host.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HomeSpec {
    pub nat: Nat,
    /// Share of the packets leaving the home that the uplink drops at random (0.0 to 1.0).
    pub loss: f64,
    /// Time the uplink holds each packet leaving the home.
    pub delay: Duration,
    /// Extra hold, drawn per packet uniformly from 0 to this, on top of `delay`: packets sent
    /// close together overtake each other, as on a Wi-Fi or multipath link.
    pub jitter: Duration,
}

impl HomeSpec {
    pub fn new(nat: Nat) -> Self {
        HomeSpec {
            nat,
            loss: 0.0,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
        }
    }

    pub fn loss(mut self, share: f64) -> Self {
        self.loss = share;
        self
    }

    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    pub fn jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    /// Whether the uplink holds packets at all (and so needs a delay line).
    pub(crate) fn holds(&self) -> bool {
        !self.delay.is_zero() || !self.jitter.is_zero()
    }
}

/// The whole lab: the public part (three DHT hosts and a relay host) is always there; the
/// homes are what a test chooses.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LabSpec {
    pub homes: Vec<HomeSpec>,
}

impl LabSpec {
    /// One home per NAT type given, with clean uplinks.
    pub fn homes(nats: impl IntoIterator<Item = Nat>) -> Self {
        LabSpec {
            homes: nats.into_iter().map(HomeSpec::new).collect(),
        }
    }

    /// The same loss on every home's uplink.
    pub fn loss(mut self, share: f64) -> Self {
        self.homes.iter_mut().for_each(|h| h.loss = share);
        self
    }

    /// The same delay on every home's uplink.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.homes.iter_mut().for_each(|h| h.delay = delay);
        self
    }

    /// The same jitter on every home's uplink.
    pub fn jitter(mut self, jitter: Duration) -> Self {
        self.homes.iter_mut().for_each(|h| h.jitter = jitter);
        self
    }

    pub fn push(mut self, home: HomeSpec) -> Self {
        self.homes.push(home);
        self
    }

    pub(crate) fn validate(&self) -> Result<(), LabError> {
        if self.homes.len() > MAX_HOMES {
            return Err(LabError::Spec(format!(
                "{} homes asked for; the address plan has room for {MAX_HOMES}",
                self.homes.len()
            )));
        }
        for (i, h) in self.homes.iter().enumerate() {
            if !(0.0..1.0).contains(&h.loss) {
                return Err(LabError::Spec(format!(
                    "home {}: loss {} is not a share in [0, 1)",
                    i + 1,
                    h.loss
                )));
            }
            if h.delay + h.jitter > MAX_DELAY {
                return Err(LabError::Spec(format!(
                    "home {}: delay {:?} plus jitter {:?} is more than the {MAX_DELAY:?} the lab supports",
                    i + 1,
                    h.delay,
                    h.jitter
                )));
            }
        }
        Ok(())
    }
}

/// Home k owns 198.18.k.0 on the internet and 10.k.0.0/24 inside, so k stays below 255.
pub const MAX_HOMES: usize = 200;

/// A longer hold would keep too many packets queued in the kernel for the delay line's buffers.
pub const MAX_DELAY: Duration = Duration::from_secs(2);
