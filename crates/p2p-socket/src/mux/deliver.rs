//! The peer's bytes for a stream, written into the stream's local connection by the
//! connection's reader as soon as they are opened (docs/benchmarks.md, "Profile, session 6").
//! Only what the local socket does not take at once is copied and handed to the stream's pipe,
//! which waits for the socket and writes it; from then until the pipe caught up, the reader
//! queues everything behind it, so bytes never overtake each other.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use crate::events::Events;
use crate::local_shared::SharedIo;

/// One stream's side of the hand-over between the connection's reader and the stream's pipe.
#[derive(Default)]
pub(super) struct Delivery {
    /// DATA messages handed to the pipe and not yet written by it.
    queued: AtomicUsize,
    /// The local connection, once the stream's pipe started.
    local: OnceLock<Local>,
    /// The peer's bytes written to the local connection, by either task.
    from_peer: AtomicU64,
}

struct Local {
    socket: Arc<dyn SharedIo>,
    events: Events,
}

impl Delivery {
    /// The pipe started: from now on the reader may write into `socket`, counting in `events`.
    pub(super) fn attach(&self, socket: Arc<dyn SharedIo>, events: &Events) {
        let local = Local {
            socket,
            events: events.clone(),
        };
        // A stream is piped once.
        let _ = self.local.set(local);
    }

    /// Writes what the local connection takes of `bytes` now, if nothing waits before them:
    /// how many bytes it took. A failing socket takes none; the pipe meets its error when it
    /// writes the rest.
    pub(super) fn write_now(&self, bytes: &[u8]) -> usize {
        if self.queued.load(Ordering::Acquire) != 0 {
            return 0;
        }
        let Some(local) = self.local.get() else {
            return 0;
        };
        let n = local.socket.try_write(bytes).unwrap_or(0);
        self.count(n);
        n
    }

    /// A message goes to the pipe.
    pub(super) fn queue(&self) {
        self.queued.fetch_add(1, Ordering::AcqRel);
    }

    /// The pipe wrote a queued message of `n` bytes.
    pub(super) fn written(&self, n: usize) {
        self.count(n);
        self.queued.fetch_sub(1, Ordering::AcqRel);
    }

    fn count(&self, n: usize) {
        self.from_peer.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(local) = self.local.get() {
            local.events.count_in(n);
        }
    }

    /// The peer's bytes written so far.
    pub(super) fn delivered(&self) -> u64 {
        self.from_peer.load(Ordering::Relaxed)
    }
}
