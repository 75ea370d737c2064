//! The sharer's side of a multiplexed connection: each stream the peer opens gets its own
//! connection to the local service.

use std::future::Future;

use tracing::info;

use super::proto::{Limits, Role};
use super::{pipe_stream_and_log, Mux, Opening};
use crate::events::Events;
use crate::farewell::Guard;
use crate::local::LocalStream;
use crate::peer::PeerStream;

/// Serves connection number `n` until it ends: each stream is piped to a connection that
/// `service` makes (none: the service refused, and the stream is reset). `pinging` when both
/// sides named the PING feature; the peer gets a CLOSE when `guard` says we stop.
/// Each stream is reported in `events` as a connection numbered `n`, of `opened`.
pub(crate) async fn serve<F, Fut>(
    n: u64,
    peer: PeerStream,
    pinging: bool,
    guard: Guard,
    opened: Opening,
    events: &Events,
    service: F,
) where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = Option<LocalStream>> + Send + 'static,
{
    let (mux, mut accepted) = Mux::start(peer, Role::Server, Limits::default(), pinging, guard);
    let mut streams = 0u64;
    while let Some(stream) = accepted.recv().await {
        streams += 1;
        let local = service(n);
        let events = events.clone();
        tokio::spawn(async move {
            match local.await {
                Some(local) => pipe_stream_and_log(n, local, stream, opened, &events).await,
                None => stream.refuse(),
            }
        });
    }
    mux.close("done");
    info!(connection = n, streams, "multiplexed connection closed");
}
