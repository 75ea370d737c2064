//! What `connect --key` takes: a public key (hex or z-base-32) or a holesail connection string,
//! `hs://0000<z32 public key>` (public mode) or `hs://s000<key string>` (secure mode).
//!
//! Holesail's rules (holesail 2.4.1, `Holesail.urlParser` and `#initialise`): after `hs://`
//! come four flag characters and then the key; the first flag is `s` in secure mode. In secure
//! mode the key is not a public key but a *key string*: both sides derive one key pair from
//! `sha256(key string)` as the Ed25519 seed; the server listens on it and admits only a client
//! that connects with that same key pair, so knowing the public key is not enough. Holesail
//! makes the key string from 32 random bytes as 64 hex characters; users may choose their own.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::identity::{KeyPair, ParseKeyError, PublicKey};

/// The scheme of holesail connection strings.
const SCHEME: &str = "hs://";
/// Flag characters between the scheme and the key.
const FLAGS_LEN: usize = 4;
/// The flags we print in public mode (holesail prints the same).
const PUBLIC_FLAGS: &str = "0000";
/// The flags we print in secure mode (holesail prints the same).
const SECRET_FLAGS: &str = "s000";

/// Longest key string we take: far beyond any a person types or holesail makes (64), short
/// enough that a pasted file is refused rather than hashed.
pub const MAX_KEY_STRING_LEN: usize = 256;
/// Shortest key string `share --secret` accepts from a user, as holesail's CLI demands
/// without `--force`: shorter ones are guessable.
pub const MIN_KEY_STRING_LEN: usize = 32;

/// The capability of holesail's secure mode: whoever knows it derives the share's key pair.
/// `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyString(String);

impl KeyString {
    /// A fresh key string as holesail makes one: 32 random bytes as 64 hex characters.
    pub fn generate() -> Self {
        Self(hex::encode(rand::random::<[u8; 32]>()))
    }

    /// A key string the user chose; refused when shorter than [`MIN_KEY_STRING_LEN`] (a
    /// guessable secret) or not a valid key string at all.
    pub fn chosen(text: &str) -> Result<Self, ParseConnectionStringError> {
        let key = Self::parse(text)?;
        let length = key.0.chars().count();
        if length < MIN_KEY_STRING_LEN {
            return Err(ParseConnectionStringError::KeyStringTooShort { length });
        }
        Ok(key)
    }

    /// Any key string a holesail server could hand out: 1 to [`MAX_KEY_STRING_LEN`] printable
    /// characters without whitespace (so it survives copying as one word).
    fn parse(text: &str) -> Result<Self, ParseConnectionStringError> {
        let length = text.chars().count();
        if length == 0 {
            return Err(ParseConnectionStringError::EmptyKeyString);
        }
        if length > MAX_KEY_STRING_LEN {
            return Err(ParseConnectionStringError::KeyStringTooLong { length });
        }
        if let Some((index, character)) = text
            .chars()
            .enumerate()
            .find(|(_, c)| c.is_whitespace() || c.is_control())
        {
            return Err(ParseConnectionStringError::KeyStringCharacter {
                position: index + 1,
                character,
            });
        }
        Ok(Self(text.to_string()))
    }

    /// The key pair both sides derive: seed = `sha256(key string)`.
    pub fn key_pair(&self) -> KeyPair {
        KeyPair::from_seed(Sha256::digest(self.0.as_bytes()).into())
    }

    /// The key string itself (the secret: print it only to the user who owns it).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for KeyString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyString(<redacted>)")
    }
}

/// Whom `connect` reaches and as whom, parsed from what the user pasted.
///
/// ```
/// use p2p_socket::{ConnectionString, KeyPair};
///
/// let key = KeyPair::from_seed([1; 32]).public_key();
/// let public: ConnectionString = format!("hs://0000{}", key.to_z32()).parse().unwrap();
/// assert_eq!(public.remote(), key);
/// assert!(public.client_key_pair().is_none());
/// let secret: ConnectionString = "hs://s000my-long-and-secret-key-string-of-holesail".parse().unwrap();
/// assert_eq!(secret.client_key_pair().unwrap().public_key(), secret.remote());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionString {
    /// The sharer's public key: any client key pair will do (holesail public mode, p2p-socket).
    Public(PublicKey),
    /// Holesail secure mode: the sharer's key pair is derived from the key string, and the
    /// client must connect with that same key pair.
    Secret(KeyString),
}

impl ConnectionString {
    /// The sharer's public key: what the DHT is searched for.
    pub fn remote(&self) -> PublicKey {
        match self {
            Self::Public(key) => *key,
            Self::Secret(key) => key.key_pair().public_key(),
        }
    }

    /// The key pair the client must connect with, when the string prescribes one (secure
    /// mode); `None` means any, so a fresh one.
    pub fn client_key_pair(&self) -> Option<KeyPair> {
        match self {
            Self::Public(_) => None,
            Self::Secret(key) => Some(key.key_pair()),
        }
    }
}

/// The holesail form: `hs://0000<z32>` or `hs://s000<key string>`.
impl fmt::Display for ConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Public(key) => write!(f, "{SCHEME}{PUBLIC_FLAGS}{}", key.to_z32()),
            Self::Secret(key) => write!(f, "{SCHEME}{SECRET_FLAGS}{}", key.as_str()),
        }
    }
}

impl FromStr for ConnectionString {
    type Err = ParseConnectionStringError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let Some(rest) = strip_prefix_ignore_case(text, SCHEME) else {
            return text
                .parse()
                .map(Self::Public)
                .map_err(ParseConnectionStringError::Key);
        };
        // Holesail reads four flag characters whatever they are; only the first means anything.
        if rest.chars().take(FLAGS_LEN).count() < FLAGS_LEN {
            return Err(ParseConnectionStringError::MissingFlags);
        }
        let key_at = rest
            .char_indices()
            .nth(FLAGS_LEN)
            .map_or(rest.len(), |(at, _)| at);
        let key = &rest[key_at..];
        if rest.starts_with('s') {
            KeyString::parse(key).map(Self::Secret)
        } else {
            key.parse()
                .map(Self::Public)
                .map_err(ParseConnectionStringError::Key)
        }
    }
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

/// The forms `connect --key` accepts, for every refusal to name.
const ACCEPTED: &str = "a key is 64 hex characters, 52 z-base-32 characters, \
    hs://0000<z-base-32 key> (holesail public) or hs://s000<key string> (holesail secure)";

/// Why a text is not a key or connection string.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseConnectionStringError {
    /// Not a public key (and not `hs://`).
    #[error("{0}; {ACCEPTED}")]
    Key(#[source] ParseKeyError),
    /// `hs://` without the four flag characters and a key after it.
    #[error("the hs:// string is cut short: after hs:// come four characters (0000 or s000) and then the key; {ACCEPTED}")]
    MissingFlags,
    /// `hs://s000` with nothing after it.
    #[error("the hs://s000 string has no key string after s000; copy the whole string the sharer printed")]
    EmptyKeyString,
    /// The key string is longer than anyone hands out.
    #[error("the key string has {length} characters, more than {MAX_KEY_STRING_LEN}; copy only the hs:// string the sharer printed")]
    KeyStringTooLong {
        /// Characters given.
        length: usize,
    },
    /// The key string holds whitespace or a control character.
    #[error("the key string has {character:?} at position {position}; a key string is one word without spaces or control characters")]
    KeyStringCharacter {
        /// 1-based position of the bad character.
        position: usize,
        /// The bad character.
        character: char,
    },
    /// A chosen key string is guessable.
    #[error("the key string has {length} characters; choose at least {MIN_KEY_STRING_LEN} (or leave it out and one is made at random)")]
    KeyStringTooShort {
        /// Characters given.
        length: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0b7f2bd44dd17ad5aab4ea6f7ad5e2f1d4fc0d2cc12d6fe1ebf35c3c1a5e1b2a";

    fn z32() -> String {
        HEX.parse::<PublicKey>().unwrap().to_z32()
    }

    #[test]
    fn accepted_forms() {
        let key: PublicKey = HEX.parse().unwrap();
        let z = z32();
        let public = [
            HEX.to_string(),
            HEX.to_uppercase(),
            z.clone(),
            format!("hs://0000{z}"),
            format!("  hs://0000{z}\n"),
            format!("HS://0000{z}"),
            // holesail reads any four flag characters; only an `s` first means secure.
            format!("hs://1234{z}"),
            format!("hs://0000{HEX}"),
        ];
        for text in public {
            let parsed: ConnectionString = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(parsed, ConnectionString::Public(key), "{text}");
            assert_eq!(parsed.remote(), key);
            assert!(parsed.client_key_pair().is_none());
        }
        let secret: ConnectionString = "hs://s000abcdefabcdefabcdefabcdefabcdefab".parse().unwrap();
        assert_eq!(
            secret,
            ConnectionString::Secret(KeyString("abcdefabcdefabcdefabcdefabcdefab".into()))
        );
    }

    #[test]
    fn refusals_name_what_is_accepted() {
        type Expect = fn(&ParseConnectionStringError) -> bool;
        let cases: &[(&str, Expect)] = &[
            ("", |e| {
                matches!(e, ParseConnectionStringError::Key(ParseKeyError::Empty))
            }),
            ("abc", |e| {
                matches!(
                    e,
                    ParseConnectionStringError::Key(ParseKeyError::WrongLength { length: 3 })
                )
            }),
            ("hs://", |e| *e == ParseConnectionStringError::MissingFlags),
            ("hs://s00", |e| {
                *e == ParseConnectionStringError::MissingFlags
            }),
            ("hs://s000", |e| {
                *e == ParseConnectionStringError::EmptyKeyString
            }),
            ("hs://0000", |e| {
                matches!(e, ParseConnectionStringError::Key(ParseKeyError::Empty))
            }),
            ("hs://0000zzzz", |e| {
                matches!(e, ParseConnectionStringError::Key(_))
            }),
            ("hs://s000a b", |e| {
                matches!(
                    e,
                    ParseConnectionStringError::KeyStringCharacter {
                        position: 2,
                        character: ' '
                    }
                )
            }),
            ("hs://s000a\u{7}", |e| {
                matches!(
                    e,
                    ParseConnectionStringError::KeyStringCharacter { position: 2, .. }
                )
            }),
        ];
        for (text, expected) in cases {
            let err = text.parse::<ConnectionString>().unwrap_err();
            assert!(expected(&err), "{text:?} gave {err:?}");
            let message = err.to_string();
            assert!(!message.is_empty());
            if matches!(
                err,
                ParseConnectionStringError::Key(_) | ParseConnectionStringError::MissingFlags
            ) {
                assert!(message.contains("hs://s000"), "{message}");
            }
        }
        let long = format!("hs://s000{}", "x".repeat(MAX_KEY_STRING_LEN + 1));
        assert_eq!(
            long.parse::<ConnectionString>().unwrap_err(),
            ParseConnectionStringError::KeyStringTooLong {
                length: MAX_KEY_STRING_LEN + 1
            }
        );
    }

    #[test]
    fn junk_never_panics() {
        // Multi-byte characters where the flags and the key begin, and random bytes.
        for text in [
            "hs://ééé",
            "hs://éééé",
            "hs://ééééé",
            "hs:/",
            "h",
            "ĥs://0000",
            "hs://s\u{0}00x",
        ] {
            let _ = text.parse::<ConnectionString>();
        }
        for _ in 0..2000 {
            let len = rand::random::<u8>() as usize % 80;
            let bytes: Vec<u8> = (0..len).map(|_| rand::random()).collect();
            let text = String::from_utf8_lossy(&bytes);
            let _ = format!("hs://{text}").parse::<ConnectionString>();
            let _ = format!("hs://s000{text}").parse::<ConnectionString>();
            let _ = text.parse::<ConnectionString>();
        }
    }

    #[test]
    fn strings_print_as_holesail_does_and_parse_back() {
        let public = ConnectionString::Public(HEX.parse().unwrap());
        assert_eq!(public.to_string(), format!("hs://0000{}", z32()));
        let secret = ConnectionString::Secret(KeyString::generate());
        let printed = secret.to_string();
        assert!(printed.starts_with("hs://s000"));
        assert_eq!(printed.len(), "hs://s000".len() + 64);
        for s in [public, secret] {
            assert_eq!(s.to_string().parse::<ConnectionString>().unwrap(), s);
        }
    }

    #[test]
    fn secret_key_pair_is_sha256_of_the_string() {
        // holesail: seed = sha256(key string); the key pair is hyperdht's keyPair(seed).
        let key = KeyString::parse("abc").unwrap();
        let seed: [u8; 32] = Sha256::digest(b"abc").into();
        assert_eq!(key.key_pair(), KeyPair::from_seed(seed));
        assert_eq!(
            hex::encode(seed),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let s = ConnectionString::Secret(key);
        assert_eq!(s.remote(), s.client_key_pair().unwrap().public_key());
        assert!(!format!("{s:?}").contains("abc"));
    }

    #[test]
    fn chosen_key_strings_must_be_long() {
        assert_eq!(
            KeyString::chosen("short").unwrap_err(),
            ParseConnectionStringError::KeyStringTooShort { length: 5 }
        );
        assert!(KeyString::chosen(&"k".repeat(MIN_KEY_STRING_LEN)).is_ok());
        assert!(KeyString::chosen(&"k ".repeat(MIN_KEY_STRING_LEN)).is_err());
    }
}
