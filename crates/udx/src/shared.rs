//! The hand-off between a [`crate::UdxStream`] handle (the application's task) and the socket
//! driver task that owns the protocol state.
//!
//! The protocol state itself is owned by the driver alone and needs no lock. What the two
//! sides exchange - bytes to send, bytes received, end/close status and wakers - sits behind
//! one small per-stream mutex that each side takes once per batch (a `poll_write` call, a
//! received burst, an ack burst), never per packet.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;

use bytes::{Bytes, BytesMut};

pub(crate) use crate::proto::CloseReason;

impl CloseReason {
    pub(crate) fn to_io_error(self) -> io::Error {
        match self {
            CloseReason::Destroyed => io::Error::new(
                io::ErrorKind::NotConnected,
                "UDX stream was destroyed locally",
            ),
            CloseReason::Reset => io::Error::new(
                io::ErrorKind::ConnectionReset,
                "UDX stream was destroyed by the peer",
            ),
            CloseReason::TimedOut => io::Error::new(
                io::ErrorKind::TimedOut,
                "UDX peer stopped acknowledging data (retransmissions unanswered for 15 s)",
            ),
            CloseReason::SocketClosed => {
                io::Error::new(io::ErrorKind::NotConnected, "UDX socket driver has stopped")
            }
        }
    }
}

/// Messages from handles to the driver. Each carries the stream's `Arc` so that an event for
/// a stream that is gone never reaches a newer stream that reuses its id.
pub(crate) enum Event {
    /// A new stream id was registered.
    Register(Arc<StreamShared>),
    /// `connect` (with an address) or `connect_on_first_packet` (without).
    Connect(Arc<StreamShared>, u32, Option<SocketAddr>),
    /// New data, a shutdown, or room in the receive buffer: look at the stream again.
    Wake(Arc<StreamShared>),
    /// `destroy()` was called.
    Destroy(Arc<StreamShared>),
    /// The application dropped its handle.
    Dropped(Arc<StreamShared>),
    /// `relay_to`: pass the first stream's packets on to the second's peer.
    Relay(Arc<StreamShared>, Arc<StreamShared>),
}

/// Per-stream state shared by the handle and the driver.
pub(crate) struct StreamShared {
    pub(crate) local_id: u32,
    state: Mutex<SharedState>,
    /// Set while a Wake event is queued for the driver, so a stream of small writes sends
    /// one event, not one per write.
    wake_queued: AtomicBool,
    /// Received bytes not yet read by the application (drives the advertised window).
    pub(crate) recv_buffered: AtomicUsize,
    /// Set by the driver when it advertised a small window: the reader then asks for a
    /// window update once it has made room, so a sender stalled on a zero window resumes
    /// at once instead of waiting for its next probe.
    pub(crate) window_update_wanted: AtomicBool,
    /// Set by the reader together with a Wake: the driver should send a window update.
    pub(crate) window_update_due: AtomicBool,
}

/// The mutex-protected part of [`StreamShared`].
#[derive(Default)]
pub(crate) struct SharedState {
    // application -> driver
    /// Written, not yet taken by the driver.
    pub(crate) send_buf: BytesMut,
    /// Written and not yet acknowledged by the peer (backpressure accounting).
    pub(crate) send_outstanding: usize,
    /// `send_outstanding` may not exceed this (set by the driver from its window).
    pub(crate) send_limit: usize,
    pub(crate) write_shutdown: bool,
    pub(crate) write_waker: Option<Waker>,
    // driver -> application
    pub(crate) recv_queue: VecDeque<Bytes>,
    pub(crate) recv_eof: bool,
    pub(crate) read_waker: Option<Waker>,
    // lifecycle
    pub(crate) remote_addr: Option<SocketAddr>,
    pub(crate) connect_requested: bool,
    pub(crate) connect_wakers: Vec<Waker>,
    /// Heartbeat interval while idle (`UdxStream::set_keepalive`).
    pub(crate) keepalive: Option<std::time::Duration>,
    pub(crate) closed: Option<CloseReason>,
    /// Both directions ended cleanly and the driver let go of the stream.
    pub(crate) finished: bool,
    /// Snapshot of the driver's counters, refreshed whenever it syncs with the handle.
    pub(crate) stats: crate::StreamStats,
}

impl SharedState {
    /// Wakes every task that waits on this stream (status changed for all of them).
    pub(crate) fn wake_all(&mut self) {
        if let Some(w) = self.read_waker.take() {
            w.wake();
        }
        if let Some(w) = self.write_waker.take() {
            w.wake();
        }
        for w in self.connect_wakers.drain(..) {
            w.wake();
        }
    }
}

/// Initial send buffer: what a writer may queue before the first ack tells us more.
/// The same as the headroom beyond the window later on (`proto::stream`).
pub(crate) const INITIAL_SEND_LIMIT: usize = 256 << 10;

impl StreamShared {
    pub(crate) fn new(local_id: u32) -> Arc<StreamShared> {
        Arc::new(StreamShared {
            local_id,
            state: Mutex::new(SharedState {
                send_limit: INITIAL_SEND_LIMIT,
                ..Default::default()
            }),
            wake_queued: AtomicBool::new(false),
            recv_buffered: AtomicUsize::new(0),
            window_update_wanted: AtomicBool::new(false),
            window_update_due: AtomicBool::new(false),
        })
    }

    /// Locks the shared state. A poisoned lock only means another thread panicked while
    /// holding it; the plain data inside is still consistent enough to keep going.
    pub(crate) fn lock(&self) -> MutexGuard<'_, SharedState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Returns true if the caller should send a Wake event (none is queued yet).
    pub(crate) fn claim_wake(&self) -> bool {
        !self.wake_queued.swap(true, Ordering::AcqRel)
    }

    /// Called by the driver before it looks at the stream, so later changes queue a new Wake.
    pub(crate) fn clear_wake(&self) {
        self.wake_queued.store(false, Ordering::Release);
    }
}
