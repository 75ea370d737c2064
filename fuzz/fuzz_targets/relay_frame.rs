//! A protomux frame on a blind-relay connection (crates/p2p-socket/src/relay/wire.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| p2p_socket::fuzzing::relay_frame(data));
