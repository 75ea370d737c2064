//! NAT sampling: the addresses DHT nodes say they saw us at.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| p2p_socket::fuzzing::nat_samples(data));
