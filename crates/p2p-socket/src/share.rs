//! The sharing side (hyperdht's `server.js`): announce `hash(publicKey)` on the DHT, answer the
//! handshakes that DHT nodes forward to us, and pipe every connection that opens to the local
//! service (or, for a relay, hand it to the relay).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use peeroxide_dht::crypto::hash;
use peeroxide_dht::hyperdht::{HyperDhtHandle, ServerEvent};
use peeroxide_dht::hyperdht_messages::{
    decode_handshake_from_bytes, HandshakeMessage, HolepunchInfo, HolepunchMessage, NoisePayload,
    RelayInfo, RelayThroughInfo, FIREWALL_OPEN, MODE_FROM_CLIENT, MODE_FROM_SERVER, MODE_REPLY,
    PEER_HANDSHAKE,
};
use peeroxide_dht::messages::{Command, Ipv4Peer};
use peeroxide_dht::noise_wrap::{NoiseWrap, NoiseWrapResult};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};
use udx::UdxStream;

use crate::addr::to_socket_addr;
use crate::dht::{next_stream_id, DhtNode, KnownNodes, NetworkOptions};
use crate::error::{Error, Result};
use crate::handshake::{check_remote, dial_address, message, our_payload};
use crate::holepunch::{ServerPunch, PUNCH_TIME};
use crate::identity::{KeyPair, PublicKey};
use crate::nat::Firewall;
use crate::peer::{secure, Acceptor, Link, Path, PeerStream};
use crate::pipe::pipe;
use crate::punch_socket::{PunchSocket, RpcRequest};
use crate::relay::client::{self as relay_client, Lease, RelayClients};
use crate::relay::wire::Token;

/// DHT records expire (hyperdht keeps announcements for 20 minutes), and the nodes closest to
/// our key change as nodes come and go; announcing again well inside that keeps us findable.
const REANNOUNCE_EVERY: Duration = Duration::from_secs(4 * 60);

/// A client that gets no answer retries the same handshake, and a handshake can reach us through
/// more than one DHT node. Answering a repeat with the first reply (instead of starting a second
/// connection) is what Node's server does too; this is how long we remember one.
const HANDSHAKE_MEMORY: Duration = Duration::from_secs(30);

/// How long to wait for the local service to accept a connection.
const SERVICE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How often we ping the DHT nodes that hold our announcement. Behind a NAT this keeps the
/// mappings they forward handshakes through open (UDP mappings live 30 s or more), and their
/// answers say where they see us, which clients need for punching (hyperdht pings every 3 s).
const RELAY_KEEPALIVE_EVERY: Duration = Duration::from_secs(5);
const RELAY_PING_TIMEOUT: Duration = Duration::from_secs(2);

/// How often finished punch sessions and unused punched sockets are let go.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Hole punches in progress at once. Each holds a socket (a punch through a randomising NAT
/// 256 of them for a while); past this, clients get no offer and must reach us directly.
const MAX_SESSIONS: usize = 64;

/// How long a client that got a holepunch offer has to start punching (hyperdht's
/// `HANDSHAKE_INITIAL_TIMEOUT`), and how long an accepted punch may take.
const FIRST_PACKET_TIMEOUT: Duration = Duration::from_secs(10);
const PUNCHED_PACKET_TIMEOUT: Duration = Duration::from_secs(PUNCH_TIME.as_secs() + 5);

/// How long a connection offered a relay may take to come through it: a client goes to the
/// relay only after its punch failed (at once between two randomising NATs, after the whole
/// punch otherwise), then connects to the relay if it has no connection there yet.
const RELAYED_PACKET_TIMEOUT: Duration = Duration::from_secs(PUNCHED_PACKET_TIMEOUT.as_secs() + 20);

/// How long a punch session answers late rounds after its handshake.
const SESSION_LIFETIME: Duration = Duration::from_secs(PUNCHED_PACKET_TIMEOUT.as_secs() + 15);

/// A punched socket with no connection on it is kept this long after the client was last heard
/// (its connects ping every 10 s), for the client's next connection to skip the punch.
const ROUTE_IDLE: Duration = Duration::from_secs(60);
/// At most this many punched sockets wait for clients' next connections.
const MAX_ROUTES: usize = 256;

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
    /// A blind relay (`p2p-socket relay`) to offer peers for when no direct path can be made
    /// between us: a peer goes through it only when punching fails. Peers may bring their own
    /// relay instead.
    pub relay: Option<PublicKey>,
}

/// What a server does with each connection once it is open and encrypted: the number of the
/// connection, the stream, what carries it, and how it travels.
pub(crate) type Handler = Arc<
    dyn Fn(u64, PeerStream, Link, Path) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync,
>;

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
        let service = (opts.service_host, opts.service_port);
        let handler: Handler = Arc::new(move |n, peer, link, path| {
            Box::pin(serve_tcp(n, peer, link, path, service.clone()))
        });
        Self::serve(&opts.network, opts.key_pair, opts.relay, handler).await
    }

    /// A server on `key_pair` whose connections go to `handler`; `relay` is offered to peers
    /// that cannot reach us otherwise.
    pub(crate) async fn serve(
        network: &NetworkOptions,
        key_pair: KeyPair,
        relay: Option<PublicKey>,
        handler: Handler,
    ) -> Result<Share> {
        let mut node = DhtNode::join(network).await?;
        let events = node
            .take_events()
            .ok_or_else(|| Error::Dht("the DHT node already has a server".into()))?;
        let dht_kp = key_pair.to_dht();
        let target = hash(&dht_kp.public_key);
        node.handle().register_server(&target);
        let started = Instant::now();
        let (closest, ()) = tokio::join!(
            announce(node.handle(), target, &dht_kp),
            node.reachability_known()
        );
        let closest = closest?;
        node.add_nodes(closest.iter().filter_map(to_socket_addr));
        info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "announced on the DHT"
        );

        let (stop, stop_rx) = watch::channel(false);
        let stats = Arc::new(Stats::default());
        let (requests_tx, requests) = mpsc::unbounded_channel();
        let (routes_tx, routes) = mpsc::unbounded_channel();
        let relays = ping_relays(node.handle()).await;
        let (relays_tx, relays) = watch::channel(relays);
        tokio::spawn(keep_announced(
            node.handle().clone(),
            target,
            dht_kp.clone(),
            node.known().clone(),
            relays_tx,
            stop_rx.clone(),
        ));
        let server = Server {
            node,
            key_pair: key_pair.clone(),
            target,
            handler,
            relay,
            relay_clients: Arc::new(RelayClients::new(network)),
            recent: HashMap::new(),
            stats: Arc::clone(&stats),
            relays,
            sessions: HashMap::new(),
            next_session: 0,
            routes: Vec::new(),
            requests_tx,
            routes_tx,
        };
        let task = tokio::spawn(server.run(events, requests, routes, stop_rx));
        Ok(Share {
            public_key: key_pair.public_key(),
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

/// Announces us and returns the DHT nodes closest to our key.
async fn announce(
    dht: &HyperDhtHandle,
    target: [u8; 32],
    kp: &peeroxide_dht::hyperdht::KeyPair,
) -> Result<Vec<Ipv4Peer>> {
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
    Ok(result.closest_nodes)
}

/// Pings the DHT nodes that stored our announcement; returns those that answered, each with
/// where it sees us (what a client needs to punch through it).
async fn ping_relays(dht: &HyperDhtHandle) -> Vec<RelayInfo> {
    let mut pings = tokio::task::JoinSet::new();
    for relay in dht.current_relay_addresses() {
        let rpc = dht.dht().clone();
        pings.spawn(async move {
            let pong =
                tokio::time::timeout(RELAY_PING_TIMEOUT, rpc.ping(&relay.host, relay.port)).await;
            (relay, pong)
        });
    }
    let mut relays = Vec::new();
    while let Some(joined) = pings.join_next().await {
        if let Ok((relay, Ok(Ok(pong)))) = joined {
            if let Some(seen) = pong.to {
                relays.push(RelayInfo {
                    relay_address: relay,
                    peer_address: seen,
                });
            }
        }
    }
    relays
}

/// Keeps us findable, in the background of the server: pings the nodes holding our
/// announcement every few seconds (behind a NAT that keeps open the mappings through which they
/// forward handshakes to us) and announces again every few minutes, or at once when none of
/// them answers any more.
async fn keep_announced(
    dht: HyperDhtHandle,
    target: [u8; 32],
    kp: peeroxide_dht::hyperdht::KeyPair,
    known: KnownNodes,
    relays: watch::Sender<Vec<RelayInfo>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut last_announce = Instant::now();
    let mut keepalive = tokio::time::interval(RELAY_KEEPALIVE_EVERY);
    keepalive.tick().await;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = keepalive.tick() => {}
        }
        let mut fresh = ping_relays(&dht).await;
        let lost = fresh.is_empty() && !relays.borrow().is_empty();
        if lost {
            warn!("none of the DHT nodes holding our announcement answers; announcing again");
        }
        if lost || last_announce.elapsed() >= REANNOUNCE_EVERY {
            last_announce = Instant::now();
            match announce(&dht, target, &kp).await {
                Ok(closest) => known.add(closest.iter().filter_map(to_socket_addr)),
                Err(e) => warn!(error = %e, "re-announcing failed; will retry"),
            }
            fresh = ping_relays(&dht).await;
        }
        let _ = relays.send(fresh);
    }
}

/// A holepunch offer made in a handshake, answering that client's rounds.
struct Session {
    punch: Arc<ServerPunch>,
    created: Instant,
}

/// Where a handshake reached us.
#[derive(Clone)]
enum Arrival {
    /// Through the DHT (relayed by a node, or sent straight to our DHT socket).
    Dht,
    /// Straight to a socket we punched earlier, from the client on the other end of it.
    Punched(PunchSocket),
}

/// What a handshake told us about the client.
struct Client<'a> {
    arrival: &'a Arrival,
    /// It sent the handshake to us itself, not through a DHT node.
    direct: bool,
    /// It says it is reachable: we send first.
    open: bool,
    /// Where it was seen.
    seen: &'a Ipv4Peer,
    payload: &'a peeroxide_dht::hyperdht_messages::NoisePayload,
    local_id: u32,
    remote_id: u32,
}

/// How a new connection's stream finds the client.
enum DataPath {
    /// Already aimed at the client.
    Connected(UdxStream, Path),
    /// Waiting for the client's first packet on the DHT socket, on any socket of the punch, or
    /// through the relay.
    Accepting {
        acceptor: Acceptor<Via>,
        punch: Option<Arc<ServerPunch>>,
        relay: Option<RelayPlan>,
    },
}

/// Which of the ways a connection may arrive brought it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Dht,
    /// The punch socket with this index.
    Punch(usize),
    Relay,
}

/// A relay this connection may come through: its key, the token both sides pair with, and
/// whether we are the side that named it (hyperdht's `isInitiator` in the pairing).
#[derive(Debug, Clone, Copy)]
struct RelayPlan {
    relay: PublicKey,
    token: Token,
    is_initiator: bool,
}

struct Server {
    node: DhtNode,
    key_pair: KeyPair,
    target: [u8; 32],
    handler: Handler,
    /// Our relay, offered to clients that cannot reach us otherwise.
    relay: Option<PublicKey>,
    relay_clients: Arc<RelayClients>,
    recent: HashMap<Vec<u8>, (Instant, Vec<u8>)>,
    stats: Arc<Stats>,
    /// The DHT nodes holding our announcement and where each sees us: what a client punches
    /// through (hyperdht's announcer `relays`).
    relays: watch::Receiver<Vec<RelayInfo>>,
    sessions: HashMap<u64, Session>,
    next_session: u64,
    /// Sockets punched for earlier connections, answering those clients' next handshakes.
    routes: Vec<PunchSocket>,
    requests_tx: mpsc::UnboundedSender<RpcRequest>,
    routes_tx: mpsc::UnboundedSender<PunchSocket>,
}

impl Server {
    async fn run(
        mut self,
        mut events: mpsc::UnboundedReceiver<ServerEvent>,
        mut requests: mpsc::UnboundedReceiver<RpcRequest>,
        mut routes: mpsc::UnboundedReceiver<PunchSocket>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        sweep.tick().await;
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
                Some(request) = requests.recv() => self.on_punch_socket_request(request).await,
                Some(route) = routes.recv() => self.keep_route(route),
                _ = sweep.tick() => self.sweep(),
            }
        }
        let handle = self.node.handle().clone();
        match tokio::time::timeout(
            Duration::from_secs(5),
            handle.unannounce(self.target, &self.key_pair.to_dht()),
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

    /// Forgets finished punch sessions and punched sockets nobody uses any more.
    fn sweep(&mut self) {
        let now = Instant::now();
        self.sessions
            .retain(|_, s| now.duration_since(s.created) < SESSION_LIFETIME);
        self.routes.retain(|socket| {
            socket.stream_count() > 0 || now.duration_since(socket.last_heard()) < ROUTE_IDLE
        });
    }

    fn keep_route(&mut self, socket: PunchSocket) {
        if self.routes.iter().any(|r| r.same(&socket)) {
            return;
        }
        if self.routes.len() >= MAX_ROUTES {
            // The one heard from longest ago goes.
            if let Some((i, _)) = self
                .routes
                .iter()
                .enumerate()
                .min_by_key(|(_, r)| r.last_heard())
            {
                self.routes.swap_remove(i);
            }
        }
        self.routes.push(socket);
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
                let reply = self
                    .on_handshake(msg, from, peer_address, Arrival::Dht)
                    .await;
                let _ = reply_tx.send(reply);
            }
            ServerEvent::PeerHolepunch {
                msg,
                from,
                peer_address,
                reply_tx,
                ..
            } => self.on_holepunch(msg, from, peer_address, reply_tx),
            _ => {}
        }
    }

    fn on_holepunch(
        &mut self,
        msg: HolepunchMessage,
        from: Ipv4Peer,
        client: Ipv4Peer,
        reply_tx: tokio::sync::oneshot::Sender<Option<Vec<u8>>>,
    ) {
        let Some(session) = self.sessions.get(&msg.id) else {
            debug!(id = msg.id, "holepunch round for no session of ours");
            let _ = reply_tx.send(None);
            return;
        };
        let Some(from) = to_socket_addr(&from) else {
            let _ = reply_tx.send(None);
            return;
        };
        // Answering may wait for our NAT sampling: not in the loop that takes handshakes.
        let punch = Arc::clone(&session.punch);
        tokio::spawn(async move {
            let reply = punch.on_round(&msg, from, &client).await;
            let _ = reply_tx.send(reply);
        });
    }

    /// A DHT request sent straight to one of our punched sockets: a client we punched with
    /// earlier opening its next connection over the same hole (hyperdht's reusable socket).
    async fn on_punch_socket_request(&mut self, req: RpcRequest) {
        if req.internal {
            if req.command == Command::Ping as u64 {
                req.reply(None);
            }
            return;
        }
        if req.command != PEER_HANDSHAKE || req.target != Some(self.target) {
            return;
        }
        let Some(msg) = req
            .value
            .as_deref()
            .and_then(|v| decode_handshake_from_bytes(v).ok())
            .filter(|m| m.mode == MODE_FROM_CLIENT)
        else {
            return;
        };
        let from = Ipv4Peer {
            host: req.from.ip().to_string(),
            port: req.from.port(),
        };
        if let Some(reply) = self
            .on_handshake(msg, from, None, Arrival::Punched(req.socket.clone()))
            .await
        {
            req.reply(Some(reply));
        }
    }

    async fn on_handshake(
        &mut self,
        msg: HandshakeMessage,
        from: Ipv4Peer,
        peer_address: Option<Ipv4Peer>,
        arrival: Arrival,
    ) -> Option<Vec<u8>> {
        let now = Instant::now();
        self.recent
            .retain(|_, (at, _)| now.duration_since(*at) < HANDSHAKE_MEMORY);
        if let Some((_, reply)) = self.recent.get(&msg.noise) {
            debug!("repeated handshake; answering as before");
            return Some(reply.clone());
        }

        let mut nw = NoiseWrap::new_responder(self.key_pair.to_noise());
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
        // Sent straight to us rather than relayed: the sender is where it says it is, and
        // expects the connection on the socket it sent to.
        let direct = peer_address.is_none();
        let client_seen = peer_address.clone().unwrap_or_else(|| from.clone());
        let local_id = next_stream_id();
        let open = self.node.is_open();
        let client_open = remote.firewall == FIREWALL_OPEN;
        // Whoever cannot be dialled gets a holepunch offer (server.js: when we have no public
        // address of our own), unless the client will be dialled by us anyway.
        let relays = self.relays.borrow().clone();
        let offer = !open && !direct && !client_open && !relays.is_empty();
        if offer && self.sessions.len() >= MAX_SESSIONS {
            warn!("too many hole punches in progress; this client can only dial us directly");
        }
        let session_id = (offer && self.sessions.len() < MAX_SESSIONS).then(|| {
            let id = self.next_session;
            self.next_session = self.next_session.wrapping_add(1);
            id
        });
        let holepunch = session_id.map(|id| HolepunchInfo {
            id,
            relays: relays.clone(),
        });
        let firewall = if open {
            Firewall::Open
        } else {
            Firewall::Unknown
        };
        // A client we wait for may need a relay to reach us.
        let relay = (!direct && !client_open)
            .then(|| self.relay_plan(&remote))
            .flatten();
        let mut payload = our_payload(
            local_id,
            self.node.reachable_addresses().await,
            firewall,
            holepunch,
        );
        payload.relay_through = relay.filter(|r| r.is_initiator).map(|r| RelayThroughInfo {
            version: 1,
            public_key: *r.relay.as_bytes(),
            token: r.token,
        });
        let (noise, hs) = match nw.send(&payload).and_then(|m| Ok((m, nw.finalize()?))) {
            Ok(v) => v,
            Err(e) => {
                warn!(error = %e, "handshake failed");
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

        let client = Client {
            arrival: &arrival,
            direct,
            open: client_open,
            seen: &client_seen,
            payload: &remote,
            local_id,
            remote_id,
        };
        let data_path = match self.data_path(&client, session_id, &hs, relay).await {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "cannot open a stream for a new connection");
                return None;
            }
        };
        self.recent.insert(msg.noise, (now, reply.clone()));

        let n = self.stats.connections.fetch_add(1, Ordering::Relaxed) + 1;
        let peer_key = PublicKey::from(hs.remote_public_key).to_string();
        info!(connection = n, peer = &peer_key[..12], from = %format!("{}:{}", client_seen.host, client_seen.port), "peer connecting");
        tokio::spawn(serve_connection(
            n,
            data_path,
            hs,
            Arc::clone(&self.handler),
            self.routes_tx.clone(),
            Arc::clone(&self.relay_clients),
        ));
        Some(reply)
    }

    /// The relay a client we wait for may come through: ours, or else the one it named
    /// (hyperdht's rule: the server's relay wins, its side is the initiator of the pairing).
    fn relay_plan(&self, remote: &NoisePayload) -> Option<RelayPlan> {
        match (self.relay, remote.relay_through.as_ref()) {
            (Some(relay), _) => Some(RelayPlan {
                relay,
                token: relay_client::token(),
                is_initiator: true,
            }),
            (None, Some(theirs)) => Some(RelayPlan {
                relay: PublicKey::from(theirs.public_key),
                token: theirs.token,
                is_initiator: false,
            }),
            (None, None) => None,
        }
    }

    /// Sets up the stream of a new connection: aimed at the client when it can be dialled or
    /// sent us the handshake itself, listening on our sockets otherwise.
    async fn data_path(
        &mut self,
        client: &Client<'_>,
        session_id: Option<u64>,
        hs: &NoiseWrapResult,
        relay: Option<RelayPlan>,
    ) -> Result<DataPath> {
        let Client {
            arrival,
            direct,
            open: client_open,
            seen: client_seen,
            payload: remote,
            local_id,
            remote_id,
        } = *client;
        let (socket, path) = match arrival {
            Arrival::Dht => (self.node.socket().clone(), Path::Direct),
            Arrival::Punched(s) => (s.udx().clone(), Path::Punched),
        };
        if direct {
            let to = to_socket_addr(client_seen)
                .ok_or_else(|| Error::HandshakeFailed("the client's address is invalid".into()))?;
            let stream = socket.create_stream(local_id)?;
            stream.connect(remote_id, to)?;
            return Ok(DataPath::Connected(stream, path));
        }
        if client_open {
            // The client waits for us to send first (server.js does the same).
            let seen = to_socket_addr(client_seen)
                .ok_or_else(|| Error::HandshakeFailed("the client's address is invalid".into()))?;
            let our_public = self.node.public_ip().await;
            let addr = dial_address(
                seen,
                &remote.addresses4,
                our_public,
                &self.node.own_ips().await,
            );
            let stream = socket.create_stream(local_id)?;
            stream.connect(remote_id, addr)?;
            return Ok(DataPath::Connected(stream, Path::Direct));
        }
        let mut acceptor = Acceptor::new(local_id, remote_id);
        acceptor.listen_on(&socket, Via::Dht)?;
        let relay_nodes: Vec<SocketAddr> = self
            .relays
            .borrow()
            .iter()
            .filter_map(|r| to_socket_addr(&r.relay_address))
            .collect();
        let punch = match session_id {
            Some(id) => {
                let punch = Arc::new(
                    ServerPunch::new(
                        hs.holepunch_secret,
                        self.node.bind_ip(),
                        self.node.known_nodes(),
                        relay_nodes,
                        Firewall::from_wire(remote.firewall),
                        self.requests_tx.clone(),
                    )
                    .await?,
                );
                acceptor.listen_on(punch.puncher().main().udx(), Via::Punch(0))?;
                self.sessions.insert(
                    id,
                    Session {
                        punch: Arc::clone(&punch),
                        created: Instant::now(),
                    },
                );
                Some(punch)
            }
            None => None,
        };
        Ok(DataPath::Accepting {
            acceptor,
            punch,
            relay,
        })
    }
}

/// How a connection came in: its stream and path, the punched socket to keep for the client's
/// next connections, the relay pairing to keep while it lasts.
struct Accepted {
    stream: UdxStream,
    path: Path,
    punched: Option<PunchSocket>,
    lease: Option<Lease>,
}

/// Waits for the client's first packet on any socket it may arrive on. Sockets of the punch that
/// hear a probe join in (a random NAT's client reaches one of our birthday sockets), and so does
/// the relay once both of us have paired there.
async fn accept(
    mut acceptor: Acceptor<Via>,
    punch: Option<Arc<ServerPunch>>,
    relay: Option<RelayPlan>,
    relay_clients: Arc<RelayClients>,
) -> Option<Accepted> {
    let mut hits = punch.as_ref().and_then(|p| p.puncher().take_hits());
    let mut punching = punch.as_ref().map(|p| p.punching());
    let started = tokio::time::Instant::now();
    let mut deadline = started + FIRST_PACKET_TIMEOUT;
    let relay_deadline = started + RELAYED_PACKET_TIMEOUT;
    let mut pairing = relay.map(|r| {
        Box::pin(relay_client_pair(
            Arc::clone(&relay_clients),
            r,
            RELAYED_PACKET_TIMEOUT,
        ))
    });
    let mut lease = None;
    let accepted = loop {
        // While the relay may still bring the client, wait for it.
        let relay_pending = pairing.is_some() || lease.is_some();
        let until = if relay_pending {
            deadline.max(relay_deadline)
        } else {
            deadline
        };
        tokio::select! {
            won = acceptor.accepted() => break won,
            Some(hit) = async { hits.as_mut()?.recv().await }, if hits.is_some() => {
                if let Some(socket) = punch.as_ref().and_then(|p| p.puncher().socket(hit.index)) {
                    if let Err(e) = acceptor.listen_on(socket.udx(), Via::Punch(hit.index)) {
                        debug!(error = %e, "cannot listen on a punched socket");
                    }
                    // Only now answer: the client sends its first stream packet on hearing us.
                    socket.probe(hit.from, false);
                }
            }
            Some(()) = async { punching.as_mut()?.changed().await.ok() }, if punching.is_some() => {
                deadline = tokio::time::Instant::now() + PUNCHED_PACKET_TIMEOUT;
                punching = None;
            }
            Some(paired) = async { Some(pairing.as_mut()?.await) }, if pairing.is_some() => {
                pairing = None;
                match paired {
                    Ok(p) => {
                        acceptor.race(p.stream, p.relay_id, Via::Relay);
                        lease = Some(p.lease);
                    }
                    Err(e) => debug!(error = %e, "the relay did not bring the client"),
                }
            }
            _ = tokio::time::sleep_until(until) => break None,
        }
    };
    let (stream, via) = accepted?;
    if via != Via::Relay {
        // Whatever we paired at the relay is not needed: dropping it unpairs.
        drop(lease.take());
    }
    let punched = match (via, &punch) {
        (Via::Punch(index), Some(punch)) => punch.puncher().keep_only(index),
        (_, punch) => {
            if let Some(punch) = punch {
                punch.puncher().stop();
            }
            None
        }
    };
    let path = match via {
        Via::Dht => Path::Direct,
        Via::Punch(_) => Path::Punched,
        Via::Relay => Path::Relayed,
    };
    Some(Accepted {
        stream,
        path,
        punched,
        lease,
    })
}

async fn relay_client_pair(
    clients: Arc<RelayClients>,
    plan: RelayPlan,
    wait: Duration,
) -> Result<relay_client::Paired> {
    clients
        .pair(plan.relay, plan.token, plan.is_initiator, wait)
        .await
}

async fn serve_connection(
    n: u64,
    data_path: DataPath,
    hs: NoiseWrapResult,
    handler: Handler,
    routes: mpsc::UnboundedSender<PunchSocket>,
    relay_clients: Arc<RelayClients>,
) {
    let (stream, path, lease) = match data_path {
        DataPath::Connected(stream, path) => (stream, path, None),
        DataPath::Accepting {
            acceptor,
            punch,
            relay,
        } => match accept(acceptor, punch, relay, relay_clients).await {
            Some(a) => {
                if let Some(socket) = a.punched {
                    // Kept for the client's next connections; its keepalive probes get answers.
                    socket.set_echo(true);
                    let _ = routes.send(socket);
                }
                (a.stream, a.path, a.lease)
            }
            None => {
                info!(
                    connection = n,
                    "the peer's first packet never arrived (it gave up, or no hole could be punched)"
                );
                return;
            }
        },
    };
    let remote = stream.remote_addr();
    debug!(connection = n, %path, ?remote, "data path open");
    if let Some(lease) = lease {
        lease.keep_while(&stream.observer());
    }
    let (peer, link) = match secure(false, stream, &hs, "from the peer").await {
        Ok(p) => p,
        Err(e) => {
            warn!(connection = n, error = %e, "connection did not open");
            return;
        }
    };
    handler(n, peer, link, path).await;
}

/// A share's handler: pipes the connection to the local service.
async fn serve_tcp(n: u64, peer: PeerStream, _link: Link, path: Path, service: (String, u16)) {
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
    info!(connection = n, %path, "peer connected");
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
