//! What travels on a relay connection: protomux framing (only what one `blind-relay` channel
//! needs) and the channel's two messages, byte for byte as Node's `protomux` 3.x and
//! `blind-relay` 1.x write them.
//!
//! Frames (compact-encoding; `uint` is 1 byte below 0xfd, else 0xfd/0xfe/0xff and 2/4/8 bytes LE):
//!
//! | frame | bytes |
//! | --- | --- |
//! | open | `uint 0, uint 1, uint local_id, string protocol, buffer id` (then an optional handshake) |
//! | reject | `uint 0, uint 2, uint remote_id` (the id the rejected side opened with) |
//! | close | `uint 0, uint 3, uint local_id` |
//! | batch | `uint 0, uint 0, uint channel, (buffer message)*`, a zero-length buffer then a `uint` switches channel |
//! | message | `uint channel, uint type, payload` |
//!
//! A channel is named by `(protocol, id)`; each side opens it with its own local id and sends
//! its messages under that id. `blind-relay`'s messages: `pair` (type 0) is a flags byte
//! (bit 0: `isInitiator`), the 32-byte token, `uint` stream id, `uint` sequence number;
//! `unpair` (type 1) is a flags byte (0) and the token.
//!
//! The encoders of `peeroxide-dht`'s protomux are used for frames; decoding is ours, written to
//! take hostile input from anyone who connects to a public relay: every length is checked, and
//! what a frame decodes into is bounded by a small multiple of the frame (see [`decode`]).

use peeroxide_dht::protomux::{encode_close, encode_message, encode_open, encode_reject};

/// The protomux protocol name of a blind relay channel.
pub(crate) const PROTOCOL: &str = "blind-relay";
const MSG_PAIR: u64 = 0;
const MSG_UNPAIR: u64 = 1;

/// Our one channel's local id on every relay connection.
pub(crate) const CHANNEL: u64 = 1;

/// A relay token: both sides of a relayed connection pair with the same one.
pub(crate) type Token = [u8; 32];

/// `pair`: a request to be joined with whoever pairs with the same token from the other side;
/// the relay answers with the same message, naming the stream it made for us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pair {
    pub(crate) is_initiator: bool,
    pub(crate) token: Token,
    /// The sender's UDX stream id.
    pub(crate) id: u64,
    pub(crate) seq: u64,
}

/// What arrived on a relay connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Incoming {
    /// The other side opened a channel.
    Open {
        remote_id: u64,
        protocol: String,
        id: Option<Vec<u8>>,
    },
    /// The other side refused to open our channel `local_id`.
    Reject {
        local_id: u64,
    },
    /// The other side closed its channel.
    Close {
        remote_id: u64,
    },
    Pair {
        remote_id: u64,
        pair: Pair,
    },
    Unpair {
        remote_id: u64,
        token: Token,
    },
}

/// Input that is not a well-formed frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed protomux frame: {0}")]
pub(crate) struct Malformed(&'static str);

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, Malformed> {
        let (&b, rest) = self.buf.split_first().ok_or(Malformed("truncated"))?;
        self.buf = rest;
        Ok(b)
    }

    fn bytes(&mut self, n: u64) -> Result<&'a [u8], Malformed> {
        let n = usize::try_from(n).map_err(|_| Malformed("length out of range"))?;
        if n > self.buf.len() {
            return Err(Malformed("length past the end"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn uint(&mut self) -> Result<u64, Malformed> {
        let width = match self.byte()? {
            b @ 0..=0xfc => return Ok(u64::from(b)),
            0xfd => 2,
            0xfe => 4,
            _ => 8,
        };
        let mut le = [0u8; 8];
        le[..width].copy_from_slice(self.bytes(width as u64)?);
        Ok(u64::from_le_bytes(le))
    }

    fn buffer(&mut self) -> Result<&'a [u8], Malformed> {
        let len = self.uint()?;
        self.bytes(len)
    }

    fn token(&mut self) -> Result<Token, Malformed> {
        let mut token = [0u8; 32];
        token.copy_from_slice(self.bytes(32)?);
        Ok(token)
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

fn put_uint(out: &mut Vec<u8>, n: u64) {
    match n {
        0..=0xfc => out.push(n as u8),
        0xfd..=0xffff => {
            out.push(0xfd);
            out.extend_from_slice(&(n as u16).to_le_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(0xfe);
            out.extend_from_slice(&(n as u32).to_le_bytes());
        }
        _ => {
            out.push(0xff);
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
}

/// Our channel's open frame.
pub(crate) fn open(id: &[u8]) -> Vec<u8> {
    encode_open(CHANNEL, PROTOCOL, Some(id), None)
}

/// Our channel's close frame.
pub(crate) fn close() -> Vec<u8> {
    encode_close(CHANNEL)
}

/// Refuses a channel the other side opened.
pub(crate) fn reject(remote_id: u64) -> Vec<u8> {
    encode_reject(remote_id)
}

/// A `pair` message on our channel.
pub(crate) fn pair(p: &Pair) -> Vec<u8> {
    let mut body = Vec::with_capacity(1 + 32 + 9 + 9);
    body.push(u8::from(p.is_initiator));
    body.extend_from_slice(&p.token);
    put_uint(&mut body, p.id);
    put_uint(&mut body, p.seq);
    encode_message(CHANNEL, MSG_PAIR, &body)
}

/// An `unpair` message on our channel.
pub(crate) fn unpair(token: &Token) -> Vec<u8> {
    let mut body = Vec::with_capacity(33);
    body.push(0);
    body.extend_from_slice(token);
    encode_message(CHANNEL, MSG_UNPAIR, &body)
}

/// The fewest bytes of a batch that can decode into one item: a one-byte length, the type, and
/// `unpair`'s flags and token. Messages we do not use yield nothing, so a batch yields at most
/// one item per this many bytes.
const MIN_ITEM_BYTES: usize = 1 + 1 + 1 + 32;

/// Decodes one frame. A batch yields one item per `pair` or `unpair` in it; messages of other
/// types are skipped without a trace, so that a frame of tiny unknown messages (two bytes each)
/// costs nothing: the items of a frame take at most `frame.len() / MIN_ITEM_BYTES` slots.
pub(crate) fn decode(frame: &[u8]) -> Result<Vec<Incoming>, Malformed> {
    let mut r = Reader { buf: frame };
    let channel = r.uint()?;
    if channel != 0 {
        return Ok(message(channel, &mut r)?.into_iter().collect());
    }
    Ok(match r.uint()? {
        0 => {
            let mut items = Vec::new();
            let mut channel = r.uint()?;
            while !r.is_empty() {
                let body = r.buffer()?;
                if body.is_empty() {
                    channel = r.uint()?;
                    continue;
                }
                items.extend(message(channel, &mut Reader { buf: body })?);
            }
            debug_assert!(items.len() <= frame.len() / MIN_ITEM_BYTES);
            items
        }
        1 => {
            let remote_id = r.uint()?;
            let protocol = String::from_utf8_lossy(r.buffer()?).into_owned();
            let id = r.buffer()?;
            // What follows is the channel's handshake; blind-relay has none.
            vec![Incoming::Open {
                remote_id,
                protocol,
                id: (!id.is_empty()).then(|| id.to_vec()),
            }]
        }
        2 => vec![Incoming::Reject {
            local_id: r.uint()?,
        }],
        3 => vec![Incoming::Close {
            remote_id: r.uint()?,
        }],
        _ => return Err(Malformed("unknown control message")),
    })
}

/// One channel message: `None` for a type we do not use.
fn message(remote_id: u64, r: &mut Reader<'_>) -> Result<Option<Incoming>, Malformed> {
    Ok(Some(match r.uint()? {
        MSG_PAIR => {
            let flags = r.byte()?;
            let token = r.token()?;
            let id = r.uint()?;
            let seq = r.uint()?;
            Incoming::Pair {
                remote_id,
                pair: Pair {
                    is_initiator: flags & 1 != 0,
                    token,
                    id,
                    seq,
                },
            }
        }
        MSG_UNPAIR => {
            r.byte()?;
            Incoming::Unpair {
                remote_id,
                token: r.token()?,
            }
        }
        _ => return Ok(None),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(b: u8) -> Token {
        [b; 32]
    }

    #[test]
    fn pair_round_trips_with_every_uint_width() {
        for id in [0, 0xfc, 0xfd, 0xffff, 0x1_0000, 0xffff_ffff, 1 << 40] {
            let p = Pair {
                is_initiator: id % 2 == 0,
                token: token(7),
                id,
                seq: 0,
            };
            let got = decode(&pair(&p)).unwrap();
            assert_eq!(
                got,
                vec![Incoming::Pair {
                    remote_id: CHANNEL,
                    pair: p
                }]
            );
        }
    }

    #[test]
    fn pair_bytes_match_blind_relay() {
        // blind-relay's m.pair.encode({ isInitiator: true, token: 0x01 x32, id: 300, seq: 0 })
        // behind protomux's channel 1, message type 0.
        let p = Pair {
            is_initiator: true,
            token: token(1),
            id: 300,
            seq: 0,
        };
        let mut want = vec![1, 0, 1];
        want.extend_from_slice(&[1; 32]);
        want.extend_from_slice(&[0xfd, 0x2c, 0x01, 0]);
        assert_eq!(pair(&p), want);
    }

    #[test]
    fn open_close_reject_unpair() {
        assert_eq!(
            decode(&open(&[9; 32])).unwrap(),
            vec![Incoming::Open {
                remote_id: CHANNEL,
                protocol: PROTOCOL.into(),
                id: Some(vec![9; 32])
            }]
        );
        assert_eq!(
            decode(&close()).unwrap(),
            vec![Incoming::Close { remote_id: CHANNEL }]
        );
        assert_eq!(
            decode(&reject(5)).unwrap(),
            vec![Incoming::Reject { local_id: 5 }]
        );
        assert_eq!(
            decode(&unpair(&token(3))).unwrap(),
            vec![Incoming::Unpair {
                remote_id: CHANNEL,
                token: token(3)
            }]
        );
    }

    #[test]
    fn a_batch_yields_each_message() {
        // protomux batch: [0, 0, channel 2, buffer(pair), buffer(unpair), 0, channel 3, buffer(x)]
        let body = |frame: Vec<u8>| frame[1..].to_vec(); // drop the channel id
        let p = Pair {
            is_initiator: false,
            token: token(4),
            id: 17,
            seq: 0,
        };
        let mut batch = vec![0, 0, 2];
        for m in [body(pair(&p)), body(unpair(&token(4)))] {
            put_uint(&mut batch, m.len() as u64);
            batch.extend_from_slice(&m);
        }
        batch.extend_from_slice(&[0, 3, 1, 9]);
        assert_eq!(
            decode(&batch).unwrap(),
            vec![
                Incoming::Pair {
                    remote_id: 2,
                    pair: p
                },
                Incoming::Unpair {
                    remote_id: 2,
                    token: token(4)
                },
            ]
        );
    }

    /// A batch of `n` messages of `body` each, on channel 1.
    fn batch_of(body: &[u8], n: usize) -> Vec<u8> {
        let mut batch = vec![0, 0, 1];
        for _ in 0..n {
            put_uint(&mut batch, body.len() as u64);
            batch.extend_from_slice(body);
        }
        batch
    }

    #[test]
    fn a_frame_decodes_into_at_most_a_small_multiple_of_itself() {
        // The smallest messages there are (an unknown type, no payload): two bytes each, one
        // item each before, which made 16 MiB of frame into hundreds of MB of items.
        let tiny = batch_of(&[9], 1 << 20);
        assert_eq!(decode(&tiny).unwrap(), vec![]);
        // The smallest messages that do yield an item, as many as fit.
        let unpair = unpair(&token(5))[1..].to_vec();
        let dense = batch_of(&unpair, (1 << 20) / unpair.len());
        let items = decode(&dense).unwrap();
        assert_eq!(items.len(), (1 << 20) / unpair.len());
        let bytes = items.capacity() * std::mem::size_of::<Incoming>();
        assert!(
            bytes <= 8 * dense.len(),
            "{} bytes of frame decoded into {bytes} bytes of items",
            dense.len()
        );
    }

    #[test]
    fn hostile_lengths_are_refused() {
        for frame in [
            vec![],
            vec![0],
            vec![
                0, 1, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            ],
            vec![0, 0, 1, 0xfe, 0xff, 0xff, 0xff, 0xff],
            vec![1, 0, 1, 2, 3],
            vec![0, 9],
        ] {
            assert!(decode(&frame).is_err(), "{frame:?}");
        }
    }
}
