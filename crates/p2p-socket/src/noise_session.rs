//! The Noise IK handshake of a connection (hyperdht's `noise-wrap.js`), carrying our own
//! extension after hyperdht's payload: how two p2p-socket peers recognise each other before the
//! first data byte, without a Node peer noticing.
//!
//! Node's decoder (`messages.js` `noisePayload`, hyperdht 6.34) reads the fields its flags
//! announce and never looks at what follows, and so does peeroxide-dht's. We append, after those
//! fields, the magic [`MAGIC`], a version and a feature bitfield (docs/multiplexing.md). A
//! feature is on for a connection only when both halves of the handshake named it, so a peer
//! that does not send the extension (Node, hypertele, holesail, an older p2p-socket) gets a
//! connection exactly as before.

use blake2::digest::consts::U32;
use blake2::digest::{KeyInit, Mac};
use blake2::Blake2bMac;
use peeroxide_dht::crypto::{NS_PEER_HANDSHAKE, NS_PEER_HOLEPUNCH};
use peeroxide_dht::hyperdht_messages::{
    decode_noise_payload, encode_noise_payload_to_bytes, NoisePayload,
};
use peeroxide_dht::noise::{HandshakeIK, Keypair};
use peeroxide_dht::State;

/// Marks our extension after hyperdht's payload: "p2ps".
pub(crate) const MAGIC: [u8; 4] = *b"p2ps";
/// The extension's layout version; a peer's extension of another version is ignored.
const EXTENSION_VERSION: u8 = 1;
/// Bit of the feature field: the connection carries many streams (crate::mux).
const FEATURE_MUX: u8 = 1;
/// Bit of the feature field: the multiplexed connection answers PING frames (docs/multiplexing.md,
/// "Liveness"). A peer that did not name it (an older p2p-socket) takes a PING for a violation.
const FEATURE_PING: u8 = 2;
/// Bit of the feature field: the connection's session may later be resumed over another path
/// (crate::roaming, docs/roaming.md).
const FEATURE_ROAM: u8 = 4;
/// Bit of the feature field: this connection resumes an earlier session instead of starting
/// one; its first message is the resume request (crate::roaming).
const FEATURE_RESUME: u8 = 8;

/// What a side offers in its half of the handshake, and after both halves, what the
/// connection does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Features {
    /// Streams of many local connections on one encrypted connection ([`crate::mux`]).
    pub(crate) mux: bool,
    /// PING and PONG frames on a multiplexed connection, to tell a live peer from a dead path.
    pub(crate) ping: bool,
    /// The session survives a move of the connecting side ([`crate::roaming`]).
    pub(crate) roam: bool,
    /// The connection carries a resume request for an earlier session, not a session.
    pub(crate) resume: bool,
}

impl Features {
    /// Multiplexing with every extension of it we know: what our connect and share offer.
    pub(crate) const MUX: Features = Features {
        mux: true,
        ping: true,
        roam: true,
        resume: false,
    };

    fn bits(self) -> u8 {
        [
            (self.mux, FEATURE_MUX),
            (self.ping, FEATURE_PING),
            (self.roam, FEATURE_ROAM),
            (self.resume, FEATURE_RESUME),
        ]
        .into_iter()
        .filter(|(on, _)| *on)
        .fold(0, |bits, (_, bit)| bits | bit)
    }

    fn from_bits(bits: u8) -> Features {
        Features {
            mux: bits & FEATURE_MUX != 0,
            ping: bits & FEATURE_PING != 0,
            roam: bits & FEATURE_ROAM != 0,
            resume: bits & FEATURE_RESUME != 0,
        }
    }

    fn both(self, other: Features) -> Features {
        Features {
            mux: self.mux && other.mux,
            ping: self.ping && other.ping,
            roam: self.roam && other.roam,
            resume: self.resume && other.resume,
        }
    }
}

/// Our extension's bytes for `features`, or none when nothing is offered (a plain hyperdht
/// payload, byte for byte).
pub(crate) fn extension(features: Features) -> Vec<u8> {
    if features == Features::default() {
        return Vec::new();
    }
    let mut out = MAGIC.to_vec();
    // Both fit one byte of compact-encoding's uint (values below 0xfd are the byte itself).
    out.push(EXTENSION_VERSION);
    out.push(features.bits());
    out
}

/// The payload and what the peer's extension offers; anything after the payload that is not an
/// extension we know offers nothing.
pub(crate) fn decode(plaintext: &[u8]) -> Result<(NoisePayload, Features), String> {
    let mut state = State::from_buffer(plaintext);
    let payload = decode_noise_payload(&mut state).map_err(|e| e.to_string())?;
    let rest = plaintext.get(state.start..).unwrap_or_default();
    let features = match rest {
        [m0, m1, m2, m3, EXTENSION_VERSION, bits, ..] if [*m0, *m1, *m2, *m3] == MAGIC => {
            Features::from_bits(*bits)
        }
        _ => Features::default(),
    };
    Ok((payload, features))
}

/// Session keys and what both sides agreed on.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    /// The peer's static key, proven by the handshake.
    pub(crate) remote_public_key: [u8; 32],
    /// Keys the hole punch's messages (hyperdht's `holepunchSecret`).
    pub(crate) holepunch_secret: [u8; 32],
    pub(crate) handshake_hash: [u8; 64],
    pub(crate) tx: [u8; 32],
    pub(crate) rx: [u8; 32],
    /// What the connection does beyond carrying one stream of bytes.
    pub(crate) features: Features,
}

/// One side of the Noise IK handshake with our extension.
pub(crate) struct Noise {
    ik: HandshakeIK,
    ours: Features,
    theirs: Features,
}

impl Noise {
    pub(crate) fn initiator(key_pair: Keypair, remote: [u8; 32], ours: Features) -> Noise {
        Noise {
            ik: HandshakeIK::new_initiator(key_pair, remote, &*NS_PEER_HANDSHAKE),
            ours,
            theirs: Features::default(),
        }
    }

    /// A responder offering `ours`; it answers with the features the initiator offered too, so
    /// its half says what the connection will do.
    pub(crate) fn responder(key_pair: Keypair, ours: Features) -> Noise {
        Noise {
            ik: HandshakeIK::new_responder(key_pair, &*NS_PEER_HANDSHAKE),
            ours,
            theirs: Features::default(),
        }
    }

    /// Our next handshake message carrying `payload` and our extension.
    pub(crate) fn send(&mut self, payload: &NoisePayload) -> Result<Vec<u8>, String> {
        let mut plaintext = encode_noise_payload_to_bytes(payload).map_err(|e| e.to_string())?;
        plaintext.extend(extension(self.ours));
        self.ik.send(&plaintext).map_err(|e| e.to_string())
    }

    /// Reads the peer's handshake message.
    pub(crate) fn recv(&mut self, message: &[u8]) -> Result<NoisePayload, String> {
        let plaintext = self.ik.recv(message).map_err(|e| e.to_string())?;
        let (payload, theirs) = decode(&plaintext)?;
        self.theirs = theirs;
        Ok(payload)
    }

    /// Once both messages went: the session's keys.
    pub(crate) fn finalize(self) -> Result<Keys, String> {
        let done = self
            .ik
            .result()
            .ok_or_else(|| "the handshake is not complete".to_string())?;
        Ok(Keys {
            remote_public_key: done.remote_public_key,
            holepunch_secret: holepunch_secret(&done.handshake_hash),
            handshake_hash: done.handshake_hash,
            tx: done.tx,
            rx: done.rx,
            features: self.ours.both(self.theirs),
        })
    }
}

/// hyperdht's `holepunchSecret`: BLAKE2b-256 keyed with the handshake hash, of
/// NS_PEER_HOLEPUNCH.
fn holepunch_secret(handshake_hash: &[u8; 64]) -> [u8; 32] {
    // A 64-byte key is within BLAKE2b's 1..=64.
    let mut mac = <Blake2bMac<U32> as KeyInit>::new_from_slice(handshake_hash)
        .expect("a 64-byte BLAKE2b key");
    Mac::update(&mut mac, &*NS_PEER_HOLEPUNCH);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use peeroxide_dht::hyperdht_messages::{
        decode_noise_payload_from_bytes, SecretStreamInfo, UdxInfo,
    };
    use peeroxide_dht::noise_wrap::NoiseWrap;

    fn payload() -> NoisePayload {
        NoisePayload {
            version: 1,
            error: 0,
            firewall: 1,
            holepunch: None,
            addresses4: Vec::new(),
            addresses6: Vec::new(),
            udx: Some(UdxInfo {
                version: 1,
                reusable_socket: true,
                id: 7,
                seq: 0,
            }),
            secret_stream: Some(SecretStreamInfo { version: 1 }),
            relay_through: None,
            relay_addresses: None,
        }
    }

    impl Features {
        fn mux(on: bool) -> Features {
            Features {
                mux: on,
                ..Features::default()
            }
        }
    }

    /// Roaming and resuming are agreed like multiplexing: only when both halves name them,
    /// and a peer that does not know a bit turns it off by not echoing it.
    #[test]
    fn roaming_bits_round_trip_and_need_both_sides() {
        let all = Features {
            mux: true,
            ping: true,
            roam: true,
            resume: true,
        };
        assert_eq!(Features::from_bits(all.bits()), all);
        assert_eq!(Features::from_bits(0xff), all, "unknown bits are ignored");
        let older = Features::mux(true);
        assert_eq!(all.both(older), older);
        assert_eq!(older.both(all), older);
    }

    fn keypair(seed: u8) -> Keypair {
        peeroxide_dht::noise::keypair_from_seed(&[seed; 32])
    }

    /// Both offer: on. One offers: off, for both sides alike.
    #[test]
    fn a_feature_is_on_only_when_both_sides_offer_it() {
        for (client, server, expect) in [
            (true, true, true),
            (true, false, false),
            (false, true, false),
            (false, false, false),
        ] {
            let (c, s) = (keypair(1), keypair(2));
            let offer = |on: bool| {
                if on {
                    Features::MUX
                } else {
                    Features::default()
                }
            };
            let mut i = Noise::initiator(c, s.public_key, offer(client));
            let mut r = Noise::responder(s, offer(server));
            let m1 = i.send(&payload()).unwrap();
            assert_eq!(r.recv(&m1).unwrap(), payload());
            let m2 = r.send(&payload()).unwrap();
            assert_eq!(i.recv(&m2).unwrap(), payload());
            let (ik, rk) = (i.finalize().unwrap(), r.finalize().unwrap());
            assert_eq!(ik.features.mux, expect, "{client} {server}");
            assert_eq!(rk.features, ik.features, "{client} {server}");
            assert_eq!(ik.features.ping, expect, "{client} {server}");
            assert_eq!(ik.tx, rk.rx);
            assert_eq!(ik.holepunch_secret, rk.holepunch_secret);
        }
    }

    /// hyperdht's own wrapper (the same decoder as Node's) reads our extended payload as the
    /// plain one, and derives the same keys and holepunch secret we do.
    #[test]
    fn hyperdht_reads_an_extended_payload_as_a_plain_one() {
        let (c, s) = (keypair(3), keypair(4));
        let mut ours = Noise::initiator(c, s.public_key, Features::MUX);
        let mut theirs = NoiseWrap::new_responder(s);
        let m1 = ours.send(&payload()).unwrap();
        assert_eq!(theirs.recv(&m1).unwrap(), payload());
        let m2 = theirs.send(&payload()).unwrap();
        assert_eq!(ours.recv(&m2).unwrap(), payload());
        let (a, b) = (ours.finalize().unwrap(), theirs.finalize().unwrap());
        assert!(!a.features.mux, "hyperdht sent no extension");
        assert_eq!(a.holepunch_secret, b.holepunch_secret);
        assert_eq!((a.tx, a.rx), (b.rx, b.tx));
    }

    #[test]
    fn what_follows_the_payload_offers_only_when_it_is_our_extension() {
        let plain = encode_noise_payload_to_bytes(&payload()).unwrap();
        let with = |tail: &[u8]| {
            let mut p = plain.clone();
            p.extend_from_slice(tail);
            decode(&p).unwrap().1.mux
        };
        assert!(with(&extension(Features::MUX)));
        assert!(with(b"p2ps\x01\x01more from a later version"));
        assert!(!with(b""));
        assert!(!with(b"p2ps\x02\x01"), "another layout version");
        assert!(!with(b"p2ps\x01"), "cut short");
        assert!(!with(b"p2pz\x01\x01"));
        // An older p2p-socket names multiplexing without PING: it gets no PING frames.
        let mut older = plain.clone();
        older.extend_from_slice(b"p2ps\x01\x01");
        let offered = decode(&older).unwrap().1;
        assert!(offered.mux && !offered.ping);
        assert!(!with(b"p2ps\x01\x04"), "roaming alone is not multiplexing");
        assert!(!with(b"p2ps\x01\x10"), "a feature we do not know");
        assert!(extension(Features::default()).is_empty());
        assert_eq!(
            decode_noise_payload_from_bytes(&plain).unwrap(),
            decode(&plain).unwrap().0
        );
    }
}
