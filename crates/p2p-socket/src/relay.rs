//! Blind relaying, for peers between which no hole can be punched (both behind NATs that pick
//! a new port for every destination): `p2p-socket relay` runs [`RelayServer`], and share and
//! connect go through it when they must.
//!
//! The protocol is Node's `blind-relay` (what hyperdht's `relayThrough` speaks), so a Node peer
//! can use our relay and we can use a Node relay:
//!
//! 1. One peer names a relay and a fresh 32-byte token in its half of the handshake
//!    (`relayThrough: { publicKey, token }`); the share's relay wins when both name one.
//! 2. Each peer opens an encrypted connection to the relay's key over the DHT and, on a
//!    protomux channel `blind-relay` named by its own public key, sends `pair { isInitiator,
//!    token, id, seq }`, `id` being its stream for the relayed connection (the peer that named
//!    the relay is the initiator).
//! 3. Once both sides of a token have paired, the relay makes a UDX stream towards each peer
//!    and relays them to each other ([`udx::UdxStream::relay_to`]), and answers each peer's
//!    `pair` with the id of the stream it made for it.
//! 4. Each peer aims its stream at that id on the relay and runs the connection's secret
//!    stream over it, with the keys of the handshake: end to end encrypted, the relay sees
//!    ciphertext only. `unpair` (or closing the relay connection) ends the relaying.
//!
//! When to relay is decided by share and connect: only when no direct or punched path can be
//! made (see `connect`), never as a race that could leave a working direct path unused.

pub(crate) mod book;
pub(crate) mod channel;
pub(crate) mod client;
pub(crate) mod server;
pub(crate) mod wire;

pub use book::RelayLimits;
pub use server::{RelayOptions, RelayServer, RelayStats};
