//! Ed25519 key pairs in libsodium's layout, and public keys as users see them: 64 hex
//! characters, or the 52 z-base-32 characters of holesail and Pear.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::SigningKey;
use thiserror::Error;

/// The z-base-32 alphabet used by `hypercore-id-encoding`, holesail and Pear.
const Z32_ALPHABET: &[u8; 32] = b"ybndrfg8ejkmcpqxot1uwisza345h769";

/// Hex characters of a public key.
const KEY_HEX_LEN: usize = 64;

/// z-base-32 characters of a public key: 256 bits in 5-bit characters, the last one padded.
const KEY_Z32_LEN: usize = 52;

/// An Ed25519 key pair in libsodium layout.
///
/// `secret_key` is the 32-byte seed followed by `public_key`, exactly what libsodium's
/// `crypto_sign_seed_keypair` and Node hyperdht's `DHT.keyPair()` produce, so the bytes can
/// be handed to hyperdht-compatible code unchanged. `Debug` never shows the secret key.
///
/// ```
/// use p2p_socket::KeyPair;
///
/// let key_pair = KeyPair::from_seed([7; 32]);
/// assert_eq!(key_pair.seed(), [7; 32]);
/// assert_eq!(&key_pair.secret_key()[32..], key_pair.public_key().as_bytes());
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct KeyPair {
    public_key: [u8; 32],
    /// The seed (32 bytes) followed by the public key (32 bytes).
    secret_key: [u8; 64],
}

impl KeyPair {
    /// A new random key pair, from the operating system's secure random source.
    pub fn generate() -> Self {
        Self::from_seed(rand::random())
    }

    /// The key pair of an Ed25519 seed; the same as libsodium's `crypto_sign_seed_keypair`
    /// and Node hyperdht's `DHT.keyPair(seed)`.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let public_key = SigningKey::from_bytes(&seed).verifying_key().to_bytes();
        let mut secret_key = [0u8; 64];
        secret_key[..32].copy_from_slice(&seed);
        secret_key[32..].copy_from_slice(&public_key);
        Self {
            public_key,
            secret_key,
        }
    }

    /// The key pair of a seed text, by the npm tool's rule (see the module documentation).
    pub fn from_seed_text(text: &str) -> Self {
        Self::from_seed(seed_from_text(text))
    }

    /// The 32-byte seed this key pair was made from (the first half of the secret key).
    pub fn seed(&self) -> [u8; 32] {
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&self.secret_key[..32]);
        seed
    }

    /// The public key, as a type that prints and parses the way users see keys.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.public_key)
    }

    /// The 64-byte secret key: the seed, then the public key. Whoever has it can impersonate
    /// this key pair; keep it off logs and out of files others can read.
    pub fn secret_key(&self) -> &[u8; 64] {
        &self.secret_key
    }

    /// The same key pair in the DHT's type (announcing and unannouncing sign with it).
    pub(crate) fn to_dht(&self) -> peeroxide_dht::hyperdht::KeyPair {
        peeroxide_dht::hyperdht::KeyPair {
            public_key: self.public_key,
            secret_key: self.secret_key,
        }
    }

    /// The same key pair in the Noise handshake's type.
    pub(crate) fn to_noise(&self) -> peeroxide_dht::noise::Keypair {
        peeroxide_dht::noise::Keypair {
            public_key: self.public_key,
            secret_key: self.secret_key,
        }
    }
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("public_key", &self.public_key())
            .field("secret_key", &"<redacted>")
            .finish()
    }
}

/// Node's `Buffer.alloc(32).fill(text)`: the UTF-8 bytes of `text`, repeated to fill 32
/// bytes and cut after byte 32; an empty text leaves the buffer zeroed.
pub(super) fn seed_from_text(text: &str) -> [u8; 32] {
    let mut seed = [0u8; 32];
    for (slot, byte) in seed.iter_mut().zip(text.bytes().cycle()) {
        *slot = byte;
    }
    seed
}

/// A 32-byte Ed25519 public key, the key users pass around to connect.
///
/// It prints ([`Display`](fmt::Display)) as 64 lowercase hex characters, the form the CLI
/// shows. It parses ([`FromStr`]) from that hex form (any letter case, surrounding whitespace
/// ignored) and also from the 52-character z-base-32 form used by `hypercore-id-encoding`,
/// holesail and Pear.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 52-character z-base-32 form (what holesail and `hypercore-id-encoding` print).
    pub fn to_z32(&self) -> String {
        let mut out = String::with_capacity(KEY_Z32_LEN);
        let mut acc: u16 = 0;
        let mut bits = 0;
        for &byte in &self.0 {
            acc = (acc << 8) | u16::from(byte);
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                out.push(char::from(Z32_ALPHABET[usize::from((acc >> bits) & 0x1f)]));
            }
            acc &= (1 << bits) - 1;
        }
        // 256 is not a multiple of 5: the last character holds the final bit, zero-padded.
        if bits > 0 {
            out.push(char::from(
                Z32_ALPHABET[usize::from((acc << (5 - bits)) & 0x1f)],
            ));
        }
        out
    }
}

impl From<[u8; 32]> for PublicKey {
    fn from(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = ParseKeyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        match text.chars().count() {
            0 => Err(ParseKeyError::Empty),
            KEY_HEX_LEN => decode_hex(text).map(Self).map_err(|(position, character)| {
                ParseKeyError::InvalidHexCharacter {
                    position,
                    character,
                }
            }),
            KEY_Z32_LEN => decode_z32(text).map(Self),
            length => Err(ParseKeyError::WrongLength { length }),
        }
    }
}

/// Why a text is not a public key.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseKeyError {
    /// Nothing (or only whitespace) was given.
    #[error(
        "no key given; pass the 64 hex character key that `p2p-socket share` printed on the \
         sharing machine"
    )]
    Empty,
    /// The text is neither 64 (hex) nor 52 (z-base-32) characters long.
    #[error(
        "key has {length} characters; a p2p-socket key is 64 hex characters (copy the whole \
         line `share` printed), or 52 z-base-32 characters for a holesail-style key"
    )]
    WrongLength {
        /// Characters given, after trimming surrounding whitespace.
        length: usize,
    },
    /// A 64-character key contains a character that is not a hex digit.
    #[error(
        "key has an invalid character {character:?} at position {position}; a p2p-socket key \
         is 64 hex characters, 0-9 and a-f only (copy the whole line `share` printed)"
    )]
    InvalidHexCharacter {
        /// 1-based position of the first bad character.
        position: usize,
        /// The bad character.
        character: char,
    },
    /// A 52-character key contains a character outside the z-base-32 alphabet.
    #[error(
        "key has an invalid character {character:?} at position {position}; a 52 character \
         key must be z-base-32 (letters and digits from \"ybndrfg8ejkmcpqxot1uwisza345h769\"); \
         check the key was copied completely and correctly"
    )]
    InvalidZ32Character {
        /// 1-based position of the first bad character.
        position: usize,
        /// The bad character.
        character: char,
    },
}

/// Decodes exactly `2 * N` hex digits (any case); on failure returns the 1-based position and
/// the first character that is not a hex digit. The caller checks the length.
pub(super) fn decode_hex<const N: usize>(text: &str) -> Result<[u8; N], (usize, char)> {
    let mut out = [0u8; N];
    for (index, character) in text.chars().enumerate() {
        let nibble = character.to_digit(16).ok_or((index + 1, character))?;
        // to_digit(16) is below 16, so the cast is lossless.
        out[index / 2] |= (nibble as u8) << if index % 2 == 0 { 4 } else { 0 };
    }
    Ok(out)
}

/// Decodes a 52-character z-base-32 key. Like Node's `z32`, the 4 padding bits of the last
/// character are ignored; unlike it, upper case is accepted (the alphabet has no case clash).
fn decode_z32(text: &str) -> Result<[u8; 32], ParseKeyError> {
    let mut out = [0u8; 32];
    let mut written = 0;
    let mut acc: u16 = 0;
    let mut bits = 0;
    for (index, character) in text.chars().enumerate() {
        let value = Z32_ALPHABET
            .iter()
            .position(|&c| char::from(c) == character.to_ascii_lowercase())
            .ok_or(ParseKeyError::InvalidZ32Character {
                position: index + 1,
                character,
            })?;
        // position() in a 32-entry table is below 32, so the cast is lossless.
        acc = (acc << 5) | value as u16;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            if written < out.len() {
                out[written] = (acc >> bits) as u8;
                written += 1;
            }
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}
