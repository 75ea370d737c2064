//! Reaching the sharer again after it went away (stopped, restarted, moved to a new address):
//! a local connection that cannot reach it now tries again with growing pauses, for at most
//! [`ATTEMPT_TIMEOUT`] in all, and is then closed with the reason logged, never left hanging.
//! Consecutive failures are counted across connections, so the log tells how long the sharer
//! has been out of reach.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::dialer::ATTEMPT_TIMEOUT;
use crate::error::{Error, Result};
use crate::events::{Event, Events};

/// The pause after the first failure; it doubles with each failure in a row.
const FIRST_PAUSE: Duration = Duration::from_millis(500);
/// The longest pause: a sharer that comes back is found by a waiting connection within this.
const MAX_PAUSE: Duration = Duration::from_secs(4);

/// The pause before try number `failures + 1`, after `failures` failures in a row.
pub(crate) fn pause_after(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FIRST_PAUSE.saturating_mul(1 << doublings).min(MAX_PAUSE)
}

/// Whether trying again may help: not when the sharer speaks another protocol, nor when it
/// refused our key (it would refuse it again; the local program should hear so at once).
fn worth_retrying(e: &Error) -> bool {
    !matches!(e, Error::Incompatible { .. } | Error::Refused { .. })
}

/// Consecutive failed attempts to reach the sharer, over all local connections.
#[derive(Default)]
pub(crate) struct Reconnect {
    failures: AtomicU32,
}

impl Reconnect {
    /// What `attempt` opens for local connection `n` (given the time left), retried until
    /// [`ATTEMPT_TIMEOUT`] has passed since it began. Each retry, and getting through after
    /// failures, is also told to `events`.
    pub(crate) async fn open<T, F, Fut>(&self, n: u64, events: &Events, attempt: F) -> Result<T>
    where
        F: Fn(Duration) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let deadline = Instant::now() + ATTEMPT_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match attempt(left).await {
                Ok(opened) => {
                    let failed = self.failures.swap(0, Ordering::Relaxed);
                    if failed > 0 {
                        info!(
                            connection = n,
                            failed_attempts = failed,
                            "reached the sharer again"
                        );
                        events.emit(Event::Reconnected {
                            id: n,
                            failed_attempts: failed,
                        });
                    }
                    return Ok(opened);
                }
                Err(e) => {
                    let attempt = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
                    let pause = pause_after(attempt);
                    if !worth_retrying(&e) || Instant::now() + pause >= deadline {
                        return Err(e);
                    }
                    warn!(
                        connection = n,
                        attempt,
                        next_in_ms = pause.as_millis() as u64,
                        error = %e,
                        "could not reach the sharer; reconnecting"
                    );
                    events.emit(Event::Reconnecting {
                        id: n,
                        attempt,
                        delay: pause,
                        reason: e.to_string(),
                    });
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_cap() {
        let pauses: Vec<u64> = (1..=6).map(|f| pause_after(f).as_millis() as u64).collect();
        assert_eq!(pauses, [500, 1000, 2000, 4000, 4000, 4000]);
        assert_eq!(pause_after(u32::MAX), MAX_PAUSE);
        assert_eq!(pause_after(0), FIRST_PAUSE);
    }

    /// A connection that gets through on the third try tells its two retries (with their
    /// pauses and reasons) and then that it got through, in that order.
    #[tokio::test]
    async fn retries_and_the_return_are_events() {
        let events = Events::new();
        let mut seen = events.subscribe();
        let reconnect = Reconnect::default();
        let tries = AtomicU32::new(0);
        let opened = reconnect
            .open(7, &events, |_| async {
                if tries.fetch_add(1, Ordering::Relaxed) < 2 {
                    Err(Error::AttemptTimedOut {
                        after: Duration::from_secs(1),
                        stage: crate::error::Stage::Lookup,
                    })
                } else {
                    Ok("open")
                }
            })
            .await;
        assert_eq!(opened.unwrap(), "open");
        let mut got = Vec::new();
        while let Ok(event) = seen.try_recv() {
            got.push(event);
        }
        let reason = |attempt: usize| match &got[attempt - 1] {
            Event::Reconnecting {
                id: 7,
                attempt: a,
                delay,
                reason,
            } if *a == attempt as u32 && *delay == pause_after(*a) => reason.clone(),
            other => panic!("retry {attempt}: {other:?}"),
        };
        assert!(reason(1).contains("gave up"), "{got:?}");
        reason(2);
        assert_eq!(
            got[2],
            Event::Reconnected {
                id: 7,
                failed_attempts: 2
            }
        );
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn a_refusal_or_another_protocol_is_final() {
        let refused = Error::Refused {
            client: crate::identity::KeyPair::generate().public_key(),
        };
        assert!(!worth_retrying(&refused));
        let gone = Error::AttemptTimedOut {
            after: Duration::from_secs(1),
            stage: crate::error::Stage::Handshake,
        };
        assert!(worth_retrying(&gone));
    }
}
