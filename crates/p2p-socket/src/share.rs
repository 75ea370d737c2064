//! Share: every connection the listener accepts on the share's key is piped to a local
//! service (TCP, Unix socket, or UDP datagrams); a multiplexed connection from one of our own
//! connects carries many such connections as streams.

use std::sync::Arc;

use tracing::{info, warn};

use crate::access::AllowList;
use crate::dht::NetworkOptions;
use crate::error::{Error, Result};
use crate::events::{Event, Events};
use crate::farewell::{Farewell, Guard, PARTING};
use crate::identity::{KeyPair, PublicKey};
use crate::listener::{Admission, Handler, Listener, MAX_CONNECTIONS};
use crate::local::{connect_service, LocalStream, Service};
use crate::mux;
use crate::noise_session::Features;
use crate::peer::{Link, Path, PeerStream};
use crate::pipe::pipe_and_log;
use crate::udp::{self, Protocol};

/// What to share and how.
#[derive(Debug, Clone)]
pub struct ShareOptions {
    /// The DHT to announce on.
    pub network: NetworkOptions,
    /// The identity peers connect to; its public key is what the user hands out.
    pub key_pair: KeyPair,
    /// The local service every connection is forwarded to.
    pub service: Service,
    /// A blind relay (`p2p-socket relay`) to offer peers for when no direct path can be made
    /// between us: a peer goes through it only when punching fails. Peers may bring their own
    /// relay instead.
    pub relay: Option<PublicKey>,
    /// Peer connections open at once; past this, new peers get no answer until some close
    /// (and the log says so). [`Share::DEFAULT_MAX_CONNECTIONS`] suits most services.
    pub max_connections: usize,
    /// What the service speaks: TCP, or UDP (each peer connection a flow of datagrams, to a
    /// [`Service::Tcp`] host and port).
    pub protocol: Protocol,
    /// Only clients with these public keys get in; `None` admits anyone who knows the share
    /// key. A refused client is answered with an error during the handshake (it fails at once
    /// instead of timing out), is logged with its key, and never reaches the local service:
    /// no punch, relay or service connection is made for it. See [`AllowList`].
    pub allow: Option<AllowList>,
    /// Where the share says what it does ([`Event`]s); subscribe before starting to see all.
    pub events: Events,
}

/// A running share. Dropping it stops serving; [`Share::close`] also withdraws the announcement.
pub struct Share {
    listener: Listener,
    /// Tells the peers connected when we stop.
    farewell: Farewell,
}

impl Share {
    /// The default of [`ShareOptions::max_connections`].
    pub const DEFAULT_MAX_CONNECTIONS: usize = MAX_CONNECTIONS;

    /// Joins the DHT, announces the key and starts serving. Returns once the key is findable.
    pub async fn start(opts: ShareOptions) -> Result<Share> {
        // Datagram flows are framed as holesail frames them, one connection each.
        // Multiplexed sessions may roam, and be resumed (docs/roaming.md).
        let features = if opts.protocol == Protocol::Tcp {
            Features {
                resume: true,
                ..Features::MUX
            }
        } else {
            Features::default()
        };
        let service = Arc::new(opts.service);
        let events = opts.events;
        let farewell = Farewell::new();
        let handler: Handler = match opts.protocol {
            Protocol::Tcp => {
                let (service, events) = (Arc::clone(&service), events.clone());
                let guards = farewell.guards();
                Arc::new(move |n, peer, link, path| {
                    Box::pin(serve(
                        n,
                        peer,
                        link,
                        path,
                        Arc::clone(&service),
                        events.clone(),
                        guards.guard(),
                    ))
                })
            }
            Protocol::Udp(limits) => match &*service {
                Service::Tcp { host, port } => udp::share_handler(host.clone(), *port, limits),
                #[cfg(unix)]
                Service::Unix(path) => {
                    return Err(Error::UnixSocket {
                        path: path.clone(),
                        why: "UDP shares send datagrams to a host and port, not a Unix socket"
                            .into(),
                    })
                }
            },
        };
        let listener = Listener::start(
            &opts.network,
            opts.key_pair,
            opts.relay,
            opts.max_connections,
            opts.allow.map(|list| Admission {
                list,
                events: events.clone(),
            }),
            features,
            handler,
        )
        .await?;
        events.emit(Event::Listening {
            key: listener.public_key(),
            local: service.to_string(),
        });
        Ok(Share { listener, farewell })
    }

    /// The key to hand to peers.
    pub fn public_key(&self) -> PublicKey {
        self.listener.public_key()
    }

    /// How many peer connections were accepted so far.
    pub fn connections(&self) -> u64 {
        self.listener.connections()
    }

    /// Tells every peer connected that we stop (docs/multiplexing.md, "Stopping"), withdraws
    /// the announcement and stops.
    pub async fn close(self) {
        self.farewell.part(PARTING).await;
        self.listener.close().await;
    }
}

/// A share's handler: pipes the connection to the local service, or, when it is multiplexed,
/// each of its streams to a connection of its own to the service.
async fn serve(
    n: u64,
    peer: PeerStream,
    link: Link,
    path: Path,
    service: Arc<Service>,
    events: Events,
    guard: Guard,
) {
    if link.features.mux {
        info!(connection = n, %path, addr = ?link.peer(), "peer connected, multiplexed");
        let key = PublicKey::from(*peer.remote_public_key());
        let opened = (key, path, link.peer());
        let for_streams = events.clone();
        mux::serve(
            n,
            peer,
            link.features.ping,
            guard,
            opened,
            &events,
            move |n| {
                let (service, events) = (Arc::clone(&service), for_streams.clone());
                async move { local_service(n, &service, &events).await }
            },
        )
        .await;
        return;
    }
    let Some(local) = local_service(n, &service, &events).await else {
        return;
    };
    info!(connection = n, %path, addr = ?link.peer(), "peer connected");
    pipe_and_log(n, local, (peer, path, link.peer()), &events, guard).await;
}

/// A connection to the local service for peer connection `n`, or none (said in the log and
/// as an event).
async fn local_service(n: u64, service: &Service, events: &Events) -> Option<LocalStream> {
    match connect_service(service).await {
        Ok(local) => Some(local),
        Err(reason) => {
            warn!(
                connection = n,
                "{reason}; closed this peer connection, still sharing"
            );
            events.emit(Event::ConnectionFailed { id: n, reason });
            None
        }
    }
}
