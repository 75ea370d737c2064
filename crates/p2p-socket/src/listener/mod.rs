//! The listener (hyperdht's `server.js`): accepts encrypted connections on a key pair. It
//! announces `hash(publicKey)` on the DHT, answers the handshakes DHT nodes forward to it,
//! punches holes with clients behind NATs, meets them at a relay where no hole can be
//! punched, and hands every connection that opens to a handler: share pipes it to a local
//! service, the relay server relays it.

mod accept;
mod announce;
mod firewall;
mod respond;
mod upgrade;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use peeroxide_dht::crypto::hash;
use peeroxide_dht::hyperdht::ServerEvent;
use peeroxide_dht::hyperdht_messages::{
    decode_handshake_from_bytes, HolepunchMessage, RelayInfo, MODE_FROM_CLIENT, PEER_HANDSHAKE,
};
use peeroxide_dht::messages::{Command, Ipv4Peer};
use tokio::sync::{mpsc, watch, Semaphore};
use tracing::{debug, info, warn};

use crate::access::AllowList;
use crate::addr::{ipv4_peer, to_socket_addr};
use crate::dht::{DhtNode, NetworkOptions};
use crate::dialer::relay_dialer;
use crate::error::{Error, Result};
use crate::events::Events;
use crate::holepunch::{ServerPunch, BIRTHDAY_SOCKETS};
use crate::identity::{KeyPair, PublicKey};
use crate::noise_session::Features;
use crate::peer::{Link, Path, PeerStream};
use crate::punch_socket::{PunchSocket, RpcRequest};
use crate::relay::client::RelayClients;
use crate::roaming::{Sessions, MAX_SESSIONS as MAX_ROAMING};
use crate::running::Running;
use accept::PUNCHED_PACKET_TIMEOUT;
use announce::{announce, keep_announced, ping_relays};
use firewall::RefusalLog;
use respond::Arrival;

/// A client that gets no answer retries the same handshake, and a handshake can reach us through
/// more than one DHT node. Answering a repeat with the first reply (instead of starting a second
/// connection) is what Node's server does too; this is how long we remember one.
const HANDSHAKE_MEMORY: Duration = Duration::from_secs(30);

/// How often finished punch sessions and unused punched sockets are let go.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Hole punches in progress at once. Each holds a socket (a punch through a randomising NAT
/// 256 of them for a while); past this, clients get no offer and must reach us directly.
const MAX_SESSIONS: usize = 64;

/// How long a punch session answers late rounds after its handshake.
const SESSION_LIFETIME: Duration = Duration::from_secs(PUNCHED_PACKET_TIMEOUT.as_secs() + 15);

/// A punched socket with no connection on it is kept this long after the client was last heard
/// (its connects ping every 10 s), for the client's next connection to skip the punch.
const ROUTE_IDLE: Duration = Duration::from_secs(60);
/// At most this many punched sockets wait for clients' next connections.
const MAX_ROUTES: usize = 256;

/// Punches through a randomising NAT (ours or the client's) at once, as in Node's hyperdht:
/// one holds [`BIRTHDAY_SOCKETS`] sockets or sprays 500 probes a second for its whole time.
/// Other clients are told to try later.
const RANDOM_PUNCHES_AT_ONCE: usize = 1;

/// The sockets a share's punching may hold at once: one per punch session, the birthday
/// sockets of the random punches, the kept routes. Below the usual soft limit of 1,024
/// descriptors, with room for the connections themselves and the local service's.
const PUNCH_DESCRIPTORS: usize =
    MAX_SESSIONS + RANDOM_PUNCHES_AT_ONCE * BIRTHDAY_SOCKETS + MAX_ROUTES;
const _: () = assert!(PUNCH_DESCRIPTORS <= 640);

/// A listener that admits only some clients: the list, and where refusals are reported.
pub(crate) struct Admission {
    pub(crate) list: AllowList,
    pub(crate) events: Events,
}

/// What a server does with each connection once it is open and encrypted: the number of the
/// connection, the stream, what carries it, and how it travels.
pub(crate) type Handler = Arc<
    dyn Fn(u64, PeerStream, Link, Path) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync,
>;

/// Connections open at once, whatever path they took; past this, handshakes go unanswered
/// (and a line in the log says so) until some close.
pub(crate) const MAX_CONNECTIONS: usize = 512;

/// Handshakes remembered for answering repeats; a flood of fresh ones forgets the oldest.
const MAX_RECENT: usize = 1024;

/// Punched sockets handed back by finished connections, waiting to be kept.
const ROUTES_QUEUE: usize = 64;

/// A running listener. Dropping it stops serving; [`Listener::close`] also withdraws the
/// announcement.
pub(crate) struct Listener {
    public_key: PublicKey,
    running: Running,
    stats: Arc<Stats>,
}

#[derive(Debug, Default)]
struct Stats {
    connections: AtomicU64,
}

impl Listener {
    /// Joins the DHT, announces `key_pair`'s public key and hands every connection to
    /// `handler`; `relay` is offered to peers that cannot reach us otherwise, at most
    /// `max_connections` are open at once, with an `allow` list only its keys get in, and
    /// `features` are offered in every handshake (the handler finds what a connection agreed
    /// in its [`Link`]). Returns once the key is findable.
    pub(crate) async fn start(
        network: &NetworkOptions,
        key_pair: KeyPair,
        relay: Option<PublicKey>,
        max_connections: usize,
        allow: Option<Admission>,
        features: Features,
        handler: Handler,
    ) -> Result<Listener> {
        let mut node = DhtNode::join(network).await?;
        let events = node.take_events().ok_or_else(|| Error::Dht {
            doing: "starting to serve",
            source: "the DHT node already has a server".into(),
        })?;
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

        let stats = Arc::new(Stats::default());
        let (requests_tx, requests) = mpsc::unbounded_channel();
        let (routes_tx, routes) = mpsc::channel(ROUTES_QUEUE);
        let relays = ping_relays(node.handle()).await;
        let (relays_tx, relays) = watch::channel(relays);
        let server = Server {
            node,
            key_pair: key_pair.clone(),
            target,
            handler,
            relay,
            relay_clients: Arc::new(RelayClients::new(network, relay_dialer())),
            recent: HashMap::new(),
            stats: Arc::clone(&stats),
            relays,
            sessions: HashMap::new(),
            next_session: 0,
            routes: Vec::new(),
            random_punches: Arc::new(Semaphore::new(RANDOM_PUNCHES_AT_ONCE)),
            connections: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            refusals: RefusalLog::new(allow.as_ref().map(|a| a.events.clone())),
            allow: allow.map(|a| a.list),
            features,
            roaming: Sessions::new(MAX_ROAMING),
            requests_tx,
            routes_tx,
        };
        let known = server.node.known().clone();
        let handle = server.node.handle().clone();
        let reachability = server.node.reachability();
        let running = Running::spawn(|stop| {
            tokio::spawn(keep_announced(
                handle,
                target,
                dht_kp,
                known,
                reachability,
                relays_tx,
                stop.clone(),
            ));
            server.run(events, requests, routes, stop)
        });
        Ok(Listener {
            public_key: key_pair.public_key(),
            running,
            stats,
        })
    }

    /// The key to hand to peers.
    pub(crate) fn public_key(&self) -> PublicKey {
        self.public_key
    }

    /// How many peer connections were accepted so far.
    pub(crate) fn connections(&self) -> u64 {
        self.stats.connections.load(Ordering::Relaxed)
    }

    /// Withdraws the announcement and stops. Connections in progress are cut.
    pub(crate) async fn close(self) {
        self.running.stop().await;
    }
}

/// A holepunch offer made in a handshake, answering that client's rounds.
struct Session {
    punch: Arc<ServerPunch>,
    created: Instant,
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
    /// Held by the punch through a randomising NAT in progress.
    random_punches: Arc<tokio::sync::Semaphore>,
    requests_tx: mpsc::UnboundedSender<RpcRequest>,
    routes_tx: mpsc::Sender<PunchSocket>,
    /// One permit per open connection.
    connections: Arc<Semaphore>,
    max_connections: usize,
    /// Only these clients get in, when set.
    allow: Option<AllowList>,
    refusals: RefusalLog,
    /// Offered in every handshake.
    features: Features,
    /// Sessions that may be resumed over a new path (crate::roaming).
    roaming: Arc<Sessions<Link>>,
}

impl Server {
    async fn run(
        mut self,
        mut events: mpsc::UnboundedReceiver<ServerEvent>,
        mut requests: mpsc::UnboundedReceiver<RpcRequest>,
        mut routes: mpsc::Receiver<PunchSocket>,
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
        let from = ipv4_peer(req.from);
        if let Some(reply) = self
            .on_handshake(msg, from, None, Arrival::Punched(req.socket.clone()))
            .await
        {
            req.reply(Some(reply));
        }
    }
}
