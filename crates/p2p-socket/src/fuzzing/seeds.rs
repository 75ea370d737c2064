//! The seed corpus: valid encodings of what each fuzz target reads, made by the encoders the
//! engine (or its peers) use, plus golden packets from Node.

use super::*;

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
        "udp_frames" => vec![
            [&[0u8][..], &udp_frame::encode(b"hello")].concat(),
            [
                &[2u8][..],
                &udp_frame::encode(b""),
                &udp_frame::encode(b"a"),
                &udp_frame::encode(&[7; 300]),
            ]
            .concat(),
            // One past the largest datagram.
            vec![255, 0, 1, 0, 0, 1, 2, 3],
        ],
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
        "connection_string" => {
            let key = KeyPair::from_seed([4; 32]).public_key();
            vec![
                format!("hs://0000{}", key.to_z32()).into_bytes(),
                format!("hs://s000{}", hex::encode([9u8; 32])).into_bytes(),
                key.to_string().into_bytes(),
            ]
        }
        "service_record" => vec![
            br#"{"host":"127.0.0.1","udp":false,"port":8080}"#.to_vec(),
            br#"{"host":"localhost","port":3000}"#.to_vec(),
            br#"{"host":"0.0.0.0","udp":true,"port":53}"#.to_vec(),
        ],
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
