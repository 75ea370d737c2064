//! The connecting side (hyperdht's `connect.js`): find the sharer's announcement, send the
//! handshake through a DHT node that holds it, and open the encrypted stream; and the local TCP
//! listener that does this for every connection a local program makes.
//!
//! The path is the most direct one that works: straight to the sharer, or through a hole
//! punched in both NATs; through a blind relay only when neither can be made (and then for the
//! next connections too, for a while, so they need not find out again).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use peeroxide_dht::crypto::hash;
use peeroxide_dht::hyperdht_messages::{
    decode_handshake_from_bytes, decode_hyper_peer_from_bytes, NoisePayload, RelayThroughInfo,
    FIREWALL_OPEN, MODE_FROM_CLIENT, MODE_REPLY, PEER_HANDSHAKE,
};
use peeroxide_dht::messages::Ipv4Peer;
use peeroxide_dht::noise_wrap::{NoiseWrap, NoiseWrapResult};
use peeroxide_dht::rpc::UserRequestParams;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Mutex};
use tracing::{debug, info, warn};
use udx::UdxStream;

use crate::addr::to_socket_addr;
use crate::dht::{next_stream_id, DhtNode, NetworkOptions};
use crate::error::{Error, Result};
use crate::handshake::{check_remote, dial_address, lan_address, message, our_payload};
use crate::holepunch::{punch_to_server, ClientPunch};
use crate::identity::{KeyPair, PublicKey};
use crate::lock::lock;
use crate::nat::Firewall;
use crate::peer::{secure, Link, Path, PeerStream};
use crate::pipe::pipe;
use crate::punch_socket::{PunchSocket, RpcMessage};
use crate::relay::client::{self as relay_client, RelayClients};

/// How long finding the sharer may take. A lookup on a healthy DHT takes well under a second on
/// a LAN and one or two on the internet; past this the key is not announced anywhere we can see.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(12);

/// How long one DHT node may take to relay our handshake and bring back the answer.
const HANDSHAKE_TIMEOUT_MS: u64 = 3_000;

/// How many of the nodes holding the announcement we ask before giving up on a connection.
const HANDSHAKE_ATTEMPTS: usize = 3;

/// A handshake sent straight through a punched hole: one round trip, so a short wait, tried
/// a few times (a lost datagram should cost neither a second nor a whole new punch; a late
/// answer to an earlier try still counts, and the sharer answers a repeat as before).
const ROUTE_HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(500);
const ROUTE_HANDSHAKE_TRIES: u32 = 4;

/// How often a kept punched socket pings the sharer's end (which answers): NATs forget a UDP
/// mapping after 30 s or more without traffic.
const ROUTE_KEEPALIVE_EVERY: Duration = Duration::from_secs(10);
/// A punched socket that heard nothing for this long is given up.
const ROUTE_DEAD_AFTER: Duration = Duration::from_secs(35);

/// How long the sharer may take to come to the relay after we paired there (hyperdht gives a
/// relay pairing 15 s). It pairs when it answers the handshake, so it is usually there first.
const RELAY_PAIR_TIMEOUT: Duration = Duration::from_secs(15);

/// Once a connection needed the relay, the next ones go straight to it for this long: the
/// NATs between us will not have changed, and finding out again costs a punch.
const RELAY_STICKY: Duration = Duration::from_secs(10 * 60);

/// A hole punched to the sharer, kept for the next connections: their handshakes go straight
/// through it instead of through the DHT, and need no new punch (hyperdht's reusable socket
/// route).
struct Route {
    socket: PunchSocket,
    server: SocketAddr,
    keepalive: tokio::task::JoinHandle<()>,
}

impl Route {
    fn new(socket: PunchSocket, server: SocketAddr) -> Route {
        let pinger = socket.clone();
        let keepalive = tokio::spawn(async move {
            let mut every = tokio::time::interval(ROUTE_KEEPALIVE_EVERY);
            every.tick().await;
            loop {
                every.tick().await;
                pinger.probe(server, false);
            }
        });
        Route {
            socket,
            server,
            keepalive,
        }
    }

    fn alive(&self) -> bool {
        self.socket.last_heard().elapsed() < ROUTE_DEAD_AFTER
    }
}

impl Drop for Route {
    fn drop(&mut self) {
        self.keepalive.abort();
    }
}

/// The sharer's answer to a handshake sent through a DHT node.
struct Answer {
    hs: NoiseWrapResult,
    remote: NoisePayload,
    remote_id: u32,
    local_id: u32,
    /// The DHT node the handshake went through.
    relay: SocketAddr,
    /// Where that node saw the sharer.
    server_address: SocketAddr,
    relayed: bool,
    /// Our stream on the DHT socket, made before asking when we said we are reachable (the
    /// sharer then sends first).
    waiting: Option<UdxStream>,
}

/// An encrypted connection to a sharer, opened through a DHT node.
pub struct Connector {
    node: DhtNode,
    key_pair: KeyPair,
    remote: PublicKey,
    /// DHT nodes that held the sharer's announcement last time: later connections go straight to
    /// them instead of searching again (hyperdht's relay address cache does the same).
    relays: Mutex<Vec<Ipv4Peer>>,
    route: std::sync::Mutex<Option<Arc<Route>>>,
    /// One punch at a time: a connection that needs one while another is punching waits, then
    /// takes the route that punch leaves.
    punching: Mutex<()>,
    /// Our relay, for when no direct path can be made.
    relay: Option<PublicKey>,
    /// Go through a relay every time.
    force_relay: bool,
    relay_clients: Arc<RelayClients>,
    /// When a connection last found that only a relay gets through.
    relayed_since: std::sync::Mutex<Option<Instant>>,
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
            route: std::sync::Mutex::new(None),
            punching: Mutex::new(()),
            relay: None,
            force_relay: false,
            relay_clients: Arc::new(RelayClients::new(network)),
            relayed_since: std::sync::Mutex::new(None),
        };
        let started = Instant::now();
        let (relays, ()) = tokio::join!(connector.lookup(), connector.node.reachability_known());
        let relays = relays?;
        info!(
            nodes = relays.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "found the sharer's announcement"
        );
        *connector.relays.lock().await = relays;
        Ok(connector)
    }

    /// Offers the blind relay `relay` (`p2p-socket relay`) for when no direct path can be made
    /// to the sharer. A relay the sharer offers is used in preference, as hyperdht does.
    pub fn with_relay(mut self, relay: PublicKey) -> Self {
        self.relay = Some(relay);
        self
    }

    /// Goes through a relay for every connection, never directly: for trying a relay out, or
    /// for networks that let UDP reach the relay but nothing else. Needs a relay, ours or the
    /// sharer's.
    pub fn force_relay(mut self, force: bool) -> Self {
        self.force_relay = force;
        self
    }

    /// The DHT nodes that hold the announcement of `remote`.
    async fn lookup(&self) -> Result<Vec<Ipv4Peer>> {
        let target = hash(self.remote.as_bytes());
        let replies =
            tokio::time::timeout(LOOKUP_TIMEOUT, self.node.handle().query_find_peer(target))
                .await
                .map_err(|_| Error::PeerNotFound)??;
        self.node
            .add_nodes(replies.iter().filter_map(|r| to_socket_addr(&r.from)));
        let mut relays: Vec<Ipv4Peer> = Vec::new();
        for reply in replies {
            let Some(value) = reply.value.as_deref() else {
                continue;
            };
            let Ok(record) = decode_hyper_peer_from_bytes(value) else {
                continue;
            };
            if record.public_key != *self.remote.as_bytes() {
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
        Ok(self.open_with_path().await?.0)
    }

    /// Opens one encrypted connection to the sharer, and says how its packets travel.
    pub async fn open_with_path(&self) -> Result<(PeerStream, Path)> {
        let (peer, _, path) = self.open_link().await?;
        Ok((peer, path))
    }

    /// Opens one encrypted connection to the sharer: the stream, what carries it, and how.
    pub(crate) async fn open_link(&self) -> Result<(PeerStream, Link, Path)> {
        if self.relay_is_needed() {
            match self.open_relayed().await {
                Ok(opened) => return Ok(opened),
                Err(e) if self.force_relay => return Err(e),
                Err(e) => {
                    // The relay may be gone, or the NATs changed: find out afresh.
                    info!(error = %e, "the relay failed; trying a direct path again");
                    *lock(&self.relayed_since) = None;
                }
            }
        }
        // Twice at most: a second time only when another connection punched while we waited
        // for our turn to punch, or the punched route failed.
        for _ in 0..2 {
            if let Some(route) = self.live_route() {
                match self.open_on_route(&route).await {
                    Ok((peer, link)) => return Ok((peer, link, Path::Punched)),
                    Err(e) => {
                        debug!(error = %e, "the punched route failed; going through the DHT");
                        self.forget_route(&route);
                    }
                }
            }
            let mut answer = self.handshake(&Ask::Direct).await?;
            let decision = self.decide(&answer).await?;
            let waiting = answer.waiting.take();
            let opened = match decision {
                Decision::Dial(addr) => {
                    let stream = match waiting {
                        Some(s) => s,
                        None => self.node.socket().create_stream(answer.local_id)?,
                    };
                    debug!(%addr, "dialling the sharer");
                    stream.connect(answer.remote_id, addr)?;
                    secure(true, stream, &answer.hs, &format!("to {addr}"))
                        .await
                        .map(|(peer, link)| (peer, link, Path::Direct))
                }
                Decision::Wait => {
                    let stream = waiting
                        .ok_or_else(|| Error::HandshakeFailed("no stream to wait on".into()))?;
                    debug!("waiting for the sharer to reach us");
                    stream.connect_on_first_packet(answer.remote_id);
                    secure(true, stream, &answer.hs, "from the sharer")
                        .await
                        .map(|(peer, link)| (peer, link, Path::Direct))
                }
                Decision::Punch => {
                    let _turn = self.punching.lock().await;
                    if self.live_route().is_some() {
                        continue;
                    }
                    if let Some(relay) = self.relay_for(&answer) {
                        // Should the punch fail, the relay is then ready.
                        self.relay_clients.prepare(relay);
                    }
                    self.punch(&answer)
                        .await
                        .map(|(peer, link)| (peer, link, Path::Punched))
                }
            };
            return match opened {
                Err(e) if needs_relay(&e) => self.relay_instead(&answer, e).await,
                other => other,
            };
        }
        Err(Error::HolepunchFailed(
            "the hole punched to the sharer stopped working right away".into(),
        ))
    }

    fn live_route(&self) -> Option<Arc<Route>> {
        let route = lock(&self.route);
        route.as_ref().filter(|r| r.alive()).cloned()
    }

    fn forget_route(&self, dead: &Arc<Route>) {
        let mut route = lock(&self.route);
        if route.as_ref().is_some_and(|r| Arc::ptr_eq(r, dead)) {
            *route = None;
        }
    }

    fn our_firewall(&self) -> Firewall {
        if self.node.is_open() {
            Firewall::Open
        } else {
            Firewall::Unknown
        }
    }

    /// The Noise handshake, first message and the state to read the answer. A handshake for a
    /// relayed connection names our relay (if we have one) and does not claim we are reachable:
    /// the sharer must wait for us to come through the relay, not dial us.
    async fn start_handshake(&self, local_id: u32, ask: &Ask) -> Result<(NoiseWrap, Vec<u8>)> {
        let mut nw = NoiseWrap::new_initiator(self.key_pair.to_noise(), *self.remote.as_bytes());
        let (firewall, relay_through) = match ask {
            Ask::Direct => (self.our_firewall(), None),
            Ask::Relay(ours) => (Firewall::Unknown, ours.clone()),
        };
        let mut payload = our_payload(
            local_id,
            self.node.reachable_addresses().await,
            firewall,
            None,
        );
        payload.relay_through = relay_through;
        let noise = nw
            .send(&payload)
            .map_err(|e| Error::HandshakeFailed(e.to_string()))?;
        Ok((nw, noise))
    }

    /// Reads the sharer's half of the handshake.
    fn finish_handshake(
        mut nw: NoiseWrap,
        noise: &[u8],
    ) -> Result<(NoisePayload, u32, NoiseWrapResult)> {
        let remote = nw
            .recv(noise)
            .map_err(|e| Error::HandshakeFailed(format!("bad answer: {e}")))?;
        let remote_id = check_remote(&remote).map_err(Error::Incompatible)?;
        let hs = nw
            .finalize()
            .map_err(|e| Error::HandshakeFailed(e.to_string()))?;
        Ok((remote, remote_id, hs))
    }

    /// A connection through a hole punched earlier: the handshake goes straight to the
    /// sharer's end of it, which answers and connects at once.
    async fn open_on_route(&self, route: &Route) -> Result<(PeerStream, Link)> {
        let local_id = next_stream_id();
        // The sharer starts sending as soon as it answers: have the stream ready.
        let stream = route.socket.udx().create_stream(local_id)?;
        let (nw, noise) = self.start_handshake(local_id, &Ask::Direct).await?;
        let request = message(MODE_FROM_CLIENT, noise, None);
        let reply = route
            .socket
            .request(
                route.server,
                RpcMessage::user(PEER_HANDSHAKE, hash(self.remote.as_bytes()), request),
                ROUTE_HANDSHAKE_TIMEOUT,
                ROUTE_HANDSHAKE_TRIES,
            )
            .await
            .map_err(|e| Error::HandshakeFailed(format!("through the punched hole: {e}")))?;
        let answer = reply
            .value
            .as_deref()
            .and_then(|v| decode_handshake_from_bytes(v).ok())
            .filter(|m| {
                reply.error == 0
                    && m.mode == MODE_REPLY
                    && !m.noise.is_empty()
                    && reply.from == route.server
            })
            .ok_or_else(|| {
                Error::HandshakeFailed("no usable answer through the punched hole".into())
            })?;
        let (_, remote_id, hs) = Self::finish_handshake(nw, &answer.noise)?;
        stream.connect(remote_id, route.server)?;
        secure(
            true,
            stream,
            &hs,
            &format!("through the punched hole to {}", route.server),
        )
        .await
    }

    /// The handshake through the DHT nodes holding the announcement (searching again if those
    /// we know fail).
    async fn handshake(&self, ask: &Ask) -> Result<Answer> {
        let relays = self.relays.lock().await.clone();
        match self.handshake_via(&relays, ask).await {
            Err(Error::HandshakeFailed(why)) => {
                // The announcement may have moved (the sharer restarted, nodes churned).
                debug!(%why, "cached DHT nodes failed; searching again");
                let fresh = self.lookup().await?;
                *self.relays.lock().await = fresh.clone();
                self.handshake_via(&fresh, ask).await
            }
            other => other,
        }
    }

    async fn handshake_via(&self, relays: &[Ipv4Peer], ask: &Ask) -> Result<Answer> {
        let target = hash(self.remote.as_bytes());
        let local_id = next_stream_id();
        let waiting = if matches!(ask, Ask::Direct) && self.our_firewall() == Firewall::Open {
            Some(self.node.socket().create_stream(local_id)?)
        } else {
            None
        };
        let (nw, noise) = self.start_handshake(local_id, ask).await?;
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
            let (remote, remote_id, hs) = Self::finish_handshake(nw, &reply.noise)?;
            let relay_addr = to_socket_addr(relay)
                .ok_or_else(|| Error::HandshakeFailed("a DHT node's address is invalid".into()))?;
            // A relayed answer names the address the relaying node saw the sharer at; a direct
            // one came from the sharer itself.
            let relayed = reply.peer_address.is_some();
            let server_address = match reply.peer_address.as_ref() {
                Some(p) => to_socket_addr(p).ok_or_else(|| {
                    Error::HandshakeFailed("the peer's address is invalid".into())
                })?,
                None => relay_addr,
            };
            return Ok(Answer {
                hs,
                remote,
                remote_id,
                local_id,
                relay: relay_addr,
                server_address,
                relayed,
                waiting,
            });
        }
        Err(Error::HandshakeFailed(last_error))
    }

    /// How this connection reaches the sharer (connect.js's `holepunch()` decisions).
    async fn decide(&self, answer: &Answer) -> Result<Decision> {
        let our_public = self.node.public_ip().await;
        let our_local = self.node.own_ips().await;
        let remote = &answer.remote;
        let holepunchable = remote
            .holepunch
            .as_ref()
            .is_some_and(|h| !h.relays.is_empty());
        let seen = answer.server_address;
        let dial = || dial_address(seen, &remote.addresses4, our_public, &our_local);
        if remote.firewall == FIREWALL_OPEN || !answer.relayed {
            // Reachable, or it answered us itself: dial it.
            return Ok(Decision::Dial(dial()));
        }
        if answer.waiting.is_some() {
            // We said we are reachable: a sharer that is not sends first (connect.js waits).
            return Ok(Decision::Wait);
        }
        if !holepunchable {
            // It offers nothing else; a Node sharer expects exactly this.
            return Ok(Decision::Dial(dial()));
        }
        if let Some(addr) = lan_address(seen, &remote.addresses4, our_public, &our_local) {
            // Behind the same NAT as us: its LAN address needs no punching.
            return Ok(Decision::Dial(addr));
        }
        Ok(Decision::Punch)
    }

    async fn punch(&self, answer: &Answer) -> Result<(PeerStream, Link)> {
        let holepunch = answer
            .remote
            .holepunch
            .as_ref()
            .ok_or_else(|| Error::HolepunchFailed("the sharer offered no holepunch".into()))?;
        let (socket, addr) = punch_to_server(&ClientPunch {
            bind: self.node.bind_ip(),
            nodes: self.node.known_nodes(),
            target: hash(self.remote.as_bytes()),
            holepunch,
            relay: answer.relay,
            server_address: answer.server_address,
            remote_firewall: Firewall::from_wire(answer.remote.firewall),
            secret: answer.hs.holepunch_secret,
        })
        .await?;
        let stream = socket.udx().create_stream(answer.local_id)?;
        stream.connect(answer.remote_id, addr)?;
        if answer
            .remote
            .udx
            .as_ref()
            .is_some_and(|u| u.reusable_socket)
        {
            *lock(&self.route) = Some(Arc::new(Route::new(socket, addr)));
        }
        secure(
            true,
            stream,
            &answer.hs,
            &format!("through the punched hole to {addr}"),
        )
        .await
    }

    /// Whether connections go straight to the relay: forced, or a connection found lately
    /// that nothing else gets through.
    fn relay_is_needed(&self) -> bool {
        self.force_relay
            || lock(&self.relayed_since).is_some_and(|since| since.elapsed() < RELAY_STICKY)
    }

    /// The relay this connection would go through: the sharer's, else ours.
    fn relay_for(&self, answer: &Answer) -> Option<PublicKey> {
        answer
            .remote
            .relay_through
            .as_ref()
            .map(|r| PublicKey::from(r.public_key))
            .or(self.relay)
    }

    /// A connection where no direct path could be made (`why`): through the relay the sharer
    /// offered in this handshake, or a new handshake that offers ours.
    async fn relay_instead(&self, answer: &Answer, why: Error) -> Result<(PeerStream, Link, Path)> {
        if self.relay_for(answer).is_none() {
            return Err(why);
        }
        info!(why = %why, "no direct path to the sharer; going through the relay");
        *lock(&self.relayed_since) = Some(Instant::now());
        match &answer.remote.relay_through {
            Some(_) => self.through_relay(answer, None).await,
            None => self.open_relayed().await,
        }
    }

    /// A connection through a relay from the start: a handshake that names ours.
    async fn open_relayed(&self) -> Result<(PeerStream, Link, Path)> {
        let ours = self.relay.map(|relay| RelayThroughInfo {
            version: 1,
            public_key: *relay.as_bytes(),
            token: relay_client::token(),
        });
        let answer = self.handshake(&Ask::Relay(ours.clone())).await?;
        self.through_relay(&answer, ours.as_ref()).await
    }

    /// Pairs at the relay for the connection `answer` negotiated: the sharer's relay if it
    /// named one (it then pairs as the initiator), else ours (`ours`, as sent).
    async fn through_relay(
        &self,
        answer: &Answer,
        ours: Option<&RelayThroughInfo>,
    ) -> Result<(PeerStream, Link, Path)> {
        let (relay, is_initiator) =
            match (answer.remote.relay_through.as_ref(), ours) {
                (Some(theirs), _) => (theirs, false),
                (None, Some(ours)) => (ours, true),
                (None, None) => return Err(Error::RelayNeeded(
                    "neither side has a relay to go through (give connect or share --relay KEY)"
                        .into(),
                )),
            };
        let key = PublicKey::from(relay.public_key);
        let paired = self
            .relay_clients
            .pair(key, relay.token, is_initiator, RELAY_PAIR_TIMEOUT)
            .await?;
        paired.stream.connect(paired.relay_id, paired.relay_addr)?;
        paired.lease.keep_while(&paired.stream.observer());
        let (peer, link) = secure(
            true,
            paired.stream,
            &answer.hs,
            &format!("through the relay {}", paired.relay_addr),
        )
        .await?;
        Ok((peer, link, Path::Relayed))
    }

    /// Stops the DHT node.
    pub async fn close(self) {
        self.node.destroy().await;
    }
}

/// Whether a failure to open a connection is one a relay gets around: no hole could be
/// punched, or no packet got through on the path we tried.
fn needs_relay(e: &Error) -> bool {
    matches!(
        e,
        Error::RelayNeeded(_) | Error::HolepunchFailed(_) | Error::NoDataPath(_)
    )
}

/// What a handshake asks the sharer for.
enum Ask {
    /// Whatever path works best.
    Direct,
    /// A connection through a relay: the sharer must wait for us there, not dial us. Names our
    /// relay, if we have one.
    Relay(Option<RelayThroughInfo>),
}

/// How one connection reaches the sharer.
enum Decision {
    /// Send to this address from the DHT socket.
    Dial(SocketAddr),
    /// The sharer sends first, to our DHT socket.
    Wait,
    /// Punch a hole first.
    Punch,
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
    /// A blind relay (`p2p-socket relay`) for when no direct path to the sharer can be made.
    pub relay: Option<PublicKey>,
    /// Go through a relay for every connection (see [`Connector::force_relay`]).
    pub force_relay: bool,
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
        let mut connector = Connector::new(&opts.network, opts.key_pair, opts.remote)
            .await?
            .force_relay(opts.force_relay);
        if let Some(relay) = opts.relay {
            connector = connector.with_relay(relay);
        }
        let connector = Arc::new(connector);
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
    let (peer, path) = match connector.open_with_path().await {
        Ok(p) => p,
        Err(e) => {
            warn!(connection = n, %from, error = %e, "could not reach the sharer; closed the local connection");
            return;
        }
    };
    info!(connection = n, %from, %path, open_ms = started.elapsed().as_millis() as u64, "connected to the sharer");
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
