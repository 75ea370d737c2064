//! Our binary and the real holesail 2.4.1 (on the Bare runtime, pinned in interop/node) on one
//! loopback DHT, both ways: `hs://` public and secure strings reach holesail servers, holesail
//! clients reach our shares (public and `--secret`), each side learns the port from the other's
//! DHT record, and secret mode refuses a client that knows only the public key.

use test_support as support;

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use support::cli::{bin, ConnectProcess, ShareProcess, READY};
use support::net::{pattern_sha, read_all, send_pattern, Behaviour, Service};
use support::node::{bare, Holesail, NodeServer, NodeTestnet};

const T: Duration = Duration::from_secs(120);
const VOLUME: u64 = 1024 * 1024;
const SEED: u64 = 7;
/// Node's own measurements here: testnets under 10 nodes make Node clients time out now and then.
const NODES: usize = 10;
/// A second loopback address for services whose port the tunnel's local end takes on 127.0.0.1
/// (a record names the service's port, and both ends are on this one machine).
const OTHER_LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// One Node testnet (real hyperdht nodes) for all tests of this file: holesail's mutable
/// records live on it. It exits with the test process (its stdin closes).
fn testnet() -> Vec<String> {
    static TESTNET: OnceLock<Mutex<NodeTestnet>> = OnceLock::new();
    bare();
    let testnet = TESTNET.get_or_init(|| Mutex::new(NodeTestnet::start(NODES)));
    testnet
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .bootstrap
        .clone()
}

fn service() -> Service {
    Service::start(Behaviour::Echo)
}

/// One connection through the tunnel whose local end is 127.0.0.1:`port` to an echo service:
/// every byte sent comes back, checked by length and hash. The client reads the whole echo
/// before it closes: holesail's piper (hyper-cmd-lib-net 1.x) destroys both sides as soon as
/// either closes, dropping whatever is still in flight, so a test that closes while data
/// moves would measure holesail's loss, not the tunnel.
fn verify_transfer(port: u16, what: &str) {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("dial the tunnel");
    s.set_read_timeout(Some(T)).unwrap();
    let mut writer = s.try_clone().unwrap();
    let sender = std::thread::spawn(move || send_pattern(&mut writer, VOLUME, SEED));
    let (received, sha) = read_all(&mut (&s).take(VOLUME)).expect("read the echo");
    sender.join().unwrap().expect("send through the tunnel");
    assert_eq!(received, VOLUME, "{what}: bytes echoed");
    assert_eq!(sha, pattern_sha(VOLUME, SEED), "{what}: the echo");
}

/// `share` with `args`; its hex key and the connection string it printed.
fn share(bootstrap: &[String], args: &[&str]) -> (ShareProcess, String) {
    let share = ShareProcess::start_with(&bootstrap.join(","), args);
    let string = share
        .connection_string
        .clone()
        .expect("the listening event names the connection string");
    (share, string)
}

/// An echo service on 127.0.0.1 shared by `share` with `extra` arguments: the service, the
/// share and the connection string it printed.
fn shared_service(bootstrap: &[String], extra: &[&str]) -> (Service, ShareProcess, String) {
    let service = service();
    let port = service.port().to_string();
    let mut args = vec!["--host", "127.0.0.1", "--port", &port];
    args.extend_from_slice(extra);
    let (share, string) = share(bootstrap, &args);
    (service, share, string)
}

/// A free TCP port on 127.0.0.1 (free a moment ago), for a holesail client to listen on.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Our connect, given the `hs://` string a holesail server printed, reaches its service.
fn connect_reaches_holesail_server(secure: bool, prefix: &str) {
    let bootstrap = testnet();
    let service = service();
    let server = Holesail::server(&bootstrap, "127.0.0.1", service.port(), secure);
    let url = server.get("url");
    assert!(url.starts_with(prefix), "{url}");
    let connect = ConnectProcess::start_with(&bootstrap.join(","), url, &["--port", "0"]);
    verify_transfer(
        connect.addr.port(),
        &format!("to a holesail server ({prefix})"),
    );
}

#[test]
fn connect_reaches_a_holesail_public_server_with_its_hs_string() {
    connect_reaches_holesail_server(false, "hs://0000");
}

#[test]
fn connect_reaches_a_holesail_secure_server_with_its_hs_string() {
    connect_reaches_holesail_server(true, "hs://s000");
}

#[test]
fn a_holesail_secure_client_reaches_our_secret_share() {
    let bootstrap = testnet();
    let (_service, _share, string) = shared_service(&bootstrap, &["--secret"]);
    assert!(string.starts_with("hs://s000"), "{string}");
    let client = Holesail::client(&bootstrap, &string, "127.0.0.1", Some(free_port()));
    verify_transfer(client.port(), "holesail secure client to our share");
}

#[test]
fn a_holesail_public_client_reaches_our_share() {
    let bootstrap = testnet();
    let (_service, share, string) = shared_service(&bootstrap, &[]);
    assert!(string.starts_with("hs://0000"), "{string}");
    // The z-base-32 key in the string is the hex key share printed.
    let parsed: p2p_socket::ConnectionString = string.parse().unwrap();
    assert_eq!(parsed.remote().to_string(), share.key);
    let client = Holesail::client(&bootstrap, &string, "127.0.0.1", Some(free_port()));
    verify_transfer(client.port(), "holesail public client to our share");
}

#[test]
fn connect_without_port_listens_on_the_port_of_a_holesail_servers_record() {
    let bootstrap = testnet();
    let service = Service::start_at(OTHER_LOOPBACK, Behaviour::Echo);
    let server = Holesail::server(&bootstrap, "127.0.0.2", service.port(), true);
    let connect = ConnectProcess::start_with(&bootstrap.join(","), server.get("url"), &[]);
    assert_eq!(
        connect.addr.port(),
        service.port(),
        "the port of the record"
    );
    verify_transfer(connect.addr.port(), "connect on the record's port");
}

#[test]
fn a_holesail_client_listens_on_the_port_of_our_shares_record() {
    let bootstrap = testnet();
    let service = Service::start_at(OTHER_LOOPBACK, Behaviour::Echo);
    let port = service.port().to_string();
    let (_share, string) = share(&bootstrap, &["--host", "127.0.0.2", "--port", &port]);
    // No port: holesail reads it from our record ({"host":"127.0.0.2","udp":false,"port":P}).
    let client = Holesail::client(&bootstrap, &string, "127.0.0.1", None);
    assert_eq!(
        client.port(),
        service.port(),
        "holesail info: {}",
        client.info
    );
    assert_eq!(client.info["protocol"], "tcp");
    verify_transfer(client.port(), "holesail client on our record's port");
}

#[test]
fn connect_without_port_takes_a_free_one_when_the_records_port_is_taken_here() {
    let bootstrap = testnet();
    // The service itself holds 127.0.0.1:P, the port our share's record names.
    let (service, share, _) = shared_service(&bootstrap, &[]);
    let connect = ConnectProcess::start_with(&bootstrap.join(","), &share.key, &[]);
    assert_ne!(connect.addr.port(), service.port());
    verify_transfer(connect.addr.port(), "connect on a free port");
}

#[test]
fn connect_without_port_and_without_a_record_picks_a_free_port() {
    let bootstrap = testnet();
    let service = service();
    // The npm p2p-socket's share keeps no record.
    let server = NodeServer::start(&bootstrap, service.port(), None);
    let mut connect = ConnectProcess::start_with(&bootstrap.join(","), &server.public_key, &[]);
    assert_ne!(connect.addr.port(), 0);
    verify_transfer(connect.addr.port(), "connect on a free port");
    assert!(connect.process.is_running());
}

#[test]
fn a_secret_share_refuses_a_client_that_knows_only_the_public_key() {
    let bootstrap = testnet();
    let service = service();
    let port = service.port().to_string();
    let secret = "a-key-string-of-at-least-32-characters";
    let (share, string) = share(
        &bootstrap,
        &["--host", "127.0.0.1", "--port", &port, "--secret", secret],
    );
    assert_eq!(string, format!("hs://s000{secret}"));

    // Only the public key: the share never answers, the service sees nothing.
    let outsider = ConnectProcess::start_with(&bootstrap.join(","), &share.key, &["--port", "0"]);
    let mut tcp = TcpStream::connect(outsider.addr).unwrap();
    tcp.set_read_timeout(Some(T)).unwrap();
    let mut got = Vec::new();
    let _ = tcp.read_to_end(&mut got);
    assert!(got.is_empty(), "a refused client got {} bytes", got.len());
    assert!(
        service
            .tallies
            .recv_timeout(Duration::from_secs(1))
            .is_err(),
        "the service saw a connection from a refused client"
    );

    // The same share with the string: in.
    let insider = ConnectProcess::start_with(&bootstrap.join(","), &string, &["--port", "0"]);
    verify_transfer(insider.addr.port(), "with the key string");
}

/// `p2p-socket ARGS` run to its end: exit status and stderr.
fn run(args: &[&str]) -> (std::process::ExitStatus, String) {
    let out = bin().args(args).output().expect("run p2p-socket");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_strings_are_refused_with_what_is_accepted() {
    // A bootstrap nobody answers: the string must be refused before any network use.
    let nowhere = format!("127.0.0.1:{}", support::net::unused_udp_port());
    for key in [
        "hs://",
        "hs://s000",
        "hs://0000notakey",
        "nonsense",
        "hs://s000a b",
    ] {
        let (status, stderr) = run(&["connect", "--key", key, "--bootstrap", &nowhere]);
        assert_eq!(status.code(), Some(1), "{key}: {stderr}");
        assert!(stderr.contains("--key"), "{key}: {stderr}");
        assert!(
            stderr.contains("hs://") || stderr.contains("key string"),
            "{key}: {stderr}"
        );
    }
    let (status, stderr) = run(&[
        "share",
        "--port",
        "80",
        "--secret",
        "short",
        "--bootstrap",
        &nowhere,
    ]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("at least 32"), "{stderr}");
}

#[test]
fn share_prints_the_strings_and_a_qr_code() {
    let bootstrap = testnet();
    let service = service();
    let port = service.port().to_string();
    // The text a person reads: no --json (test-support's ShareProcess asks for JSON).
    let mut cmd = support::cli::bin();
    cmd.args([
        "share",
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--secret",
        "--qr",
    ])
    .args(["--bootstrap", &bootstrap.join(",")]);
    let mut share = support::process::ChildProcess::spawn(cmd, "share");
    let string = share.wait_for(READY, |line| {
        line.strip_prefix("Connection string (holesail and p2p-socket): ")
            .map(str::to_string)
    });
    assert!(string.starts_with("hs://s000"));
    // The QR code follows: a square of half blocks (two module rows a line), quiet zone
    // included, at least version 3 (29 modules) for a 73-character string.
    let first = share.wait_for(READY, |line| {
        line.contains('\u{2588}').then(|| line.to_string())
    });
    let width = first.chars().count();
    assert!(width >= 29 + 8, "{first:?}");
    let mut rows = vec![first];
    while rows.len() < (width - 1) / 2 {
        let row = share.wait_for(READY, |line| Some(line.to_string()));
        rows.push(row);
    }
    for row in &rows {
        assert_eq!(row.chars().count(), width, "{row:?}");
        assert!(
            row.chars().all(|c| " \u{2580}\u{2584}\u{2588}".contains(c)),
            "{row:?}"
        );
    }
}
