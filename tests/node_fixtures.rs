//! Proves the Node interop fixtures work Node-to-Node, so that a failing Rust
//! interop test points at the Rust side, not at the fixtures.

use test_support as support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use rand::RngCore;
use sha2::{Digest, Sha256};
use support::node::{NodeClient, NodeServer, NodeTestnet};

/// Bounds every socket read and write, so a broken tunnel fails the test instead of hanging it.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

fn with_timeouts(stream: TcpStream) -> TcpStream {
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
}

/// A TCP service on 127.0.0.1 that serves exactly one connection with `serve`.
fn serve_once(serve: impl FnOnce(TcpStream) + Send + 'static) -> (u16, thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        serve(with_timeouts(stream));
    });
    (port, handle)
}

/// Starts testnet, Node server in front of `target_port` and Node client; returns the client port.
fn node_tunnel(target_port: u16, seed: Option<[u8; 32]>) -> (NodeTestnet, NodeServer, NodeClient) {
    let testnet = NodeTestnet::start(10);
    let server = NodeServer::start(&testnet.bootstrap, target_port, seed);
    let client = NodeClient::start(&testnet.bootstrap, &server.public_key, 0);
    (testnet, server, client)
}

#[test]
fn one_mebibyte_echoes_through_node_server_and_client() {
    let (target_port, target) = serve_once(|mut stream| {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = stream.read(&mut buf).expect("echo target read");
            if n == 0 {
                break;
            }
            stream.write_all(&buf[..n]).expect("echo target write");
        }
        stream.shutdown(Shutdown::Write).unwrap();
    });
    let seed = [0x22; 32];
    let (_testnet, server, client) = node_tunnel(target_port, Some(seed));
    // DHT.keyPair([0x22; 32]), computed with `node interop/node/keypair.js --seed 22..22`.
    assert_eq!(
        server.public_key,
        "a09aa5f47a6759802ff955f8dc2d2a14a5c99d23be97f864127ff9383455a4f0"
    );

    let mut data = vec![0u8; 1024 * 1024];
    rand::rng().fill_bytes(&mut data);
    let expected = Sha256::digest(&data);

    let stream = with_timeouts(TcpStream::connect(("127.0.0.1", client.port)).unwrap());
    // Write from a second thread: the echo comes back while we are still sending,
    // and reading only afterwards could deadlock once every buffer on the way is full.
    let mut writer = stream.try_clone().unwrap();
    let sender = thread::spawn(move || {
        writer.write_all(&data).expect("send through tunnel");
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut echoed = Vec::with_capacity(1024 * 1024);
    (&stream).read_to_end(&mut echoed).expect("read echo");
    sender.join().unwrap();
    target.join().unwrap();

    assert_eq!(echoed.len(), 1024 * 1024, "echo length");
    assert_eq!(Sha256::digest(&echoed), expected, "echo content");
}

#[test]
fn server_first_banner_reaches_a_silent_client() {
    const BANNER: &[u8] = b"SSH-2.0-banner-before-any-client-byte\r\n";
    let (target_port, target) = serve_once(|mut stream| {
        stream.write_all(BANNER).expect("send banner");
        let mut request = Vec::new();
        stream.read_to_end(&mut request).expect("read request");
        stream
            .write_all(format!("got {} bytes", request.len()).as_bytes())
            .expect("send reply");
        stream.shutdown(Shutdown::Write).unwrap();
    });
    let (_testnet, _server, client) = node_tunnel(target_port, None);

    let mut stream = with_timeouts(TcpStream::connect(("127.0.0.1", client.port)).unwrap());
    let mut banner = vec![0u8; BANNER.len()];
    stream.read_exact(&mut banner).expect("read banner");
    assert_eq!(banner, BANNER);

    // After our half-close the reply must still arrive: the tunnel forwards EOF
    // without tearing the connection down.
    stream.write_all(b"hello").unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).expect("read reply");
    target.join().unwrap();
    assert_eq!(reply, "got 5 bytes");
}
