//! A decrypted holepunch round: the other side's NAT and addresses.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| p2p_socket::fuzzing::holepunch_payload(data));
