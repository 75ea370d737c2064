//! Dialing the sharer when the connect starts (docs/warm.md), so
//! that the first local connection does not pay the lookup, handshake and punch before its
//! first byte, and a sharer that cannot be reached is reported before any program connects.
//!
//! One attempt, bounded like any other ([`ATTEMPT_TIMEOUT`]), and no retries: a failure is
//! said once, and the first local connection then dials as it would have anyway.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::pool::{Dialed, Pool};
use crate::dialer::ATTEMPT_TIMEOUT;
use crate::error::Error;
use crate::events::{Event, Events};
use crate::identity::PublicKey;
use crate::lock::lock;

/// How long a raw connection dialed at start waits for the first local connection before it
/// is closed. A raw sharer (Node, holesail, hypertele) connects to its service for each of our
/// connections, so an unused one costs the service a connection that carries nothing: kept
/// long enough for someone who starts the connect and then types a command, short enough
/// that the service is not held open by nobody.
pub(crate) const SPARE_FOR: Duration = Duration::from_secs(15);

impl Pool {
    /// Opens the connection the first local connection will use, unless one got there first,
    /// and reports the outcome in the log and in `events`. A raw one is closed again after
    /// [`SPARE_FOR`] if no local connection took it.
    pub(crate) async fn warm(&self, remote: PublicKey, events: &Events) {
        let started = Instant::now();
        let mut current = self.current.lock().await;
        if current.is_some() || self.raw.load(Ordering::Relaxed) {
            return;
        }
        let dialed = match self.dial(ATTEMPT_TIMEOUT).await {
            Ok(dialed) => dialed,
            Err(e) => {
                warn!(
                    error = %e,
                    waited_ms = started.elapsed().as_millis() as u64,
                    "could not reach the sharer at start; still listening, and each local connection tries again. {}",
                    advice(&e)
                );
                events.emit(Event::SharerUnreachable {
                    key: remote,
                    reason: e.to_string(),
                });
                return;
            }
        };
        let took = started.elapsed();
        let (path, peer, multiplexed) = match &dialed {
            Dialed::Mux(c) => (c.path, c.peer, true),
            Dialed::Raw(raw) => (raw.1, raw.2, false),
        };
        info!(
            %path,
            peer = ?peer,
            multiplexed,
            took_ms = took.as_millis() as u64,
            "connected to the sharer at start; the first local connection need not wait for it"
        );
        events.emit(Event::SharerReached {
            key: remote,
            path,
            peer,
            multiplexed,
            took,
        });
        match dialed {
            Dialed::Mux(c) => *current = Some(c),
            Dialed::Raw(raw) => {
                *lock(&self.spare) = Some(*raw);
                // Local connections dial in parallel from now on; only the spare waits.
                drop(current);
                tokio::time::sleep(SPARE_FOR).await;
                if lock(&self.spare).take().is_some() {
                    info!(
                        unused_for_s = SPARE_FOR.as_secs(),
                        "closed the connection dialed at start: no local connection came for it, and the sharer does not multiplex"
                    );
                }
            }
        }
    }
}

/// What the user can do about a failure to reach the sharer.
fn advice(e: &Error) -> &'static str {
    match e {
        Error::Refused { .. } => "The sharer refused our key: ask its owner to allow it (share --allow KEY).",
        _ => "Is the share running, and is the key right? If the two cannot reach each other directly, name a relay with --relay.",
    }
}
