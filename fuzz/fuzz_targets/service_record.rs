//! A holesail service record as a DHT node returns it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| p2p_socket::fuzzing::service_record(data));
