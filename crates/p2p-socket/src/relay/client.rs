//! Using a relay (blind-relay's `Client`, and what hyperdht's `relayConnection` does with it):
//! one encrypted connection per relay, opened when first needed and shared by every relayed
//! connection after it, and pairings on it.
//!
//! A pairing gives a UDX stream on the socket of our connection to the relay, aimed at the
//! stream the relay made for us there; the relay passes its packets on to the other peer. The
//! secret stream of the relayed connection runs over it end to end, with the keys of the
//! handshake the two peers made through the DHT: the relay only ever sees ciphertext.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, OnceCell};
use tracing::{debug, info};
use udx::UdxStream;

use super::channel::{self, Channel, Message};
use super::wire::{Pair, Token};
use crate::dht::{next_stream_id, NetworkOptions};
use crate::error::{Error, RelayFailure, Result};
use crate::identity::PublicKey;
use crate::lock::lock;
use crate::peer::{Link, Path, PeerStream};

/// How long a move from the relay to a direct path may take to complete (everything sent
/// before it acknowledged on the new path) before the relay is left anyway.
const MOVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A fresh relay token (hyperdht's `relay.token()`: 32 random bytes).
pub(crate) fn token() -> Token {
    rand::random()
}

/// An encrypted connection to a relay, as the dialer opens it.
pub(crate) struct RelayConnection {
    pub(crate) stream: PeerStream,
    pub(crate) link: Link,
    pub(crate) path: Path,
    /// The key we connected with, which names our channel at the relay.
    pub(crate) our_key: PublicKey,
    /// Lets go of what carries the connection (its DHT node); run when the session ends.
    pub(crate) close: Pin<Box<dyn Future<Output = ()> + Send>>,
}

/// Opens a connection to a relay's key on the given network. The dialer hands it in: opening a
/// connection may itself need a relay, so this module must not name the dialer.
pub(crate) type DialRelay = Arc<
    dyn Fn(
            NetworkOptions,
            PublicKey,
        ) -> Pin<Box<dyn Future<Output = Result<RelayConnection>> + Send>>
        + Send
        + Sync,
>;

/// Relays a sharer or a client uses at once. A client may name any relay in its handshake and
/// the sharer then connects there (a DHT node and a connection each), so the number is capped.
const MAX_RELAYS: usize = 8;

/// Our connection to one relay once it opened; callers wanting the same relay while it opens
/// wait on it.
type Slot = Arc<OnceCell<Arc<Session>>>;

/// Relays we have connections to, by key.
pub(crate) struct RelayClients {
    network: NetworkOptions,
    dial: DialRelay,
    sessions: Mutex<HashMap<[u8; 32], Slot>>,
}

type Waiters = Mutex<HashMap<(Token, bool), oneshot::Sender<u64>>>;

/// Our connection to one relay.
struct Session {
    channel: Channel,
    /// Where the relay's streams for us are: our end of the connection, and the relay's.
    socket: udx::UdxSocket,
    relay_addr: SocketAddr,
    waiting: Arc<Waiters>,
    /// Keeps the connection's DHT node (and so its socket) running; run with the session's end.
    /// (In a mutex only to be shared between threads: it is taken once, on drop.)
    close: Mutex<Option<Pin<Box<dyn Future<Output = ()> + Send>>>>,
}

impl Drop for Session {
    fn drop(&mut self) {
        let close = lock(&self.close).take();
        if let (Some(close), Ok(rt)) = (close, tokio::runtime::Handle::try_current()) {
            rt.spawn(close);
        }
    }
}

/// A pairing in place: the relay has a stream for us, `relay_id`, at `relay_addr`, and passes
/// what reaches it on to the other peer.
pub(crate) struct Paired {
    /// Ours, on the socket of the relay connection, not connected yet: whoever sends first
    /// connects it to the relay's stream, the other side waits for the relay's first packet.
    pub(crate) stream: UdxStream,
    pub(crate) relay_id: u32,
    pub(crate) relay_addr: SocketAddr,
    pub(crate) lease: Lease,
}

/// Keeps a pairing at the relay: dropping it unpairs, which makes the relay let go of the pair
/// (or of the waiting request).
pub(crate) struct Lease {
    channel: Channel,
    token: Token,
}

impl Lease {
    /// Keeps the pairing until the relayed connection's stream is over.
    pub(crate) fn keep_while(self, stream: &udx::StreamObserver) {
        let done = stream.done();
        tokio::spawn(async move {
            done.await;
            drop(self);
        });
    }
}

impl Lease {
    /// hyperdht's end of a move to the direct path, on either side of it: wait until
    /// everything sent before the move is acknowledged there (at most [`MOVE_TIMEOUT`]: the
    /// peer may have left the relay already), send the empty message that tells the peer the
    /// path carries traffic (udx's `trySend`; a hyperdht peer closes its relay connection on
    /// it). The pairing stays while the stream lives: libudx resends a packet lost before the
    /// peer moved to the relay, for ever, and the moved stream hears it there (udx's
    /// `Stream::hears`); a hyperdht peer ends the pairing itself once its own move completes.
    /// Says whether the move completed in time.
    pub(crate) async fn confirm_move(self, moved: &udx::StreamObserver) -> bool {
        let completed = tokio::time::timeout(MOVE_TIMEOUT, moved.remote_changed()).await;
        moved.send_message(&[]);
        self.keep_while(moved);
        matches!(completed, Ok(Ok(())))
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.channel.unpair(&self.token);
    }
}

impl RelayClients {
    pub(crate) fn new(network: &NetworkOptions, dial: DialRelay) -> Self {
        RelayClients {
            network: NetworkOptions {
                // We dial the relay, never the other way round: no need to find out first
                // whether we could be dialled (which takes a while behind a NAT).
                firewalled: true,
                ..network.clone()
            },
            dial,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// Pairs with whoever pairs through `relay` with the same `token` from the other side, and
    /// waits up to `wait` for them. `stream_id` is the id of our stream for the connection
    /// (`None`: a fresh one); hyperdht pairs the connection's own raw stream, whose id its
    /// peer uses again when it moves the connection to a punched path.
    pub(crate) async fn pair(
        &self,
        relay: PublicKey,
        token: Token,
        is_initiator: bool,
        wait: Duration,
        stream_id: Option<u32>,
    ) -> Result<Paired> {
        let session = self.session(relay).await?;
        // Made before asking, so the relay's first packets are held for it if they come before
        // the relay's answer does.
        let stream = session
            .socket
            .create_stream(stream_id.unwrap_or_else(next_stream_id))?;
        let (tx, rx) = oneshot::channel();
        lock(&session.waiting).insert((token, is_initiator), tx);
        let lease = Lease {
            channel: session.channel.clone(),
            token,
        };
        session.channel.pair(&Pair {
            is_initiator,
            token,
            id: u64::from(stream.local_id()),
            seq: 0,
        });
        let answer = tokio::select! {
            a = rx => a.ok(),
            () = tokio::time::sleep(wait) => None,
            () = session.channel.ended() => None,
        };
        lock(&session.waiting).remove(&(token, is_initiator));
        let relay_id = answer
            .and_then(|id| u32::try_from(id).ok())
            .ok_or_else(|| Error::RelayFailed {
                relay,
                failure: if session.channel.is_open() {
                    RelayFailure::PeerDidNotCome { waited: wait }
                } else {
                    RelayFailure::Closed
                },
                source: None,
            })?;
        Ok(Paired {
            stream,
            relay_id,
            relay_addr: session.relay_addr,
            lease,
        })
    }

    /// Starts connecting to `relay` in the background, if we are not connected yet: for a
    /// connection that may need it soon.
    pub(crate) fn prepare(self: &Arc<Self>, relay: PublicKey) {
        let clients = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(e) = clients.session(relay).await {
                debug!(error = %e, "could not connect to the relay ahead of time");
            }
        });
    }

    /// Our connection to `relay`, opened if we have none (or it ended). Only the map is
    /// locked, briefly: opening (a DHT join and lookup, seconds) waits on the relay's own slot,
    /// so connections through other relays go on meanwhile.
    async fn session(&self, relay: PublicKey) -> Result<Arc<Session>> {
        let slot = {
            let mut sessions = lock(&self.sessions);
            // Closed sessions go, with their DHT node: a peer naming relays cannot pile them up.
            sessions.retain(|_, slot| slot.get().is_none_or(|s| s.channel.is_open()));
            match sessions.get(relay.as_bytes()) {
                Some(slot) => Arc::clone(slot),
                None if sessions.len() >= MAX_RELAYS => {
                    return Err(Error::RelayFailed {
                        relay,
                        failure: RelayFailure::TooManyRelays { max: MAX_RELAYS },
                        source: None,
                    });
                }
                None => Arc::clone(sessions.entry(*relay.as_bytes()).or_default()),
            }
        };
        let opened = slot
            .get_or_try_init(|| async {
                Session::open(&self.dial, &self.network, relay)
                    .await
                    .map(Arc::new)
            })
            .await
            .cloned();
        if opened.is_err() {
            // A slot that failed to open must not hold a place under the cap.
            let mut sessions = lock(&self.sessions);
            if sessions
                .get(relay.as_bytes())
                .is_some_and(|s| Arc::ptr_eq(s, &slot) && s.get().is_none())
            {
                sessions.remove(relay.as_bytes());
            }
        }
        opened
    }

    /// How many relays we hold a connection (or an attempt) to.
    #[cfg(test)]
    fn relays(&self) -> usize {
        lock(&self.sessions).len()
    }
}

impl Session {
    async fn open(dial: &DialRelay, network: &NetworkOptions, relay: PublicKey) -> Result<Session> {
        let started = std::time::Instant::now();
        let RelayConnection {
            stream,
            link,
            path,
            our_key,
            close,
        } = dial(network.clone(), relay)
            .await
            .map_err(|e| Error::RelayFailed {
                relay,
                failure: RelayFailure::Unreachable,
                source: Some(Box::new(e)),
            })?;
        let relay_addr = link.peer().ok_or(Error::RelayFailed {
            relay,
            failure: RelayFailure::NoAddress,
            source: None,
        })?;
        let (channel, mut messages) = channel::open(stream, *our_key.as_bytes());
        let waiting: Arc<Waiters> = Arc::default();
        let dispatch = Arc::clone(&waiting);
        tokio::spawn(async move {
            while let Some(message) = messages.recv().await {
                if let Message::Pair(p) = message {
                    if let Some(tx) = lock(&dispatch).remove(&(p.token, p.is_initiator)) {
                        let _ = tx.send(p.id);
                    }
                }
            }
        });
        info!(
            %relay,
            %path,
            at = %relay_addr,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "connected to the relay"
        );
        debug!(socket = ?link.socket.local_addr().ok(), "relay connection's socket");
        Ok(Session {
            channel,
            socket: link.socket,
            relay_addr,
            waiting,
            close: Mutex::new(Some(close)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: usize) -> PublicKey {
        PublicKey::from([u8::try_from(i).unwrap(); 32])
    }

    /// A client may name any relay, and the sharer then connects there: the relays in use are
    /// capped, the cap is applied at once (not behind the lock of a relay being opened, which
    /// takes a DHT join and lookup), and failed attempts do not hold places.
    #[tokio::test]
    async fn relays_in_use_are_capped_and_opened_outside_the_lock() {
        // Relays that never answer: every opening hangs.
        let hang: DialRelay = Arc::new(|_, _| Box::pin(std::future::pending()));
        let clients = Arc::new(RelayClients::new(&NetworkOptions::default(), hang));
        for i in 0..MAX_RELAYS {
            clients.prepare(key(i));
        }
        for _ in 0..200 {
            if clients.relays() == MAX_RELAYS {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(clients.relays(), MAX_RELAYS);
        let past_the_cap =
            tokio::time::timeout(Duration::from_secs(1), clients.session(key(MAX_RELAYS)))
                .await
                .expect("answered at once, not after the openings in progress");
        assert!(matches!(past_the_cap, Err(Error::RelayFailed { .. })));

        // Relays that cannot be reached leave nothing behind.
        let fail: DialRelay = Arc::new(|_, _| {
            Box::pin(async {
                Err(Error::PeerNotFound {
                    key: key(0),
                    nodes: 0,
                })
            })
        });
        let clients = RelayClients::new(&NetworkOptions::default(), fail);
        for i in 0..3 * MAX_RELAYS {
            assert!(clients.session(key(i)).await.is_err());
        }
        assert_eq!(clients.relays(), 0);
    }
}
