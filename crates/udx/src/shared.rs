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
use std::collections::HashSet;
use std::sync::atomic::AtomicU64;

use tokio::sync::mpsc;

use crate::chunks::ChunkQueue;
use crate::datagrams::DatagramSender;
use crate::proto::Stream;

/// The parts of a socket that handles and the driver share.
pub(crate) struct SocketCore {
    pub(crate) udp: Arc<crate::udp_io::ReadSocket>,
    pub(crate) v6: bool,
    pub(crate) events: mpsc::UnboundedSender<Event>,
    pub(crate) registry: Arc<Mutex<HashSet<u32>>>,
    pub(crate) datagrams: Arc<Mutex<Option<DatagramSender>>>,
    pub(crate) datagrams_dropped: Arc<AtomicU64>,
}

impl SocketCore {
    pub(crate) fn send_event(&self, ev: Event) {
        // Fails only when the driver is gone, and then the stream is already marked closed.
        let _ = self.events.send(ev);
    }
}

/// Locks a mutex whose data stays valid even if a holder panicked.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

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
    /// `change_remote` to another address on the same socket.
    ChangeRemote(Arc<StreamShared>, u32, SocketAddr),
    /// `send_message`: one unordered datagram.
    Message(Arc<StreamShared>, Bytes),
    /// To the socket a stream moves to: its id is reserved here and its protocol state is on
    /// its way (in a [`Event::MoveIn`]); hold the handle's events for it until then.
    Expect(Arc<StreamShared>),
    /// To the socket a stream leaves: hand its protocol state over.
    MoveOut(Handover),
    /// To the socket a stream moves to: its protocol state.
    MoveIn(Handover),
    /// To the socket a stream moved to: a packet for it that arrived on the socket it left
    /// (from its old remote, which may resend there: see `Stream::hears`).
    Forwarded(Arc<StreamShared>, Bytes, SocketAddr),
    /// To the socket a stream moves to: the state never came (the stream was gone, or the
    /// socket it left stopped); release the id and close the handle.
    MoveFailed(Arc<StreamShared>),
}

/// A stream moving from one socket's driver to another's (`change_remote` to another socket).
/// If it is dropped before the new driver took the stream in (a driver gone, a stream that
/// ended meanwhile), the new driver is told, so that the id it reserved is not held forever.
pub(crate) struct Handover {
    pub(crate) shared: Arc<StreamShared>,
    pub(crate) remote_id: u32,
    pub(crate) addr: SocketAddr,
    pub(crate) to: Arc<SocketCore>,
    pub(crate) stream: Option<Box<Stream>>,
    /// An unconnected stream of the same id on the new socket that gives way to this one,
    /// handing over the packets it held.
    pub(crate) placeholder: Option<crate::UdxStream>,
    pub(crate) delivered: bool,
}

impl Drop for Handover {
    fn drop(&mut self) {
        if !self.delivered {
            self.to.send_event(Event::MoveFailed(self.shared.clone()));
        }
    }
}

/// Per-stream state shared by the handle and the driver.
pub(crate) struct StreamShared {
    pub(crate) local_id: u32,
    /// The socket whose driver runs the stream now (`change_remote` may move it). Held while
    /// an event is sent, so that no event reaches the old driver after the stream left it.
    /// Not a cycle that keeps a socket open: its driver drops the stream's `Arc` when the
    /// stream ends, and only then can it stop anyway.
    core: Mutex<Arc<SocketCore>>,
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
    pub(crate) send_buf: ChunkQueue,
    /// Written and not yet acknowledged by the peer (backpressure accounting).
    pub(crate) send_outstanding: usize,
    /// `send_outstanding` may not exceed this (set by the driver from its window).
    pub(crate) send_limit: usize,
    pub(crate) write_shutdown: bool,
    pub(crate) write_waker: Option<Waker>,
    // driver -> application
    pub(crate) recv_queue: VecDeque<BytesMut>,
    pub(crate) recv_eof: bool,
    pub(crate) read_waker: Option<Waker>,
    // lifecycle
    pub(crate) remote_addr: Option<SocketAddr>,
    /// A `change_remote` waits for what was sent before it to be acknowledged.
    pub(crate) remote_changing: bool,
    /// Where the first packet held for an unconnected stream came from.
    pub(crate) first_held_from: Option<SocketAddr>,
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
    pub(crate) fn new(local_id: u32, core: Arc<SocketCore>) -> Arc<StreamShared> {
        Arc::new(StreamShared {
            local_id,
            core: Mutex::new(core),
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

    /// The socket the stream lives on now.
    pub(crate) fn core(&self) -> Arc<SocketCore> {
        lock(&self.core).clone()
    }

    /// Locks the stream's socket: events sent while it is held reach the driver that runs
    /// the stream, and a move to another socket waits for them.
    pub(crate) fn lock_core(&self) -> MutexGuard<'_, Arc<SocketCore>> {
        lock(&self.core)
    }

    /// Sends `ev` to the driver that runs the stream.
    pub(crate) fn send_event(&self, ev: Event) {
        lock(&self.core).send_event(ev);
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
