//! Batched UDP I/O: `recvmmsg` with GRO on receive and GSO on send (through `quinn-udp`,
//! which wraps the platform calls behind a safe API and falls back to one datagram per call
//! where the OS lacks them).
//!
//! Per-packet system calls are what limits a user-space transport on loopback and fast
//! links: with GSO a burst of up to 64 equal-sized packets to one peer leaves in one
//! `sendmsg`, and with GRO the kernel hands a burst from one peer up in one buffer.
//!
//! The socket is registered with the runtime for readability only. UDP's write-space callback
//! fires each time a sent datagram is freed, so a socket registered for writability too wakes
//! the runtime's poller after nearly every send (edge-triggered epoll reports each such edge)
//! although almost no send ever finds the buffer full. Writability is watched only while a
//! send is blocked ([`WriteWait`]).

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV6, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use quinn_udp::{RecvMeta, UdpSocketState};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::proto::Transmits;

/// Receive buffers per `recvmmsg` call.
const RECV_BUFFERS: usize = 16;
/// Size of each receive buffer: a whole GRO batch (or the largest UDP datagram) fits.
const RECV_BUFFER_SIZE: usize = 65536;
/// Upper bound for the payload of one GSO send (IPv4's 65,507-byte limit, with room to spare).
const MAX_GSO_BYTES: usize = 64000;

/// What became of a send.
enum Sent {
    /// Gone to the kernel (or lost, as UDP may lose it).
    Done,
    /// The socket buffer is full: try again when it is writable.
    Blocked,
    /// Segmentation was refused and is off from now on: send the same datagrams again.
    Retry,
}

/// Whether `e`, from a segmented send, is the kernel refusing segmentation (EIO from a device
/// that cannot checksum in hardware, or EINVAL).
#[cfg(target_os = "linux")]
fn gso_unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::EINVAL))
}

#[cfg(not(target_os = "linux"))]
fn gso_unsupported(_: &io::Error) -> bool {
    true
}

/// The control message that asks for segmentation into datagrams of `segment` bytes
/// (`UDP_SEGMENT`), laid out as `CMSG_SPACE(2)` bytes: a `cmsghdr` (length, level, type),
/// then the size as a native u16, padded to the header's alignment. Returns the buffer and
/// the length used.
#[cfg(target_os = "linux")]
fn gso_control(segment: usize) -> ([u8; 32], usize) {
    const HEADER: usize = std::mem::size_of::<libc::cmsghdr>();
    const ALIGN: usize = std::mem::align_of::<libc::cmsghdr>();
    const SPACE: usize = HEADER + 2usize.next_multiple_of(ALIGN);
    const LEN_FIELD: usize = std::mem::size_of::<usize>();
    let mut buf = [0u8; 32];
    // `cmsg_len` is a size_t at the start (CMSG_LEN(2)); level and type follow as ints.
    buf[..LEN_FIELD].copy_from_slice(&(HEADER + 2).to_ne_bytes());
    buf[HEADER - 8..HEADER - 4].copy_from_slice(&libc::SOL_UDP.to_ne_bytes());
    buf[HEADER - 4..HEADER].copy_from_slice(&libc::UDP_SEGMENT.to_ne_bytes());
    // The batches are at most 64,000 bytes, so a segment fits.
    let segment = u16::try_from(segment).unwrap_or(u16::MAX);
    buf[HEADER..HEADER + 2].copy_from_slice(&segment.to_ne_bytes());
    (buf, SPACE)
}

/// Segmentation is Linux's; elsewhere `max_gso_segments` is 1 and this is never asked for.
#[cfg(not(target_os = "linux"))]
fn gso_control(_segment: usize) -> ([u8; 32], usize) {
    ([0; 32], 0)
}

/// A UDP socket registered with the runtime for readability only.
pub(crate) type ReadSocket = AsyncFd<UdpSocket>;

/// Registers `udp` (non-blocking) for readability only.
pub(crate) fn register(udp: UdpSocket) -> io::Result<ReadSocket> {
    watch(udp, Interest::READABLE)
}

/// Registers `fd` with the runtime for `interest`.
// Deprecated in favour of an `unsafe` constructor (this crate forbids unsafe code) because a
// borrowed raw descriptor could be closed under the registration. Both callers hand over an
// owning type (`UdpSocket`, `OwnedFd`) whose descriptor lives exactly as long as the
// registration, which is the condition the new constructor asks its callers to promise.
#[allow(deprecated)]
fn watch<T: AsRawFd>(fd: T, interest: Interest) -> io::Result<AsyncFd<T>> {
    AsyncFd::with_interest(fd, interest)
}

/// The socket plus the state of its offloads.
pub(crate) struct UdpIo {
    pub(crate) udp: Arc<ReadSocket>,
    state: UdpSocketState,
    v6: bool,
    /// A segmented send failed as unsupported: send one datagram per call from then on.
    gso_refused: AtomicBool,
}

/// Reusable receive buffers.
pub(crate) struct RecvBuffers {
    storage: Vec<Vec<u8>>,
    meta: Vec<RecvMeta>,
}

impl RecvBuffers {
    pub(crate) fn new() -> Self {
        RecvBuffers {
            storage: (0..RECV_BUFFERS)
                .map(|_| vec![0u8; RECV_BUFFER_SIZE])
                .collect(),
            meta: vec![RecvMeta::default(); RECV_BUFFERS],
        }
    }
}

impl UdpIo {
    pub(crate) fn new(udp: Arc<ReadSocket>, v6: bool) -> io::Result<UdpIo> {
        let state = UdpSocketState::new(udp.get_ref().into())?;
        Ok(UdpIo {
            udp,
            state,
            v6,
            gso_refused: AtomicBool::new(false),
        })
    }

    /// Reads what is queued (one system call, several datagrams) and hands every datagram
    /// to `on_datagram`. Returns the number of datagrams, and whether the socket is known to
    /// be empty now (then wait for readability rather than read again).
    pub(crate) fn recv(
        &self,
        bufs: &mut RecvBuffers,
        mut on_datagram: impl FnMut(&[u8], SocketAddr),
    ) -> io::Result<(usize, bool)> {
        let mut storage = bufs.storage.iter_mut();
        let mut slices: [IoSliceMut<'_>; RECV_BUFFERS] =
            std::array::from_fn(|_| IoSliceMut::new(storage.next().expect("RECV_BUFFERS buffers")));
        let meta = &mut bufs.meta;
        // `recvmmsg` on a non-blocking socket stops early only when the queue ran dry. Such a
        // short batch clears the readiness (returned as WouldBlock to `try_io`, which is how
        // it learns to), as tokio's own TCP reads do: otherwise each small packet, as in a
        // request/response round trip, costs a second call that only says EAGAIN. A datagram
        // arriving meanwhile is not missed: epoll (edge-triggered) reports it afresh.
        let batch = RECV_BUFFERS.min(quinn_udp::BATCH_SIZE);
        let mut n = 0;
        let polled = self.udp.try_io(Interest::READABLE, |udp| {
            n = self.state.recv(udp.into(), &mut slices, meta)?;
            if n < batch {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(())
        });
        let drained = match polled {
            Ok(()) => false,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
            Err(e) => return Err(e),
        };
        let mut count = 0;
        for (slice, meta) in slices.iter().zip(meta.iter()).take(n) {
            let data = &slice[..meta.len];
            // With GRO one buffer holds several datagrams of `stride` bytes (the last one
            // may be shorter).
            let stride = if meta.stride == 0 {
                meta.len.max(1)
            } else {
                meta.stride
            };
            for datagram in data.chunks(stride) {
                on_datagram(datagram, meta.addr);
                count += 1;
            }
        }
        Ok((count, drained))
    }

    /// Writes queued datagrams until done (true) or the socket buffer is full (false: wait
    /// for writability and call again). Runs of equal-sized datagrams to the same peer go out
    /// as one segmented (GSO) send where the platform supports it, each datagram's header and
    /// payload gathered from where they lie.
    pub(crate) fn flush(&self, out: &mut Transmits) -> bool {
        while let Some(batch) = out.next_batch(self.max_segments(), self.max_gso_bytes()) {
            let segment_size = (batch.count > 1).then_some(batch.segment);
            match self.send(batch.addr, &out.slices(batch.count), segment_size) {
                Sent::Done => out.consume(batch.count),
                Sent::Blocked => return false,
                // Segmentation was just turned off: the same datagrams go out one by one.
                Sent::Retry => {}
            }
        }
        true
    }

    /// How many datagrams one send may carry.
    pub(crate) fn max_segments(&self) -> usize {
        if self.gso_refused.load(Ordering::Relaxed) {
            1
        } else {
            self.state.max_gso_segments()
        }
    }

    /// Sends the concatenation of `slices` to `dest`: one datagram, or with `segment_size`
    /// several of that size (the last may be shorter). Errors other than a full buffer lose
    /// the datagrams, as UDP may.
    fn send(&self, dest: SocketAddr, slices: &[IoSlice<'_>], segment_size: Option<usize>) -> Sent {
        let addr = socket2::SockAddr::from(to_socket_family(dest, self.v6));
        let control = segment_size.map(gso_control);
        let mut msg = socket2::MsgHdr::new().with_addr(&addr).with_buffers(slices);
        if let Some((buf, len)) = &control {
            msg = msg.with_control(&buf[..*len]);
        }
        // Straight to the kernel: the runtime does not track writability (see the module
        // comment), and a full buffer answers WouldBlock by itself.
        let sock = socket2::SockRef::from(self.udp.get_ref());
        loop {
            let e = match sock.sendmsg(&msg, 0) {
                Ok(_) => return Sent::Done,
                Err(e) => e,
            };
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Sent::Blocked,
                _ => {}
            }
            if segment_size.is_some() && gso_unsupported(&e) {
                // Some devices and drivers cannot segment; Linux says so only when asked to.
                if !self.gso_refused.swap(true, Ordering::Relaxed) {
                    tracing::info!(error = %e, "UDP segmentation offload refused, sending datagrams one by one");
                }
                return Sent::Retry;
            }
            // Unreachable or refused destination: retransmission and timeouts deal with the
            // consequences.
            tracing::debug!(addr = %dest, error = %e, "UDP send failed");
            return Sent::Done;
        }
    }

    /// Largest GSO send in bytes.
    pub(crate) fn max_gso_bytes(&self) -> usize {
        MAX_GSO_BYTES
    }
}

/// Watches the socket for writability while a send is blocked, and only then.
///
/// A second descriptor for the same socket (a `dup`, made once) is registered for writability
/// when a send first finds the buffer full, and deregistered when a flush completes: two
/// `epoll_ctl` calls per blocked episode instead of a poller wakeup per datagram sent. Epoll
/// reports a descriptor that is already writable when it is added, so the space freed between
/// the failed send and the registration is not missed.
pub(crate) struct WriteWait {
    idle: Option<OwnedFd>,
    armed: Option<AsyncFd<OwnedFd>>,
}

impl WriteWait {
    pub(crate) fn new(udp: &ReadSocket) -> io::Result<WriteWait> {
        Ok(WriteWait {
            idle: Some(udp.get_ref().as_fd().try_clone_to_owned()?),
            armed: None,
        })
    }

    /// A send on `udp` is blocked: start watching (once per blocked episode).
    pub(crate) fn arm(&mut self, udp: &ReadSocket) -> io::Result<()> {
        if self.armed.is_none() {
            // A registration that failed took its descriptor along: make another.
            let fd = match self.idle.take() {
                Some(fd) => fd,
                None => udp.get_ref().as_fd().try_clone_to_owned()?,
            };
            self.armed = Some(watch(fd, Interest::WRITABLE)?);
        }
        Ok(())
    }

    /// Sends go through again: stop watching.
    pub(crate) fn disarm(&mut self) {
        if let Some(armed) = self.armed.take() {
            self.idle = Some(armed.into_inner());
        }
    }

    /// Waits until the socket reported writability since the last wait; never returns when
    /// not armed. The readiness is consumed, so a send that blocks again waits for a new edge.
    pub(crate) async fn writable(&self) {
        match &self.armed {
            Some(fd) => match fd.writable().await {
                Ok(mut guard) => guard.clear_ready(),
                // The runtime is shutting down: the driver's other branches end it.
                Err(_) => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }
}

/// On an IPv6 socket an IPv4 destination must be written as a v4-mapped address.
pub(crate) fn to_socket_family(addr: SocketAddr, v6: bool) -> SocketAddr {
    match addr {
        SocketAddr::V4(a) if v6 => {
            SocketAddr::V6(SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use bytes::Bytes;

    use crate::wire::{Header, HEADER_SIZE};

    /// A burst of data packets, each gathered from a header in the transmit buffer and a
    /// payload referenced where it lies (small ones copied in, an MTU probe's padding), goes
    /// out in segmented sends that the kernel accepts (segmentation is not turned off) and
    /// arrives as the same datagrams, byte for byte.
    #[tokio::test]
    async fn gathered_segmented_sends_arrive_as_the_datagrams_queued() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.set_nonblocking(true).unwrap();
        let io = UdpIo::new(Arc::new(register(udp).unwrap()), false).unwrap();
        let to = rx.local_addr().unwrap();
        #[cfg(target_os = "linux")]
        assert!(io.max_segments() > 1, "this kernel has UDP segmentation (Linux 4.18+)");
        let mut out = Transmits::default();
        let mut expected = Vec::new();
        for i in 0..40u32 {
            let header = Header {
                flags: crate::wire::FLAG_DATA,
                data_offset: if i == 3 { 16 } else { 0 },
                stream_id: 7,
                recv_window: 1 << 20,
                seq: i,
                ack: 0,
            };
            // Equal sizes in runs (one segmented send each), a short one ending each run,
            // and payloads small enough to be copied next to their header.
            let (len, padding) = match i {
                3 => (1164, 16),
                9 | 25 => (700, 0),
                30..=34 => (100, 0),
                _ => (1180, 0),
            };
            let payload = Bytes::from(
                (0..len)
                    .map(|b| (b as u32 * 7 + i) as u8)
                    .collect::<Vec<_>>(),
            );
            out.push_data(to, &header, padding, &payload);
            let mut datagram = Vec::new();
            header.write_to(&mut datagram);
            datagram.resize(HEADER_SIZE + padding, 0);
            datagram.extend_from_slice(&payload);
            expected.push(datagram);
        }
        let patience = std::time::Instant::now() + Duration::from_secs(10);
        while !io.flush(&mut out) {
            assert!(std::time::Instant::now() < patience, "socket never drained");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(
            !io.gso_refused.load(Ordering::Relaxed),
            "the kernel refused our segmentation request: the control message is malformed"
        );
        let mut buf = [0u8; 2048];
        for (i, want) in expected.iter().enumerate() {
            let n = rx.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], &want[..], "datagram {i}");
        }
    }

    /// The control message is `CMSG_SPACE(2)` bytes with `CMSG_LEN(2)` in its length field,
    /// as the kernel parses it (on this 64-bit Linux: a 16-byte header).
    #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
    #[test]
    fn the_segmentation_control_message_has_the_kernels_layout() {
        let (buf, len) = gso_control(1180);
        assert_eq!(len, 24);
        assert_eq!(&buf[..8], &18usize.to_ne_bytes());
        assert_eq!(&buf[8..12], &libc::SOL_UDP.to_ne_bytes());
        assert_eq!(&buf[12..16], &libc::UDP_SEGMENT.to_ne_bytes());
        assert_eq!(&buf[16..18], &1180u16.to_ne_bytes());
        assert!(buf[18..24].iter().all(|&b| b == 0));
    }

    /// The blocked-send path relies on epoll reporting a descriptor that is already writable
    /// when it is registered: the room freed between a failed send and `arm` must wake us.
    #[tokio::test]
    async fn an_armed_watch_reports_room_that_was_there_before_it_was_armed() {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.set_nonblocking(true).unwrap();
        let udp = register(udp).unwrap();
        let mut wait = WriteWait::new(&udp).unwrap();
        let quiet = Duration::from_millis(50);
        let patience = Duration::from_secs(10);
        assert!(
            tokio::time::timeout(quiet, wait.writable()).await.is_err(),
            "not armed: never ready"
        );
        for episode in 0..2 {
            wait.arm(&udp).unwrap();
            tokio::time::timeout(patience, wait.writable())
                .await
                .unwrap_or_else(|_| panic!("episode {episode}: writable socket not reported"));
            assert!(
                tokio::time::timeout(quiet, wait.writable()).await.is_err(),
                "episode {episode}: the readiness was consumed, the next wait needs a new edge"
            );
            wait.disarm();
        }
    }
}
