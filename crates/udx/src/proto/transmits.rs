//! Datagrams produced by the protocol core, waiting to be written to the socket.
//!
//! Headers (and small payloads) are laid out back to back in one buffer that is reused, so
//! building a burst costs no allocation. A data packet's payload is not copied in: the
//! datagram keeps a reference to the stream's `Bytes` (which it holds anyway until the packet
//! is acknowledged), and the socket gathers header and payload in one vectored send. That
//! copy was a tenth of a bulk transfer's CPU.

use std::io::IoSlice;
use std::net::SocketAddr;

use bytes::Bytes;

use crate::wire::{Header, HEADER_SIZE};

/// Payloads up to this size are copied next to their header rather than referenced: one
/// slice fewer in the send, for a copy that costs less than the reference.
const INLINE_PAYLOAD: usize = 128;

#[derive(Debug, Clone)]
struct Segment {
    /// Where its header (and inline payload) starts in the buffer.
    start: usize,
    /// Bytes in the buffer.
    inline: usize,
    /// The payload, when it is not inline.
    payload: Bytes,
    addr: SocketAddr,
}

impl Segment {
    fn len(&self) -> usize {
        self.inline + self.payload.len()
    }
}

/// A run of queued datagrams that go out in one segmented send (see [`Transmits::next_batch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Batch {
    /// Where they go.
    pub(crate) addr: SocketAddr,
    /// Size of each (the last may be shorter).
    pub(crate) segment: usize,
    /// How many.
    pub(crate) count: usize,
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
    /// Queues a packet: header, `padding` zero bytes (MTU probe), payload (copied).
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
            inline: self.buf.len() - start,
            payload: Bytes::new(),
            addr,
        });
    }

    /// Queues a packet whose payload is referenced, not copied (unless it is small).
    pub(crate) fn push_data(
        &mut self,
        addr: SocketAddr,
        header: &Header,
        padding: usize,
        payload: &Bytes,
    ) {
        if payload.len() <= INLINE_PAYLOAD {
            return self.push_packet(addr, header, padding, payload);
        }
        self.push_packet(addr, header, padding, &[]);
        if let Some(seg) = self.segments.last_mut() {
            seg.payload = payload.clone();
        }
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
            inline: self.buf.len() - start,
            payload: Bytes::new(),
            addr,
        });
    }

    /// Number of datagrams not sent yet.
    pub fn pending(&self) -> usize {
        self.segments.len() - self.next
    }

    /// Takes the next queued datagram (copied out; the simulator and tests use this).
    pub fn pop(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        let seg = self.segments.get(self.next)?;
        let mut data = Vec::with_capacity(seg.len());
        data.extend_from_slice(&self.buf[seg.start..seg.start + seg.inline]);
        data.extend_from_slice(&seg.payload);
        let addr = seg.addr;
        self.consume(1);
        Some((addr, data))
    }

    /// The queued datagrams from the next one on that go out together in one segmented
    /// send: same destination, equal sizes (only the last may be shorter), at most
    /// `max_segments` of them and `max_bytes` in all.
    pub(crate) fn next_batch(&self, max_segments: usize, max_bytes: usize) -> Option<Batch> {
        let first = self.segments.get(self.next)?;
        let segment = first.len();
        let mut count = 1;
        let mut total = segment;
        while count < max_segments {
            let Some(seg) = self.segments.get(self.next + count) else {
                break;
            };
            let len = seg.len();
            if seg.addr != first.addr || len > segment || total + len > max_bytes {
                break;
            }
            total += len;
            count += 1;
            if len < segment {
                break;
            }
        }
        Some(Batch {
            addr: first.addr,
            segment,
            count,
        })
    }

    /// The bytes of the next `count` datagrams, in order, as slices for a vectored send.
    pub(crate) fn slices(&self, count: usize) -> Vec<IoSlice<'_>> {
        let mut slices = Vec::with_capacity(count * 2);
        for seg in self.segments[self.next..].iter().take(count) {
            slices.push(IoSlice::new(&self.buf[seg.start..seg.start + seg.inline]));
            if !seg.payload.is_empty() {
                slices.push(IoSlice::new(&seg.payload));
            }
        }
        slices
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
