//! A peer record from a DHT lookup.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| p2p_socket::fuzzing::peer_record(data));
