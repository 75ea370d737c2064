//! The bounded channel of non-stream datagrams, from the socket driver to whoever took it
//! with [`crate::UdxSocket::take_datagrams`] (the DHT RPC layer, holepunch probes).
//!
//! Anyone who can reach the port can send it datagrams faster than the DHT reads them, so
//! the queue is capped in both count and bytes; what does not fit is dropped (as a full
//! kernel buffer would) and counted.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::Datagram;

/// Datagrams queued for the reader at most. A DHT query fans out to at most a few dozen
/// nodes at a time and a busy node answers a few hundred requests a second, so a thousand
/// covers any burst of real DHT traffic while the reader is briefly busy.
pub const DATAGRAM_QUEUE_PACKETS: usize = 1024;

/// Payload bytes queued for the reader at most: the same thousand datagrams at DHT message
/// sizes (well under 1 KiB), with room for a few full-size ones; a flood costs us 1 MiB.
pub const DATAGRAM_QUEUE_BYTES: usize = 1 << 20;

/// How often a socket that drops datagrams says so in the log, at most.
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Creates a channel bounded by [`DATAGRAM_QUEUE_PACKETS`] and [`DATAGRAM_QUEUE_BYTES`];
/// drops are added to `dropped`.
pub(crate) fn channel(dropped: Arc<AtomicU64>) -> (DatagramSender, DatagramReceiver) {
    let (tx, rx) = mpsc::channel(DATAGRAM_QUEUE_PACKETS);
    let queued_bytes = Arc::new(AtomicUsize::new(0));
    let sender = DatagramSender {
        tx,
        queued_bytes: queued_bytes.clone(),
        dropped,
        last_log: None,
    };
    (sender, DatagramReceiver { rx, queued_bytes })
}

/// The driver's end.
pub(crate) struct DatagramSender {
    tx: mpsc::Sender<Datagram>,
    queued_bytes: Arc<AtomicUsize>,
    dropped: Arc<AtomicU64>,
    last_log: Option<Instant>,
}

impl DatagramSender {
    /// Queues `datagram`, or drops and counts it if the queue is full. Never waits.
    pub(crate) fn offer(&mut self, datagram: Datagram, now: Instant) {
        let len = datagram.data.len();
        // Only the driver adds, so the check and the add cannot race with another add; the
        // reader only lowers the count meanwhile. The bytes are counted before the datagram
        // is visible to the reader, so its subtraction never comes first.
        if self.queued_bytes.load(Ordering::Acquire) + len <= DATAGRAM_QUEUE_BYTES {
            self.queued_bytes.fetch_add(len, Ordering::AcqRel);
            match self.tx.try_send(datagram) {
                Ok(()) => return,
                // The reader is gone: nobody wants these, which is not a drop worth counting.
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                    return;
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                }
            }
        }
        let total = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if self
            .last_log
            .is_none_or(|at| now.duration_since(at) >= DROP_LOG_INTERVAL)
        {
            self.last_log = Some(now);
            tracing::warn!(
                dropped_total = total,
                "non-stream datagrams arrive faster than they are read; dropping what exceeds \
                 {DATAGRAM_QUEUE_PACKETS} datagrams or {DATAGRAM_QUEUE_BYTES} bytes"
            );
        }
    }
}

/// The reader's end of a socket's non-stream datagrams, from
/// [`crate::UdxSocket::take_datagrams`]. Holds at most [`DATAGRAM_QUEUE_PACKETS`] datagrams
/// and [`DATAGRAM_QUEUE_BYTES`] bytes; the socket drops what arrives beyond that and counts
/// it in [`crate::UdxSocket::datagrams_dropped`].
pub struct DatagramReceiver {
    rx: mpsc::Receiver<Datagram>,
    queued_bytes: Arc<AtomicUsize>,
}

impl DatagramReceiver {
    /// The next datagram; `None` once the socket is closed or another receiver was taken.
    pub async fn recv(&mut self) -> Option<Datagram> {
        let datagram = self.rx.recv().await?;
        self.taken(&datagram);
        Some(datagram)
    }

    /// The next datagram if one is queued.
    pub fn try_recv(&mut self) -> Option<Datagram> {
        let datagram = self.rx.try_recv().ok()?;
        self.taken(&datagram);
        Some(datagram)
    }

    fn taken(&self, datagram: &Datagram) {
        self.queued_bytes
            .fetch_sub(datagram.data.len(), Ordering::AcqRel);
    }

    /// Datagrams queued.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// Whether no datagram is queued.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// Payload bytes queued.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Acquire)
    }
}
