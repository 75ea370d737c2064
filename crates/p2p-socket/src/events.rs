//! What a share or a connect is doing, for programs: the CLI's `--json` lines and its status
//! line, an embedder's UI. Logs are for people and their wording changes; events are an
//! interface.
//!
//! Delivery goes through a bounded `tokio::sync::broadcast` channel: sending never waits and
//! never grows, so a consumer that falls behind loses the oldest events (its receiver says how
//! many, [`RecvError::Lagged`](tokio::sync::broadcast::error::RecvError::Lagged)) instead of
//! slowing the tunnel or filling memory. The byte totals are counters beside the channel, so a
//! status display reads them at its own pace and never needs an event per chunk.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;
use tracing::trace;

use crate::identity::PublicKey;
use crate::peer::Path;

/// Events a receiver may fall behind by before it loses the oldest. A share at its connection
/// cap that sees every peer open and close at once emits two per connection; a consumer that
/// prints lines keeps up with far more.
pub const EVENT_BUFFER: usize = 1024;

/// Something a [`Share`](crate::Share) or a [`Connect`](crate::Connect) did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// Ready: a share announced its key, a connect found the sharer and listens.
    Listening {
        /// The share's key (for a connect, the key of the share it reaches).
        key: PublicKey,
        /// The local end: the service a share forwards to, the address a connect listens on
        /// (`host:port`, or `unix:PATH`).
        local: String,
    },
    /// An encrypted connection to a peer opened and its bytes are being piped.
    ConnectionOpened {
        /// The connection's number within this share or connect, from 1.
        id: u64,
        /// The key the peer proved it holds.
        key: PublicKey,
        /// How its packets travel.
        path: Path,
        /// Where the peer's packets come from (the relay's address when relayed).
        peer: Option<SocketAddr>,
    },
    /// A share refused a client whose key is not on its allow list (or, in secret mode, not
    /// the one key pair the string gives). Said for the first refusals of each minute; a
    /// flood is summed up in the log.
    PeerRefused {
        /// The client's public key.
        key: PublicKey,
    },
    /// A connection could not be carried: the sharer could not be reached (connect), or the
    /// local service refused it (share). The share or connect keeps running.
    ConnectionFailed {
        /// The connection's number.
        id: u64,
        /// What went wrong, for people.
        reason: String,
    },
    /// A connect could not reach the sharer for local connection `id` and tries again after
    /// `delay` (pauses double from 0.5 s up to 4 s, within the attempt bound, docs/recovery.md).
    Reconnecting {
        /// The local connection that waits.
        id: u64,
        /// Failed attempts in a row, over all local connections: how long the sharer has been
        /// out of reach.
        attempt: u32,
        /// The pause before the next try.
        delay: Duration,
        /// Why the last try failed, for people.
        reason: String,
    },
    /// A connect reached the sharer again after failed attempts; the connection's
    /// [`ConnectionOpened`](Event::ConnectionOpened) follows.
    Reconnected {
        /// The local connection that got through.
        id: u64,
        /// The failed attempts in a row before it.
        failed_attempts: u32,
    },
    /// A connect dialed the sharer when it started (unless told to wait for the first local
    /// connection) and reached it: the first local connection goes on this connection.
    SharerReached {
        /// The sharer's key.
        key: PublicKey,
        /// How its packets travel.
        path: Path,
        /// Where the sharer's packets come from (the relay's address when relayed).
        peer: Option<SocketAddr>,
        /// Whether the sharer carries every local connection on this one; if not, it serves
        /// only the first, and each later one dials its own.
        multiplexed: bool,
        /// How long reaching it took.
        took: Duration,
    },
    /// A connect dialed the sharer when it started and could not reach it. It keeps
    /// listening: each local connection tries again.
    SharerUnreachable {
        /// The sharer's key.
        key: PublicKey,
        /// Why, for people.
        reason: String,
    },
    /// A connection that opened has ended.
    ConnectionClosed {
        /// The connection's number.
        id: u64,
        /// Bytes that came from the peer.
        bytes_in: u64,
        /// Bytes that went to the peer.
        bytes_out: u64,
        /// Why it ended early, if it did not end cleanly both ways.
        error: Option<String>,
    },
}

/// Bytes moved so far, over all connections of a share or a connect.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Bytes that came from peers.
    pub bytes_in: u64,
    /// Bytes that went to peers.
    pub bytes_out: u64,
}

#[derive(Debug, Default)]
struct Counters {
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

/// Where a share's or a connect's [`Event`]s go: give one in the options, and
/// [`subscribe`](Events::subscribe) before starting to see every event from the first.
/// Clones share the channel and the totals.
///
/// ```
/// let events = p2p_socket::Events::new();
/// let mut receiver = events.subscribe();
/// // ... ShareOptions { events: events.clone(), .. }, then:
/// # async fn next(mut receiver: tokio::sync::broadcast::Receiver<p2p_socket::Event>) {
/// while let Ok(event) = receiver.recv().await {
///     println!("{event:?}");
/// }
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Events {
    sender: broadcast::Sender<Event>,
    counters: Arc<Counters>,
}

impl Default for Events {
    fn default() -> Self {
        Events::new()
    }
}

impl Events {
    /// A channel nobody listens to yet.
    pub fn new() -> Events {
        Events {
            sender: broadcast::channel(EVENT_BUFFER).0,
            counters: Arc::default(),
        }
    }

    /// A receiver of every event from now on. One that falls more than [`EVENT_BUFFER`]
    /// events behind loses the oldest.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.sender.subscribe()
    }

    /// Bytes moved so far.
    pub fn totals(&self) -> Totals {
        Totals {
            bytes_in: self.counters.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.counters.bytes_out.load(Ordering::Relaxed),
        }
    }

    /// The one place events leave the engine: with no receiver, or a full one, it returns at
    /// once.
    pub(crate) fn emit(&self, event: Event) {
        trace!(?event, "event");
        let _ = self.sender.send(event);
    }

    pub(crate) fn count_in(&self, n: usize) {
        self.counters
            .bytes_in
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn count_out(&self, n: usize) {
        self.counters
            .bytes_out
            .fetch_add(n as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::broadcast::error::TryRecvError;

    fn closed(id: u64) -> Event {
        Event::ConnectionClosed {
            id,
            bytes_in: 0,
            bytes_out: 0,
            error: None,
        }
    }

    #[test]
    fn emitting_without_receivers_does_nothing() {
        let events = Events::new();
        events.emit(closed(1));
        let mut late = events.subscribe();
        assert_eq!(late.try_recv(), Err(TryRecvError::Empty));
    }

    /// A receiver that never reads costs at most the buffer: the sender goes on at once and
    /// the receiver, when it reads, learns how many it lost and gets the newest.
    #[test]
    fn a_stalled_receiver_neither_blocks_nor_grows() {
        let events = Events::new();
        let mut stalled = events.subscribe();
        let sent = EVENT_BUFFER as u64 * 3;
        for id in 1..=sent {
            events.emit(closed(id));
        }
        assert_eq!(
            stalled.try_recv(),
            Err(TryRecvError::Lagged(sent - EVENT_BUFFER as u64))
        );
        assert_eq!(
            stalled.try_recv(),
            Ok(closed(sent - EVENT_BUFFER as u64 + 1))
        );
        assert_eq!(stalled.len(), EVENT_BUFFER - 1);
    }

    #[test]
    fn totals_add_up_across_clones() {
        let events = Events::new();
        let other = events.clone();
        events.count_in(5);
        other.count_out(7);
        other.count_in(1);
        assert_eq!(
            events.totals(),
            Totals {
                bytes_in: 6,
                bytes_out: 7
            }
        );
    }
}
