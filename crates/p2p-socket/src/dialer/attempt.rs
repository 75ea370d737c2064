//! One attempt to reach the sharer, bounded as a whole: lookup, handshake, punch, data path and
//! relay each have their own timeouts, but together they could add up to minutes, and a local
//! program waiting on a connection must hear within a known time. The attempt records the stage
//! it is at, so a timeout says where it was.

use std::cell::Cell;
use std::future::Future;
use std::time::{Duration, Instant};

use crate::error::{Error, Result, Stage};

/// The most one attempt to reach the sharer may take. A healthy one takes milliseconds on a LAN
/// and a second or two over the internet; a punch between awkward NATs may take tens of
/// seconds, a relay pairing up to 15 s more.
pub(crate) const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(45);

tokio::task_local! {
    static STAGE: Cell<Stage>;
}

/// Records that the attempt running on this task has reached `stage` (outside an attempt, such
/// as the first lookup when the dialer starts, it does nothing).
pub(super) fn enter(stage: Stage) {
    let _ = STAGE.try_with(|s| s.set(stage));
}

/// Runs `attempt`, cut off after `limit` with an error that names the stage it had reached.
pub(super) async fn bounded<T>(
    limit: Duration,
    attempt: impl Future<Output = Result<T>>,
) -> Result<T> {
    let started = Instant::now();
    STAGE
        .scope(Cell::new(Stage::Handshake), async {
            match tokio::time::timeout(limit, attempt).await {
                Ok(done) => done,
                Err(_) => Err(Error::AttemptTimedOut {
                    after: started.elapsed(),
                    stage: STAGE.with(Cell::get),
                }),
            }
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_timeout_names_the_stage_reached() {
        let stuck = async {
            enter(Stage::Lookup);
            enter(Stage::Punch);
            std::future::pending::<()>().await;
            Ok(())
        };
        match bounded(Duration::from_millis(50), stuck).await {
            Err(Error::AttemptTimedOut { stage, after }) => {
                assert_eq!(stage, Stage::Punch);
                assert!(after >= Duration::from_millis(50));
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
        // Nested attempts (a relay's own dialer) keep their own stage.
        let outer = bounded(Duration::from_secs(5), async {
            enter(Stage::Relay);
            let inner = bounded(Duration::from_millis(20), async {
                enter(Stage::Lookup);
                std::future::pending::<Result<()>>().await
            })
            .await;
            assert!(matches!(
                inner,
                Err(Error::AttemptTimedOut {
                    stage: Stage::Lookup,
                    ..
                })
            ));
            Ok(STAGE.with(Cell::get))
        });
        assert_eq!(outer.await.unwrap(), Stage::Relay);
    }
}
