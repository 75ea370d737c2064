//! The server's side of a punch (server.js): answer the client's rounds through the DHT
//! node, and punch back when the client asks.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use peeroxide_dht::hyperdht_messages::{
    encode_holepunch_msg_to_bytes, HolepunchMessage, HolepunchPayload, ERROR_ABORTED, ERROR_NONE,
    ERROR_TRY_LATER, MODE_FROM_SERVER,
};
use peeroxide_dht::messages::Ipv4Peer;
use peeroxide_dht::secure_payload::SecurePayload;
use tokio::sync::{mpsc, watch, Semaphore};
use tracing::{debug, info, warn};

use super::{aborted, encrypt, peers, NoPunch, Puncher};
use crate::addr::to_socket_addr;
use crate::error::Result;
use crate::lock::lock;
use crate::nat::Firewall;
use crate::punch_socket::RpcRequest;

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
        random_punches: Arc<Semaphore>,
    ) -> Result<ServerPunch> {
        let puncher =
            Puncher::new(false, bind, nodes, Some(requests), Some(random_punches)).await?;
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
            payload: encrypt(&self.secure, payload)?,
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
        let feasible = p.analyze().await;
        if let (false, Err(why)) = (p.remote_punching(), feasible) {
            info!(
                ours = p.nat.firewall().describe(),
                theirs = p.remote_firewall().describe(),
                "cannot punch: {}",
                why.describe()
            );
            return self.abort(client, why.describe());
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
            match p.punch().await {
                Ok(()) => {}
                Err(NoPunch::Impossible(why)) => return self.abort(client, why.describe()),
                Err(NoPunch::Busy) => {
                    warn!(
                        "a punch through a randomising NAT is already running for another client; told this one to try later"
                    );
                    p.stop();
                    let round = *lock(&self.round);
                    return self.reply(&aborted(round, ERROR_TRY_LATER), client);
                }
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
