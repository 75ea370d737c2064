//! Embedding the tunnel in a Rust program, without the CLI: a private DHT on loopback, a share
//! of a small echo service, and a `Connector` that opens an encrypted stream to it.
//!
//! Run with `cargo run -p p2p-socket-engine --example embed`. It needs no internet.

use std::net::{IpAddr, Ipv4Addr};

use p2p_socket::identity::KeyPair;
use p2p_socket::{BootstrapNode, Connector, NetworkOptions, Share, ShareOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);

    // A private network: one bootstrap node and a few more, all on this machine.
    let bootstrap = BootstrapNode::start(localhost, 0, &[]).await?;
    let entry = bootstrap.local_addr()?.to_string();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(BootstrapNode::start(localhost, 0, std::slice::from_ref(&entry)).await?);
    }
    let network = NetworkOptions::with_bootstrap([entry]);

    // The service to share: echoes one line back in upper case.
    let service = TcpListener::bind((localhost, 0)).await?;
    let service_port = service.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = service.accept().await {
            let mut buf = [0u8; 64];
            let n = tcp.read(&mut buf).await.unwrap_or(0);
            let _ = tcp.write_all(&buf[..n].to_ascii_uppercase()).await;
        }
    });

    let share = Share::start(ShareOptions {
        network: network.clone(),
        key_pair: KeyPair::generate(),
        service_host: "127.0.0.1".into(),
        service_port,
        relay: None,
    })
    .await?;
    println!("sharing under key {}", share.public_key());

    // The other side: an encrypted stream straight to the sharer's service.
    let connector = Connector::new(&network, KeyPair::generate(), share.public_key()).await?;
    let mut stream = connector.open().await?;
    stream.write(b"hello through the tunnel").await?;
    let reply = stream.read().await?.unwrap_or_default();
    println!("the service answered: {}", String::from_utf8_lossy(&reply));

    connector.close().await;
    share.close().await;
    for node in nodes {
        node.close().await;
    }
    bootstrap.close().await;
    Ok(())
}
