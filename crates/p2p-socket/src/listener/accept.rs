//! Waiting for a client's first packet, on every way it may come (the DHT socket, the
//! sockets of a punch, the relay), and serving the connection once it opened.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tracing::{debug, info, warn};
use udx::UdxStream;

use super::upgrade::{follow_to_direct, keep_route, Upgrade};
use super::Handler;
use crate::holepunch::{ServerPunch, PUNCH_TIME};
use crate::noise_session::Keys;
use crate::peer::{secure, Acceptor, Link, Path};
use crate::policy::RelayPlan;
use crate::punch_socket::PunchSocket;
use crate::relay::client::{Lease, RelayClients};
use crate::roaming::{serve_resume, Entry, Sessions};

/// How long a client that got a holepunch offer has to start punching (hyperdht's
/// `HANDSHAKE_INITIAL_TIMEOUT`), and how long an accepted punch may take.
const FIRST_PACKET_TIMEOUT: Duration = Duration::from_secs(10);
pub(super) const PUNCHED_PACKET_TIMEOUT: Duration = Duration::from_secs(PUNCH_TIME.as_secs() + 5);

/// How long a connection offered a relay may take to come through it: a client goes to the
/// relay only after its punch failed (at once between two randomising NATs, after the whole
/// punch otherwise), then connects to the relay if it has no connection there yet.
const RELAYED_PACKET_TIMEOUT: Duration = Duration::from_secs(PUNCHED_PACKET_TIMEOUT.as_secs() + 20);

/// How a new connection's stream finds the client.
pub(super) enum DataPath {
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
pub(super) enum Via {
    Dht,
    /// The punch socket with this index.
    Punch(usize),
    Relay,
}

/// How a connection came in: its stream and path, the punched socket to keep for the client's
/// next connections, the relay pairing to keep while it lasts.
struct Accepted {
    stream: UdxStream,
    path: Path,
    punched: Option<PunchSocket>,
    lease: Option<Lease>,
    /// Came through the relay while a punch goes on: the client may move to a punched path.
    upgrade: Option<Upgrade>,
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
    let (local_id, remote_id) = acceptor.ids();
    let mut pairing = relay.map(|r| {
        let clients = Arc::clone(&relay_clients);
        Box::pin(async move {
            clients
                .pair(
                    r.offer.relay,
                    r.offer.token,
                    r.is_initiator,
                    RELAYED_PACKET_TIMEOUT,
                    Some(local_id),
                )
                .await
        })
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
    let Some((stream, via)) = accepted else {
        // Stopping the punch lets its sockets (and a random punch's turn) go now, not when the
        // session expires.
        if let Some(punch) = &punch {
            punch.puncher().stop();
        }
        return None;
    };
    if via != Via::Relay {
        // Whatever we paired at the relay is not needed: dropping it unpairs.
        drop(lease.take());
    }
    if let (Via::Relay, Some(punch)) = (via, &punch) {
        // A client that named the relay punches as well (hyperdht does both at once) and moves
        // to the punched path if that opens later: the punch goes on, followed from here.
        return Some(Accepted {
            stream,
            path: Path::Relayed,
            punched: None,
            lease,
            upgrade: Some(Upgrade {
                punch: Arc::clone(punch),
                hits,
                local_id,
                remote_id,
                within: PUNCHED_PACKET_TIMEOUT,
            }),
        });
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
        upgrade: None,
    })
}

/// What a connection needs for roaming: the share's sessions, and the connection's stream ids
/// (the client's, ours), kept with its session so that a resume can move it.
pub(super) struct Roam {
    pub(super) sessions: Arc<Sessions<Link>>,
    pub(super) client_stream: u32,
    pub(super) our_stream: u32,
}

/// Serves one connection: waits for its data path, secures it and hands it to `handler`, or,
/// when it resumes an earlier session, moves that session onto its path. The `permit` counts
/// it among the open connections until it ends.
#[allow(clippy::too_many_arguments)]
pub(super) async fn serve_connection(
    n: u64,
    data_path: DataPath,
    hs: Keys,
    roam: Roam,
    handler: Handler,
    routes: mpsc::Sender<PunchSocket>,
    relay_clients: Arc<RelayClients>,
    permit: OwnedSemaphorePermit,
) {
    let _permit = permit;
    let (stream, path, lease, upgrade) = match data_path {
        DataPath::Connected(stream, path) => (stream, path, None, None),
        DataPath::Accepting {
            acceptor,
            punch,
            relay,
        } => match accept(acceptor, punch, relay, relay_clients).await {
            Some(a) => {
                if let Some(socket) = a.punched {
                    keep_route(socket, &routes);
                }
                (a.stream, a.path, a.lease, a.upgrade)
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
    match (lease, upgrade) {
        (Some(lease), Some(upgrade)) => {
            tokio::spawn(follow_to_direct(
                n,
                upgrade,
                stream.observer(),
                lease,
                routes,
            ));
        }
        (Some(lease), None) => lease.keep_while(&stream.observer()),
        (None, _) => {}
    }
    let (peer, link) = match secure(false, stream, &hs, path, remote).await {
        Ok(p) => p,
        Err(e) => {
            warn!(connection = n, error = %e, "connection did not open");
            return;
        }
    };
    if link.features.resume {
        serve_resume(n, peer, link, path, &roam.sessions).await;
        return;
    }
    // Resumable while the connection lasts; not through a relay, which pairs the stream by
    // its ids and cannot follow it elsewhere.
    let roams = path != Path::Relayed;
    let _registration = link.ticket.clone().filter(|_| roams).and_then(|ticket| {
        roam.sessions.register(Entry {
            client: hs.remote_public_key,
            ticket,
            handle: link.clone(),
            client_stream: roam.client_stream,
            our_stream: roam.our_stream,
        })
    });
    handler(n, peer, link, path).await;
}
