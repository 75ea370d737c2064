//! The client's side of a punch (connect.js): the probe round through the DHT node, then the
//! punch round, then waiting for the first probe that gets through.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use peeroxide_dht::hyperdht_messages::{
    decode_holepunch_msg_from_bytes, encode_holepunch_msg_to_bytes, HolepunchInfo,
    HolepunchMessage, HolepunchPayload, ERROR_ABORTED, ERROR_NONE, ERROR_TRY_LATER,
    MODE_FROM_CLIENT, MODE_REPLY, PEER_HOLEPUNCH,
};
use peeroxide_dht::secure_payload::SecurePayload;
use tracing::info;

use super::{aborted, encrypt, feasible, our_round, NoPlan, NoPunch, Puncher, PUNCH_TIME};
use crate::addr::{ipv4_peer, to_socket_addr};
use crate::error::{Error, PunchFailure, Result};
use crate::nat::Firewall;
use crate::punch_socket::{PunchSocket, RpcMessage};

/// One holepunch round through a DHT node: how long each try waits, and how many tries. The
/// server answers once its NAT sampling settled (up to [`ANALYZE_WAIT`]).
const ROUND_TIMEOUT: Duration = Duration::from_millis(1500);
const ROUND_TRIES: u32 = 3;
/// After a server that does not know its NAT yet answered, give its sampling this long.
const REMOTE_UNKNOWN_PAUSE: Duration = Duration::from_secs(1);
/// How long a punch may take from its first round to the first probe back: the rounds, then
/// the punching itself.
pub(crate) const PUNCH_WAIT: Duration = Duration::from_secs(PUNCH_TIME.as_secs() + 5);

/// The error for a punch that cannot be done: two randomising NATs need a relay, anything else
/// is `failure`.
fn cannot_punch(ours: Firewall, theirs: Firewall, failure: PunchFailure) -> Error {
    if feasible(ours, theirs) == Err(NoPlan::BothRandom) {
        Error::RelayNeeded { ours, theirs }
    } else {
        Error::HolepunchFailed {
            ours,
            theirs,
            failure,
        }
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

/// A punch that failed at `failure`, with the NATs as `puncher` knows them now.
fn punch_failed(puncher: &Puncher, failure: PunchFailure) -> Error {
    Error::HolepunchFailed {
        ours: puncher.nat.firewall(),
        theirs: puncher.remote_firewall(),
        failure,
    }
}

struct Client<'a> {
    p: &'a ClientPunch<'a>,
    puncher: Arc<Puncher>,
    secure: SecurePayload,
    /// Rounds sent so far (read from outside while the rounds run, for the error).
    rounds: &'a AtomicU64,
}

impl Client<'_> {
    fn failed(&self, failure: PunchFailure) -> Error {
        punch_failed(&self.puncher, failure)
    }

    /// Sends one round to the server through `via`, addressed to the server at `peer`.
    async fn round(
        &mut self,
        peer: SocketAddr,
        via: SocketAddr,
        mut payload: HolepunchPayload,
    ) -> Result<RoundReply> {
        payload.round = self.rounds.fetch_add(1, Ordering::Relaxed);
        let msg = HolepunchMessage {
            mode: MODE_FROM_CLIENT,
            id: self.p.holepunch.id,
            payload: encrypt(&self.secure, &payload)
                .ok_or_else(|| self.failed(PunchFailure::CannotEncode))?,
            peer_address: Some(ipv4_peer(peer)),
        };
        let bytes = encode_holepunch_msg_to_bytes(&msg)
            .map_err(|_| self.failed(PunchFailure::CannotEncode))?;
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
            .map_err(|_| {
                self.failed(PunchFailure::RoundNotPassed {
                    via,
                    tries: ROUND_TRIES,
                })
            })?;
        let hp = reply
            .value
            .as_deref()
            .and_then(|v| decode_holepunch_msg_from_bytes(v).ok())
            .filter(|hp| reply.error == 0 && hp.mode == MODE_REPLY && reply.from == via)
            .ok_or_else(|| self.failed(PunchFailure::BadReply { via }))?;
        let remote = self
            .secure
            .decrypt(&hp.payload)
            .map_err(|_| self.failed(PunchFailure::Undecryptable))?;
        if remote.error == ERROR_TRY_LATER {
            return Err(self.failed(PunchFailure::TryLater));
        }
        if remote.error != ERROR_NONE {
            return Err(self.failed(PunchFailure::Aborted { code: remote.error }));
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
        let payload = aborted(self.rounds.load(Ordering::Relaxed), ERROR_ABORTED);
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
            let stable = self.puncher.analyze().await.is_ok();
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
                        PunchFailure::Unclassified {
                            samples: self.puncher.nat.sampled(),
                        },
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
        .ok_or(Error::HolepunchFailed {
            ours: Firewall::Unknown,
            theirs: p.remote_firewall,
            failure: PunchFailure::NotOffered,
        })?;

    let puncher = Puncher::new(true, p.bind, p.nodes.clone(), None, None).await?;
    puncher.update_remote(false, p.remote_firewall.wire(), None, None);
    let mut hits = puncher
        .take_hits()
        .expect("a new puncher's probes are not taken yet");
    let rounds_sent = AtomicU64::new(0);
    let mut client = Client {
        p,
        puncher: Arc::clone(&puncher),
        secure: SecurePayload::new(p.secret),
        rounds: &rounds_sent,
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
            return Err(client.failed(PunchFailure::Declined));
        }
        if let Err(no) = client.puncher.punch().await {
            let ours = client.puncher.nat.firewall();
            let theirs = client.puncher.remote_firewall();
            let why = match no {
                NoPunch::Impossible(why) => why.describe(),
                // A client punches once: it never waits for a permit.
                NoPunch::Busy => "busy",
            };
            return Err(cannot_punch(ours, theirs, PunchFailure::NoPlan { why }));
        }
        Ok::<(), Error>(())
    };
    let deadline = tokio::time::sleep(PUNCH_WAIT);
    tokio::pin!(deadline);
    tokio::pin!(rounds);
    let mut rounds_done = false;
    let hit = loop {
        tokio::select! {
            hit = hits.recv() => match hit {
                Some(hit) => break hit,
                None => return Err(punch_failed(&puncher, PunchFailure::SocketsClosed)),
            },
            r = &mut rounds, if !rounds_done => {
                r?;
                rounds_done = true;
            }
            _ = &mut deadline => {
                puncher.stop();
                return Err(punch_failed(&puncher, PunchFailure::NoProbeBack {
                    rounds: rounds_sent.load(Ordering::Relaxed),
                    waited: PUNCH_WAIT,
                }));
            }
        }
    };
    let socket = puncher
        .keep_only(hit.index)
        .ok_or_else(|| punch_failed(&puncher, PunchFailure::SocketsClosed))?;
    info!(
        to = %hit.from,
        ours = puncher.nat.firewall().describe(),
        theirs = puncher.remote_firewall().describe(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "punched through"
    );
    Ok((socket, hit.from))
}
