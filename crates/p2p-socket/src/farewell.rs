//! Saying goodbye when a share or a connect stops (SIGINT, SIGTERM, `close`): every open
//! connection tells its peer at once (a multiplexed one sends CLOSE, a raw one ends its
//! transport stream), instead of leaving the peer to find out from unanswered bytes seconds
//! later. The owner hands each connection a [`Guard`] (made by [`Guards`], which whoever
//! accepts connections keeps); [`Farewell::part`] tells them all and waits, bounded, until
//! they are done.

use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::debug;

/// How long stopping waits for the connections to say goodbye.
pub(crate) const PARTING: Duration = Duration::from_secs(1);
/// After the last goodbye was handed to the transport, the time its task gets to put the
/// packets on the wire before the process may end.
const LAST_PACKETS: Duration = Duration::from_millis(50);

/// The owner's side: tells every [`Guard`] to stop.
pub(crate) struct Farewell {
    stopping: watch::Sender<bool>,
    /// Cloned into every guard; the receiver sees the channel close when all are gone.
    alive: mpsc::Sender<()>,
    done: mpsc::Receiver<()>,
}

/// Makes a [`Guard`] per connection; keeping it does not hold up [`Farewell::part`].
#[derive(Clone)]
pub(crate) struct Guards {
    stopping: watch::Receiver<bool>,
    alive: mpsc::WeakSender<()>,
}

/// A connection's side: it says goodbye once [`Guard::stopping`] resolves, and is done when
/// the guard is dropped.
pub(crate) struct Guard {
    stopping: watch::Receiver<bool>,
    /// None once everything parted: such a connection is told to stop at once.
    _alive: Option<mpsc::Sender<()>>,
}

impl Farewell {
    pub(crate) fn new() -> Farewell {
        let (alive, done) = mpsc::channel(1);
        Farewell {
            stopping: watch::channel(false).0,
            alive,
            done,
        }
    }

    /// What hands out the guards.
    pub(crate) fn guards(&self) -> Guards {
        Guards {
            stopping: self.stopping.subscribe(),
            alive: self.alive.downgrade(),
        }
    }

    /// Tells every connection to say goodbye and waits until all did, at most `within`.
    pub(crate) async fn part(self, within: Duration) {
        let Farewell {
            stopping,
            alive,
            mut done,
        } = self;
        stopping.send_replace(true);
        drop(alive);
        let all = tokio::time::timeout(within, done.recv()).await.is_ok();
        debug!(all, "said goodbye to the open connections");
        tokio::time::sleep(LAST_PACKETS).await;
    }
}

impl Guards {
    /// A guard for one more connection.
    pub(crate) fn guard(&self) -> Guard {
        Guard {
            stopping: self.stopping.clone(),
            _alive: self.alive.upgrade(),
        }
    }
}

impl Guard {
    /// Resolves once the owner stops (at once if it has); never, while it runs.
    pub(crate) async fn stopping(&mut self) {
        if self.stopping.wait_for(|s| *s).await.is_err() {
            // The owner is gone without parting: nothing will ever tell us to stop.
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[tokio::test]
    async fn parting_tells_every_guard_and_waits_for_them_within_the_bound() {
        let farewell = Farewell::new();
        let guards = farewell.guards();
        let mut quick = guards.guard();
        let slow = guards.guard();
        let said = tokio::spawn(async move {
            quick.stopping().await;
        });
        // One that never lets go: parting still ends, after the bound.
        let started = Instant::now();
        farewell.part(Duration::from_millis(300)).await;
        assert!(said.await.is_ok());
        assert!(started.elapsed() >= Duration::from_millis(300));
        drop(slow);

        let farewell = Farewell::new();
        let guards = farewell.guards();
        let mut late = guards.guard();
        let waiter = tokio::spawn(async move { late.stopping().await });
        let started = Instant::now();
        farewell.part(Duration::from_secs(10)).await;
        waiter.await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no wait once all are done"
        );
        // The factory outlives the parting: a connection that arrives now stops at once.
        let mut after = guards.guard();
        tokio::time::timeout(Duration::from_secs(5), after.stopping())
            .await
            .unwrap();
    }
}
