//! Which clients a share lets in, decided by the public key each proved in its handshake.

use std::fmt;
use std::sync::Arc;

use crate::identity::PublicKey;

/// A rule on the client's public key: a share answers only the handshakes of clients it
/// admits; the others get no answer (as hyperdht's server `firewall` does) and never reach the
/// local service.
///
/// ```
/// use p2p_socket::{Admit, KeyPair};
///
/// let ours = KeyPair::generate().public_key();
/// let only = Admit::only(ours);
/// assert!(only.admits(&ours));
/// assert!(!only.admits(&KeyPair::generate().public_key()));
/// ```
#[derive(Clone)]
pub struct Admit {
    rule: Arc<dyn Fn(&PublicKey) -> bool + Send + Sync>,
    /// Says in `Debug` and logs what the rule is.
    what: &'static str,
}

impl Admit {
    /// Admits the clients for which `rule` returns true.
    pub fn new(rule: impl Fn(&PublicKey) -> bool + Send + Sync + 'static) -> Self {
        Self {
            rule: Arc::new(rule),
            what: "custom rule",
        }
    }

    /// Admits only a client that holds this key pair: holesail's secure mode, where client
    /// and share derive the same key pair from the key string.
    pub fn only(key: PublicKey) -> Self {
        Self {
            rule: Arc::new(move |client| *client == key),
            what: "only one key",
        }
    }

    /// Whether this client may connect.
    pub fn admits(&self, client: &PublicKey) -> bool {
        (self.rule)(client)
    }
}

impl fmt::Debug for Admit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Admit({})", self.what)
    }
}
