//! Unix sockets at both ends of a tunnel (real processes, a local DHT on loopback): a service on
//! a Unix socket shared and reached through a TCP connect, a TCP service reached through
//! `connect --unix`, and the socket file handled with care: owner-only, removed on exit, a stale
//! one replaced, anything else refused with a clear error.
#![cfg(unix)]

use test_support as support;

use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::cli::{assert_clear_error, run, ConnectProcess, LocalDht, ShareProcess};
use support::net::{assert_exchanged, exchange, Behaviour, Service, UnixService};
use support::process::ChildProcess;

const MIB: u64 = 1024 * 1024;
const T: Duration = Duration::from_secs(60);

/// A directory of its own for one test's sockets, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "p2p-socket-unix-{name}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir(&dir).unwrap();
        TempDir(dir)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn a_unix_socket_service_is_shared() {
    let dir = TempDir::new("share");
    let path = dir.join("service.sock");
    let service = UnixService::start(
        &path,
        Behaviour::Exchange {
            send: 3 * MIB,
            seed: 1,
        },
    );
    let dht = LocalDht::start(3);
    let share = ShareProcess::start_with(&dht.bootstrap, &["--unix", arg(&path)]);
    let connect = ConnectProcess::start(&dht.bootstrap, &share.key);
    let client = exchange(TcpStream::connect(connect.addr).unwrap(), 3 * MIB, 2).unwrap();
    let server = service.next_tally(T);
    assert_exchanged(
        &client,
        &server,
        3 * MIB,
        1,
        "through the shared Unix socket",
    );
}

#[test]
fn connect_listens_on_a_unix_socket_owner_only_and_removes_it() {
    let dir = TempDir::new("connect");
    let path = dir.join("tunnel.sock");
    let service = Service::start(Behaviour::Exchange {
        send: 2 * MIB,
        seed: 3,
    });
    let dht = LocalDht::start(3);
    let share = ShareProcess::start(&dht.bootstrap, service.port(), &[]);
    let mut connect = unix_connect(&dht, &share.key, &path);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the socket should be owner-only");
    let client = exchange(UnixStream::connect(&path).unwrap(), MIB, 4).unwrap();
    let server = service.next_tally(T);
    assert_eq!(client.received, 2 * MIB);
    assert_eq!(server.received, MIB);
    assert_eq!(server.received_sha, client.sent_sha);
    connect.terminate();
    assert!(connect.wait_exit(T).success());
    assert!(!path.exists(), "the socket file should be gone after exit");
}

/// `connect --unix PATH --json`; waits until it listens.
fn unix_connect(dht: &LocalDht, key: &str, path: &Path) -> ChildProcess {
    let mut cmd = support::cli::bin();
    cmd.args([
        "connect",
        "--json",
        "--key",
        key,
        "--bootstrap",
        &dht.bootstrap,
    ])
    .args(["--unix", arg(path)]);
    let mut process = ChildProcess::spawn(cmd, "connect --unix");
    let local = process.wait_for(T, |line| {
        support::cli::event(line, "listening").map(|v| v["local"].clone())
    });
    assert_eq!(local, format!("unix:{}", path.display()));
    process
}

#[test]
fn a_stale_socket_is_replaced() {
    let dir = TempDir::new("stale");
    let path = dir.join("tunnel.sock");
    // A socket whose program died: the file stays, nothing listens.
    drop(UnixListener::bind(&path).unwrap());
    let service = Service::start(Behaviour::Echo);
    let dht = LocalDht::start(3);
    let share = ShareProcess::start(&dht.bootstrap, service.port(), &[]);
    let _connect = unix_connect(&dht, &share.key, &path);
    let client = exchange(UnixStream::connect(&path).unwrap(), 64 * 1024, 5).unwrap();
    assert_eq!(client.received_sha, client.sent_sha);
}

#[test]
fn a_file_or_a_live_socket_is_never_replaced() {
    let dir = TempDir::new("clobber");
    let file = dir.join("notes.txt");
    std::fs::write(&file, b"precious").unwrap();
    let live = dir.join("live.sock");
    let _listener = UnixListener::bind(&live).unwrap();
    let key = "ab".repeat(32);
    for (path, expect) in [
        (&file, "not a socket"),
        (&live, "another program listens on it"),
    ] {
        let (code, err, _) = run(
            &[
                "connect",
                "--key",
                &key,
                "--unix",
                arg(path),
                "--bootstrap",
                "127.0.0.1:9",
            ],
            T,
        );
        assert_clear_error(code, &err, expect);
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"precious");
    UnixStream::connect(&live).expect("the live socket still works");
}
