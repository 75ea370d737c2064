//! One encrypted connection to a peer: a UDX stream on the DHT's socket, on a socket punched
//! through the NATs, or through a blind relay, wrapped in the secret stream whose keys came out
//! of the Noise handshake (as hyperdht's `NoiseSecretStream.start(rawStream, { handshake })`
//! does).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use udx::UdxStream;

use crate::error::{Error, Result};
use crate::noise_session::{Features, Keys};
pub(crate) use crate::path::Path;
use crate::roaming::proto::Ticket;
use crate::secret::SecretStream;

/// What carries an encrypted connection: the UDX socket its stream lives on and a view of the
/// stream. A relay pairs streams on the socket of the connection they were negotiated over, to
/// that connection's peer (both ends can reach each other there, whatever NATs lie between).
#[derive(Clone)]
pub(crate) struct Link {
    pub(crate) socket: udx::UdxSocket,
    pub(crate) stream: udx::StreamObserver,
    /// What the handshake agreed the connection does (one stream of bytes, or many).
    pub(crate) features: Features,
    /// The handshake's hash, which a resume's proof is bound to (crate::roaming).
    pub(crate) handshake_hash: [u8; 64],
    /// When the session may roam: its ticket (crate::roaming).
    pub(crate) ticket: Option<Ticket>,
}

impl Link {
    /// Where the peer is (known once the connection is open).
    pub(crate) fn peer(&self) -> Option<SocketAddr> {
        self.stream.remote_addr()
    }
}

/// The encrypted stream of a connection, message by message.
pub(crate) type PeerStream = SecretStream<UdxStream>;

/// How long the data path may take to carry the secret stream's first message each way. Node's
/// hyperdht gives a connection that does not open 10 s (`HANDSHAKE_INITIAL_TIMEOUT`); loopback and
/// LAN paths open in milliseconds, the internet in a round trip or two.
pub(crate) const DATA_PATH_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the secret stream's header exchange on `stream`, bounded by [`DATA_PATH_TIMEOUT`].
pub(crate) async fn secure(
    is_initiator: bool,
    stream: UdxStream,
    hs: &Keys,
    path: Path,
    peer: Option<SocketAddr>,
) -> Result<(PeerStream, Link)> {
    let link = Link {
        socket: stream.socket(),
        stream: stream.observer(),
        features: hs.features,
        handshake_hash: hs.handshake_hash,
        ticket: hs.features.roam.then(|| Ticket::derive(hs, is_initiator)),
    };
    let opened = SecretStream::from_session(
        is_initiator,
        stream,
        hs.tx,
        hs.rx,
        hs.handshake_hash,
        hs.remote_public_key,
    );
    match tokio::time::timeout(DATA_PATH_TIMEOUT, opened).await {
        Ok(Ok(s)) => Ok((s, link)),
        Ok(Err(e)) => Err(Error::SecretStream(Box::new(e))),
        Err(_) => Err(Error::NoDataPath {
            path,
            peer,
            waited: DATA_PATH_TIMEOUT,
        }),
    }
}

/// A stream id listened for on several sockets at once, for the side that waits to be reached:
/// the peer's first packet may arrive on the DHT's socket (it dialled us) or on any socket we
/// punched with, and the stream belongs on whichever hears it first (hyperdht's raw stream
/// `firewall` hook). The others are dropped unconnected, which sends nothing.
pub(crate) struct Acceptor<T> {
    local_id: u32,
    remote_id: u32,
    listening: HashSet<SocketAddr>,
    winners_tx: mpsc::UnboundedSender<(UdxStream, T)>,
    winners: mpsc::UnboundedReceiver<(UdxStream, T)>,
    done: watch::Sender<bool>,
}

impl<T: Send + 'static> Acceptor<T> {
    pub(crate) fn new(local_id: u32, remote_id: u32) -> Self {
        let (winners_tx, winners) = mpsc::unbounded_channel();
        Acceptor {
            local_id,
            remote_id,
            listening: HashSet::new(),
            winners_tx,
            winners,
            done: watch::channel(false).0,
        }
    }

    /// Our stream id for the connection, and the peer's.
    pub(crate) fn ids(&self) -> (u32, u32) {
        (self.local_id, self.remote_id)
    }

    /// Also listens on `socket`; `tag` comes back with the stream if this socket wins.
    pub(crate) fn listen_on(&mut self, socket: &udx::UdxSocket, tag: T) -> Result<()> {
        let addr = socket.local_addr()?;
        if !self.listening.insert(addr) {
            return Ok(());
        }
        let stream = socket.create_stream(self.local_id)?;
        self.race(stream, self.remote_id, tag);
        Ok(())
    }

    /// Also waits on `stream`, a stream of our own on some other path, for a first packet from
    /// `remote_id` (a relay's stream, which has an id of its own).
    pub(crate) fn race(&mut self, stream: UdxStream, remote_id: u32, tag: T) {
        stream.connect_on_first_packet(remote_id);
        let winners = self.winners_tx.clone();
        let mut done = self.done.subscribe();
        tokio::spawn(async move {
            tokio::select! {
                connected = stream.connected() => {
                    if connected.is_ok() {
                        let _ = winners.send((stream, tag));
                    }
                }
                _ = done.changed() => {}
            }
        });
    }

    /// The first stream a packet arrived for. Later calls return nothing useful: the losers are
    /// dropped once this returns.
    pub(crate) async fn accepted(&mut self) -> Option<(UdxStream, T)> {
        let winner = self.winners.recv().await;
        let _ = self.done.send(true);
        winner
    }
}

impl<T> Drop for Acceptor<T> {
    fn drop(&mut self) {
        let _ = self.done.send(true);
    }
}
