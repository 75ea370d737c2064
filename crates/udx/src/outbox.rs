//! Packets produced by the protocol state, waiting to be written to the socket.
//!
//! They are laid out back to back in one buffer that is reused, so building a burst costs
//! no allocation, and a burst for one peer is contiguous (ready for batched sends).

use std::io;
use std::net::SocketAddr;

use tokio::net::UdpSocket;

use crate::wire::{Header, HEADER_SIZE};

#[derive(Debug, Clone, Copy)]
struct Segment {
    start: usize,
    len: usize,
    addr: SocketAddr,
}

/// A queue of datagrams to send.
#[derive(Default)]
pub(crate) struct Outbox {
    buf: Vec<u8>,
    segments: Vec<Segment>,
    /// Segments before this index were sent already (a send hit a full socket buffer).
    next: usize,
}

impl Outbox {
    /// Queues a packet: header, `padding` zero bytes (MTU probe), payload.
    pub(crate) fn push_packet(
        &mut self,
        addr: SocketAddr,
        header: &Header,
        padding: usize,
        payload: &[u8],
    ) {
        let start = self.buf.len();
        header.write_to(&mut self.buf);
        self.buf.resize(self.buf.len() + padding, 0);
        self.buf.extend_from_slice(payload);
        self.segments.push(Segment {
            start,
            len: self.buf.len() - start,
            addr,
        });
    }

    /// Queues an ack with SACK blocks.
    pub(crate) fn push_ack(&mut self, addr: SocketAddr, header: &Header, blocks: &[(u32, u32)]) {
        let start = self.buf.len();
        self.buf.reserve(HEADER_SIZE + blocks.len() * 8);
        header.write_to(&mut self.buf);
        for (s, e) in blocks {
            self.buf.extend_from_slice(&s.to_le_bytes());
            self.buf.extend_from_slice(&e.to_le_bytes());
        }
        self.segments.push(Segment {
            start,
            len: self.buf.len() - start,
            addr,
        });
    }

    /// Number of datagrams not sent yet.
    pub(crate) fn pending(&self) -> usize {
        self.segments.len() - self.next
    }

    /// Writes queued datagrams until done (true) or the socket buffer is full (false: wait
    /// for writability and call again).
    /// `v6` says whether the socket is IPv6 (IPv4 destinations are then v4-mapped).
    pub(crate) fn flush(&mut self, udp: &UdpSocket, v6: bool) -> bool {
        while let Some(seg) = self.segments.get(self.next) {
            let data = &self.buf[seg.start..seg.start + seg.len];
            match udp.try_send_to(data, crate::socket::to_socket_family(seg.addr, v6)) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                // UDP is best effort: an unreachable or refused destination loses this
                // datagram only (retransmission and timeouts deal with the consequences).
                Err(e) => tracing::debug!(addr = %seg.addr, error = %e, "UDP send failed"),
            }
            self.next += 1;
        }
        self.buf.clear();
        self.segments.clear();
        self.next = 0;
        true
    }
}
