//! Packets produced by the protocol state, waiting to be written to the socket.
//!
//! They are laid out back to back in one buffer that is reused, so building a burst costs
//! no allocation, and a burst for one peer is contiguous (ready for batched sends).

use std::net::SocketAddr;

use crate::udp_io::UdpIo;
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
    /// for writability and call again). Runs of equal-sized datagrams to the same peer go out
    /// as one segmented (GSO) send where the platform supports it.
    pub(crate) fn flush(&mut self, io: &UdpIo) -> bool {
        let max_segments = io.max_segments();
        while let Some(first) = self.segments.get(self.next).copied() {
            let mut count = 1;
            let mut end = first.start + first.len;
            while count < max_segments {
                let Some(seg) = self.segments.get(self.next + count) else {
                    break;
                };
                // GSO: same destination, contiguous, same size (only the last may be shorter).
                if seg.addr != first.addr
                    || seg.start != end
                    || seg.len > first.len
                    || end - first.start + seg.len > io.max_gso_bytes()
                {
                    break;
                }
                end += seg.len;
                count += 1;
                if seg.len < first.len {
                    break;
                }
            }
            let segment_size = (count > 1).then_some(first.len);
            if io
                .send(first.addr, &self.buf[first.start..end], segment_size)
                .is_err()
            {
                return false; // WouldBlock
            }
            self.next += count;
        }
        self.buf.clear();
        self.segments.clear();
        self.next = 0;
        true
    }
}
