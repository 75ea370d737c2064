//! A byte queue that copies what is appended once and never again: what a stream's writer
//! hands to the driver, and what the driver received in order for the reader.
//!
//! A `BytesMut` that is appended to while its earlier contents wait to be taken grows by
//! reallocation, which copies those contents again: in the profile of a bulk transfer, the
//! writer's buffer growing under 256 KiB writes was 7 % of the CPU, as much as the copy
//! of the writes themselves. Here a buffer is never grown: when an append does not fit, what
//! it holds becomes a chunk of its own and the rest of the append goes to a fresh allocation.
//! Chunks are taken out in order as `BytesMut`, sharing the allocations, so taking them copies
//! nothing either.

use std::collections::VecDeque;

use bytes::BytesMut;

/// Size of each allocation of the send side. All the same and under the allocator's
/// threshold for a mapping of its own (glibc's starts at 128 KiB), so a freed one is reused
/// by the next instead of being handed back to the kernel and faulted in afresh: chunks the
/// size of the writes (256 KiB in the benchmark) tripled the page faults of a bulk transfer. A
/// write larger than this spans chunks; the stream joins the short tail of one with the head
/// of the next (a copy of less than a packet per allocation).
pub(crate) const SEND_ALLOCATION: usize = 64 << 10;

/// Bytes in order, as chunks. See the module documentation.
pub(crate) struct ChunkQueue {
    /// Chunks cut off because an append did not fit behind them, oldest first.
    full: VecDeque<BytesMut>,
    /// The newest bytes, with room behind them.
    tail: BytesMut,
    /// Bytes held, in `full` and `tail`.
    len: usize,
    /// Size of each allocation.
    allocation: usize,
}

impl Default for ChunkQueue {
    fn default() -> ChunkQueue {
        ChunkQueue::new(SEND_ALLOCATION)
    }
}

impl ChunkQueue {
    /// A queue that allocates `allocation` bytes at a time (none until the first append).
    pub(crate) fn new(allocation: usize) -> ChunkQueue {
        ChunkQueue {
            full: VecDeque::new(),
            tail: BytesMut::new(),
            len: 0,
            allocation,
        }
    }

    /// Appends a copy of `data`, filling the current allocation before starting another.
    pub(crate) fn push(&mut self, mut data: &[u8]) {
        self.len += data.len();
        while !data.is_empty() {
            let room = self.tail.capacity() - self.tail.len();
            if room == 0 {
                if !self.tail.is_empty() {
                    self.full.push_back(self.tail.split());
                }
                // Empty now: this allocates (or reuses an allocation nobody else holds any
                // more) without copying anything.
                self.tail.reserve(self.allocation);
                continue;
            }
            let n = room.min(data.len());
            self.tail.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
    }

    /// The oldest bytes not taken yet, as one chunk. Chunks taken one after the other from
    /// the same allocation lie next to each other in memory (see `BytesMut::unsplit`).
    pub(crate) fn pop(&mut self) -> Option<BytesMut> {
        let chunk = match self.full.pop_front() {
            Some(chunk) => chunk,
            None if !self.tail.is_empty() => self.tail.split(),
            None => return None,
        };
        self.len -= chunk.len();
        Some(chunk)
    }

    /// Bytes held.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Drops what is held (the allocation it shared with nothing else goes too).
    pub(crate) fn clear(&mut self) {
        self.full.clear();
        self.tail = BytesMut::new();
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever the sizes of the appends and whenever chunks are taken, the bytes come out
    /// in order, none lost or repeated, and the length is right at every step.
    #[test]
    fn bytes_come_out_in_order_whatever_the_append_and_take_pattern() {
        let mut q = ChunkQueue::default();
        let mut expected = Vec::new();
        let mut got = Vec::new();
        let mut next = 0u8;
        let mut seed = 0x2545_f491_u32;
        for step in 0..2000 {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            let len = match seed % 4 {
                0 => (seed % 16) as usize,
                1 => 1452,
                2 => (seed % 70_000) as usize,
                _ => SEND_ALLOCATION,
            };
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    next = next.wrapping_add(1);
                    next
                })
                .collect();
            q.push(&data);
            expected.extend_from_slice(&data);
            if step % 3 == 0 {
                while let Some(chunk) = q.pop() {
                    assert!(!chunk.is_empty(), "no empty chunks");
                    got.extend_from_slice(&chunk);
                }
                assert_eq!(q.len(), 0);
            }
            assert_eq!(got.len() + q.len(), expected.len());
        }
        while let Some(chunk) = q.pop() {
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got, expected);
        assert!(q.pop().is_none());
    }

    /// An append that does not fit fills the allocation and goes on in a new one instead of
    /// moving what is held: the bytes held before it keep their address.
    #[test]
    fn held_bytes_are_never_moved() {
        let mut q = ChunkQueue::default();
        q.push(&[1; 1000]);
        let before = q.tail.as_ptr();
        q.push(&vec![2; SEND_ALLOCATION]);
        let first = q.pop().unwrap();
        assert_eq!(first.as_ptr(), before, "the first bytes were not copied");
        assert_eq!(first.len(), SEND_ALLOCATION);
        assert_eq!(&first[..1001], &[&[1; 1000][..], &[2]].concat()[..]);
        assert_eq!(q.pop().unwrap().len(), 1000);
        assert!(q.pop().is_none());
    }
}
