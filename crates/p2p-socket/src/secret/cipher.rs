//! libsodium's `crypto_secretstream_xchacha20poly1305`, the cipher of hyperswarm's secret
//! stream, sealing and opening each message in place: no allocation and no copy per message,
//! which is what the bulk path pays for in peeroxide-dht's version (five copies of every
//! message). Sans-IO: bytes in, bytes out.
//!
//! A message on the wire is `[encrypted tag (1)][ciphertext][Poly1305 MAC (16)]`. For each
//! message, ChaCha20 (IETF) under the stream's key and 12-byte nonce gives, at block 0, the
//! Poly1305 key, at block 1 the block that encrypts the tag, from block 2 on the message's
//! keystream. The MAC covers the whole encrypted tag block, the ciphertext, a pad of
//! `mlen % 16` zeros (libsodium's formula, not the usual alignment) and the two lengths. After
//! each message the MAC's first 8 bytes are xored into the nonce and its counter goes up.
//!
//! When `mlen % 16` is 0 or 8 (every full 64 KiB message of the bulk path) libsodium's pad
//! equals RFC 8439's, and the message is exactly the RFC 8439 AEAD (empty associated data) of
//! `[tag, 0 x 63] || plaintext`, sent without bytes 1..64: ring's stitched assembly then seals
//! and opens it, in place in the [`ROOM`] the caller leaves in front of the message. Other
//! lengths go through the RustCrypto `chacha20` and `poly1305` crates, which pick their SIMD
//! backends (AVX2, SSE2, NEON) at run time.

use chacha20::cipher::consts::U10;
use chacha20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use chacha20::ChaCha20;
use poly1305::universal_hash::{KeyInit, UniversalHash};
use poly1305::Poly1305;
use rand::RngCore;
use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, CHACHA20_POLY1305};
use subtle::ConstantTimeEq;

/// The header that starts each direction: a random 24-byte XChaCha20 nonce.
pub(crate) const HEADER_LEN: usize = 24;
/// What sealing adds to a message: the tag byte before it and the MAC after it.
pub(crate) const OVERHEAD: usize = 1 + MAC_LEN;
/// What sealing and opening need free in front of a message (and clobber): the rest of the
/// 64-byte tag block, which the RFC 8439 AEAD covers whole and the wire carries one byte of.
pub(crate) const ROOM: usize = BLOCK - 1;
const MAC_LEN: usize = 16;
const BLOCK: usize = 64;
const TAG_MESSAGE: u8 = 0x00;
const TAG_REKEY: u8 = 0x02;

/// A message failed to open: too short to be one, or not sealed by the peer's key (forged,
/// corrupted, replayed or out of order).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a secret stream message failed authentication ({len} bytes)")]
pub(crate) struct OpenError {
    len: usize,
}

/// One direction's key and nonce.
struct State {
    key: [u8; 32],
    /// The same key, set up for ring: boxed, as ring's key type has room for AES key
    /// schedules (some 500 bytes) and every reader and writer holds one.
    aead: Box<LessSafeKey>,
    /// Counter (4 bytes, little endian) then the 8-byte inonce.
    nonce: [u8; 12],
}

impl State {
    fn new(key: &[u8; 32], header: &[u8; HEADER_LEN]) -> State {
        let input: &[u8; 16] = header[..16].try_into().expect("16 of 24 bytes");
        let subkey = chacha20::hchacha::<U10>(key.into(), input.into());
        let mut nonce = [0u8; 12];
        nonce[0] = 1;
        nonce[4..].copy_from_slice(&header[16..]);
        let key: [u8; 32] = subkey.into();
        State {
            aead: aead_key(&key),
            key,
            nonce,
        }
    }

    /// Whether this message is one ring can seal or open: libsodium's pad, `mlen % 16` zeros,
    /// is RFC 8439's `(16 - mlen % 16) % 16` only for these lengths.
    fn fits_aead(plaintext_len: usize) -> bool {
        plaintext_len % 8 == 0
    }

    fn aead_nonce(&self) -> Nonce {
        // Unique: the counter goes up after each message and the key changes before it wraps.
        Nonce::assume_unique_for_key(self.nonce)
    }

    /// The cipher positioned after the tag block, the Poly1305 key, and the encrypted tag block
    /// (its first byte xored with `tag_byte`).
    fn start(&self, tag_byte: u8) -> (ChaCha20, [u8; 32], [u8; 64]) {
        let mut cipher = ChaCha20::new((&self.key).into(), (&self.nonce).into());
        let mut block0 = [0u8; 64];
        cipher.apply_keystream(&mut block0);
        let poly_key: [u8; 32] = block0[..32].try_into().expect("32 of 64 bytes");
        let mut tag_block = [0u8; 64];
        tag_block[0] = tag_byte;
        cipher.apply_keystream(&mut tag_block);
        (cipher, poly_key, tag_block)
    }

    /// Moves on to the next message, which `mac` ended.
    fn advance(&mut self, tag: u8, mac: &[u8]) {
        for (n, m) in self.nonce[4..].iter_mut().zip(mac) {
            *n ^= m;
        }
        let counter = u32::from_le_bytes(self.nonce[..4].try_into().expect("4 bytes"));
        let counter = counter.wrapping_add(1);
        self.nonce[..4].copy_from_slice(&counter.to_le_bytes());
        if tag & TAG_REKEY != 0 || counter == 0 {
            self.rekey();
        }
    }

    fn rekey(&mut self) {
        let mut next = [0u8; 40];
        next[..32].copy_from_slice(&self.key);
        next[32..].copy_from_slice(&self.nonce[4..]);
        ChaCha20::new((&self.key).into(), (&self.nonce).into()).apply_keystream(&mut next);
        self.key.copy_from_slice(&next[..32]);
        self.aead = aead_key(&self.key);
        self.nonce[4..].copy_from_slice(&next[32..]);
        self.nonce[..4].copy_from_slice(&1u32.to_le_bytes());
    }
}

fn aead_key(key: &[u8; 32]) -> Box<LessSafeKey> {
    let key = UnboundKey::new(&CHACHA20_POLY1305, key).expect("a 32-byte key");
    Box::new(LessSafeKey::new(key))
}

/// The MAC of one message, fed straight from the buffer: whole 16-byte blocks of the
/// ciphertext first, then its tail with libsodium's pad and the lengths.
fn mac(poly_key: &[u8; 32], tag_block: &[u8; 64], ciphertext: &[u8]) -> [u8; MAC_LEN] {
    let mut poly = Poly1305::new(poly_key.into());
    poly.update_padded(tag_block);
    let whole = ciphertext.len() & !15;
    poly.update_padded(&ciphertext[..whole]);
    let rest = &ciphertext[whole..];
    let pad = ciphertext.len() & 15;
    let mut tail = [0u8; 15 + 15 + 16];
    tail[..rest.len()].copy_from_slice(rest);
    // The associated data is always empty here: its length, 0, is already in place.
    let lens = rest.len() + pad + 8;
    tail[lens..lens + 8].copy_from_slice(&(64 + ciphertext.len() as u64).to_le_bytes());
    poly.compute_unpadded(&tail[..lens + 8]).into()
}

/// The sending direction.
pub(crate) struct Sealer(State);

impl Sealer {
    /// A fresh direction under `key`, and the header the peer needs to open it.
    pub(crate) fn new(key: &[u8; 32]) -> (Sealer, [u8; HEADER_LEN]) {
        let mut header = [0u8; HEADER_LEN];
        rand::rng().fill_bytes(&mut header);
        (Sealer::with_header(key, &header), header)
    }

    pub(crate) fn with_header(key: &[u8; 32], header: &[u8; HEADER_LEN]) -> Sealer {
        Sealer(State::new(key, header))
    }

    /// Seals a message in place. On entry `region` is `[room (ROOM)][unused (1)][plaintext]
    /// [unused (16)]`; on return `region[ROOM..]` is the message as it goes on the wire and
    /// the room is clobbered. Shorter than `ROOM + OVERHEAD` is a bug of the caller.
    pub(crate) fn seal(&mut self, region: &mut [u8]) {
        assert!(
            region.len() >= ROOM + OVERHEAD,
            "a message has room for the tag block and the MAC"
        );
        let state = &mut self.0;
        let (sealed, mac_out) = region.split_at_mut(region.len() - MAC_LEN);
        if State::fits_aead(sealed.len() - BLOCK) {
            sealed[..BLOCK].fill(0);
            sealed[0] = TAG_MESSAGE;
            let mac = state
                .aead
                .seal_in_place_separate_tag(state.aead_nonce(), Aad::empty(), sealed)
                .expect("a message under ring's 256 GiB limit");
            // The wire carries the tag block's first byte only, right before the ciphertext.
            sealed[ROOM] = sealed[0];
            mac_out.copy_from_slice(mac.as_ref());
        } else {
            let (tag_out, body) = sealed[ROOM..].split_at_mut(1);
            let (mut cipher, poly_key, tag_block) = state.start(TAG_MESSAGE);
            cipher.apply_keystream(body);
            tag_out[0] = tag_block[0];
            mac_out.copy_from_slice(&mac(&poly_key, &tag_block, body));
        }
        state.advance(TAG_MESSAGE, mac_out);
    }
}

/// The receiving direction.
pub(crate) struct Opener(State);

impl Opener {
    pub(crate) fn new(key: &[u8; 32], header: &[u8; HEADER_LEN]) -> Opener {
        Opener(State::new(key, header))
    }

    /// Opens a message in place: `region` is `[room (ROOM)][message as received]`; returns
    /// the plaintext, a part of `region`, and clobbers the room. A message that fails leaves
    /// the direction unusable (the peer's next nonce is unknown), so the caller ends the
    /// stream.
    pub(crate) fn open<'a>(&mut self, region: &'a mut [u8]) -> Result<&'a mut [u8], OpenError> {
        assert!(
            region.len() >= ROOM,
            "the caller leaves room before a message"
        );
        let len = region.len() - ROOM;
        if len < OVERHEAD {
            return Err(OpenError { len });
        }
        let state = &mut self.0;
        let (sealed, received) = region.split_at_mut(region.len() - MAC_LEN);
        let received: [u8; MAC_LEN] = (&*received).try_into().expect("16 bytes");
        let tag = if State::fits_aead(sealed.len() - BLOCK) {
            // The tag block as the MAC covers it: the byte received, then the keystream of
            // block 1 (which encrypted zeros).
            let tag_in = sealed[ROOM];
            let mut cipher = ChaCha20::new((&state.key).into(), (&state.nonce).into());
            cipher.seek(BLOCK);
            sealed[..BLOCK].fill(0);
            cipher.apply_keystream(&mut sealed[..BLOCK]);
            sealed[0] = tag_in;
            state
                .aead
                .open_in_place_separate_tag(
                    state.aead_nonce(),
                    Aad::empty(),
                    Tag::from(received),
                    sealed,
                    0..,
                )
                .map_err(|_| OpenError { len })?;
            sealed[0]
        } else {
            let (tag_in, body) = sealed[ROOM..].split_at_mut(1);
            let (mut cipher, poly_key, mut tag_block) = state.start(tag_in[0]);
            let tag = tag_block[0];
            // The MAC covers the block as sent, whose first byte is the encrypted tag.
            tag_block[0] = tag_in[0];
            let expected = mac(&poly_key, &tag_block, body);
            if !bool::from(expected.ct_eq(&received)) {
                return Err(OpenError { len });
            }
            cipher.apply_keystream(body);
            tag
        };
        state.advance(tag, &received);
        Ok(&mut sealed[BLOCK..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use peeroxide_dht::secretstream::{Pull, Push};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const KEY: [u8; 32] = [0x42; 32];

    /// `plaintext` where [`Sealer::seal`] takes it.
    fn framed(plaintext: &[u8]) -> Vec<u8> {
        let mut m = vec![0u8; ROOM + plaintext.len() + OVERHEAD];
        m[ROOM + 1..ROOM + 1 + plaintext.len()].copy_from_slice(plaintext);
        m
    }

    /// A received message where [`Opener::open`] takes it.
    fn roomy(message: &[u8]) -> Vec<u8> {
        let mut m = vec![0xEE; ROOM];
        m.extend_from_slice(message);
        m
    }

    /// Every length class of the MAC's tail (0..=15 past a block) and a few long ones, which
    /// take ring's path (a multiple of 8) or the other.
    fn lengths() -> impl Iterator<Item = usize> {
        (0..40).chain([1000, 1001, 65_528, 65_536, 65_537, 200_003])
    }

    fn bytes(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn peeroxide_opens_what_we_seal() {
        let (mut sealer, header) = Sealer::new(&KEY);
        let mut pull = Pull::new(&KEY, &header);
        for n in lengths() {
            let plain = bytes(n);
            let mut m = framed(&plain);
            sealer.seal(&mut m);
            let (opened, tag) = pull.next(&m[ROOM..]).expect("peeroxide opens our message");
            assert_eq!((opened, tag), (plain, TAG_MESSAGE), "length {n}");
        }
    }

    #[test]
    fn we_open_what_peeroxide_seals() {
        let (mut push, header) = Push::new(&KEY);
        let mut opener = Opener::new(&KEY, &header);
        for n in lengths() {
            let plain = bytes(n);
            let mut m = roomy(&push.next(&plain));
            assert_eq!(
                opener.open(&mut m).expect("we open its message"),
                &plain[..],
                "length {n}"
            );
        }
    }

    /// Random lengths (most of them multiples of 8, ring's path) and random tags, both ways
    /// against peeroxide-dht's independent implementation, with a rekey now and then.
    #[test]
    fn random_messages_agree_with_peeroxide_both_ways() {
        let mut rng = StdRng::seed_from_u64(10);
        let (mut sealer, header) = Sealer::new(&KEY);
        let mut pull = Pull::new(&KEY, &header);
        let (mut push, header) = Push::new(&KEY);
        let mut opener = Opener::new(&KEY, &header);
        for i in 0..400 {
            let n = match rng.random_range(0..4) {
                0 => rng.random_range(0..200),
                1 => rng.random_range(0..70_000),
                _ => rng.random_range(0..8_200) * 8,
            };
            let mut plain = vec![0u8; n];
            rng.fill(&mut plain[..]);

            let mut m = framed(&plain);
            sealer.seal(&mut m);
            let (opened, tag) = pull.next(&m[ROOM..]).expect("peeroxide opens ours");
            assert_eq!((opened, tag), (plain.clone(), TAG_MESSAGE), "message {i}");

            let tag = [TAG_MESSAGE, 1, TAG_REKEY, 3][rng.random_range(0..4)];
            let mut m = roomy(&push.push(&plain, None, tag));
            assert_eq!(opener.open(&mut m).expect("we open its"), &plain[..]);
        }
    }

    #[test]
    fn a_rekey_tag_is_followed() {
        let (mut push, header) = Push::new(&KEY);
        let mut opener = Opener::new(&KEY, &header);
        // One message of each path.
        for text in [&b"then new keys"[..], b"16 bytes: ring's"] {
            let mut rekey = roomy(&push.push(text, None, TAG_REKEY));
            assert_eq!(opener.open(&mut rekey).unwrap(), text);
            let mut after = roomy(&push.next(b"under them"));
            assert_eq!(opener.open(&mut after).unwrap(), b"under them");
        }
    }

    #[test]
    fn any_flipped_bit_fails_and_short_input_is_refused() {
        // 14 bytes take the RustCrypto path, 16 ring's.
        for plain in [&b"attack at dawn"[..], b"attack at dawn!!"] {
            let (mut sealer, header) = Sealer::new(&KEY);
            let mut m = framed(plain);
            sealer.seal(&mut m);
            let m = &m[ROOM..];
            for i in 0..m.len() * 8 {
                let mut forged = roomy(m);
                forged[ROOM + i / 8] ^= 1 << (i % 8);
                let mut opener = Opener::new(&KEY, &header);
                assert!(opener.open(&mut forged).is_err(), "bit {i}");
            }
            let mut opener = Opener::new(&KEY, &header);
            for n in 0..OVERHEAD {
                assert_eq!(
                    opener.open(&mut roomy(&vec![0; n])),
                    Err(OpenError { len: n })
                );
            }
            assert_eq!(opener.open(&mut roomy(m)).unwrap(), plain);
        }
    }

    #[test]
    fn a_replayed_message_fails() {
        for plain in [&b"once"[..], b"once, ring's way"] {
            let (mut sealer, header) = Sealer::new(&KEY);
            let mut opener = Opener::new(&KEY, &header);
            let mut m = framed(plain);
            sealer.seal(&mut m);
            let replay = m.clone();
            opener.open(&mut m).unwrap();
            assert!(opener.open(&mut replay.clone()).is_err());
        }
    }
}
