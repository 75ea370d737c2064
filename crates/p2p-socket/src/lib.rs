//! The p2p-socket tunnel engine: share a local TCP port with anyone who knows a key, peer to
//! peer, over [HyperDHT](https://github.com/holepunchto/hyperdht), wire-compatible with Node's
//! `hyperdht` (so `npx p2p-socket`, hypertele and holesail peers interoperate).
//!
//! - [`Share`] announces `hash(publicKey)` on the DHT and pipes each incoming encrypted
//!   connection to a local service.
//! - [`Connect`] listens on a local port and opens one encrypted connection to the sharer per
//!   local TCP connection; [`Connector`] opens such connections ([`Connection`], a byte
//!   stream) for programs that want the stream itself.
//! - [`Identity`] makes and loads key pairs, compatible with the npm p2p-socket's
//!   `identity.json`, and derives share keys from them.
//! - With [`Protocol::Udp`], both carry UDP datagrams instead (one connection per local UDP
//!   client, holesail's framing), within [`UdpLimits`].
//! - [`BootstrapNode`] runs a DHT node for a private network.
//! - [`RelayServer`] runs a blind relay, through which share and connect go when no hole can be
//!   punched between them (Node's `blind-relay` protocol, so Node peers can use it too).
//!
//! The DHT's RPC and routing come from `peeroxide-dht`; the handshake decisions, the server and
//! client sides of a connection and the UDX transport underneath (`p2p-udx`) are ours.
//!
//! ```no_run
//! # async fn run() -> Result<(), p2p_socket::Error> {
//! use p2p_socket::{Events, KeyPair, NetworkOptions, Protocol, Service, Share, ShareOptions};
//!
//! let share = Share::start(ShareOptions {
//!     network: NetworkOptions::default(), // the public HyperDHT network
//!     key_pair: KeyPair::generate(),
//!     service: Service::Tcp { host: "localhost".into(), port: 8080 },
//!     relay: None,
//!     max_connections: Share::DEFAULT_MAX_CONNECTIONS,
//!     protocol: Protocol::Tcp,
//!     allow: None, // anyone with the key; an AllowList admits only its client keys
//!     events: Events::new(),
//! })
//! .await?;
//! println!("connect with: p2p-socket connect --key {}", share.public_key());
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod access;
mod addr;
mod address_watch;
mod bootstrap;
mod connect;
mod connection;
mod connection_string;
mod dht;
mod dialer;
mod error;
mod events;
mod farewell;
mod firewall;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod handshake;
mod holepunch;
mod identity;
mod listener;
mod local;
mod local_shared;
mod lock;
mod mux;
mod nat;
mod noise_session;
mod path;
mod peer;
mod pipe;
mod policy;
mod punch_socket;
mod reconnect;
mod relay;
mod roaming;
mod running;
mod secret;
mod service_record;
mod share;
mod udp;

pub use access::{parse_seed, private_mode, AccessError, AllowFile, AllowList, MAX_ALLOWED_KEYS};
pub use bootstrap::BootstrapNode;
pub use connect::{Connect, ConnectOptions};
pub use connection::Connection;
pub use connection_string::{
    ConnectionString, KeyString, ParseConnectionStringError, MAX_KEY_STRING_LEN, MIN_KEY_STRING_LEN,
};
pub use dht::{NetworkOptions, DEFAULT_BOOTSTRAP_PORT};
pub use dialer::Connector;
pub use error::{
    Error, HandshakeFailure, Incompatibility, PunchFailure, RelayFailure, Result, Stage,
};
pub use events::{Event, Events, Totals, EVENT_BUFFER};
pub use firewall::Firewall;
pub use identity::{
    default_identity_path, npm_share_key_secret_bits, Identity, IdentityError, KeyPair,
    ParseKeyError, PublicKey, ShareKeyRule, IDENTITY_FILE_NAME, MIN_NPM_SHARE_KEY_SECRET_BITS,
    MIN_SHARE_KEY_SECRET_BITS,
};
#[cfg(unix)]
pub use local::DEFAULT_UNIX_MODE;
pub use local::{Listen, Service};
pub use path::Path;
pub use relay::{RelayLimits, RelayOptions, RelayServer, RelayStats};
pub use service_record::{RecordError, RecordKeeper, ServiceRecord, MAX_RECORD_BYTES};
pub use share::{Share, ShareOptions};
pub use udp::{Protocol, UdpLimits};
