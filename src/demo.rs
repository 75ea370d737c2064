//! `p2p-socket demo`: the real tunnel, end to end, on this machine alone. It starts a private
//! DHT on loopback, serves a small built-in page, shares it, connects to the share, fetches the
//! page through the tunnel and checks every byte, printing each step with its timing.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use p2p_socket::KeyPair;
use p2p_socket::{
    BootstrapNode, Connect, ConnectOptions, Events, Listen, NetworkOptions, Protocol, Service,
    Share, ShareOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A private network needs enough nodes that an announcement lands on several of them; Node's
/// own test network uses ten.
const DHT_NODES: usize = 6;

const PAGE: &str = "<!doctype html><title>p2p-socket</title><h1>Hello through the tunnel</h1>\
<p>This page came from a local web server, through a p2p-socket share and connect, \
end-to-end encrypted over a UDX stream found through HyperDHT.</p>\n";

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn step(started: Instant, what: &str) {
    println!(
        "[{:>7.1} ms] {what}",
        started.elapsed().as_secs_f64() * 1000.0
    );
}

pub async fn run() -> Result<()> {
    let t0 = Instant::now();
    println!("p2p-socket demo: a private DHT, a share and a connect, all on 127.0.0.1\n");

    let bootstrap = BootstrapNode::start(LOOPBACK, 0, &[])
        .await
        .context("starting the bootstrap node")?;
    let bootstrap_addr = bootstrap.local_addr()?.to_string();
    step(t0, &format!("bootstrap node on {bootstrap_addr}"));
    let mut nodes = Vec::new();
    for _ in 1..DHT_NODES {
        nodes.push(BootstrapNode::start(LOOPBACK, 0, std::slice::from_ref(&bootstrap_addr)).await?);
    }
    step(t0, &format!("{} more DHT nodes joined it", nodes.len()));
    let network = NetworkOptions::with_bootstrap([bootstrap_addr.clone()]);

    let web = TcpListener::bind((LOOPBACK, 0)).await?;
    let web_addr = web.local_addr()?;
    tokio::spawn(serve_page(web));
    step(
        t0,
        &format!("built-in web page served on http://{web_addr}"),
    );

    let t = Instant::now();
    let share = Share::start(ShareOptions {
        network: network.clone(),
        key_pair: KeyPair::generate(),
        service: Service::Tcp {
            host: web_addr.ip().to_string(),
            port: web_addr.port(),
        },
        relay: None,
        max_connections: Share::DEFAULT_MAX_CONNECTIONS,
        protocol: Protocol::Tcp,
        allow: None,
        events: Events::new(),
    })
    .await
    .context("sharing the page")?;
    let key = share.public_key();
    step(
        t0,
        &format!("share announced in {:.1} ms, key {key}", ms(t)),
    );

    let t = Instant::now();
    let connect = Connect::start(ConnectOptions {
        network,
        key_pair: KeyPair::generate(),
        remote: key,
        listen: Listen::Tcp(SocketAddr::new(LOOPBACK, 0)),
        relay: None,
        force_relay: false,
        protocol: Protocol::Tcp,
        max_connections: Connect::DEFAULT_MAX_CONNECTIONS,
        multiplex: true,
        dial_at_start: true,
        events: Events::new(),
    })
    .await
    .context("connecting to the share")?;
    step(
        t0,
        &format!(
            "connect found the sharer in {:.1} ms, listening on {}",
            ms(t),
            connect.local()
        ),
    );

    let t = Instant::now();
    let listening = connect
        .local_addr()
        .context("the connect listens on no TCP address")?;
    let body = fetch(listening).await?;
    ensure!(
        body == PAGE,
        "the page came back different: {} bytes instead of {}",
        body.len(),
        PAGE.len()
    );
    step(
        t0,
        &format!(
            "fetched the page through the tunnel in {:.1} ms: {} bytes, identical",
            ms(t),
            body.len()
        ),
    );

    connect.close().await;
    share.close().await;
    for node in nodes {
        node.close().await;
    }
    bootstrap.close().await;
    step(t0, "everything stopped cleanly");

    println!("\nThe tunnel works. To do it for real between two machines:");
    println!("  alice$ p2p-socket share --port 8080          # prints a key");
    println!("  bob$   p2p-socket connect --port 8080 --key <alice's key>");
    println!("  bob$   curl localhost:8080");
    println!("They find each other on the public HyperDHT network; for a private one, run");
    println!(
        "`p2p-socket bootstrap` on a reachable machine and add --bootstrap host:49737 to both."
    );
    Ok(())
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

async fn serve_page(web: TcpListener) {
    while let Ok((mut tcp, _)) = web.accept().await {
        tokio::spawn(async move {
            let mut req = [0u8; 1024];
            let _ = tcp.read(&mut req).await;
            let reply = format!(
                "HTTP/1.0 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\n\r\n{PAGE}",
                PAGE.len()
            );
            let _ = tcp.write_all(reply.as_bytes()).await;
            // HTTP/1.0: the close marks the end, so the tunnel must deliver every byte before it.
            let _ = tcp.shutdown().await;
        });
    }
}

async fn fetch(addr: SocketAddr) -> Result<String> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(b"GET / HTTP/1.0\r\nhost: demo\r\n\r\n")
        .await?;
    let mut response = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(15),
        tcp.read_to_end(&mut response),
    )
    .await
    .context("the page did not arrive within 15 s")??;
    let text = String::from_utf8(response).context("the reply is not text")?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("the reply is not HTTP")?;
    ensure!(head.starts_with("HTTP/1.0 200"), "unexpected reply: {head}");
    Ok(body.to_string())
}
