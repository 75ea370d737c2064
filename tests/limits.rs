//! The sharer's limits, driven past their caps by real processes on loopback: past the cap new
//! peers are turned away, and the sharer still serves once there is room again.

use test_support as support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::cli::{ConnectProcess, LocalDht, ShareProcess};
use support::net::{Behaviour, Service};

/// One echoed round trip on an open tunnel connection.
fn echo(tcp: &mut TcpStream, text: &[u8]) -> std::io::Result<Vec<u8>> {
    tcp.write_all(text)?;
    let mut back = vec![0; text.len()];
    tcp.read_exact(&mut back)?;
    Ok(back)
}

#[test]
fn a_share_holds_at_most_max_connections_and_serves_again_when_one_closes() {
    let dht = LocalDht::start(3);
    let service = Service::start(Behaviour::Echo);
    let share = ShareProcess::start(&dht.bootstrap, service.port(), &["--max-connections", "1"]);
    // One encrypted connection per local connection: multiplexed, they would all be one.
    let connect = ConnectProcess::start_with(&dht.bootstrap, &share.key, &["--no-multiplex"]);

    // The one connection the sharer allows, held open.
    let mut first = TcpStream::connect(connect.addr).unwrap();
    first
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    assert_eq!(echo(&mut first, b"first").unwrap(), b"first");

    // Past the cap: the sharer does not answer, the connect gives up and closes the local
    // connection without a byte of the service.
    let mut second = TcpStream::connect(connect.addr).unwrap();
    second
        .set_read_timeout(Some(Duration::from_secs(90)))
        .unwrap();
    second.write_all(b"second").unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    let _ = second.read_to_end(&mut got);
    assert!(got.is_empty(), "served past the cap: {got:?}");
    assert!(
        started.elapsed() < Duration::from_secs(90),
        "the refused connection was neither served nor closed"
    );

    // Room again: the first closes, the next is served.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut next = TcpStream::connect(connect.addr).unwrap();
        next.set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        match echo(&mut next, b"third") {
            Ok(back) => {
                assert_eq!(back, b"third");
                break;
            }
            // The first connection's end may still be on its way to the sharer.
            Err(e) if Instant::now() < deadline => eprintln!("not yet served again: {e}"),
            Err(e) => panic!("the sharer did not serve again after a connection closed: {e}"),
        }
    }
}
