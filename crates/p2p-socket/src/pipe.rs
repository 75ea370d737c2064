//! Moving bytes between a local TCP connection and an encrypted peer stream.
//!
//! The rule that matters: *end, don't destroy*. When one side finishes sending, we pass the end
//! on (TCP FIN becomes a UDX END and back) and keep the other direction running, so an HTTP/1.0
//! server that writes its answer and closes still gets every byte to the peer, and protocols that
//! half-close keep working. Only a failure (a reset, a dead peer) tears both directions down.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, info};

use crate::secret::SecretStream;

/// Bytes moved by one [`pipe`], each direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transferred {
    /// From the local TCP connection to the peer.
    pub to_peer: u64,
    /// From the peer to the local TCP connection.
    pub from_peer: u64,
}

/// Copies both ways until both directions have ended, or either fails. Each byte is copied
/// once into user space each way: TCP reads straight into the buffer a message is sealed in,
/// and a message is opened where the transport put it and written to TCP from there.
pub(crate) async fn pipe<T>(tcp: TcpStream, peer: SecretStream<T>) -> io::Result<Transferred>
where
    T: AsyncRead + AsyncWrite + Unpin + Send,
{
    let _ = tcp.set_nodelay(true);
    let (mut tcp_r, mut tcp_w) = tcp.into_split();
    let (mut peer_r, mut peer_w) = peer.into_split();

    let upstream = async {
        let mut total = 0u64;
        loop {
            let n = tcp_r.read(peer_w.buffer()).await?;
            if n == 0 {
                peer_w.shutdown().await?;
                debug!(
                    bytes = total,
                    "local side ended; passed the end to the peer"
                );
                return Ok::<u64, io::Error>(total);
            }
            peer_w.send(n).await?;
            total += n as u64;
        }
    };
    let downstream = async {
        let mut total = 0u64;
        while let Some(data) = peer_r.next().await? {
            tcp_w.write_all(data).await?;
            total += data.len() as u64;
        }
        tcp_w.shutdown().await?;
        debug!(
            bytes = total,
            "peer ended; passed the end to the local side"
        );
        Ok::<u64, io::Error>(total)
    };
    // try_join: the first error ends both directions (dropping the halves closes the
    // connection), a clean end of one direction leaves the other running.
    let (to_peer, from_peer) = tokio::try_join!(upstream, downstream)?;
    Ok(Transferred { to_peer, from_peer })
}

/// [`pipe`]s connection number `n` and logs how it ended.
pub(crate) async fn pipe_and_log<T>(n: u64, tcp: TcpStream, peer: SecretStream<T>)
where
    T: AsyncRead + AsyncWrite + Unpin + Send,
{
    match pipe(tcp, peer).await {
        Ok(t) => info!(
            connection = n,
            to_peer = t.to_peer,
            from_peer = t.from_peer,
            "connection closed"
        ),
        Err(e) => info!(connection = n, error = %e, "connection ended with an error"),
    }
}
