//! UDX: reliable, ordered, congestion-controlled byte streams over one UDP socket,
//! wire-compatible with Node's `udx-native` (libudx).
//!
//! API CONTRACT (the engine and the libudx shim are written against this; keep it):
//!
//! ```no_run
//! # use std::net::SocketAddr;
//! # use udx::{UdxError, UdxSocket};
//! # async fn contract(local_id: u32, remote_id: u32, peer_addr: SocketAddr) -> Result<(), UdxError> {
//! let socket = UdxSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
//! let mut datagrams = socket.take_datagrams();     // every packet that is not for a stream
//! let stream = socket.create_stream(local_id)?;     // registers `local_id` on the socket
//! stream.connect(remote_id, peer_addr)?;            // or, on another stream:
//! let other = socket.create_stream(local_id + 1)?;
//! other.connect_on_first_packet(remote_id);         // adopt the address of whoever sends first
//! // stream: AsyncRead + AsyncWrite; poll_shutdown sends END (half-close); drop/destroy sends DESTROY
//! // or stream.poll_read_chunk(cx, max): received bytes as they lie, without a copy
//! let (relay_a, relay_b) = (socket.create_stream(2)?, socket.create_stream(3)?);
//! relay_a.relay_to(&relay_b)?;                      // before connect: a blind relay
//! # Ok(())
//! # }
//! ```
//!
//! # Design
//!
//! The protocol itself is a pure state machine, [`proto`] (no sockets, no runtime, no
//! locks), which a simulator and fuzzers drive directly: it demultiplexes by stream id, acks
//! once per received burst (with SACK blocks when packets are missing), detects loss
//! RACK-style and by timeout, and sends new data as the congestion window and the pacer
//! allow. Each socket has one driver task (`socket.rs`) that runs it over a real UDP socket,
//! draining it with non-blocking batched reads. Handles exchange bytes with the driver
//! through a small per-stream buffer (`shared.rs`), so a `write` returns as soon as its bytes
//! are queued and a `read` takes whole received bursts.
//!
//! Wire facts (header, flags, SACK layout, END/DESTROY sequencing, MTU probe padding) follow
//! libudx exactly; see [`wire`]. Timing and congestion control are local policy.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod change_remote;
mod chunks;
mod congestion;
mod datagrams;
pub mod proto;
mod relay;
mod rtt;
mod shared;
mod socket;
mod udp_io;
pub mod wire;

use std::collections::HashSet;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Buf;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;

pub use crate::datagrams::{DatagramReceiver, DATAGRAM_QUEUE_BYTES, DATAGRAM_QUEUE_PACKETS};
pub use crate::relay::StreamObserver;
use crate::shared::{lock, SocketCore};
use crate::shared::{CloseReason, Event, StreamShared};

/// Errors of the transport.
#[derive(Debug, thiserror::Error)]
pub enum UdxError {
    /// The OS refused a socket operation.
    #[error("UDP socket error: {0}")]
    Io(#[from] io::Error),
    /// The local stream id is already registered on this socket.
    #[error("stream id {0} is already in use on this socket")]
    StreamIdInUse(u32),
    /// The stream was destroyed (by us, by the peer, or because the peer stopped answering).
    #[error("stream closed")]
    StreamClosed,
    /// `connect` was called on a stream that is already connected (or waits for its first
    /// packet); a stream has exactly one peer.
    #[error("stream is already connected; create a new stream for another peer")]
    AlreadyConnected,
    /// `change_remote` was called on a stream that has no peer yet (or a relayed one).
    #[error("stream is not connected yet; connect it before changing its remote")]
    NotConnected,
}

/// Kernel socket buffers we ask for: deep enough that a burst of a full window is not
/// dropped by our own socket (the kernel caps this at `net.core.{r,w}mem_max`).
const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// A UDP socket that carries many UDX streams (demultiplexed by stream id) and passes every
/// other datagram to whoever called [`UdxSocket::take_datagrams`] (the DHT RPC layer).
/// Cheap to clone; the socket closes when the last clone and the last stream are gone.
#[derive(Clone)]
pub struct UdxSocket {
    core: Arc<SocketCore>,
}

/// A datagram that is not UDX stream traffic.
#[derive(Debug, Clone)]
pub struct Datagram {
    /// Payload.
    pub data: Vec<u8>,
    /// Sender.
    pub addr: SocketAddr,
}

impl UdxSocket {
    /// Binds a UDP socket.
    pub async fn bind(addr: SocketAddr) -> Result<UdxSocket, UdxError> {
        let domain = socket2::Domain::for_address(addr);
        let sock =
            socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
        if addr.is_ipv6() {
            // Dual stack like libudx, so IPv4 peers reach an IPv6 wildcard socket.
            let _ = sock.set_only_v6(false);
        }
        // Best effort: a smaller buffer only means more drops under bursts.
        let _ = sock.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
        let _ = sock.set_send_buffer_size(SOCKET_BUFFER_BYTES);
        sock.set_nonblocking(true)?;
        sock.bind(&addr.into())?;
        let udp = udp_io::register(sock.into())?;
        let (tx, rx) = mpsc::unbounded_channel();
        let core = SocketCore {
            udp: Arc::new(udp),
            v6: addr.is_ipv6(),
            events: tx,
            registry: Arc::new(Mutex::new(HashSet::new())),
            datagrams: Arc::new(Mutex::new(None)),
            datagrams_dropped: Arc::new(AtomicU64::new(0)),
        };
        tokio::spawn(socket::Driver::new(&core, rx)?.run());
        Ok(UdxSocket {
            core: Arc::new(core),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.core.udp.get_ref().local_addr()
    }

    /// Sends one datagram now (best effort, like UDP: if the kernel's send buffer is full,
    /// it is dropped).
    pub fn send_to(&self, data: &[u8], addr: SocketAddr) -> io::Result<()> {
        let to = udp_io::to_socket_family(addr, self.core.v6);
        // Straight to the kernel (the runtime watches the socket for readability only).
        // Waiting in a task per datagram instead would let a burst spawn tasks without bound.
        match socket2::SockRef::from(self.core.udp.get_ref()).send_to(data, &to.into()) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                tracing::debug!(%to, "socket send buffer full, datagram dropped");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Sets the IP TTL for following datagrams (holepunching sends low-TTL probes).
    pub fn set_ttl(&self, ttl: u32) -> io::Result<()> {
        let sock = socket2::SockRef::from(self.core.udp.get_ref());
        if self.core.v6 {
            sock.set_unicast_hops_v6(ttl)?;
            // IPv4 peers of a dual-stack socket go out with the IPv4 TTL.
            let _ = sock.set_ttl_v4(ttl);
            Ok(())
        } else {
            sock.set_ttl_v4(ttl)
        }
    }

    /// Current IP TTL.
    pub fn ttl(&self) -> io::Result<u32> {
        let sock = socket2::SockRef::from(self.core.udp.get_ref());
        if self.core.v6 {
            sock.unicast_hops_v6()
        } else {
            sock.ttl_v4()
        }
    }

    /// Takes the channel of non-stream datagrams. Calling it again replaces the previous receiver.
    /// The channel is bounded (see [`DatagramReceiver`]): what arrives while it is full is
    /// dropped and counted in [`UdxSocket::datagrams_dropped`].
    pub fn take_datagrams(&self) -> DatagramReceiver {
        let (tx, rx) = datagrams::channel(self.core.datagrams_dropped.clone());
        *lock(&self.core.datagrams) = Some(tx);
        rx
    }

    /// Non-stream datagrams dropped since the socket was bound because the reader of
    /// [`UdxSocket::take_datagrams`] did not keep up (a flood, or a stalled reader).
    pub fn datagrams_dropped(&self) -> u64 {
        self.core.datagrams_dropped.load(Ordering::Relaxed)
    }

    /// Registers a stream with local id `local_id` on this socket. Not yet connected: packets for it
    /// are held (bounded) until `connect` / `connect_on_first_packet`.
    pub fn create_stream(&self, local_id: u32) -> Result<UdxStream, UdxError> {
        if !lock(&self.core.registry).insert(local_id) {
            return Err(UdxError::StreamIdInUse(local_id));
        }
        let shared = StreamShared::new(local_id, self.core.clone());
        self.core.send_event(Event::Register(shared.clone()));
        Ok(UdxStream { shared })
    }

    /// Number of stream ids registered on this socket: open streams plus dropped ones still
    /// finishing in the background. Useful to check that streams do not leak.
    pub fn stream_count(&self) -> usize {
        lock(&self.core.registry).len()
    }
}

/// Counters and estimates of one stream (a snapshot, refreshed as the stream makes progress).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StreamStats {
    /// Packets sent, retransmissions included.
    pub packets_sent: u64,
    /// Packets received for this stream.
    pub packets_received: u64,
    /// Retransmitted packets.
    pub retransmits: u64,
    /// Packets declared lost by loss detection (not counting timeouts).
    pub packets_lost: u64,
    /// Retransmission timeouts.
    pub rto_timeouts: u64,
    /// Smoothed round-trip time, once measured.
    pub srtt: Option<std::time::Duration>,
    /// Congestion window in packets.
    pub cwnd: usize,
    /// Packets in flight.
    pub in_flight: usize,
    /// Payload bytes per packet (grows with MTU probing from 1152 to at most 1452).
    pub max_payload: usize,
    /// Received data packets dropped because they did not fit the receive window we advertise.
    pub packets_dropped: u64,
}

/// One reliable stream. Implements `tokio::io::AsyncRead` and `AsyncWrite`.
///
/// * `write` returns as soon as the bytes are queued (up to a send buffer sized from the
///   congestion window); `flush` has nothing to do, as queued bytes are already on their way.
/// * `shutdown` sends END (half-close): reading goes on until the peer's END, after which
///   reads return 0 (EOF) once everything before it was read.
/// * Dropping the handle before `shutdown` sends DESTROY. Dropping it after `shutdown`
///   lets the stream finish in the background until the peer acknowledged everything.
pub struct UdxStream {
    pub(crate) shared: Arc<StreamShared>,
}

impl UdxStream {
    /// Our stream id (the peer sends to it).
    pub fn local_id(&self) -> u32 {
        self.shared.local_id
    }

    /// Starts the stream towards `remote_id` at `addr`.
    pub fn connect(&self, remote_id: u32, addr: SocketAddr) -> Result<(), UdxError> {
        {
            let mut st = self.shared.lock();
            if st.closed.is_some() {
                return Err(UdxError::StreamClosed);
            }
            if st.connect_requested {
                return Err(UdxError::AlreadyConnected);
            }
            st.connect_requested = true;
            st.remote_addr = Some(addr);
            for w in st.connect_wakers.drain(..) {
                w.wake();
            }
        }
        self.shared
            .send_event(Event::Connect(self.shared.clone(), remote_id, Some(addr)));
        Ok(())
    }

    /// Starts the stream towards `remote_id` at the address of the first packet that arrives for it
    /// (hyperdht's "firewall" hook: the side that cannot be dialled waits for the other to send).
    pub fn connect_on_first_packet(&self, remote_id: u32) {
        {
            let mut st = self.shared.lock();
            if st.connect_requested || st.closed.is_some() {
                return;
            }
            st.connect_requested = true;
        }
        self.shared
            .send_event(Event::Connect(self.shared.clone(), remote_id, None));
    }

    /// The peer address, once connected.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.shared.lock().remote_addr
    }

    /// Resolves once the stream has a peer address (after connect or the first packet).
    pub async fn connected(&self) -> Result<SocketAddr, UdxError> {
        poll_fn(|cx| {
            let mut st = self.shared.lock();
            if let Some(addr) = st.remote_addr {
                return Poll::Ready(Ok(addr));
            }
            if st.closed.is_some() {
                return Poll::Ready(Err(UdxError::StreamClosed));
            }
            if !st.connect_wakers.iter().any(|w| w.will_wake(cx.waker())) {
                st.connect_wakers.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }

    /// Sends a heartbeat after `interval` without outgoing traffic (libudx's keepalive; hyperdht
    /// uses 5 s) so NAT mappings of an idle stream stay open. `None` turns it off (default).
    pub fn set_keepalive(&self, interval: Option<std::time::Duration>) {
        self.shared.lock().keepalive = interval;
        self.wake_driver();
    }

    /// Counters and estimates of this stream.
    pub fn stats(&self) -> StreamStats {
        self.shared.lock().stats
    }

    /// Aborts: sends DESTROY and fails pending reads and writes.
    pub fn destroy(&self) {
        {
            let mut st = self.shared.lock();
            if st.closed.is_some() {
                return;
            }
            st.closed = Some(CloseReason::Destroyed);
            st.wake_all();
        }
        self.shared.send_event(Event::Destroy(self.shared.clone()));
    }

    fn wake_driver(&self) {
        if self.shared.claim_wake() {
            self.shared.send_event(Event::Wake(self.shared.clone()));
        }
    }
}

impl Drop for UdxStream {
    fn drop(&mut self) {
        self.shared.send_event(Event::Dropped(self.shared.clone()));
    }
}

impl UdxStream {
    /// Like `poll_read`, but hands out received bytes where they lie instead of copying them:
    /// at most `max` bytes (`max > 0`) of the oldest received burst; `None` at the end of the
    /// stream. A chunk taken right after another of the same allocation lies next to it in
    /// memory (see [`proto::RECV_ALLOCATION`]), so `BytesMut::unsplit` joins them without a
    /// copy. What a chunk holds no longer counts against the receive window.
    pub fn poll_read_chunk(
        &self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<io::Result<Option<bytes::BytesMut>>> {
        debug_assert!(max > 0, "a chunk of nothing would look like the end");
        self.poll_receive(cx, |queue| {
            let front = queue.front_mut()?;
            let chunk = if front.len() <= max {
                queue.pop_front()?
            } else {
                front.split_to(max)
            };
            Some((chunk.len(), chunk))
        })
    }

    /// Reads with `take`, which takes what it wants from the receive queue and says how much;
    /// `Some(None)` at the end of the stream. The window is reopened as the reader makes room.
    fn poll_receive<R>(
        &self,
        cx: &mut Context<'_>,
        take: impl FnOnce(&mut std::collections::VecDeque<bytes::BytesMut>) -> Option<(usize, R)>,
    ) -> Poll<io::Result<Option<R>>> {
        let mut st = self.shared.lock();
        if st.closed == Some(CloseReason::Destroyed) {
            return Poll::Ready(Err(CloseReason::Destroyed.to_io_error()));
        }
        if let Some((taken, got)) = take(&mut st.recv_queue).filter(|(n, _)| *n > 0) {
            let left = self.shared.recv_buffered.fetch_sub(taken, Ordering::AcqRel) - taken;
            drop(st);
            if left < proto::RECV_WINDOW / 2
                && self
                    .shared
                    .window_update_wanted
                    .swap(false, Ordering::AcqRel)
            {
                // We advertised a small window earlier: tell the sender there is room again.
                self.shared.window_update_due.store(true, Ordering::Release);
                self.wake_driver();
            }
            return Poll::Ready(Ok(Some(got)));
        }
        if st.recv_eof || st.finished {
            return Poll::Ready(Ok(None));
        }
        if let Some(reason) = st.closed {
            return Poll::Ready(Err(reason.to_io_error()));
        }
        st.read_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl AsyncRead for UdxStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        self.poll_receive(cx, |queue| {
            let mut copied = 0;
            while buf.remaining() > 0 {
                let Some(front) = queue.front_mut() else {
                    break;
                };
                let n = front.len().min(buf.remaining());
                buf.put_slice(&front[..n]);
                front.advance(n);
                if front.is_empty() {
                    queue.pop_front();
                }
                copied += n;
            }
            Some((copied, ()))
        })
        .map_ok(|_| ())
    }
}

impl UdxStream {
    fn poll_write_from(&self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut st = self.shared.lock();
        if let Some(reason) = st.closed {
            return Poll::Ready(Err(reason.to_io_error()));
        }
        if st.write_shutdown || st.finished {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown: this UDX stream's write side has ended",
            )));
        }
        let room = st.send_limit.saturating_sub(st.send_outstanding);
        if room == 0 {
            st.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = room.min(data.len());
        st.send_buf.push(&data[..n]);
        st.send_outstanding += n;
        drop(st);
        self.wake_driver();
        Poll::Ready(Ok(n))
    }

    fn poll_flush_now(&self) -> Poll<io::Result<()>> {
        match self.shared.lock().closed {
            Some(reason) => Poll::Ready(Err(reason.to_io_error())),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown_now(&self) -> Poll<io::Result<()>> {
        {
            let mut st = self.shared.lock();
            if let Some(reason) = st.closed {
                return Poll::Ready(Err(reason.to_io_error()));
            }
            if st.write_shutdown || st.finished {
                return Poll::Ready(Ok(()));
            }
            st.write_shutdown = true;
        }
        self.wake_driver();
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for UdxStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_from(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush_now()
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_shutdown_now()
    }
}

/// Writing needs nothing but the stream's lock, so one task may write through a shared
/// reference while another reads chunks (`poll_read_chunk`), as with `tokio::net::TcpStream`.
impl AsyncWrite for &UdxStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_from(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush_now()
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_shutdown_now()
    }
}
