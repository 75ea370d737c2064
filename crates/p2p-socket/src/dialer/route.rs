//! Punching to the sharer, and the punched hole kept for the next connections: their
//! handshakes go straight through it instead of through the DHT, and need no new punch
//! (hyperdht's reusable socket route).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use peeroxide_dht::crypto::hash;
use peeroxide_dht::hyperdht_messages::{
    decode_handshake_from_bytes, MODE_FROM_CLIENT, MODE_REPLY, PEER_HANDSHAKE,
};

use super::{attempt, Answer, Ask, Connector};
use crate::dht::next_stream_id;
use crate::error::{Error, HandshakeFailure, PunchFailure, Result, Stage};
use crate::handshake::message;
use crate::holepunch::{punch_to_server, ClientPunch};
use crate::lock::lock;
use crate::nat::Firewall;
use crate::peer::{secure, Link, Path, PeerStream};
use crate::punch_socket::{PunchSocket, RpcMessage};

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

/// A hole punched to the sharer, kept for the next connections: their handshakes go straight
/// through it instead of through the DHT, and need no new punch (hyperdht's reusable socket
/// route).
pub(super) struct Route {
    socket: PunchSocket,
    server: SocketAddr,
    keepalive: tokio::task::JoinHandle<()>,
}

impl Route {
    pub(super) fn new(socket: PunchSocket, server: SocketAddr) -> Route {
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

    pub(super) fn alive(&self) -> bool {
        self.socket.last_heard().elapsed() < ROUTE_DEAD_AFTER
    }
}

impl Drop for Route {
    fn drop(&mut self) {
        self.keepalive.abort();
    }
}

impl Connector {
    pub(super) fn live_route(&self) -> Option<Arc<Route>> {
        let route = lock(&self.route);
        route.as_ref().filter(|r| r.alive()).cloned()
    }

    pub(super) fn forget_route(&self, dead: &Arc<Route>) {
        let mut route = lock(&self.route);
        if route.as_ref().is_some_and(|r| Arc::ptr_eq(r, dead)) {
            *route = None;
        }
    }
    /// A connection through a hole punched earlier: the handshake goes straight to the
    /// sharer's end of it, which answers and connects at once.
    pub(super) async fn open_on_route(&self, route: &Route) -> Result<(PeerStream, Link)> {
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
            .map_err(|e| Error::HandshakeFailed {
                via: vec![route.server],
                failure: HandshakeFailure::NoReply,
                source: Some(Box::new(e)),
            })?;
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
            .ok_or_else(|| Error::HandshakeFailed {
                via: vec![route.server],
                failure: HandshakeFailure::BadReply,
                source: None,
            })?;
        let (_, remote_id, hs) = self.finish_handshake(nw, &answer.noise, &[route.server])?;
        stream.connect(remote_id, route.server)?;
        secure(true, stream, &hs, Path::Punched, Some(route.server)).await
    }

    pub(super) async fn punch(&self, answer: &Answer) -> Result<(PeerStream, Link)> {
        let holepunch = answer
            .remote
            .holepunch
            .as_ref()
            .ok_or(Error::HolepunchFailed {
                ours: self.our_firewall(),
                theirs: Firewall::from_wire(answer.remote.firewall),
                failure: PunchFailure::NotOffered,
            })?;
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
        attempt::enter(Stage::DataPath);
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
        secure(true, stream, &answer.hs, Path::Punched, Some(addr)).await
    }
}
