//! Relay first, punch later (docs/relay.md, "Relay to direct"): on a pair of NATs where the
//! punch takes hundreds of milliseconds (one side randomising: the birthday approach), a
//! connection that has a relay starts on it at once and moves to the punched path when the
//! punch, running in the background, opens. The move is hyperdht's: `change_remote` to the
//! punched socket, wait until everything sent before it is acknowledged there, send the empty
//! message, leave the relay. The sharer follows when our packets arrive on its punched socket:
//! ours into a placeholder there (`listener/upgrade.rs`), a hyperdht server through libudx's
//! `firewall` hook (it is not the punch's initiator, so it never moves first).
//!
//! Whether the pair is hard is decided before punching: the sharer's NAT type when its
//! handshake says it (hyperdht and p2p-socket shares say only open or unknown there), ours from
//! what the DHT nodes reported seeing us at (ports that disagree mean a randomising NAT).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use peeroxide_dht::crypto::hash;
use peeroxide_dht::hyperdht_messages::HolepunchInfo;
use tokio::sync::Mutex as AsyncMutex;
use tracing::{debug, info};
use udx::StreamObserver;

use super::relayed::{secure_relayed, stick_to_relay_if_unpunchable};
use super::route::Route;
use super::{attempt, Answer, Connector};
use crate::error::{Error, Result, Stage};
use crate::holepunch::{punch_to_server, ClientPunch};
use crate::lock::lock;
use crate::nat::Firewall;
use crate::peer::{Link, Path, PeerStream};
use crate::policy::{relay_choice, RelayOffer, RelayPlan};
use crate::relay::client::Lease;

/// Whether a punch between these NATs is slow enough that a relay answers first: either side
/// randomising needs the birthday approach (hundreds of milliseconds), or cannot be punched at
/// all (both). A side we cannot tell about counts as easy.
pub(crate) fn hard_pair(ours: Firewall, theirs: Firewall) -> bool {
    ours == Firewall::Random || theirs == Firewall::Random
}

/// What the punch in the background needs, owned: it outlives the call that opened the
/// connection.
struct LaterPunch {
    bind: IpAddr,
    nodes: Vec<SocketAddr>,
    target: [u8; 32],
    holepunch: HolepunchInfo,
    dht_node: SocketAddr,
    server_address: SocketAddr,
    remote_firewall: Firewall,
    secret: [u8; 32],
    remote_id: u32,
    /// Keep the punched socket for the next connections (the sharer said it reuses sockets).
    reusable: bool,
    route: Arc<Mutex<Option<Arc<Route>>>>,
    punching: Arc<AsyncMutex<()>>,
    relayed_since: Arc<Mutex<Option<Instant>>>,
}

impl Connector {
    /// Our relay, to name in a handshake whose connection may start on it: only when we know
    /// now that the pair is hard (the sharer's own relay, if it has one, wins anyway).
    pub(super) async fn relay_first_offer(&self) -> Option<RelayOffer> {
        if self.force_relay || self.relay.is_none() {
            return None;
        }
        if !hard_pair(self.node.nat().await, Firewall::Unknown) {
            return None;
        }
        self.our_offer()
    }

    /// The relay this connection starts on while the punch goes on in the background, if it
    /// should: a relay is offered (the sharer's in `answer`, or `ours` as our handshake named
    /// it) and the pair is hard.
    pub(super) async fn relay_first_plan(
        &self,
        answer: &Answer,
        ours: Option<RelayOffer>,
    ) -> Option<RelayPlan> {
        answer.remote.holepunch.as_ref()?;
        let plan = relay_choice(answer.sharers_relay(), ours, false)?;
        let (us, them) = (
            self.node.nat().await,
            Firewall::from_wire(answer.remote.firewall),
        );
        if !hard_pair(us, them) {
            return None;
        }
        debug!(ours = %us, theirs = %them, "a hard pair of NATs: starting on the relay, punching meanwhile");
        Some(plan)
    }

    /// Opens the connection `answer` negotiated through the relay of `plan`, with the
    /// connection's own stream id (so that the sharer's packets find it on the punched path
    /// too), and starts the punch that moves it there.
    pub(super) async fn open_relay_first(
        &self,
        answer: &Answer,
        plan: RelayPlan,
    ) -> Result<(PeerStream, Link, Path)> {
        attempt::enter(Stage::Relay);
        let holepunch = answer
            .remote
            .holepunch
            .clone()
            .ok_or_else(|| Error::HolepunchFailed {
                ours: self.our_firewall(),
                theirs: Firewall::from_wire(answer.remote.firewall),
                failure: crate::error::PunchFailure::NotOffered,
            })?;
        let paired = self.pair_at(&plan, Some(answer.local_id)).await?;
        let later = LaterPunch {
            bind: self.node.bind_ip(),
            nodes: self.node.known_nodes(),
            target: hash(self.remote.as_bytes()),
            holepunch,
            dht_node: answer.relay,
            server_address: answer.server_address,
            remote_firewall: Firewall::from_wire(answer.remote.firewall),
            secret: answer.hs.holepunch_secret,
            remote_id: answer.remote_id,
            reusable: answer
                .remote
                .udx
                .as_ref()
                .is_some_and(|u| u.reusable_socket),
            route: Arc::clone(&self.route),
            punching: Arc::clone(&self.punching),
            relayed_since: Arc::clone(&self.relayed_since),
        };
        tokio::spawn(move_to_direct(
            later,
            paired.stream.observer(),
            paired.lease,
        ));
        secure_relayed(paired.stream, paired.relay_addr, answer).await
    }
}

/// Punches in the background (one punch of this connector at a time) and moves the relayed
/// connection to the punched path when it opens. A connection that ended on the relay first
/// lets the pairing go, but the punch goes on: its hole serves the next connections. A punch
/// that fails leaves the connection on the relay, as do the next connections for a while when
/// no hole can be punched at all.
async fn move_to_direct(p: LaterPunch, relayed: StreamObserver, lease: Lease) {
    let punch = async {
        let _turn = p.punching.lock().await;
        // Another connection's punch opened a hole while we waited: the sharer follows a move
        // only onto this connection's own punch, so this one stays on the relay, and the next
        // connections take the hole.
        if lock(&p.route).as_ref().is_some_and(|r| r.alive()) {
            return None;
        }
        Some(
            punch_to_server(&ClientPunch {
                bind: p.bind,
                nodes: p.nodes.clone(),
                target: p.target,
                holepunch: &p.holepunch,
                relay: p.dht_node,
                server_address: p.server_address,
                remote_firewall: p.remote_firewall,
                secret: p.secret,
            })
            .await,
        )
    };
    tokio::pin!(punch);
    let mut lease = Some(lease);
    let punched = loop {
        tokio::select! {
            punched = &mut punch => break punched,
            () = relayed.done(), if lease.is_some() => lease = None,
        }
    };
    let (socket, addr) = match punched {
        Some(Ok(opened)) => opened,
        None => {
            debug!("a hole was punched meanwhile; this connection stays on the relay");
            if let Some(lease) = lease {
                lease.keep_while(&relayed);
            }
            return;
        }
        Some(Err(e)) => {
            debug!(error = %e, "the punch behind a relayed connection failed; it stays on the relay");
            stick_to_relay_if_unpunchable(&p.relayed_since, &e);
            if let Some(lease) = lease {
                lease.keep_while(&relayed);
            }
            return;
        }
    };
    let keep = |socket| {
        if p.reusable {
            *lock(&p.route) = Some(Arc::new(Route::new(socket, addr)));
        }
    };
    let Some(lease) = lease else {
        info!(peer = %addr, "punched after the relayed connection ended; the hole serves the next connections");
        keep(socket);
        return;
    };
    // The sharer follows on our first packet from here; what was in flight is resent here.
    if let Err(e) = relayed.change_remote(socket.udx(), p.remote_id, addr) {
        debug!(error = %e, "cannot move the connection to the punched path; it stays on the relay");
        lease.keep_while(&relayed);
        return;
    }
    if p.reusable {
        keep(socket);
    } else {
        // The punched socket's own reading (probes, keepalives) lives as long as the
        // connection on it.
        let done = relayed.done();
        tokio::spawn(async move {
            done.await;
            drop(socket);
        });
    }
    let completed = lease.confirm_move(&relayed).await;
    info!(peer = %addr, completed, "connection moved to the direct path");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_randomising_side_makes_a_pair_hard() {
        use Firewall::*;
        let table = [
            (Random, Consistent, true),
            (Consistent, Random, true),
            (Random, Random, true),
            (Random, Unknown, true),
            (Consistent, Consistent, false),
            (Open, Consistent, false),
            // Not known is not hard: the punch goes first, as before.
            (Unknown, Unknown, false),
            (Consistent, Unknown, false),
        ];
        for (ours, theirs, hard) in table {
            assert_eq!(hard_pair(ours, theirs), hard, "{ours:?} x {theirs:?}");
        }
    }
}
