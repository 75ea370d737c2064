//! Connections through a blind relay: when no direct or punched path can be made, and then
//! for the next connections too, for a while, so they need not find out again.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::info;
use udx::UdxStream;

use super::{attempt, Answer, Ask, Connector};
use crate::error::{Error, Result, Stage};
use crate::identity::PublicKey;
use crate::lock::lock;
use crate::nat::Firewall;
use crate::peer::{secure, Link, Path, PeerStream};
use crate::policy::{relay_choice, RelayOffer, RelayPlan};
use crate::relay::client::{token, Paired};

/// How long the sharer may take to come to the relay after we paired there (hyperdht gives a
/// relay pairing 15 s). It pairs when it answers the handshake, so it is usually there first.
const RELAY_PAIR_TIMEOUT: Duration = Duration::from_secs(15);

/// Once NATs that cannot be punched (both randomising) sent a connection to the relay, the
/// next ones go straight to it for this long: the NATs between us will not have changed, and
/// finding out again costs a punch.
const RELAY_STICKY: Duration = Duration::from_secs(10 * 60);

impl Connector {
    /// Whether connections go straight to the relay: forced, or a connection found lately
    /// that nothing else gets through.
    pub(super) fn relay_is_needed(&self) -> bool {
        self.force_relay
            || lock(&self.relayed_since).is_some_and(|since| since.elapsed() < RELAY_STICKY)
    }

    /// Our relay, as a handshake names it: with a fresh token for the pairing.
    pub(super) fn our_offer(&self) -> Option<RelayOffer> {
        self.relay.map(|relay| RelayOffer {
            relay,
            token: token(),
        })
    }

    /// The relay this connection would go through.
    pub(super) fn relay_for(&self, answer: &Answer) -> Option<PublicKey> {
        relay_choice(answer.sharers_relay(), self.our_offer(), false).map(|p| p.offer.relay)
    }

    /// A connection where no direct path could be made (`why`): through the relay the sharer
    /// offered in this handshake, or a new handshake that offers ours.
    pub(super) async fn relay_instead(
        &self,
        answer: &Answer,
        why: Error,
    ) -> Result<(PeerStream, Link, Path)> {
        if self.relay_for(answer).is_none() {
            return Err(Error::NoRelay {
                needed_because: Box::new(why),
            });
        }
        info!(why = %why, "no direct path to the sharer; going through the relay");
        stick_to_relay_if_unpunchable(&self.relayed_since, &why);
        match answer.sharers_relay() {
            Some(_) => self.through_relay(answer, None).await,
            None => self.open_relayed().await,
        }
    }

    /// A connection through a relay from the start: a handshake that names ours.
    pub(super) async fn open_relayed(&self) -> Result<(PeerStream, Link, Path)> {
        let ours = self.our_offer();
        let answer = self.handshake(&Ask::Relay(ours)).await?;
        self.through_relay(&answer, ours).await
    }

    /// Pairs at the relay for the connection `answer` negotiated, with `ours` as we offered it.
    pub(super) async fn through_relay(
        &self,
        answer: &Answer,
        ours: Option<RelayOffer>,
    ) -> Result<(PeerStream, Link, Path)> {
        attempt::enter(Stage::Relay);
        let plan =
            relay_choice(answer.sharers_relay(), ours, false).ok_or_else(|| Error::NoRelay {
                needed_because: Box::new(Error::RelayNeeded {
                    ours: self.our_firewall(),
                    theirs: Firewall::from_wire(answer.remote.firewall),
                }),
            })?;
        let paired = self.pair_at(&plan, None).await?;
        paired.lease.keep_while(&paired.stream.observer());
        secure_relayed(paired.stream, paired.relay_addr, answer).await
    }

    /// Pairs at the relay of `plan`, our stream with `stream_id` (or a fresh id), and aims it
    /// at the relay's stream for us.
    pub(super) async fn pair_at(&self, plan: &RelayPlan, stream_id: Option<u32>) -> Result<Paired> {
        let paired = self
            .relay_clients
            .pair(
                plan.offer.relay,
                plan.offer.token,
                plan.is_initiator,
                RELAY_PAIR_TIMEOUT,
                stream_id,
            )
            .await?;
        paired.stream.connect(paired.relay_id, paired.relay_addr)?;
        Ok(paired)
    }
}

/// The encrypted connection `answer` negotiated, over `stream`, paired at the relay at
/// `relay_addr`.
pub(super) async fn secure_relayed(
    stream: UdxStream,
    relay_addr: SocketAddr,
    answer: &Answer,
) -> Result<(PeerStream, Link, Path)> {
    let (peer, link) = secure(true, stream, &answer.hs, Path::Relayed, Some(relay_addr)).await?;
    Ok((peer, link, Path::Relayed))
}

/// After a punch failed with `why`: only NATs that cannot be punched at all (both randomising)
/// send the next connections straight to the relay for [`RELAY_STICKY`]. A punch that failed in
/// passing (the DHT's answers lost in a burst of loss, a sharer asleep or busy with another
/// punch, a timeout) says nothing about the next one; sticking to the relay on it kept every
/// connection of the next ten minutes there, waiting on it when the relay restarted (15.6 s
/// in the soak).
pub(super) fn stick_to_relay_if_unpunchable(relayed_since: &Mutex<Option<Instant>>, why: &Error) {
    if matches!(why, Error::RelayNeeded { .. }) {
        *lock(relayed_since) = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::PunchFailure;

    fn sticks(why: Error) -> bool {
        let since = Mutex::new(None);
        stick_to_relay_if_unpunchable(&since, &why);
        let stuck = lock(&since).is_some();
        stuck
    }

    #[test]
    fn only_nats_that_cannot_be_punched_make_the_relay_sticky() {
        use Firewall::{Consistent, Random};
        assert!(sticks(Error::RelayNeeded {
            ours: Random,
            theirs: Random,
        }));
        // Failures in passing say nothing about the next punch: lost rounds, a busy or
        // declining sharer, probes that never came back, an attempt out of time.
        let passing = [
            PunchFailure::RoundNotPassed {
                via: "127.0.0.1:1".parse().unwrap(),
                tries: 3,
            },
            PunchFailure::TryLater,
            PunchFailure::Declined,
            PunchFailure::Unclassified { samples: 1 },
            PunchFailure::NoProbeBack {
                rounds: 4,
                waited: Duration::from_secs(25),
            },
        ];
        for failure in passing {
            let why = Error::HolepunchFailed {
                ours: Random,
                theirs: Consistent,
                failure: failure.clone(),
            };
            assert!(!sticks(why), "{failure:?} made the relay sticky");
        }
        assert!(!sticks(Error::NoDataPath {
            path: Path::Punched,
            peer: None,
            waited: Duration::from_secs(10),
        }));
        assert!(!sticks(Error::AttemptTimedOut {
            after: Duration::from_secs(30),
            stage: Stage::Punch,
        }));
    }

    #[test]
    fn a_sticky_relay_is_renewed_by_the_next_unpunchable_pair() {
        let long_ago = Instant::now() - Duration::from_secs(1);
        let since = Mutex::new(Some(long_ago));
        let why = Error::RelayNeeded {
            ours: Firewall::Random,
            theirs: Firewall::Random,
        };
        stick_to_relay_if_unpunchable(&since, &why);
        assert!(lock(&since).is_some_and(|t| t > long_ago));
    }
}
