//! Entry points for the fuzz targets in `fuzz/` and for their property-test twins: one function
//! per decoder of input we do not control, each decoding arbitrary bytes the way the engine does
//! and checking what must then hold. A panic, in our code or in a decoder of `peeroxide-dht` we
//! call on network bytes, is a bug: such a panic takes down a share.
//!
//! Compiled only with the `fuzzing` feature (what `fuzz/` builds against) and in this crate's
//! tests, which drive the same functions on stable with mutations of the committed seed corpus
//! (`fuzz/corpus/<target>/`). [`seeds`] makes the valid encodings that corpus starts from.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::OnceLock;

use peeroxide_dht::hyperdht_messages::{
    decode_handshake_from_bytes, decode_holepunch_msg_from_bytes,
    decode_holepunch_payload_from_bytes, decode_hyper_peer_from_bytes,
    decode_noise_payload_from_bytes, encode_holepunch_msg_to_bytes,
    encode_holepunch_payload_to_bytes, encode_hyper_peer_to_bytes, encode_noise_payload_to_bytes,
    HolepunchInfo, HolepunchMessage, HolepunchPayload, HyperPeer, RelayInfo, RelayThroughInfo,
    MODE_FROM_CLIENT, MODE_FROM_SERVER, MODE_REPLY,
};
use peeroxide_dht::messages::{
    decode_message, encode_request_to_bytes, encode_response_to_bytes, Ipv4Peer, Message, Request,
    Response,
};
use peeroxide_dht::noise::{keypair_from_seed, Keypair};
use peeroxide_dht::noise_wrap::NoiseWrap;
use peeroxide_dht::protomux::{encode_close, encode_open, encode_reject};
use peeroxide_dht::secure_payload::SecurePayload;
use udx::wire::{self, Header, HEADER_SIZE};

use crate::addr::to_socket_addr;
use crate::connection_string::ConnectionString;
use crate::handshake::{check_remote, our_payload};
use crate::identity::{Identity, KeyPair, PublicKey, ShareKeyRule};
use crate::mux::proto::{self as mux, Event, Limits, Role, Session};
use crate::nat::{Firewall, NatSampler};
use crate::noise_session;
use crate::policy::dial_address;
use crate::relay::wire as relay_wire;
use crate::service_record::ServiceRecord;
use crate::udp::frame as udp_frame;

/// A fuzz target: the name of its corpus directory and of its `fuzz/fuzz_targets/` file.
pub type Target = (&'static str, fn(&[u8]));

/// Every target, for the property tests and for writing the seed corpus.
pub const TARGETS: &[Target] = &[
    ("udx_packet", udx_packet),
    ("relay_frame", relay_frame),
    ("dht_message", dht_message),
    ("handshake", handshake),
    ("noise_payload", noise_payload),
    ("holepunch_message", holepunch_message),
    ("holepunch_payload", holepunch_payload),
    ("peer_record", peer_record),
    ("nat_samples", nat_samples),
    ("public_key", public_key),
    ("identity_file", identity_file),
    ("udp_frames", udp_frames),
    ("connection_string", connection_string),
    ("service_record", service_record),
    ("mux_frames", mux_frames),
];

/// A UDX datagram as the socket reads it: header, then SACK blocks and payload.
pub fn udx_packet(data: &[u8]) {
    let Some(header) = Header::decode(data) else {
        assert!(data.len() < HEADER_SIZE || data[..2] != [wire::MAGIC, wire::VERSION]);
        return;
    };
    let mut again = [0u8; HEADER_SIZE];
    header.encode(&mut again);
    assert_eq!(again[..], data[..HEADER_SIZE], "header does not re-encode");

    let body = &data[HEADER_SIZE..];
    match wire::split_body(&header, body) {
        None => assert!(usize::from(header.data_offset) > body.len()),
        Some((sacks, payload)) => {
            assert!(body.ends_with(payload));
            assert_eq!(payload.len(), body.len() - usize::from(header.data_offset));
            // SACK blocks cost what the packet carries, never more.
            let blocks = sacks.count();
            assert!(blocks <= body.len() / 8);
            if header.flags & wire::FLAG_SACK == 0 {
                assert_eq!(blocks, 0);
            }
        }
    }

    // Sequence numbers are read relative to what we expect; any 32-bit value maps within
    // ±2^31 of it and keeps its low bits (unless it would fall below zero).
    let reference = u64::from(header.recv_window) << 16 | u64::from(header.seq);
    for number in [header.seq, header.ack] {
        let unwrapped = wire::unwrap_seq(reference, number);
        assert!(unwrapped.abs_diff(reference) <= 1 << 31);
        if unwrapped != 0 {
            assert_eq!(unwrapped as u32, number);
        }
    }
}

/// The multiplexing frames a peer sends on one connection (what a share reads from anyone who
/// offered multiplexing): `[flags u8][length u8][frame]...` (flags: bit 0 we connect, bit 1
/// PING agreed), a length of 0 standing for our side taking up to 16 KiB of what the last
/// stream that got data holds. Whatever the sequence, no stream holds more than the window we
/// granted, no more streams are open than the limit, and nothing panics.
pub fn mux_frames(data: &[u8]) {
    const LIMITS: Limits = Limits {
        max_streams: 4,
        window: 64 * 1024,
        max_window: 256 * 1024,
        growth_budget: 384 * 1024,
        cold_window: 128 * 1024,
    };
    let role = if data.first().is_some_and(|b| b & 1 == 1) {
        Role::Client
    } else {
        Role::Server
    };
    // Bit 1 of the first byte: both sides agreed on PING frames.
    let pinging = data.first().is_some_and(|b| b & 2 == 2);
    let mut session = Session::new(role, LIMITS).pinging(pinging);
    // Per stream, bytes received and not yet taken, and the peer's credit (what we granted and
    // it did not use yet), as we count them.
    let mut held: std::collections::HashMap<u32, (u64, u64)> = std::collections::HashMap::new();
    let credit = || (0, u64::from(LIMITS.window));
    let mut last = None;
    let mut rest = data.get(1..).unwrap_or_default();
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len).min(tail.len());
        let (message, tail) = tail.split_at(len);
        rest = tail;
        if len == 0 {
            if let Some(id) = last {
                let (untaken, credit) = held.entry(id).or_insert_with(credit);
                let n = (*untaken).min(16 * 1024);
                *untaken -= n;
                if let Some(grant) = session.taken(id, n as usize) {
                    *credit += u64::from(grant);
                }
            }
            continue;
        }
        let Ok(frame) = mux::decode(message) else {
            continue;
        };
        let Ok(event) = session.receive(frame) else {
            // A violation ends the connection: what follows is never read.
            return;
        };
        match event {
            Event::Data(id, bytes) => {
                let (untaken, credit) = held.entry(id).or_insert_with(credit);
                *untaken += bytes.len() as u64;
                *credit = credit
                    .checked_sub(bytes.len() as u64)
                    .unwrap_or_else(|| panic!("stream {id} was sent more than we granted"));
                assert!(
                    *untaken + *credit <= u64::from(LIMITS.max_window),
                    "stream {id} may hold more than the largest window"
                );
                last = Some(id);
            }
            Event::Opened(_) => assert_eq!(role, Role::Server),
            Event::Reset(id) => {
                held.remove(&id);
            }
            _ => {}
        }
        assert!(session.open_streams() <= LIMITS.max_streams);
        let total: u64 = held
            .values()
            .map(|(untaken, credit)| untaken + credit)
            .sum();
        assert!(
            total <= LIMITS.max_streams as u64 * u64::from(LIMITS.window) + LIMITS.growth_budget,
            "the connection may hold {total} bytes, beyond its windows and growth budget"
        );
    }
}

/// A protomux frame on a relay connection (what a public relay reads from anyone).
pub fn relay_frame(data: &[u8]) {
    let Ok(items) = relay_wire::decode(data) else {
        return;
    };
    // Every item is read from at least one byte of the frame: a frame cannot make more work
    // than its size.
    assert!(items.len() <= data.len());
    for item in items {
        let again = match &item {
            relay_wire::Incoming::Open {
                remote_id,
                protocol,
                id,
            } => encode_open(*remote_id, protocol, id.as_deref(), None),
            relay_wire::Incoming::Reject { local_id } => encode_reject(*local_id),
            relay_wire::Incoming::Close { remote_id } => encode_close(*remote_id),
            relay_wire::Incoming::Pair { pair, .. } => {
                let again = relay_wire::decode(&relay_wire::pair(pair)).expect("pair re-decodes");
                assert!(
                    matches!(again[..], [relay_wire::Incoming::Pair { pair: p, .. }] if p == *pair)
                );
                continue;
            }
            relay_wire::Incoming::Unpair { token, .. } => {
                let again =
                    relay_wire::decode(&relay_wire::unpair(token)).expect("unpair re-decodes");
                assert!(
                    matches!(again[..], [relay_wire::Incoming::Unpair { token: t, .. }] if t == *token)
                );
                continue;
            }
        };
        assert_eq!(
            relay_wire::decode(&again).expect("control frame re-decodes"),
            vec![item]
        );
    }
}

/// The byte stream of a UDP flow (holesail's framing), as a UDP share or connect reads it from a
/// peer. The first byte says how the stream arrives: in messages of 1 to 256 bytes.
pub fn udp_frames(data: &[u8]) {
    let Some((&split, stream)) = data.split_first() else {
        return;
    };
    let mut decoder = udp_frame::Decoder::default();
    let mut decoded = Vec::new();
    'messages: for message in stream.chunks(usize::from(split) + 1) {
        let mut input = message;
        loop {
            match decoder.next_datagram(&mut input) {
                Ok(Some(datagram)) => {
                    assert!(datagram.len() <= udp_frame::MAX_DATAGRAM);
                    decoded.extend(udp_frame::encode(&datagram));
                }
                Ok(None) => break,
                Err(udp_frame::FrameError::TooLong { len }) => {
                    assert!(len > udp_frame::MAX_DATAGRAM as u64);
                    break 'messages;
                }
            }
        }
    }
    // The datagrams re-encode to the stream they came from, up to where decoding stopped.
    assert!(stream.starts_with(&decoded));
}

/// A DHT RPC datagram, as a punch socket reads it.
pub fn dht_message(data: &[u8]) {
    match decode_message(data) {
        Ok(Message::Response(res)) => {
            let _ = to_socket_addr(&res.to);
            res.closer_nodes.iter().for_each(|n| {
                let _ = to_socket_addr(n);
            });
        }
        Ok(Message::Request(req)) => {
            let _ = to_socket_addr(&req.to);
        }
        Err(_) => {}
    }
}

/// A PEER_HANDSHAKE message and the Noise message inside it, read by the share (responder) and
/// by connect (initiator, after sending its own).
pub fn handshake(data: &[u8]) {
    if let Ok(msg) = decode_handshake_from_bytes(data) {
        for peer in msg.peer_address.iter().chain(&msg.relay_address) {
            let _ = to_socket_addr(peer);
        }
        noise_message(&msg.noise);
    }
    noise_message(data);
}

/// A Noise IK message, read by both sides of a handshake.
fn noise_message(noise: &[u8]) {
    let keys = keys();
    let _ = NoiseWrap::new_responder(keys.server.clone()).recv(noise);
    let mut initiator = NoiseWrap::new_initiator(keys.client.clone(), keys.server.public_key);
    initiator.set_ephemeral(keys.client_ephemeral.clone());
    initiator
        .send(&our_payload(1, Vec::new(), Firewall::Unknown, None))
        .expect("our first handshake message encodes");
    let _ = initiator.recv(noise);
}

/// The payload inside the Noise handshake: what a peer says about how to reach it. Anyone who
/// knows a share's public key can make a share decrypt any payload.
pub fn noise_payload(data: &[u8]) {
    let ours = noise_session::decode(data);
    let Ok(payload) = decode_noise_payload_from_bytes(data) else {
        assert!(ours.is_err());
        return;
    };
    // Our extension never changes how the payload itself reads.
    assert_eq!(ours.map(|(p, _)| p).as_ref(), Ok(&payload));
    if let Ok(id) = check_remote(&payload) {
        assert_eq!(payload.udx.as_ref().map(|u| u.id), Some(u64::from(id)));
    }
    let _ = Firewall::from_wire(payload.firewall);
    let seen = SocketAddr::from(([203, 0, 113, 7], 49737));
    let our_public = Some(Ipv4Addr::new(198, 51, 100, 1));
    for our_local in [&[Ipv4Addr::new(192, 168, 1, 2)][..], &[Ipv4Addr::LOCALHOST]] {
        let dialled = dial_address(seen, &payload.addresses4, our_public, our_local);
        assert!(
            dialled == seen
                || payload
                    .addresses4
                    .iter()
                    .any(|a| to_socket_addr(a) == Some(dialled)),
            "dialled {dialled}, which the peer did not name"
        );
    }
    if let Some(holepunch) = &payload.holepunch {
        for relay in &holepunch.relays {
            let _ = to_socket_addr(&relay.relay_address);
            let _ = to_socket_addr(&relay.peer_address);
        }
    }
    for peer in payload.relay_addresses.iter().flatten() {
        let _ = to_socket_addr(peer);
    }
}

/// A PEER_HOLEPUNCH message relayed by a DHT node, and the decryption of its payload.
pub fn holepunch_message(data: &[u8]) {
    let secure = SecurePayload::with_local_secret(keys().holepunch_secret, [9; 32]);
    if let Ok(msg) = decode_holepunch_msg_from_bytes(data) {
        if let Some(peer) = &msg.peer_address {
            let _ = to_socket_addr(peer);
            let _ = secure.token(&peer.host);
        }
        let _ = secure.decrypt(&msg.payload);
    }
    let _ = secure.decrypt(data);
}

/// A decrypted holepunch round: what the other side says about its NAT and addresses.
pub fn holepunch_payload(data: &[u8]) {
    let Ok(payload) = decode_holepunch_payload_from_bytes(data) else {
        return;
    };
    let firewall = Firewall::from_wire(payload.firewall);
    if firewall != Firewall::Unknown {
        assert_eq!(firewall.wire(), payload.firewall);
    }
    for peer in payload
        .addresses
        .iter()
        .flatten()
        .chain(&payload.remote_address)
    {
        let _ = to_socket_addr(peer);
    }
}

/// A peer record from a DHT lookup (connect reads one per answering node).
pub fn peer_record(data: &[u8]) {
    if let Ok(record) = decode_hyper_peer_from_bytes(data) {
        for peer in &record.relay_addresses {
            let _ = to_socket_addr(peer);
        }
    }
}

/// NAT sampling: the addresses DHT nodes say they saw us at. Each 7 bytes are one reply: the
/// address seen (4 bytes host, 2 bytes port) and which node sent it; node 255 freezes the
/// verdict instead, as telling it to the other side does.
pub fn nat_samples(data: &[u8]) {
    let mut sampler = NatSampler::default();
    let mut nodes = std::collections::HashSet::new();
    let mut frozen: Option<(Firewall, Option<Vec<SocketAddr>>)> = None;
    let mut seen_all = Vec::new();
    for reply in data.chunks_exact(7) {
        if reply[6] == 255 {
            sampler.freeze();
            frozen.get_or_insert((sampler.firewall(), sampler.addresses()));
            continue;
        }
        let seen = SocketAddr::from((
            [reply[0], reply[1], reply[2], reply[3]],
            u16::from_be_bytes([reply[4], reply[5]]),
        ));
        let from = SocketAddr::from(([10, 0, 0, reply[6]], 49737));
        sampler.add(seen, from);
        if nodes.insert(from) {
            seen_all.push(seen);
        }

        assert_eq!(sampler.sampled(), nodes.len(), "each node counts once");
        let firewall = sampler.firewall();
        let addresses = sampler.addresses();
        if let Some((f, a)) = &frozen {
            assert_eq!((*f, a), (firewall, &addresses), "a frozen verdict changed");
        }
        if firewall == Firewall::Consistent {
            assert!(sampler.settled());
        }
        match (firewall, addresses) {
            (Firewall::Unknown | Firewall::Open, a) => assert_eq!(a, None),
            (Firewall::Random, a) => {
                let a = a.expect("a random NAT names its host");
                assert!(matches!(a[..], [one] if one.port() == 0
                    && seen_all.iter().any(|s| s.ip() == one.ip())));
            }
            (Firewall::Consistent, a) => {
                let a = a.expect("a consistent NAT names its addresses");
                assert!(!a.is_empty() && a.iter().all(|x| seen_all.contains(x)));
            }
        }
    }
}

/// A public key as a user types it (`connect --key`).
pub fn public_key(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match text.parse::<PublicKey>() {
        Ok(key) => {
            assert_eq!(key.to_string().parse::<PublicKey>(), Ok(key));
            assert_eq!(key.to_z32().parse::<PublicKey>(), Ok(key));
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

/// What a user pastes after `connect --key`: a key or a holesail `hs://` string.
pub fn connection_string(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match text.parse::<ConnectionString>() {
        Ok(string) => {
            assert_eq!(
                string.to_string().parse::<ConnectionString>(),
                Ok(string.clone())
            );
            if let Some(key_pair) = string.client_key_pair() {
                assert_eq!(key_pair.public_key(), string.remote());
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

/// A holesail service record as a DHT node returns it (its signature already checked: any
/// key holder can sign anything).
pub fn service_record(data: &[u8]) {
    match ServiceRecord::parse(data) {
        Ok(record) => {
            assert!(data.len() <= crate::service_record::MAX_RECORD_BYTES);
            assert_ne!(record.port, 0);
            assert_eq!(ServiceRecord::parse(&record.to_bytes()).ok(), Some(record));
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

/// An `identity.json` as a user may have edited or damaged it.
pub fn identity_file(data: &[u8]) {
    let path = std::env::temp_dir().join(format!(
        "p2p-socket-fuzz-identity-{}-{:?}.json",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(&path, data).expect("the fuzz identity file can be written");
    let loaded = Identity::load(&path);
    let _ = std::fs::remove_file(&path);
    match loaded {
        Ok(identity) => {
            let again = KeyPair::from_seed(identity.key_pair().seed());
            assert_eq!(again.public_key(), identity.public_key());
            let _ = identity.share_key_pair("localhost", 8080, ShareKeyRule::Npm);
            let _ = identity.checked_share_key_pair("localhost", 8080);
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

/// Fixed keys, so that a failing input reproduces (and no key is generated per input).
struct Keys {
    server: Keypair,
    client: Keypair,
    client_ephemeral: Keypair,
    holepunch_secret: [u8; 32],
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        server: keypair_from_seed(&[1; 32]),
        client: keypair_from_seed(&[2; 32]),
        client_ephemeral: keypair_from_seed(&[11; 32]),
        holepunch_secret: [3; 32],
    })
}

fn peer(host: &str, port: u16) -> Ipv4Peer {
    Ipv4Peer {
        host: host.into(),
        port,
    }
}

mod seeds;
pub use seeds::seeds;

#[cfg(test)]
mod tests;
