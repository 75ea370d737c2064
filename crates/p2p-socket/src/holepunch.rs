//! Hole punching, wire-compatible with Node hyperdht (`holepuncher.js` and the PEER_HOLEPUNCH
//! rounds of `connect.js` / `server.js`).
//!
//! After the handshake, both sides know a secret (`holepunch_secret`) and the client knows a DHT
//! node that can pass messages to the server. Through it they exchange encrypted rounds: a probe
//! round in which each side tells the other what its NAT does (judged by sampling its punch
//! socket's public address from DHT nodes) and where it can be reached, then a punch round after
//! which both send probes at each other until one gets through:
//!
//! - two consistent (cone) NATs: each sends to the other's public address; the first probe out
//!   opens its own NAT for the answer.
//! - consistent and random (symmetric): the random side cannot know the port its NAT will pick,
//!   so it opens [`BIRTHDAY_SOCKETS`] sockets, each sending a low-TTL probe towards the other
//!   side (opening as many mappings in its own NAT) while the consistent side sprays probes at
//!   random ports of the random side's host until one hits an open mapping (the birthday
//!   paradox makes that quick).
//! - two random NATs: neither side can predict anything; it cannot work and we say so at once.
//!
//! The initiator (client) decides: the first probe it receives names the socket and address the
//! connection's stream goes to. The other side answers every probe it gets, and attaches the
//! stream to whichever socket the client's first stream packet reaches.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use peeroxide_dht::hyperdht_messages::{
    decode_holepunch_msg_from_bytes, encode_holepunch_msg_to_bytes, HolepunchInfo,
    HolepunchMessage, HolepunchPayload, ERROR_ABORTED, ERROR_NONE, ERROR_TRY_LATER,
    MODE_FROM_CLIENT, MODE_FROM_SERVER, MODE_REPLY, PEER_HOLEPUNCH,
};
use peeroxide_dht::messages::Ipv4Peer;
use peeroxide_dht::secure_payload::SecurePayload;
use rand::seq::SliceRandom;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info};

use crate::addr::{ipv4_peer, to_socket_addr, to_socket_addr_any_port};
use crate::error::{Error, Result};
use crate::lock::lock;
use crate::nat::{Firewall, NatProbe};
use crate::punch_socket::{ProbeHit, PunchSocket, RpcMessage, RpcRequest};

/// Sockets the random side opens for the birthday approach (hyperdht's `BIRTHDAY_SOCKETS`).
pub(crate) const BIRTHDAY_SOCKETS: usize = 256;

/// How long NAT sampling may take before a round is answered with what is known.
const ANALYZE_WAIT: Duration = Duration::from_secs(3);
/// Interval and count of the probes to a consistent NAT. Faster than hyperdht's 1 s: the first
/// probes usually die in the other NAT until its side has sent too, and 200 ms is what we then
/// lose; probes are one byte.
const CONSISTENT_TICK: Duration = Duration::from_millis(200);
const CONSISTENT_TICKS: u32 = 50;
/// Probes sprayed at random ports: a burst every interval. With 256 mappings open on the other
/// side a probe hits with p ≈ 1/250; at 500 probes a second half the punches succeed within
/// 0.35 s and 99 % within 2.5 s (hyperdht sends 50 a second: 3.5 s and 23 s). 500 one-byte
/// datagrams a second is still a trickle.
const RANDOM_BURST: usize = 5;
const RANDOM_BURST_EVERY: Duration = Duration::from_millis(10);
/// How long either side keeps punching before it gives up.
pub(crate) const PUNCH_TIME: Duration = Duration::from_secs(25);
/// Interval of the random side's rounds over its birthday sockets (keeping their mappings open).
const BIRTHDAY_KEEPALIVE_EVERY: Duration = Duration::from_millis(20);
/// One holepunch round through a DHT node: how long each try waits, and how many tries. The
/// server answers once its NAT sampling settled (up to [`ANALYZE_WAIT`]).
const ROUND_TIMEOUT: Duration = Duration::from_millis(1500);
const ROUND_TRIES: u32 = 3;
/// After a server that does not know its NAT yet answered, give its sampling this long.
const REMOTE_UNKNOWN_PAUSE: Duration = Duration::from_secs(1);

/// What the other side said about itself.
#[derive(Debug, Default)]
struct Remote {
    firewall: Option<Firewall>,
    /// Its addresses, each with whether the DHT node that relayed its token confirmed the host.
    addresses: Vec<(SocketAddr, bool)>,
    punching: bool,
}

/// The sockets and state of one punch, either side.
pub(crate) struct Puncher {
    /// The client: decides where the stream goes, by the first probe it hears.
    initiator: bool,
    bind: IpAddr,
    sockets: Mutex<Vec<PunchSocket>>,
    nat: NatProbe,
    remote: Mutex<Remote>,
    hits_tx: mpsc::UnboundedSender<ProbeHit>,
    hits: Mutex<Option<mpsc::UnboundedReceiver<ProbeHit>>>,
    requests: Option<mpsc::UnboundedSender<RpcRequest>>,
    stop: watch::Sender<bool>,
    punch_result: tokio::sync::Mutex<Option<bool>>,
}

impl Puncher {
    /// Binds the main punch socket and starts sampling its NAT against `nodes`. On the server
    /// side, `requests` receives the DHT requests that arrive on any of its sockets.
    pub(crate) async fn new(
        initiator: bool,
        bind: IpAddr,
        nodes: Vec<SocketAddr>,
        requests: Option<mpsc::UnboundedSender<RpcRequest>>,
    ) -> Result<Arc<Puncher>> {
        let (hits_tx, hits) = mpsc::unbounded_channel();
        let main = PunchSocket::bind(bind).await?;
        let nat = NatProbe::start(&main, nodes);
        let puncher = Puncher {
            initiator,
            bind,
            sockets: Mutex::new(Vec::new()),
            nat,
            remote: Mutex::new(Remote::default()),
            hits_tx,
            hits: Mutex::new(Some(hits)),
            requests,
            stop: watch::channel(false).0,
            punch_result: tokio::sync::Mutex::new(None),
        };
        puncher.adopt(main);
        Ok(Arc::new(puncher))
    }

    /// Wires a socket up as one of this punch's and returns its index.
    fn adopt(&self, socket: PunchSocket) -> usize {
        let mut sockets = lock(&self.sockets);
        let index = sockets.len();
        // Probes are answered (by the side that does not initiate) where they are taken: first
        // the connection's stream must be listening on the socket that heard one, or the
        // initiator's first stream packet, sent as soon as it hears the answer, finds none.
        socket.on_probe(self.hits_tx.clone(), index);
        if let Some(tx) = &self.requests {
            socket.on_requests(tx.clone());
        }
        sockets.push(socket);
        index
    }

    pub(crate) fn main(&self) -> PunchSocket {
        lock(&self.sockets)[0].clone()
    }

    pub(crate) fn socket(&self, index: usize) -> Option<PunchSocket> {
        lock(&self.sockets).get(index).cloned()
    }

    /// The probes that arrive on any of the punch's sockets (taken once).
    pub(crate) fn take_hits(&self) -> Option<mpsc::UnboundedReceiver<ProbeHit>> {
        lock(&self.hits).take()
    }

    fn remote_firewall(&self) -> Firewall {
        lock(&self.remote).firewall.unwrap_or(Firewall::Unknown)
    }

    fn remote_punching(&self) -> bool {
        lock(&self.remote).punching
    }

    /// Takes in what the other side said. A host counts as verified if the DHT node it came
    /// through echoed our token for it (so the address is not made up), now or before.
    fn update_remote(
        &self,
        punching: bool,
        firewall: u64,
        addresses: Option<&[Ipv4Peer]>,
        verified: Option<IpAddr>,
    ) {
        let mut remote = lock(&self.remote);
        let before: Vec<IpAddr> = remote
            .addresses
            .iter()
            .filter(|(_, v)| *v)
            .map(|(a, _)| a.ip())
            .collect();
        remote.addresses = addresses
            .unwrap_or_default()
            .iter()
            .filter_map(to_socket_addr_any_port)
            .map(|a| {
                let v = verified == Some(a.ip()) || before.contains(&a.ip());
                (a, v)
            })
            .collect();
        remote.firewall = Some(Firewall::from_wire(firewall));
        remote.punching = punching;
    }

    /// Waits for our NAT verdict; false if punching cannot work with it (unknown, or random on
    /// both sides).
    async fn analyze(&self) -> bool {
        let ours = self.nat.analyzed(ANALYZE_WAIT).await;
        let theirs = self.remote_firewall();
        !(ours == Firewall::Unknown || (ours == Firewall::Random && theirs == Firewall::Random))
    }

    /// A low-TTL probe from the main socket: opens our NAT towards `to` (hyperdht's
    /// `openSession`).
    fn open_session(&self, to: SocketAddr) {
        self.main().probe(to, true);
    }

    fn stopped(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Ends all probing.
    pub(crate) fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Starts punching (once; later calls return the first call's answer). False if the two NATs
    /// cannot be punched with what we know.
    pub(crate) async fn punch(self: &Arc<Self>) -> bool {
        let mut result = self.punch_result.lock().await;
        if let Some(r) = *result {
            return r;
        }
        let r = self.start_punching().await;
        *result = Some(r);
        r
    }

    async fn start_punching(self: &Arc<Self>) -> bool {
        let local = self.nat.firewall().coerced();
        let (remote_fw, addresses) = {
            let r = lock(&self.remote);
            (
                r.firewall.unwrap_or(Firewall::Unknown).coerced(),
                r.addresses.clone(),
            )
        };
        if addresses.is_empty() {
            return false;
        }
        self.nat.freeze();
        debug!(
            ours = local.describe(),
            theirs = remote_fw.describe(),
            initiator = self.initiator,
            "punching"
        );
        if local == Firewall::Consistent && remote_fw == Firewall::Consistent {
            tokio::spawn(consistent_probes(self.main(), addresses, self.stopped()));
            return true;
        }
        let Some(verified) = addresses.iter().find(|(_, v)| *v).map(|(a, _)| *a) else {
            debug!("no verified address of the other side: cannot punch a randomising NAT");
            return false;
        };
        if local == Firewall::Consistent && remote_fw == Firewall::Random {
            tokio::spawn(random_probes(self.main(), verified.ip(), self.stopped()));
            return true;
        }
        if local == Firewall::Random && remote_fw == Firewall::Consistent {
            self.open_birthday_sockets(verified).await;
            let sockets = lock(&self.sockets).clone();
            tokio::spawn(birthday_keepalive(sockets, verified, self.stopped()));
            return true;
        }
        false
    }

    async fn open_birthday_sockets(&self, to: SocketAddr) {
        let missing = BIRTHDAY_SOCKETS.saturating_sub(lock(&self.sockets).len());
        match PunchSocket::bind_many(self.bind, missing).await {
            Ok(sockets) => {
                for socket in sockets {
                    socket.probe(to, true);
                    self.adopt(socket);
                }
            }
            Err(e) => debug!(error = %e, "cannot open the birthday sockets"),
        }
    }

    /// Keeps only the socket at `index` (the winner, from now on the main one), stops probing
    /// and lets the others close.
    pub(crate) fn keep_only(&self, index: usize) -> Option<PunchSocket> {
        self.stop();
        let mut sockets = lock(&self.sockets);
        let winner = sockets.get(index).cloned()?;
        *sockets = vec![winner.clone()];
        Some(winner)
    }
}

impl Drop for Puncher {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

fn peers(addrs: Option<Vec<SocketAddr>>) -> Option<Vec<Ipv4Peer>> {
    addrs.map(|a| a.into_iter().map(ipv4_peer).collect())
}

/// Sleeps `d` unless punching stops first; false if it stopped.
async fn pause(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    if *stop.borrow() {
        return false;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => !*stop.borrow(),
        _ = stop.changed() => false,
    }
}

/// Probes to a consistent NAT's addresses. Unverified ones (not confirmed by a DHT node) only
/// every fourth tick, as hyperdht does, so a made-up address gets little traffic from us.
async fn consistent_probes(
    socket: PunchSocket,
    addresses: Vec<(SocketAddr, bool)>,
    mut stop: watch::Receiver<bool>,
) {
    for tick in 0..CONSISTENT_TICKS {
        for (addr, verified) in &addresses {
            if addr.port() != 0 && (*verified || tick % 4 == 0) {
                socket.probe(*addr, false);
            }
        }
        if !pause(&mut stop, CONSISTENT_TICK).await {
            return;
        }
    }
}

/// Probes at random ports of a random NAT's host, hoping to hit one of the mappings its
/// birthday sockets opened towards us. Ports are drawn without repeats: a port that missed
/// once would miss again.
async fn random_probes(socket: PunchSocket, host: IpAddr, mut stop: watch::Receiver<bool>) {
    let mut ports: Vec<u16> = (1000..=u16::MAX).collect();
    ports.shuffle(&mut rand::rng());
    let until = Instant::now() + PUNCH_TIME;
    for burst in ports.chunks(RANDOM_BURST) {
        for port in burst {
            socket.probe(SocketAddr::new(host, *port), false);
        }
        if Instant::now() >= until || !pause(&mut stop, RANDOM_BURST_EVERY).await {
            return;
        }
    }
}

/// The random side keeps its birthday mappings open by sending from each socket in turn; the
/// first round with low TTL (they only need to leave our NAT), later ones reach the other side
/// and also give it a chance to hear us first.
async fn birthday_keepalive(
    sockets: Vec<PunchSocket>,
    to: SocketAddr,
    mut stop: watch::Receiver<bool>,
) {
    if !pause(&mut stop, Duration::from_millis(100)).await {
        return;
    }
    let until = Instant::now() + PUNCH_TIME;
    let mut round = 0;
    while Instant::now() < until {
        for socket in &sockets {
            socket.probe(to, round == 0);
            if !pause(&mut stop, BIRTHDAY_KEEPALIVE_EVERY).await || Instant::now() >= until {
                return;
            }
        }
        round += 1;
    }
}

fn encrypt(secure: &SecurePayload, payload: &HolepunchPayload) -> Result<Vec<u8>> {
    secure
        .encrypt(payload)
        .map_err(|e| Error::HolepunchFailed(format!("cannot encrypt a holepunch round: {e}")))
}

/// A round's payload with our NAT's current verdict and addresses.
fn our_round(puncher: &Puncher, round: u64) -> HolepunchPayload {
    HolepunchPayload {
        error: ERROR_NONE,
        firewall: puncher.nat.firewall().wire(),
        round,
        connected: false,
        punching: false,
        addresses: peers(puncher.nat.addresses()),
        remote_address: None,
        token: None,
        remote_token: None,
    }
}

fn aborted(round: u64, error: u64) -> HolepunchPayload {
    HolepunchPayload {
        error,
        firewall: Firewall::Unknown.wire(),
        round,
        connected: false,
        punching: false,
        addresses: None,
        remote_address: None,
        token: None,
        remote_token: None,
    }
}

// ------------------------------------------------------------------------------ client side

/// The error for a punch that cannot be done: two randomising NATs need a relay, anything else
/// is explained by `why`.
fn cannot_punch(ours: Firewall, theirs: Firewall, why: &str) -> Error {
    if ours == Firewall::Random && theirs == Firewall::Random {
        Error::RelayNeeded(
            "both we and the sharer are behind randomising (symmetric) NATs, which pick a new port for every destination; no hole can be punched between two of them".into(),
        )
    } else {
        Error::HolepunchFailed(why.to_string())
    }
}

/// Where the server can be reached for holepunch rounds: through `relay`, which knows it at
/// `peer` (hyperdht's `{ relayAddress, peerAddress }`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RelayPair {
    pub(crate) relay: SocketAddr,
    pub(crate) peer: SocketAddr,
}

/// What the client knows after the handshake, for punching to the server.
pub(crate) struct ClientPunch<'a> {
    pub(crate) bind: IpAddr,
    pub(crate) nodes: Vec<SocketAddr>,
    pub(crate) target: [u8; 32],
    pub(crate) holepunch: &'a HolepunchInfo,
    /// The DHT node our handshake went through.
    pub(crate) relay: SocketAddr,
    /// Where that node saw the server (the socket it answered the handshake from).
    pub(crate) server_address: SocketAddr,
    pub(crate) remote_firewall: Firewall,
    pub(crate) secret: [u8; 32],
}

/// The reply to one of our rounds, decrypted.
struct RoundReply {
    from: SocketAddr,
    to: Option<SocketAddr>,
    peer_address: SocketAddr,
    payload: HolepunchPayload,
}

struct Client<'a> {
    p: &'a ClientPunch<'a>,
    puncher: Arc<Puncher>,
    secure: SecurePayload,
    round: u64,
}

impl Client<'_> {
    /// Sends one round to the server through `via`, addressed to the server at `peer`.
    async fn round(
        &mut self,
        peer: SocketAddr,
        via: SocketAddr,
        mut payload: HolepunchPayload,
    ) -> Result<RoundReply> {
        payload.round = self.round;
        self.round += 1;
        let msg = HolepunchMessage {
            mode: MODE_FROM_CLIENT,
            id: self.p.holepunch.id,
            payload: encrypt(&self.secure, &payload)?,
            peer_address: Some(ipv4_peer(peer)),
        };
        let bytes = encode_holepunch_msg_to_bytes(&msg)
            .map_err(|e| Error::HolepunchFailed(format!("cannot encode a holepunch round: {e}")))?;
        let reply = self
            .puncher
            .main()
            .request(
                via,
                RpcMessage::user(PEER_HOLEPUNCH, self.p.target, bytes),
                ROUND_TIMEOUT,
                ROUND_TRIES,
            )
            .await
            .map_err(|e| {
                Error::HolepunchFailed(format!(
                    "the DHT node {via} did not pass on our holepunch round ({e}); the sharer may have stopped"
                ))
            })?;
        let hp = reply
            .value
            .as_deref()
            .and_then(|v| decode_holepunch_msg_from_bytes(v).ok())
            .filter(|hp| reply.error == 0 && hp.mode == MODE_REPLY && reply.from == via)
            .ok_or_else(|| {
                Error::HolepunchFailed(format!("the DHT node {via} sent a bad holepunch reply"))
            })?;
        let remote = self.secure.decrypt(&hp.payload).map_err(|_| {
            Error::HolepunchFailed("the sharer's holepunch reply does not decrypt".into())
        })?;
        if remote.error == ERROR_TRY_LATER {
            return Err(Error::HolepunchFailed(
                "the sharer is busy punching through a randomising NAT for someone else and asked us to try later (Node hyperdht allows one such punch at a time); try again in 20 s".into(),
            ));
        }
        if remote.error != ERROR_NONE {
            return Err(Error::HolepunchFailed(format!(
                "the sharer aborted hole punching (error {}): it may be behind a NAT it cannot classify, or behind a randomising NAT like ours",
                remote.error
            )));
        }
        let echoed = payload.token.is_some() && remote.remote_token == payload.token;
        self.puncher.update_remote(
            remote.punching,
            remote.firewall,
            remote.addresses.as_deref(),
            echoed.then_some(peer.ip()),
        );
        Ok(RoundReply {
            from: reply.from,
            to: reply.to,
            peer_address: hp
                .peer_address
                .as_ref()
                .and_then(to_socket_addr)
                .unwrap_or(via),
            payload: remote,
        })
    }

    /// Tells the server we give up, so it stops punching (best effort).
    async fn abort(&mut self, via: RelayPair) {
        let payload = aborted(self.round, ERROR_ABORTED);
        let _ = self.round(via.peer, via.relay, payload).await;
    }

    /// The probe round: learn the server's NAT and addresses, and a token that proves to it
    /// that our later rounds come from where this one did.
    async fn probe_round(
        &mut self,
        server_address: SocketAddr,
        server_relay: RelayPair,
    ) -> Result<([u8; 32], SocketAddr)> {
        let mut may_retry = true;
        loop {
            self.puncher.open_session(server_address);
            let mut payload = our_round(&self.puncher, 0);
            payload.remote_address = Some(ipv4_peer(server_address));
            let reply = self
                .round(server_relay.peer, server_relay.relay, payload)
                .await?;
            if let Some(to) = reply.to {
                self.puncher.nat.add(to, reply.from);
            }
            if self.puncher.remote_firewall() == Firewall::Unknown {
                tokio::time::sleep(REMOTE_UNKNOWN_PAUSE).await;
            }
            let stable = self.puncher.analyze().await;
            let ours = self.puncher.nat.firewall();
            let theirs = self.puncher.remote_firewall();
            match reply.payload.token {
                Some(token) if stable && theirs != Firewall::Unknown => {
                    return Ok((token, reply.peer_address));
                }
                // The server may still have been sampling its NAT: ask once more.
                _ if may_retry
                    && (theirs == Firewall::Unknown || reply.payload.token.is_none()) =>
                {
                    may_retry = false;
                }
                _ => {
                    self.abort(server_relay).await;
                    return Err(cannot_punch(
                        ours,
                        theirs,
                        &format!(
                            "could not classify the NATs (ours: {} after {} DHT node answers, the sharer's: {})",
                            ours.describe(),
                            self.puncher.nat.sampled(),
                            theirs.describe()
                        ),
                    ));
                }
            }
        }
    }
}

/// Punches to the server; returns the socket and the server address the connection's stream
/// goes to (the first that answered a probe).
pub(crate) async fn punch_to_server(p: &ClientPunch<'_>) -> Result<(PunchSocket, SocketAddr)> {
    let relays: Vec<RelayPair> = p
        .holepunch
        .relays
        .iter()
        .filter_map(|r| {
            Some(RelayPair {
                relay: to_socket_addr(&r.relay_address)?,
                peer: to_socket_addr(&r.peer_address)?,
            })
        })
        .collect();
    // The server's relay that is also the node we came through knows both of us best.
    let server_relay = *relays
        .iter()
        .find(|r| r.relay == p.relay)
        .or(relays.first())
        .ok_or_else(|| {
            Error::HolepunchFailed("the sharer offered no DHT node to punch through".into())
        })?;

    let puncher = Puncher::new(true, p.bind, p.nodes.clone(), None).await?;
    puncher.update_remote(false, p.remote_firewall.wire(), None, None);
    let mut hits = puncher
        .take_hits()
        .expect("a new puncher's probes are not taken yet");
    let mut client = Client {
        p,
        puncher: Arc::clone(&puncher),
        secure: SecurePayload::new(p.secret),
        round: 0,
    };
    let started = Instant::now();
    let rounds = async {
        let mut server_address = p.server_address;
        let (token, peer_address) = client.probe_round(server_address, server_relay).await?;
        // When the server's relay is ours, it saw the socket the server punches from (a Node
        // server answers from its punch socket): aim there.
        if server_relay.relay == p.relay && peer_address != server_address {
            server_address = peer_address;
            client.puncher.open_session(server_address);
        }
        client.puncher.nat.freeze();
        let mut payload = our_round(&client.puncher, 0);
        payload.punching = true;
        payload.token = Some(client.secure.token(&server_address.ip().to_string()));
        payload.remote_token = Some(token);
        client.round(server_address, p.relay, payload).await?;
        if !client.puncher.remote_punching() {
            return Err(Error::HolepunchFailed(
                "the sharer declined to punch".into(),
            ));
        }
        if !client.puncher.punch().await {
            let ours = client.puncher.nat.firewall();
            let theirs = client.puncher.remote_firewall();
            return Err(cannot_punch(
                ours,
                theirs,
                &format!(
                    "no way to punch between our {} and the sharer's {} (its address could not be verified)",
                    ours.describe(),
                    theirs.describe()
                ),
            ));
        }
        Ok::<(), Error>(())
    };
    let deadline = tokio::time::sleep(PUNCH_TIME + Duration::from_secs(5));
    tokio::pin!(deadline);
    tokio::pin!(rounds);
    let mut rounds_done = false;
    let hit = loop {
        tokio::select! {
            hit = hits.recv() => match hit {
                Some(hit) => break hit,
                None => return Err(Error::HolepunchFailed("the punch sockets closed".into())),
            },
            r = &mut rounds, if !rounds_done => {
                r?;
                rounds_done = true;
            }
            _ = &mut deadline => {
                let ours = puncher.nat.firewall();
                let theirs = puncher.remote_firewall();
                puncher.stop();
                return Err(Error::HolepunchFailed(format!(
                    "no probe got through within {} s (our {}, the sharer's {}); the NATs may filter more strictly than punching can handle",
                    PUNCH_TIME.as_secs(), ours.describe(), theirs.describe()
                )));
            }
        }
    };
    let socket = puncher
        .keep_only(hit.index)
        .ok_or_else(|| Error::HolepunchFailed("the punched socket is gone".into()))?;
    info!(
        to = %hit.from,
        ours = puncher.nat.firewall().describe(),
        theirs = puncher.remote_firewall().describe(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "punched through"
    );
    Ok((socket, hit.from))
}

// ------------------------------------------------------------------------------ server side

/// One handshake's punch on the server side: answers the client's rounds and punches back.
pub(crate) struct ServerPunch {
    secure: SecurePayload,
    puncher: Arc<Puncher>,
    round: Mutex<u64>,
    /// The DHT nodes holding our announcement: only a token handed out through one of them
    /// verifies the client's address.
    relays: Vec<SocketAddr>,
    punching: watch::Sender<bool>,
}

impl ServerPunch {
    pub(crate) async fn new(
        secret: [u8; 32],
        bind: IpAddr,
        nodes: Vec<SocketAddr>,
        relays: Vec<SocketAddr>,
        remote_firewall: Firewall,
        requests: mpsc::UnboundedSender<RpcRequest>,
    ) -> Result<ServerPunch> {
        let puncher = Puncher::new(false, bind, nodes, Some(requests)).await?;
        puncher.update_remote(false, remote_firewall.wire(), None, None);
        Ok(ServerPunch {
            secure: SecurePayload::new(secret),
            puncher,
            round: Mutex::new(0),
            relays,
            punching: watch::channel(false).0,
        })
    }

    pub(crate) fn puncher(&self) -> &Arc<Puncher> {
        &self.puncher
    }

    /// Becomes true once the client asked us to punch (the connection then gets more time).
    pub(crate) fn punching(&self) -> watch::Receiver<bool> {
        self.punching.subscribe()
    }

    fn reply(&self, payload: &HolepunchPayload, client: &Ipv4Peer) -> Option<Vec<u8>> {
        let msg = HolepunchMessage {
            mode: MODE_FROM_SERVER,
            id: 0,
            payload: encrypt(&self.secure, payload).ok()?,
            peer_address: Some(client.clone()),
        };
        encode_holepunch_msg_to_bytes(&msg).ok()
    }

    fn abort(&self, client: &Ipv4Peer, why: &str) -> Option<Vec<u8>> {
        debug!(why, "aborting a punch");
        self.puncher.stop();
        let round = *lock(&self.round);
        self.reply(&aborted(round, ERROR_ABORTED), client)
    }

    /// Answers one round (`msg`, relayed by `from` for the client at `client`); the answer goes
    /// back the way it came.
    pub(crate) async fn on_round(
        &self,
        msg: &HolepunchMessage,
        from: SocketAddr,
        client: &Ipv4Peer,
    ) -> Option<Vec<u8>> {
        let remote = self.secure.decrypt(&msg.payload).ok()?;
        let client_addr = to_socket_addr(client)?;
        if remote.error != ERROR_NONE {
            debug!(error = remote.error, "the client aborted the punch");
            return self.abort(client, "the client aborted");
        }
        let p = &self.puncher;
        let is_server_relay = self.relays.contains(&from);
        let token = self.secure.token(&client.host);
        let echoed = is_server_relay && remote.remote_token == Some(token);
        {
            let mut round = lock(&self.round);
            if remote.round >= *round {
                *round = remote.round;
                p.update_remote(
                    remote.punching,
                    remote.firewall,
                    remote.addresses.as_deref(),
                    echoed.then_some(client_addr.ip()),
                );
            }
        }
        let stable = p.analyze().await;
        if !p.remote_punching() && !stable {
            let ours = p.nat.firewall();
            let theirs = p.remote_firewall();
            let why = if ours == Firewall::Random && theirs == Firewall::Random {
                "both sides are behind randomising (symmetric) NATs: a relay is needed"
            } else {
                "our NAT could not be classified"
            };
            info!(
                ours = ours.describe(),
                theirs = theirs.describe(),
                "cannot punch: {why}"
            );
            return self.abort(client, why);
        }
        // The client opened its NAT towards one of our addresses: answer at once, so it hears
        // us before its first probe round is even back (hyperdht's fast mode).
        let ours = p.nat.firewall();
        if let Some(remote_address) = remote.remote_address.as_ref().and_then(to_socket_addr) {
            let ours_known = p.nat.addresses().unwrap_or_default();
            if matches!(ours, Firewall::Consistent | Firewall::Open)
                && ours_known.contains(&remote_address)
            {
                p.main().probe(client_addr, false);
            }
        }
        if p.remote_punching() {
            let _ = self.punching.send(true);
            if !p.punch().await {
                return self.abort(client, "no way to punch between these NATs");
            }
        }
        if p.nat.firewall() != Firewall::Unknown {
            p.nat.freeze();
        }
        let round = *lock(&self.round);
        self.reply(
            &HolepunchPayload {
                error: ERROR_NONE,
                firewall: p.nat.firewall().wire(),
                round,
                connected: false,
                punching: p.remote_punching(),
                addresses: peers(p.nat.addresses()),
                remote_address: None,
                token: is_server_relay.then_some(token),
                remote_token: remote.token,
            },
            client,
        )
    }
}
