//! Staying findable: announcing our key on the DHT, and keeping the nodes that hold the
//! announcement (and so forward handshakes to us) within reach.

use std::time::{Duration, Instant};

use peeroxide_dht::hyperdht::HyperDhtHandle;
use peeroxide_dht::hyperdht_messages::RelayInfo;
use peeroxide_dht::messages::Ipv4Peer;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::addr::to_socket_addr;
use crate::address_watch::watch_moves;
use crate::dht::{KnownNodes, Reachability};
use crate::error::{Error, Result};

/// DHT records expire (hyperdht keeps announcements for 20 minutes), and the nodes closest to
/// our key change as nodes come and go; announcing again well inside that keeps us findable.
const REANNOUNCE_EVERY: Duration = Duration::from_secs(4 * 60);

/// How often we ping the DHT nodes that hold our announcement. Behind a NAT this keeps the
/// mappings they forward handshakes through open (UDP mappings live 30 s or more), and their
/// answers say where they see us, which clients need for punching (hyperdht pings every 3 s).
const RELAY_KEEPALIVE_EVERY: Duration = Duration::from_secs(5);
const RELAY_PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Announces us and returns the DHT nodes closest to our key.
pub(super) async fn announce(
    dht: &HyperDhtHandle,
    target: [u8; 32],
    kp: &peeroxide_dht::hyperdht::KeyPair,
) -> Result<Vec<Ipv4Peer>> {
    // The nodes that stored our last announcement forward handshakes to us; listing them in
    // the record lets a client skip part of the lookup.
    let relays: Vec<Ipv4Peer> = dht.current_relay_addresses();
    let result = dht.announce(target, kp, &relays).await?;
    if result.closest_nodes.is_empty() {
        return Err(Error::Dht {
            doing: "announcing",
            source: "no DHT node accepted the announcement; the network may be unreachable".into(),
        });
    }
    debug!(nodes = result.closest_nodes.len(), "announcement stored");
    Ok(result.closest_nodes)
}

/// Pings the DHT nodes that stored our announcement; returns those that answered, each with
/// where it sees us (what a client needs to punch through it).
pub(super) async fn ping_relays(dht: &HyperDhtHandle) -> Vec<RelayInfo> {
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
/// forward handshakes to us) and announces again every few minutes, at once when none of them
/// answers any more, and at once when we moved (the nodes forward handshakes to the address we
/// announced from; `reachability` is then found out again too).
pub(super) async fn keep_announced(
    dht: HyperDhtHandle,
    target: [u8; 32],
    kp: peeroxide_dht::hyperdht::KeyPair,
    known: KnownNodes,
    reachability: Reachability,
    relays: watch::Sender<Vec<RelayInfo>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut moves = watch_moves(dht.clone(), known.clone());
    let mut watching = true;
    let mut last_announce = Instant::now();
    let mut keepalive = tokio::time::interval(RELAY_KEEPALIVE_EVERY);
    keepalive.tick().await;
    loop {
        let moved = tokio::select! {
            _ = stop.changed() => return,
            _ = keepalive.tick() => false,
            changed = moves.changed(), if watching => {
                watching = changed.is_ok();
                watching
            }
        };
        if moved {
            info!("we moved: announcing again from the new address");
            reachability.recheck();
        }
        let mut fresh = ping_relays(&dht).await;
        let lost = fresh.is_empty() && !relays.borrow().is_empty();
        if lost {
            warn!("none of the DHT nodes holding our announcement answers; announcing again");
        }
        if lost || moved || last_announce.elapsed() >= REANNOUNCE_EVERY {
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
