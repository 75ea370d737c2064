//! The `blind-relay` channel on an encrypted connection between a peer and a relay: one
//! protomux channel, named by the peer's public key, carrying `pair` and `unpair`.
//!
//! Two tasks per connection: one reads frames (and is never cancelled mid-frame), one writes
//! what the [`Channel`] handle queues, plus a keepalive: an empty encrypted message every few
//! seconds, which the other side drops but which keeps NAT mappings open on an idle connection
//! (the relayed streams share the mapping) and makes the transport notice a dead peer.

use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::debug;

use super::wire::{self, Incoming, Pair, Token, PROTOCOL};
use crate::peer::PeerStream;
use crate::secret;

/// Node's hyperdht keeps relay connections alive every 5 s (`relayKeepAlive`).
const KEEPALIVE: Duration = Duration::from_secs(5);

/// After we closed our side, how long the other side has to close its own.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// Messages read but not yet handled. When the handler falls behind, reading stops (and the
/// transport pushes back on the sender) instead of the queue growing with whatever a peer
/// sends: a hostile peer can fill it, but only up to this.
const MESSAGES_QUEUE: usize = 64;
/// Channels we refuse, waiting to be written: a peer that opens channels faster than it reads
/// our refusals is read no further until it does.
const REJECTS_QUEUE: usize = 16;

/// A message on the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Message {
    Pair(Pair),
    Unpair(Token),
}

/// Sends on the channel. The connection closes (gracefully: protomux close, then the end of
/// the encrypted stream) when the last clone is dropped.
#[derive(Clone)]
pub(crate) struct Channel {
    frames: mpsc::UnboundedSender<Vec<u8>>,
    ended: watch::Receiver<bool>,
}

impl Channel {
    pub(crate) fn pair(&self, p: &Pair) {
        let _ = self.frames.send(wire::pair(p));
    }

    pub(crate) fn unpair(&self, token: &Token) {
        let _ = self.frames.send(wire::unpair(token));
    }

    /// False once the connection is over.
    pub(crate) fn is_open(&self) -> bool {
        !*self.ended.borrow()
    }

    /// Resolves when the connection is over.
    pub(crate) async fn ended(&self) {
        until_true(&mut self.ended.clone()).await;
    }
}

/// Opens the `blind-relay` channel named `id` (the public key of the peer, which is the side
/// that is not the relay) on `stream`; returns the handle and what arrives on the channel
/// (which ends with the connection).
pub(crate) fn open(stream: PeerStream, id: [u8; 32]) -> (Channel, mpsc::Receiver<Message>) {
    let (reader, writer) = stream.into_split();
    let (frames_tx, frames) = mpsc::unbounded_channel();
    let (rejects_tx, rejects) = mpsc::channel(REJECTS_QUEUE);
    let (messages_tx, messages) = mpsc::channel(MESSAGES_QUEUE);
    let (ended_tx, ended) = watch::channel(false);
    let (closing_tx, closing) = watch::channel(false);
    tokio::spawn(write_loop(
        writer,
        frames,
        rejects,
        ended.clone(),
        closing_tx,
        id,
    ));
    tokio::spawn(async move {
        tokio::select! {
            why = read_loop(reader, id, messages_tx, rejects_tx) => {
                debug!(%why, "relay connection ended");
            }
            () = gave_up(closing) => debug!("relay connection: the other side never closed"),
        }
        let _ = ended_tx.send(true);
    });
    (
        Channel {
            frames: frames_tx,
            ended,
        },
        messages,
    )
}

async fn gave_up(mut closing: watch::Receiver<bool>) {
    until_true(&mut closing).await;
    tokio::time::sleep(CLOSE_GRACE).await;
}

async fn until_true(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|v| *v).await;
}

type Reader = secret::ReadHalf<secret::UdxReadHalf>;
type Writer = secret::WriteHalf<secret::UdxWriteHalf>;

async fn write_loop(
    mut w: Writer,
    mut frames: mpsc::UnboundedReceiver<Vec<u8>>,
    mut rejects: mpsc::Receiver<Vec<u8>>,
    mut ended: watch::Receiver<bool>,
    closing: watch::Sender<bool>,
    id: [u8; 32],
) {
    if w.write(&wire::open(&id)).await.is_err() {
        return;
    }
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    keepalive.tick().await;
    loop {
        let frame = tokio::select! {
            f = frames.recv() => match f {
                Some(f) => f,
                None => {
                    // Every handle is gone: close the channel, then the connection.
                    let _ = w.write(&wire::close()).await;
                    let _ = w.shutdown().await;
                    let _ = closing.send(true);
                    return;
                }
            },
            Some(f) = rejects.recv() => f,
            _ = keepalive.tick() => Vec::new(),
            () = until_true(&mut ended) => {
                // The other side is done: end ours too, so the stream finishes cleanly.
                let _ = w.write(&wire::close()).await;
                let _ = w.shutdown().await;
                return;
            }
        };
        if w.write(&frame).await.is_err() {
            return;
        }
    }
}

/// Reads until the connection or the channel ends; returns why.
async fn read_loop(
    mut r: Reader,
    id: [u8; 32],
    messages: mpsc::Sender<Message>,
    rejects: mpsc::Sender<Vec<u8>>,
) -> String {
    // The other side's local id for the channel, once it opened it.
    let mut remote: Option<u64> = None;
    loop {
        let frame = match r.read().await {
            Ok(Some(frame)) => frame,
            Ok(None) => return "the other side ended it".into(),
            Err(e) => return format!("read failed: {e}"),
        };
        let items = match wire::decode(&frame) {
            Ok(items) => items,
            Err(e) => return e.to_string(),
        };
        for item in items {
            match item {
                Incoming::Open {
                    remote_id,
                    protocol,
                    id: their_id,
                } => {
                    if remote.is_none() && protocol == PROTOCOL && their_id.as_deref() == Some(&id)
                    {
                        remote = Some(remote_id);
                    } else {
                        // Nothing else is spoken here (protomux rejects channels nobody opens).
                        let _ = rejects.send(wire::reject(remote_id)).await;
                    }
                }
                Incoming::Reject { local_id } if local_id == wire::CHANNEL => {
                    return "the other side refused the blind-relay channel (not a relay?)".into()
                }
                Incoming::Close { remote_id } if Some(remote_id) == remote => {
                    return "the other side closed the channel".into()
                }
                Incoming::Pair { remote_id, pair } if Some(remote_id) == remote => {
                    let _ = messages.send(Message::Pair(pair)).await;
                }
                Incoming::Unpair { remote_id, token } if Some(remote_id) == remote => {
                    let _ = messages.send(Message::Unpair(token)).await;
                }
                _ => {}
            }
        }
    }
}
