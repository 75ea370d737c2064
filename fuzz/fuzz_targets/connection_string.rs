//! What a user pastes after `connect --key`: a key or a holesail `hs://` string.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| p2p_socket::fuzzing::connection_string(data));
