//! A PEER_HOLEPUNCH message relayed by a DHT node, and its decryption.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| p2p_socket::fuzzing::holepunch_message(data));
