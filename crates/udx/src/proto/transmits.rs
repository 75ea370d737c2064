//! Datagrams produced by the protocol core, waiting to be written to the socket.
//!
//! They are laid out back to back in one buffer that is reused, so building a burst costs
//! no allocation, and a burst for one peer is contiguous (ready for batched sends).

use std::net::SocketAddr;

use crate::wire::{Header, HEADER_SIZE};

#[derive(Debug, Clone, Copy)]
struct Segment {
    start: usize,
    len: usize,
    addr: SocketAddr,
}

/// A queue of datagrams to send.
#[derive(Default)]
pub struct Transmits {
    buf: Vec<u8>,
    segments: Vec<Segment>,
    /// Segments before this index were sent already (a send hit a full socket buffer).
    next: usize,
}

impl Transmits {
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
    pub fn pending(&self) -> usize {
        self.segments.len() - self.next
    }

    /// The next queued datagram and its destination, without taking it.
    pub fn peek(&self) -> Option<(SocketAddr, &[u8])> {
        let seg = self.segments.get(self.next)?;
        Some((seg.addr, &self.buf[seg.start..seg.start + seg.len]))
    }

    /// Takes the next queued datagram (copied out; the simulator and tests use this).
    pub fn pop(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        let (addr, data) = self.peek().map(|(a, d)| (a, d.to_vec()))?;
        self.consume(1);
        Some((addr, data))
    }

    /// The queued datagrams from the next one on that go out together in one segmented
    /// send: same destination, back to back, equal sizes (only the last may be shorter), at
    /// most `max_segments` of them and `max_bytes` in all. Returns (destination, bytes,
    /// segment size, count).
    pub(crate) fn next_batch(
        &self,
        max_segments: usize,
        max_bytes: usize,
    ) -> Option<(SocketAddr, &[u8], usize, usize)> {
        let first = self.segments.get(self.next).copied()?;
        let mut count = 1;
        let mut end = first.start + first.len;
        while count < max_segments {
            let Some(seg) = self.segments.get(self.next + count) else {
                break;
            };
            if seg.addr != first.addr
                || seg.start != end
                || seg.len > first.len
                || end - first.start + seg.len > max_bytes
            {
                break;
            }
            end += seg.len;
            count += 1;
            if seg.len < first.len {
                break;
            }
        }
        Some((first.addr, &self.buf[first.start..end], first.len, count))
    }

    /// Marks the next `count` datagrams as sent; frees the buffer once all are.
    pub fn consume(&mut self, count: usize) {
        self.next = (self.next + count).min(self.segments.len());
        if self.next == self.segments.len() {
            self.buf.clear();
            self.segments.clear();
            self.next = 0;
        }
    }
}
