//! A PEER_HANDSHAKE message and the Noise IK message in it, read by both sides.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| p2p_socket::fuzzing::handshake(data));
