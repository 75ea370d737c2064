//! Answering a handshake: read the client's half, decide with the policy how the connection
//! will find the client (and whether to offer a punch or a relay), answer, and set up the
//! connection's stream.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use peeroxide_dht::hyperdht_messages::{
    HandshakeMessage, HolepunchInfo, NoisePayload, FIREWALL_OPEN, MODE_FROM_CLIENT,
    MODE_FROM_SERVER, MODE_REPLY,
};
use peeroxide_dht::messages::Ipv4Peer;
use tracing::{debug, info, warn};

use super::accept::{serve_connection, DataPath, Roam, Via};
use super::firewall::Verdict;
use super::{Server, Session, HANDSHAKE_MEMORY, MAX_RECENT, MAX_SESSIONS};
use crate::addr::to_socket_addr;
use crate::dht::next_stream_id;
use crate::error::Result;
use crate::handshake::{check_remote, message, our_payload};
use crate::holepunch::ServerPunch;
use crate::identity::PublicKey;
use crate::nat::Firewall;
use crate::noise_session::{Keys, Noise};
use crate::peer::{Acceptor, Path};
use crate::policy::{
    dial_address, punch_offer, relay_choice, server_path, sharer_firewall, PunchOffer, RelayOffer,
    RelayPlan, ServerPath,
};
use crate::punch_socket::PunchSocket;
use crate::relay::client::token;

/// Where a handshake reached us.
#[derive(Clone)]
pub(super) enum Arrival {
    /// Through the DHT (relayed by a node, or sent straight to our DHT socket).
    Dht,
    /// Straight to a socket we punched earlier, from the client on the other end of it.
    Punched(PunchSocket),
}

/// What a handshake told us about the client.
struct Client<'a> {
    arrival: &'a Arrival,
    path: ServerPath,
    /// Where it was seen.
    seen: SocketAddr,
    payload: &'a NoisePayload,
    local_id: u32,
    remote_id: u32,
}

impl Server {
    pub(super) async fn on_handshake(
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
        match self.check_allowed(&msg.noise) {
            Verdict::Admit => {}
            Verdict::Ignore => return None,
            Verdict::Refuse(noise) => {
                let reply = answer(&msg, noise, peer_address);
                self.remember(msg.noise, now, reply.clone());
                return Some(reply);
            }
        }
        let Ok(permit) = Arc::clone(&self.connections).try_acquire_owned() else {
            warn!(
                max = self.max_connections,
                "refusing a connection: this many are open already, the most at once; new ones are answered again once some close"
            );
            return None;
        };

        let mut nw = Noise::responder(self.key_pair.to_noise(), self.features);
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
        let seen = peer_address.as_ref().unwrap_or(&from);
        let Some(seen) = to_socket_addr(seen) else {
            debug!("ignoring a handshake from an address we cannot send to");
            return None;
        };
        let local_id = next_stream_id();
        let open = self.node.is_open();
        let path = server_path(direct, remote.firewall == FIREWALL_OPEN);
        let relays = self.relays.borrow().clone();
        let offer = punch_offer(
            open,
            path,
            !relays.is_empty(),
            self.sessions.len() >= MAX_SESSIONS,
        );
        if offer == PunchOffer::Full {
            warn!("too many hole punches in progress; this client can only dial us directly");
        }
        let session_id = (offer == PunchOffer::Offer).then(|| {
            let id = self.next_session;
            self.next_session = self.next_session.wrapping_add(1);
            id
        });
        let holepunch = session_id.map(|id| HolepunchInfo { id, relays });
        // A client we wait for may need a relay to reach us.
        let relay = (path == ServerPath::AwaitClient)
            .then(|| {
                let ours = self.relay.map(|relay| RelayOffer {
                    relay,
                    token: token(),
                });
                let theirs = remote.relay_through.as_ref().map(RelayOffer::from_wire);
                relay_choice(ours, theirs, true)
            })
            .flatten();
        let mut payload = our_payload(
            local_id,
            self.node.reachable_addresses().await,
            sharer_firewall(open, self.node.nat().await),
            holepunch,
        );
        payload.relay_through = relay.filter(|r| r.is_initiator).map(|r| r.offer.to_wire());
        let (noise, hs) = match nw.send(&payload).and_then(|m| Ok((m, nw.finalize()?))) {
            Ok(v) => v,
            Err(e) => {
                warn!(error = %e, "handshake failed");
                return None;
            }
        };
        let reply = answer(&msg, noise, peer_address);

        let client = Client {
            arrival: &arrival,
            path,
            seen,
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
        self.remember(msg.noise, now, reply.clone());

        let n = self.stats.connections.fetch_add(1, Ordering::Relaxed) + 1;
        let peer_key = PublicKey::from(hs.remote_public_key).to_string();
        info!(connection = n, peer = &peer_key[..12], from = %seen, "peer connecting");
        let roam = Roam {
            sessions: Arc::clone(&self.roaming),
            client_stream: remote_id,
            our_stream: local_id,
        };
        tokio::spawn(serve_connection(
            n,
            data_path,
            hs,
            roam,
            Arc::clone(&self.handler),
            self.routes_tx.clone(),
            Arc::clone(&self.relay_clients),
            permit,
        ));
        Some(reply)
    }

    /// Keeps our answer to a handshake for its repeats; a flood of fresh ones forgets the oldest.
    fn remember(&mut self, noise: Vec<u8>, now: Instant, reply: Vec<u8>) {
        if self.recent.len() >= MAX_RECENT {
            if let Some(oldest) = self
                .recent
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(k, _)| k.clone())
            {
                self.recent.remove(&oldest);
            }
        }
        self.recent.insert(noise, (now, reply));
    }

    /// Sets up the stream of a new connection: aimed at the client when it can be dialled or
    /// sent us the handshake itself, listening on our sockets otherwise.
    async fn data_path(
        &mut self,
        client: &Client<'_>,
        session_id: Option<u64>,
        hs: &Keys,
        relay: Option<RelayPlan>,
    ) -> Result<DataPath> {
        let (socket, arrived_on) = match client.arrival {
            Arrival::Dht => (self.node.socket().clone(), Path::Direct),
            Arrival::Punched(s) => (s.udx().clone(), Path::Punched),
        };
        let (local_id, remote_id) = (client.local_id, client.remote_id);
        match client.path {
            ServerPath::ToSender => {
                let stream = socket.create_stream(local_id)?;
                stream.connect(remote_id, client.seen)?;
                return Ok(DataPath::Connected(stream, arrived_on));
            }
            ServerPath::DialClient => {
                let (our_public, our_local) = self.node.own_addresses().await;
                let addr = dial_address(
                    client.seen,
                    &client.payload.addresses4,
                    our_public,
                    &our_local,
                );
                let stream = socket.create_stream(local_id)?;
                stream.connect(remote_id, addr)?;
                return Ok(DataPath::Connected(stream, Path::Direct));
            }
            ServerPath::AwaitClient => {}
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
                        Firewall::from_wire(client.payload.firewall),
                        self.requests_tx.clone(),
                        Arc::clone(&self.random_punches),
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

/// Our half of the handshake, sent the way the request came: straight back to a client that
/// asked us directly, or back through the DHT node that forwarded it (router.js's FROM_SERVER).
fn answer(msg: &HandshakeMessage, noise: Vec<u8>, peer_address: Option<Ipv4Peer>) -> Vec<u8> {
    if msg.mode == MODE_FROM_CLIENT {
        message(MODE_REPLY, noise, None)
    } else {
        message(MODE_FROM_SERVER, noise, peer_address)
    }
}
