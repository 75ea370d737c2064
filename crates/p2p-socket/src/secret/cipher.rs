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
//! The RustCrypto crates pick their SIMD backends (AVX2, SSE2, NEON) at run time.

use chacha20::cipher::consts::U10;
use chacha20::cipher::{KeyIvInit, StreamCipher};
use chacha20::ChaCha20;
use poly1305::universal_hash::{KeyInit, UniversalHash};
use poly1305::Poly1305;
use rand::RngCore;
use subtle::ConstantTimeEq;

/// The header that starts each direction: a random 24-byte XChaCha20 nonce.
pub(crate) const HEADER_LEN: usize = 24;
/// What sealing adds to a message: the tag byte before it and the MAC after it.
pub(crate) const OVERHEAD: usize = 1 + MAC_LEN;
const MAC_LEN: usize = 16;
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
        State {
            key: subkey.into(),
            nonce,
        }
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
        self.nonce[4..].copy_from_slice(&next[32..]);
        self.nonce[..4].copy_from_slice(&1u32.to_le_bytes());
    }
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

    /// Seals `message` in place: on entry `[unused (1)][plaintext][unused (16)]`, on return the
    /// message as it goes on the wire. Shorter than [`OVERHEAD`] is a bug of the caller.
    pub(crate) fn seal(&mut self, message: &mut [u8]) {
        assert!(
            message.len() >= OVERHEAD,
            "a message has room for tag and MAC"
        );
        let (cipher_and_tag, mac_out) = message.split_at_mut(message.len() - MAC_LEN);
        let (tag_out, body) = cipher_and_tag.split_at_mut(1);
        let (mut cipher, poly_key, tag_block) = self.0.start(TAG_MESSAGE);
        cipher.apply_keystream(body);
        let mac = mac(&poly_key, &tag_block, body);
        tag_out[0] = tag_block[0];
        mac_out.copy_from_slice(&mac);
        self.0.advance(TAG_MESSAGE, &mac);
    }
}

/// The receiving direction.
pub(crate) struct Opener(State);

impl Opener {
    pub(crate) fn new(key: &[u8; 32], header: &[u8; HEADER_LEN]) -> Opener {
        Opener(State::new(key, header))
    }

    /// Opens a message in place; returns the plaintext, a part of `message`. A message that
    /// fails leaves the direction unusable (the peer's next nonce is unknown), so the caller
    /// ends the stream.
    pub(crate) fn open<'a>(&mut self, message: &'a mut [u8]) -> Result<&'a mut [u8], OpenError> {
        let len = message.len();
        if len < OVERHEAD {
            return Err(OpenError { len });
        }
        let (cipher_and_tag, received) = message.split_at_mut(len - MAC_LEN);
        let (tag_in, body) = cipher_and_tag.split_at_mut(1);
        let (mut cipher, poly_key, mut tag_block) = self.0.start(tag_in[0]);
        let tag = tag_block[0];
        // The MAC covers the block as sent, whose first byte is the encrypted tag.
        tag_block[0] = tag_in[0];
        let expected = mac(&poly_key, &tag_block, body);
        if !bool::from(expected.ct_eq(received)) {
            return Err(OpenError { len });
        }
        cipher.apply_keystream(body);
        self.0.advance(tag, received);
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use peeroxide_dht::secretstream::{Pull, Push};

    const KEY: [u8; 32] = [0x42; 32];

    fn framed(plaintext: &[u8]) -> Vec<u8> {
        let mut m = vec![0u8; plaintext.len() + OVERHEAD];
        m[1..1 + plaintext.len()].copy_from_slice(plaintext);
        m
    }

    /// Every length class of the MAC's tail (0..=15 past a block) and a few long ones.
    fn lengths() -> impl Iterator<Item = usize> {
        (0..40).chain([1000, 65_536, 65_537, 200_003])
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
            let (opened, tag) = pull.next(&m).expect("peeroxide opens our message");
            assert_eq!((opened, tag), (plain, TAG_MESSAGE), "length {n}");
        }
    }

    #[test]
    fn we_open_what_peeroxide_seals() {
        let (mut push, header) = Push::new(&KEY);
        let mut opener = Opener::new(&KEY, &header);
        for n in lengths() {
            let plain = bytes(n);
            let mut m = push.next(&plain);
            assert_eq!(
                opener.open(&mut m).expect("we open its message"),
                &plain[..]
            );
        }
    }

    #[test]
    fn a_rekey_tag_is_followed() {
        let (mut push, header) = Push::new(&KEY);
        let mut opener = Opener::new(&KEY, &header);
        let mut rekey = push.push(b"then new keys", None, TAG_REKEY);
        assert_eq!(opener.open(&mut rekey).unwrap(), b"then new keys");
        let mut after = push.next(b"under them");
        assert_eq!(opener.open(&mut after).unwrap(), b"under them");
    }

    #[test]
    fn any_flipped_bit_fails_and_short_input_is_refused() {
        let (mut sealer, header) = Sealer::new(&KEY);
        let mut m = framed(b"attack at dawn");
        sealer.seal(&mut m);
        for i in 0..m.len() * 8 {
            let mut forged = m.clone();
            forged[i / 8] ^= 1 << (i % 8);
            let mut opener = Opener::new(&KEY, &header);
            assert!(opener.open(&mut forged).is_err(), "bit {i}");
        }
        let mut opener = Opener::new(&KEY, &header);
        for n in 0..OVERHEAD {
            assert_eq!(opener.open(&mut vec![0; n]), Err(OpenError { len: n }));
        }
        assert_eq!(opener.open(&mut m).unwrap(), b"attack at dawn");
    }

    #[test]
    fn a_replayed_message_fails() {
        let (mut sealer, header) = Sealer::new(&KEY);
        let mut opener = Opener::new(&KEY, &header);
        let mut m = framed(b"once");
        sealer.seal(&mut m);
        let replay = m.clone();
        opener.open(&mut m).unwrap();
        assert!(opener.open(&mut replay.clone()).is_err());
    }
}
