//! UDP over the tunnel, wire-compatible with holesail's UDP mode: every local UDP client (told
//! apart by its source address) gets a flow of its own, one encrypted connection to the sharer,
//! on which its datagrams travel framed ([`frame`]). The sharer gives each flow its own UDP
//! socket towards the service, so the service's answers find their way back to the client that
//! asked.
//!
//! Everything a flow holds is bounded by [`UdpLimits`], not by what peers or local programs
//! send: flows at once, datagrams waiting per flow (more are dropped and counted), datagram size
//! ([`frame::MAX_DATAGRAM`]), and how long a quiet flow lives.

pub(crate) mod frame;

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::dialer::Connector;
use crate::listener::Handler;
use crate::peer::{Path, PeerStream};
use frame::{Decoder, FrameError, MAX_DATAGRAM};

/// How long a flow that ends politely waits for its end to reach the peer.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// What a share or connect carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Protocol {
    /// TCP connections, one encrypted connection each.
    #[default]
    Tcp,
    /// UDP datagrams, one encrypted connection per local UDP client, holesail's framing.
    Udp(UdpLimits),
}

/// The bounds of a UDP share or connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpLimits {
    /// Flows (UDP clients) at once. Past this, a connect drops datagrams from new clients and a
    /// share refuses new flows, until flows end (the log says so).
    pub max_flows: usize,
    /// A flow with no datagram either way for this long ends, its socket and connection freed;
    /// the client's next datagram opens a new one.
    pub idle_timeout: Duration,
    /// Datagrams waiting in one flow (for its connection to open or to take more); past this,
    /// new ones are dropped and counted.
    pub queue: usize,
}

impl UdpLimits {
    /// The default of [`UdpLimits::max_flows`].
    pub const DEFAULT_MAX_FLOWS: usize = 256;
    /// The default of [`UdpLimits::idle_timeout`]: long enough for a game or a VPN's
    /// keepalives (WireGuard's is 25 s), short enough that finished DNS clients free up soon.
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    /// The default of [`UdpLimits::queue`].
    pub const DEFAULT_QUEUE: usize = 256;
    /// The largest datagram a flow carries; longer frames from a peer end its flow.
    pub const MAX_DATAGRAM: usize = MAX_DATAGRAM;
}

impl Default for UdpLimits {
    fn default() -> Self {
        UdpLimits {
            max_flows: Self::DEFAULT_MAX_FLOWS,
            idle_timeout: Self::DEFAULT_IDLE_TIMEOUT,
            queue: Self::DEFAULT_QUEUE,
        }
    }
}

/// Why a flow ended.
#[derive(Debug)]
enum End {
    Idle,
    PeerEnded,
    /// The connect or the share is stopping.
    Stopped,
    Junk(FrameError),
    Failed(String),
}

/// What one flow moved, and what it dropped.
#[derive(Debug, Default)]
struct Counters {
    to_peer: AtomicU64,
    from_peer: AtomicU64,
    dropped: AtomicU64,
}

impl Counters {
    /// Queues `datagram` for the peer, or drops and counts it when the queue is full. Hands it
    /// back when the flow has ended.
    fn enqueue(
        &self,
        flow: u64,
        queue: &mpsc::Sender<Vec<u8>>,
        datagram: Vec<u8>,
    ) -> Result<(), Vec<u8>> {
        match queue.try_send(datagram) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                if self.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
                    warn!(
                        flow,
                        "a UDP flow's queue is full: dropping datagrams until it drains (the count \
                         is logged when the flow ends); the sender is faster than the tunnel, \
                         or --udp-queue is too short for its bursts"
                    );
                }
                Ok(())
            }
            Err(TrySendError::Closed(datagram)) => Err(datagram),
        }
    }

    fn log_end(&self, flow: u64, end: End) {
        let to_peer = self.to_peer.load(Ordering::Relaxed);
        let from_peer = self.from_peer.load(Ordering::Relaxed);
        let dropped = self.dropped.load(Ordering::Relaxed);
        match end {
            End::Junk(e) => warn!(
                flow,
                error = %e,
                to_peer,
                from_peer,
                dropped,
                "closed a UDP flow: its peer does not speak holesail's UDP framing"
            ),
            End::Failed(e) => {
                info!(flow, error = %e, to_peer, from_peer, dropped, "UDP flow failed")
            }
            other => info!(flow, reason = ?other, to_peer, from_peer, dropped, "UDP flow closed"),
        }
    }
}

/// Where a flow's datagrams from the peer go: the service (a connected socket) or the client.
struct Local {
    socket: Arc<UdpSocket>,
    to: Option<SocketAddr>,
}

impl Local {
    async fn send(&self, datagram: &[u8]) {
        let sent = match self.to {
            Some(client) => self.socket.send_to(datagram, client).await,
            None => self.socket.send(datagram).await,
        };
        // UDP: a datagram the kernel refuses is lost, as it would be on the network.
        if let Err(e) = sent {
            debug!(error = %e, "a datagram from the peer could not be sent on");
        }
    }
}

/// Carries one flow until it ends: `outbound` to the peer framed, the peer's frames to `local`.
async fn run_flow(
    peer: PeerStream,
    mut outbound: mpsc::Receiver<Vec<u8>>,
    local: Local,
    idle: Duration,
    counters: &Counters,
) -> End {
    let (mut reader, mut writer) = peer.into_split();
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let touch = || last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    let end = {
        let up = async {
            while let Some(datagram) = outbound.recv().await {
                touch();
                counters.to_peer.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = writer.write(&frame::encode(&datagram)).await {
                    return End::Failed(e.to_string());
                }
            }
            End::Stopped
        };
        let down = async {
            let mut decoder = Decoder::default();
            loop {
                let message = match reader.read().await {
                    Ok(Some(m)) => m,
                    Ok(None) => return End::PeerEnded,
                    Err(e) => return End::Failed(e.to_string()),
                };
                let mut input = &message[..];
                loop {
                    match decoder.next_datagram(&mut input) {
                        Ok(Some(datagram)) => {
                            touch();
                            counters.from_peer.fetch_add(1, Ordering::Relaxed);
                            local.send(&datagram).await;
                        }
                        Ok(None) => break,
                        Err(e) => return End::Junk(e),
                    }
                }
            }
        };
        let quiet = async {
            loop {
                let heard = Duration::from_millis(last.load(Ordering::Relaxed));
                let silent = start.elapsed().saturating_sub(heard);
                if silent >= idle {
                    return End::Idle;
                }
                tokio::time::sleep(idle - silent).await;
            }
        };
        tokio::select! {
            end = up => end,
            end = down => end,
            end = quiet => end,
        }
    };
    if matches!(end, End::Idle | End::Stopped | End::PeerEnded) {
        let _ = tokio::time::timeout(CLOSE_GRACE, writer.shutdown()).await;
    }
    end
}

/// The share's handler for UDP: each peer connection is a flow to the service at `host:port`.
pub(crate) fn share_handler(host: String, port: u16, limits: UdpLimits) -> Handler {
    let flows = Arc::new(Semaphore::new(limits.max_flows));
    Arc::new(move |n, peer, _link, path| {
        let permit = Arc::clone(&flows).try_acquire_owned().ok();
        Box::pin(serve_flow(
            n,
            peer,
            path,
            host.clone(),
            port,
            limits,
            permit,
        ))
    })
}

async fn serve_flow(
    n: u64,
    peer: PeerStream,
    path: Path,
    host: String,
    port: u16,
    limits: UdpLimits,
    permit: Option<OwnedSemaphorePermit>,
) {
    let Some(_permit) = permit else {
        warn!(
            flow = n,
            max_flows = limits.max_flows,
            "refused a peer's UDP flow: the share has as many flows as it allows; raise \
             --udp-max-flows, or lower --udp-idle-timeout so quiet flows end sooner"
        );
        return;
    };
    let socket = match service_socket(&host, port).await {
        Ok(s) => Arc::new(s),
        Err(e) => {
            warn!(flow = n, error = %e, "cannot open a UDP socket to the shared service {host}:{port}; closed this peer's flow, still sharing");
            return;
        }
    };
    info!(flow = n, %path, "UDP flow opened");
    let counters = Counters::default();
    let (queue, outbound) = mpsc::channel(limits.queue);
    let local = Local {
        socket: Arc::clone(&socket),
        to: None,
    };
    let end = tokio::select! {
        end = run_flow(peer, outbound, local, limits.idle_timeout, &counters) => end,
        end = read_service(n, &socket, &queue, &counters) => end,
    };
    counters.log_end(n, end);
}

/// A socket of the flow's own, connected to the service, so the service's answers to it (and
/// only those) come back on it.
async fn service_socket(host: &str, port: u16) -> io::Result<UdpSocket> {
    let service = tokio::net::lookup_host((host, port))
        .await?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "the host has no address"))?;
    let any: SocketAddr = if service.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(any).await?;
    socket.connect(service).await?;
    Ok(socket)
}

/// The service's datagrams into the flow's queue, until the socket fails.
async fn read_service(
    n: u64,
    socket: &UdpSocket,
    queue: &mpsc::Sender<Vec<u8>>,
    counters: &Counters,
) -> End {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        match socket.recv(&mut buf).await {
            Ok(len) => {
                if counters.enqueue(n, queue, buf[..len].to_vec()).is_err() {
                    return End::Stopped;
                }
            }
            // The service is not (yet) listening: an ICMP answer to an earlier datagram. It may
            // start later; UDP has no connection to lose.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                debug!(flow = n, "the shared UDP service refused a datagram")
            }
            Err(e) => return End::Failed(format!("reading from the service: {e}")),
        }
    }
}

/// A flow of the connect: its client's queue and counters, and its number.
struct ClientFlow {
    n: u64,
    queue: mpsc::Sender<Vec<u8>>,
    counters: Arc<Counters>,
}

/// The connect's loop for UDP: datagrams on `socket` from each client go to that client's flow,
/// opened on its first datagram.
pub(crate) async fn serve_connect(
    socket: UdpSocket,
    connector: Arc<Connector>,
    limits: UdpLimits,
    mut stop: watch::Receiver<bool>,
) {
    let socket = Arc::new(socket);
    let mut flows: HashMap<SocketAddr, ClientFlow> = HashMap::new();
    let mut tasks = JoinSet::new();
    // Each flow sends one message when it ends, and at most `max_flows` run: bounded.
    let (ended_tx, mut ended) = mpsc::unbounded_channel::<(SocketAddr, u64)>();
    let mut at_limit = false;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut n = 0u64;
    loop {
        let (len, client) = tokio::select! {
            _ = stop.changed() => break,
            Some((client, flow)) = ended.recv() => {
                if flows.get(&client).is_some_and(|f| f.n == flow) {
                    flows.remove(&client);
                }
                continue;
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            received = socket.recv_from(&mut buf) => match received {
                Ok(r) => r,
                Err(e) => {
                    // An ICMP error for an earlier send to a client that left, and the like.
                    debug!(error = %e, "receiving a local datagram failed");
                    continue;
                }
            },
        };
        let datagram = buf[..len].to_vec();
        let queued = match flows.get(&client) {
            Some(f) => f.counters.enqueue(f.n, &f.queue, datagram),
            None => Err(datagram),
        };
        let Err(datagram) = queued else { continue };
        // A new client, or its flow just ended: this datagram opens the next.
        flows.remove(&client);
        if flows.len() >= limits.max_flows {
            if !at_limit {
                at_limit = true;
                warn!(
                    %client,
                    max_flows = limits.max_flows,
                    "dropping datagrams from new UDP clients: as many flows are open as allowed; \
                     raise --udp-max-flows, or lower --udp-idle-timeout so quiet flows end sooner"
                );
            }
            continue;
        }
        at_limit = false;
        n += 1;
        let (queue, outbound) = mpsc::channel(limits.queue);
        let counters = Arc::new(Counters::default());
        let _ = counters.enqueue(n, &queue, datagram);
        flows.insert(
            client,
            ClientFlow {
                n,
                queue,
                counters: Arc::clone(&counters),
            },
        );
        let local = Local {
            socket: Arc::clone(&socket),
            to: Some(client),
        };
        let (connector, ended_tx) = (Arc::clone(&connector), ended_tx.clone());
        tasks.spawn(async move {
            flow_to_sharer(n, client, &connector, outbound, local, limits, &counters).await;
            let _ = ended_tx.send((client, n));
        });
    }
    // Closing the queues ends every open flow politely; flows still opening are cut.
    drop(flows);
    let drained = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(CLOSE_GRACE, drained).await.is_err() {
        tasks.shutdown().await;
    }
    if let Ok(connector) = Arc::try_unwrap(connector) {
        connector.close().await;
    }
}

async fn flow_to_sharer(
    n: u64,
    client: SocketAddr,
    connector: &Connector,
    outbound: mpsc::Receiver<Vec<u8>>,
    local: Local,
    limits: UdpLimits,
    counters: &Counters,
) {
    let started = Instant::now();
    let peer = match connector.open_with_path().await {
        Ok((peer, path)) => {
            info!(flow = n, %client, %path, open_ms = started.elapsed().as_millis() as u64, "UDP flow opened to the sharer");
            peer
        }
        Err(e) => {
            warn!(flow = n, %client, error = %e, "could not reach the sharer; dropped this UDP client's datagrams (its next one tries again)");
            return;
        }
    };
    let end = run_flow(peer, outbound, local, limits.idle_timeout, counters).await;
    counters.log_end(n, end);
}
