//! What a user gets wrong gets a clear one-line error and a non-zero exit, never a panic or a
//! hang; a local service that is down costs one connection, not the share.

use test_support as support;

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use support::cli::{assert_clear_error, run, ConnectProcess, LocalDht, ShareProcess};
use support::net::{unused_udp_port, Behaviour, Service};

#[test]
fn a_malformed_key_is_refused_at_once() {
    for key in ["abc", "zz", &"0".repeat(63), &"g".repeat(64)] {
        let (code, err, _) = run(
            &["connect", "--key", key, "--bootstrap", "127.0.0.1:9"],
            Duration::from_secs(10),
        );
        assert_clear_error(code, &err, "key");
    }
}

#[test]
fn a_key_nobody_shares_fails_within_15_seconds() {
    let dht = LocalDht::start(4);
    let key = "ab".repeat(32);
    let (code, err, took) = run(
        &["connect", "--key", &key, "--bootstrap", &dht.bootstrap],
        Duration::from_secs(30),
    );
    assert_clear_error(code, &err, "no peer is sharing this key");
    assert!(took < Duration::from_secs(15), "took {took:?}");
}

#[test]
fn a_connect_port_in_use_is_reported() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let key = "ab".repeat(32);
    let (code, err, _) = run(
        &[
            "connect",
            "--key",
            &key,
            "--port",
            &port,
            "--bootstrap",
            "127.0.0.1:9",
        ],
        Duration::from_secs(10),
    );
    assert_clear_error(code, &err, "cannot listen");
}

#[test]
fn an_unreachable_bootstrap_is_reported() {
    let nobody = format!("127.0.0.1:{}", unused_udp_port());
    for cmd in [
        &["share", "--port", "8080"][..],
        &["connect", "--key", &"ab".repeat(32)][..],
    ] {
        let mut args = cmd.to_vec();
        args.extend(["--bootstrap", &nobody]);
        let (code, err, _) = run(&args, Duration::from_secs(30));
        assert_clear_error(code, &err, "could not reach any DHT bootstrap node");
    }
}

#[test]
fn a_malformed_bootstrap_is_reported() {
    let (code, err, _) = run(
        &["share", "--port", "8080", "--bootstrap", "nonsense"],
        Duration::from_secs(10),
    );
    assert_clear_error(code, &err, "bad bootstrap address");
}

#[test]
fn a_service_that_is_down_costs_one_connection_not_the_share() {
    let dht = LocalDht::start(4);
    // A port that was free a moment ago: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut share = ShareProcess::start(&dht.bootstrap, port, &[]);
    let connect = ConnectProcess::start(&dht.bootstrap, &share.key);

    let mut s = TcpStream::connect(connect.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = Vec::new();
    // The tunnel closes this connection (EOF or reset), it does not hang.
    let _ = s.read_to_end(&mut buf);
    assert!(buf.is_empty());
    assert!(share.process.is_running(), "share must keep running");

    // Once the service is up, the same share serves again.
    let service = Service::start_on(port, Behaviour::Banner(b"back\n"));
    let mut s = TcpStream::connect(connect.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut got = [0u8; 5];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"back\n");
    drop(service);
    share.terminate_and_expect_clean_exit();
}

#[test]
fn create_id_writes_a_private_file_and_never_overwrites_it() {
    let dir = std::env::temp_dir().join(format!("p2p-socket-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("identity.json");
    let _ = std::fs::remove_file(&path);
    let p = path.to_str().unwrap();
    let (code, err, _) = run(
        &["create-id", "--identity", p, "--seed", "abc"],
        Duration::from_secs(10),
    );
    assert_eq!(code, 0, "{err}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let (code, err, _) = run(&["create-id", "--identity", p], Duration::from_secs(10));
    assert_clear_error(code, &err, "already exists");
    std::fs::remove_dir_all(&dir).unwrap();
}
