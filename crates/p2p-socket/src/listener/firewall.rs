//! The share's allow list at the handshake (hyperdht's server `firewall(remotePublicKey)`):
//! a client whose key is not on it gets a refusal before we take a connection slot, offer a
//! punch, meet it at a relay or touch the local service.
//!
//! Node's server answers a firewalled handshake with nothing, and its client then waits for
//! every DHT node it asked to time out before it reports "could not connect". We answer with
//! the handshake's error field set instead (`ERROR_ABORTED`, what Node's server sends a client
//! it cannot serve), which every hyperdht client reads at once: Node's as "Server returned an
//! error", ours as [`Error::Refused`](crate::Error::Refused). The refusal is a Noise message
//! to the client's own key, so only that client can read it, and it is no larger than the
//! handshake that asked.

use std::time::{Duration, Instant};

use peeroxide_dht::crypto::NS_PEER_HANDSHAKE;
use peeroxide_dht::hyperdht_messages::{encode_noise_payload_to_bytes, ERROR_ABORTED};
use peeroxide_dht::noise::HandshakeIK;
use tracing::{debug, warn};

use super::Server;
use crate::events::{Event, Events};
use crate::handshake::our_payload;
use crate::identity::PublicKey;
use crate::nat::Firewall;

/// Refusals logged as warnings per [`LOG_WINDOW`]; past that a flood of refused handshakes is
/// summed up in one line per window instead of filling the log.
const LOGGED_PER_WINDOW: u32 = 20;
const LOG_WINDOW: Duration = Duration::from_secs(60);

/// What the allow list decided about a handshake.
pub(super) enum Verdict {
    /// No allow list, or the client's key is on it.
    Admit,
    /// Not on the list: send this reply (the handshake's answer with an error).
    Refuse(Vec<u8>),
    /// The handshake cannot be read at all.
    Ignore,
}

/// How many refusals were logged in the current window, to keep a flood out of the log.
/// The refusals it logs are also said in `events`, as [`Event::PeerRefused`].
pub(super) struct RefusalLog {
    window_start: Instant,
    logged: u32,
    quiet: u64,
    events: Option<Events>,
}

impl RefusalLog {
    pub(super) fn new(events: Option<Events>) -> Self {
        Self {
            window_start: Instant::now(),
            logged: 0,
            quiet: 0,
            events,
        }
    }

    fn record(&mut self, client: &PublicKey) {
        let now = Instant::now();
        if now.duration_since(self.window_start) >= LOG_WINDOW {
            if self.quiet > 0 {
                warn!(
                    count = self.quiet,
                    "refused {} more connections from keys not on the allow list in the last minute",
                    self.quiet
                );
            }
            *self = Self::new(self.events.take());
        }
        if self.logged < LOGGED_PER_WINDOW {
            self.logged += 1;
            warn!(
                client = %client,
                "refused a connection: this client key is not on the allow list; add it with --allow if it should get in"
            );
            if let Some(events) = &self.events {
                events.emit(Event::PeerRefused { key: *client });
            }
        } else {
            self.quiet += 1;
            debug!(client = %client, "refused a connection (not on the allow list)");
        }
    }
}

impl Server {
    /// Checks the client of this handshake against the allow list. Reading the client's key
    /// takes the first half of the Noise handshake; an admitted client's handshake is then
    /// answered as usual, from the start.
    pub(super) fn check_allowed(&mut self, noise: &[u8]) -> Verdict {
        let Some(allow) = &self.allow else {
            return Verdict::Admit;
        };
        let mut handshake =
            HandshakeIK::new_responder(self.key_pair.to_noise(), &*NS_PEER_HANDSHAKE);
        if handshake.recv(noise).is_err() {
            return Verdict::Ignore;
        }
        let Some(client) = handshake.remote_static_key().copied().map(PublicKey::from) else {
            return Verdict::Ignore;
        };
        if allow.admits(&client) {
            debug!(client = %client, "client key is on the allow list");
            return Verdict::Admit;
        }
        self.refusals.record(&client);
        let mut refusal = our_payload(0, Vec::new(), Firewall::Unknown, None);
        refusal.error = ERROR_ABORTED;
        refusal.udx = None;
        refusal.secret_stream = None;
        match encode_noise_payload_to_bytes(&refusal)
            .ok()
            .and_then(|payload| handshake.send(&payload).ok())
        {
            Some(noise) => Verdict::Refuse(noise),
            None => Verdict::Ignore,
        }
    }
}
