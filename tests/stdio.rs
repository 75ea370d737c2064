//! `connect --stdio` carries one connection on stdin and stdout, as ssh's ProxyCommand uses it:
//! an ssh-like session (the server speaks first, a request/response dialogue, then bulk both
//! ways) through real processes over a local DHT, half-closes passed on both ways, and a clear
//! error when the sharer cannot be reached.

use test_support as support;

use std::io::{Read, Write};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use support::cli::{assert_clear_error, bin, run, LocalDht, ShareProcess};
use support::net::{pattern_sha, read_all, send_pattern, Behaviour, Service};

const T: Duration = Duration::from_secs(90);
const MIB: u64 = 1024 * 1024;
const BANNER: &[u8] = b"SSH-2.0-p2p-socket-test\r\n";

/// `connect --stdio` to `key`, its stdin and stdout piped to the test, killed after [`T`] if it
/// is still running then (so a hung read fails the test instead of hanging it).
struct StdioSession {
    child: Child,
    done: Arc<AtomicBool>,
}

impl StdioSession {
    fn start(bootstrap: &str, key: &str) -> StdioSession {
        let child = bin()
            .args(["connect", "--stdio", "--key", key, "--bootstrap", bootstrap])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start p2p-socket connect --stdio");
        let done = Arc::new(AtomicBool::new(false));
        let pid = child.id().to_string();
        let watching = Arc::clone(&done);
        thread::spawn(move || {
            let started = Instant::now();
            while started.elapsed() < T {
                if watching.load(Ordering::Relaxed) {
                    return;
                }
                thread::sleep(Duration::from_millis(100));
            }
            eprintln!("connect --stdio still running after {T:?}: killing it");
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid])
                .status();
        });
        StdioSession { child, done }
    }

    /// Waits for the exit that the end of the connection brings; its status.
    fn exit(mut self) -> std::process::ExitStatus {
        let status = self.child.wait().unwrap();
        self.done.store(true, Ordering::Relaxed);
        status
    }
}

#[test]
fn an_ssh_like_session_goes_through_stdin_and_stdout() {
    let dht = LocalDht::start(3);
    let service = Service::start(Behaviour::Banner(BANNER));
    let share = ShareProcess::start(&dht.bootstrap, service.port(), &[]);
    let mut session = StdioSession::start(&dht.bootstrap, &share.key);
    let mut stdin = session.child.stdin.take().unwrap();
    let mut stdout = session.child.stdout.take().unwrap();

    // The server speaks first, then answers each request before the next is sent.
    let mut banner = vec![0u8; BANNER.len()];
    stdout.read_exact(&mut banner).unwrap();
    assert_eq!(banner, BANNER);
    let mut dialogue = 0u64;
    for round in 0..5 {
        let request = format!("request {round}\n");
        stdin.write_all(request.as_bytes()).unwrap();
        stdin.flush().unwrap();
        let mut answer = vec![0u8; request.len()];
        stdout.read_exact(&mut answer).unwrap();
        assert_eq!(answer, request.as_bytes());
        dialogue += request.len() as u64;
    }

    // Bulk both ways at once: what goes up comes back; the end of stdin ends the session.
    let bulk = 16 * MIB;
    let sender = thread::spawn(move || {
        let sha = send_pattern(&mut stdin, bulk, 7).unwrap();
        drop(stdin);
        sha
    });
    let (received, received_sha) = read_all(&mut stdout).unwrap();
    let sent_sha = sender.join().unwrap();
    assert_eq!(received, bulk);
    assert_eq!(received_sha, sent_sha);
    assert_eq!(sent_sha, pattern_sha(bulk, 7));

    let status = session.exit();
    assert!(status.success(), "connect --stdio exited with {status}");
    let tally = service.next_tally(T);
    assert_eq!(tally.received, dialogue + bulk);
}

/// Closing stdin ends our side only: the sharer still sends all it has, and the process exits
/// 0 once that is on stdout.
#[test]
fn the_end_of_stdin_is_a_half_close() {
    let dht = LocalDht::start(3);
    let service = Service::start(Behaviour::Exchange {
        send: 4 * MIB,
        seed: 9,
    });
    let share = ShareProcess::start(&dht.bootstrap, service.port(), &[]);
    let mut session = StdioSession::start(&dht.bootstrap, &share.key);
    drop(session.child.stdin.take());
    let mut stdout = session.child.stdout.take().unwrap();
    let (received, sha) = read_all(&mut stdout).unwrap();
    assert_eq!(received, 4 * MIB);
    assert_eq!(sha, pattern_sha(4 * MIB, 9));
    assert!(session.exit().success());
    assert_eq!(service.next_tally(T).received, 0);
}

#[test]
fn an_unreachable_sharer_is_a_clear_error() {
    let dht = LocalDht::start(3);
    let nobody = "cd".repeat(32);
    let (code, err, _) = run(
        &[
            "connect",
            "--stdio",
            "--key",
            &nobody,
            "--bootstrap",
            &dht.bootstrap,
        ],
        T,
    );
    assert_clear_error(code, &err, "no peer is sharing this key");
}
