//! The errors a user of the engine can meet. Each message says what happened and what to do
//! in the engine's terms; the CLI adds which of its flags does it. The variants carry what was
//! tried and what failed as fields, so a caller branches on them, never on the text.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use crate::firewall::Firewall;
use crate::identity::PublicKey;
use crate::path::Path;

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

    /// The lookup found no announcement of the key.
    #[error("no peer is sharing this key ({key}): the lookup heard from {nodes} DHT nodes and none holds its announcement; check the key, and that `p2p-socket share` is running on the other side and uses the same bootstrap nodes")]
    PeerNotFound {
        /// The key looked up.
        key: PublicKey,
        /// How many DHT nodes answered the lookup (0: none within the lookup's time).
        nodes: usize,
    },

    /// Peers announce the key but none completed the handshake.
    #[error("found the sharer on the DHT but the handshake via {} failed: {failure}; the sharer may have just stopped or moved (try again), or it admits only some client keys (Node and hypertele sharers do not answer a key they refuse)", describe_via(via))]
    HandshakeFailed {
        /// Where the handshake was sent: the DHT nodes tried (or the sharer's end of a punched
        /// hole), in order.
        via: Vec<SocketAddr>,
        /// What went wrong at the last of them.
        failure: HandshakeFailure,
        /// The lower-level error, where there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },

    /// The handshake worked but no packets got through on the data path.
    #[error("the sharer answered the handshake but no packet came back on the {path} path{} within {} s; both sides may be behind NATs that need hole punching, or the sharer's address changed", describe_peer(peer), waited.as_secs())]
    NoDataPath {
        /// The path tried.
        path: Path,
        /// Where we sent to, when we knew.
        peer: Option<SocketAddr>,
        /// How long we waited.
        waited: Duration,
    },

    /// Both sides are behind NATs and no hole could be punched between them.
    #[error("could not punch through the NATs between us ({ours}) and the sharer ({theirs}): {failure}; a relay gets through where punching fails (`p2p-socket relay` on a public host)")]
    HolepunchFailed {
        /// Our NAT, as far as we knew.
        ours: Firewall,
        /// The sharer's NAT, as far as we knew.
        theirs: Firewall,
        /// What failed.
        failure: PunchFailure,
    },

    /// The NATs on both sides are of kinds no hole can be punched through.
    #[error("no direct path is possible: we ({ours}) and the sharer ({theirs}) are both behind NATs that pick a new port for every destination; connecting needs a relay (`p2p-socket relay` on a public host, named by either side)")]
    RelayNeeded {
        /// Our NAT.
        ours: Firewall,
        /// The sharer's NAT.
        theirs: Firewall,
    },

    /// Only a relay could get through, and neither side named one.
    #[error("no relay named: {needed_because}; a relay (`p2p-socket relay` on a public host, named by either side) gets through")]
    NoRelay {
        /// Why a relay was needed.
        needed_because: Box<Error>,
    },

    /// Going through a relay did not work.
    #[error("the relay {relay} did not get us through: {failure}; check the relay key, and that `p2p-socket relay` runs on a host both sides can reach")]
    RelayFailed {
        /// The relay's key.
        relay: PublicKey,
        /// What failed.
        failure: RelayFailure,
        /// The lower-level error, where there is one.
        #[source]
        source: Option<Box<Error>>,
    },

    /// The sharer refused us during the handshake: it admits only some client keys, and ours
    /// is not one of them.
    #[error("the sharer refused our client key {client} (it admits only the keys on its allow list); give the sharer this key to allow, or connect with an identity it allows")]
    Refused {
        /// Our public key, the one the sharer would have to allow.
        client: crate::identity::PublicKey,
    },

    /// The remote side speaks an incompatible protocol version, or refused us.
    #[error("the peer's handshake is unusable: {problem}; update p2p-socket on both sides")]
    Incompatible {
        /// What is wrong with it.
        problem: Incompatibility,
    },

    /// One attempt to reach the sharer ran out of time as a whole.
    #[error("gave up reaching the sharer after {} s, while {stage}; the next connection tries again", after.as_secs())]
    AttemptTimedOut {
        /// How long the attempt ran.
        after: Duration,
        /// What it was doing when time ran out.
        stage: Stage,
    },

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

/// Where a handshake went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeFailure {
    /// No DHT node holds the announcement any more (or none was known).
    NoNode,
    /// The node (or the punched hole) gave no answer in time.
    NoReply,
    /// An answer came that is not a handshake reply.
    BadReply,
    /// The reply's Noise message did not decrypt or verify.
    BadAnswer,
    /// Our own half could not be made.
    CannotEncode,
    /// An address in the reply is not usable.
    BadAddress,
}

impl fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HandshakeFailure::NoNode => "no DHT node holds the announcement",
            HandshakeFailure::NoReply => "no reply",
            HandshakeFailure::BadReply => "the reply is not a handshake answer",
            HandshakeFailure::BadAnswer => "the sharer's answer does not verify",
            HandshakeFailure::CannotEncode => "our half could not be encoded",
            HandshakeFailure::BadAddress => "an address in the reply is invalid",
        })
    }
}

/// Where a hole punch went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PunchFailure {
    /// The sharer offered no holepunch, or no DHT node to punch through.
    NotOffered,
    /// The DHT node `via` did not pass on our round (no reply after `tries` tries).
    RoundNotPassed {
        /// The node.
        via: SocketAddr,
        /// Tries made.
        tries: u32,
    },
    /// The DHT node `via` answered with something that is not a holepunch reply.
    BadReply {
        /// The node.
        via: SocketAddr,
    },
    /// The sharer's reply did not decrypt.
    Undecryptable,
    /// The sharer is punching through a randomising NAT for someone else (Node's
    /// `ERROR_TRY_LATER`).
    TryLater,
    /// The sharer aborted with this error code.
    Aborted {
        /// hyperdht's error code.
        code: u64,
    },
    /// The sharer declined to punch.
    Declined,
    /// The NATs could not be classified after `samples` DHT node answers.
    Unclassified {
        /// How many answers our NAT classification had.
        samples: usize,
    },
    /// No punching strategy fits these NATs.
    NoPlan {
        /// Why.
        why: &'static str,
    },
    /// Probes went out in `rounds` rounds for `waited`, and none came back.
    NoProbeBack {
        /// Holepunch rounds sent through the DHT.
        rounds: u64,
        /// How long we waited for a probe.
        waited: Duration,
    },
    /// Our round could not be encoded or encrypted.
    CannotEncode,
    /// The punch sockets closed under us.
    SocketsClosed,
    /// The hole punched earlier stopped working as soon as it was used.
    RouteStopped,
}

impl fmt::Display for PunchFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PunchFailure::NotOffered => f.write_str("the sharer offered no holepunch"),
            PunchFailure::RoundNotPassed { via, tries } => write!(
                f,
                "the DHT node {via} did not pass on our holepunch round ({tries} tries); the sharer may have stopped or moved"
            ),
            PunchFailure::BadReply { via } => {
                write!(f, "the DHT node {via} sent a bad holepunch reply")
            }
            PunchFailure::Undecryptable => f.write_str("the sharer's holepunch reply does not decrypt"),
            PunchFailure::TryLater => f.write_str(
                "the sharer is busy punching through a randomising NAT for someone else and asked us to try later (Node hyperdht allows one such punch at a time); try again in 20 s",
            ),
            PunchFailure::Aborted { code } => write!(
                f,
                "the sharer aborted hole punching (error {code}): it may be behind a NAT it cannot classify, or behind a randomising NAT like ours"
            ),
            PunchFailure::Declined => f.write_str("the sharer declined to punch"),
            PunchFailure::Unclassified { samples } => write!(
                f,
                "could not classify the NATs after {samples} DHT node answers"
            ),
            PunchFailure::NoPlan { why } => write!(f, "no way to punch: {why}"),
            PunchFailure::NoProbeBack { rounds, waited } => write!(
                f,
                "{rounds} rounds, no probe came back within {} s; the NATs may filter more strictly than punching can handle",
                waited.as_secs()
            ),
            PunchFailure::CannotEncode => f.write_str("our holepunch round could not be encoded"),
            PunchFailure::SocketsClosed => f.write_str("the punch sockets closed"),
            PunchFailure::RouteStopped => {
                f.write_str("the hole punched to the sharer stopped working right away")
            }
        }
    }
}

/// Where going through a relay went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayFailure {
    /// We could not open a connection to the relay itself.
    Unreachable,
    /// The relay connection came up without a peer address.
    NoAddress,
    /// The other peer did not come to the relay in time.
    PeerDidNotCome {
        /// How long we waited.
        waited: Duration,
    },
    /// The connection to the relay closed while pairing.
    Closed,
    /// We are connected to as many relays as we allow at once.
    TooManyRelays {
        /// The cap.
        max: usize,
    },
}

impl fmt::Display for RelayFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RelayFailure::Unreachable => f.write_str("cannot reach the relay"),
            RelayFailure::NoAddress => f.write_str("the relay connection has no address"),
            RelayFailure::PeerDidNotCome { waited } => write!(
                f,
                "the other peer did not come to the relay within {} s",
                waited.as_secs()
            ),
            RelayFailure::Closed => f.write_str("the connection to the relay closed"),
            RelayFailure::TooManyRelays { max } => write!(
                f,
                "already connected to {max} relays, the most at once; a connection through another relay has to wait until one of them is no longer used"
            ),
        }
    }
}

/// What is wrong with a peer's half of the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Incompatibility {
    /// A handshake version we do not speak.
    Version(u64),
    /// The peer refused with this hyperdht error code.
    Refused(u64),
    /// It carries no stream parameters.
    NoStream,
    /// Its stream id does not fit.
    StreamId(u64),
}

impl fmt::Display for Incompatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Incompatibility::Version(v) => write!(f, "handshake version {v}"),
            Incompatibility::Refused(code) => {
                write!(f, "the peer refused with error code {code}")
            }
            Incompatibility::NoStream => f.write_str("the peer sent no stream parameters"),
            Incompatibility::StreamId(id) => write!(f, "stream id {id} out of range"),
        }
    }
}

/// The stages of one attempt to reach the sharer, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stage {
    /// Searching the DHT for the key's announcement.
    Lookup,
    /// Sending the handshake through the DHT nodes that hold it.
    Handshake,
    /// Punching a hole through the NATs.
    Punch,
    /// Opening the encrypted stream on the chosen path.
    DataPath,
    /// Going through a relay.
    Relay,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Lookup => "looking the key up",
            Stage::Handshake => "handshaking",
            Stage::Punch => "punching",
            Stage::DataPath => "opening the data path",
            Stage::Relay => "going through the relay",
        })
    }
}

fn describe_via(via: &[SocketAddr]) -> String {
    match via {
        [] => "no node".into(),
        [one] => one.to_string(),
        many => format!(
            "{} nodes ({})",
            many.len(),
            many.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn describe_peer(peer: &Option<SocketAddr>) -> String {
    peer.map(|p| format!(" to {p}")).unwrap_or_default()
}

/// Result with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    /// A caller branches on the fields, and the lower-level cause stays on the chain.
    #[test]
    fn failures_keep_what_was_tried_and_their_source() {
        let via: Vec<SocketAddr> = vec![
            "10.0.0.1:49737".parse().unwrap(),
            "10.0.0.2:1".parse().unwrap(),
        ];
        let e = Error::HandshakeFailed {
            via: via.clone(),
            failure: HandshakeFailure::NoReply,
            source: Some("timed out".into()),
        };
        assert!(
            e.to_string()
                .contains("2 nodes (10.0.0.1:49737, 10.0.0.2:1)"),
            "{e}"
        );
        assert_eq!(
            e.source().map(ToString::to_string).as_deref(),
            Some("timed out")
        );

        let relay = PublicKey::from([7; 32]);
        let e = Error::RelayFailed {
            relay,
            failure: RelayFailure::Unreachable,
            source: Some(Box::new(Error::PeerNotFound {
                key: relay,
                nodes: 5,
            })),
        };
        let cause = e.source().expect("the relay's lookup failure is kept");
        assert!(
            cause.to_string().contains("heard from 5 DHT nodes"),
            "{cause}"
        );

        let e = Error::HolepunchFailed {
            ours: Firewall::Consistent,
            theirs: Firewall::Random,
            failure: PunchFailure::NoProbeBack {
                rounds: 2,
                waited: Duration::from_secs(30),
            },
        };
        assert!(
            e.to_string()
                .contains("2 rounds, no probe came back within 30 s"),
            "{e}"
        );
        let e = Error::NoRelay {
            needed_because: Box::new(e),
        };
        assert!(
            e.to_string().starts_with("no relay named: could not punch"),
            "{e}"
        );
    }
}
