//! The p2p-socket tunnel engine: share a local TCP port with anyone who knows a key, peer to
//! peer, over [HyperDHT](https://github.com/holepunchto/hyperdht), wire-compatible with Node's
//! `hyperdht` (so `npx p2p-socket`, hypertele and holesail peers interoperate).
//!
//! - [`Share`] announces `hash(publicKey)` on the DHT and pipes each incoming encrypted
//!   connection to a local service.
//! - [`Connect`] listens on a local port and opens one encrypted connection to the sharer per
//!   local TCP connection; [`Connector`] opens such connections for programs that want the
//!   stream itself.
//! - [`identity`] makes and loads key pairs, compatible with the npm p2p-socket's
//!   `identity.json`.
//! - [`BootstrapNode`] runs a DHT node for a private network.
//! - [`RelayServer`] runs a blind relay, through which share and connect go when no hole can be
//!   punched between them (Node's `blind-relay` protocol, so Node peers can use it too).
//!
//! The DHT's RPC and routing come from `peeroxide-dht`; the handshake decisions, the server and
//! client sides of a connection and the UDX transport underneath (`p2p-udx`) are ours.
//!
//! ```no_run
//! # async fn run() -> Result<(), p2p_socket::Error> {
//! use p2p_socket::{identity::KeyPair, NetworkOptions, Share, ShareOptions};
//!
//! let share = Share::start(ShareOptions {
//!     network: NetworkOptions::default(), // the public HyperDHT network
//!     key_pair: KeyPair::generate(),
//!     service_host: "localhost".into(),
//!     service_port: 8080,
//!     relay: None,
//! })
//! .await?;
//! println!("connect with: p2p-socket connect --key {}", share.public_key());
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bootstrap;
pub mod connect;
pub mod dht;
mod error;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod handshake;
mod holepunch;
pub mod identity;
mod nat;
mod peer;
pub mod pipe;
mod punch_socket;
pub mod relay;
pub mod share;

pub use bootstrap::BootstrapNode;
pub use connect::{Connect, ConnectOptions, Connector};
pub use dht::NetworkOptions;
pub use error::{Error, Result};
pub use peer::{Path, PeerStream};
pub use relay::{RelayLimits, RelayOptions, RelayServer};
pub use share::{Share, ShareOptions};
