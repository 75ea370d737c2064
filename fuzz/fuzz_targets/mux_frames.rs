//! The multiplexing frames a peer sends on one connection (crates/p2p-socket/src/mux/proto.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| p2p_socket::fuzzing::mux_frames(data));
