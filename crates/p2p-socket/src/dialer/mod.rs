//! The dialer (hyperdht's `connect.js`): find a key's announcement, send the handshake through
//! a DHT node that holds it, choose a path and open the encrypted connection on it. Connect
//! and the relay client use it.
//!
//! The path is the most direct one that works: straight to the sharer, or through a hole
//! punched in both NATs; through a blind relay only when neither can be made (and then for the
//! next connections too, for a while, so they need not find out again).

mod attempt;
mod handshake;
mod relayed;
mod route;
mod upgrade;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use peeroxide_dht::crypto::hash;
use peeroxide_dht::hyperdht_messages::{decode_hyper_peer_from_bytes, NoisePayload, FIREWALL_OPEN};
use peeroxide_dht::messages::Ipv4Peer;
use tokio::sync::{watch, Mutex as AsyncMutex};
use tracing::{debug, info};
use udx::UdxStream;

use crate::addr::to_socket_addr;
use crate::address_watch::watch_moves;
use crate::connection::Connection;
use crate::dht::{DhtNode, NetworkOptions};
use crate::error::{Error, PunchFailure, Result, Stage};
use crate::identity::{KeyPair, PublicKey};
use crate::lock::lock;
use crate::nat::Firewall;
use crate::noise_session::{Features, Keys};
use crate::peer::{secure, Link, Path, PeerStream};
use crate::policy::{client_path, Answered, Decision, RelayOffer};
use crate::relay::client::{DialRelay, RelayClients, RelayConnection};
pub(crate) use attempt::ATTEMPT_TIMEOUT;
use route::Route;

/// How long finding the sharer may take. A lookup on a healthy DHT takes well under a second on
/// a LAN and one or two on the internet; past this the key is not announced anywhere we can see.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(12);

/// The sharer's answer to a handshake sent through a DHT node.
struct Answer {
    hs: Keys,
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

impl Answer {
    /// The relay the sharer named, if any.
    fn sharers_relay(&self) -> Option<RelayOffer> {
        self.remote
            .relay_through
            .as_ref()
            .map(RelayOffer::from_wire)
    }
}

/// An encrypted connection to a sharer, opened through a DHT node.
pub struct Connector {
    node: DhtNode,
    key_pair: KeyPair,
    remote: PublicKey,
    /// DHT nodes that held the sharer's announcement last time: later connections go straight to
    /// them instead of searching again (hyperdht's relay address cache does the same).
    relays: AsyncMutex<Vec<Ipv4Peer>>,
    route: Arc<Mutex<Option<Arc<Route>>>>,
    /// One punch at a time: a connection that needs one while another is punching waits, then
    /// takes the route that punch leaves.
    punching: Arc<AsyncMutex<()>>,
    /// Our relay, for when no direct path can be made.
    relay: Option<PublicKey>,
    /// Go through a relay every time.
    force_relay: bool,
    relay_clients: Arc<RelayClients>,
    /// When a connection last found that only a relay gets through.
    relayed_since: Arc<Mutex<Option<Instant>>>,
    /// Forgets what depended on our address when it changes.
    _on_move: AbortOnDrop,
    /// Moves so far, counted once forgotten.
    moved: watch::Receiver<u64>,
    /// What our handshakes offer beyond one stream of bytes.
    features: Features,
}

tokio::task_local! {
    /// Set while a connection is opened to resume a session ([`Connector::open_resuming`]):
    /// its handshake names the `resume` feature. A task-local rather than a parameter, as every
    /// way of opening (a route, a punch, the DHT) starts the same handshake.
    static RESUMING: ();
}

/// Whether the connection being opened on this task resumes a session.
fn resuming() -> bool {
    RESUMING.try_with(|_| ()).is_ok()
}

/// A background task that ends with its owner.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
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
        let route = Arc::default();
        let relayed_since = Arc::default();
        let (moved_tx, moved) = watch::channel(0);
        let on_move = forget_on_move(
            &node,
            Arc::clone(&route),
            Arc::clone(&relayed_since),
            moved_tx,
        );
        let connector = Connector {
            node,
            key_pair,
            remote,
            relays: AsyncMutex::new(Vec::new()),
            route,
            punching: Arc::default(),
            relay: None,
            force_relay: false,
            relay_clients: Arc::new(RelayClients::new(network, relay_dialer())),
            relayed_since,
            _on_move: on_move,
            moved,
            features: Features::default(),
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

    /// Offers multiplexing in every handshake: a sharer that offers it too expects
    /// [`crate::mux`] frames on the connections, not raw bytes. Multiplexed sessions offer
    /// roaming too ([`crate::roaming`]).
    pub(crate) fn multiplexed(mut self) -> Self {
        self.features = Features::MUX;
        self
    }

    /// Counts our moves, each once the routes that depended on the old address are forgotten
    /// (so a connection opened on hearing of it takes a fresh path).
    pub(crate) fn moves(&self) -> watch::Receiver<u64> {
        self.moved.clone()
    }

    /// Forgets the punched route: a session that stalled on the path to the sharer says the
    /// route is gone too, and trying it first would cost its retries (about 2 s).
    pub(crate) fn forget_punched_route(&self) {
        lock(&self.route).take();
    }

    /// Opens a connection whose handshake asks to resume an earlier session
    /// ([`crate::roaming`]) instead of starting one, within `limit`.
    pub(crate) async fn open_resuming(&self, limit: Duration) -> Result<(PeerStream, Link, Path)> {
        RESUMING.scope((), self.open_link_within(limit)).await
    }

    /// The DHT nodes that hold the announcement of `remote`.
    async fn lookup(&self) -> Result<Vec<Ipv4Peer>> {
        attempt::enter(Stage::Lookup);
        let target = hash(self.remote.as_bytes());
        let not_found = |nodes| Error::PeerNotFound {
            key: self.remote,
            nodes,
        };
        let replies =
            tokio::time::timeout(LOOKUP_TIMEOUT, self.node.handle().query_find_peer(target))
                .await
                .map_err(|_| not_found(0))??;
        let asked = replies.len();
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
            return Err(not_found(asked));
        }
        Ok(relays)
    }

    /// Opens one encrypted connection to the sharer: the most direct path that works, a relay
    /// only where no other gets through. It ends within 45 s: with the connection, or with an
    /// error that says what was tried and at which stage it failed.
    pub async fn connect(&self) -> Result<Connection> {
        let (peer, path) = self.open_with_path().await?;
        Ok(Connection::new(peer, path))
    }

    /// Opens one encrypted connection to the sharer, as the secret stream itself (what
    /// [`crate::pipe`] moves without another copy), and says how its packets travel.
    pub(crate) async fn open_with_path(&self) -> Result<(PeerStream, Path)> {
        self.open_within(ATTEMPT_TIMEOUT).await
    }

    /// [`Self::open_with_path`], given up after `limit` (at most [`ATTEMPT_TIMEOUT`]).
    pub(crate) async fn open_within(&self, limit: Duration) -> Result<(PeerStream, Path)> {
        let (peer, _, path) = self.open_link_within(limit).await?;
        Ok((peer, path))
    }

    /// [`Connector::open_link`], given at most `limit`.
    pub(crate) async fn open_link_within(
        &self,
        limit: Duration,
    ) -> Result<(PeerStream, Link, Path)> {
        attempt::bounded(limit.min(ATTEMPT_TIMEOUT), self.try_open_link()).await
    }

    /// Opens one encrypted connection to the sharer: the stream, what carries it, and how.
    pub(crate) async fn open_link(&self) -> Result<(PeerStream, Link, Path)> {
        attempt::bounded(ATTEMPT_TIMEOUT, self.try_open_link()).await
    }

    async fn try_open_link(&self) -> Result<(PeerStream, Link, Path)> {
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
            // On a hard pair our relay is named now, so that the sharer pairs there at once.
            let ours = self.relay_first_offer().await;
            let ask = ours.map_or(Ask::Direct, Ask::RelayFirst);
            let mut answer = self.handshake(&ask).await?;
            let decision = self.decide(&answer).await;
            let waiting = answer.waiting.take();
            attempt::enter(match decision {
                Decision::Punch => Stage::Punch,
                Decision::Dial(_) | Decision::Wait => Stage::DataPath,
            });
            let opened = match decision {
                Decision::Dial(addr) => {
                    let stream = match waiting {
                        Some(s) => s,
                        None => self.node.socket().create_stream(answer.local_id)?,
                    };
                    debug!(%addr, "dialling the sharer");
                    stream.connect(answer.remote_id, addr)?;
                    secure(true, stream, &answer.hs, Path::Direct, Some(addr))
                        .await
                        .map(|(peer, link)| (peer, link, Path::Direct))
                }
                Decision::Wait => {
                    // The policy waits only when we said we are reachable, and then the
                    // handshake made the stream.
                    let Some(stream) = waiting else {
                        unreachable!("Decision::Wait without a waiting stream");
                    };
                    debug!("waiting for the sharer to reach us");
                    stream.connect_on_first_packet(answer.remote_id);
                    secure(true, stream, &answer.hs, Path::Direct, None)
                        .await
                        .map(|(peer, link)| (peer, link, Path::Direct))
                }
                Decision::Punch => {
                    if let Some(plan) = self.relay_first_plan(&answer, ours).await {
                        match self.open_relay_first(&answer, plan).await {
                            Ok(opened) => return Ok(opened),
                            Err(e) => {
                                debug!(error = %e, "the relay did not carry the connection; punching first");
                            }
                        }
                    }
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
        Err(Error::HolepunchFailed {
            ours: self.our_firewall(),
            theirs: Firewall::Unknown,
            failure: PunchFailure::RouteStopped,
        })
    }

    /// How this connection reaches the sharer: what we know, handed to the policy.
    async fn decide(&self, answer: &Answer) -> Decision {
        let (our_public, our_local) = self.node.own_addresses().await;
        let remote = &answer.remote;
        client_path(&Answered {
            sharer_open: remote.firewall == FIREWALL_OPEN,
            relayed: answer.relayed,
            we_wait: answer.waiting.is_some(),
            holepunchable: remote
                .holepunch
                .as_ref()
                .is_some_and(|h| !h.relays.is_empty()),
            seen: answer.server_address,
            advertised: &remote.addresses4,
            our_public,
            our_local: &our_local,
        })
    }
    /// How many times our address changed since the connector started (what depends on the
    /// old address, such as a connection made from it, may be dead).
    pub(crate) fn moves_so_far(&self) -> u64 {
        *self.moved.borrow()
    }

    /// Stops the DHT node.
    pub async fn close(self) {
        self.node.destroy().await;
    }
}

/// When our address changes, the hole we punched from the old one leads nowhere (the sharer's
/// end answers only the old mapping), and the NATs may now allow what needed a relay: forget
/// both, so the next connection finds out afresh instead of failing on them first. Whether we
/// are reachable is found out again too.
fn forget_on_move(
    node: &DhtNode,
    route: Arc<Mutex<Option<Arc<Route>>>>,
    relayed_since: Arc<Mutex<Option<Instant>>>,
    moved: watch::Sender<u64>,
) -> AbortOnDrop {
    let mut moves = watch_moves(node.handle().clone(), node.known().clone());
    let reachability = node.reachability();
    AbortOnDrop(tokio::spawn(async move {
        while moves.changed().await.is_ok() {
            let had_route = lock(&route).take().is_some();
            let was_relayed = lock(&relayed_since).take().is_some();
            info!(
                had_route,
                was_relayed, "we moved: forgot the punched route and the relay decision"
            );
            reachability.recheck();
            moved.send_modify(|n| *n += 1);
        }
    }))
}

/// Whether a failure to open a connection is one a relay gets around: no hole could be
/// punched, or no packet got through on the path we tried.
fn needs_relay(e: &Error) -> bool {
    matches!(
        e,
        Error::RelayNeeded { .. } | Error::HolepunchFailed { .. } | Error::NoDataPath { .. }
    )
}

/// What a handshake asks the sharer for.
enum Ask {
    /// Whatever path works best.
    Direct,
    /// A connection through a relay: the sharer must wait for us there, not dial us. Names our
    /// relay, if we have one.
    Relay(Option<RelayOffer>),
    /// Whatever path works best, starting on our relay while a punch goes on (a hard pair of
    /// NATs): names it, and says what we know of our NAT as [`Ask::Direct`] does.
    RelayFirst(RelayOffer),
}

/// Opens connections to relays for a [`RelayClients`]: each on a DHT node of its own, so its
/// socket carries only the relay's traffic, whatever the connection it serves does on its own.
pub(crate) fn relay_dialer() -> DialRelay {
    Arc::new(|network, relay| {
        Box::pin(async move {
            let key_pair = KeyPair::generate();
            let our_key = key_pair.public_key();
            let connector = Connector::new(&network, key_pair, relay).await?;
            // Boxed: opening a connection may itself come here (to the relay of a relay).
            let (stream, link, path) = Box::pin(connector.open_link()).await?;
            Ok(RelayConnection {
                stream,
                link,
                path,
                our_key,
                close: Box::pin(connector.close()),
            })
        })
    })
}
