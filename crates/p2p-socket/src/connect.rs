//! Connect: a local listener (TCP, Unix socket, or UDP) whose every connection becomes an
//! encrypted connection to the sharer, opened by the dialer ([`Connector`]), or, when the
//! sharer multiplexes, a stream of one shared connection; the bytes are piped between the two.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tracing::{info, warn};

use crate::dht::NetworkOptions;
use crate::dialer::Connector;
use crate::error::{Error, Result};
use crate::events::{Event, Events};
use crate::farewell::{Farewell, Guards, PARTING};
use crate::identity::{KeyPair, PublicKey};
use crate::local::{Listen, LocalListener, LocalStream};
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
    /// Our identity towards the sharer (a fresh one is fine unless the sharer admits only
    /// some client keys).
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
    /// What local programs speak: TCP, or UDP (each client address a flow of datagrams, on a
    /// [`Listen::Tcp`] address).
    pub protocol: Protocol,
    /// Local connections open at once; past this, new ones are closed at once (and the log
    /// says so). [`Connect::DEFAULT_MAX_CONNECTIONS`] suits most uses.
    pub max_connections: usize,
    /// Carry every local connection as a stream of one encrypted connection, when the sharer
    /// can too (docs/multiplexing.md); otherwise each gets a connection of its own.
    pub multiplex: bool,
    /// Dial the sharer as soon as the connect listens, so the first local connection finds
    /// the connection open (docs/warm.md); otherwise the first local connection dials. TCP
    /// and Unix listeners only: UDP flows dial when they start.
    pub dial_at_start: bool,
    /// Where the connect says what it does ([`Event`]s); subscribe before starting to see all.
    pub events: Events,
}

/// Where local programs reach a connect.
enum Local {
    Stream(LocalListener),
    Udp(UdpSocket, udp::UdpLimits),
}

/// A running connect: a local listener whose every connection reaches the sharer's service.
pub struct Connect {
    local: String,
    local_addr: Option<SocketAddr>,
    running: Running,
}

impl Connect {
    /// The default of [`ConnectOptions::max_connections`].
    pub const DEFAULT_MAX_CONNECTIONS: usize = 512;

    /// Binds the listener, finds the sharer, and starts forwarding.
    pub async fn start(opts: ConnectOptions) -> Result<Connect> {
        // Bind first: a busy port is the user's most likely mistake and costs nothing to check.
        let local = match (&opts.protocol, &opts.listen) {
            (Protocol::Tcp, listen) => Local::Stream(LocalListener::bind(listen).await?),
            (Protocol::Udp(limits), Listen::Tcp(addr)) => Local::Udp(
                UdpSocket::bind(addr).await.map_err(|source| Error::Bind {
                    addr: addr.to_string(),
                    source,
                })?,
                *limits,
            ),
            #[cfg(unix)]
            (Protocol::Udp(_), Listen::Unix { path, .. }) => {
                return Err(Error::UnixSocket {
                    path: path.clone(),
                    why: "UDP is received on a host and port, not a Unix socket".into(),
                })
            }
        };
        let (local_name, local_addr) = match &local {
            Local::Stream(listener) => (listener.describe()?, listener.local_addr()?),
            Local::Udp(socket, _) => {
                let addr = socket.local_addr()?;
                (addr.to_string(), Some(addr))
            }
        };
        let mut connector = Connector::new(&opts.network, opts.key_pair, opts.remote)
            .await?
            .force_relay(opts.force_relay);
        if let Some(relay) = opts.relay {
            connector = connector.with_relay(relay);
        }
        opts.events.emit(Event::Listening {
            key: opts.remote,
            local: local_name.clone(),
        });
        let events = opts.events;
        let running = match local {
            Local::Stream(listener) => {
                if opts.multiplex {
                    connector = connector.multiplexed();
                }
                let farewell = Farewell::new();
                let guards = farewell.guards();
                let pool = Pool::new(Arc::new(connector), guards.clone());
                let warm = opts.dial_at_start;
                let shared = Shared {
                    open: Arc::new(Semaphore::new(opts.max_connections)),
                    max: opts.max_connections,
                    reconnect: Arc::new(Reconnect::default()),
                    remote: opts.remote,
                    events,
                    guards,
                };
                Running::spawn(move |stop| {
                    accept_loop(listener, pool, shared, farewell, warm, stop)
                })
            }
            Local::Udp(socket, limits) => {
                let connector = Arc::new(connector);
                Running::spawn(|stop| udp::serve_connect(socket, connector, limits, stop))
            }
        };
        Ok(Connect {
            local: local_name,
            local_addr,
            running,
        })
    }

    /// The TCP (or UDP) address local programs connect to; none when listening on a Unix
    /// socket.
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

/// What every local connection of a connect shares: the cap on those open at once, the
/// retries, and where they are reported.
#[derive(Clone)]
struct Shared {
    open: Arc<Semaphore>,
    max: usize,
    reconnect: Arc<Reconnect>,
    remote: PublicKey,
    events: Events,
    /// Each connection says goodbye to the sharer when the connect stops.
    guards: Guards,
}

async fn accept_loop(
    listener: LocalListener,
    pool: Arc<Pool>,
    shared: Shared,
    farewell: Farewell,
    mut warm: bool,
    mut stop: watch::Receiver<bool>,
) {
    // Runs beside the accepting, and is dropped with it: a dial still under way when the
    // connect stops does not hold the stop up.
    let mut warming = Box::pin(pool.warm(shared.remote, &shared.events));
    let mut n = 0u64;
    loop {
        let (local, from) = tokio::select! {
            _ = stop.changed() => break,
            () = &mut warming, if warm => {
                warm = false;
                continue;
            }
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
        let Ok(permit) = Arc::clone(&shared.open).try_acquire_owned() else {
            warn!(
                connection = n,
                %from,
                max = shared.max,
                "refused a local connection: this many are open already, the most at once (--max-connections); close some or raise the limit"
            );
            continue;
        };
        tokio::spawn(forward(
            n,
            local,
            from,
            Arc::clone(&pool),
            shared.clone(),
            permit,
        ));
    }
    drop(listener);
    drop(warming);
    // Before the DHT node goes: the goodbyes leave on its sockets.
    farewell.part(PARTING).await;
    if let Ok(pool) = Arc::try_unwrap(pool) {
        if let Ok(connector) = Arc::try_unwrap(Arc::clone(pool.connector())) {
            drop(pool);
            connector.close().await;
        }
    }
}

async fn forward(
    n: u64,
    local: LocalStream,
    from: String,
    pool: Arc<Pool>,
    shared: Shared,
    _permit: OwnedSemaphorePermit,
) {
    let started = Instant::now();
    let opened = match shared
        .reconnect
        .open(n, &shared.events, |left| pool.open_within(left))
        .await
    {
        Ok(o) => o,
        Err(e) => {
            warn!(connection = n, %from, waited_ms = started.elapsed().as_millis() as u64, error = %e, "could not reach the sharer; closed the local connection");
            shared.events.emit(Event::ConnectionFailed {
                id: n,
                reason: e.to_string(),
            });
            return;
        }
    };
    let open_us = started.elapsed().as_micros() as u64;
    match opened {
        Opened::Raw(peer, path, addr) => {
            info!(connection = n, %from, %path, open_us, "connected to the sharer");
            let guard = shared.guards.guard();
            pipe_and_log(n, local, (peer, path, addr), &shared.events, guard).await;
        }
        Opened::Stream {
            stream,
            path,
            fresh,
            peer,
        } => {
            info!(connection = n, %from, %path, stream = stream.id(), fresh, open_us, "connected to the sharer, multiplexed");
            let opening = (shared.remote, path, peer);
            pipe_stream_and_log(n, local, stream, opening, &shared.events).await;
        }
    }
}
