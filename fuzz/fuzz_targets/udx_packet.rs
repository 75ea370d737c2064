//! A UDX datagram: header, SACK blocks, payload (crates/udx/src/wire.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| p2p_socket::fuzzing::udx_packet(data));
