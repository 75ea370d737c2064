//! Embedding the tunnel in a Rust program, without the CLI: a private DHT on loopback, a
//! [`Share`] of a small service, and on the other side a local TCP port whose connections are
//! piped into encrypted [`Connection`](p2p_socket::Connection)s with
//! `tokio::io::copy_bidirectional`, which is all `p2p-socket connect` does.
//!
//! Run with `cargo run -p p2p-socket-engine --example embed`; it needs no internet. `cargo test`
//! runs it too.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use p2p_socket::{
    BootstrapNode, Connector, Events, KeyPair, NetworkOptions, Protocol, Service, Share,
    ShareOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let answer = run().await?;
    println!("the service answered: {answer}");
    Ok(())
}

/// Shares an upper-casing service and sends it a line through the tunnel; returns its answer.
async fn run() -> Result<String, Box<dyn std::error::Error>> {
    // A private network: one bootstrap node and a few more, all on this machine.
    let bootstrap = BootstrapNode::start(LOCALHOST, 0, &[]).await?;
    let entry = bootstrap.local_addr()?.to_string();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(BootstrapNode::start(LOCALHOST, 0, std::slice::from_ref(&entry)).await?);
    }
    let network = NetworkOptions::with_bootstrap([entry]);

    // The service to share: answers what it reads, in upper case, until the end.
    let service = TcpListener::bind((LOCALHOST, 0)).await?;
    let service_port = service.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = service.accept().await {
            let mut text = Vec::new();
            if tcp.read_to_end(&mut text).await.is_ok() {
                let _ = tcp.write_all(&text.to_ascii_uppercase()).await;
            }
        }
    });

    let share = Share::start(ShareOptions {
        network: network.clone(),
        key_pair: KeyPair::generate(),
        service: Service::Tcp {
            host: "127.0.0.1".into(),
            port: service_port,
        },
        relay: None,
        max_connections: Share::DEFAULT_MAX_CONNECTIONS,
        protocol: Protocol::Tcp,
        allow: None,
        events: Events::new(),
    })
    .await?;

    // The other side: a local port, each connection to it piped through the tunnel.
    let connector =
        Arc::new(Connector::new(&network, KeyPair::generate(), share.public_key()).await?);
    let local = TcpListener::bind((LOCALHOST, 0)).await?;
    let local_addr = local.local_addr()?;
    let forwarding = tokio::spawn({
        let connector = Arc::clone(&connector);
        async move {
            while let Ok((mut tcp, _)) = local.accept().await {
                let connector = Arc::clone(&connector);
                tokio::spawn(async move {
                    let mut connection = connector.connect().await?;
                    // Ends when both directions have: a half-close passes through.
                    tokio::io::copy_bidirectional(&mut tcp, &mut connection).await?;
                    Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
                });
            }
        }
    });

    // A local program: writes a line, ends its side, reads the answer.
    let mut program = TcpStream::connect(local_addr).await?;
    program.write_all(b"hello through the tunnel").await?;
    program.shutdown().await?;
    let mut answer = String::new();
    program.read_to_string(&mut answer).await?;

    forwarding.abort();
    share.close().await;
    for node in nodes {
        node.close().await;
    }
    bootstrap.close().await;
    Ok(answer)
}

#[test]
fn a_tcp_stream_goes_through_the_tunnel() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let answer = runtime.block_on(run()).unwrap();
    assert_eq!(answer, "HELLO THROUGH THE TUNNEL");
}
