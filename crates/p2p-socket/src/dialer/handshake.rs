//! The handshake through the DHT nodes that hold the sharer's announcement: our half, the
//! sharer's answer, and where it says the sharer is.

use std::net::SocketAddr;

use peeroxide_dht::crypto::hash;
use peeroxide_dht::hyperdht_messages::{
    decode_handshake_from_bytes, NoisePayload, ERROR_ABORTED, MODE_FROM_CLIENT, MODE_REPLY,
    PEER_HANDSHAKE,
};
use peeroxide_dht::messages::Ipv4Peer;
use peeroxide_dht::rpc::UserRequestParams;
use tracing::debug;

use super::{attempt, Answer, Ask, Connector};
use crate::addr::to_socket_addr;
use crate::dht::next_stream_id;
use crate::error::{Error, HandshakeFailure, Result, Stage};
use crate::handshake::{check_remote, message, our_payload};
use crate::nat::Firewall;
use crate::noise_session::{Features, Keys, Noise};
use crate::policy::{our_firewall, RelayOffer};

/// How long one DHT node may take to relay our handshake and bring back the answer.
const HANDSHAKE_TIMEOUT_MS: u64 = 3_000;

/// How many of the nodes holding the announcement we ask before giving up on a connection.
const HANDSHAKE_ATTEMPTS: usize = 3;

impl Connector {
    pub(super) fn our_firewall(&self) -> Firewall {
        our_firewall(self.node.is_open())
    }

    /// The Noise handshake, first message and the state to read the answer. A handshake for a
    /// relayed connection names our relay (if we have one) and does not claim we are reachable:
    /// the sharer must wait for us to come through the relay, not dial us.
    pub(super) async fn start_handshake(
        &self,
        local_id: u32,
        ask: &Ask,
    ) -> Result<(Noise, Vec<u8>)> {
        let mut nw = Noise::initiator(
            self.key_pair.to_noise(),
            *self.remote.as_bytes(),
            Features {
                resume: super::resuming(),
                ..self.features
            },
        );
        let (firewall, relay_through) = match ask {
            Ask::Direct => (self.our_firewall(), None),
            Ask::RelayFirst(ours) => (self.our_firewall(), Some(ours.to_wire())),
            Ask::Relay(ours) => (Firewall::Unknown, ours.map(RelayOffer::to_wire)),
        };
        let mut payload = our_payload(
            local_id,
            self.node.reachable_addresses().await,
            firewall,
            None,
        );
        payload.relay_through = relay_through;
        let noise = nw.send(&payload).map_err(|e| Error::HandshakeFailed {
            via: Vec::new(),
            failure: HandshakeFailure::CannotEncode,
            source: Some(e.to_string().into()),
        })?;
        Ok((nw, noise))
    }

    /// Reads the sharer's half of the handshake.
    pub(super) fn finish_handshake(
        &self,
        mut nw: Noise,
        noise: &[u8],
        via: &[SocketAddr],
    ) -> Result<(NoisePayload, u32, Keys)> {
        let bad_answer = |e: String| Error::HandshakeFailed {
            via: via.to_vec(),
            failure: HandshakeFailure::BadAnswer,
            source: Some(e.into()),
        };
        let remote = nw.recv(noise).map_err(|e| bad_answer(e.to_string()))?;
        // A server that refuses our key answers with ABORTED (ours and Node's allow lists
        // do); any other error is a protocol mismatch.
        if remote.error == ERROR_ABORTED {
            return Err(Error::Refused {
                client: self.key_pair.public_key(),
            });
        }
        let remote_id = check_remote(&remote).map_err(|problem| Error::Incompatible { problem })?;
        let hs = nw.finalize().map_err(|e| bad_answer(e.to_string()))?;
        Ok((remote, remote_id, hs))
    }

    /// The handshake through the DHT nodes holding the announcement (searching again if those
    /// we know fail).
    pub(super) async fn handshake(&self, ask: &Ask) -> Result<Answer> {
        let relays = self.relays.lock().await.clone();
        match self.handshake_via(&relays, ask).await {
            Err(why @ Error::HandshakeFailed { .. }) => {
                // The announcement may have moved (the sharer restarted, nodes churned).
                debug!(%why, "cached DHT nodes failed; searching again");
                let fresh = self.lookup().await?;
                *self.relays.lock().await = fresh.clone();
                self.handshake_via(&fresh, ask).await
            }
            other => other,
        }
    }

    pub(super) async fn handshake_via(&self, relays: &[Ipv4Peer], ask: &Ask) -> Result<Answer> {
        attempt::enter(Stage::Handshake);
        let target = hash(self.remote.as_bytes());
        let local_id = next_stream_id();
        let waiting = if matches!(ask, Ask::Direct) && self.our_firewall() == Firewall::Open {
            Some(self.node.socket().create_stream(local_id)?)
        } else {
            None
        };
        let (nw, noise) = self.start_handshake(local_id, ask).await?;
        let request = message(MODE_FROM_CLIENT, noise, None);

        let mut via: Vec<SocketAddr> = Vec::new();
        let mut failed = (HandshakeFailure::NoNode, None);
        for relay in relays.iter().take(HANDSHAKE_ATTEMPTS) {
            let Some(relay_addr) = to_socket_addr(relay) else {
                failed = (HandshakeFailure::BadAddress, None);
                continue;
            };
            via.push(relay_addr);
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
                    failed = (HandshakeFailure::NoReply, Some(Box::new(e) as _));
                    continue;
                }
            };
            let reply = match res.value.as_deref().map(decode_handshake_from_bytes) {
                Some(Ok(m)) if m.mode == MODE_REPLY && !m.noise.is_empty() => m,
                _ => {
                    failed = (HandshakeFailure::BadReply, None);
                    continue;
                }
            };
            let (remote, remote_id, hs) = self.finish_handshake(nw, &reply.noise, &via)?;
            // A relayed answer names the address the relaying node saw the sharer at; a direct
            // one came from the sharer itself.
            let relayed = reply.peer_address.is_some();
            let server_address = match reply.peer_address.as_ref() {
                Some(p) => to_socket_addr(p).ok_or_else(|| Error::HandshakeFailed {
                    via: via.clone(),
                    failure: HandshakeFailure::BadAddress,
                    source: None,
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
        let (failure, source) = failed;
        Err(Error::HandshakeFailed {
            via,
            failure,
            source,
        })
    }
}
