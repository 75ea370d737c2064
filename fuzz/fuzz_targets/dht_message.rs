//! A DHT RPC datagram as a punch socket reads it (peeroxide-dht's decoder).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| p2p_socket::fuzzing::dht_message(data));
