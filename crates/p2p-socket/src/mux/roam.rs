//! The connecting side of roaming (docs/roaming.md): when we move to another address, or the
//! shared connection stops hearing the sharer, the pool's sessions are resumed over a fresh path
//! ([`crate::roaming::resume`]) instead of being lost with every stream on it.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{info, warn};

use super::{Mux, Pool};
use crate::lock::lock;
use crate::peer::{Link, Path};
use crate::roaming::{resume, ResumeError, Ticket};

/// How often the session's stream is looked at for a stall.
const LOOK_EVERY: Duration = Duration::from_millis(250);
/// Retransmission timeouts in a row, with nothing heard meanwhile, that make a stall: the
/// path is dead (one timeout is a loss; two at 200 ms and 600 ms are silence). UDX itself
/// gives up only after 15 s without progress, so a resume begun at the second has time to land.
const STALL_TIMEOUTS: u64 = 2;
/// The most a resume's new connection may take to open: less than an attempt's 45 s, and no
/// more than UDX waits without progress before it gives the session's stream up. The
/// connection's watchdog holds off while a resume runs: this, then the exchange of request
/// and answer (bounded in [`crate::roaming`]).
const RESUME_LIMIT: Duration = Duration::from_secs(15);

/// A session of the pool as far as roaming goes: its ticket and the connection it began on.
#[derive(Clone)]
pub(super) struct Roamable {
    pub(super) ticket: Ticket,
    pub(super) link: Link,
    /// The session's connection, to tell whether it still runs.
    pub(super) mux: Mux,
}

impl Roamable {
    /// The session a freshly opened connection may roam with; none when the sharer does not
    /// roam or the path is a relay's (the relay pairs the stream by its ids: it does not move).
    pub(super) fn of(link: &Link, path: Path, mux: &Mux) -> Option<Roamable> {
        let ticket = link.ticket.clone()?;
        (path != Path::Relayed).then(|| Roamable {
            ticket,
            link: link.clone(),
            mux: mux.clone(),
        })
    }
}

/// Why a resume is tried.
#[derive(Debug, Clone, Copy)]
enum Cause {
    Moved,
    Stalled,
}

/// What the stream had done when it last made progress.
#[derive(Default)]
struct Progress {
    received: u64,
    timeouts: u64,
}

impl Progress {
    /// Whether the stream stalled since `self`; keeps the figures of its last progress.
    fn stalled(&mut self, link: &Link) -> bool {
        let stats = link.stream.stats();
        if stats.packets_received != self.received || stats.rto_timeouts < self.timeouts {
            *self = Progress {
                received: stats.packets_received,
                timeouts: stats.rto_timeouts,
            };
            return false;
        }
        if stats.rto_timeouts >= self.timeouts + STALL_TIMEOUTS {
            // Counted once: the next stall needs further timeouts.
            self.timeouts = stats.rto_timeouts;
            return true;
        }
        false
    }
}

/// Follows `pool`'s sessions while the pool lives: resumes each when `moves` counts a move,
/// or when its stream stalls.
pub(super) fn follow(pool: Weak<Pool>, mut moves: watch::Receiver<u64>) {
    tokio::spawn(async move {
        let mut look = tokio::time::interval(LOOK_EVERY);
        look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Every session that still runs: the pool's current one, and earlier ones it retired
        // (put no new streams on) that still carry streams, which must roam as well.
        let mut sessions: Vec<(Roamable, Progress)> = Vec::new();
        loop {
            let cause = tokio::select! {
                changed = moves.changed() => match changed {
                    Ok(()) => Cause::Moved,
                    // The connector stopped: so did the pool.
                    Err(_) => return,
                },
                _ = look.tick() => Cause::Stalled,
            };
            let Some(pool) = pool.upgrade() else { return };
            sessions.extend(
                lock(&pool.roaming)
                    .drain(..)
                    .map(|s| (s, Progress::default())),
            );
            // An ended session has nothing to resume: the next local connection opens anew.
            sessions.retain(|(s, _)| !s.mux.is_closed());
            for (session, progress) in &mut sessions {
                if matches!(cause, Cause::Stalled) && !progress.stalled(&session.link) {
                    continue;
                }
                resume_session(&pool, session, cause).await;
                // Whatever the resume did, the stall count starts again from here.
                *progress = Progress::default();
                progress.stalled(&session.link);
            }
        }
    });
}

async fn resume_session(pool: &Arc<Pool>, session: &Roamable, cause: Cause) {
    let started = Instant::now();
    let _resuming = session.mux.resuming();
    info!(?cause, session = ?session.ticket, "resuming the shared connection over a new path");
    if matches!(cause, Cause::Stalled) {
        pool.connector().forget_punched_route();
    }
    let resumed = match pool.connector().open_resuming(RESUME_LIMIT).await {
        Ok((peer, link, path)) => resume(&session.ticket, &session.link, (peer, link, path))
            .await
            .map(|()| path),
        Err(e) => Err(ResumeError::Dial(Box::new(e))),
    };
    match resumed {
        Ok(path) => info!(
            ?cause,
            %path,
            took_ms = started.elapsed().as_millis() as u64,
            "resumed the shared connection over a new path; its streams go on"
        ),
        // The session stays on its old path: it may still work (a new interface, not a lost
        // one); if not, its stream times out and every stream on it is reset, never left
        // hanging, and the next local connection opens afresh.
        Err(e) => warn!(
            ?cause,
            error = %e,
            took_ms = started.elapsed().as_millis() as u64,
            "could not resume the shared connection over a new path; if the old one is gone its streams are reset and new connections open afresh"
        ),
    }
}
