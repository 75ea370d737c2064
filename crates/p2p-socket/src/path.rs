//! How a connection's packets travel: what a connection, a log line and an error report.

use std::fmt;

/// How a connection's packets travel between the peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Path {
    /// Straight between the DHT sockets: one side is reachable (or both are on one machine or
    /// LAN), so the other just sends to it.
    Direct,
    /// Through a hole punched in both NATs, on a socket of its own.
    Punched,
    /// Through a blind relay (`p2p-socket relay`), which passes on the encrypted packets:
    /// where no hole can be punched.
    Relayed,
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Path::Direct => "direct",
            Path::Punched => "punched",
            Path::Relayed => "relayed",
        })
    }
}
