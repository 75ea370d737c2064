//! Piping one local connection through one stream of a multiplexed connection, with the
//! stream's credit deciding how much is read from the local side.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::info;

use super::driver::{gone, Incoming, MuxStream, Opening, Sender, FIRST_READ};
use super::proto::MAX_DATA;
use crate::events::{Event, Events};
use crate::local::LocalStream;
use crate::local_shared::{SharedRead, SharedWrite};
use crate::pipe::Transferred;

/// [`pipe_stream`]s the stream of peer connection `n`, reporting it in `events` as a
/// connection of its own (under `n`), and logs how it ended.
pub(crate) async fn pipe_stream_and_log(
    n: u64,
    local: LocalStream,
    stream: MuxStream,
    (key, path, peer): Opening,
    events: &Events,
) {
    let id = stream.id();
    events.emit(Event::ConnectionOpened {
        id: n,
        key,
        path,
        peer,
    });
    let (moved, error) = match pipe_stream(local, stream, events).await {
        Ok(t) => {
            info!(
                connection = n,
                stream = id,
                to_peer = t.to_peer,
                from_peer = t.from_peer,
                "stream closed"
            );
            (t, None)
        }
        Err((t, e)) => {
            info!(connection = n, stream = id, error = %e, "stream ended with an error; closed the local connection");
            (t, Some(e.to_string()))
        }
    };
    events.emit(Event::ConnectionClosed {
        id: n,
        bytes_in: moved.from_peer,
        bytes_out: moved.to_peer,
        error,
    });
}

/// Copies both ways between `local` and `stream` until both directions have ended, or either
/// fails: then the stream and the local connection are reset (TCP RST), so neither the peer
/// nor the local program mistakes a cut transfer for a complete one. Returns what moved, also on failure.
pub(crate) async fn pipe_stream(
    local: LocalStream,
    stream: MuxStream,
    events: &Events,
) -> Result<Transferred, (Transferred, io::Error)> {
    let MuxStream {
        id,
        shared,
        mut incoming,
        delivery,
        wake,
    } = stream;
    let sender = Sender {
        id,
        shared: &shared,
        wake: &wake,
    };
    let to_peer = AtomicU64::new(0);
    let local = local.into_shared();
    // From here the connection's reader writes the peer's bytes into `local` itself.
    delivery.attach(Arc::clone(&local), events);
    let (mut local_r, mut local_w) = (
        SharedRead(Arc::clone(&local)),
        SharedWrite(Arc::clone(&local)),
    );
    let upstream = async {
        // For bytes that had to be waited for: small for an interactive connection, grown to
        // one whole frame for one that fills it, so hundreds of idle local connections cost
        // little. Bytes already waiting go straight into the frame instead.
        let mut buf = vec![0u8; FIRST_READ];
        loop {
            let credit = sender.credit().await?;
            let n = match sender.send_ready(&mut local_r, credit).await? {
                Some(n) => n,
                None => {
                    // Nothing waiting: wait for it here, not under the connection's lock.
                    let want = credit.min(buf.len());
                    let n = local_r.read(&mut buf[..want]).await?;
                    if n == buf.len() && n < MAX_DATA {
                        buf.resize((n * 4).min(MAX_DATA), 0);
                    }
                    if n > 0 {
                        sender.send(&buf[..n]).await?;
                    }
                    n
                }
            };
            if n == 0 {
                sender.finish().await?;
                return Ok::<(), io::Error>(());
            }
            events.count_out(n);
            to_peer.fetch_add(n as u64, Ordering::Relaxed);
        }
    };
    let downstream = async {
        loop {
            match incoming.recv().await {
                Some(Incoming::Data(bytes)) => {
                    local_w.write_all(&bytes).await?;
                    delivery.written(bytes.len());
                    sender.taken(bytes.len()).await;
                }
                Some(Incoming::Fin) => {
                    local_w.shutdown().await?;
                    return Ok::<(), io::Error>(());
                }
                None => {
                    let why = shared.closed_reason();
                    return Err(gone(&why));
                }
            }
        }
    };
    let result = tokio::try_join!(upstream, downstream);
    let moved = Transferred {
        to_peer: to_peer.into_inner(),
        from_peer: delivery.delivered(),
    };
    match result {
        Ok(_) => {
            sender.done();
            Ok(moved)
        }
        Err(e) => {
            sender.reset();
            local.reset_on_drop();
            Err((moved, e))
        }
    }
}
