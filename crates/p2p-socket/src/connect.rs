//! Connect: a local listener (TCP or Unix socket) whose every connection becomes an encrypted
//! connection to the sharer, opened by the dialer ([`Connector`]), with the bytes piped between
//! the two.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{info, warn};

use crate::dht::NetworkOptions;
use crate::dialer::Connector;
use crate::error::Result;
use crate::events::{Event, Events};
use crate::identity::{KeyPair, PublicKey};
use crate::local::{Listen, LocalListener, LocalStream};
use crate::pipe::pipe_and_log;
use crate::running::Running;

/// What to connect to and where to listen.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// The DHT to search.
    pub network: NetworkOptions,
    /// Our identity towards the sharer (a fresh one is fine; the sharer does not check it).
    pub key_pair: KeyPair,
    /// The sharer's key.
    pub remote: PublicKey,
    /// Where local programs connect: a TCP address (port 0 picks a free port) or a Unix
    /// socket.
    pub listen: Listen,
    /// A blind relay (`p2p-socket relay`) for when no direct path to the sharer can be made.
    pub relay: Option<PublicKey>,
    /// Go through a relay for every connection (see [`Connector::force_relay`]).
    pub force_relay: bool,
    /// Where the connect says what it does ([`Event`]s); subscribe before starting to see all.
    pub events: Events,
}

/// A running connect: a local listener whose every connection reaches the sharer's service.
pub struct Connect {
    local: String,
    local_addr: Option<SocketAddr>,
    running: Running,
}

impl Connect {
    /// Binds the listener, finds the sharer, and starts forwarding.
    pub async fn start(opts: ConnectOptions) -> Result<Connect> {
        // Bind first: a busy port is the user's most likely mistake and costs nothing to check.
        let listener = LocalListener::bind(&opts.listen).await?;
        let local = listener.describe()?;
        let local_addr = listener.local_addr()?;
        let mut connector = Connector::new(&opts.network, opts.key_pair, opts.remote)
            .await?
            .force_relay(opts.force_relay);
        if let Some(relay) = opts.relay {
            connector = connector.with_relay(relay);
        }
        let connector = Arc::new(connector);
        opts.events.emit(Event::Listening {
            key: opts.remote,
            local: local.clone(),
        });
        let events = opts.events;
        let running = Running::spawn(|stop| accept_loop(listener, connector, events, stop));
        Ok(Connect {
            local,
            local_addr,
            running,
        })
    }

    /// The TCP address local programs connect to; none when listening on a Unix socket.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// Where local programs connect: `host:port`, or `unix:PATH`.
    pub fn local(&self) -> &str {
        &self.local
    }

    /// Stops listening and leaves the DHT.
    pub async fn close(self) {
        self.running.stop().await;
    }
}

async fn accept_loop(
    listener: LocalListener,
    connector: Arc<Connector>,
    events: Events,
    mut stop: watch::Receiver<bool>,
) {
    let mut n = 0u64;
    loop {
        let (local, from) = tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "accepting a local connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        n += 1;
        let connector = Arc::clone(&connector);
        tokio::spawn(forward(n, local, from, connector, events.clone()));
    }
    drop(listener);
    if let Ok(connector) = Arc::try_unwrap(connector) {
        connector.close().await;
    }
}

async fn forward(
    n: u64,
    local: LocalStream,
    from: String,
    connector: Arc<Connector>,
    events: Events,
) {
    let started = Instant::now();
    let opened = match connector.open_link().await {
        Ok(opened) => opened,
        Err(e) => {
            warn!(connection = n, %from, error = %e, "could not reach the sharer; closed the local connection");
            events.emit(Event::ConnectionFailed {
                id: n,
                reason: e.to_string(),
            });
            return;
        }
    };
    let (_, link, path) = &opened;
    info!(connection = n, %from, %path, addr = ?link.peer(), open_ms = started.elapsed().as_millis() as u64, "connected to the sharer");
    pipe_and_log(n, local, opened, &events).await;
}
