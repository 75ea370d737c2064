//! End to end through the lab: the real p2p-socket DHT, share and connect in two open homes
//! (directly reachable, so no hole punching is needed), a TCP service in one home and a client
//! in the other, a few MiB each way verified.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use netlab::{LabSpec, Nat};
use test_support::net::{exchange, pattern_sha, Behaviour, Service};

const READY: Duration = Duration::from_secs(30);
const SIZE: u64 = 4 << 20;

#[test]
fn the_tunnel_works_between_two_open_homes() {
    let lab = common::lab(LabSpec::homes([Nat::Open, Nat::Open]));
    let p2p_socket = netlab::find_binary("p2p-socket").unwrap_or_else(|e| panic!("{e}"));
    let bootstrap = lab.start_dht(&p2p_socket).expect("start the lab's DHT");
    let (a, b) = (&lab.homes()[0], &lab.homes()[1]);

    let service = lab
        .in_netns(&a.host.netns, || {
            Service::start(Behaviour::Exchange {
                send: SIZE,
                seed: 1,
            })
        })
        .expect("service in home 1");

    let mut share_cmd = lab.exec(&a.host.netns, &p2p_socket);
    share_cmd.args([
        "share",
        "--host",
        "127.0.0.1",
        "--port",
        &service.port().to_string(),
        "--bootstrap",
        &bootstrap,
    ]);
    let mut share = lab.spawn("share", share_cmd).expect("start share");
    let key = share
        .wait_for(READY, |l| {
            let l = l.trim();
            (l.len() == 64 && l.bytes().all(|c| c.is_ascii_hexdigit())).then(|| l.to_string())
        })
        .expect("share prints its key");

    let started = Instant::now();
    let mut connect_cmd = lab.exec(&b.host.netns, &p2p_socket);
    connect_cmd.args(["connect", "--key", &key, "--bootstrap", &bootstrap]);
    let mut connect = lab.spawn("connect", connect_cmd).expect("start connect");
    let listen: SocketAddr = connect
        .wait_for(READY, |l| {
            l.strip_prefix("Listening on ")
                .and_then(|a| a.trim().parse().ok())
        })
        .expect("connect listens");

    let stream = lab
        .in_netns(&b.host.netns, move || TcpStream::connect(listen))
        .expect("enter home 2")
        .expect("connect to the local end of the tunnel");
    let client = exchange(stream, SIZE, 2).expect("exchange through the tunnel");
    let elapsed = started.elapsed();
    let server = service.next_tally(Duration::from_secs(120));

    assert_eq!(client.received, SIZE, "bytes home 2 got from home 1");
    assert_eq!(client.received_sha, pattern_sha(SIZE, 1));
    assert_eq!(server.received, SIZE, "bytes home 1 got from home 2");
    assert_eq!(server.received_sha, pattern_sha(SIZE, 2));
    eprintln!(
        "open x open: {} MiB each way verified, {:?} from connect start to the end",
        SIZE >> 20,
        elapsed
    );
}
