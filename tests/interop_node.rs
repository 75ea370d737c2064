//! Our binary and the real Node `hyperdht` (pinned in interop/node) on one network: a Node
//! client reaches a Rust share, a Rust connect reaches a Node server, on a DHT made of our own
//! `bootstrap` processes and on Node's testnet.

use test_support as support;

use std::net::TcpStream;
use std::time::Duration;

use support::cli::{ConnectProcess, LocalDht, ShareProcess};
use support::net::{assert_exchanged, exchange, Behaviour, Service};
use support::node::{require_node, NodeClient, NodeServer, NodeTestnet};

const MIB: u64 = 1024 * 1024;
const T: Duration = Duration::from_secs(120);
/// Node's own measurements here: testnets under 10 nodes make Node clients time out now and then.
const NODES: usize = 10;
const VOLUME: u64 = 32 * MIB;

/// Moves VOLUME each way through the tunnel whose local end is `port`, three connections in a
/// row, and checks every byte at both ends.
fn verify_transfers(port: u16, service: &Service) {
    for round in 0..3u64 {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("dial the tunnel");
        let client = exchange(s, VOLUME, 10 + round).unwrap();
        let server = service.next_tally(T);
        assert_exchanged(
            &client,
            &server,
            VOLUME,
            20 + round,
            &format!("round {round}"),
        );
    }
}

fn exchanging_service() -> Service {
    // Each connection gets the next seed so that a mixed-up connection cannot pass.
    Service::start_seq(|round| Behaviour::Exchange {
        send: VOLUME,
        seed: 20 + round,
    })
}

fn node_client_to_rust_share(bootstrap: &[String]) {
    let service = exchanging_service();
    let share = ShareProcess::start(&bootstrap.join(","), service.port(), &[]);
    let client = NodeClient::start(bootstrap, &share.key, 0);
    verify_transfers(client.port, &service);
}

fn rust_connect_to_node_server(bootstrap: &[String]) {
    let service = exchanging_service();
    let server = NodeServer::start(bootstrap, service.port(), None);
    let connect = ConnectProcess::start(&bootstrap.join(","), &server.public_key);
    verify_transfers(connect.addr.port(), &service);
}

#[test]
fn node_client_reaches_rust_share_on_our_dht() {
    require_node();
    let dht = LocalDht::start(NODES);
    node_client_to_rust_share(std::slice::from_ref(&dht.bootstrap));
}

#[test]
fn rust_connect_reaches_node_server_on_our_dht() {
    require_node();
    let dht = LocalDht::start(NODES);
    rust_connect_to_node_server(std::slice::from_ref(&dht.bootstrap));
}

#[test]
fn node_client_reaches_rust_share_on_node_testnet() {
    let testnet = NodeTestnet::start(NODES);
    node_client_to_rust_share(&testnet.bootstrap);
}

#[test]
fn rust_connect_reaches_node_server_on_node_testnet() {
    let testnet = NodeTestnet::start(NODES);
    rust_connect_to_node_server(&testnet.bootstrap);
}
