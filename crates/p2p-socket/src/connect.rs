//! Connect: a local TCP listener whose every connection becomes an encrypted connection to
//! the sharer, opened by the dialer ([`Connector`]), with the bytes piped between the two.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tracing::{info, warn};

use crate::dht::NetworkOptions;
use crate::dialer::Connector;
use crate::error::{Error, Result};
use crate::identity::{KeyPair, PublicKey};
use crate::mux::{pipe_stream_and_log, Opened, Pool};
use crate::pipe::pipe_and_log;
use crate::reconnect::Reconnect;
use crate::running::Running;
use crate::udp::{self, Protocol};

/// What to connect to and where to listen.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// The DHT to search.
    pub network: NetworkOptions,
    /// Our identity towards the sharer (a fresh one is fine; the sharer does not check it).
    pub key_pair: KeyPair,
    /// The sharer's key.
    pub remote: PublicKey,
    /// Where local programs connect; port 0 picks a free port.
    pub listen: SocketAddr,
    /// A blind relay (`p2p-socket relay`) for when no direct path to the sharer can be made.
    pub relay: Option<PublicKey>,
    /// Go through a relay for every connection (see [`Connector::force_relay`]).
    pub force_relay: bool,
    /// What local programs speak: TCP, or UDP (each client address a flow of datagrams).
    pub protocol: Protocol,
    /// Local connections open at once; past this, new ones are closed at once (and the log
    /// says so). [`Connect::DEFAULT_MAX_CONNECTIONS`] suits most uses.
    pub max_connections: usize,
    /// Carry every local connection as a stream of one encrypted connection, when the sharer
    /// can too (docs/multiplexing.md); otherwise each gets a connection of its own.
    pub multiplex: bool,
}

/// Where local programs reach a connect.
enum Local {
    Tcp(TcpListener),
    Udp(UdpSocket, udp::UdpLimits),
}

/// A running connect: a local TCP listener whose every connection reaches the sharer's service.
pub struct Connect {
    local_addr: SocketAddr,
    running: Running,
}

impl Connect {
    /// The default of [`ConnectOptions::max_connections`].
    pub const DEFAULT_MAX_CONNECTIONS: usize = 512;

    /// Binds the listener, finds the sharer, and starts forwarding.
    pub async fn start(opts: ConnectOptions) -> Result<Connect> {
        // Bind first: a busy port is the user's most likely mistake and costs nothing to check.
        let bind_error = |source| Error::Bind {
            addr: opts.listen.to_string(),
            source,
        };
        let local = match opts.protocol {
            Protocol::Tcp => Local::Tcp(TcpListener::bind(opts.listen).await.map_err(bind_error)?),
            Protocol::Udp(limits) => Local::Udp(
                UdpSocket::bind(opts.listen).await.map_err(bind_error)?,
                limits,
            ),
        };
        let local_addr = match &local {
            Local::Tcp(listener) => listener.local_addr()?,
            Local::Udp(socket, _) => socket.local_addr()?,
        };
        let mut connector = Connector::new(&opts.network, opts.key_pair, opts.remote)
            .await?
            .force_relay(opts.force_relay);
        if let Some(relay) = opts.relay {
            connector = connector.with_relay(relay);
        }
        let running = match local {
            Local::Tcp(listener) => {
                if opts.multiplex {
                    connector = connector.multiplexed();
                }
                let pool = Arc::new(Pool::new(Arc::new(connector)));
                let limit = Limit {
                    open: Arc::new(Semaphore::new(opts.max_connections)),
                    max: opts.max_connections,
                    reconnect: Arc::new(Reconnect::default()),
                };
                Running::spawn(|stop| accept_loop(listener, pool, limit, stop))
            }
            Local::Udp(socket, limits) => {
                let connector = Arc::new(connector);
                Running::spawn(|stop| udp::serve_connect(socket, connector, limits, stop))
            }
        };
        Ok(Connect {
            local_addr,
            running,
        })
    }

    /// Where local programs connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops listening and leaves the DHT.
    pub async fn close(self) {
        self.running.stop().await;
    }
}

/// The cap on local connections open at once, and the retries they share.
struct Limit {
    open: Arc<Semaphore>,
    max: usize,
    reconnect: Arc<Reconnect>,
}

async fn accept_loop(
    listener: TcpListener,
    pool: Arc<Pool>,
    limit: Limit,
    mut stop: watch::Receiver<bool>,
) {
    let mut n = 0u64;
    loop {
        let (tcp, from) = tokio::select! {
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
        let Ok(permit) = Arc::clone(&limit.open).try_acquire_owned() else {
            warn!(
                connection = n,
                %from,
                max = limit.max,
                "refused a local connection: this many are open already, the most at once (--max-connections); close some or raise the limit"
            );
            // A reset, so the program sees a refusal rather than an empty answer.
            let _ = tcp.set_zero_linger();
            continue;
        };
        tokio::spawn(forward(
            n,
            tcp,
            from,
            Arc::clone(&pool),
            Arc::clone(&limit.reconnect),
            permit,
        ));
    }
    drop(listener);
    pool.close().await;
    if let Ok(pool) = Arc::try_unwrap(pool) {
        if let Ok(connector) = Arc::try_unwrap(Arc::clone(pool.connector())) {
            drop(pool);
            connector.close().await;
        }
    }
}

async fn forward(
    n: u64,
    tcp: TcpStream,
    from: SocketAddr,
    pool: Arc<Pool>,
    reconnect: Arc<Reconnect>,
    _permit: OwnedSemaphorePermit,
) {
    let started = Instant::now();
    let opened = match reconnect.open(n, |left| pool.open_within(left)).await {
        Ok(o) => o,
        Err(e) => {
            warn!(connection = n, %from, waited_ms = started.elapsed().as_millis() as u64, error = %e, "could not reach the sharer; closed the local connection");
            return;
        }
    };
    let open_us = started.elapsed().as_micros() as u64;
    match opened {
        Opened::Raw(peer, path) => {
            info!(connection = n, %from, %path, open_us, "connected to the sharer");
            pipe_and_log(n, tcp, peer).await;
        }
        Opened::Stream {
            stream,
            path,
            fresh,
        } => {
            info!(connection = n, %from, %path, stream = stream.id(), fresh, open_us, "connected to the sharer, multiplexed");
            pipe_stream_and_log(n, tcp, stream).await;
        }
    }
}
