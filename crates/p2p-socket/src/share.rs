//! Share: every connection the listener accepts on the share's key is piped to a local TCP
//! service.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use crate::access::AllowList;
use crate::dht::NetworkOptions;
use crate::error::Result;
use crate::identity::{KeyPair, PublicKey};
use crate::listener::{Handler, Listener, MAX_CONNECTIONS};
use crate::mux;
use crate::noise_session::Features;
use crate::peer::{Link, Path, PeerStream};
use crate::pipe::pipe_and_log;
use crate::udp::{self, Protocol};

/// How long to wait for the local service to accept a connection.
const SERVICE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What to share and how.
#[derive(Debug, Clone)]
pub struct ShareOptions {
    /// The DHT to announce on.
    pub network: NetworkOptions,
    /// The identity peers connect to; its public key is what the user hands out.
    pub key_pair: KeyPair,
    /// Host of the local service every connection is forwarded to.
    pub service_host: String,
    /// Port of the local service.
    pub service_port: u16,
    /// A blind relay (`p2p-socket relay`) to offer peers for when no direct path can be made
    /// between us: a peer goes through it only when punching fails. Peers may bring their own
    /// relay instead.
    pub relay: Option<PublicKey>,
    /// Peer connections open at once; past this, new peers get no answer until some close
    /// (and the log says so). [`Share::DEFAULT_MAX_CONNECTIONS`] suits most services.
    pub max_connections: usize,
    /// What the service speaks: TCP, or UDP (each peer connection a flow of datagrams).
    pub protocol: Protocol,
    /// Only clients with these public keys get in; `None` admits anyone who knows the share
    /// key. A refused client is answered with an error during the handshake (it fails at once
    /// instead of timing out), is logged with its key, and never reaches the local service:
    /// no punch, relay or service connection is made for it. See [`AllowList`].
    pub allow: Option<AllowList>,
}

/// A running share. Dropping it stops serving; [`Share::close`] also withdraws the announcement.
pub struct Share {
    listener: Listener,
}

impl Share {
    /// The default of [`ShareOptions::max_connections`].
    pub const DEFAULT_MAX_CONNECTIONS: usize = MAX_CONNECTIONS;

    /// Joins the DHT, announces the key and starts serving. Returns once the key is findable.
    pub async fn start(opts: ShareOptions) -> Result<Share> {
        // Datagram flows are framed as holesail frames them, one connection each.
        let features = Features {
            mux: opts.protocol == Protocol::Tcp,
        };
        let handler: Handler = match opts.protocol {
            Protocol::Tcp => {
                let service = (opts.service_host, opts.service_port);
                Arc::new(move |n, peer, link: Link, path| {
                    if link.features.mux {
                        let service = service.clone();
                        Box::pin(async move {
                            info!(connection = n, %path, "peer connected, multiplexed");
                            mux::serve(n, peer, move |n| connect_service(n, service.clone())).await
                        })
                    } else {
                        Box::pin(serve_tcp(n, peer, path, service.clone()))
                    }
                })
            }
            Protocol::Udp(limits) => {
                udp::share_handler(opts.service_host, opts.service_port, limits)
            }
        };
        let listener = Listener::start(
            &opts.network,
            opts.key_pair,
            opts.relay,
            opts.max_connections,
            opts.allow,
            features,
            handler,
        )
        .await?;
        Ok(Share { listener })
    }

    /// The key to hand to peers.
    pub fn public_key(&self) -> PublicKey {
        self.listener.public_key()
    }

    /// How many peer connections were accepted so far.
    pub fn connections(&self) -> u64 {
        self.listener.connections()
    }

    /// Withdraws the announcement and stops. Connections in progress are cut.
    pub async fn close(self) {
        self.listener.close().await;
    }
}

/// A share's handler: pipes the connection to the local service.
async fn serve_tcp(n: u64, peer: PeerStream, path: Path, service: (String, u16)) {
    let Some(tcp) = connect_service(n, service).await else {
        return;
    };
    info!(connection = n, %path, "peer connected");
    pipe_and_log(n, tcp, peer).await;
}

/// A connection to the local service for peer connection `n`, or none (said in the log).
async fn connect_service(n: u64, service: (String, u16)) -> Option<TcpStream> {
    let (host, port) = service;
    let tcp = match tokio::time::timeout(
        SERVICE_CONNECT_TIMEOUT,
        TcpStream::connect((host.as_str(), port)),
    )
    .await
    {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            warn!(connection = n, "the shared service {host}:{port} refused the connection ({e}); closed this peer connection, still sharing");
            return None;
        }
        Err(_) => {
            warn!(connection = n, "the shared service {host}:{port} did not accept within {}s; closed this peer connection, still sharing", SERVICE_CONNECT_TIMEOUT.as_secs());
            return None;
        }
    };
    let local: Option<SocketAddr> = tcp.local_addr().ok();
    debug!(connection = n, ?local, "connected to the shared service");
    Some(tcp)
}
