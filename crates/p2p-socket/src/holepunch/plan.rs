//! What a punch does, decided from what the two sides know and nothing else: which pairs of
//! NATs can be punched, and how. The rule that two randomising NATs cannot be punched is
//! stated here, once; the rounds and the sockets only carry out the plan.

use std::net::{IpAddr, SocketAddr};

use crate::nat::Firewall;

/// How to punch, once both sides said what their NATs do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Both NATs keep one port (or one side has none): probe the other side's addresses,
    /// each with whether a DHT node confirmed it.
    Probe(Vec<(SocketAddr, bool)>),
    /// Ours keeps one port, theirs picks a new one per destination: spray probes at random
    /// ports of their (confirmed) host until one hits a mapping their birthday sockets opened.
    Spray(IpAddr),
    /// Ours picks a new port per destination: open many sockets, each probing their
    /// (confirmed) address, so one of our mappings is where their probes land.
    Birthday(SocketAddr),
}

impl Plan {
    /// Whether the plan involves a randomising NAT: many sockets (ours) or many probes
    /// (theirs) for the whole punch, which a sharer does for one client at a time.
    pub(crate) fn is_random(&self) -> bool {
        matches!(self, Plan::Spray(_) | Plan::Birthday(_))
    }
}

/// Why there is no plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoPlan {
    /// Our NAT could not be classified.
    OursUnknown,
    /// The other side's NAT could not be classified.
    TheirsUnknown,
    /// Both NATs pick a new port per destination: neither side can predict anything, only a
    /// relay gets through.
    BothRandom,
    /// The other side listed no address.
    NoAddress,
    /// A randomising NAT is involved and no address of the other side is confirmed: spraying
    /// probes at a made-up host would make us a reflector.
    Unverified,
}

impl NoPlan {
    /// A few words for logs and errors.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            NoPlan::OursUnknown => "our NAT could not be classified",
            NoPlan::TheirsUnknown => "the other side's NAT could not be classified",
            NoPlan::BothRandom => {
                "both sides are behind randomising (symmetric) NATs: a relay is needed"
            }
            NoPlan::NoAddress => "the other side listed no address",
            NoPlan::Unverified => {
                "no address of the other side is confirmed, and a randomising NAT needs one"
            }
        }
    }
}

/// Whether punching can work between these NATs at all, before any address is known (a side
/// that does not know the other's NAT yet may still go on).
pub(crate) fn feasible(ours: Firewall, theirs: Firewall) -> Result<(), NoPlan> {
    match (ours.coerced(), theirs.coerced()) {
        (Firewall::Unknown, _) => Err(NoPlan::OursUnknown),
        (Firewall::Random, Firewall::Random) => Err(NoPlan::BothRandom),
        _ => Ok(()),
    }
}

/// The punch between our NAT and theirs, given their addresses (each with whether it is
/// confirmed).
pub(crate) fn plan(
    ours: Firewall,
    theirs: Firewall,
    addresses: &[(SocketAddr, bool)],
) -> Result<Plan, NoPlan> {
    feasible(ours, theirs)?;
    if addresses.is_empty() {
        return Err(NoPlan::NoAddress);
    }
    let verified = || {
        addresses
            .iter()
            .find(|(_, v)| *v)
            .map(|(a, _)| *a)
            .ok_or(NoPlan::Unverified)
    };
    match (ours.coerced(), theirs.coerced()) {
        (Firewall::Consistent, Firewall::Consistent) => Ok(Plan::Probe(addresses.to_vec())),
        (Firewall::Consistent, Firewall::Random) => Ok(Plan::Spray(verified()?.ip())),
        (Firewall::Random, Firewall::Consistent) => Ok(Plan::Birthday(verified()?)),
        _ => Err(NoPlan::TheirsUnknown),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Firewall::{Consistent as C, Open as O, Random as R, Unknown as U};

    #[test]
    fn feasibility() {
        // (ours, theirs, feasible)
        let table = [
            (U, C, Err(NoPlan::OursUnknown)),
            (U, R, Err(NoPlan::OursUnknown)),
            (R, R, Err(NoPlan::BothRandom)),
            (C, U, Ok(())),
            (R, U, Ok(())),
            (O, R, Ok(())),
            (C, C, Ok(())),
            (R, C, Ok(())),
        ];
        for (ours, theirs, want) in table {
            assert_eq!(feasible(ours, theirs), want, "{ours:?} {theirs:?}");
        }
    }

    #[test]
    fn plans() {
        let a: SocketAddr = "203.0.113.1:4000".parse().unwrap();
        let b: SocketAddr = "198.51.100.2:5000".parse().unwrap();
        let unconfirmed = vec![(a, false)];
        let confirmed = vec![(a, false), (b, true)];
        // (ours, theirs, their addresses, plan)
        let table = [
            (
                C,
                C,
                unconfirmed.clone(),
                Ok(Plan::Probe(unconfirmed.clone())),
            ),
            (O, C, confirmed.clone(), Ok(Plan::Probe(confirmed.clone()))),
            (C, O, confirmed.clone(), Ok(Plan::Probe(confirmed.clone()))),
            (C, R, confirmed.clone(), Ok(Plan::Spray(b.ip()))),
            (O, R, confirmed.clone(), Ok(Plan::Spray(b.ip()))),
            (R, C, confirmed.clone(), Ok(Plan::Birthday(b))),
            (R, O, confirmed.clone(), Ok(Plan::Birthday(b))),
            (C, R, unconfirmed.clone(), Err(NoPlan::Unverified)),
            (R, C, unconfirmed.clone(), Err(NoPlan::Unverified)),
            (R, R, confirmed.clone(), Err(NoPlan::BothRandom)),
            (U, C, confirmed.clone(), Err(NoPlan::OursUnknown)),
            (C, U, confirmed.clone(), Err(NoPlan::TheirsUnknown)),
            (C, C, vec![], Err(NoPlan::NoAddress)),
        ];
        for (ours, theirs, addresses, want) in table {
            let got = plan(ours, theirs, &addresses);
            assert_eq!(got, want, "{ours:?} {theirs:?} {addresses:?}");
        }
        assert!(Plan::Spray(b.ip()).is_random());
        assert!(Plan::Birthday(b).is_random());
        assert!(!Plan::Probe(confirmed).is_random());
    }
}
