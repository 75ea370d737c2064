//! The handshake both sides exchange through the DHT (hyperdht's PEER_HANDSHAKE): a Noise IK
//! message carrying a payload that says how to reach each other. The encodings are
//! peeroxide-dht's; what each side decides from them is in [`crate::policy`].

use peeroxide_dht::hyperdht_messages::{
    HandshakeMessage, HolepunchInfo, NoisePayload, SecretStreamInfo, UdxInfo, ERROR_NONE,
};
use peeroxide_dht::messages::Ipv4Peer;

use crate::error::Incompatibility;
use crate::nat::Firewall;

/// The payload version hyperdht speaks.
pub(crate) const PAYLOAD_VERSION: u64 = 1;

/// What we tell the other side in our half of the handshake: whether we are reachable
/// (`firewall`: Open makes the other side send first, anything else makes it dial or punch),
/// where, and, for a server, the DHT nodes a client can punch through (`holepunch`).
pub(crate) fn our_payload(
    stream_id: u32,
    addresses4: Vec<Ipv4Peer>,
    firewall: Firewall,
    holepunch: Option<HolepunchInfo>,
) -> NoisePayload {
    NoisePayload {
        version: PAYLOAD_VERSION,
        error: ERROR_NONE,
        firewall: firewall.wire(),
        holepunch,
        addresses4,
        addresses6: Vec::new(),
        udx: Some(UdxInfo {
            version: 1,
            // A socket punched for one connection takes the next handshake straight away
            // (hyperdht's reusableSocket): later connections skip the punch.
            reusable_socket: true,
            id: u64::from(stream_id),
            seq: 0,
        }),
        secret_stream: Some(SecretStreamInfo { version: 1 }),
        relay_through: None,
        relay_addresses: None,
    }
}

/// Checks the peer's half of the handshake.
pub(crate) fn check_remote(payload: &NoisePayload) -> Result<u32, Incompatibility> {
    if payload.version != PAYLOAD_VERSION {
        return Err(Incompatibility::Version(payload.version));
    }
    if payload.error != ERROR_NONE {
        return Err(Incompatibility::Refused(payload.error));
    }
    let udx = payload.udx.as_ref().ok_or(Incompatibility::NoStream)?;
    u32::try_from(udx.id).map_err(|_| Incompatibility::StreamId(udx.id))
}

/// Encodes a PEER_HANDSHAKE message.
pub(crate) fn message(mode: u64, noise: Vec<u8>, peer_address: Option<Ipv4Peer>) -> Vec<u8> {
    let msg = HandshakeMessage {
        mode,
        noise,
        peer_address,
        relay_address: None,
    };
    // Encoding only fails on impossible lengths (a noise message is under 1 KiB).
    peeroxide_dht::hyperdht_messages::encode_handshake_to_bytes(&msg)
        .expect("handshake message encodes")
}
