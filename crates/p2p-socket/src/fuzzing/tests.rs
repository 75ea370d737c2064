//! The fuzz targets on stable, inside `cargo test`: each target's committed corpus, then seeded
//! mutations of it for a bounded number of runs and time. A failure names the target, the seed
//! and the input, so it reproduces here and with `cargo fuzz run <target> <file>`.
//!
//! `P2P_SOCKET_FUZZ_SEED=<n>` explores from another seed; `P2P_SOCKET_WRITE_CORPUS=1` writes the
//! seeds [`seeds`] makes into `fuzz/corpus/` (run it after changing an encoder).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

use super::{seeds, Target, TARGETS};

/// Mutated inputs per target, and the time they may take at most (a debug build of the Noise
/// targets does not reach the count within it).
const RUNS: usize = 30_000;
const BUDGET: Duration = Duration::from_secs(3);
/// Mutations never grow an input past this: every decoder here reads one datagram or line.
const MAX_INPUT: usize = 2048;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn corpus_dir(target: &str) -> PathBuf {
    fuzz_dir().join("corpus").join(target)
}

/// A seed's file name: its content's hash, so the same seed is one file.
fn seed_file(seed: &[u8]) -> String {
    format!("seed-{}", &hex::encode(Sha256::digest(seed))[..16])
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = corpus_dir(target);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "cannot read the corpus of fuzz target {target} at {}: {e}; run the tests with \
             P2P_SOCKET_WRITE_CORPUS=1 to write it",
            dir.display()
        )
    });
    let mut files: Vec<PathBuf> = entries.map(|e| e.expect("corpus entry").path()).collect();
    files.sort();
    files
        .iter()
        .map(|f| std::fs::read(f).expect("corpus file reads"))
        .collect()
}

fn target(name: &str) -> Target {
    *TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no fuzz target named {name}"))
}

/// Runs `f` on `input`; a panic becomes a message that reproduces it.
fn check(name: &str, f: fn(&[u8]), input: &[u8], seed: Option<u64>) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(|| f(input))) {
        let why = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        panic!(
            "fuzz target {name} failed ({why}) on input {} (seed {seed:?}); to reproduce, \
             write those bytes to a file and run `cargo +nightly fuzz run {name} <file>` in fuzz/",
            hex::encode(input)
        );
    }
}

const INTERESTING_BYTES: [u8; 10] = [0, 1, 0x7f, 0x80, 0xfc, 0xfd, 0xfe, 0xff, 0x14, 0x20];
const INTERESTING_WORDS: [u32; 8] = [
    0,
    1,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_fffe,
    0xffff_ffff,
    0x0010_0000,
    0xfc,
];

/// libFuzzer's kind of mutations, a few at a time: bit flips, bytes and words that sit on the
/// edges of length and integer encodings, inserted, deleted, repeated and spliced ranges.
fn mutate(rng: &mut StdRng, input: &mut Vec<u8>, pool: &[Vec<u8>]) {
    for _ in 0..rng.random_range(1..=4) {
        let len = input.len();
        let at = rng.random_range(0..=len);
        match rng.random_range(0..9) {
            0 if at < len => input[at] ^= 1 << rng.random_range(0..8),
            1 if at < len => input[at] = rng.random(),
            2 if at < len => {
                input[at] = INTERESTING_BYTES[rng.random_range(0..INTERESTING_BYTES.len())]
            }
            3 if at + 4 <= len => {
                let word = INTERESTING_WORDS[rng.random_range(0..INTERESTING_WORDS.len())];
                input[at..at + 4].copy_from_slice(&word.to_le_bytes());
            }
            4 => {
                let extra: Vec<u8> = (0..rng.random_range(1..=8)).map(|_| rng.random()).collect();
                input.splice(at..at, extra);
            }
            5 if at < len => {
                let end = rng.random_range(at..=len);
                input.drain(at..end);
            }
            6 => input.truncate(at),
            7 if at < len => {
                let end = rng.random_range(at..=len);
                let copy = input[at..end].to_vec();
                let to = rng.random_range(0..=len);
                input.splice(to..to, copy);
            }
            _ => {
                let other = &pool[rng.random_range(0..pool.len())];
                let from = rng.random_range(0..=other.len());
                input.truncate(at);
                input.extend_from_slice(&other[from..]);
            }
        }
    }
    input.truncate(MAX_INPUT);
}

/// The corpus, then mutations of it until [`RUNS`] or [`BUDGET`] is reached.
fn exercise(name: &str) {
    let (_, f) = target(name);
    let mut pool = corpus(name);
    pool.extend(seeds(name));
    for input in &pool {
        check(name, f, input, None);
    }
    let seed = std::env::var("P2P_SOCKET_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();
    for _ in 0..RUNS {
        if started.elapsed() > BUDGET {
            break;
        }
        let mut input = pool[rng.random_range(0..pool.len())].clone();
        mutate(&mut rng, &mut input, &pool);
        check(name, f, &input, Some(seed));
    }
}

#[test]
fn udx_packet() {
    exercise("udx_packet");
}

#[test]
fn relay_frame() {
    exercise("relay_frame");
}

#[test]
fn dht_message() {
    exercise("dht_message");
}

#[test]
fn handshake() {
    exercise("handshake");
}

#[test]
fn noise_payload() {
    exercise("noise_payload");
}

#[test]
fn holepunch_message() {
    exercise("holepunch_message");
}

#[test]
fn holepunch_payload() {
    exercise("holepunch_payload");
}

#[test]
fn peer_record() {
    exercise("peer_record");
}

#[test]
fn nat_samples() {
    exercise("nat_samples");
}

#[test]
fn public_key() {
    exercise("public_key");
}

#[test]
fn identity_file() {
    exercise("identity_file");
}

#[test]
fn udp_frames() {
    exercise("udp_frames");
}

#[test]
fn connection_string() {
    exercise("connection_string");
}

#[test]
fn service_record() {
    exercise("service_record");
}

#[test]
fn mux_frames() {
    exercise("mux_frames");
}

/// Every target has its file in fuzz/, and its corpus holds what [`seeds`] makes.
#[test]
fn targets_and_corpus_match() {
    let write = std::env::var_os("P2P_SOCKET_WRITE_CORPUS").is_some();
    for (name, _) in TARGETS {
        let file = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        assert!(
            file.exists(),
            "fuzz target {name} has no {}",
            file.display()
        );
        let dir = corpus_dir(name);
        for seed in seeds(name) {
            let path = dir.join(seed_file(&seed));
            if write {
                std::fs::create_dir_all(&dir).expect("corpus directory");
                std::fs::write(&path, &seed).expect("seed file writes");
            }
            assert!(
                path.exists(),
                "seed {} of fuzz target {name} is not in the corpus; run the tests with \
                 P2P_SOCKET_WRITE_CORPUS=1 to write it",
                path.display()
            );
        }
    }
}
