//! Access control with the real binary over a local DHT, and with the real hypertele 1.1.4 CLIs
//! (interop/node) both ways: allow lists (flags, key files, hypertele's conf.json), client
//! identities (ours and hypertele's `-i` file), hypertele's private mode, and bad input.

use test_support as support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use p2p_socket::KeyPair;
use support::cli::{bin, ConnectProcess, LocalDht, ShareProcess};
use support::net::{Behaviour, Service};
use support::node::{hypertele_client, hypertele_server};

const NODES: usize = 3;
const BANNER: &[u8] = b"hello from the shared service\n";
/// A refused client of ours hears the refusal in its first handshake; well under this.
const FAST_REFUSAL: Duration = Duration::from_secs(10);
/// A Node server refuses by not answering: our client gives up after its handshake timeouts.
const SILENT_REFUSAL: Duration = Duration::from_secs(90);

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("p2p-socket-access-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A key pair of a fixed seed, so each test's keys differ and failures reproduce.
fn key_pair(n: u8) -> KeyPair {
    KeyPair::from_seed([n; 32])
}

/// Our identity.json for `kp`, written by `create-id`-compatible JSON.
fn our_identity(dir: &Path, name: &str, kp: &KeyPair) -> String {
    let path = dir.join(name);
    let json = format!(
        "{{\"keyPair\":{{\"publicKey\":\"{}\",\"secretKey\":\"{}\"}}}}",
        kp.public_key(),
        hex(kp.secret_key())
    );
    write_private(&path, &json);
    path.to_str().unwrap().to_owned()
}

/// Our connect to `key` as `kp`, through an identity file of ours named `name`.
fn connect_as(dir: &Path, bootstrap: &str, key: &str, name: &str, kp: &KeyPair) -> ConnectProcess {
    let id = our_identity(dir, name, kp);
    ConnectProcess::start_with(bootstrap, key, &["--identity", &id])
}

/// hypertele's identity file (`hypertele -i`) for `kp`.
fn hypertele_identity(dir: &Path, name: &str, kp: &KeyPair) -> String {
    let path = dir.join(name);
    let json = format!(
        "{{\"publicKey\":\"{}\",\"secretKey\":\"{}\"}}",
        kp.public_key(),
        hex(kp.secret_key())
    );
    write_private(&path, &json);
    path.to_str().unwrap().to_owned()
}

fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

/// Connects to `addr` and reads the service's banner: the tunnel works end to end, and the
/// connection stays usable (an echo round trip) after `idle`.
fn expect_banner(addr: SocketAddr, idle: Duration, what: &str) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("{what}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut got = vec![0u8; BANNER.len()];
    s.read_exact(&mut got)
        .unwrap_or_else(|e| panic!("{what}: no banner through the tunnel: {e}"));
    assert_eq!(got, BANNER, "{what}");
    std::thread::sleep(idle);
    s.write_all(b"ping").unwrap();
    let mut echo = [0u8; 4];
    s.read_exact(&mut echo)
        .unwrap_or_else(|e| panic!("{what}: no echo after {idle:?} idle: {e}"));
    assert_eq!(&echo, b"ping", "{what}");
}

/// Connects to `addr` and expects the tunnel to close without a byte of the service, within
/// `within`. Returns how long the refusal took.
fn expect_refused(addr: SocketAddr, within: Duration, what: &str) -> Duration {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("{what}: {e}"));
    s.set_read_timeout(Some(within)).unwrap();
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) => assert!(
            got.is_empty(),
            "{what}: a refused client got {} bytes of the service",
            got.len()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("{what}: not closed within {within:?}: {e}"),
    }
    started.elapsed()
}

/// The service saw no connection (after the refused ones had time to reach it, had they).
fn expect_no_service_connection(service: &Service, what: &str) {
    match service.tallies.recv_timeout(Duration::from_secs(2)) {
        Err(RecvTimeoutError::Timeout) => {}
        other => panic!("{what}: the service saw a connection: {other:?}"),
    }
}

/// A local DHT, a banner service and a share of it that admits only `allowed`.
struct Allowing {
    dir: PathBuf,
    service: Service,
    share: ShareProcess,
    dht: LocalDht,
}

fn allowing(name: &str, allowed: &str) -> Allowing {
    let dir = temp_dir(name);
    let dht = LocalDht::start(NODES);
    let service = Service::start(Behaviour::Banner(BANNER));
    let share = ShareProcess::start(&dht.bootstrap, service.port(), &["--allow", allowed]);
    Allowing {
        dir,
        service,
        share,
        dht,
    }
}

#[test]
fn an_allowed_key_gets_in_and_another_is_refused_before_the_service() {
    let (alice, mallory) = (key_pair(1), key_pair(2));
    let Allowing {
        dir,
        service,
        mut share,
        dht,
    } = allowing("allow", &alice.public_key().to_string());

    let connect = connect_as(&dir, &dht.bootstrap, &share.key, "alice.json", &alice);
    expect_banner(connect.addr, Duration::ZERO, "allowed client");
    service.next_tally(Duration::from_secs(30));
    drop(connect);

    let refused = connect_as(&dir, &dht.bootstrap, &share.key, "mallory.json", &mallory);
    let took = expect_refused(refused.addr, FAST_REFUSAL, "client not on the list");
    eprintln!("refusal reached our client in {took:?}");
    // Programs reading --json hear of it with the client's key.
    let mallory_key = mallory.public_key().to_string();
    share.process.wait_for(Duration::from_secs(10), |line| {
        let event: serde_json::Value = serde_json::from_str(line).ok()?;
        (event["event"] == "peer_refused" && event["key"] == mallory_key.as_str()).then_some(())
    });
    // A client with a fresh key each run is refused the same way.
    let anonymous = ConnectProcess::start(&dht.bootstrap, &share.key);
    expect_refused(anonymous.addr, FAST_REFUSAL, "anonymous client");
    expect_no_service_connection(&service, "refused clients");
}

#[test]
fn allow_files_in_both_formats() {
    let dir = temp_dir("files");
    let (alice, bob, mallory) = (key_pair(3), key_pair(4), key_pair(5));
    let dht = LocalDht::start(NODES);
    let service = Service::start(Behaviour::Banner(BANNER));

    // Our format: comments, blank lines, hex and z-base-32.
    let list = dir.join("allowed.txt");
    std::fs::write(
        &list,
        format!(
            "# who may connect\n\n{}  # alice\n{}\n",
            alice.public_key(),
            bob.public_key().to_z32()
        ),
    )
    .unwrap();
    let share = ShareProcess::start(
        &dht.bootstrap,
        service.port(),
        &["--allow-file", list.to_str().unwrap()],
    );
    for (kp, name) in [(&alice, "alice"), (&bob, "bob")] {
        let id = our_identity(&dir, &format!("{name}.json"), kp);
        let c = ConnectProcess::start_with(&dht.bootstrap, &share.key, &["--identity", &id]);
        expect_banner(c.addr, Duration::ZERO, name);
    }
    let c = connect_as(&dir, &dht.bootstrap, &share.key, "mallory.json", &mallory);
    expect_refused(c.addr, FAST_REFUSAL, "mallory (key file)");
    drop(share);

    // hypertele's conf.json, unchanged: its seed gives the share key, its allow list the clients.
    let seed = [0xab; 32];
    let conf = dir.join("conf.json");
    std::fs::write(
        &conf,
        format!(
            "{{\"seed\":\"{}\",\"allow\":[\"{}\"],\"keepAlive\":5000}}",
            hex(&seed),
            alice.public_key()
        ),
    )
    .unwrap();
    let share = ShareProcess::start(
        &dht.bootstrap,
        service.port(),
        &["--allow-file", conf.to_str().unwrap()],
    );
    assert_eq!(
        share.key,
        KeyPair::from_seed(seed).public_key().to_string(),
        "conf.json's seed gives the share key"
    );
    let c = connect_as(&dir, &dht.bootstrap, &share.key, "alice.json", &alice);
    expect_banner(c.addr, Duration::ZERO, "alice (conf.json)");
    let c = connect_as(&dir, &dht.bootstrap, &share.key, "bob.json", &bob);
    expect_refused(c.addr, FAST_REFUSAL, "bob (not in conf.json)");
}

#[test]
fn hypertele_server_allow_list_admits_our_identity_only() {
    let dir = temp_dir("ht-server");
    let (alice, mallory) = (key_pair(6), key_pair(7));
    let dht = LocalDht::start(NODES);
    let service = Service::start(Behaviour::Banner(BANNER));
    let conf = dir.join("conf.json");
    std::fs::write(
        &conf,
        format!(
            "{{\"seed\":\"{}\",\"allow\":[\"{}\"]}}",
            hex(&[0xcd; 32]),
            alice.public_key()
        ),
    )
    .unwrap();
    let (_server, key) = hypertele_server(
        &dht.bootstrap,
        service.port(),
        &["-c", conf.to_str().unwrap()],
    );

    let alice_id = hypertele_identity(&dir, "alice.json", &alice);
    let c = ConnectProcess::start_with(&dht.bootstrap, &key, &["--identity", &alice_id]);
    expect_banner(
        c.addr,
        Duration::ZERO,
        "our client with an allowed hypertele identity",
    );
    let mallory_id = our_identity(&dir, "mallory.json", &mallory);
    let c = ConnectProcess::start_with(&dht.bootstrap, &key, &["--identity", &mallory_id]);
    // hyperdht's server refuses by not answering; our client gives up after its timeouts.
    expect_refused(c.addr, SILENT_REFUSAL, "our client not on hypertele's list");
}

#[test]
fn our_allow_list_admits_a_hypertele_client_identity_and_survives_its_keepalives() {
    let (alice, mallory) = (key_pair(8), key_pair(9));
    let Allowing {
        dir,
        service,
        share,
        dht,
    } = allowing("ht-client", &alice.public_key().to_z32());
    let alice_id = hypertele_identity(&dir, "alice.json", &alice);
    let (_client, addr) = hypertele_client(&dht.bootstrap, &["-s", &share.key, "-i", &alice_id]);
    // Idle across two of hypertele's 5 s keepalives, then still usable.
    expect_banner(
        addr,
        Duration::from_secs(12),
        "hypertele client with an allowed -i",
    );

    let mallory_id = hypertele_identity(&dir, "mallory.json", &mallory);
    let (_client, addr) = hypertele_client(&dht.bootstrap, &["-s", &share.key, "-i", &mallory_id]);
    // Node's client reads our refusal as "Server returned an error" at once.
    let took = expect_refused(addr, FAST_REFUSAL, "hypertele client not on the list");
    eprintln!("refusal reached hypertele's client in {took:?}");
    service.next_tally(Duration::from_secs(30));
    expect_no_service_connection(&service, "refused hypertele client");
}

#[test]
fn hypertele_private_mode_both_ways() {
    let seed = hex(&[0xef; 32]);
    let dht = LocalDht::start(NODES);
    let service = Service::start(Behaviour::Banner(BANNER));

    // hypertele-server --private, our connect --seed --private.
    let (server, key) = hypertele_server(
        &dht.bootstrap,
        service.port(),
        &["--seed", &seed, "--private"],
    );
    assert_eq!(key, KeyPair::from_seed([0xef; 32]).public_key().to_string());
    let c = ConnectProcess::start_args(&dht.bootstrap, &["--seed", &seed, "--private"]);
    expect_banner(
        c.addr,
        Duration::ZERO,
        "our private client to hypertele-server",
    );
    drop((c, server));
    service.next_tally(Duration::from_secs(30));

    // Our share --seed --private, hypertele --private; a client that knows only the key is
    // refused.
    let share = ShareProcess::start(
        &dht.bootstrap,
        service.port(),
        &["--seed", &seed, "--private"],
    );
    assert_eq!(share.key, key, "both derive the same key from the seed");
    let (_client, addr) = hypertele_client(&dht.bootstrap, &["-s", &seed, "--private"]);
    expect_banner(
        addr,
        Duration::ZERO,
        "hypertele private client to our share",
    );
    service.next_tally(Duration::from_secs(30));
    let c = ConnectProcess::start(&dht.bootstrap, &share.key);
    expect_refused(c.addr, FAST_REFUSAL, "a client with only the public key");
    expect_no_service_connection(&service, "key-only client");
}

#[test]
fn a_flood_of_refused_handshakes_leaves_the_share_serving() {
    let (alice, mallory) = (key_pair(10), key_pair(11));
    let Allowing {
        dir,
        service,
        share,
        dht,
    } = allowing("flood", &alice.public_key().to_string());
    let flood = connect_as(&dir, &dht.bootstrap, &share.key, "mallory.json", &mallory);
    // Every local connection is a handshake of its own; all at once.
    const FLOOD: usize = 200;
    let attempts: Vec<_> = (0..FLOOD)
        .map(|_| {
            let addr = flood.addr;
            std::thread::spawn(move || expect_refused(addr, Duration::from_secs(60), "flood"))
        })
        .collect();
    for a in attempts {
        a.join().expect("a flooding connection was not refused");
    }
    let c = connect_as(&dir, &dht.bootstrap, &share.key, "alice.json", &alice);
    expect_banner(c.addr, Duration::ZERO, "allowed client after the flood");
    service.next_tally(Duration::from_secs(30));
    drop(c);
    expect_no_service_connection(&service, "after the flood");
}

/// Runs `p2p-socket` with `args` (no DHT is reached: input is checked first) and returns its
/// exit code and stderr.
fn run(args: &[&str]) -> (i32, String) {
    let out = bin()
        .args(args)
        .args(["--bootstrap", "127.0.0.1:9"])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_keys_files_and_seeds_are_clear_errors() {
    let dir = temp_dir("bad");
    let share = |extra: &[&str]| {
        let mut args = vec!["share", "--port", "8080"];
        args.extend(extra);
        run(&args)
    };
    let (code, err) = share(&["--allow", "not-a-key"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--allow") && err.contains("64 hex"), "{err}");

    let (code, err) = share(&["--seed", "abc123"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("64 hex"), "{err}");
    let (code, err) = run(&["connect", "--seed", &"zz".repeat(32), "--private"]);
    assert_eq!(code, 2, "{err}");
    let (code, err) = run(&["connect", "--private"]);
    assert_eq!(code, 2, "--private without a seed: {err}");
    let (code, err) = share(&[
        "--private",
        "--seed",
        &"ab".repeat(32),
        "--allow",
        &key_pair(1).public_key().to_string(),
    ]);
    assert_eq!(code, 2, "--private with an allow list: {err}");

    let junk = dir.join("junk.txt");
    std::fs::write(
        &junk,
        format!("{}\nsomething else\n", key_pair(1).public_key()),
    )
    .unwrap();
    let (code, err) = share(&["--allow-file", junk.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("junk.txt") && err.contains("line 2"), "{err}");

    let conf = dir.join("conf.json");
    std::fs::write(&conf, "{\"allow\": [\"00\"]}").unwrap();
    let (code, err) = share(&["--allow-file", conf.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("entry 1"), "{err}");

    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "# nobody yet\n").unwrap();
    let (code, err) = share(&["--allow-file", empty.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no client key"), "{err}");

    let too_many = dir.join("too-many.txt");
    let keys: String = (0..=p2p_socket::MAX_ALLOWED_KEYS as u32)
        .map(|n| {
            let mut b = [0u8; 32];
            b[..4].copy_from_slice(&n.to_le_bytes());
            format!("{}\n", hex(&b))
        })
        .collect();
    std::fs::write(&too_many, keys).unwrap();
    let (code, err) = share(&["--allow-file", too_many.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("more than 10000"), "{err}");

    let wrong = dir.join("wrong-id.json");
    write_private(&wrong, "{\"seed\": \"00\"}");
    let (code, err) = run(&[
        "connect",
        "--key",
        &key_pair(1).public_key().to_string(),
        "--identity",
        wrong.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("not an identity file") && err.contains("hypertele"),
        "{err}"
    );
}
