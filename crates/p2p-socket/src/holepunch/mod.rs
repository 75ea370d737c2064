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
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use peeroxide_dht::hyperdht_messages::{HolepunchPayload, ERROR_NONE};
use peeroxide_dht::messages::Ipv4Peer;
use peeroxide_dht::secure_payload::SecurePayload;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tracing::debug;

use crate::addr::{ipv4_peer, to_socket_addr_any_port};
use crate::error::Result;
use crate::lock::lock;
use crate::nat::{Firewall, NatProbe};
use crate::punch_socket::{ProbeHit, PunchSocket, RpcRequest};

mod client;
mod plan;
mod probes;
mod server;

pub(crate) use client::{punch_to_server, ClientPunch};
use plan::{feasible, plan, NoPlan, Plan};
use probes::{birthday_keepalive, consistent_probes, random_probes};
pub(crate) use server::ServerPunch;

/// Sockets the random side opens for the birthday approach (hyperdht's `BIRTHDAY_SOCKETS`).
pub(crate) const BIRTHDAY_SOCKETS: usize = 256;

/// The addresses of the other side we probe at most (a NAT has one or two; hyperdht lists
/// its few). The rest of a longer list is ignored.
const MAX_REMOTE_ADDRESSES: usize = 8;

/// How long NAT sampling may take before a round is answered with what is known.
const ANALYZE_WAIT: Duration = Duration::from_secs(3);
/// How long either side keeps punching before it gives up.
pub(crate) const PUNCH_TIME: Duration = Duration::from_secs(25);
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
    punch_result: tokio::sync::Mutex<Option<Result<(), NoPunch>>>,
    /// The server's one punch through a randomising NAT at a time; `None` on the client.
    random_punches: Option<Arc<Semaphore>>,
}

/// Why a punch does not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoPunch {
    /// No plan fits the two NATs.
    Impossible(NoPlan),
    /// A punch through a randomising NAT is already running for another client (the other
    /// side is told to try later, as Node's hyperdht does).
    Busy,
}

impl Puncher {
    /// Binds the main punch socket and starts sampling its NAT against `nodes`. On the server
    /// side, `requests` receives the DHT requests that arrive on any of its sockets.
    ///
    /// A server passes `random_punches`, shared by all its punches: a punch with a randomising
    /// NAT on either side needs its permit for as long as it probes.
    pub(crate) async fn new(
        initiator: bool,
        bind: IpAddr,
        nodes: Vec<SocketAddr>,
        requests: Option<mpsc::UnboundedSender<RpcRequest>>,
        random_punches: Option<Arc<Semaphore>>,
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
            random_punches,
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
            // A peer may list any number of addresses, made up or not: we probe a few.
            .take(MAX_REMOTE_ADDRESSES)
            .map(|a| {
                let v = verified == Some(a.ip()) || before.contains(&a.ip());
                (a, v)
            })
            .collect();
        remote.firewall = Some(Firewall::from_wire(firewall));
        remote.punching = punching;
    }

    /// Waits for our NAT verdict, and says whether punching can work with it.
    async fn analyze(&self) -> Result<(), NoPlan> {
        let ours = self.nat.analyzed(ANALYZE_WAIT).await;
        feasible(ours, self.remote_firewall())
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

    /// Starts punching (once; later calls return the first call's answer), unless the two
    /// NATs cannot be punched with what we know, or the server is busy with another punch
    /// through a randomising NAT.
    pub(crate) async fn punch(self: &Arc<Self>) -> Result<(), NoPunch> {
        let mut result = self.punch_result.lock().await;
        if let Some(r) = *result {
            return r;
        }
        let r = self.start_punching().await;
        *result = Some(r);
        r
    }

    async fn start_punching(self: &Arc<Self>) -> Result<(), NoPunch> {
        let ours = self.nat.firewall();
        let theirs = self.remote_firewall();
        let addresses = lock(&self.remote).addresses.clone();
        let plan = plan(ours, theirs, &addresses).map_err(NoPunch::Impossible)?;
        let permit = match (&self.random_punches, plan.is_random()) {
            (Some(limit), true) => Some(
                Arc::clone(limit)
                    .try_acquire_owned()
                    .map_err(|_| NoPunch::Busy)?,
            ),
            _ => None,
        };
        self.nat.freeze();
        debug!(
            ours = ours.describe(),
            theirs = theirs.describe(),
            initiator = self.initiator,
            ?plan,
            "punching"
        );
        let stop = self.stopped();
        let probing = match plan {
            Plan::Probe(addresses) => {
                tokio::spawn(consistent_probes(self.main(), addresses, stop));
                return Ok(());
            }
            Plan::Spray(host) => tokio::spawn(random_probes(self.main(), host, stop)),
            Plan::Birthday(to) => {
                self.open_birthday_sockets(to).await;
                let sockets = lock(&self.sockets).clone();
                tokio::spawn(birthday_keepalive(sockets, to, stop))
            }
        };
        tokio::spawn(release_when_done(probing, Arc::downgrade(self), permit));
        Ok(())
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
        // Chosen before probing stops: stopping lets the extra sockets go.
        let winner = {
            let mut sockets = lock(&self.sockets);
            let winner = sockets.get(index).cloned();
            if let Some(w) = &winner {
                *sockets = vec![w.clone()];
            }
            winner
        };
        self.stop();
        winner
    }
}

/// Once a random punch's probing is over (it won, it was stopped, or its time ran out), its
/// extra sockets close and the next random punch may start: the descriptors a sharer holds for
/// random punches stay at one set of [`BIRTHDAY_SOCKETS`].
async fn release_when_done(
    probing: tokio::task::JoinHandle<()>,
    puncher: Weak<Puncher>,
    permit: Option<OwnedSemaphorePermit>,
) {
    let _ = probing.await;
    if let Some(puncher) = puncher.upgrade() {
        // After a win only the winner is left; otherwise the main socket stays for late rounds.
        lock(&puncher.sockets).truncate(1);
    }
    drop(permit);
}

impl Drop for Puncher {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

fn peers(addrs: Option<Vec<SocketAddr>>) -> Option<Vec<Ipv4Peer>> {
    addrs.map(|a| a.into_iter().map(ipv4_peer).collect())
}

/// Our round, encrypted; `None` only if it does not encode (it is ours, a few hundred bytes).
fn encrypt(secure: &SecurePayload, payload: &HolepunchPayload) -> Option<Vec<u8>> {
    secure.encrypt(payload).ok()
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

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::addr::ipv4_peer;

    /// A sharer's puncher whose NAT was seen at a new port by every DHT node, facing a client
    /// behind a consistent NAT at a confirmed address: a birthday punch.
    async fn random_server_punch(limit: &Arc<Semaphore>) -> Arc<Puncher> {
        let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let puncher = Puncher::new(false, localhost, Vec::new(), None, Some(Arc::clone(limit)))
            .await
            .unwrap();
        for i in 0..4 {
            let seen = SocketAddr::new(localhost, 40_000 + i);
            let node = SocketAddr::from(([127, 0, 0, 2], 50_000 + i));
            puncher.nat.add(seen, node);
        }
        assert_eq!(puncher.nat.firewall(), Firewall::Random);
        // The discard port: the probes of the test go nowhere.
        let client = SocketAddr::new(localhost, 9);
        puncher.update_remote(
            true,
            Firewall::Consistent.wire(),
            Some(&[ipv4_peer(client)]),
            Some(client.ip()),
        );
        puncher
    }

    #[tokio::test]
    async fn a_peer_listing_many_addresses_gets_a_few_probed() {
        let puncher = Puncher::new(
            true,
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            Vec::new(),
            None,
            None,
        )
        .await
        .unwrap();
        let listed: Vec<Ipv4Peer> = (0..1000)
            .map(|i| {
                ipv4_peer(SocketAddr::from((
                    [10, 0, (i / 250) as u8, (i % 250) as u8],
                    9,
                )))
            })
            .collect();
        puncher.update_remote(true, Firewall::Consistent.wire(), Some(&listed), None);
        assert_eq!(lock(&puncher.remote).addresses.len(), MAX_REMOTE_ADDRESSES);
    }

    #[tokio::test]
    async fn a_sharer_punches_through_a_random_nat_for_one_client_at_a_time() {
        let limit = Arc::new(Semaphore::new(1));
        let first = random_server_punch(&limit).await;
        assert_eq!(first.punch().await, Ok(()));
        assert_eq!(lock(&first.sockets).len(), BIRTHDAY_SOCKETS);

        // A second client is told to try later, and costs no sockets beyond the main one.
        let second = random_server_punch(&limit).await;
        assert_eq!(second.punch().await, Err(NoPunch::Busy));
        assert_eq!(lock(&second.sockets).len(), 1);

        // Once the first punch stops, its birthday sockets close and the next may start.
        first.stop();
        for _ in 0..200 {
            if limit.available_permits() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(limit.available_permits(), 1, "the permit came back");
        assert_eq!(lock(&first.sockets).len(), 1, "the birthday sockets closed");
        let third = random_server_punch(&limit).await;
        assert_eq!(third.punch().await, Ok(()));
    }
}
