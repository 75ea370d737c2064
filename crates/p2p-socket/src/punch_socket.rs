//! A UDP socket of our own for hole punching (hyperdht's socket pool): it carries UDX streams
//! like the DHT's socket, and speaks just enough of the DHT's RPC (dht-rpc) for punching —
//! pings that tell us where a DHT node sees this socket, PEER_HOLEPUNCH rounds through a DHT
//! node, and PEER_HANDSHAKE requests a peer sends straight to a socket it already punched
//! through to. The DHT node itself (peeroxide-dht) never sees this socket's traffic: its
//! datagram channel is ours.
//!
//! One-byte datagrams are punch probes (hyperdht sends `[0]`; dht-rpc ignores anything shorter
//! than two bytes), everything else is decoded as a dht-rpc message.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use peeroxide_dht::messages::{
    decode_message, encode_request_to_bytes, encode_response_to_bytes, Message, Request, Response,
};
use tokio::sync::{mpsc, oneshot};
use tracing::trace;

use crate::addr::{ipv4_peer, to_socket_addr};
use crate::error::{Error, Result};
use crate::lock::lock;

/// What a punch probe carries (hyperdht's `HOLEPUNCH`).
const PROBE: [u8; 1] = [0];
/// TTL of the probes that only open our own NAT's mapping and should die before they reach the
/// other side's NAT (hyperdht's `HOLEPUNCH_TTL`): an unsolicited packet arriving there could
/// make that NAT pick a different port for its own side of the punch.
const LOW_TTL: u32 = 5;

/// A dht-rpc message to send: the command and its payload.
#[derive(Debug, Clone)]
pub(crate) struct RpcMessage {
    internal: bool,
    command: u64,
    target: Option<[u8; 32]>,
    value: Option<Vec<u8>>,
}

impl RpcMessage {
    /// One of dht-rpc's own commands (PING, PING_NAT, ...).
    pub(crate) fn internal(command: u64, value: Option<Vec<u8>>) -> Self {
        RpcMessage {
            internal: true,
            command,
            target: None,
            value,
        }
    }

    /// A hyperdht command (PEER_HANDSHAKE, PEER_HOLEPUNCH) about `target`.
    pub(crate) fn user(command: u64, target: [u8; 32], value: Vec<u8>) -> Self {
        RpcMessage {
            internal: false,
            command,
            target: Some(target),
            value: Some(value),
        }
    }
}

/// An answer to one of our requests.
#[derive(Debug, Clone)]
pub(crate) struct RpcReply {
    /// Who answered.
    pub(crate) from: SocketAddr,
    /// Where the answering node saw this socket (its NAT mapping towards that node).
    pub(crate) to: Option<SocketAddr>,
    pub(crate) error: u64,
    pub(crate) value: Option<Vec<u8>>,
}

/// A request that arrived on a punch socket.
pub(crate) struct RpcRequest {
    pub(crate) socket: PunchSocket,
    pub(crate) from: SocketAddr,
    pub(crate) tid: u16,
    pub(crate) internal: bool,
    pub(crate) command: u64,
    pub(crate) target: Option<[u8; 32]>,
    pub(crate) value: Option<Vec<u8>>,
}

impl RpcRequest {
    /// Answers the request from the socket it arrived on.
    pub(crate) fn reply(&self, value: Option<Vec<u8>>) {
        let res = Response {
            tid: self.tid,
            to: ipv4_peer(self.from),
            id: None,
            token: None,
            closer_nodes: Vec::new(),
            error: 0,
            value,
        };
        match encode_response_to_bytes(&res) {
            Ok(bytes) => self.socket.send(&bytes, self.from),
            Err(e) => trace!(error = %e, "cannot encode a reply"),
        }
    }
}

/// A punch probe that arrived: on which of the listener's sockets (the index it registered
/// with) and from where.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProbeHit {
    pub(crate) index: usize,
    pub(crate) from: SocketAddr,
}

/// One punch socket. Cheap to clone; the socket closes when the last clone and the last stream
/// on it are gone.
#[derive(Clone)]
pub(crate) struct PunchSocket(Arc<State>);

struct State {
    socket: udx::UdxSocket,
    local: SocketAddr,
    pending: Mutex<HashMap<u16, Expected>>,
    probes: Mutex<Option<(mpsc::UnboundedSender<ProbeHit>, usize)>>,
    echo: AtomicBool,
    requests: Mutex<Option<mpsc::UnboundedSender<RpcRequest>>>,
    last_heard: Mutex<Instant>,
}

/// A request in flight: who must answer it, and where the answer goes.
struct Expected {
    from: SocketAddr,
    reply: oneshot::Sender<RpcReply>,
}

/// How many random transaction ids to draw before giving up on finding one that no request in
/// flight on the socket uses. We keep a handful in flight out of 65,536, so a second draw is
/// already rare; the cap only bounds the loop.
const TID_DRAWS: usize = 64;

/// Transaction ids are random, not sequential: anyone who can send to this socket could
/// otherwise guess the id of the next request and answer it first. With the source check
/// (answers count only from the address asked), a forger must both spoof that address and
/// hit one id in 65,536.
fn random_tid() -> u16 {
    rand::random()
}

/// The same address, whether written as IPv4 or as IPv6-mapped IPv4.
fn same_addr(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
}

impl PunchSocket {
    /// Binds `n` sockets at once (the birthday approach's).
    pub(crate) async fn bind_many(ip: IpAddr, n: usize) -> Result<Vec<PunchSocket>> {
        let mut sockets = Vec::with_capacity(n);
        for _ in 0..n {
            sockets.push(Self::bind(ip).await?);
        }
        Ok(sockets)
    }

    /// Binds a fresh socket on `ip` (any port) and starts reading it.
    pub(crate) async fn bind(ip: IpAddr) -> Result<PunchSocket> {
        let addr = SocketAddr::new(ip, 0);
        let socket = udx::UdxSocket::bind(addr).await.map_err(|e| Error::Bind {
            addr: addr.to_string(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let local = socket.local_addr()?;
        let datagrams = socket.take_datagrams();
        let state = Arc::new(State {
            socket,
            local,
            pending: Mutex::new(HashMap::new()),
            probes: Mutex::new(None),
            echo: AtomicBool::new(false),
            requests: Mutex::new(None),
            last_heard: Mutex::new(Instant::now()),
        });
        tokio::spawn(read_loop(Arc::downgrade(&state), datagrams));
        Ok(PunchSocket(state))
    }

    pub(crate) fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.0.local)
    }

    /// The transport socket, for the streams of connections punched through it.
    pub(crate) fn udx(&self) -> &udx::UdxSocket {
        &self.0.socket
    }

    /// When this socket last received anything but a stream packet.
    pub(crate) fn last_heard(&self) -> Instant {
        *lock(&self.0.last_heard)
    }

    /// Streams registered on this socket (open ones and ones still finishing).
    pub(crate) fn stream_count(&self) -> usize {
        self.0.socket.stream_count()
    }

    pub(crate) fn same(&self, other: &PunchSocket) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    fn send(&self, data: &[u8], to: SocketAddr) {
        if let Err(e) = self.0.socket.send_to(data, to) {
            trace!(%to, error = %e, "send failed");
        }
    }

    /// Sends one punch probe. A low-TTL probe opens our NAT's mapping towards `to` and dies on
    /// the way, so that the other side's NAT never sees it.
    pub(crate) fn probe(&self, to: SocketAddr, low_ttl: bool) {
        if low_ttl {
            let normal = self.0.socket.ttl().unwrap_or(64);
            if self.0.socket.set_ttl(LOW_TTL).is_ok() {
                self.send(&PROBE, to);
                let _ = self.0.socket.set_ttl(normal);
                return;
            }
        }
        self.send(&PROBE, to);
    }

    /// Reports every probe that arrives to `tx`, tagged with `index`.
    pub(crate) fn on_probe(&self, tx: mpsc::UnboundedSender<ProbeHit>, index: usize) {
        *lock(&self.0.probes) = Some((tx, index));
    }

    /// Answers every probe with a probe (the side that does not initiate does: its answer is what
    /// tells the initiator which of its sockets got through).
    pub(crate) fn set_echo(&self, echo: bool) {
        self.0.echo.store(echo, Ordering::Relaxed);
    }

    /// Hands every request that arrives to `tx`.
    pub(crate) fn on_requests(&self, tx: mpsc::UnboundedSender<RpcRequest>) {
        *lock(&self.0.requests) = Some(tx);
    }

    fn encode(&self, tid: u16, to: SocketAddr, msg: &RpcMessage) -> Option<Vec<u8>> {
        let req = Request {
            tid,
            to: ipv4_peer(to),
            id: None,
            token: None,
            internal: msg.internal,
            command: msg.command,
            target: msg.target,
            value: msg.value.clone(),
        };
        encode_request_to_bytes(&req).ok()
    }

    /// A fresh transaction id whose answer from `from`, arriving on this socket, comes out of
    /// the receiver (until the guard is dropped). Answers from anywhere else are ignored.
    fn expect_reply(
        &self,
        from: SocketAddr,
    ) -> Result<(u16, oneshot::Receiver<RpcReply>, PendingGuard<'_>), RpcError> {
        let (tx, rx) = oneshot::channel();
        let mut pending = lock(&self.0.pending);
        let tid = (0..TID_DRAWS)
            .map(|_| random_tid())
            .find(|tid| !pending.contains_key(tid))
            .ok_or(RpcError::Busy)?;
        pending.insert(tid, Expected { from, reply: tx });
        Ok((
            tid,
            rx,
            PendingGuard {
                state: &self.0,
                tid,
            },
        ))
    }

    /// Sends `msg` to `to` and waits for the answer: `tries` times, `timeout` each (dht-rpc
    /// resends with the same transaction id, so a late answer to an earlier try still counts).
    pub(crate) async fn request(
        &self,
        to: SocketAddr,
        msg: RpcMessage,
        timeout: Duration,
        tries: u32,
    ) -> Result<RpcReply, RpcError> {
        let (tid, mut rx, _cleanup) = self.expect_reply(to)?;
        let bytes = self.encode(tid, to, &msg).ok_or(RpcError::Encode)?;
        for _ in 0..tries.max(1) {
            self.send(&bytes, to);
            match tokio::time::timeout(timeout, &mut rx).await {
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(_)) => return Err(RpcError::Closed),
                Err(_) => continue,
            }
        }
        Err(RpcError::Timeout)
    }

    /// Sends `msg` to `to` once, expecting no answer here.
    pub(crate) fn send_request(&self, to: SocketAddr, msg: &RpcMessage) {
        if let Some(bytes) = self.encode(random_tid(), to, msg) {
            self.send(&bytes, to);
        }
    }

    /// Sends `msg` to `to` from `asker`, and waits for the answer on this socket instead (for
    /// requests whose answer the other node sends to another port: PING_NAT). The answer must
    /// still come from `to`.
    pub(crate) async fn expect_reply_to(
        self,
        asker: PunchSocket,
        to: SocketAddr,
        msg: RpcMessage,
    ) -> Result<RpcReply, RpcError> {
        let (tid, rx, _cleanup) = self.expect_reply(to)?;
        let bytes = asker.encode(tid, to, &msg).ok_or(RpcError::Encode)?;
        asker.send(&bytes, to);
        rx.await.map_err(|_| RpcError::Closed)
    }
}

/// Forgets a request's transaction id when its caller stops waiting, however that happens.
struct PendingGuard<'a> {
    state: &'a State,
    tid: u16,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        lock(&self.state.pending).remove(&self.tid);
    }
}

/// Why a request on a punch socket got no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RpcError {
    #[error("no answer")]
    Timeout,
    #[error("the socket closed")]
    Closed,
    #[error("the request could not be encoded")]
    Encode,
    #[error("no free transaction id on the socket")]
    Busy,
}

async fn read_loop(state: Weak<State>, mut datagrams: udx::DatagramReceiver) {
    while let Some(datagram) = datagrams.recv().await {
        let Some(state) = state.upgrade() else {
            return;
        };
        *lock(&state.last_heard) = Instant::now();
        if datagram.data.len() <= 1 {
            on_probe(&state, datagram.addr);
            continue;
        }
        match decode_message(&datagram.data) {
            Ok(Message::Response(res)) => {
                let expected = {
                    let mut pending = lock(&state.pending);
                    match pending.get(&res.tid) {
                        Some(e) if same_addr(e.from, datagram.addr) => pending.remove(&res.tid),
                        Some(e) => {
                            trace!(from = %datagram.addr, asked = %e.from, "an answer from an address not asked; ignored");
                            None
                        }
                        None => None,
                    }
                };
                if let Some(Expected { reply, .. }) = expected {
                    let _ = reply.send(RpcReply {
                        from: datagram.addr,
                        to: to_socket_addr(&res.to),
                        error: res.error,
                        value: res.value,
                    });
                }
            }
            Ok(Message::Request(req)) => {
                let requests = lock(&state.requests).clone();
                if let Some(tx) = requests {
                    let _ = tx.send(RpcRequest {
                        socket: PunchSocket(Arc::clone(&state)),
                        from: datagram.addr,
                        tid: req.tid,
                        internal: req.internal,
                        command: req.command,
                        target: req.target,
                        value: req.value,
                    });
                }
            }
            Err(_) => trace!(from = %datagram.addr, "ignoring an undecodable datagram"),
        }
    }
}

fn on_probe(state: &Arc<State>, from: SocketAddr) {
    trace!(%from, local = %state.local, "punch probe");
    if state.echo.load(Ordering::Relaxed) {
        if let Err(e) = state.socket.send_to(&PROBE, from) {
            trace!(%from, error = %e, "echo failed");
        }
    }
    if let Some((tx, index)) = lock(&state.probes).as_ref() {
        let _ = tx.send(ProbeHit {
            index: *index,
            from,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use tokio::net::UdpSocket;

    const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
    const WAIT: Duration = Duration::from_secs(5);

    async fn udp() -> (UdpSocket, SocketAddr) {
        let s = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
        let a = s.local_addr().unwrap();
        (s, a)
    }

    /// The transaction id of the next request `node` receives.
    async fn next_request_tid(node: &UdpSocket) -> u16 {
        let mut buf = [0u8; 2048];
        let (n, _) = tokio::time::timeout(WAIT, node.recv_from(&mut buf))
            .await
            .expect("a request in time")
            .unwrap();
        match decode_message(&buf[..n]) {
            Ok(Message::Request(req)) => req.tid,
            other => panic!("not a request: {other:?}"),
        }
    }

    fn response(tid: u16, to: SocketAddr, value: &[u8]) -> Vec<u8> {
        encode_response_to_bytes(&Response {
            tid,
            to: ipv4_peer(to),
            id: None,
            token: None,
            closer_nodes: Vec::new(),
            error: 0,
            value: Some(value.to_vec()),
        })
        .unwrap()
    }

    #[tokio::test]
    async fn an_answer_counts_only_from_the_address_asked() {
        let socket = PunchSocket::bind(LOCALHOST).await.unwrap();
        let local = socket.local_addr().unwrap();
        let (node, node_addr) = udp().await;
        let (forger, _) = udp().await;
        let asking = {
            let socket = socket.clone();
            tokio::spawn(async move {
                socket
                    .request(node_addr, RpcMessage::internal(0, None), WAIT, 1)
                    .await
            })
        };
        let tid = next_request_tid(&node).await;
        // The forger knows the id (the worst case) but sends from its own address.
        for _ in 0..10 {
            forger
                .send_to(&response(tid, local, b"forged"), local)
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!asking.is_finished(), "a forged answer was taken");
        node.send_to(&response(tid, local, b"real"), local)
            .await
            .unwrap();
        let reply = asking.await.unwrap().expect("the real answer");
        assert_eq!(reply.from, node_addr);
        assert_eq!(reply.value.as_deref(), Some(&b"real"[..]));
        assert!(
            lock(&socket.0.pending).is_empty(),
            "the request is forgotten"
        );
    }

    #[tokio::test]
    async fn transaction_ids_are_not_sequential() {
        let socket = PunchSocket::bind(LOCALHOST).await.unwrap();
        let (node, node_addr) = udp().await;
        let mut tids = Vec::new();
        for _ in 0..100 {
            socket.send_request(node_addr, &RpcMessage::internal(0, None));
            tids.push(next_request_tid(&node).await);
        }
        let steps = tids
            .windows(2)
            .filter(|w| w[1] == w[0].wrapping_add(1))
            .count();
        // Random 16-bit ids follow each other by chance about once in 65,536 pairs.
        assert!(
            steps < 5,
            "{steps} of 99 ids were the previous one plus one: {tids:?}"
        );
    }
}
