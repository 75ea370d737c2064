//! Roaming in the NAT lab (crates/netlab, docs/roaming.md): an ssh-like session through our
//! connect (small writes answered one by one, then a 1 MiB transfer) goes on while the
//! connecting home's router gets a new public address and forgets its NAT table. The session
//! re-attaches over a new path within a bounded time, and every byte comes back once, in order.
//!
//! Needs root (the lab builds network namespaces) and `conntrack`; without them the test fails
//! saying so.

use test_support as support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

use netlab::{LabSpec, Nat};
use support::lab::{dump, service_in, Log, TwoHomes};
use support::net::{pattern_sha, send_pattern, Behaviour, Pattern};

/// The session must answer again this soon after the move (its measured figure is printed).
const REATTACH: Duration = Duration::from_secs(10);
/// The most one answer may take before the session counts as lost.
const PATIENCE: Duration = Duration::from_secs(30);
/// Rounds of the dialogue before the move, and after the session answered again.
const ROUNDS: usize = 30;
/// Pause between keystrokes.
const TYPING: Duration = Duration::from_millis(30);
const BULK: u64 = 1 << 20;

/// One round of the dialogue: a line of 1 to 64 pattern bytes out, the same back. Returns how
/// long the answer took.
fn round(stream: &mut TcpStream, n: u64) -> Duration {
    let mut line = vec![0u8; 1 + (n % 64) as usize];
    Pattern::new(n).fill(&mut line);
    let started = Instant::now();
    stream.write_all(&line).expect("the session takes a line");
    let mut back = vec![0u8; line.len()];
    stream
        .read_exact(&mut back)
        .unwrap_or_else(|e| panic!("round {n}: the session did not answer: {e}"));
    assert_eq!(back, line, "round {n}: the echo differs");
    started.elapsed()
}

/// 1 MiB out and back at once on the same session, verified.
fn bulk(stream: &TcpStream) {
    let mut writer = stream.try_clone().unwrap();
    let sending = std::thread::spawn(move || send_pattern(&mut writer, BULK, 77).unwrap());
    let mut reader = stream.try_clone().unwrap();
    let mut back = vec![0u8; BULK as usize];
    reader.read_exact(&mut back).expect("the 1 MiB comes back");
    assert_eq!(sending.join().unwrap(), pattern_sha(BULK, 77));
    let mut expected = vec![0u8; BULK as usize];
    Pattern::new(77).fill(&mut expected);
    assert!(back == expected, "the 1 MiB came back altered");
}

#[test]
fn an_open_session_survives_the_connecting_homes_address_change() {
    let mut homes = TwoHomes::new(LabSpec::homes([Nat::Cone, Nat::Cone]));
    let service = service_in(&homes.lab, homes.sharing_home(), |_| Behaviour::Echo);
    let share_log = Log::new("roaming-share");
    let connect_log = Log::new("roaming-connect");
    let (_share, key) = homes.rust_share(service.port(), &share_log, &[]);
    let (_connect, listen) = homes.rust_connect(&key, &connect_log, &[]);
    let logs = [&share_log, &connect_log];

    let netns = homes.connecting_home().to_string();
    let mut stream = homes
        .lab
        .in_netns(&netns, move || TcpStream::connect(listen))
        .expect("enter the connecting home")
        .expect("connect to our connect");
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut n = 0u64;
    for _ in 0..ROUNDS {
        n += 1;
        round(&mut stream, n);
        std::thread::sleep(TYPING);
    }

    // Timed from the start of the renumbering: the old address goes first, then the NAT table.
    let moved = Instant::now();
    homes
        .lab
        .renumber(2, Ipv4Addr::new(198, 18, 102, 1))
        .unwrap_or_else(|e| panic!("cannot renumber the connecting home: {e}"));
    let renumbering = moved.elapsed();
    // The first line after the move waits for the session to re-attach: the figure is the time
    // from the move to its answer. Then keep typing.
    n += 1;
    round(&mut stream, n);
    let reattached = moved.elapsed();
    let mut longest = Duration::ZERO;
    for _ in 0..ROUNDS {
        std::thread::sleep(TYPING);
        n += 1;
        longest = longest.max(round(&mut stream, n));
    }
    bulk(&stream);
    for _ in 0..5 {
        n += 1;
        round(&mut stream, n);
    }
    eprintln!(
        "\n| event (cone x cone) | session re-attached after | longest line after | rounds | bulk |\n|---|---|---|---|---|\n| the connecting home gets a new public address | {} ms (renumbering {} ms of it) | {} ms | {n}, all verified | 1 MiB both ways, verified |",
        reattached.as_millis(),
        renumbering.as_millis(),
        longest.as_millis()
    );
    assert!(
        reattached <= REATTACH,
        "the session took {reattached:?} to answer after the move (at most {REATTACH:?})\n{}",
        dump(&logs)
    );
    assert!(
        connect_log
            .text()
            .contains("resumed the shared connection over a new path"),
        "the session went on, but not by a resume: did the path survive the move?\n{}",
        dump(&logs)
    );
    assert!(
        share_log
            .text()
            .contains("resumed a session over a new path"),
        "{}",
        dump(&logs)
    );
    if longest > Duration::from_secs(1) {
        // Not a failure (every byte came back), but worth reading why.
        eprintln!(
            "a line after the re-attach took {longest:?}:\n{}",
            dump(&logs)
        );
    }
    // How the connect found out and how long the resume itself took.
    for line in connect_log.text().lines().filter(|l| l.contains("resum")) {
        eprintln!("{line}");
    }
    eprintln!(
        "the dialogue and the transfer ended {:?} after the move",
        moved.elapsed()
    );
}
