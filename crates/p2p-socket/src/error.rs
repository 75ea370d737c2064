//! The errors a user of the engine can meet. Each message says what happened and what to do
//! in the engine's terms; the CLI adds which of its flags does it.

/// Everything the tunnel engine can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A `--bootstrap` entry is not `host:port`.
    #[error("bad bootstrap address {0:?}: expected host:port, for example 127.0.0.1:49737 or node1.hyperdht.org:49737")]
    BadBootstrapAddress(String),

    /// No bootstrap node answered.
    #[error("could not reach any DHT bootstrap node ({nodes}); check the address and that a `p2p-socket bootstrap` (or another HyperDHT node) is running there, or use the public network's nodes")]
    BootstrapUnreachable {
        /// The nodes that were tried, comma separated.
        nodes: String,
    },

    /// A socket could not be bound.
    #[error("cannot listen on {addr}: {source}; pick another port (0 picks a free one) or stop whatever is using it")]
    Bind {
        /// The address we tried.
        addr: String,
        /// What the OS said.
        source: std::io::Error,
    },

    /// A Unix socket to listen on could not be created at `path`.
    #[error("cannot listen on the Unix socket {}: {why}", path.display())]
    UnixSocket {
        /// Where it was to go.
        path: std::path::PathBuf,
        /// What stood in the way, and what to do.
        why: String,
    },

    /// The DHT found no record for the key.
    #[error("no peer is sharing this key (searched the DHT and found no announcement); check the key, and that `p2p-socket share` is running on the other side and uses the same bootstrap nodes")]
    PeerNotFound,

    /// Peers announce the key but none completed the handshake.
    #[error("found the peer on the DHT but it did not answer the handshake ({0}); the sharer may have just stopped, try again")]
    HandshakeFailed(String),

    /// The handshake worked but no packets got through on the data path.
    #[error("the peer answered the handshake but no data path opened {0} within 10 s; both sides may be behind NATs that need hole punching")]
    NoDataPath(String),

    /// Both sides are behind NATs and no hole could be punched between them.
    #[error("could not punch through the NATs between us and the sharer: {0}; a relay gets through where punching fails (`p2p-socket relay` on a public host)")]
    HolepunchFailed(String),

    /// The NATs on both sides are of kinds no hole can be punched through.
    #[error("no direct path is possible: {0}; connecting needs a relay (`p2p-socket relay` on a public host, named by either side)")]
    RelayNeeded(String),

    /// Going through a relay did not work.
    #[error("the relay did not get us through: {0}; check the relay key, and that `p2p-socket relay` runs on a host both sides can reach")]
    RelayFailed(String),

    /// The remote side speaks an incompatible protocol version.
    #[error("the peer uses an incompatible protocol ({0}); update p2p-socket on both sides")]
    Incompatible(String),

    /// The DHT failed: `doing` says at what; the source says how.
    #[error("the DHT failed while {doing}")]
    Dht {
        /// What we were doing.
        doing: &'static str,
        /// What went wrong.
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The encrypted stream failed.
    #[error("the encrypted stream failed")]
    SecretStream(#[source] Box<dyn std::error::Error + Send + Sync>),

    /// The transport failed.
    #[error("transport: {0}")]
    Transport(#[from] udx::UdxError),

    /// Some I/O failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl From<peeroxide_dht::hyperdht::HyperDhtError> for Error {
    fn from(e: peeroxide_dht::hyperdht::HyperDhtError) -> Self {
        Error::Dht {
            doing: "talking to other nodes",
            source: Box::new(e),
        }
    }
}

impl From<peeroxide_dht::rpc::DhtError> for Error {
    fn from(e: peeroxide_dht::rpc::DhtError) -> Self {
        Error::Dht {
            doing: "talking to other nodes",
            source: Box::new(e),
        }
    }
}

/// Result with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
