//! The connecting side (hyperdht's `connect.js`): find the sharer's announcement, send the
//! handshake through a DHT node that holds it, and open the encrypted stream; and the local TCP
//! listener that does this for every connection a local program makes.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use peeroxide_dht::crypto::hash;
use peeroxide_dht::hyperdht_messages::{
    decode_handshake_from_bytes, decode_hyper_peer_from_bytes, MODE_FROM_CLIENT, MODE_REPLY,
    PEER_HANDSHAKE,
};
use peeroxide_dht::messages::Ipv4Peer;
use peeroxide_dht::noise_wrap::NoiseWrap;
use peeroxide_dht::rpc::UserRequestParams;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Mutex};
use tracing::{debug, info, warn};

use crate::dht::{next_stream_id, to_socket_addr, DhtNode, NetworkOptions};
use crate::error::{Error, Result};
use crate::handshake::{check_remote, dial_address, message, our_payload};
use crate::identity::{KeyPair, PublicKey};
use crate::peer::{secure, PeerStream};
use crate::pipe::pipe;

/// How long finding the sharer may take. A lookup on a healthy DHT takes well under a second on
/// a LAN and one or two on the internet; past this the key is not announced anywhere we can see.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(12);

/// How long one DHT node may take to relay our handshake and bring back the answer.
const HANDSHAKE_TIMEOUT_MS: u64 = 3_000;

/// How many of the nodes holding the announcement we ask before giving up on a connection.
const HANDSHAKE_ATTEMPTS: usize = 3;

/// An encrypted connection to a sharer, opened through a DHT node.
pub struct Connector {
    node: DhtNode,
    key_pair: KeyPair,
    remote: PublicKey,
    /// DHT nodes that held the sharer's announcement last time: later connections go straight to
    /// them instead of searching again (hyperdht's relay address cache does the same).
    relays: Mutex<Vec<Ipv4Peer>>,
}

impl Connector {
    /// Joins the DHT and looks the key up once, so a wrong key fails now and not at the first
    /// connection.
    pub async fn new(
        network: &NetworkOptions,
        key_pair: KeyPair,
        remote: PublicKey,
    ) -> Result<Self> {
        let node = DhtNode::join(network).await?;
        let connector = Connector {
            node,
            key_pair,
            remote,
            relays: Mutex::new(Vec::new()),
        };
        let started = Instant::now();
        let relays = connector.lookup().await?;
        info!(
            nodes = relays.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "found the sharer's announcement"
        );
        *connector.relays.lock().await = relays;
        Ok(connector)
    }

    /// The DHT nodes that hold the announcement of `remote`.
    async fn lookup(&self) -> Result<Vec<Ipv4Peer>> {
        let target = hash(&self.remote.0);
        let replies =
            tokio::time::timeout(LOOKUP_TIMEOUT, self.node.handle().query_find_peer(target))
                .await
                .map_err(|_| Error::PeerNotFound)??;
        let mut relays: Vec<Ipv4Peer> = Vec::new();
        for reply in replies {
            let Some(value) = reply.value.as_deref() else {
                continue;
            };
            let Ok(record) = decode_hyper_peer_from_bytes(value) else {
                continue;
            };
            if record.public_key != self.remote.0 {
                continue;
            }
            if !relays.contains(&reply.from) {
                relays.push(reply.from);
            }
        }
        if relays.is_empty() {
            return Err(Error::PeerNotFound);
        }
        Ok(relays)
    }

    /// Opens one encrypted connection to the sharer.
    pub async fn open(&self) -> Result<PeerStream> {
        let relays = self.relays.lock().await.clone();
        match self.open_via(&relays).await {
            Err(Error::HandshakeFailed(why)) => {
                // The announcement may have moved (the sharer restarted, nodes churned).
                debug!(%why, "cached DHT nodes failed; searching again");
                let fresh = self.lookup().await?;
                *self.relays.lock().await = fresh.clone();
                self.open_via(&fresh).await
            }
            other => other,
        }
    }

    async fn open_via(&self, relays: &[Ipv4Peer]) -> Result<PeerStream> {
        let target = hash(&self.remote.0);
        let stream = self.node.socket().create_stream(next_stream_id())?;
        let noise_kp = peeroxide_dht::noise::Keypair {
            public_key: self.key_pair.public_key,
            secret_key: self.key_pair.secret_key,
        };
        let mut nw = NoiseWrap::new_initiator(noise_kp, self.remote.0);
        let payload = our_payload(stream.local_id(), self.node.reachable_addresses().await);
        let noise = nw
            .send(&payload)
            .map_err(|e| Error::HandshakeFailed(e.to_string()))?;
        let request = message(MODE_FROM_CLIENT, noise, None);

        let mut last_error = String::from("no DHT node holds the announcement");
        for relay in relays.iter().take(HANDSHAKE_ATTEMPTS) {
            let mut params = UserRequestParams::default();
            params.command = PEER_HANDSHAKE;
            params.target = Some(target);
            params.value = Some(request.clone());
            params.timeout_ms = Some(HANDSHAKE_TIMEOUT_MS);
            let res = match self
                .node
                .handle()
                .dht()
                .request(params, &relay.host, relay.port)
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    last_error = format!("{}:{}: {e}", relay.host, relay.port);
                    continue;
                }
            };
            let reply = match res.value.as_deref().map(decode_handshake_from_bytes) {
                Some(Ok(m)) if m.mode == MODE_REPLY && !m.noise.is_empty() => m,
                _ => {
                    last_error = format!("{}:{} gave no usable answer", relay.host, relay.port);
                    continue;
                }
            };
            let remote = nw
                .recv(&reply.noise)
                .map_err(|e| Error::HandshakeFailed(format!("bad answer: {e}")))?;
            let remote_id = check_remote(&remote).map_err(Error::Incompatible)?;
            let hs = nw
                .finalize()
                .map_err(|e| Error::HandshakeFailed(e.to_string()))?;
            // A relayed answer names the address the relaying node saw the sharer at; a direct
            // one came from the sharer itself.
            let seen_peer = reply.peer_address.unwrap_or_else(|| relay.clone());
            let seen = to_socket_addr(&seen_peer)
                .ok_or_else(|| Error::HandshakeFailed("the peer's address is invalid".into()))?;
            let our_public: Option<Ipv4Addr> = self
                .node
                .handle()
                .remote_address()
                .await
                .ok()
                .flatten()
                .and_then(|p| p.host.parse().ok());
            let our_local: Vec<Ipv4Addr> = self
                .node
                .reachable_addresses()
                .await
                .iter()
                .filter_map(|p| p.host.parse().ok())
                .collect();
            let addr = dial_address(seen, &remote.addresses4, our_public, &our_local);
            debug!(%addr, remote_stream = remote_id, "handshake done; opening the data path");
            stream.connect(remote_id, addr)?;
            return secure(true, stream, &hs, &format!("to {addr}")).await;
        }
        stream.destroy();
        Err(Error::HandshakeFailed(last_error))
    }

    /// Stops the DHT node.
    pub async fn close(self) {
        self.node.destroy().await;
    }
}

/// What to connect to and where to listen.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// The DHT to search.
    pub network: NetworkOptions,
    /// Our identity towards the sharer (a fresh one is fine; the sharer does not check it).
    pub key_pair: KeyPair,
    /// The sharer's key.
    pub remote: PublicKey,
    /// Where local programs connect; port 0 picks a free port.
    pub listen: SocketAddr,
}

/// A running connect: a local TCP listener whose every connection reaches the sharer's service.
pub struct Connect {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Connect {
    /// Binds the listener, finds the sharer, and starts forwarding.
    pub async fn start(opts: ConnectOptions) -> Result<Connect> {
        // Bind first: a busy port is the user's most likely mistake and costs nothing to check.
        let listener = TcpListener::bind(opts.listen)
            .await
            .map_err(|source| Error::Bind {
                addr: opts.listen.to_string(),
                source,
            })?;
        let local_addr = listener.local_addr()?;
        let connector = Arc::new(Connector::new(&opts.network, opts.key_pair, opts.remote).await?);
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, connector, stop_rx));
        Ok(Connect {
            local_addr,
            stop,
            task,
        })
    }

    /// Where local programs connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops listening and leaves the DHT.
    pub async fn close(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    connector: Arc<Connector>,
    mut stop: watch::Receiver<bool>,
) {
    let mut n = 0u64;
    loop {
        let (tcp, from) = tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "accepting a local connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        n += 1;
        let connector = Arc::clone(&connector);
        tokio::spawn(forward(n, tcp, from, connector));
    }
    drop(listener);
    if let Ok(connector) = Arc::try_unwrap(connector) {
        connector.close().await;
    }
}

async fn forward(n: u64, tcp: TcpStream, from: SocketAddr, connector: Arc<Connector>) {
    let started = Instant::now();
    let peer = match connector.open().await {
        Ok(p) => p,
        Err(e) => {
            warn!(connection = n, %from, error = %e, "could not reach the sharer; closed the local connection");
            return;
        }
    };
    info!(connection = n, %from, open_ms = started.elapsed().as_millis() as u64, "connected to the sharer");
    match pipe(tcp, peer).await {
        Ok(t) => info!(
            connection = n,
            sent = t.to_peer,
            received = t.from_peer,
            "connection closed"
        ),
        Err(e) => info!(connection = n, error = %e, "connection ended with an error"),
    }
}
