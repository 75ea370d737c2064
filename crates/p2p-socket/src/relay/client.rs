//! Using a relay (blind-relay's `Client`, and what hyperdht's `relayConnection` does with it):
//! one encrypted connection per relay, opened when first needed and shared by every relayed
//! connection after it, and pairings on it.
//!
//! A pairing gives a UDX stream on the socket of our connection to the relay, aimed at the
//! stream the relay made for us there; the relay passes its packets on to the other peer. The
//! secret stream of the relayed connection runs over it end to end, with the keys of the
//! handshake the two peers made through the DHT: the relay only ever sees ciphertext.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, Mutex as AsyncMutex};
use tracing::{debug, info};
use udx::UdxStream;

use super::channel::{self, Channel, Message};
use super::wire::{Pair, Token};
use crate::connect::Connector;
use crate::dht::{next_stream_id, NetworkOptions};
use crate::error::{Error, Result};
use crate::identity::{KeyPair, PublicKey};
use crate::lock::lock;

/// A fresh relay token (hyperdht's `relay.token()`: 32 random bytes).
pub(crate) fn token() -> Token {
    rand::random()
}

/// Relays we have connections to, by key.
pub(crate) struct RelayClients {
    network: NetworkOptions,
    sessions: AsyncMutex<HashMap<[u8; 32], Arc<Session>>>,
}

type Waiters = Mutex<HashMap<(Token, bool), oneshot::Sender<u64>>>;

/// Our connection to one relay.
struct Session {
    channel: Channel,
    /// Where the relay's streams for us are: our end of the connection, and the relay's.
    socket: udx::UdxSocket,
    relay_addr: SocketAddr,
    waiting: Arc<Waiters>,
    /// Keeps the connection's DHT node (and so its socket) running; stopped with the session.
    connector: Option<Connector>,
}

impl Drop for Session {
    fn drop(&mut self) {
        if let (Some(connector), Ok(rt)) =
            (self.connector.take(), tokio::runtime::Handle::try_current())
        {
            rt.spawn(connector.close());
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

impl Drop for Lease {
    fn drop(&mut self) {
        self.channel.unpair(&self.token);
    }
}

impl RelayClients {
    pub(crate) fn new(network: &NetworkOptions) -> Self {
        RelayClients {
            network: NetworkOptions {
                // We dial the relay, never the other way round: no need to find out first
                // whether we could be dialled (which takes a while behind a NAT).
                firewalled: true,
                ..network.clone()
            },
            sessions: AsyncMutex::new(HashMap::new()),
        }
    }

    /// Pairs with whoever pairs through `relay` with the same `token` from the other side, and
    /// waits up to `wait` for them.
    pub(crate) async fn pair(
        &self,
        relay: PublicKey,
        token: Token,
        is_initiator: bool,
        wait: Duration,
    ) -> Result<Paired> {
        let session = self.session(relay).await?;
        // Made before asking, so the relay's first packets are held for it if they come before
        // the relay's answer does.
        let stream = session.socket.create_stream(next_stream_id())?;
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
            .ok_or_else(|| {
                if session.channel.is_open() {
                    Error::RelayFailed(format!(
                        "the other peer did not come to the relay within {} s",
                        wait.as_secs()
                    ))
                } else {
                    Error::RelayFailed("the connection to the relay closed".into())
                }
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

    /// Our connection to `relay`, opened if we have none (or it ended).
    async fn session(&self, relay: PublicKey) -> Result<Arc<Session>> {
        let mut sessions = self.sessions.lock().await;
        if let Some(s) = sessions
            .get(relay.as_bytes())
            .filter(|s| s.channel.is_open())
        {
            return Ok(Arc::clone(s));
        }
        let session = Arc::new(Session::open(&self.network, relay).await?);
        sessions.insert(*relay.as_bytes(), Arc::clone(&session));
        Ok(session)
    }
}

impl Session {
    async fn open(network: &NetworkOptions, relay: PublicKey) -> Result<Session> {
        let key_pair = KeyPair::generate();
        let our_key = *key_pair.public_key().as_bytes();
        let started = std::time::Instant::now();
        let unreachable =
            |e: Error| Error::RelayFailed(format!("cannot reach the relay {relay}: {e}"));
        // A connection of its own, on a DHT node of its own: its socket then carries only the
        // relay's traffic, whatever the connection it serves does on its own sockets.
        let connector = Connector::new(network, key_pair, relay)
            .await
            .map_err(unreachable)?;
        // Boxed: opening a connection may itself come here (to the relay of a relay).
        let (stream, link, path) = Box::pin(connector.open_link()).await.map_err(unreachable)?;
        let relay_addr = link
            .peer()
            .ok_or_else(|| Error::RelayFailed("the relay connection has no address".into()))?;
        let (channel, mut messages) = channel::open(stream, our_key);
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
            connector: Some(connector),
        })
    }
}
