//! Telling a live shared connection from one whose path died while it was idle
//! (docs/multiplexing.md, "Liveness"). The transport notices a dead peer only when bytes go
//! unanswered for seconds; a local connection put on such a connection in the meantime would
//! fail. So before a stream goes on a connection that heard nothing for a while, the connecting
//! side sends a PING and waits a few round trips for the PONG. Streams already on a connection
//! whose peer went silent after they sent are failed the same way, instead of hanging until
//! the transport gives up ([`Mux::watchdog`]).

use std::time::{Duration, Instant};

use tracing::{debug, info};

use super::proto;
use super::Mux;
use crate::lock::lock;

/// A shared connection that heard nothing from the sharer for this long is probed before a
/// stream goes on it: long enough that a busy connection never is, short enough that a path
/// that died while idle is noticed before the next local connection fails on it.
pub(crate) const IDLE: Duration = Duration::from_secs(1);
/// How often the watchdog looks at a connection's streams.
const WATCH_EVERY: Duration = Duration::from_millis(500);
/// PINGs the watchdog sends a peer that owes an answer, one a look (5 s in all), hearing
/// nothing, before the connection ends. Not one PING's wait: at 30 % loss each way (the soak's
/// loss burst) half of all round trips fail and a PONG waits behind data being retransmitted
/// after a backed-off timeout (up to 1 s), so a single unanswered PING ended healthy
/// connections with their streams, where the same burst without multiplexing was survived.
/// Counted in looks, not in time since the peer was last heard: after our own process was
/// stopped (a laptop's lid), that time is long but the peer has not been asked yet. The
/// transport itself gives up only after 15 s without progress.
const ASKS: u32 = 10;

/// The shortest wait for a PONG: a loaded machine or a lossy path delays one by tens of
/// milliseconds even when the round trip is short.
const WAIT_AT_LEAST: Duration = Duration::from_millis(200);
/// The longest: a local connection waits no longer than this for a dead path to be noticed.
const WAIT_AT_MOST: Duration = Duration::from_secs(1);
/// Round trips a PONG may take.
const ROUND_TRIPS: u32 = 4;

/// How long to wait for a PONG when the last one took `rtt` (none measured: the most).
fn wait_for_pong(rtt: Option<Duration>) -> Duration {
    rtt.map_or(WAIT_AT_MOST, |rtt| {
        (rtt * ROUND_TRIPS).clamp(WAIT_AT_LEAST, WAIT_AT_MOST)
    })
}

impl Mux {
    /// Sends a PING; returns its number, or none when the connection ended.
    pub(super) fn ping(&self) -> Option<u32> {
        let mut inner = lock(&self.shared.inner);
        if inner.closed.is_some() {
            return None;
        }
        let n = inner.pinged.0.wrapping_add(1);
        inner.pinged = (n, Instant::now());
        // A full control queue means the peer reads nothing of ours: no answer will come.
        self.shared.out.control_now(proto::ping(n)).then_some(())?;
        Some(n)
    }

    /// Whether a new stream may go on this connection. It may when the connection is open and
    /// heard from the peer within `idle`; past that (or always when `doubt`), only when the
    /// peer answers a PING within a few round trips. A peer that cannot be pinged (an older
    /// p2p-socket) is trusted unless there is `doubt`.
    pub(crate) async fn answers(&self, idle: Duration, doubt: bool) -> bool {
        if lock(&self.shared.inner).retired {
            return false;
        }
        self.probe(idle, doubt).await
    }

    /// [`Mux::answers`], also for a retired connection.
    async fn probe(&self, idle: Duration, doubt: bool) -> bool {
        let (pinging, quiet, wait) = {
            let inner = lock(&self.shared.inner);
            if inner.closed.is_some() {
                return false;
            }
            (
                inner.pinging,
                inner.heard.elapsed(),
                wait_for_pong(inner.rtt),
            )
        };
        if !doubt && quiet < idle {
            return true;
        }
        if !pinging {
            return !doubt;
        }
        let mut pongs = self.shared.pongs.subscribe();
        let mut closed = self.shared.closed.subscribe();
        let Some(n) = self.ping() else {
            return false;
        };
        let answered = tokio::select! {
            r = tokio::time::timeout(wait, pongs.wait_for(|last| *last >= n)) => matches!(r, Ok(Ok(_))),
            _ = closed.wait_for(|c| *c) => false,
        };
        debug!(
            answered,
            quiet_ms = quiet.as_millis() as u64,
            waited_ms = wait.as_millis() as u64,
            "probed the shared connection before putting a stream on it"
        );
        answered
    }

    /// Runs while the connection does: when a stream sent data and the peer has been silent
    /// since for [`IDLE`], the peer is sent a PING at each look; when [`ASKS`] of them in a row
    /// go unanswered, the connection ends (its streams fail, their local connections are reset).
    /// An idle stream that sent nothing is left alone, however long the quiet: only a peer
    /// that owes us an answer is asked. A connection being resumed is left to the resume.
    pub(super) async fn watchdog(self) {
        let mut closed = self.shared.closed.subscribe();
        let mut every = tokio::time::interval(WATCH_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // PINGs sent since the peer was last heard.
        let mut asked = 0;
        loop {
            tokio::select! {
                _ = closed.wait_for(|c| *c) => return,
                _ = every.tick() => {}
            }
            let (owed, quiet) = {
                let inner = lock(&self.shared.inner);
                let owed = inner.pinging
                    && !inner.resuming
                    && !inner.streams.is_empty()
                    && inner.sent > inner.heard;
                (owed, inner.heard.elapsed())
            };
            if !owed || quiet < IDLE {
                asked = 0;
                continue;
            }
            if asked >= ASKS {
                info!(
                    quiet_ms = quiet.as_millis() as u64,
                    pings = asked,
                    "the peer stopped answering while streams waited for it; ending the connection"
                );
                self.close("it did not answer a ping");
                return;
            }
            // Any frame answers; on a lossy path one PING or its PONG may well be lost (or
            // wait behind lost data): there is another at the next look.
            self.ping();
            asked += 1;
        }
    }

    /// Marks the connection as being moved to a new path until the result is dropped: its
    /// watchdog does not end it meanwhile. Ending it would lose every stream that the resume,
    /// bounded in time by its caller, is about to carry over (the soak saw a session resumed
    /// 3 s after the sharing home moved, but ended by the watchdog 0.5 s into the resume).
    pub(super) fn resuming(&self) -> Resuming {
        lock(&self.shared.inner).resuming = true;
        Resuming(self.clone())
    }

    /// Puts no new streams on this connection: it ends with its last stream (at once when it
    /// has none), telling the peer `why`. Streams on it go on meanwhile, in case the path
    /// comes back.
    pub(crate) fn retire(&self, why: &str) {
        let empty = {
            let mut inner = lock(&self.shared.inner);
            inner.retired = true;
            inner.streams.is_empty()
        };
        if empty {
            self.close(why);
        }
    }
}

/// A resume under way ([`Mux::resuming`]); the watchdog looks again once it is dropped.
pub(super) struct Resuming(Mux);

impl Drop for Resuming {
    fn drop(&mut self) {
        lock(&self.0.shared.inner).resuming = false;
    }
}

#[cfg(test)]
mod tests {
    use super::super::driver::tests::{closed_with, next, no_guard, pair, Hand, SMALL};
    use super::super::proto::{Limits, Role};
    use super::*;

    /// The connecting side of a connection where both agreed on PING.
    fn pinging_client(peer: crate::peer::PeerStream) -> Mux {
        Mux::start(peer, Role::Client, Limits::default(), true, no_guard()).0
    }

    #[tokio::test]
    async fn a_peer_that_answers_pings_is_alive_and_a_silent_one_is_not() {
        let (client_end, share) = pair().await;
        let (_share, _accepted) =
            Mux::start(share, Role::Server, Limits::default(), true, no_guard());
        let mux = pinging_client(client_end);
        assert!(mux.answers(Duration::ZERO, true).await);

        // Reads its transport (so the path is fine) but never answers: as good as dead.
        let (client_end, silent) = pair().await;
        let _silent = Hand::new(silent);
        let mux = pinging_client(client_end);
        assert!(
            mux.answers(Duration::from_secs(60), false).await,
            "heard from recently enough: no probe"
        );
        let started = Instant::now();
        assert!(!mux.answers(Duration::ZERO, false).await);
        assert!(
            started.elapsed() < WAIT_AT_MOST * 2,
            "{:?}",
            started.elapsed()
        );
    }

    /// Whether the connection whose `closed` this is stays open for `d`.
    async fn stays_open(closed: &mut tokio::sync::watch::Receiver<bool>, d: Duration) -> bool {
        tokio::time::timeout(d, closed.wait_for(|c| *c))
            .await
            .is_err()
    }

    /// The longest the watchdog takes to end a connection whose peer stays silent.
    const SILENT_PEER_ENDS_WITHIN: Duration = IDLE
        .saturating_add(WATCH_EVERY.saturating_mul(ASKS + 1))
        .saturating_add(Duration::from_secs(1));

    /// Sends on `stream`, so that its peer owes an answer.
    async fn owe_an_answer(stream: &super::super::MuxStream) {
        let sender = super::super::driver::Sender {
            id: stream.id,
            shared: &stream.shared,
            wake: &stream.wake,
        };
        sender.send(b"request").await.unwrap();
    }

    #[tokio::test]
    async fn streams_waiting_on_a_silent_peer_fail_and_idle_ones_are_left_alone() {
        let (client_end, silent) = pair().await;
        let _silent = Hand::new(silent);
        let mux = pinging_client(client_end);
        let idle = mux.open().await.unwrap();
        let mut closed = mux.shared.closed.subscribe();
        let quiet = stays_open(&mut closed, IDLE * 3).await;
        assert!(quiet, "a stream that sent nothing owes no answer");

        let waiting = mux.open().await.unwrap();
        owe_an_answer(&waiting).await;
        let started = Instant::now();
        tokio::time::timeout(Duration::from_secs(10), closed.wait_for(|c| *c))
            .await
            .expect("the connection ends")
            .unwrap();
        assert!(started.elapsed() < SILENT_PEER_ENDS_WITHIN);
        let why = mux.shared.closed_reason().unwrap_or_default();
        assert!(why.contains("did not answer a ping"), "{why}");
        drop(idle);
    }

    #[tokio::test]
    async fn a_peer_whose_answers_come_late_but_come_keeps_its_connection() {
        let (client_end, slow) = pair().await;
        let mut slow = Hand::new(slow);
        // Every PONG a second and a half late, past any one PING's wait: a lossy path where
        // the answer is retransmitted after a backed-off timeout.
        tokio::spawn(async move {
            while let Ok(Some(frame)) = slow.read().await {
                if let Ok(proto::Frame::Ping(n)) = proto::decode(&frame) {
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                    if slow.write(&proto::pong(n)).await.is_err() {
                        return;
                    }
                }
            }
        });
        let mux = pinging_client(client_end);
        let waiting = mux.open().await.unwrap();
        let mut closed = mux.shared.closed.subscribe();
        owe_an_answer(&waiting).await;
        let quiet = stays_open(&mut closed, WATCH_EVERY * ASKS * 2).await;
        assert!(quiet, "a peer that answers, late, is alive");
    }

    #[tokio::test]
    async fn after_our_own_process_slept_the_peer_is_asked_before_it_is_given_up() {
        let (client_end, share) = pair().await;
        let (_share, _accepted) =
            Mux::start(share, Role::Server, Limits::default(), true, no_guard());
        let mux = pinging_client(client_end);
        let _waiting = mux.open().await.unwrap();
        let mut closed = mux.shared.closed.subscribe();
        // What the watchdog finds when the connect wakes from a 20-s SIGSTOP: it sent, and
        // heard nothing for 20 s, because it was not running.
        {
            let mut inner = lock(&mux.shared.inner);
            let now = Instant::now();
            inner.heard = now.checked_sub(Duration::from_secs(20)).unwrap();
            inner.sent = now;
        }
        let quiet = stays_open(&mut closed, WATCH_EVERY * ASKS).await;
        assert!(
            quiet,
            "the peer answers the PING, so the connection goes on"
        );
    }

    #[tokio::test]
    async fn the_watchdog_leaves_a_connection_being_resumed_alone_until_the_resume_ends() {
        let (client_end, silent) = pair().await;
        let _silent = Hand::new(silent);
        let mux = pinging_client(client_end);
        let waiting = mux.open().await.unwrap();
        let mut closed = mux.shared.closed.subscribe();
        let resume = mux.resuming();
        owe_an_answer(&waiting).await;
        // Past the longest the watchdog takes to end a silent connection.
        let spared = SILENT_PEER_ENDS_WITHIN;
        let quiet = stays_open(&mut closed, spared).await;
        assert!(quiet, "a connection being resumed is not ended under it");
        drop(resume);
        tokio::time::timeout(spared, closed.wait_for(|c| *c))
            .await
            .expect("once the resume is over, a silent peer ends the connection")
            .unwrap();
    }

    #[tokio::test]
    async fn a_peer_without_ping_is_trusted_unless_in_doubt() {
        let (client_end, share) = pair().await;
        let mut share = Hand::new(share);
        let (mux, _) = Mux::start(client_end, Role::Client, SMALL, false, no_guard());
        assert!(mux.answers(Duration::ZERO, false).await);
        assert!(!mux.answers(Duration::ZERO, true).await);
        // It never got a PING it would take for a violation: the first frame is our OPEN.
        let _stream = mux.open().await.unwrap();
        assert_eq!(next(&mut share).await, Some(proto::open(1)));
    }

    #[tokio::test]
    async fn a_retired_connection_takes_no_new_streams_and_ends_with_its_last() {
        let (client_end, share) = pair().await;
        let mut share = Hand::new(share);
        let (mux, _) = Mux::start(client_end, Role::Client, SMALL, false, no_guard());
        let stream = mux.open().await.unwrap();
        mux.retire("test");
        assert!(mux.open().await.is_none());
        assert!(!mux.answers(Duration::from_secs(60), false).await);
        stream.refuse();
        let reason = closed_with(&mut share).await;
        assert!(reason.contains("last stream"), "{reason}");
    }

    #[test]
    fn the_wait_for_a_pong_is_a_few_round_trips_within_bounds() {
        let ms = Duration::from_millis;
        assert_eq!(wait_for_pong(None), WAIT_AT_MOST);
        assert_eq!(
            wait_for_pong(Some(Duration::from_micros(80))),
            WAIT_AT_LEAST
        );
        assert_eq!(wait_for_pong(Some(ms(100))), ms(400));
        assert_eq!(wait_for_pong(Some(ms(900))), WAIT_AT_MOST);
    }
}
