//! Moving bytes between a local connection (TCP or Unix) and an encrypted peer stream.
//!
//! The rule that matters: *end, don't destroy*. When one side finishes sending, we pass the end
//! on (TCP FIN becomes a UDX END and back) and keep the other direction running, so an HTTP/1.0
//! server that writes its answer and closes still gets every byte to the peer, and protocols that
//! half-close keep working. Only a failure (a reset, a dead peer, our own stop) tears both
//! directions down, and then the local connection is reset, not ended.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, info};

use crate::events::{Event, Events};
use crate::farewell::Guard;
use crate::identity::PublicKey;
use crate::local::LocalStream;
use crate::peer::Path;
use crate::secret::SecretStream;

/// Bytes moved by one [`pipe`], each direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Transferred {
    /// From the local connection to the peer.
    pub(crate) to_peer: u64,
    /// From the peer to the local connection.
    pub(crate) from_peer: u64,
}

/// Copies both ways until both directions have ended, or either fails, or `guard` says we
/// stop, adding what moves to `events`' totals as it goes (what a live status shows). Returns
/// what moved, also when it failed. On failure the local connection is reset and the peer
/// stream dropped unfinished (the transport tells the peer at once). Each byte is copied once into user space each way: the local side is read straight
/// into the buffer a message is sealed in, and a message is opened where the transport put it
/// and written to the local side from there.
pub(crate) async fn pipe<T>(
    local: LocalStream,
    peer: SecretStream<T>,
    events: &Events,
    guard: &mut Guard,
) -> (Transferred, io::Result<()>)
where
    T: crate::secret::Transport,
{
    let (mut local_r, mut local_w) = tokio::io::split(local);
    let (mut peer_r, mut peer_w) = peer.into_split();
    let to_peer = AtomicU64::new(0);
    let from_peer = AtomicU64::new(0);

    let upstream = async {
        loop {
            let n = local_r.read(peer_w.buffer()).await?;
            if n == 0 {
                peer_w.shutdown().await?;
                debug!("local side ended; passed the end to the peer");
                return Ok::<(), io::Error>(());
            }
            peer_w.send(n).await?;
            events.count_out(n);
            to_peer.fetch_add(n as u64, Ordering::Relaxed);
        }
    };
    let downstream = async {
        while let Some(data) = peer_r.next().await? {
            local_w.write_all(data).await?;
            events.count_in(data.len());
            from_peer.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        local_w.shutdown().await?;
        debug!("peer ended; passed the end to the local side");
        Ok::<(), io::Error>(())
    };
    // try_join: the first error ends both directions, a clean end of one direction leaves the
    // other running.
    let result = tokio::select! {
        r = async { tokio::try_join!(upstream, downstream) } => r.map(|_| ()),
        _ = guard.stopping() => Err(stopping()),
    };
    if result.is_err() {
        local_r.unsplit(local_w).reset_on_drop();
    }
    let moved = Transferred {
        to_peer: to_peer.into_inner(),
        from_peer: from_peer.into_inner(),
    };
    (moved, result)
}

/// Why a connection ended when we stop.
pub(crate) fn stopping() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "stopping (SIGINT, SIGTERM or closed): the connection was ended",
    )
}

/// Says in `events` that connection `id` opened (to `peer_addr` when known), [`pipe`]s it
/// (until `guard` says we stop), then logs how it ended and says so too.
pub(crate) async fn pipe_and_log<T>(
    id: u64,
    local: LocalStream,
    (peer, path, peer_addr): (SecretStream<T>, Path, Option<SocketAddr>),
    events: &Events,
    mut guard: Guard,
) where
    T: crate::secret::Transport,
{
    events.emit(Event::ConnectionOpened {
        id,
        key: PublicKey::from(*peer.remote_public_key()),
        path,
        peer: peer_addr,
    });
    let (moved, result) = pipe(local, peer, events, &mut guard).await;
    let error = match result {
        Ok(()) => None,
        Err(e) => Some(e.to_string()),
    };
    info!(
        connection = id,
        to_peer = moved.to_peer,
        from_peer = moved.from_peer,
        error = error.as_deref(),
        "connection closed"
    );
    events.emit(Event::ConnectionClosed {
        id,
        bytes_in: moved.from_peer,
        bytes_out: moved.to_peer,
        error,
    });
}
