//! `--json`: the events of a real share and connect (real processes, a local DHT on loopback)
//! parse, carry the schema's version, and agree with each other and with the bytes that moved.

use test_support as support;

use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;
use support::cli::{event, ConnectProcess, LocalDht, ShareProcess};
use support::net::{exchange, pattern_sha, Behaviour, Service};
use support::process::ChildProcess;

const T: Duration = Duration::from_secs(60);
const KIB: u64 = 1024;

/// The next `--json` event `name` on `process`'s stdout, checked against the schema's basics.
fn next_event(process: &mut ChildProcess, name: &str) -> Value {
    let value = process.wait_for(T, |line| event(line, name));
    assert_eq!(value["version"], 1, "{value}");
    value
}

fn u64_of(value: &Value, field: &str) -> u64 {
    value[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} is not a number in {value}"))
}

#[test]
fn share_and_connect_events_agree_with_the_bytes_moved() {
    let dht = LocalDht::start(5);
    // Connection n (from 0) gets (n + 1) * 100 KiB from the service.
    let service = Service::start_seq(|n| Behaviour::Exchange {
        send: (n + 1) * 100 * KIB,
        seed: n,
    });
    let mut share = ShareProcess::start(&dht.bootstrap, service.port(), &[]);
    let mut connect = ConnectProcess::start(&dht.bootstrap, &share.key);

    for n in 0..2u64 {
        let from_service = (n + 1) * 100 * KIB;
        let to_service = (n + 1) * 30 * KIB + 7;
        let stream = TcpStream::connect(connect.addr).unwrap();
        let client = exchange(stream, to_service, 50 + n).unwrap();
        assert_eq!(client.received_sha, pattern_sha(from_service, n));
        let server = service.next_tally(T);
        assert_eq!(server.received_sha, client.sent_sha);

        // The connect opened connection n + 1 to the share's key, and counted both ways.
        let opened = next_event(&mut connect.process, "connection_opened");
        assert_eq!(u64_of(&opened, "id"), n + 1);
        assert_eq!(opened["key"], share.key.as_str());
        let path = opened["path"].as_str().unwrap();
        assert!(["direct", "punched", "relayed"].contains(&path), "{opened}");
        assert!(opened["peer"].is_string(), "{opened}");
        let closed = next_event(&mut connect.process, "connection_closed");
        assert_eq!(closed["id"], opened["id"]);
        assert_eq!(u64_of(&closed, "bytes_out"), to_service, "{closed}");
        assert_eq!(u64_of(&closed, "bytes_in"), from_service, "{closed}");
        assert!(closed["error"].is_null(), "{closed}");

        // The share saw the same connection from its side: in and out swapped.
        let opened = next_event(&mut share.process, "connection_opened");
        assert_eq!(opened["path"], path);
        assert_eq!(opened["key"].as_str().map(str::len), Some(64));
        let closed = next_event(&mut share.process, "connection_closed");
        assert_eq!(closed["id"], opened["id"]);
        assert_eq!(u64_of(&closed, "bytes_in"), to_service, "{closed}");
        assert_eq!(u64_of(&closed, "bytes_out"), from_service, "{closed}");
    }
    share.terminate_and_expect_clean_exit();
}

/// Every line a JSON run prints on stdout is a JSON object with an event and the version:
/// no human text mixed in for a program to trip over.
#[test]
fn stdout_holds_only_json_lines() {
    let dht = LocalDht::start(3);
    let service = Service::start(Behaviour::Echo);
    let mut share = ShareProcess::start(&dht.bootstrap, service.port(), &[]);
    let mut connect = ConnectProcess::start(&dht.bootstrap, &share.key);
    let stream = TcpStream::connect(connect.addr).unwrap();
    exchange(stream, 10 * KIB, 1).unwrap();
    for process in [&mut share.process, &mut connect.process] {
        // Every line up to the close, checked as it goes by.
        process.wait_for(T, |line| {
            let value: Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
            assert!(value["event"].is_string(), "{line}");
            assert_eq!(value["version"], 1, "{line}");
            (value["event"] == "connection_closed").then_some(())
        });
    }
}

/// A connect whose sharer is gone says so per connection, and keeps listening.
#[test]
fn a_connection_that_cannot_reach_the_sharer_is_an_event() {
    let dht = LocalDht::start(3);
    let service = Service::start(Behaviour::Echo);
    let mut share = ShareProcess::start(&dht.bootstrap, service.port(), &[]);
    let mut connect = ConnectProcess::start(&dht.bootstrap, &share.key);
    share.terminate_and_expect_clean_exit();
    let mut stream = TcpStream::connect(connect.addr).unwrap();
    stream.set_read_timeout(Some(T)).unwrap();
    let failed = next_event(&mut connect.process, "connection_failed");
    assert_eq!(failed["id"], 1);
    assert!(failed["reason"].as_str().is_some_and(|r| !r.is_empty()));
    assert!(connect.process.is_running());
    // The local connection was closed, not left hanging.
    let mut buf = [0u8; 1];
    assert_eq!(std::io::Read::read(&mut stream, &mut buf).unwrap_or(0), 0);
}
