//! Roaming: an open multiplexed session survives the connecting side's move to another address
//! (docs/roaming.md). Its UDX stream is moved onto a new path made by a fresh handshake and
//! punch; the stream keeps its sequence space, so the secret stream and the multiplexer above it
//! never notice, and UDX resends what the old path lost.
//!
//! Authentication, in three parts:
//! - The first handshake derives a **ticket** (a session id and a resume secret) from the Noise
//!   split keys, which only the two ends know. Not from the handshake hash: that is a hash of
//!   the public transcript, computable by every DHT node that relayed the handshake.
//! - A resume is a new Noise handshake from the **same client key**, naming the `resume`
//!   feature; its first secret-stream message carries the session id and a **proof**, a keyed
//!   hash of the new handshake's hash with the resume secret. Sent inside the new secret stream
//!   and bound to the new handshake, it cannot be replayed on another one.
//! - The share moves the session only when the id is known, the client key is the session's, and
//!   the proof checks; anything else is refused, logged, and the session is left alone.
//!
//! The rules are in [`proto`], without I/O; here are the two ends that drive them: [`resume`]
//! (connect) and [`serve_resume`] (share).

pub(crate) mod proto;

use std::net::SocketAddr;
use std::time::Duration;

use thiserror::Error;
use tracing::{info, warn};

use crate::peer::{Link, Path, PeerStream};
use proto::{Answer, Request, RESUME_TIMEOUT};
pub(crate) use proto::{Entry, Sessions, Ticket, MAX_SESSIONS};

/// Why a session could not be resumed, on the connecting side.
#[derive(Debug, Error)]
pub(crate) enum ResumeError {
    #[error("could not reach the sharer again: {0}")]
    Dial(#[source] Box<crate::error::Error>),
    #[error("the sharer does not resume sessions (an older p2p-socket)")]
    NotSupported,
    #[error("the only new path is through a relay, which cannot carry a moved stream")]
    Relayed,
    #[error("the sharer refused to resume the session (it ended there, or it is not ours)")]
    Refused,
    #[error("the resume exchange failed: {0}")]
    Exchange(String),
    #[error("the session's stream could not be moved: {0}")]
    Move(String),
}

/// Moves the stream of `old` onto the path of `new`: its packets go out of `new`'s socket to
/// `new`'s peer, addressed to stream `remote_id` there. UDX resends from there what was not
/// acknowledged, in the stream's own sequence space.
fn move_stream(old: &Link, new: &Link, remote_id: u32) -> Result<(), String> {
    let to: SocketAddr = new
        .peer()
        .ok_or_else(|| "the new path has no peer address".to_string())?;
    old.stream
        .change_remote(&new.socket, remote_id, to)
        .map_err(|e| e.to_string())
}

/// One message each way on a connection, bounded by [`RESUME_TIMEOUT`].
async fn exchange(peer: PeerStream, ours: &[u8]) -> Result<Vec<u8>, String> {
    let (mut reader, mut writer) = peer.into_split();
    let talk = async {
        writer.write(ours).await.map_err(|e| e.to_string())?;
        let theirs = reader
            .read()
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "the other side ended the connection".to_string())?;
        // Both ends shut down cleanly, so neither's last message is overtaken by a reset.
        let _ = writer.shutdown().await;
        Ok::<_, String>(theirs)
    };
    let theirs = tokio::time::timeout(RESUME_TIMEOUT, talk)
        .await
        .map_err(|_| format!("no answer within {RESUME_TIMEOUT:?}"))??;
    // The other end's end of file, briefly, so our shutdown reaches it before the stream goes.
    let _ = tokio::time::timeout(Duration::from_secs(1), reader.read()).await;
    Ok(theirs)
}

/// Connect's side: asks the share, over the freshly opened resuming connection `fresh`, to
/// move the session of `ticket` onto it, and moves our stream of the session (`old`) too.
pub(crate) async fn resume(
    ticket: &Ticket,
    old: &Link,
    fresh: (PeerStream, Link, Path),
) -> Result<(), ResumeError> {
    let (peer, new, path) = fresh;
    if !new.features.resume {
        return Err(ResumeError::NotSupported);
    }
    if path == Path::Relayed {
        return Err(ResumeError::Relayed);
    }
    let request = Request {
        session: ticket.id,
        proof: ticket.proof(&new.handshake_hash),
    };
    let answer = exchange(peer, &request.encode())
        .await
        .map_err(ResumeError::Exchange)?;
    match Answer::decode(&answer).map_err(|e| ResumeError::Exchange(e.to_string()))? {
        Answer::Refused => Err(ResumeError::Refused),
        Answer::Resumed { stream } => move_stream(old, &new, stream).map_err(ResumeError::Move),
    }
}

/// The share's side of a resuming connection `n`: checks its request against `sessions` and,
/// when it holds, moves the session's stream onto this connection's path.
pub(crate) async fn serve_resume(
    n: u64,
    peer: PeerStream,
    new: Link,
    path: Path,
    sessions: &Sessions<Link>,
) {
    let client = *peer.remote_public_key();
    let (mut reader, mut writer) = peer.into_split();
    let first = match tokio::time::timeout(RESUME_TIMEOUT, reader.read()).await {
        Ok(Ok(Some(m))) => m,
        _ => {
            warn!(
                connection = n,
                "a resuming connection sent no resume request; closed it"
            );
            return;
        }
    };
    let verdict = if path == Path::Relayed {
        // A relay pairs streams by their ids: the session's stream, with its own, cannot go
        // there.
        Err("the new path is through a relay".to_string())
    } else {
        Request::decode(&first)
            .map_err(|e| e.to_string())
            .and_then(|r| {
                sessions
                    .check(&r, &client, &new.handshake_hash)
                    .map_err(|e| e.to_string())
            })
    };
    let answer = match verdict {
        Ok(entry) => match move_stream(&entry.handle, &new, entry.client_stream) {
            Ok(()) => {
                info!(connection = n, session = ?entry.ticket, to = ?new.peer(), "resumed a session over a new path");
                Answer::Resumed {
                    stream: entry.our_stream,
                }
            }
            Err(e) => {
                warn!(connection = n, error = %e, "could not move a session to its new path; it goes on on the old one");
                Answer::Refused
            }
        },
        Err(why) => {
            warn!(
                connection = n,
                client = %crate::identity::PublicKey::from(client),
                %why,
                "refused to resume a session; if this is not an attack, the client reconnects afresh"
            );
            Answer::Refused
        }
    };
    let _ = tokio::time::timeout(RESUME_TIMEOUT, async {
        writer.write(&answer.encode()).await?;
        writer.shutdown().await
    })
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(1), reader.read()).await;
}

#[cfg(test)]
mod tests;
