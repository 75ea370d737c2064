//! `connect --stdio`: one connection to the sharer carried on stdin and stdout, for programs
//! that talk through a pipe, as ssh does with `-o ProxyCommand='p2p-socket connect --stdio
//! --key K'`. Logs go to stderr only; stdout carries nothing but the sharer's bytes.

use anyhow::{Context, Result};
use p2p_socket::{Connection, Connector};
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};

/// Opens the connection and moves bytes until the sharer's side ends. The end of stdin ends our
/// side only (the sharer reads end of file and may go on answering, as with a TCP half-close);
/// the end of the sharer's side, once its bytes are all on stdout, ends the run.
pub async fn run(connector: Connector) -> Result<()> {
    let connection = connector
        .connect()
        .await
        .context("could not open a connection to the sharer")?;
    tracing::info!(path = %connection.path(), "connected to the sharer; carrying stdin and stdout");
    let (from_peer, to_peer) = tokio::io::split(connection);
    let upstream = tokio::spawn(stdin_to_peer(to_peer));
    let result = peer_to_stdout(from_peer).await;
    // The sharer ended: whatever stdin still has has nowhere to go.
    upstream.abort();
    result
}

async fn stdin_to_peer(mut to_peer: WriteHalf<Connection>) -> Result<()> {
    let mut stdin = tokio::io::stdin();
    let sent = tokio::io::copy(&mut stdin, &mut to_peer).await;
    // On an error too: the sharer should learn that nothing more comes.
    let ended = to_peer.shutdown().await;
    let sent = sent.context("reading stdin failed")?;
    ended.context("passing the end of stdin to the sharer failed")?;
    tracing::debug!(bytes = sent, "stdin ended; passed the end to the sharer");
    Ok(())
}

async fn peer_to_stdout(mut from_peer: ReadHalf<Connection>) -> Result<()> {
    let mut stdout = tokio::io::stdout();
    let received = tokio::io::copy(&mut from_peer, &mut stdout)
        .await
        .context("the connection to the sharer failed")?;
    stdout.flush().await.context("writing stdout failed")?;
    tracing::debug!(bytes = received, "the sharer ended the connection");
    Ok(())
}
