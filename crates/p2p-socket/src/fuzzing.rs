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
use crate::handshake::{check_remote, our_payload};
use crate::identity::{Identity, KeyPair, PublicKey, ShareKeyRule};
use crate::mux::proto::{self as mux, Event, Limits, Role, Session};
use crate::nat::{Firewall, NatSampler};
use crate::noise_session;
use crate::policy::dial_address;
use crate::relay::wire as relay_wire;

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
/// offered multiplexing): `[length u8][frame]...`, a length of 0 standing for our side taking
/// up to 16 KiB of what the last stream that got data holds. Whatever the sequence, no stream holds more than
/// the window we granted, no more streams are open than the limit, and nothing panics.
pub fn mux_frames(data: &[u8]) {
    const LIMITS: Limits = Limits {
        max_streams: 4,
        window: 64 * 1024,
    };
    let role = if data.first().is_some_and(|b| b & 1 == 1) {
        Role::Client
    } else {
        Role::Server
    };
    let mut session = Session::new(role, LIMITS);
    // Per stream, bytes received and not yet taken, and not yet granted back, as we count them.
    let mut held: std::collections::HashMap<u32, (u64, u64)> = std::collections::HashMap::new();
    let mut last = None;
    let mut rest = data.get(1..).unwrap_or_default();
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len).min(tail.len());
        let (message, tail) = tail.split_at(len);
        rest = tail;
        if len == 0 {
            if let Some(id) = last {
                let (untaken, ungranted) = held.entry(id).or_default();
                let n = (*untaken).min(16 * 1024);
                *untaken -= n;
                if let Some(grant) = session.taken(id, n as usize) {
                    *ungranted -= u64::from(grant);
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
                let (untaken, ungranted) = held.entry(id).or_default();
                *untaken += bytes.len() as u64;
                *ungranted += bytes.len() as u64;
                assert!(
                    *ungranted <= u64::from(LIMITS.window),
                    "stream {id} was sent {ungranted} bytes beyond what we granted"
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

/// Valid encodings of what each target reads, made by the encoders the engine (or its peers)
/// use, plus golden packets from Node: the start of each target's corpus.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "udx_packet" => udx_seeds(),
        "relay_frame" => relay_seeds(),
        "mux_frames" => mux_seeds(),
        "dht_message" => dht_seeds(),
        "handshake" => handshake_seeds(),
        "noise_payload" => noise_payload_seeds(),
        "holepunch_message" => holepunch_message_seeds(),
        "holepunch_payload" => holepunch_payloads()
            .iter()
            .map(|p| encode_holepunch_payload_to_bytes(p).expect("seed encodes"))
            .collect(),
        "peer_record" => [0, 1, 3]
            .into_iter()
            .map(|relays| {
                encode_hyper_peer_to_bytes(&HyperPeer {
                    public_key: [5; 32],
                    relay_addresses: (0..relays).map(|i| peer("203.0.113.9", 1000 + i)).collect(),
                })
                .expect("seed encodes")
            })
            .collect(),
        "nat_samples" => vec![
            // A cone: one address from four nodes.
            [
                [198, 51, 100, 1, 0xc2, 0x49, 1],
                [198, 51, 100, 1, 0xc2, 0x49, 2],
            ]
            .iter()
            .chain(&[
                [198, 51, 100, 1, 0xc2, 0x49, 3],
                [198, 51, 100, 1, 0xc2, 0x49, 4],
            ])
            .flatten()
            .copied()
            .collect(),
            // Symmetric: a new port per node, then frozen.
            (1..=4u8)
                .flat_map(|n| [198, 51, 100, 1, 0xc2, n, n])
                .chain([0, 0, 0, 0, 0, 0, 255])
                .collect(),
        ],
        "public_key" => {
            let key = KeyPair::from_seed([4; 32]).public_key();
            vec![
                key.to_string().into_bytes(),
                key.to_z32().into_bytes(),
                format!("  {}\n", key.to_string().to_uppercase()).into_bytes(),
            ]
        }
        "identity_file" => {
            let key_pair = KeyPair::from_seed([4; 32]);
            let secret: Vec<u8> = key_pair
                .seed()
                .into_iter()
                .chain(*key_pair.public_key().as_bytes())
                .collect();
            vec![format!(
                "{{\n  \"keyPair\": {{\n    \"publicKey\": \"{}\",\n    \"secretKey\": \"{}\"\n  }}\n}}",
                key_pair.public_key(),
                hex::encode(secret)
            )
            .into_bytes()]
        }
        _ => panic!("no fuzz target named {target}"),
    }
}

fn udx_seeds() -> Vec<Vec<u8>> {
    let mut seeds = vec![
        // libudx's own DATA "hello" and END packets.
        hex::decode("ff0101002a00000000004000000000000000000068656c6c6f").expect("hex"),
        hex::decode("ff0102002a000000000040000100000000000000").expect("hex"),
    ];
    let header = |flags, data_offset| Header {
        flags,
        data_offset,
        stream_id: 7,
        recv_window: 4 << 20,
        seq: 0xffff_fff0,
        ack: 3,
    };
    let mut sack = Vec::new();
    header(wire::FLAG_SACK, 0).write_to(&mut sack);
    for (start, end) in [(5u32, 7u32), (9, 10), (12, 40)] {
        sack.extend_from_slice(&start.to_le_bytes());
        sack.extend_from_slice(&end.to_le_bytes());
    }
    seeds.push(sack);
    let mut probe = Vec::new();
    header(wire::FLAG_DATA, 4).write_to(&mut probe);
    probe.extend_from_slice(&[0, 0, 0, 0, b'x']);
    seeds.push(probe);
    for flags in [wire::FLAG_DESTROY, wire::FLAG_HEARTBEAT, wire::FLAG_MESSAGE] {
        let mut packet = Vec::new();
        header(flags, 0).write_to(&mut packet);
        seeds.push(packet);
    }
    seeds
}

/// A share's view of a client: streams opened, data, ends, window updates, a refusal at the
/// limit; and a client's view of a share's answers.
fn mux_seeds() -> Vec<Vec<u8>> {
    let script = |role: u8, frames: &[Vec<u8>]| {
        let mut out = vec![role];
        for f in frames {
            out.push(f.len().min(255) as u8);
            out.extend_from_slice(&f[..f.len().min(255)]);
        }
        out
    };
    vec![
        script(
            0,
            &[
                mux::open(1),
                mux::data(1, b"GET / HTTP/1.1\r\n\r\n"),
                Vec::new(),
                mux::window(1, 4096),
                mux::fin(1),
                mux::open(2),
                mux::reset(2),
                mux::close("bye"),
            ],
        ),
        script(0, &(1..=6).map(mux::open).collect::<Vec<_>>()),
        script(
            1,
            &[mux::window(1, 1), mux::data(1, &[7; 200]), mux::fin(1)],
        ),
    ]
}

fn relay_seeds() -> Vec<Vec<u8>> {
    let pair = relay_wire::Pair {
        is_initiator: true,
        token: [1; 32],
        id: 300,
        seq: 0,
    };
    let mut batch = vec![0, 0, 1];
    for message in [relay_wire::pair(&pair), relay_wire::unpair(&[2; 32])] {
        let body = &message[1..]; // without the channel id
        batch.push(u8::try_from(body.len()).expect("short message"));
        batch.extend_from_slice(body);
    }
    batch.extend_from_slice(&[0, 3, 1, 9]);
    vec![
        relay_wire::open(&[9; 32]),
        relay_wire::close(),
        relay_wire::reject(5),
        relay_wire::pair(&pair),
        relay_wire::unpair(&[2; 32]),
        batch,
    ]
}

fn dht_seeds() -> Vec<Vec<u8>> {
    let request = Request {
        tid: 17,
        to: peer("198.51.100.1", 49737),
        id: Some([6; 32]),
        token: Some([7; 32]),
        internal: false,
        command: 0,
        target: Some([8; 32]),
        value: Some(vec![1, 2, 3]),
    };
    let ping = Request {
        internal: true,
        id: None,
        token: None,
        target: None,
        value: None,
        ..request.clone()
    };
    let response = Response {
        tid: 17,
        to: peer("203.0.113.7", 4000),
        id: Some([6; 32]),
        token: Some([7; 32]),
        closer_nodes: vec![peer("192.0.2.1", 1), peer("192.0.2.2", 2)],
        error: 0,
        value: Some(vec![4; 40]),
    };
    vec![
        encode_request_to_bytes(&request).expect("seed encodes"),
        encode_request_to_bytes(&ping).expect("seed encodes"),
        encode_response_to_bytes(&response).expect("seed encodes"),
    ]
}

fn handshake_seeds() -> Vec<Vec<u8>> {
    let keys = keys();
    // Fixed ephemeral keys: the corpus is the same on every run.
    let mut initiator = NoiseWrap::new_initiator(keys.client.clone(), keys.server.public_key);
    initiator.set_ephemeral(keys.client_ephemeral.clone());
    let noise = initiator
        .send(&our_payload(
            9,
            vec![peer("192.168.1.5", 4000)],
            Firewall::Consistent,
            None,
        ))
        .expect("seed encodes");
    let mut responder = NoiseWrap::new_responder(keys.server.clone());
    responder.set_ephemeral(keypair_from_seed(&[12; 32]));
    responder.recv(&noise).expect("our own handshake decrypts");
    let answer = responder
        .send(&our_payload(10, Vec::new(), Firewall::Open, None))
        .expect("seed encodes");
    vec![
        crate::handshake::message(MODE_FROM_CLIENT, noise.clone(), None),
        crate::handshake::message(MODE_REPLY, answer, Some(peer("203.0.113.7", 4000))),
        noise,
    ]
}

fn noise_payload_seeds() -> Vec<Vec<u8>> {
    let holepunch = HolepunchInfo {
        id: 3,
        relays: vec![RelayInfo {
            relay_address: peer("192.0.2.1", 49737),
            peer_address: peer("203.0.113.7", 4000),
        }],
    };
    let mut relayed = our_payload(11, Vec::new(), Firewall::Random, None);
    relayed.relay_through = Some(RelayThroughInfo {
        version: 1,
        public_key: [5; 32],
        token: [6; 32],
    });
    relayed.relay_addresses = Some(vec![peer("192.0.2.3", 5)]);
    [
        our_payload(
            9,
            vec![peer("192.168.1.5", 4000), peer("203.0.113.7", 4000)],
            Firewall::Consistent,
            Some(holepunch),
        ),
        relayed,
    ]
    .iter()
    .map(|p| encode_noise_payload_to_bytes(p).expect("seed encodes"))
    .collect()
}

fn holepunch_payloads() -> Vec<HolepunchPayload> {
    vec![
        HolepunchPayload {
            error: 0,
            firewall: Firewall::Consistent.wire(),
            round: 0,
            connected: false,
            punching: false,
            addresses: Some(vec![peer("198.51.100.1", 4000)]),
            remote_address: Some(peer("203.0.113.7", 4000)),
            token: Some([7; 32]),
            remote_token: None,
        },
        HolepunchPayload {
            error: 0,
            firewall: Firewall::Random.wire(),
            round: 1,
            connected: false,
            punching: true,
            addresses: Some(vec![peer("198.51.100.1", 0)]),
            remote_address: None,
            token: Some([7; 32]),
            remote_token: Some([8; 32]),
        },
    ]
}

fn holepunch_message_seeds() -> Vec<Vec<u8>> {
    let secure = SecurePayload::with_local_secret(keys().holepunch_secret, [9; 32]);
    holepunch_payloads()
        .iter()
        .zip([MODE_FROM_CLIENT, MODE_FROM_SERVER])
        .map(|(payload, mode)| {
            encode_holepunch_msg_to_bytes(&HolepunchMessage {
                mode,
                id: 3,
                payload: secure
                    .encrypt_with_nonce(payload, [13; 24])
                    .expect("seed encrypts"),
                peer_address: Some(peer("203.0.113.7", 4000)),
            })
            .expect("seed encodes")
        })
        .collect()
}

#[cfg(test)]
mod tests;
