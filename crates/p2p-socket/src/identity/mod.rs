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
//!   hex digits (68 bits) of the identity's secret key enter the share key, and a host of 26
//!   characters or more leaves none: anyone could derive the secret key. Keeping that key
//!   keeps the npm tool's peers, so it is a choice ([`ShareKeyRule`]) that
//!   [`Identity::checked_share_key_pair`] makes only while at least
//!   [`MIN_NPM_SHARE_KEY_SECRET_BITS`] bits of secret remain; [`ShareKeyRule::Hashed`] derives a
//!   key from the whole secret instead.

mod file;
mod keys;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{debug, info};

pub use file::IdentityError;
use file::{create_new_private_file, warn_if_readable_by_others};
use keys::decode_hex;
pub use keys::{KeyPair, ParseKeyError, PublicKey};

/// File name of the identity, as the npm tool uses it.
pub const IDENTITY_FILE_NAME: &str = "identity.json";

/// Where the identity lives: `./identity.json`, relative to the current working directory.
///
/// This follows the npm tool, which reads and writes `identity.json` in the directory it is
/// run from (not in the home directory), so running both tools from the same directory gives
/// the same share keys.
pub fn default_identity_path() -> PathBuf {
    PathBuf::from(IDENTITY_FILE_NAME)
}

/// How much of the identity's secret a share key keeps at full strength: the security level
/// of the Ed25519 key itself. No npm-rule key reaches it (`host:port:` takes at least 4 of the
/// 32 bytes, so at most 112 bits remain); one that keeps less is used only with a warning.
pub const MIN_SHARE_KEY_SECRET_BITS: u32 = 128;

/// Below this, [`Identity::checked_share_key_pair`] refuses the npm rule's key: 2^64 key
/// derivations are beyond anyone who would attack one share (the npm default,
/// `localhost:8080`, keeps 68 bits), while 2^56 takes a rented GPU farm weeks and a long
/// host leaves nothing at all.
pub const MIN_NPM_SHARE_KEY_SECRET_BITS: u32 = 64;

/// How a share's key pair is derived from the identity and the shared `host:port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShareKeyRule {
    /// The npm tool's rule: the seed is the first 32 bytes of
    /// `"{host}:{port}:{secret key hex}"`. Peers of an npm sharer keep their key, but only
    /// the hex digits that fit after `host:port:` are secret (see
    /// [`npm_share_key_secret_bits`]): a long host leaves none, and anyone could derive the
    /// secret key and impersonate the share.
    Npm,
    /// SHA-256 over the host, the port and the whole secret key: all of the secret counts,
    /// whatever the host. A different key from the npm tool's, so peers that have the old
    /// key need the new one.
    Hashed,
}

/// How many bits of the identity's secret the npm rule keeps for `host:port`: four per hex
/// digit of the secret key that fits in the 32 bytes after `"{host}:{port}:"`. Never 128 or
/// more, since the prefix is at least four bytes; `localhost:8080` keeps 68.
///
/// ```
/// use p2p_socket::npm_share_key_secret_bits;
///
/// assert_eq!(npm_share_key_secret_bits("localhost", 8080), 68);
/// assert_eq!(npm_share_key_secret_bits("host.docker.internal", 8080), 24);
/// assert_eq!(npm_share_key_secret_bits("a-thirty-character-host-name.x", 8080), 0);
/// ```
pub fn npm_share_key_secret_bits(host: &str, port: u16) -> u32 {
    let prefix = host.len() + 1 + port.to_string().len() + 1;
    let digits = 32usize.saturating_sub(prefix);
    // At most 32 digits: the cast cannot truncate.
    4 * digits as u32
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
        self.key_pair.public_key()
    }

    /// Reads an identity file written by this tool or by the npm tool, or hypertele's identity
    /// file (`{"publicKey": hex, "secretKey": hex}`, what `hypertele -i` reads); the layout is
    /// recognised by its fields.
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
        let parse_error = |source| IdentityError::Parse {
            path: path.to_path_buf(),
            source,
        };
        let json: serde_json::Value = serde_json::from_str(&text).map_err(parse_error)?;
        // Ours nests the keys under "keyPair"; hypertele's `-i` file has them at the top.
        let key_pair = if json.get("keyPair").is_some() {
            serde_json::from_value::<IdentityFile>(json)
                .map_err(parse_error)?
                .key_pair
        } else if json.get("publicKey").is_some() || json.get("secretKey").is_some() {
            serde_json::from_value::<KeyPairFile>(json).map_err(parse_error)?
        } else {
            return Err(IdentityError::UnknownFormat {
                path: path.to_path_buf(),
            });
        };
        let secret_key: [u8; 64] = decode_key_field(path, "secretKey", &key_pair.secret_key)?;
        let public_key: [u8; 32] = decode_key_field(path, "publicKey", &key_pair.public_key)?;
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&secret_key[..32]);
        let key_pair = KeyPair::from_seed(seed);
        if *key_pair.secret_key() != secret_key || *key_pair.public_key().as_bytes() != public_key {
            return Err(IdentityError::Inconsistent {
                path: path.to_path_buf(),
            });
        }
        debug!(path = %path.display(), public_key = %key_pair.public_key(), "loaded identity");
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

    /// The key pair a share of `host:port` listens on, by `rule`; its public key is what the
    /// CLI prints for others to connect with.
    ///
    /// Pass `host` exactly as the user typed it (the npm tool's default is `"localhost"`):
    /// `localhost` and `127.0.0.1` give different keys. The same identity, rule, host and
    /// port always give the same key pair. [`ShareKeyRule::Npm`] may leave little or no
    /// secret in the key; [`Identity::checked_share_key_pair`] refuses that.
    ///
    /// ```
    /// use p2p_socket::{Identity, ShareKeyRule};
    ///
    /// let identity = Identity::generate();
    /// let npm = identity.share_key_pair("localhost", 8080, ShareKeyRule::Npm);
    /// let hashed = identity.share_key_pair("localhost", 8080, ShareKeyRule::Hashed);
    /// assert_ne!(npm.public_key(), hashed.public_key());
    /// ```
    pub fn share_key_pair(&self, host: &str, port: u16, rule: ShareKeyRule) -> KeyPair {
        match rule {
            ShareKeyRule::Npm => KeyPair::from_seed_text(&format!(
                "{host}:{port}:{}",
                hex::encode(self.key_pair.secret_key())
            )),
            ShareKeyRule::Hashed => {
                let mut seed = Sha256::new();
                // Each part ends in a zero byte, which no host name contains: no two
                // (host, port) pairs give the same input.
                seed.update(b"p2p-socket share key v1\0");
                seed.update(host.as_bytes());
                seed.update(b"\0");
                seed.update(port.to_string().as_bytes());
                seed.update(b"\0");
                seed.update(self.key_pair.secret_key());
                KeyPair::from_seed(seed.finalize().into())
            }
        }
    }

    /// The npm-compatible share key pair when it keeps at least
    /// [`MIN_NPM_SHARE_KEY_SECRET_BITS`] of the identity's secret (the caller should say so
    /// when it keeps fewer than [`MIN_SHARE_KEY_SECRET_BITS`]); otherwise
    /// [`IdentityError::WeakShareKey`], and the caller must choose a rule knowingly.
    pub fn checked_share_key_pair(&self, host: &str, port: u16) -> Result<KeyPair, IdentityError> {
        let secret_bits = npm_share_key_secret_bits(host, port);
        if secret_bits < MIN_NPM_SHARE_KEY_SECRET_BITS {
            return Err(IdentityError::WeakShareKey {
                service: format!("{host}:{port}"),
                secret_bits,
            });
        }
        Ok(self.share_key_pair(host, port, ShareKeyRule::Npm))
    }

    /// The file content, identical to what the npm tool's `JSON.stringify(identity, null, 2)`
    /// writes.
    fn to_file_json(&self) -> String {
        let file = IdentityFile {
            key_pair: KeyPairFile {
                public_key: hex::encode(self.key_pair.public_key().as_bytes()),
                secret_key: hex::encode(self.key_pair.secret_key()),
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

#[cfg(test)]
mod tests {
    use super::keys::seed_from_text;
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
            assert_eq!(hex::encode(key_pair.public_key().as_bytes()), public);
            assert_eq!(key_pair.secret_key()[..32], seed);
            assert_eq!(
                key_pair.secret_key()[32..],
                *key_pair.public_key().as_bytes()
            );
            assert_eq!(key_pair.seed(), seed);
        }
        let abc = KeyPair::from_seed_text("abc");
        assert_eq!(hex::encode(abc.public_key().as_bytes()), ABC_PUBLIC);
        assert_eq!(hex::encode(abc.secret_key()), ABC_SECRET);
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
            hex::encode(KeyPair::from_seed_text("€").public_key().as_bytes()),
            EURO_PUBLIC
        );
        let cut = format!("{}é:1:00", "x".repeat(31));
        assert_eq!(hex::encode(seed_from_text(&cut)), CUT_FILL);
        assert_eq!(seed_from_text(""), [0u8; 32]);
    }

    #[test]
    fn npm_share_keys_with_too_little_secret_are_refused() {
        let identity = abc_identity();
        // (host, port, bits of secret the npm rule keeps)
        let table = [
            ("localhost", 8080, 68),
            ("127.0.0.1", 3000, 68),
            ("my-laptop1", 8080, 64),
            ("my-laptop12", 8080, 60),
            ("host.docker.internal", 8080, 24),
            ("a-thirty-character-host-name.x", 8080, 0),
            ("a", 1, 112),
        ];
        for (host, port, bits) in table {
            assert_eq!(npm_share_key_secret_bits(host, port), bits, "{host}:{port}");
            // The npm rule never keeps the full 128 bits; below 64 it needs an explicit choice.
            match identity.checked_share_key_pair(host, port) {
                Ok(key) if bits >= MIN_NPM_SHARE_KEY_SECRET_BITS => {
                    assert_eq!(key, identity.share_key_pair(host, port, ShareKeyRule::Npm))
                }
                Err(IdentityError::WeakShareKey { secret_bits, .. })
                    if bits < MIN_NPM_SHARE_KEY_SECRET_BITS =>
                {
                    assert_eq!(secret_bits, bits)
                }
                other => panic!("{host}:{port}: {other:?}"),
            }
        }
    }

    #[test]
    fn hashed_share_keys_use_the_whole_secret() {
        let host = "a-thirty-character-host-name.x";
        let a = abc_identity();
        let b = Identity::generate();
        // The npm rule cannot tell two identities apart behind a long host...
        assert_eq!(
            a.share_key_pair(host, 8080, ShareKeyRule::Npm),
            b.share_key_pair(host, 8080, ShareKeyRule::Npm)
        );
        // ...the hashed one can, and still depends on host and port.
        let hashed = a.share_key_pair(host, 8080, ShareKeyRule::Hashed);
        assert_ne!(hashed, b.share_key_pair(host, 8080, ShareKeyRule::Hashed));
        assert_ne!(hashed, a.share_key_pair(host, 8081, ShareKeyRule::Hashed));
        assert_ne!(
            hashed,
            a.share_key_pair("localhost", 8080, ShareKeyRule::Hashed)
        );
        assert_eq!(hashed, a.share_key_pair(host, 8080, ShareKeyRule::Hashed));
    }

    #[test]
    fn share_key_pairs_match_the_npm_tool() {
        let identity = abc_identity();
        for (host, port, seed, public) in ABC_SHARES {
            let share = identity.share_key_pair(host, port, ShareKeyRule::Npm);
            assert_eq!(hex::encode(share.seed()), seed, "{host}:{port}");
            assert_eq!(
                hex::encode(share.public_key().as_bytes()),
                public,
                "{host}:{port}"
            );
        }
        assert_ne!(
            identity.share_key_pair("localhost", 8081, ShareKeyRule::Npm),
            identity.share_key_pair("localhost", 8080, ShareKeyRule::Npm)
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
    fn loads_a_hypertele_identity_file_and_names_an_unknown_layout() {
        let dir = TestDir::new();
        let path = dir.0.join("hypertele-id.json");
        fs::write(
            &path,
            format!("{{\"secretKey\":\"{ABC_SECRET}\",\"publicKey\":\"{ABC_PUBLIC}\"}}"),
        )
        .expect("write hypertele file");
        assert_eq!(
            Identity::load(&path).expect("load hypertele"),
            abc_identity()
        );
        fs::write(&path, format!("{{\"publicKey\":\"{ABC_PUBLIC}\"}}")).expect("write");
        let error = Identity::load(&path).expect_err("no secret key");
        assert!(matches!(error, IdentityError::Parse { .. }), "{error:?}");
        fs::write(&path, "{\"seed\":\"00\",\"allow\":[]}").expect("write");
        let error = Identity::load(&path).expect_err("a conf.json");
        assert!(
            matches!(error, IdentityError::UnknownFormat { .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("hypertele"), "{error}");
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
        let expected = PublicKey::from(bytes(SEQ_PUBLIC));
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
        let abc = PublicKey::from(bytes(ABC_PUBLIC));
        assert_eq!(abc.to_z32(), ABC_PUBLIC_Z32);
        assert_eq!(ABC_PUBLIC_Z32.parse::<PublicKey>(), Ok(abc));
        assert_eq!(abc_identity().public_key(), abc);
    }

    #[test]
    fn public_key_z32_round_trips() {
        for _ in 0..64 {
            let key = KeyPair::generate().public_key();
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
