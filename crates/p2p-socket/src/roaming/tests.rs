//! A real share and real connectors on a loopback DHT: a session resumes over a new connection
//! and goes on, and resumes by anyone else, or with a wrong proof, are refused and leave it
//! alone.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use tokio::net::TcpListener;

use super::proto::{Answer, Request};
use super::{exchange, resume, ResumeError};
use crate::bootstrap::BootstrapNode;
use crate::dht::NetworkOptions;
use crate::dialer::Connector;
use crate::events::Events;
use crate::identity::KeyPair;
use crate::local::Service;
use crate::mux::proto::{self as frames, Frame};
use crate::peer::PeerStream;
use crate::secret;
use crate::share::{Share, ShareOptions};
use crate::udp::Protocol;

const LIMIT: Duration = Duration::from_secs(20);

/// A TCP service on loopback that echoes every connection.
async fn echo_service() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

type Reader = secret::ReadHalf<secret::UdxReadHalf>;
type Writer = secret::WriteHalf<secret::UdxWriteHalf>;

/// Sends `text` on mux stream 1 and reads it back from the echo service.
async fn echoed(reader: &mut Reader, writer: &mut Writer, text: &[u8]) -> Vec<u8> {
    writer.write(&frames::data(1, text)).await.unwrap();
    let mut got = Vec::new();
    while got.len() < text.len() {
        let message = tokio::time::timeout(LIMIT, reader.read())
            .await
            .expect("an echo within the limit")
            .unwrap()
            .expect("the session goes on");
        if let Ok(Frame::Data(1, data)) = frames::decode(&message) {
            got.extend_from_slice(data);
        }
    }
    got
}

/// A share of an echo service on a one-node loopback DHT.
async fn loopback_share() -> (BootstrapNode, NetworkOptions, Share) {
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let bootstrap = BootstrapNode::start(loopback, 0, &[]).await.unwrap();
    let network = NetworkOptions::with_bootstrap([bootstrap.local_addr().unwrap().to_string()]);
    let share = Share::start(ShareOptions {
        network: network.clone(),
        key_pair: KeyPair::generate(),
        service: Service::Tcp {
            host: "127.0.0.1".into(),
            port: echo_service().await,
        },
        relay: None,
        max_connections: Share::DEFAULT_MAX_CONNECTIONS,
        protocol: Protocol::Tcp,
        allow: None,
        events: Events::default(),
    })
    .await
    .unwrap();
    (bootstrap, network, share)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_resumes_over_a_new_connection_and_nobody_else_can_take_it() {
    let (bootstrap, network, share) = loopback_share().await;
    let client = Connector::new(&network, KeyPair::generate(), share.public_key())
        .await
        .unwrap()
        .multiplexed();

    let (peer, old, _) = client.open_link().await.unwrap();
    let ticket = old.ticket.clone().expect("our share roams");
    let (mut reader, mut writer) = peer.into_split();
    writer.write(&frames::open(1)).await.unwrap();
    assert_eq!(echoed(&mut reader, &mut writer, b"before").await, b"before");

    // The right session id with a wrong proof.
    let (forged, ..) = client.open_resuming(LIMIT).await.unwrap();
    let request = Request {
        session: ticket.id,
        proof: [0; 32],
    };
    let answer = exchange(forged, &request.encode()).await.unwrap();
    assert_eq!(Answer::decode(&answer), Ok(Answer::Refused));

    // Someone else's key with the session's true ticket (stolen): refused too.
    let thief = Connector::new(&network, KeyPair::generate(), share.public_key())
        .await
        .unwrap()
        .multiplexed();
    let stolen = thief.open_resuming(LIMIT).await.unwrap();
    let refused = resume(&ticket, &old, stolen).await;
    assert!(matches!(refused, Err(ResumeError::Refused)), "{refused:?}");

    // Untouched by those, the session still answers on its path.
    assert_eq!(
        echoed(&mut reader, &mut writer, b"between").await,
        b"between"
    );

    // The session's own client moves it onto a new connection's path, and it goes on.
    let fresh = client.open_resuming(LIMIT).await.unwrap();
    let new_peer = fresh.1.peer();
    resume(&ticket, &old, fresh).await.unwrap();
    assert_eq!(old.stream.remote_addr(), new_peer);
    assert_eq!(echoed(&mut reader, &mut writer, b"after").await, b"after");
    // And once more: every resume is proven afresh, with the same ticket.
    let again = client.open_resuming(LIMIT).await.unwrap();
    resume(&ticket, &old, again).await.unwrap();
    assert_eq!(echoed(&mut reader, &mut writer, b"again").await, b"again");

    drop((reader, writer));
    client.close().await;
    thief.close().await;
    share.close().await;
    bootstrap.close().await;
}

/// A resuming connection that sends no request, or garbage, is closed; it moves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_request_that_is_not_one_is_refused() {
    let (bootstrap, network, share) = loopback_share().await;
    let client = Connector::new(&network, KeyPair::generate(), share.public_key())
        .await
        .unwrap()
        .multiplexed();
    for garbage in [&b"p2pr"[..], &[0u8; 53][..], &frames::open(1)[..]] {
        let (peer, ..): (PeerStream, _, _) = client.open_resuming(LIMIT).await.unwrap();
        let answer = exchange(peer, garbage).await.unwrap();
        assert_eq!(Answer::decode(&answer), Ok(Answer::Refused), "{garbage:?}");
    }
    client.close().await;
    share.close().await;
    bootstrap.close().await;
}
