//! The connecting side's multiplexed connection: the connect opens it when it starts
//! ([`super::warm`]) or the first local connection does, the next ones become streams on it,
//! and when it ends (the sharer restarted, the path died) the next local connection opens a
//! new one. A connection that heard nothing for [`IDLE`], or was made before our address
//! changed, must answer a PING first ([`Mux::answers`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Mutex as AsyncMutex;
use tracing::info;

use super::live::IDLE;
use super::proto::{Limits, Role};
use super::roam::{self, Roamable};
use super::{Mux, MuxStream};
use crate::dialer::Connector;
use crate::error::{Error, Result};
use crate::farewell::Guards;
use crate::lock::lock;
use crate::peer::{Path, PeerStream};

/// The shared connection, and what it was opened with.
pub(super) struct Current {
    mux: Mux,
    pub(super) path: Path,
    pub(super) peer: Option<SocketAddr>,
    /// [`Connector::moves_so_far`] when it was opened or last answered a PING.
    moves: u64,
}

/// How a local connection reaches the sharer.
pub(crate) enum Opened {
    /// A stream on the multiplexed connection; `fresh` when this connection opened it.
    Stream {
        stream: MuxStream,
        path: Path,
        fresh: bool,
        /// The sharer's address, where known.
        peer: Option<SocketAddr>,
    },
    /// A connection of its own, raw bytes: the sharer does not multiplex (Node, hypertele,
    /// holesail, an older p2p-socket).
    Raw(PeerStream, Path, Option<SocketAddr>),
}

/// The connection local connections share.
pub(crate) struct Pool {
    connector: Arc<Connector>,
    /// Held while a connection opens, so that a burst of local connections waits for one
    /// handshake instead of making one each.
    pub(super) current: AsyncMutex<Option<Current>>,
    /// The sharer answered without multiplexing: every local connection dials, in parallel.
    pub(super) raw: AtomicBool,
    /// A raw connection dialed when the connect started, for the first local connection
    /// ([`super::warm`]).
    pub(super) spare: Mutex<Option<Raw>>,
    /// Each connection says goodbye when the connect stops.
    guards: Guards,
    /// Sessions opened that may roam (docs/roaming.md), until [`roam::follow`] takes them.
    pub(super) roaming: Mutex<Vec<Roamable>>,
}

impl Pool {
    /// A pool whose session follows our moves ([`super::roam`]).
    pub(crate) fn new(connector: Arc<Connector>, guards: Guards) -> Arc<Pool> {
        let moves = connector.moves();
        let pool = Arc::new(Pool {
            connector,
            current: AsyncMutex::new(None),
            raw: AtomicBool::new(false),
            spare: Mutex::new(None),
            guards,
            roaming: Mutex::new(Vec::new()),
        });
        roam::follow(Arc::downgrade(&pool), moves);
        pool
    }

    /// The connector underneath.
    pub(crate) fn connector(&self) -> &Arc<Connector> {
        &self.connector
    }

    /// A way to the sharer for one local connection, opening a connection (within `limit`)
    /// only when there is none to share.
    pub(crate) async fn open_within(&self, limit: Duration) -> Result<Opened> {
        if self.raw.load(Ordering::Relaxed) {
            return self.open_raw(limit).await;
        }
        let mut current = self.current.lock().await;
        if self.raw.load(Ordering::Relaxed) {
            // Found raw by the dial we waited for (at start, or another local connection's):
            // dial in parallel from now on, not one at a time under the lock.
            drop(current);
            return self.open_raw(limit).await;
        }
        if let Some(c) = current.as_mut() {
            // Our address changed since it was opened or last answered: its path may lead
            // nowhere now.
            let moves = self.connector.moves_so_far();
            let moved = c.moves != moves;
            if c.mux.answers(IDLE, moved).await {
                // It answered from where we are now: later connections need not ask again
                // for this move (roaming may have carried it to a new path).
                c.moves = moves;
                if let Some(stream) = c.mux.open().await {
                    return Ok(Opened::Stream {
                        stream,
                        path: c.path,
                        fresh: false,
                        peer: c.peer,
                    });
                }
            } else if let Some(c) = current.take() {
                info!(
                    moved,
                    "the shared connection to the sharer did not answer; opening a new one"
                );
                c.mux
                    .retire("it did not answer a ping; new streams go on a new connection");
            }
        }
        // None yet, or it ended, or it carries the most streams it may: a new one. One that
        // is full keeps serving its streams until they end.
        let c = match self.dial(limit).await? {
            Dialed::Mux(c) => c,
            Dialed::Raw(raw) => {
                let (peer, path, addr) = *raw;
                return Ok(Opened::Raw(peer, path, addr));
            }
        };
        let stream = c.mux.open().await.ok_or_else(|| Error::NoDataPath {
            path: c.path,
            peer: None,
            waited: Duration::ZERO,
        })?;
        let (path, peer) = (c.path, c.peer);
        *current = Some(c);
        Ok(Opened::Stream {
            stream,
            path,
            fresh: true,
            peer,
        })
    }

    /// Opens a new connection to the sharer within `limit`: a multiplexed one to share, or,
    /// when the sharer does not multiplex, a raw one (and from then on every local connection
    /// dials its own).
    pub(super) async fn dial(&self, limit: Duration) -> Result<Dialed> {
        let moves = self.connector.moves_so_far();
        let (peer, link, path) = self.connector.open_link_within(limit).await?;
        if !link.features.mux {
            self.raw.store(true, Ordering::Relaxed);
            return Ok(Dialed::Raw(Box::new((peer, path, link.peer()))));
        }
        let (mux, _) = Mux::start(
            peer,
            Role::Client,
            Limits::default(),
            link.features.ping,
            self.guards.guard(),
        );
        lock(&self.roaming).extend(Roamable::of(&link, path, &mux));
        Ok(Dialed::Mux(Current {
            mux,
            path,
            peer: link.peer(),
            moves,
        }))
    }

    /// A connection of its own for a local connection to a raw sharer: the one dialed at
    /// start if it still waits for a taker, else a new one.
    async fn open_raw(&self, limit: Duration) -> Result<Opened> {
        let spare = lock(&self.spare).take();
        if let Some((peer, path, addr)) = spare {
            return Ok(Opened::Raw(peer, path, addr));
        }
        let (peer, link, path) = self.connector.open_link_within(limit).await?;
        Ok(Opened::Raw(peer, path, link.peer()))
    }
}

/// A raw connection to the sharer: the stream, how it travels, and the sharer's address.
pub(super) type Raw = (PeerStream, Path, Option<SocketAddr>);

/// A connection [`Pool::dial`] opened.
pub(super) enum Dialed {
    Mux(Current),
    Raw(Box<Raw>),
}
