//! Who may connect to a share: a list of client public keys ([`AllowList`]), read from keys
//! the user typed, from a file of keys, or from hypertele's `conf.json`; and the seeds of
//! hypertele's key pairs (`--seed`, and `--private`, where the seed is the capability).
//!
//! The listener checks a client's key while answering its handshake, before it offers a punch,
//! meets it at a relay or touches the local service, so a refused client costs one handshake.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use crate::identity::{KeyPair, ParseKeyError, PublicKey};

/// The most keys an [`AllowList`] holds. Checking a key is a hash lookup whatever the size;
/// the bound keeps a mistaken file (a log, a disk image) from filling memory.
pub const MAX_ALLOWED_KEYS: usize = 10_000;

/// The longest allow file read, in bytes: [`MAX_ALLOWED_KEYS`] keys with generous room for
/// comments and JSON around them.
const MAX_ALLOW_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// The client public keys a share admits; every other client is refused during the handshake.
///
/// ```
/// use p2p_socket::{AllowList, KeyPair};
///
/// let alice = KeyPair::from_seed([1; 32]).public_key();
/// let list = AllowList::parse(&format!("# Alice's laptop\n{alice}\n")).unwrap();
/// assert!(list.admits(&alice));
/// assert!(!list.admits(&KeyPair::from_seed([2; 32]).public_key()));
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    keys: HashSet<PublicKey>,
}

impl AllowList {
    /// An empty list (it admits nobody until keys are added).
    pub fn new() -> Self {
        Self::default()
    }

    /// A list of these keys. Fails past [`MAX_ALLOWED_KEYS`].
    pub fn from_keys(keys: impl IntoIterator<Item = PublicKey>) -> Result<Self, AccessError> {
        let mut list = Self::new();
        keys.into_iter().try_for_each(|k| list.insert(k))?;
        Ok(list)
    }

    /// Adds a key; a key already there is not counted twice. Fails past [`MAX_ALLOWED_KEYS`].
    pub fn insert(&mut self, key: PublicKey) -> Result<(), AccessError> {
        if !self.keys.contains(&key) && self.keys.len() >= MAX_ALLOWED_KEYS {
            return Err(AccessError::TooManyKeys {
                max: MAX_ALLOWED_KEYS,
            });
        }
        self.keys.insert(key);
        Ok(())
    }

    /// Adds every key of `other`.
    pub fn extend(&mut self, other: &AllowList) -> Result<(), AccessError> {
        other.keys.iter().try_for_each(|k| self.insert(*k))
    }

    /// Whether a client with this public key may connect.
    pub fn admits(&self, key: &PublicKey) -> bool {
        self.keys.contains(key)
    }

    /// How many keys the list holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the list holds no key (and so admits nobody).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Reads keys from text: one key per line (64 hex or 52 z-base-32 characters), `#` starts a
    /// comment, blank lines are skipped. Text that starts with `{` is read as hypertele's
    /// `conf.json` instead (see [`AllowFile::parse`]) and only its `allow` keys are taken.
    pub fn parse(text: &str) -> Result<AllowList, AccessError> {
        AllowFile::parse(text).map(|file| file.allow)
    }

    /// Reads an allow file (see [`AllowFile::load`]) and keeps only its keys.
    pub fn load(path: impl AsRef<Path>) -> Result<AllowList, AccessError> {
        AllowFile::load(path).map(|file| file.allow)
    }
}

impl fmt::Debug for AllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Thousands of keys would bury whatever the Debug output is part of.
        write!(f, "AllowList({} keys)", self.keys.len())
    }
}

/// What an allow file holds: the keys, and for hypertele's `conf.json` the server's seed if it
/// names one (so `--allow-file conf.json` gives the same share key as
/// `hypertele-server -c conf.json`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowFile {
    /// The admitted client keys.
    pub allow: AllowList,
    /// The `seed` of a hypertele `conf.json`, if it has one.
    pub seed: Option<[u8; 32]>,
}

/// hypertele's `conf.json`; its other fields (`keepAlive`, `compress`...) are not ours to read.
#[derive(Deserialize)]
struct HyperteleConf {
    seed: Option<String>,
    #[serde(default)]
    allow: Vec<String>,
}

impl AllowFile {
    /// Parses an allow file's text: hypertele's `conf.json` (`{"seed": hex, "allow": [hex...]}`)
    /// when it starts with `{`, else one key per line with `#` comments and blank lines.
    pub fn parse(text: &str) -> Result<AllowFile, AccessError> {
        if text.trim_start().starts_with('{') {
            return Self::parse_conf(text);
        }
        let mut allow = AllowList::new();
        for (index, line) in text.lines().enumerate() {
            let key = line.split('#').next().unwrap_or_default().trim();
            if key.is_empty() {
                continue;
            }
            let key = key.parse().map_err(|reason| AccessError::BadKey {
                line: index + 1,
                reason,
            })?;
            allow.insert(key)?;
        }
        Ok(AllowFile { allow, seed: None })
    }

    fn parse_conf(text: &str) -> Result<AllowFile, AccessError> {
        let conf: HyperteleConf = serde_json::from_str(text).map_err(AccessError::BadConf)?;
        if conf.allow.len() > MAX_ALLOWED_KEYS {
            return Err(AccessError::TooManyKeys {
                max: MAX_ALLOWED_KEYS,
            });
        }
        let mut allow = AllowList::new();
        for (index, key) in conf.allow.iter().enumerate() {
            let key = key.parse().map_err(|reason| AccessError::BadConfKey {
                index: index + 1,
                reason,
            })?;
            allow.insert(key)?;
        }
        let seed = conf.seed.as_deref().map(parse_seed).transpose()?;
        Ok(AllowFile { allow, seed })
    }

    /// Reads and parses an allow file (see [`AllowFile::parse`]); the error names the file.
    pub fn load(path: impl AsRef<Path>) -> Result<AllowFile, AccessError> {
        let path = path.as_ref();
        let in_file = |problem| AccessError::InFile {
            path: path.to_path_buf(),
            problem: Box::new(problem),
        };
        let read_error = |source| AccessError::Read {
            path: path.to_path_buf(),
            source,
        };
        let size = std::fs::metadata(path).map_err(read_error)?.len();
        if size > MAX_ALLOW_FILE_BYTES {
            return Err(in_file(AccessError::FileTooLarge {
                size,
                max: MAX_ALLOW_FILE_BYTES,
            }));
        }
        let text = std::fs::read_to_string(path).map_err(read_error)?;
        Self::parse(&text).map_err(in_file)
    }
}

/// hypertele's seed: exactly 64 hex characters, the 32-byte Ed25519 seed of the key pair
/// (`HyperDHT.keyPair(seed)`).
pub fn parse_seed(text: &str) -> Result<[u8; 32], AccessError> {
    let text = text.trim();
    let bad = || AccessError::BadSeed {
        length: text.chars().count(),
    };
    if text.len() != 64 {
        return Err(bad());
    }
    let bytes = hex::decode(text).map_err(|_| bad())?;
    bytes.try_into().map_err(|_| bad())
}

/// hypertele's private mode: both sides derive the key pair from the seed; the server listens
/// on its public key and admits only a client that holds the same key pair, so knowing the seed
/// is what lets a client in.
pub fn private_mode(seed: [u8; 32]) -> (KeyPair, AllowList) {
    let key_pair = KeyPair::from_seed(seed);
    let allow = AllowList {
        keys: HashSet::from([key_pair.public_key()]),
    };
    (key_pair, allow)
}

/// Why an allow list, an allow file or a seed could not be used.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AccessError {
    /// More keys than [`MAX_ALLOWED_KEYS`].
    #[error("more than {max} allowed keys; split the clients over several shares, or let them share an identity")]
    TooManyKeys {
        /// The limit.
        max: usize,
    },
    /// A line of a key file is not a key.
    #[error("line {line} is not a client public key (one key per line, # for comments): {reason}")]
    BadKey {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: ParseKeyError,
    },
    /// An entry of a hypertele `conf.json`'s `allow` is not a key.
    #[error("entry {index} of \"allow\" is not a client public key: {reason}")]
    BadConfKey {
        /// 1-based position in the array.
        index: usize,
        /// What is wrong with it.
        reason: ParseKeyError,
    },
    /// A file that starts with `{` is not hypertele's `conf.json`.
    #[error("it starts with '{{' but is not a hypertele conf.json ({{\"seed\": \"<64 hex>\", \"allow\": [\"<64 hex key>\", ...]}}): {0}")]
    BadConf(serde_json::Error),
    /// A seed that is not 64 hex characters.
    #[error("a seed is 64 hex characters (32 bytes), this one has {length} characters or is not hex; generate one with `openssl rand -hex 32`")]
    BadSeed {
        /// Characters given.
        length: usize,
    },
    /// The file is larger than any allow file needs to be.
    #[error("it is {size} bytes, more than the {max} an allow file of {MAX_ALLOWED_KEYS} keys needs; is it the right file?")]
    FileTooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The file could not be read.
    #[error("cannot read the allow file {}; check the path and its permissions", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// Something in the file is wrong.
    #[error("the allow file {} is not usable: {problem}", path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// What is wrong in it.
        problem: Box<AccessError>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> PublicKey {
        KeyPair::from_seed([n; 32]).public_key()
    }

    #[test]
    fn key_lines_with_comments_blank_lines_and_both_encodings() {
        let text = format!(
            "# clients\n\n  {}  # alice, hex\n{}\n\t\n",
            key(1),
            key(2).to_z32()
        );
        let list = AllowList::parse(&text).unwrap();
        assert_eq!(list.len(), 2);
        assert!(list.admits(&key(1)) && list.admits(&key(2)));
        assert!(!list.admits(&key(3)));
    }

    #[test]
    fn junk_names_its_line() {
        let text = format!("{}\nnot a key\n", key(1));
        let e = AllowList::parse(&text).unwrap_err();
        assert!(matches!(e, AccessError::BadKey { line: 2, .. }), "{e}");
        assert!(e.to_string().contains("line 2"), "{e}");
    }

    #[test]
    fn hypertele_conf_gives_keys_and_seed() {
        let seed = [9u8; 32];
        let text = format!(
            r#"{{"seed": "{}", "allow": ["{}", "{}"], "keepAlive": 5000}}"#,
            hex::encode(seed),
            key(1),
            key(2)
        );
        let file = AllowFile::parse(&text).unwrap();
        assert_eq!(file.seed, Some(seed));
        assert_eq!(file.allow.len(), 2);
        assert!(file.allow.admits(&key(2)));
    }

    #[test]
    fn broken_conf_and_bad_conf_keys_are_errors() {
        assert!(matches!(
            AllowFile::parse("{\"allow\": 3}").unwrap_err(),
            AccessError::BadConf(_)
        ));
        assert!(matches!(
            AllowFile::parse("{\"allow\": [\"abc\"]}").unwrap_err(),
            AccessError::BadConfKey { index: 1, .. }
        ));
        assert!(matches!(
            AllowFile::parse("{\"seed\": \"abc\"}").unwrap_err(),
            AccessError::BadSeed { length: 3 }
        ));
    }

    #[test]
    fn one_key_past_the_limit_is_refused() {
        let keys: Vec<PublicKey> = (0..=MAX_ALLOWED_KEYS as u32)
            .map(|n| {
                let mut b = [0u8; 32];
                b[..4].copy_from_slice(&n.to_le_bytes());
                PublicKey::from(b)
            })
            .collect();
        let mut list = AllowList::from_keys(keys[..MAX_ALLOWED_KEYS].iter().copied()).unwrap();
        assert_eq!(list.len(), MAX_ALLOWED_KEYS);
        // A repeat is not a new key.
        list.insert(keys[0]).unwrap();
        assert!(matches!(
            list.insert(keys[MAX_ALLOWED_KEYS]),
            Err(AccessError::TooManyKeys { .. })
        ));
        let text: String = keys.iter().map(|k| format!("{k}\n")).collect();
        assert!(matches!(
            AllowList::parse(&text),
            Err(AccessError::TooManyKeys { .. })
        ));
    }

    #[test]
    fn seeds_are_exactly_64_hex() {
        assert_eq!(parse_seed(&"ab".repeat(32)).unwrap(), [0xab; 32]);
        for bad in [
            "",
            "ab",
            &"zz".repeat(32),
            &"ab".repeat(33),
            &"é".repeat(32),
        ] {
            assert!(
                matches!(parse_seed(bad), Err(AccessError::BadSeed { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn private_mode_admits_only_the_seeds_own_key() {
        let (key_pair, allow) = private_mode([5; 32]);
        assert_eq!(key_pair, KeyPair::from_seed([5; 32]));
        assert!(allow.admits(&key_pair.public_key()));
        assert_eq!(allow.len(), 1);
    }
}
