//! The sharer's side of a multiplexed connection: each stream the peer opens gets its own
//! connection to the local service.

use std::future::Future;

use tokio::net::TcpStream;
use tracing::info;

use super::proto::{Limits, Role};
use super::{pipe_stream_and_log, Mux};
use crate::peer::PeerStream;

/// Serves connection number `n` until it ends: each stream is piped to a connection that
/// `service` makes (none: the service refused, and the stream is reset).
pub(crate) async fn serve<F, Fut>(n: u64, peer: PeerStream, service: F)
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = Option<TcpStream>> + Send + 'static,
{
    let (mux, mut accepted) = Mux::start(peer, Role::Server, Limits::default());
    let mut streams = 0u64;
    while let Some(stream) = accepted.recv().await {
        streams += 1;
        let tcp = service(n);
        tokio::spawn(async move {
            match tcp.await {
                Some(tcp) => pipe_stream_and_log(n, tcp, stream).await,
                None => stream.refuse(),
            }
        });
    }
    mux.close("done");
    info!(connection = n, streams, "multiplexed connection closed");
}
