//! The handshake payload: how a peer says it can be reached, and our checks of it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| p2p_socket::fuzzing::noise_payload(data));
