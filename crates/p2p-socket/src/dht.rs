//! Joining HyperDHT: where the bootstrap nodes are, and the DHT node every share and connect
//! runs. The RPC and routing come from `peeroxide-dht`; its UDP socket is our own transport's, so
//! the tunnel's streams share it exactly as Node's hyperdht shares `dht.socket`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use peeroxide_dht::hyperdht::{self, HyperDhtConfig, HyperDhtHandle, ServerEvent};
use peeroxide_dht::messages::Ipv4Peer;
use peeroxide_dht::rpc::DhtConfig;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info};

use crate::error::{Error, Result};
use crate::lock::lock;
use crate::nat::Firewall;

/// The public HyperDHT bootstrap nodes, the same ones Node's hyperdht uses.
pub const PUBLIC_BOOTSTRAP: [&str; 3] = [
    "node1.hyperdht.org:49737",
    "node2.hyperdht.org:49737",
    "node3.hyperdht.org:49737",
];

/// The port HyperDHT bootstrap nodes listen on by convention.
pub const DEFAULT_BOOTSTRAP_PORT: u16 = 49737;

/// How long joining may take before we call the bootstrap nodes unreachable. dht-rpc retries a
/// request a few times over about a second each, so this leaves room for a slow network without
/// making a typo in `--bootstrap` hang.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Which DHT to join, and where to bind. The default is the public HyperDHT network.
#[derive(Debug, Clone, Default)]
pub struct NetworkOptions {
    /// Bootstrap nodes as `host:port`. Empty means the public HyperDHT network.
    pub bootstrap: Vec<String>,
    /// Address the DHT's UDP socket binds to. `None` picks: loopback when every bootstrap node
    /// is on this machine (such a network cannot reach anyone else, and advertising LAN
    /// addresses to its peers would only send packets out of the machine for nothing), all
    /// interfaces otherwise.
    pub bind_host: Option<IpAddr>,
    /// Never claim to be reachable from the internet, even when the check says so: a share then
    /// always offers hole punching and a connect never waits to be dialled. For networks where
    /// the check misleads (a firewall that lets the check's packets in but not others), and for
    /// exercising the punching path on one machine.
    pub firewalled: bool,
}

impl NetworkOptions {
    /// Options for a private network reached through `bootstrap`.
    pub fn with_bootstrap<I, S>(bootstrap: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            bootstrap: bootstrap.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// Parses a comma-separated `host:port[,host:port...]` list, as `--bootstrap` takes it.
    pub fn parse_bootstrap_list(list: &str) -> Result<Vec<String>> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                let (host, port) = s
                    .rsplit_once(':')
                    .ok_or_else(|| Error::BadBootstrapAddress(s.to_string()))?;
                match port.parse::<u16>() {
                    Ok(p) if p != 0 && !host.is_empty() => Ok(s.to_string()),
                    _ => Err(Error::BadBootstrapAddress(s.to_string())),
                }
            })
            .collect()
    }

    fn bootstrap_or_public(&self) -> Vec<String> {
        if self.bootstrap.is_empty() {
            PUBLIC_BOOTSTRAP.iter().map(|s| s.to_string()).collect()
        } else {
            self.bootstrap.clone()
        }
    }
}

/// Resolves `host:port` entries to IPv4 socket addresses. Names that do not resolve are dropped
/// (the public list has three names; one being down must not stop us), but if nothing resolves
/// the user learns which names failed.
async fn resolve(nodes: &[String]) -> Result<Vec<SocketAddr>> {
    let mut out = Vec::new();
    for node in nodes {
        let lookup = tokio::time::timeout(Duration::from_secs(5), tokio::net::lookup_host(node));
        match lookup.await {
            Ok(Ok(addrs)) => {
                if let Some(a) = addrs.into_iter().find(SocketAddr::is_ipv4) {
                    out.push(a);
                }
            }
            Ok(Err(e)) => debug!(node, error = %e, "bootstrap name did not resolve"),
            Err(_) => debug!(node, "bootstrap name lookup timed out"),
        }
    }
    if out.is_empty() {
        return Err(Error::BootstrapUnreachable {
            nodes: nodes.join(", "),
        });
    }
    Ok(out)
}

/// Longest a share or connect waits for its reachability check before it starts serving (the
/// check itself gives up after about a second).
const REACHABILITY_WAIT: Duration = Duration::from_secs(3);

/// How many DHT nodes we remember for NAT sampling (which needs four or so).
const KNOWN_NODES: usize = 16;

/// DHT nodes that answered us lately, most recent first (shared with background tasks).
#[derive(Clone, Default)]
pub(crate) struct KnownNodes(Arc<Mutex<Vec<SocketAddr>>>);

impl KnownNodes {
    pub(crate) fn add(&self, fresh: impl IntoIterator<Item = SocketAddr>) {
        let mut nodes = lock(&self.0);
        for node in fresh {
            nodes.retain(|n| *n != node);
            nodes.insert(0, node);
        }
        nodes.truncate(KNOWN_NODES);
    }

    pub(crate) fn list(&self) -> Vec<SocketAddr> {
        lock(&self.0).clone()
    }
}

/// Finds out whether anyone on the network can send to our DHT socket unasked.
#[derive(Clone)]
pub(crate) struct Reachability {
    handle: HyperDhtHandle,
    nodes: KnownNodes,
    open: Arc<watch::Sender<Option<bool>>>,
    bind: IpAddr,
    local_port: u16,
    fixed: bool,
}

impl Reachability {
    /// Checks again in the background; until it is done the last answer stands.
    pub(crate) fn recheck(&self) {
        if self.fixed {
            return;
        }
        let Reachability {
            handle,
            nodes,
            open,
            bind,
            local_port,
            ..
        } = self.clone();
        tokio::spawn(async move {
            let public = handle.remote_address().await.ok().flatten();
            let public_host = public.as_ref().and_then(|p| p.host.parse().ok());
            let reachable = crate::nat::check_open(bind, public_host, &nodes.list()).await;
            let is_open = reachable && public.is_some_and(|p| p.port == local_port);
            open.send_replace(Some(is_open));
            info!(
                reachable = is_open,
                "reachability: {}",
                if is_open {
                    "others can reach us directly"
                } else {
                    "behind a NAT or firewall; peers will punch through"
                }
            );
        });
    }
}

/// A running DHT node: the handle for queries, the events for a server, and the UDP socket
/// that our streams share with the RPC.
pub struct DhtNode {
    handle: HyperDhtHandle,
    socket: udx::UdxSocket,
    events: Option<mpsc::UnboundedReceiver<ServerEvent>>,
    task: tokio::task::JoinHandle<()>,
    bind_ip: IpAddr,
    nodes: KnownNodes,
    /// Whether anyone on the network can send to our DHT socket unasked (see
    /// [`crate::nat::check_open`]); `None` while that is being found out.
    open: Arc<watch::Sender<Option<bool>>>,
    /// Whether `open` is settled once and for all (loopback, or told to be firewalled).
    reachability_fixed: bool,
    // Kept alive for the DHT's sockets; peeroxide-dht creates everything through it.
    _runtime: libudx::UdxRuntime,
}

impl DhtNode {
    /// Joins the DHT as a short-lived, firewalled node (what share and connect are): it asks
    /// the network, it does not store records for others.
    pub async fn join(opts: &NetworkOptions) -> Result<DhtNode> {
        let nodes = opts.bootstrap_or_public();
        let resolved = resolve(&nodes).await?;
        let bind_host = opts.bind_host.unwrap_or_else(|| {
            if resolved.iter().all(|a| a.ip().is_loopback()) {
                IpAddr::V4(Ipv4Addr::LOCALHOST)
            } else {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            }
        });
        // peeroxide's config structs are non-exhaustive: start from the defaults.
        let mut config = DhtConfig::default();
        config.bootstrap = resolved.iter().map(SocketAddr::to_string).collect();
        config.host = bind_host.to_string();
        config.port = 0;
        config.ephemeral = Some(true);
        config.firewalled = true;
        let mut node = Self::spawn(config, bind_host).await?;
        let joined = tokio::time::timeout(JOIN_TIMEOUT, node.handle.bootstrapped()).await;
        let table = node.handle.table_size().await.unwrap_or(0);
        if joined.is_err() || table == 0 {
            node.destroy().await;
            return Err(Error::BootstrapUnreachable {
                nodes: nodes.join(", "),
            });
        }
        node.add_nodes(resolved.iter().copied());
        if opts.firewalled {
            info!("treating this node as firewalled: never claiming to be reachable");
            node.open.send_replace(Some(false));
            node.reachability_fixed = true;
        } else if bind_host.is_loopback() {
            // Nothing filters loopback: everyone on this network can send to us.
            node.open.send_replace(Some(true));
            node.reachability_fixed = true;
        } else {
            node.spawn_reachability_check();
        }
        info!(routing_table = table, "joined the DHT");
        Ok(node)
    }

    /// Finds out in the background whether we are reachable unasked: the host must take
    /// packets on fresh ports, and our DHT socket's public port must be its own.
    fn spawn_reachability_check(&self) {
        self.reachability().recheck();
    }

    /// What finds out again whether we are reachable (after we moved); it does nothing where
    /// the answer is fixed (loopback, or told to be firewalled).
    pub(crate) fn reachability(&self) -> Reachability {
        Reachability {
            handle: self.handle.clone(),
            nodes: self.nodes.clone(),
            open: Arc::clone(&self.open),
            bind: self.bind_ip,
            local_port: self.socket.local_addr().map(|a| a.port()).unwrap_or(0),
            fixed: self.reachability_fixed,
        }
    }

    /// Runs a persistent DHT node on a fixed address, as a bootstrap node for a private network
    /// (or as one more node of it, when `bootstrap` names others).
    pub async fn serve(host: IpAddr, port: u16, bootstrap: &[String]) -> Result<DhtNode> {
        let resolved = if bootstrap.is_empty() {
            Vec::new()
        } else {
            resolve(bootstrap).await?
        };
        // Fail here with a clear message rather than deep inside the RPC layer.
        drop(
            std::net::UdpSocket::bind((host, port)).map_err(|source| Error::Bind {
                addr: SocketAddr::new(host, port).to_string(),
                source,
            })?,
        );
        let mut config = DhtConfig::default();
        config.bootstrap = resolved.iter().map(SocketAddr::to_string).collect();
        config.host = host.to_string();
        config.port = port;
        config.ephemeral = Some(false);
        config.firewalled = false;
        Self::spawn(config, host).await
    }

    async fn spawn(config: DhtConfig, bind_ip: IpAddr) -> Result<DhtNode> {
        let runtime = libudx::UdxRuntime::new().map_err(|e| Error::Dht {
            doing: "starting the transport",
            source: Box::new(e),
        })?;
        let mut hyper = HyperDhtConfig::default();
        hyper.dht = config;
        let (join, handle, events) = hyperdht::spawn(&runtime, hyper).await?;
        let socket = handle
            .server_socket()
            .await?
            .and_then(|s| s.inner().cloned())
            .ok_or_else(|| Error::Dht {
                doing: "binding its socket",
                source: "the DHT has no bound socket".into(),
            })?;
        let task = tokio::spawn(async move {
            match join.await {
                Ok(Ok(())) => debug!("DHT node stopped"),
                Ok(Err(e)) => tracing::warn!(error = %e, "DHT node failed"),
                Err(e) => tracing::warn!(error = %e, "DHT node task failed"),
            }
        });
        Ok(DhtNode {
            handle,
            socket,
            events: Some(events),
            task,
            bind_ip,
            nodes: KnownNodes::default(),
            open: Arc::new(watch::channel(None).0),
            reachability_fixed: false,
            _runtime: runtime,
        })
    }

    /// Where punch sockets bind: where the DHT's socket is bound.
    pub(crate) fn bind_ip(&self) -> IpAddr {
        self.bind_ip
    }

    /// Whether peers can send to our DHT socket without punching (false while unknown).
    pub(crate) fn is_open(&self) -> bool {
        *self.open.borrow() == Some(true)
    }

    /// Our NAT as the DHT nodes that answered us saw it (hyperdht's `firewalled`): Random when
    /// the ports they report disagree; Unknown when we cannot tell.
    pub(crate) async fn nat(&self) -> Firewall {
        match self.handle.dht().firewalled().await {
            Ok(wire) => Firewall::from_wire(wire),
            Err(_) => Firewall::Unknown,
        }
    }

    /// Waits (briefly) for the reachability check, so that the first connection already knows
    /// whether to wait to be dialled.
    pub(crate) async fn reachability_known(&self) {
        let mut known = self.open.subscribe();
        let _ = tokio::time::timeout(REACHABILITY_WAIT, known.wait_for(Option::is_some)).await;
    }

    /// DHT nodes that answered us lately: whom punch sockets ask where they are.
    pub(crate) fn known(&self) -> &KnownNodes {
        &self.nodes
    }

    /// Remembers DHT nodes that answered us.
    pub(crate) fn add_nodes(&self, fresh: impl IntoIterator<Item = SocketAddr>) {
        self.nodes.add(fresh);
    }

    /// DHT nodes to sample our NAT against, most recent first.
    pub(crate) fn known_nodes(&self) -> Vec<SocketAddr> {
        self.nodes.list()
    }

    /// Our public host as DHT nodes see it, and our own IPv4 addresses as
    /// [`Self::reachable_addresses`] lists them: what a peer's addresses are matched against
    /// to choose where to dial it (the same LAN, this machine, or afar).
    pub(crate) async fn own_addresses(&self) -> (Option<Ipv4Addr>, Vec<Ipv4Addr>) {
        let public = self
            .handle
            .remote_address()
            .await
            .ok()
            .flatten()
            .and_then(|remote| remote.host.parse().ok());
        let own = self
            .reachable_addresses()
            .await
            .iter()
            .filter_map(|p| p.host.parse().ok())
            .collect();
        (public, own)
    }

    /// The peeroxide-dht handle, for queries and requests.
    pub(crate) fn handle(&self) -> &HyperDhtHandle {
        &self.handle
    }

    /// The UDP socket that carries both the DHT RPC and our streams.
    pub(crate) fn socket(&self) -> &udx::UdxSocket {
        &self.socket
    }

    /// Takes the stream of handshakes addressed to servers on this node. Only one server may.
    pub(crate) fn take_events(&mut self) -> Option<mpsc::UnboundedReceiver<ServerEvent>> {
        self.events.take()
    }

    /// The address of the DHT's UDP socket.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    /// The addresses we can tell a peer to reach us on: the sampled public address if the DHT
    /// learned one, and the local address of our socket (all interface addresses when bound to
    /// the wildcard, so peers on the same LAN can skip the NAT).
    pub(crate) async fn reachable_addresses(&self) -> Vec<Ipv4Peer> {
        let mut out = Vec::new();
        if let Ok(Some(remote)) = self.handle.remote_address().await {
            out.push(remote);
        }
        let Ok(local) = self.socket.local_addr() else {
            return out;
        };
        let port = local.port();
        let push = |out: &mut Vec<Ipv4Peer>, ip: Ipv4Addr| {
            let peer = Ipv4Peer {
                host: ip.to_string(),
                port,
            };
            if !out.contains(&peer) {
                out.push(peer);
            }
        };
        match local.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => {
                for iface in if_addrs::get_if_addrs().unwrap_or_default() {
                    if let IpAddr::V4(ip) = iface.ip() {
                        if !ip.is_loopback() {
                            push(&mut out, ip);
                        }
                    }
                }
            }
            IpAddr::V4(ip) => push(&mut out, ip),
            IpAddr::V6(_) => {}
        }
        out
    }

    /// Stops the node and closes its sockets.
    pub async fn destroy(self) {
        let _ = self.handle.destroy().await;
        self.task.abort();
    }
}

/// A local UDX stream id: random, so that the ids of later connections cannot be predicted
/// from an earlier one (whoever knows a stream id can aim packets at that stream). Ids only
/// need to be unique per socket; a collision with an open stream (odds: open streams / 2^32)
/// makes `create_stream` fail with `StreamIdInUse` rather than mix two streams.
pub(crate) fn next_stream_id() -> u32 {
    rand::random::<u32>().max(1)
}

#[cfg(test)]
mod stream_id_tests {
    #[test]
    fn stream_ids_are_not_sequential() {
        let ids: Vec<u32> = (0..64).map(|_| super::next_stream_id()).collect();
        let sequential = ids
            .windows(2)
            .filter(|w| w[1] == w[0].wrapping_add(1))
            .count();
        assert!(sequential < 2, "{ids:?}");
        assert!(ids.iter().all(|&id| id != 0));
    }
}
