//! An identity.json as a user may have edited or damaged it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| p2p_socket::fuzzing::identity_file(data));
