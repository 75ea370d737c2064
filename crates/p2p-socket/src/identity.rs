//! Key pairs, public keys and the `identity.json` file, compatible with the npm
//! `p2p-socket` tool (AndersCan/p2p-socket 0.0.20) so that either tool can use the other's
//! identity file and both derive the same share keys.
//!
//! # Derivation rules (what the npm tool does, reproduced byte for byte)
//!
//! * **Seed text → seed.** A text seed becomes a 32-byte Ed25519 seed by writing its UTF-8
//!   bytes cyclically into a 32-byte buffer (Node's `Buffer.alloc(32).fill(text)`): short
//!   texts repeat, long texts are cut after 32 bytes (even inside a multi-byte character).
//! * **Seed → key pair.** Standard Ed25519 from a seed, laid out as libsodium's
//!   `crypto_sign_seed_keypair` (and Node hyperdht's `DHT.keyPair(seed)`): the secret key is
//!   the 32-byte seed followed by the 32-byte public key.
//! * **Identity.** `p2p-socket create-id [--seed words…]` stores a key pair in
//!   `./identity.json`; with a seed text the key pair is derived from it, without one (or with
//!   an empty one) it is random.
//! * **Share key.** Sharing `host:port` does not announce the identity key itself but a key
//!   pair derived from the seed text `"{host}:{port}:{secret key as lowercase hex}"`, with the
//!   host exactly as the user typed it (npm default `localhost`) and the port in decimal.
//!   Only the first 32 bytes of that text count, so for `localhost:8080:` only the first 17
//!   hex digits (68 bits) of the identity's secret key enter the share key. That weakness is
//!   inherited on purpose: changing it would break compatibility with existing share keys.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tracing::{debug, info, warn};

/// File name of the identity, as the npm tool uses it.
pub const IDENTITY_FILE_NAME: &str = "identity.json";

/// The z-base-32 alphabet used by `hypercore-id-encoding`, holesail and Pear.
const Z32_ALPHABET: &[u8; 32] = b"ybndrfg8ejkmcpqxot1uwisza345h769";

/// Hex characters of a public key.
const KEY_HEX_LEN: usize = 64;

/// z-base-32 characters of a public key: 256 bits in 5-bit characters, the last one padded.
const KEY_Z32_LEN: usize = 52;

/// Where the identity lives: `./identity.json`, relative to the current working directory.
///
/// This follows the npm tool, which reads and writes `identity.json` in the directory it is
/// run from (not in the home directory), so running both tools from the same directory gives
/// the same share keys.
pub fn default_identity_path() -> PathBuf {
    PathBuf::from(IDENTITY_FILE_NAME)
}

/// An Ed25519 key pair in libsodium layout.
///
/// `secret_key` is the 32-byte seed followed by `public_key`, exactly what libsodium's
/// `crypto_sign_seed_keypair` and Node hyperdht's `DHT.keyPair()` produce, so the bytes can
/// be handed to hyperdht-compatible code unchanged. `Debug` never shows the secret key.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyPair {
    /// The Ed25519 public key.
    pub public_key: [u8; 32],
    /// The seed (32 bytes) followed by the public key (32 bytes).
    pub secret_key: [u8; 64],
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
    pub fn public(&self) -> PublicKey {
        PublicKey(self.public_key)
    }
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("public_key", &self.public())
            .field("secret_key", &"<redacted>")
            .finish()
    }
}

/// Node's `Buffer.alloc(32).fill(text)`: the UTF-8 bytes of `text`, repeated to fill 32
/// bytes and cut after byte 32; an empty text leaves the buffer zeroed.
fn seed_from_text(text: &str) -> [u8; 32] {
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
pub struct PublicKey(pub [u8; 32]);

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
fn decode_hex<const N: usize>(text: &str) -> Result<[u8; N], (usize, char)> {
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

/// The key pair stored in `identity.json`, from which share keys are derived.
///
/// The file has the npm tool's layout, byte for byte (2-space indented JSON, no trailing
/// newline, lowercase hex):
///
/// ```json
/// {
///   "keyPair": {
///     "publicKey": "<64 hex>",
///     "secretKey": "<128 hex: seed then public key>"
///   }
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    key_pair: KeyPair,
}

/// `identity.json` as JSON; field names are the npm tool's.
#[derive(Serialize, Deserialize)]
struct IdentityFile {
    #[serde(rename = "keyPair")]
    key_pair: KeyPairFile,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeyPairFile {
    public_key: String,
    secret_key: String,
}

impl Identity {
    /// An identity holding `key_pair`.
    pub fn new(key_pair: KeyPair) -> Self {
        Self { key_pair }
    }

    /// A random identity that lives only in memory. The npm tool shares with one of these when
    /// there is no `identity.json`, which gives a different share key on every run.
    pub fn generate() -> Self {
        Self::new(KeyPair::generate())
    }

    /// The stored key pair.
    pub fn key_pair(&self) -> &KeyPair {
        &self.key_pair
    }

    /// The identity's own public key (not the key a share is reachable under; see
    /// [`Identity::share_key_pair`]).
    pub fn public_key(&self) -> PublicKey {
        self.key_pair.public()
    }

    /// Reads an identity file written by this tool or by the npm tool.
    ///
    /// Stricter than the npm tool, which does not check the file at all: both keys must be
    /// complete hex and belong together, so a damaged file is reported instead of silently
    /// producing share keys nobody can reach. On Unix a warning is logged when other users can
    /// read the file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, IdentityError> {
        let path = path.as_ref();
        let text = fs::read_to_string(path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => IdentityError::NotFound {
                path: path.to_path_buf(),
            },
            _ => IdentityError::Read {
                path: path.to_path_buf(),
                source,
            },
        })?;
        warn_if_readable_by_others(path);
        let file: IdentityFile =
            serde_json::from_str(&text).map_err(|source| IdentityError::Parse {
                path: path.to_path_buf(),
                source,
            })?;
        let secret_key: [u8; 64] = decode_key_field(path, "secretKey", &file.key_pair.secret_key)?;
        let public_key: [u8; 32] = decode_key_field(path, "publicKey", &file.key_pair.public_key)?;
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&secret_key[..32]);
        let key_pair = KeyPair::from_seed(seed);
        if key_pair.secret_key != secret_key || key_pair.public_key != public_key {
            return Err(IdentityError::Inconsistent {
                path: path.to_path_buf(),
            });
        }
        debug!(path = %path.display(), public_key = %key_pair.public(), "loaded identity");
        Ok(Self::new(key_pair))
    }

    /// Like [`Identity::load`], but `Ok(None)` when the file does not exist: the npm tool
    /// shares with a random identity then (see [`Identity::generate`]).
    pub fn load_optional(path: impl AsRef<Path>) -> Result<Option<Self>, IdentityError> {
        match Self::load(path) {
            Ok(identity) => Ok(Some(identity)),
            Err(IdentityError::NotFound { .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Creates a new identity file at `path` (what `p2p-socket create-id` does) and returns
    /// the identity and the absolute path of the file.
    ///
    /// With a non-empty `seed` the key pair is derived from that text (see the module
    /// documentation), so the same seed always gives the same identity; the npm tool joins
    /// the words of `--seed` with no separator (`-s foo bar` is the seed `"foobar"`), and
    /// callers should do the same. `None` or an empty seed gives a random identity.
    ///
    /// Never overwrites: if `path` exists the call fails with [`IdentityError::AlreadyExists`]
    /// and leaves the file alone. The file is written to a temporary file in the same
    /// directory that is created with owner-only permissions (0600 on Unix) before any key is
    /// written, then linked into place in one step, so nobody ever sees a partial or
    /// world-readable identity.
    pub fn save_new(
        path: impl AsRef<Path>,
        seed: Option<&str>,
    ) -> Result<(Self, PathBuf), IdentityError> {
        let path = std::path::absolute(path.as_ref()).map_err(|source| IdentityError::Write {
            path: path.as_ref().to_path_buf(),
            source,
        })?;
        let key_pair = match seed {
            Some(text) if !text.is_empty() => KeyPair::from_seed_text(text),
            _ => KeyPair::generate(),
        };
        let identity = Self::new(key_pair);
        create_new_private_file(&path, identity.to_file_json().as_bytes())?;
        info!(path = %path.display(), public_key = %identity.public_key(), "created identity");
        Ok((identity, path))
    }

    /// The key pair a share of `host:port` listens on; its public key is what the CLI prints
    /// for others to connect with.
    ///
    /// Pass `host` exactly as the user typed it (the npm tool's default is `"localhost"`):
    /// `localhost` and `127.0.0.1` give different keys. The same identity, host and port
    /// always give the same key pair.
    pub fn share_key_pair(&self, host: &str, port: u16) -> KeyPair {
        KeyPair::from_seed_text(&format!(
            "{host}:{port}:{}",
            hex::encode(self.key_pair.secret_key)
        ))
    }

    /// The file content, identical to what the npm tool's `JSON.stringify(identity, null, 2)`
    /// writes.
    fn to_file_json(&self) -> String {
        let file = IdentityFile {
            key_pair: KeyPairFile {
                public_key: hex::encode(self.key_pair.public_key),
                secret_key: hex::encode(self.key_pair.secret_key),
            },
        };
        // Only strings inside: serializing cannot fail.
        serde_json::to_string_pretty(&file).expect("identity JSON serializes")
    }
}

/// Decodes one hex key field of the identity file into exactly `N` bytes.
fn decode_key_field<const N: usize>(
    path: &Path,
    field: &'static str,
    text: &str,
) -> Result<[u8; N], IdentityError> {
    let invalid = |reason: String| IdentityError::InvalidField {
        path: path.to_path_buf(),
        field,
        reason,
    };
    let length = text.chars().count();
    if length != 2 * N {
        return Err(invalid(format!(
            "it has {length} characters instead of {}",
            2 * N
        )));
    }
    decode_hex(text).map_err(|(position, character)| {
        invalid(format!(
            "character {position} ({character:?}) is not a hex digit"
        ))
    })
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(metadata) = fs::metadata(path) {
        if metadata.permissions().mode() & 0o077 != 0 {
            warn!(
                path = %path.display(),
                "the identity file can be read by other users, who could then derive your share \
                 keys; restrict it with `chmod 600 {}`",
                path.display()
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

/// Removes a temporary file when dropped, so no failure path leaves one behind.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        // The file may already be gone; there is nothing useful to do about other failures.
        let _ = fs::remove_file(&self.0);
    }
}

/// Writes `contents` to a new owner-only file at `path`, failing if `path` exists.
fn create_new_private_file(path: &Path, contents: &[u8]) -> Result<(), IdentityError> {
    let write_error = |source| IdentityError::Write {
        path: path.to_path_buf(),
        source,
    };
    let already_exists = || IdentityError::AlreadyExists {
        path: path.to_path_buf(),
    };
    // Checked up front too, so an existing identity is reported before any file is created.
    if fs::symlink_metadata(path).is_ok() {
        return Err(already_exists());
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let file_name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| IDENTITY_FILE_NAME.to_owned());
    let temp = TempFile(dir.join(format!(
        ".{file_name}.{}.{:016x}.tmp",
        std::process::id(),
        rand::random::<u64>()
    )));

    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&temp.0).map_err(write_error)?;
    #[cfg(unix)]
    {
        // The umask may have removed bits from the creation mode; make it exactly 0600 before
        // the secret goes in.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(write_error)?;
    }
    file.write_all(contents).map_err(write_error)?;
    file.sync_all().map_err(write_error)?;
    drop(file);

    // A hard link, unlike rename, fails instead of replacing a file that appeared meanwhile.
    match fs::hard_link(&temp.0, path) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => return Err(already_exists()),
        // Some file systems (FAT, some network mounts) have no hard links; rename is still
        // atomic there, only the window between the check above and now is unguarded.
        Err(_) => {
            if fs::symlink_metadata(path).is_ok() {
                return Err(already_exists());
            }
            fs::rename(&temp.0, path).map_err(write_error)?;
        }
    }
    drop(temp);
    #[cfg(unix)]
    {
        // Make the new directory entry durable too; failure only weakens crash safety.
        if let Ok(dir) = fs::File::open(dir) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}

/// Why an identity file could not be read or created.
#[derive(Debug, Error)]
pub enum IdentityError {
    /// There is no identity file at the path.
    #[error(
        "no identity file at {}; create one with `p2p-socket create-id` (the identity is \
         ./identity.json in the directory you run p2p-socket from)",
        path.display()
    )]
    NotFound {
        /// The path that was looked at.
        path: PathBuf,
    },
    /// The file exists but could not be read.
    #[error("cannot read the identity file {}: {source}; check its permissions", path.display())]
    Read {
        /// The identity file.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// The file is not the expected JSON.
    #[error(
        "{} is not a valid identity file ({source}); restore it from a backup, or move it \
         away and run `p2p-socket create-id` (a new identity changes your share keys)",
        path.display()
    )]
    Parse {
        /// The identity file.
        path: PathBuf,
        /// What the JSON parser found.
        source: serde_json::Error,
    },
    /// A key in the file is not a hex key of the right length.
    #[error(
        "the {field} in {} is damaged: {reason}; restore the file from a backup, or move it \
         away and run `p2p-socket create-id` (a new identity changes your share keys)",
        path.display()
    )]
    InvalidField {
        /// The identity file.
        path: PathBuf,
        /// The JSON field (`publicKey` or `secretKey`).
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The public and secret key in the file do not belong together.
    #[error(
        "the publicKey and secretKey in {} do not belong together, so the file is damaged; \
         restore it from a backup, or move it away and run `p2p-socket create-id` (a new \
         identity changes your share keys)",
        path.display()
    )]
    Inconsistent {
        /// The identity file.
        path: PathBuf,
    },
    /// `create-id` found an identity file already there.
    #[error(
        "{} already exists; refusing to overwrite it, because a new identity changes every \
         share key derived from it. Keep using it, or move it away first if you really want a \
         new identity",
        path.display()
    )]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },
    /// The new identity file could not be written.
    #[error(
        "cannot write the identity file {}: {source}; check that the directory exists and is \
         writable",
        path.display()
    )]
    Write {
        /// The identity file.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::{AtomicUsize, Ordering};

    // Golden vectors, computed with Node hyperdht 6.34.0 (`DHT.keyPair(seed)`) and
    // `Buffer.alloc(32).fill(text)` in interop/node.

    /// Seed 00 01 02 … 1f.
    const SEQ_PUBLIC: &str = "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8";
    /// Its z-base-32 form, from Node's `z32.encode`.
    const SEQ_PUBLIC_Z32: &str = "yqooxx9u3aemh8mo5wcqq16yufu6jitouq1o4za751dger1igghy";
    /// Seed of 32 zero bytes.
    const ZERO_PUBLIC: &str = "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29";
    /// `create-id -s abc`.
    const ABC_PUBLIC: &str = "204aaed5e86cd99a149c0d51d033261996cdbd67a2becb24dfaa43a4828181e8";
    const ABC_SECRET: &str = "6162636162636162636162636162636162636162636162636162636162636162\
                              204aaed5e86cd99a149c0d51d033261996cdbd67a2becb24dfaa43a4828181e8";
    const ABC_PUBLIC_Z32: &str = "rbfk7ixepuc3wfrhbie7yc3gdgmc5xm8wk9csjg9ijb4jywbo8wy";
    /// Share keys of the `abc` identity: (host, port, seed bytes, share public key).
    const ABC_SHARES: [(&str, u16, &str, &str); 4] = [
        (
            "localhost",
            8080,
            "6c6f63616c686f73743a383038303a3631363236333631363236333631363236",
            "2078f5be017d2a0ca485b232ab02d852837aedc9dc340078bd5ba732a680feba",
        ),
        (
            "127.0.0.1",
            3000,
            "3132372e302e302e313a333030303a3631363236333631363236333631363236",
            "15be7ccedd1a6871b5107294e47f7a035c8c8fc07006f4937d0450415c152f6f",
        ),
        (
            "a-very-long-hostname.example.internal",
            22,
            "612d766572792d6c6f6e672d686f73746e616d652e6578616d706c652e696e74",
            "c1c31f9abb5164f18ebb9f6301d8e90043b676d534d7732779d9afae62c98194",
        ),
        (
            "hôst-ünïcødé.éxample",
            443,
            "68c3b473742dc3bc6ec3af63c3b864c3a92ec3a978616d706c653a3434333a36",
            "ec803ba34d826ee3b81724fe6e2c38e2cb44ee5939b4c0c75de55b3198ecd46e",
        ),
    ];
    /// `Buffer.alloc(32).fill("€")`: the 3-byte character is cut after byte 32.
    const EURO_FILL: &str = "e282ace282ace282ace282ace282ace282ace282ace282ace282ace282ace282";
    const EURO_PUBLIC: &str = "6c7d52f772f78ae4a92b135aa10b18d14b9f529d3de2422f2eb9ea7f7bd6fcac";
    /// `Buffer.alloc(32).fill("x".repeat(31) + "é:1:00")`.
    const CUT_FILL: &str = "78787878787878787878787878787878787878787878787878787878787878c3";
    /// The `identity.json` the npm tool writes for `create-id -s abc`.
    const ABC_NPM_FILE: &str = "{\n  \"keyPair\": {\n    \"publicKey\": \"204aaed5e86cd99a149c0d51d033261996cdbd67a2becb24dfaa43a4828181e8\",\n    \"secretKey\": \"6162636162636162636162636162636162636162636162636162636162636162204aaed5e86cd99a149c0d51d033261996cdbd67a2becb24dfaa43a4828181e8\"\n  }\n}";

    /// A fresh directory under the system temp dir, removed on drop.
    struct TestDir(PathBuf);

    impl TestDir {
        fn new() -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "p2p-socket-identity-test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).expect("create test dir");
            Self(dir)
        }

        fn entries(&self) -> Vec<String> {
            let mut names: Vec<String> = fs::read_dir(&self.0)
                .expect("list test dir")
                .map(|entry| {
                    entry
                        .expect("dir entry")
                        .file_name()
                        .to_string_lossy()
                        .into_owned()
                })
                .collect();
            names.sort();
            names
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn bytes<const N: usize>(text: &str) -> [u8; N] {
        hex::decode(text)
            .expect("test vector is hex")
            .try_into()
            .expect("test vector length")
    }

    fn abc_identity() -> Identity {
        Identity::new(KeyPair::from_seed_text("abc"))
    }

    #[test]
    fn from_seed_matches_node_hyperdht() {
        let mut seq = [0u8; 32];
        for (i, byte) in seq.iter_mut().enumerate() {
            *byte = i as u8;
        }
        for (seed, public) in [(seq, SEQ_PUBLIC), ([0u8; 32], ZERO_PUBLIC)] {
            let key_pair = KeyPair::from_seed(seed);
            assert_eq!(hex::encode(key_pair.public_key), public);
            assert_eq!(key_pair.secret_key[..32], seed);
            assert_eq!(key_pair.secret_key[32..], key_pair.public_key);
            assert_eq!(key_pair.seed(), seed);
        }
        let abc = KeyPair::from_seed_text("abc");
        assert_eq!(hex::encode(abc.public_key), ABC_PUBLIC);
        assert_eq!(hex::encode(abc.secret_key), ABC_SECRET);
    }

    #[test]
    fn generate_is_random_and_consistent() {
        let a = KeyPair::generate();
        let b = KeyPair::generate();
        assert_ne!(a, b);
        assert_eq!(KeyPair::from_seed(a.seed()), a);
    }

    #[test]
    fn debug_hides_the_secret_key() {
        let key_pair = KeyPair::from_seed_text("abc");
        for shown in [
            format!("{key_pair:?}"),
            format!("{:?}", Identity::new(key_pair.clone())),
        ] {
            assert!(shown.contains(ABC_PUBLIC), "{shown}");
            assert!(!shown.contains("61626361"), "secret leaked: {shown}");
            assert!(shown.contains("redacted"), "{shown}");
        }
    }

    #[test]
    fn seed_text_fills_like_node_buffer_fill() {
        assert_eq!(hex::encode(seed_from_text("abc")), &ABC_SECRET[..64]);
        assert_eq!(hex::encode(seed_from_text("€")), EURO_FILL);
        assert_eq!(
            hex::encode(KeyPair::from_seed_text("€").public_key),
            EURO_PUBLIC
        );
        let cut = format!("{}é:1:00", "x".repeat(31));
        assert_eq!(hex::encode(seed_from_text(&cut)), CUT_FILL);
        assert_eq!(seed_from_text(""), [0u8; 32]);
    }

    #[test]
    fn share_key_pairs_match_the_npm_tool() {
        let identity = abc_identity();
        for (host, port, seed, public) in ABC_SHARES {
            let share = identity.share_key_pair(host, port);
            assert_eq!(hex::encode(share.seed()), seed, "{host}:{port}");
            assert_eq!(hex::encode(share.public_key), public, "{host}:{port}");
        }
        assert_ne!(
            identity.share_key_pair("localhost", 8081),
            identity.share_key_pair("localhost", 8080)
        );
    }

    #[test]
    fn file_content_is_the_npm_layout() {
        assert_eq!(abc_identity().to_file_json(), ABC_NPM_FILE);
    }

    #[test]
    fn loads_an_npm_identity_file() {
        let dir = TestDir::new();
        let path = dir.0.join(IDENTITY_FILE_NAME);
        fs::write(&path, ABC_NPM_FILE).expect("write npm file");
        assert_eq!(
            Identity::load(&path).expect("load npm file"),
            abc_identity()
        );
        // The npm tool ignores fields it does not know, and so do we.
        fs::write(
            &path,
            format!(
                "{{\"extra\":1,\"keyPair\":{{\"publicKey\":\"{}\",\"secretKey\":\"{}\"}}}}",
                ABC_PUBLIC.to_uppercase(),
                ABC_SECRET
            ),
        )
        .expect("write compact file");
        assert_eq!(Identity::load(&path).expect("load compact"), abc_identity());
    }

    #[test]
    fn save_new_round_trips_with_owner_only_permissions() {
        let dir = TestDir::new();
        let path = dir.0.join(IDENTITY_FILE_NAME);
        let (identity, written) = Identity::save_new(&path, Some("abc")).expect("save");
        assert_eq!(written, path);
        assert!(written.is_absolute());
        assert_eq!(identity, abc_identity());
        assert_eq!(fs::read_to_string(&path).expect("read back"), ABC_NPM_FILE);
        assert_eq!(Identity::load(&path).expect("load"), identity);
        assert_eq!(dir.entries(), [IDENTITY_FILE_NAME], "temp file left behind");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).expect("metadata").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn save_new_without_seed_is_random() {
        let dir = TestDir::new();
        let (a, _) = Identity::save_new(dir.0.join("a.json"), None).expect("save a");
        let (b, _) = Identity::save_new(dir.0.join("b.json"), Some("")).expect("save b");
        assert_ne!(a, b);
        assert_ne!(a.key_pair().seed(), [0u8; 32]);
        assert_eq!(Identity::load(dir.0.join("b.json")).expect("load b"), b);
    }

    #[test]
    fn save_new_refuses_to_overwrite() {
        let dir = TestDir::new();
        let path = dir.0.join(IDENTITY_FILE_NAME);
        fs::write(&path, "precious").expect("write existing");
        let error = Identity::save_new(&path, Some("abc")).expect_err("must refuse");
        assert!(
            matches!(error, IdentityError::AlreadyExists { .. }),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(message.contains(&*path.to_string_lossy()), "{message}");
        assert!(message.contains("move it away"), "{message}");
        assert_eq!(fs::read_to_string(&path).expect("read"), "precious");
        assert_eq!(dir.entries(), [IDENTITY_FILE_NAME]);
    }

    #[test]
    fn load_reports_missing_and_damaged_files() {
        let dir = TestDir::new();
        let path = dir.0.join(IDENTITY_FILE_NAME);

        let error = Identity::load(&path).expect_err("missing");
        assert!(matches!(error, IdentityError::NotFound { .. }), "{error:?}");
        assert!(
            error.to_string().contains("p2p-socket create-id"),
            "{error}"
        );
        assert_eq!(Identity::load_optional(&path).expect("optional"), None);

        fs::write(&path, "{\"keyPair\":").expect("write");
        let error = Identity::load(&path).expect_err("truncated JSON");
        assert!(matches!(error, IdentityError::Parse { .. }), "{error:?}");
        assert!(Identity::load_optional(&path).is_err());

        let with_keys = |public: &str, secret: &str| {
            format!("{{\"keyPair\":{{\"publicKey\":\"{public}\",\"secretKey\":\"{secret}\"}}}}")
        };
        fs::write(&path, with_keys(ABC_PUBLIC, &ABC_SECRET[..127])).expect("write");
        let message = Identity::load(&path).expect_err("short secret").to_string();
        assert!(message.contains("secretKey"), "{message}");
        assert!(
            message.contains("127 characters instead of 128"),
            "{message}"
        );

        let bad_secret = format!("{}g", &ABC_SECRET[..127]);
        fs::write(&path, with_keys(ABC_PUBLIC, &bad_secret)).expect("write");
        let message = Identity::load(&path).expect_err("non-hex").to_string();
        assert!(message.contains("character 128 ('g')"), "{message}");
        assert!(
            !message.contains(&ABC_SECRET[..64]),
            "secret leaked: {message}"
        );

        fs::write(&path, with_keys(ZERO_PUBLIC, ABC_SECRET)).expect("write");
        let error = Identity::load(&path).expect_err("mismatched keys");
        assert!(
            matches!(error, IdentityError::Inconsistent { .. }),
            "{error:?}"
        );
    }

    #[test]
    fn public_key_parses_hex_and_z32() {
        let expected = PublicKey(bytes(SEQ_PUBLIC));
        for text in [
            SEQ_PUBLIC.to_owned(),
            SEQ_PUBLIC.to_uppercase(),
            format!("  {SEQ_PUBLIC}\n"),
            SEQ_PUBLIC_Z32.to_owned(),
            SEQ_PUBLIC_Z32.to_uppercase(),
            format!("\t{SEQ_PUBLIC_Z32} "),
        ] {
            assert_eq!(text.parse::<PublicKey>(), Ok(expected), "{text:?}");
        }
        assert_eq!(expected.to_string(), SEQ_PUBLIC);
        assert_eq!(expected.to_z32(), SEQ_PUBLIC_Z32);
        let abc = PublicKey(bytes(ABC_PUBLIC));
        assert_eq!(abc.to_z32(), ABC_PUBLIC_Z32);
        assert_eq!(ABC_PUBLIC_Z32.parse::<PublicKey>(), Ok(abc));
        assert_eq!(abc_identity().public_key(), abc);
    }

    #[test]
    fn public_key_z32_round_trips() {
        for _ in 0..64 {
            let key = KeyPair::generate().public();
            assert_eq!(key.to_z32().parse::<PublicKey>(), Ok(key));
            assert_eq!(key.to_string().parse::<PublicKey>(), Ok(key));
        }
    }

    #[test]
    fn public_key_errors_tell_what_is_wrong() {
        assert_eq!("  ".parse::<PublicKey>(), Err(ParseKeyError::Empty));

        let error = SEQ_PUBLIC[..63].parse::<PublicKey>().expect_err("short");
        assert_eq!(error, ParseKeyError::WrongLength { length: 63 });
        assert!(
            error.to_string().starts_with(
                "key has 63 characters; a p2p-socket key is 64 hex characters (copy the whole \
                 line `share` printed)"
            ),
            "{error}"
        );

        let bad_hex = format!("{}x{}", &SEQ_PUBLIC[..10], &SEQ_PUBLIC[11..]);
        let error = bad_hex.parse::<PublicKey>().expect_err("bad hex");
        assert_eq!(
            error,
            ParseKeyError::InvalidHexCharacter {
                position: 11,
                character: 'x'
            }
        );
        assert!(error.to_string().contains("'x' at position 11"), "{error}");

        // A multi-byte character counts as one character, not as its UTF-8 length.
        let accented = format!("é{}", &SEQ_PUBLIC[1..]);
        assert_eq!(
            accented.parse::<PublicKey>(),
            Err(ParseKeyError::InvalidHexCharacter {
                position: 1,
                character: 'é'
            })
        );

        // 'l' and 'v' are not in the z-base-32 alphabet.
        let bad_z32 = format!("{}l{}", &SEQ_PUBLIC_Z32[..5], &SEQ_PUBLIC_Z32[6..]);
        let error = bad_z32.parse::<PublicKey>().expect_err("bad z32");
        assert_eq!(
            error,
            ParseKeyError::InvalidZ32Character {
                position: 6,
                character: 'l'
            }
        );
        assert!(error.to_string().contains("z-base-32"), "{error}");
    }
}
