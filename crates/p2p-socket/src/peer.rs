//! One encrypted connection to a peer: a UDX stream on the DHT's socket, wrapped in the
//! secret stream whose keys came out of the Noise handshake (as hyperdht's
//! `NoiseSecretStream.start(rawStream, { handshake })` does).

use std::time::Duration;

use peeroxide_dht::noise_wrap::NoiseWrapResult;
use peeroxide_dht::secret_stream::SecretStream;
use udx::UdxStream;

use crate::error::{Error, Result};

/// The encrypted stream type that [`crate::connect`] returns and a share hands to its service.
pub type PeerStream = SecretStream<UdxStream>;

/// How long the data path may take to carry the secret stream's first message each way. Node's
/// hyperdht gives a connection that does not open 10 s (`HANDSHAKE_INITIAL_TIMEOUT`); loopback and
/// LAN paths open in milliseconds, the internet in a round trip or two.
pub(crate) const DATA_PATH_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the secret stream's header exchange on `stream`, bounded by [`DATA_PATH_TIMEOUT`].
pub(crate) async fn secure(
    is_initiator: bool,
    stream: UdxStream,
    hs: &NoiseWrapResult,
    path: &str,
) -> Result<PeerStream> {
    let opened = SecretStream::from_session(
        is_initiator,
        stream,
        hs.tx,
        hs.rx,
        hs.handshake_hash,
        hs.remote_public_key,
    );
    match tokio::time::timeout(DATA_PATH_TIMEOUT, opened).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(Error::SecretStream(e.to_string())),
        Err(_) => Err(Error::NoDataPath(path.to_string())),
    }
}
