//! Relay to direct (docs/relay.md, "Relay to direct"), in the NAT lab (crates/netlab): a Node
//! hyperdht client behind a randomising NAT names a blind relay (`relayThrough`) to reach a
//! Rust share behind a cone NAT. hyperdht pairs at the relay and punches at the same time; the
//! relay carries the connection within milliseconds, the punch opens some hundred
//! milliseconds later, and the client then moves its stream to the punched path. The share
//! must follow, with every byte of the transfers verified at both ends.
//!
//! Needs root (the lab builds network namespaces) and Node (`npm ci` in interop/node); without
//! either the test fails saying so.

use test_support as support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use netlab::{LabSpec, Nat};
use support::lab::{dump, json_field, node_in, service_in, Log, TwoHomes};
use support::net::{assert_exchanged, exchange_timed, Behaviour, Pattern};

const MIB: u64 = 1024 * 1024;
const VOLUME: u64 = 10 * MIB;
/// Longest a service may wait for the end of a connection's transfer.
const TRANSFER: Duration = Duration::from_secs(120);
/// How long the interactive session lasts: well past the punch (a few hundred milliseconds
/// through a randomising NAT), so that it moves while in use.
const SESSION: Duration = Duration::from_secs(4);
const CHUNK: usize = 16 * 1024;
/// hyperdht pairs at the relay and punches at once, and now and then (about 1 run in 30 here)
/// the punch wins: the session starts on the punched path and there is nothing to move. Then
/// another session, up to this many; the service echoes on this many connections.
const ATTEMPTS: u64 = 3;

/// An ssh-like session through the tunnel to an echo service: a chunk of pattern bytes out,
/// the same chunk back (checked) every few milliseconds for [`SESSION`]. Returns the bytes
/// echoed and the time to the first echo.
fn echo_session(mut stream: TcpStream) -> (u64, Duration) {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut pattern = Pattern::new(77);
    let (mut out, mut back) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let started = Instant::now();
    let mut first_echo = None;
    let mut echoed = 0u64;
    while started.elapsed() < SESSION {
        pattern.fill(&mut out);
        stream.write_all(&out).expect("write to the tunnel");
        stream.read_exact(&mut back).unwrap_or_else(|e| {
            panic!("the echo stopped after {echoed} bytes: {e}");
        });
        assert!(out == back, "the echo differs after {echoed} bytes");
        first_echo.get_or_insert(started.elapsed());
        echoed += CHUNK as u64;
        std::thread::sleep(Duration::from_millis(10));
    }
    stream.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).expect("the end of the echo");
    assert!(rest.is_empty(), "bytes after the end: {}", rest.len());
    (echoed, first_echo.expect("at least one echo"))
}

/// One byte out and back: an echo connection the test no longer needs, used up so that the
/// bulk transfer gets the service's next connection.
fn echo_once(mut stream: TcpStream) {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(b"x").expect("write to the tunnel");
    let mut back = [0u8; 1];
    stream.read_exact(&mut back).expect("the echo of one byte");
    stream.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).expect("the end of the echo");
}

#[test]
fn a_node_client_that_names_a_relay_is_followed_to_the_punched_path() {
    let homes = TwoHomes::new(LabSpec::homes([Nat::Cone, Nat::Symmetric]));
    // First an interactive session (it must move while in use), then a bulk transfer.
    let service = service_in(&homes.lab, homes.sharing_home(), |n| {
        if n < ATTEMPTS {
            Behaviour::Echo
        } else {
            Behaviour::ExchangeEndingLast {
                send: VOLUME,
                seed: 20 + n,
            }
        }
    });
    let relay_log = Log::new("upgrade-relay");
    let share_log = Log::new("upgrade-share");
    let (_relay, relay) = homes.relay(&relay_log);
    // Only the client names the relay, as a hyperdht client with `relayThrough` does.
    let (_share, key) = homes.rust_share(service.port(), &share_log, &["-v"]);
    let args = [
        "--bootstrap",
        &homes.bootstrap,
        "--key",
        &key,
        "--port",
        "0",
        "--host",
        "0.0.0.0",
        "--relay",
        &relay,
    ];
    let mut client = node_in(&homes.lab, homes.connecting_home(), "client.js", &args);
    let port = json_field(&mut client, "port")
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .expect("the Node client's port");
    let listen = SocketAddr::from(([127, 0, 0, 1], port));
    let logs = [&share_log, &relay_log];

    let dial = || {
        homes
            .lab
            .in_netns(homes.connecting_home(), move || TcpStream::connect(listen))
            .expect("enter the connecting home")
            .expect("dial the Node client")
    };
    // The session that started on the relay, by the share's number for it.
    let mut relayed = None;
    for attempt in 1..=ATTEMPTS {
        if relayed.is_some() {
            echo_once(dial());
            service.next_tally(TRANSFER);
            continue;
        }
        let (echoed, first_echo) = echo_session(dial());
        service.next_tally(TRANSFER);
        eprintln!(
            "session {attempt}: first echo after {first_echo:?}, {echoed} bytes echoed and verified over {SESSION:?}"
        );
        let started = share_log.line("peer connected", attempt);
        if started.is_some_and(|l| l.contains("path=relayed")) {
            relayed = Some(attempt);
        }
    }
    let relayed = relayed.unwrap_or_else(|| {
        panic!(
            "none of {ATTEMPTS} sessions started on the relay, so there was nothing to move:\n{}",
            dump(&logs)
        )
    });
    let (tally, first_byte) = exchange_timed(dial(), VOLUME, 11)
        .unwrap_or_else(|e| panic!("the transfer failed: {e}\n{}", dump(&logs)));
    let server = service.next_tally(TRANSFER);
    assert_exchanged(
        &tally,
        &server,
        VOLUME,
        20 + ATTEMPTS,
        "the bulk connection",
    );
    eprintln!("bulk: first byte after {first_byte:?}, 10 MiB each way verified");

    let share = share_log.text();
    let relay_text = relay_log.text();
    assert!(
        relay_text.contains("relaying a pair of peers"),
        "the relay never carried the connection, so there was nothing to move:\n{}",
        dump(&logs)
    );
    let moved: Vec<&str> = share
        .lines()
        .filter(|l| {
            l.contains("connection moved from the relay to the direct path")
                || l.contains("peer connecting")
        })
        .collect();
    assert!(
        share_log
            .line("connection moved from the relay", relayed)
            .is_some(),
        "the share did not follow the client to the punched path:\n{}",
        dump(&logs)
    );
    for line in moved {
        eprintln!("{line}");
    }
}
