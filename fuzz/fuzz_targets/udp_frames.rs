//! The byte stream of a UDP flow, holesail's framing (crates/p2p-socket/src/udp/frame.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| p2p_socket::fuzzing::udp_frames(data));
