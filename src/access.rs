//! The access-control flags: `share --allow/--allow-file/--seed/--private` and
//! `connect --identity/--seed/--private`, hypertele's flags under the same names.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use p2p_socket::{parse_seed, private_mode, AllowFile, AllowList, Identity, KeyPair, PublicKey};

/// Who may connect to a share, and the share's key from a seed.
#[derive(clap::Args, Debug)]
pub struct ShareAccess {
    /// Admit only this client public key (repeat for more): 64 hex or 52 z-base-32 characters,
    /// what the client's `connect` logs as its client key. Other clients are refused.
    #[arg(long, value_name = "KEY", value_parser = parse_key)]
    allow: Vec<PublicKey>,
    /// Admit only the client keys in this file (repeatable): one key per line, `#` comments.
    /// hypertele's conf.json (`{"seed": ..., "allow": [...]}`) works too; its seed then gives
    /// the share key, as `hypertele-server -c` does.
    #[arg(long, value_name = "PATH")]
    allow_file: Vec<PathBuf>,
    /// Listen on the key pair of this 32-byte seed (64 hex characters), as
    /// `hypertele-server --seed`: the same seed always gives the same key.
    #[arg(long, value_name = "HEX", value_parser = parse_seed_arg, conflicts_with = "identity")]
    seed: Option<[u8; 32]>,
    /// hypertele's private mode: the seed is the capability. Only a client that derives the
    /// same key pair from it (`connect --seed HEX --private`, `hypertele --private -s HEX`)
    /// gets in; give the seed, not the key, to whoever may connect.
    #[arg(long, requires = "seed", conflicts_with_all = ["allow", "allow_file"])]
    private: bool,
}

/// What the access flags decided for a share.
pub struct ShareKeys {
    /// The share's key pair when a seed fixes it.
    pub key_pair: Option<KeyPair>,
    /// Only these clients get in, when set.
    pub allow: Option<AllowList>,
    /// What a client passes to `connect` instead of `--key`, when that is not enough.
    pub connect_with: Option<String>,
}

impl ShareAccess {
    /// Reads the allow files and derives the seed's key pair. `identity_given`: the share key
    /// comes from `--identity`, which a conf.json's seed must not silently replace.
    pub fn resolve(&self, identity_given: bool) -> Result<ShareKeys> {
        if self.private {
            let seed = self.seed.expect("clap requires --seed with --private");
            let (key_pair, allow) = private_mode(seed);
            return Ok(ShareKeys {
                key_pair: Some(key_pair),
                allow: Some(allow),
                connect_with: Some(format!("--seed {} --private", to_hex(&seed))),
            });
        }
        let mut seed = self.seed;
        let given = !self.allow.is_empty() || !self.allow_file.is_empty();
        let mut allow = AllowList::from_keys(self.allow.iter().copied())?;
        for path in &self.allow_file {
            let file = AllowFile::load(path)?;
            if file.allow.is_empty() {
                bail!(
                    "the allow file {} names no client key, so nobody could connect; add the \
                     keys (one per line), or leave out --allow-file to admit anyone with the key",
                    path.display()
                );
            }
            allow.extend(&file.allow)?;
            match (file.seed, seed, identity_given) {
                (Some(_), None, true) => bail!(
                    "{} names a seed (the share key of hypertele-server -c) and --identity names \
                     another key; remove one of them",
                    path.display()
                ),
                (Some(file_seed), None, false) => {
                    tracing::info!(file = %path.display(), "using the seed of the hypertele conf.json as the share key");
                    seed = Some(file_seed);
                }
                _ => {}
            }
        }
        if given {
            tracing::info!(
                keys = allow.len(),
                "admitting only the client keys on the allow list"
            );
        }
        Ok(ShareKeys {
            key_pair: seed.map(KeyPair::from_seed),
            allow: given.then_some(allow),
            connect_with: None,
        })
    }
}

/// Which key pair a client connects with.
#[derive(clap::Args, Debug)]
pub struct ConnectAccess {
    /// Connect as the key pair of this identity file, so a share with an allow list can admit
    /// it: p2p-socket's identity.json (`create-id` prints its key) or hypertele's `-i` file
    /// (`{"publicKey": hex, "secretKey": hex}`). Without one, a new key is made each run.
    #[arg(long, value_name = "PATH", conflicts_with = "private")]
    identity: Option<PathBuf>,
    /// With --private: the seed of hypertele's private mode (64 hex characters). The key pair
    /// comes from it, and so does the share key, so no --key is needed.
    #[arg(long, value_name = "HEX", value_parser = parse_seed_arg, requires = "private")]
    seed: Option<[u8; 32]>,
    /// hypertele's private mode (`hypertele --private -s HEX`): connect to the share of
    /// `share --seed HEX --private` as the key pair both derive from the seed.
    #[arg(long, requires = "seed")]
    private: bool,
}

impl ConnectAccess {
    /// Our key pair, and in private mode the share's key too.
    pub fn resolve(&self) -> Result<(KeyPair, Option<PublicKey>)> {
        let (key_pair, remote) = match (&self.identity, self.seed) {
            (Some(path), _) => {
                let identity = Identity::load(path).with_context(|| {
                    format!("cannot use {} as the client identity", path.display())
                })?;
                (identity.key_pair().clone(), None)
            }
            (None, Some(seed)) => {
                let (key_pair, _) = private_mode(seed);
                let remote = key_pair.public_key();
                (key_pair, Some(remote))
            }
            (None, None) => (KeyPair::generate(), None),
        };
        tracing::info!(
            client_key = %key_pair.public_key(),
            "connecting with this client key (a sharer admits it with --allow)"
        );
        Ok((key_pair, remote))
    }
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_key(text: &str) -> Result<PublicKey, String> {
    text.parse().map_err(|e| format!("{e}"))
}

fn parse_seed_arg(text: &str) -> Result<[u8; 32], String> {
    parse_seed(text).map_err(|e| e.to_string())
}
