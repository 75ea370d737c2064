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

use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV6, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::proto::Transmits;

/// Receive buffers per `recvmmsg` call.
const RECV_BUFFERS: usize = 16;
/// Size of each receive buffer: a whole GRO batch (or the largest UDP datagram) fits.
const RECV_BUFFER_SIZE: usize = 65536;
/// Upper bound for the payload of one GSO send (IPv4's 65,507-byte limit, with room to spare).
const MAX_GSO_BYTES: usize = 64000;

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
        Ok(UdpIo { udp, state, v6 })
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
    /// as one segmented (GSO) send where the platform supports it.
    pub(crate) fn flush(&self, out: &mut Transmits) -> bool {
        while let Some((addr, bytes, segment, count)) =
            out.next_batch(self.max_segments(), self.max_gso_bytes())
        {
            let segment_size = (count > 1).then_some(segment);
            if self.send(addr, bytes, segment_size).is_err() {
                return false; // WouldBlock
            }
            out.consume(count);
        }
        true
    }

    /// How many datagrams one send may carry.
    pub(crate) fn max_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    /// Sends `contents` to `dest`: one datagram, or with `segment_size` several of that
    /// size (the last may be shorter). Only `WouldBlock` is reported; other errors lose the
    /// datagrams, as UDP may.
    pub(crate) fn send(
        &self,
        dest: SocketAddr,
        contents: &[u8],
        segment_size: Option<usize>,
    ) -> io::Result<()> {
        let transmit = Transmit {
            destination: to_socket_family(dest, self.v6),
            ecn: None,
            contents,
            segment_size,
            src_ip: None,
        };
        // Straight to the kernel: the runtime does not track writability (see the module
        // comment), and a full buffer answers WouldBlock by itself.
        match self.state.try_send(self.udp.get_ref().into(), &transmit) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(e),
            Err(e) => {
                // Unreachable or refused destination: retransmission and timeouts deal
                // with the consequences.
                tracing::debug!(addr = %dest, error = %e, "UDP send failed");
                Ok(())
            }
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
