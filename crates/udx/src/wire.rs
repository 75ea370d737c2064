//! The UDX packet format, byte for byte as libudx writes it.
//!
//! Every packet starts with a 20-byte header; all integers are little-endian:
//!
//! | offset | size | field                                                        |
//! |--------|------|--------------------------------------------------------------|
//! | 0      | 1    | magic `0xFF`                                                 |
//! | 1      | 1    | version `1`                                                  |
//! | 2      | 1    | type flags (DATA, END, SACK, MESSAGE, DESTROY, HEARTBEAT)    |
//! | 3      | 1    | data offset: bytes between header and payload               |
//! | 4      | 4    | id of the *receiving* stream                                 |
//! | 8      | 4    | sender's receive window in bytes                             |
//! | 12     | 4    | sequence number (of this packet, or the next one for acks)   |
//! | 16     | 4    | cumulative ack: next sequence number the sender expects      |
//!
//! A SACK packet carries `(start, end)` pairs (end exclusive, LE u32) after the header;
//! libudx writes them with data offset 0 and the receiver then treats the whole rest of
//! the packet as SACK blocks. A DATA packet that is an MTU probe has `data offset` bytes of
//! zero padding before its payload.

/// First byte of every UDX packet.
pub const MAGIC: u8 = 0xFF;
/// Second byte of every UDX packet.
pub const VERSION: u8 = 1;
/// Size of the fixed header.
pub const HEADER_SIZE: usize = 20;

/// The packet carries stream data (consumes one sequence number).
pub const FLAG_DATA: u8 = 0x01;
/// The sender will write no more (consumes one sequence number; may come with DATA).
pub const FLAG_END: u8 = 0x02;
/// Selective-ack blocks follow the header.
pub const FLAG_SACK: u8 = 0x04;
/// Unreliable message on the stream (not used by this crate's streams; its ack is honoured).
pub const FLAG_MESSAGE: u8 = 0x08;
/// The sender tore the stream down.
pub const FLAG_DESTROY: u8 = 0x10;
/// Keepalive / zero-window probe: the receiver answers with an ack at once.
pub const FLAG_HEARTBEAT: u8 = 0x20;

/// libudx never sends more SACK blocks than this in one ack.
pub const MAX_SACKS: usize = 50;

/// A decoded UDX header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Type flags (`FLAG_*`).
    pub flags: u8,
    /// Bytes between the header and the payload (SACK blocks or MTU-probe padding).
    pub data_offset: u8,
    /// Stream id of the receiver of this packet.
    pub stream_id: u32,
    /// The sender's receive window in bytes.
    pub recv_window: u32,
    /// Sequence number.
    pub seq: u32,
    /// Cumulative acknowledgement.
    pub ack: u32,
}

impl Header {
    /// Parses the header if `buf` is a UDX packet (magic, version and length check).
    pub fn decode(buf: &[u8]) -> Option<Header> {
        if buf.len() < HEADER_SIZE || buf[0] != MAGIC || buf[1] != VERSION {
            return None;
        }
        let word = |at: usize| u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
        Some(Header {
            flags: buf[2],
            data_offset: buf[3],
            stream_id: word(4),
            recv_window: word(8),
            seq: word(12),
            ack: word(16),
        })
    }

    /// Writes the 20 header bytes into `out`.
    pub fn encode(&self, out: &mut [u8; HEADER_SIZE]) {
        out[0] = MAGIC;
        out[1] = VERSION;
        out[2] = self.flags;
        out[3] = self.data_offset;
        out[4..8].copy_from_slice(&self.stream_id.to_le_bytes());
        out[8..12].copy_from_slice(&self.recv_window.to_le_bytes());
        out[12..16].copy_from_slice(&self.seq.to_le_bytes());
        out[16..20].copy_from_slice(&self.ack.to_le_bytes());
    }

    /// Appends the header to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut h = [0u8; HEADER_SIZE];
        self.encode(&mut h);
        out.extend_from_slice(&h);
    }
}

/// Splits what follows the header into (SACK blocks, payload) the way libudx does.
///
/// Returns `None` when the data offset points past the end of the packet (libudx drops those).
pub fn split_body<'a>(header: &Header, body: &'a [u8]) -> Option<(SackBlocks<'a>, &'a [u8])> {
    let offset = header.data_offset as usize;
    let sack_bytes = if header.flags & FLAG_SACK != 0 {
        // libudx: the SACK area is `data_offset` bytes when that is set and smaller than the
        // body, otherwise the whole body.
        let len = if offset > 0 && offset < body.len() {
            offset
        } else {
            body.len()
        };
        &body[..len - len % 8]
    } else {
        &[][..]
    };
    if offset > body.len() {
        return None;
    }
    Some((SackBlocks(sack_bytes), &body[offset..]))
}

/// Iterator over `(start, end)` SACK ranges (end exclusive).
#[derive(Debug, Clone, Copy)]
pub struct SackBlocks<'a>(&'a [u8]);

impl Iterator for SackBlocks<'_> {
    type Item = (u32, u32);
    fn next(&mut self) -> Option<(u32, u32)> {
        if self.0.len() < 8 {
            return None;
        }
        let (block, rest) = self.0.split_at(8);
        self.0 = rest;
        let start = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        let end = u32::from_le_bytes([block[4], block[5], block[6], block[7]]);
        Some((start, end))
    }
}

/// Maps a 32-bit wire sequence number onto the 64-bit sequence space nearest to `reference`.
///
/// Internally every counter is a u64 that never wraps; on the wire only the low 32 bits
/// travel, so an incoming number is interpreted as the one within ±2^31 of what we expect.
pub fn unwrap_seq(reference: u64, wire: u32) -> u64 {
    let delta = wire.wrapping_sub(reference as u32) as i32 as i64;
    (reference as i64).wrapping_add(delta).max(0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Golden packets captured from libudx (the crates.io libudx fixture set).
    #[test]
    fn decodes_and_reencodes_libudx_packets() {
        let data = hex("ff0101002a00000000004000000000000000000068656c6c6f");
        let h = Header::decode(&data).unwrap();
        assert_eq!(
            h,
            Header {
                flags: FLAG_DATA,
                data_offset: 0,
                stream_id: 42,
                recv_window: 4 << 20,
                seq: 0,
                ack: 0
            }
        );
        let (mut sacks, payload) = split_body(&h, &data[HEADER_SIZE..]).unwrap();
        assert_eq!(payload, b"hello");
        assert!(sacks.next().is_none());
        let mut out = Vec::new();
        h.write_to(&mut out);
        assert_eq!(out, data[..HEADER_SIZE]);

        let end = hex("ff0102002a000000000040000100000000000000");
        let h = Header::decode(&end).unwrap();
        assert_eq!(h.flags, FLAG_END);
        assert_eq!(h.seq, 1);
        assert_eq!(split_body(&h, &end[HEADER_SIZE..]).unwrap().1, b"");
    }

    #[test]
    fn rejects_non_udx() {
        assert!(Header::decode(&[0xFF, 1, 0]).is_none());
        let mut p = hex("ff0101002a00000000004000000000000000000068656c6c6f");
        p[1] = 2;
        assert!(Header::decode(&p).is_none());
        p[1] = 1;
        p[0] = 0x13;
        assert!(Header::decode(&p).is_none());
    }

    #[test]
    fn sack_blocks_and_probe_padding() {
        let h = Header {
            flags: FLAG_SACK,
            data_offset: 0,
            stream_id: 1,
            recv_window: 0,
            seq: 0,
            ack: 3,
        };
        let mut body = Vec::new();
        for (s, e) in [(5u32, 7u32), (9, 10)] {
            body.extend_from_slice(&s.to_le_bytes());
            body.extend_from_slice(&e.to_le_bytes());
        }
        let (sacks, payload) = split_body(&h, &body).unwrap();
        assert_eq!(sacks.collect::<Vec<_>>(), vec![(5, 7), (9, 10)]);
        assert_eq!(payload, &body[..]); // libudx semantics: offset 0 => payload starts at body

        let probe = Header {
            flags: FLAG_DATA,
            data_offset: 3,
            ..h
        };
        let (_, payload) = split_body(&probe, &[0, 0, 0, b'x']).unwrap();
        assert_eq!(payload, b"x");
        assert!(split_body(&probe, &[0, 0]).is_none());
    }

    #[test]
    fn unwraps_across_the_32_bit_boundary() {
        assert_eq!(unwrap_seq(0, 0), 0);
        assert_eq!(unwrap_seq(10, 12), 12);
        assert_eq!(unwrap_seq(10, 8), 8);
        assert_eq!(unwrap_seq(0xFFFF_FFF0, 5), 0x1_0000_0005);
        assert_eq!(unwrap_seq(0x1_0000_0005, 0xFFFF_FFF0), 0xFFFF_FFF0);
        assert_eq!(unwrap_seq(3, 0xFFFF_FFFF), 0); // never below zero
    }
}
