//! holesail's datagram framing (`@holesail/hyper-cmd-lib-net`'s `createUdpFramedProxy` and
//! `pipeUdpFramedServer`): on the encrypted stream of one flow, every datagram travels as a
//! 4-byte big-endian length followed by that many bytes. The stream is a byte stream to this
//! framing: a frame may be split over several stream messages, and one message may hold several
//! frames.
//!
//! Pure: no I/O, so every case is a table entry in the tests below.

use thiserror::Error;

/// The largest datagram a flow carries: the most a UDP datagram's length field can say.
/// holesail's prefix could say up to 4 GiB; a longer frame than any datagram is junk, and
/// buffering it would let a peer choose our memory.
pub const MAX_DATAGRAM: usize = u16::MAX as usize;

/// Bytes of the length prefix.
const PREFIX: usize = 4;

/// What ends a flow's decoding.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    /// The peer announced a frame longer than any datagram.
    #[error("the peer sent a frame of {len} bytes, more than the largest datagram ({MAX_DATAGRAM} bytes)")]
    TooLong {
        /// The length the prefix announced.
        len: u64,
    },
}

/// One datagram as it goes on the stream: its length prefix, then its bytes.
///
/// The caller keeps datagrams within [`MAX_DATAGRAM`] (a UDP socket cannot deliver more).
pub fn encode(datagram: &[u8]) -> Vec<u8> {
    debug_assert!(datagram.len() <= MAX_DATAGRAM);
    let mut frame = Vec::with_capacity(PREFIX + datagram.len());
    frame.extend_from_slice(&(datagram.len() as u32).to_be_bytes());
    frame.extend_from_slice(datagram);
    frame
}

/// Reassembles datagrams from the stream's messages. It holds at most one unfinished frame,
/// so its memory never exceeds a prefix and [`MAX_DATAGRAM`] bytes, whatever the peer sends.
#[derive(Debug, Default)]
pub struct Decoder {
    /// The unfinished frame so far: prefix bytes, then once the prefix is whole, the datagram.
    partial: Vec<u8>,
}

impl Decoder {
    /// Takes the next whole datagram out of `input` (advancing it past what was used), keeping
    /// an unfinished frame's bytes for the next call. `Ok(None)` once `input` is used up without
    /// finishing a frame. After an error the flow is done: the stream cannot be resynchronised.
    pub fn next_datagram(&mut self, input: &mut &[u8]) -> Result<Option<Vec<u8>>, FrameError> {
        if self.partial.len() < PREFIX {
            let want = (PREFIX - self.partial.len()).min(input.len());
            self.partial.extend_from_slice(&input[..want]);
            *input = &input[want..];
            if self.partial.len() < PREFIX {
                return Ok(None);
            }
        }
        let len = self.announced();
        if len > MAX_DATAGRAM {
            return Err(FrameError::TooLong { len: len as u64 });
        }
        let have = self.partial.len() - PREFIX;
        let want = (len - have).min(input.len());
        self.partial.extend_from_slice(&input[..want]);
        *input = &input[want..];
        if self.partial.len() - PREFIX < len {
            return Ok(None);
        }
        let datagram = self.partial.split_off(PREFIX);
        self.partial.clear();
        Ok(Some(datagram))
    }

    /// The length the (whole) prefix announces.
    fn announced(&self) -> usize {
        let prefix: [u8; PREFIX] = self.partial[..PREFIX]
            .try_into()
            .expect("called with a whole prefix");
        u32::from_be_bytes(prefix) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a stream of messages decodes to.
    type Decoded = Result<Vec<Vec<u8>>, FrameError>;

    /// Feeds `messages` one after the other and collects every datagram, or the error.
    fn decode_all(messages: &[&[u8]]) -> Decoded {
        let mut decoder = Decoder::default();
        let mut out = Vec::new();
        for message in messages {
            let mut input = *message;
            while let Some(d) = decoder.next_datagram(&mut input)? {
                out.push(d);
            }
            assert!(input.is_empty(), "the decoder left input unread");
        }
        Ok(out)
    }

    #[test]
    fn encode_prefixes_the_big_endian_length() {
        assert_eq!(encode(b""), vec![0, 0, 0, 0]);
        assert_eq!(encode(b"hi"), vec![0, 0, 0, 2, b'h', b'i']);
        let big = vec![7u8; MAX_DATAGRAM];
        assert_eq!(&encode(&big)[..4], &[0, 0, 0xff, 0xff]);
    }

    #[test]
    fn table() {
        let two = [encode(b"one"), encode(b"two")].concat();
        let max = encode(&vec![1u8; MAX_DATAGRAM]);
        let cases: Vec<(&str, Vec<&[u8]>, Decoded)> = vec![
            ("nothing", vec![], Ok(vec![])),
            ("empty message", vec![b""], Ok(vec![])),
            ("empty datagram", vec![&[0, 0, 0, 0]], Ok(vec![vec![]])),
            ("one frame", vec![&[0, 0, 0, 1, 9]], Ok(vec![vec![9]])),
            (
                "two frames in one message",
                vec![&two],
                Ok(vec![b"one".to_vec(), b"two".to_vec()]),
            ),
            (
                "prefix split",
                vec![&[0, 0], &[0, 2, 5], &[6]],
                Ok(vec![vec![5, 6]]),
            ),
            (
                "byte by byte",
                vec![&[0], &[0], &[0], &[1], &[42]],
                Ok(vec![vec![42]]),
            ),
            ("unfinished prefix", vec![&[0, 0, 0]], Ok(vec![])),
            ("unfinished datagram", vec![&[0, 0, 0, 3, 1, 2]], Ok(vec![])),
            (
                "largest datagram",
                vec![&max],
                Ok(vec![vec![1u8; MAX_DATAGRAM]]),
            ),
            (
                "one past the largest",
                vec![&[0, 1, 0, 0]],
                Err(FrameError::TooLong { len: 65536 }),
            ),
            (
                "the largest prefix",
                vec![&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]],
                Err(FrameError::TooLong {
                    len: u32::MAX as u64,
                }),
            ),
            (
                "junk after a good frame",
                vec![&[0, 0, 0, 1, 8, 0x80, 0, 0, 0]],
                Err(FrameError::TooLong { len: 0x8000_0000 }),
            ),
        ];
        for (name, messages, expected) in cases {
            assert_eq!(decode_all(&messages), expected, "{name}");
        }
    }

    #[test]
    fn every_split_of_a_stream_decodes_the_same() {
        let datagrams: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; i as usize * 3]).collect();
        let stream: Vec<u8> = datagrams.iter().flat_map(|d| encode(d)).collect();
        for chunk in 1..=stream.len() {
            let messages: Vec<&[u8]> = stream.chunks(chunk).collect();
            assert_eq!(
                decode_all(&messages).unwrap(),
                datagrams,
                "chunks of {chunk}"
            );
        }
    }

    #[test]
    fn junk_never_panics_and_memory_stays_bounded() {
        // xorshift: deterministic junk of every shape, fed in messages of varying sizes.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            let mut decoder = Decoder::default();
            for _ in 0..8 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let len = (x % 64) as usize;
                let message: Vec<u8> = (0..len)
                    .map(|i| (x >> (i % 8 * 8)) as u8 & if i % 4 == 0 { 0 } else { 0xff })
                    .collect();
                let mut input = &message[..];
                loop {
                    match decoder.next_datagram(&mut input) {
                        Ok(Some(d)) => assert!(d.len() <= MAX_DATAGRAM),
                        Ok(None) => break,
                        Err(FrameError::TooLong { len }) => {
                            assert!(len > MAX_DATAGRAM as u64);
                            break;
                        }
                    }
                }
                assert!(decoder.partial.len() <= PREFIX + MAX_DATAGRAM);
            }
        }
    }
}
