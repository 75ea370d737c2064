//! Share: every connection the listener accepts on the share's key is piped to a local
//! service (TCP or Unix socket).

use std::sync::Arc;

use tracing::{info, warn};

use crate::dht::NetworkOptions;
use crate::error::Result;
use crate::events::{Event, Events};
use crate::identity::{KeyPair, PublicKey};
use crate::listener::{Handler, Listener, MAX_CONNECTIONS};
use crate::local::{connect_service, Service};
use crate::peer::{Link, Path, PeerStream};
use crate::pipe::pipe_and_log;

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
    /// Where the share says what it does ([`Event`]s); subscribe before starting to see all.
    pub events: Events,
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
        let service = Arc::new(opts.service);
        let events = opts.events;
        let handler: Handler = {
            let (service, events) = (Arc::clone(&service), events.clone());
            Arc::new(move |n, peer, link, path| {
                Box::pin(serve(
                    n,
                    peer,
                    link,
                    path,
                    Arc::clone(&service),
                    events.clone(),
                ))
            })
        };
        let listener = Listener::start(
            &opts.network,
            opts.key_pair,
            opts.relay,
            opts.max_connections,
            handler,
        )
        .await?;
        events.emit(Event::Listening {
            key: listener.public_key(),
            local: service.to_string(),
        });
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
async fn serve(
    n: u64,
    peer: PeerStream,
    link: Link,
    path: Path,
    service: Arc<Service>,
    events: Events,
) {
    let local = match connect_service(&service).await {
        Ok(local) => local,
        Err(reason) => {
            warn!(
                connection = n,
                "{reason}; closed this peer connection, still sharing"
            );
            events.emit(Event::ConnectionFailed { id: n, reason });
            return;
        }
    };
    info!(connection = n, %path, addr = ?link.peer(), "peer connected");
    pipe_and_log(n, local, (peer, link, path), &events).await;
}
