//! Running a DHT node that others bootstrap from: the entry point of a private network.
//!
//! A bootstrap node is an ordinary, long-lived HyperDHT node on a fixed address. It stores
//! announcements and relays handshakes like any other node, so one bootstrap plus the peers
//! themselves is already a working network; Node's hyperdht peers can use it as well.

use std::net::{IpAddr, SocketAddr};

use crate::dht::DhtNode;
use crate::error::Result;

/// A running bootstrap node.
pub struct BootstrapNode {
    node: DhtNode,
}

impl BootstrapNode {
    /// Starts a node on `host:port`. `peers` are other nodes of the same network to join
    /// (empty for the first node of a new network).
    pub async fn start(host: IpAddr, port: u16, peers: &[String]) -> Result<BootstrapNode> {
        let node = DhtNode::serve(host, port, peers).await?;
        Ok(BootstrapNode { node })
    }

    /// The address to pass to `--bootstrap`.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.node.local_addr()
    }

    /// Stops the node.
    pub async fn close(self) {
        self.node.destroy().await;
    }
}
