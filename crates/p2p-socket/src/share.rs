//! The sharing side (hyperdht's `server.js`): announce `hash(publicKey)` on the DHT, answer the
//! handshakes that DHT nodes forward to us, and pipe every connection that opens to the local
//! service.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use peeroxide_dht::crypto::hash;
use peeroxide_dht::hyperdht::{HyperDhtHandle, ServerEvent};
use peeroxide_dht::hyperdht_messages::{
    HandshakeMessage, FIREWALL_OPEN, MODE_FROM_CLIENT, MODE_FROM_SERVER, MODE_REPLY,
};
use peeroxide_dht::messages::Ipv4Peer;
use peeroxide_dht::noise_wrap::{NoiseWrap, NoiseWrapResult};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};
use udx::UdxStream;

use crate::dht::{next_stream_id, to_socket_addr, DhtNode, NetworkOptions};
use crate::error::{Error, Result};
use crate::handshake::{check_remote, dial_address, message, our_payload};
use crate::identity::{KeyPair, PublicKey};
use crate::peer::secure;
use crate::pipe::pipe;

/// DHT records expire (hyperdht keeps announcements for 20 minutes), and the nodes closest to
/// our key change as nodes come and go; announcing again well inside that keeps us findable.
const REANNOUNCE_EVERY: Duration = Duration::from_secs(4 * 60);

/// A client that gets no answer retries the same handshake, and a handshake can reach us through
/// more than one DHT node. Answering a repeat with the first reply (instead of starting a second
/// connection) is what Node's server does too; this is how long we remember one.
const HANDSHAKE_MEMORY: Duration = Duration::from_secs(30);

/// How long to wait for the local service to accept a connection.
const SERVICE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What to share and how.
#[derive(Debug, Clone)]
pub struct ShareOptions {
    /// The DHT to announce on.
    pub network: NetworkOptions,
    /// The identity peers connect to; its public key is what the user hands out.
    pub key_pair: KeyPair,
    /// Host of the local service every connection is forwarded to.
    pub service_host: String,
    /// Port of the local service.
    pub service_port: u16,
}

/// A running share. Dropping it stops serving; [`Share::close`] also withdraws the announcement.
pub struct Share {
    public_key: PublicKey,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    stats: Arc<Stats>,
}

#[derive(Debug, Default)]
struct Stats {
    connections: AtomicU64,
}

impl Share {
    /// Joins the DHT, announces the key and starts serving. Returns once the key is findable.
    pub async fn start(opts: ShareOptions) -> Result<Share> {
        let mut node = DhtNode::join(&opts.network).await?;
        let events = node
            .take_events()
            .ok_or_else(|| Error::Dht("the DHT node already has a server".into()))?;
        let dht_kp = peeroxide_dht::hyperdht::KeyPair {
            public_key: opts.key_pair.public_key,
            secret_key: opts.key_pair.secret_key,
        };
        let target = hash(&dht_kp.public_key);
        node.handle().register_server(&target);
        let started = Instant::now();
        announce(node.handle(), target, &dht_kp).await?;
        info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "announced on the DHT"
        );

        let (stop, stop_rx) = watch::channel(false);
        let stats = Arc::new(Stats::default());
        let server = Server {
            node,
            key_pair: dht_kp,
            target,
            service: (opts.service_host, opts.service_port),
            recent: HashMap::new(),
            stats: Arc::clone(&stats),
        };
        let task = tokio::spawn(server.run(events, stop_rx));
        Ok(Share {
            public_key: PublicKey(opts.key_pair.public_key),
            stop,
            task,
            stats,
        })
    }

    /// The key to hand to peers.
    pub fn public_key(&self) -> PublicKey {
        self.public_key
    }

    /// How many peer connections were accepted so far.
    pub fn connections(&self) -> u64 {
        self.stats.connections.load(Ordering::Relaxed)
    }

    /// Withdraws the announcement and stops. Connections in progress are cut.
    pub async fn close(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn announce(
    dht: &HyperDhtHandle,
    target: [u8; 32],
    kp: &peeroxide_dht::hyperdht::KeyPair,
) -> Result<()> {
    // The nodes that stored our last announcement forward handshakes to us; listing them in
    // the record lets a client skip part of the lookup.
    let relays: Vec<Ipv4Peer> = dht.current_relay_addresses();
    let result = dht.announce(target, kp, &relays).await?;
    if result.closest_nodes.is_empty() {
        return Err(Error::Dht(
            "no DHT node accepted the announcement; the network may be unreachable".into(),
        ));
    }
    debug!(nodes = result.closest_nodes.len(), "announcement stored");
    Ok(())
}

struct Server {
    node: DhtNode,
    key_pair: peeroxide_dht::hyperdht::KeyPair,
    target: [u8; 32],
    service: (String, u16),
    recent: HashMap<Vec<u8>, (Instant, Vec<u8>)>,
    stats: Arc<Stats>,
}

impl Server {
    async fn run(
        mut self,
        mut events: mpsc::UnboundedReceiver<ServerEvent>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut reannounce = tokio::time::interval(REANNOUNCE_EVERY);
        reannounce.tick().await;
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                event = events.recv() => match event {
                    Some(event) => self.on_event(event).await,
                    None => {
                        warn!("the DHT node stopped; no more connections can arrive");
                        break;
                    }
                },
                _ = reannounce.tick() => {
                    if let Err(e) = announce(self.node.handle(), self.target, &self.key_pair).await {
                        warn!(error = %e, "re-announcing failed; will retry");
                    }
                }
            }
        }
        let handle = self.node.handle().clone();
        match tokio::time::timeout(
            Duration::from_secs(5),
            handle.unannounce(self.target, &self.key_pair),
        )
        .await
        {
            Ok(Ok(())) => info!("announcement withdrawn"),
            Ok(Err(e)) => {
                warn!(error = %e, "could not withdraw the announcement; it expires by itself")
            }
            Err(_) => warn!("withdrawing the announcement timed out; it expires by itself"),
        }
        handle.unregister_server(&self.target);
        self.node.destroy().await;
    }

    async fn on_event(&mut self, event: ServerEvent) {
        match event {
            ServerEvent::PeerHandshake {
                msg,
                from,
                peer_address,
                reply_tx,
                ..
            } => {
                let reply = self.on_handshake(msg, from, peer_address).await;
                let _ = reply_tx.send(reply);
            }
            ServerEvent::PeerHolepunch { reply_tx, .. } => {
                // We never offer a holepunch in our handshake, so a peer has nothing to punch.
                let _ = reply_tx.send(None);
            }
            _ => {}
        }
    }

    async fn on_handshake(
        &mut self,
        msg: HandshakeMessage,
        from: Ipv4Peer,
        peer_address: Option<Ipv4Peer>,
    ) -> Option<Vec<u8>> {
        let now = Instant::now();
        self.recent
            .retain(|_, (at, _)| now.duration_since(*at) < HANDSHAKE_MEMORY);
        if let Some((_, reply)) = self.recent.get(&msg.noise) {
            debug!("repeated handshake; answering as before");
            return Some(reply.clone());
        }

        let noise_kp = peeroxide_dht::noise::Keypair {
            public_key: self.key_pair.public_key,
            secret_key: self.key_pair.secret_key,
        };
        let mut nw = NoiseWrap::new_responder(noise_kp);
        let remote = match nw.recv(&msg.noise) {
            Ok(p) => p,
            Err(e) => {
                debug!(error = %e, "ignoring a handshake we cannot decrypt");
                return None;
            }
        };
        let remote_id = match check_remote(&remote) {
            Ok(id) => id,
            Err(why) => {
                warn!(%why, "refusing a connection");
                return None;
            }
        };
        let client_seen = peer_address.clone().unwrap_or_else(|| from.clone());
        let stream = match self.node.socket().create_stream(next_stream_id()) {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cannot open a stream for a new connection");
                return None;
            }
        };
        let payload = our_payload(stream.local_id(), self.node.reachable_addresses().await);
        let (noise, hs) = match nw.send(&payload).and_then(|m| Ok((m, nw.finalize()?))) {
            Ok(v) => v,
            Err(e) => {
                warn!(error = %e, "handshake failed");
                stream.destroy();
                return None;
            }
        };
        // Answer the way the request came: straight back to a client that asked us directly,
        // or back through the DHT node that forwarded it (router.js's FROM_SERVER).
        let reply = if msg.mode == MODE_FROM_CLIENT {
            message(MODE_REPLY, noise, None)
        } else {
            message(MODE_FROM_SERVER, noise, peer_address)
        };
        self.recent.insert(msg.noise, (now, reply.clone()));

        // A client that says it is reachable waits for us to send first (server.js does the
        // same); otherwise it dials us and the first packet tells us where it is.
        if remote.firewall == FIREWALL_OPEN {
            let seen = to_socket_addr(&client_seen);
            let our_public = self
                .node
                .handle()
                .remote_address()
                .await
                .ok()
                .flatten()
                .and_then(|p| p.host.parse().ok());
            if let Some(seen) = seen {
                let addr = dial_address(seen, &remote.addresses4, our_public, &local_ips());
                if let Err(e) = stream.connect(remote_id, addr) {
                    warn!(error = %e, "cannot start a stream");
                    return None;
                }
            }
        } else {
            stream.connect_on_first_packet(remote_id);
        }

        let n = self.stats.connections.fetch_add(1, Ordering::Relaxed) + 1;
        let service = self.service.clone();
        let peer_key = PublicKey(hs.remote_public_key).to_string();
        info!(connection = n, peer = &peer_key[..12], from = %format!("{}:{}", client_seen.host, client_seen.port), "peer connecting");
        tokio::spawn(serve_connection(n, stream, hs, service));
        Some(reply)
    }
}

fn local_ips() -> Vec<std::net::Ipv4Addr> {
    if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|i| match i.ip() {
            std::net::IpAddr::V4(ip) => Some(ip),
            std::net::IpAddr::V6(_) => None,
        })
        .collect()
}

async fn serve_connection(n: u64, stream: UdxStream, hs: NoiseWrapResult, service: (String, u16)) {
    let peer = match secure(false, stream, &hs, "from the peer").await {
        Ok(p) => p,
        Err(e) => {
            warn!(connection = n, error = %e, "connection did not open");
            return;
        }
    };
    let (host, port) = service;
    let tcp = match tokio::time::timeout(
        SERVICE_CONNECT_TIMEOUT,
        TcpStream::connect((host.as_str(), port)),
    )
    .await
    {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            warn!(connection = n, "the shared service {host}:{port} refused the connection ({e}); closed this peer connection, still sharing");
            return;
        }
        Err(_) => {
            warn!(connection = n, "the shared service {host}:{port} did not accept within {}s; closed this peer connection, still sharing", SERVICE_CONNECT_TIMEOUT.as_secs());
            return;
        }
    };
    let local: Option<SocketAddr> = tcp.local_addr().ok();
    debug!(connection = n, ?local, "connected to the shared service");
    match pipe(tcp, peer).await {
        Ok(t) => info!(
            connection = n,
            to_service = t.from_peer,
            from_service = t.to_peer,
            "connection closed"
        ),
        Err(e) => info!(connection = n, error = %e, "connection ended with an error"),
    }
}
