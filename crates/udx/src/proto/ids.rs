//! Maps keyed by our own stream ids, with a hash much cheaper than the standard library's.
//!
//! Every received packet looks its stream up, two or three times: with SipHash that was 2 %
//! of a bulk transfer's CPU. SipHash guards a map against keys chosen to collide; the keys
//! here are local ids, which the application picks and a peer cannot (a peer's packet only
//! looks an id up, and a miss costs the same whatever the id).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` keyed by stream id.
pub(crate) type IdMap<V> = HashMap<u32, V, BuildHasherDefault<IdHasher>>;

/// Multiplies the id by a 64-bit odd constant (the golden ratio's fraction) and folds the
/// high half into the low one, so the bucket (low bits) and the tag (high bits) the map
/// takes from the hash both depend on every bit of the id: sequential ids and ids that
/// differ only in their high bits spread alike.
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

const MULTIPLIER: u64 = 0x9E37_79B9_7F4A_7C15;

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u32` is used by `u32` keys; anything else still hashes correctly.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(MULTIPLIER);
        }
    }

    fn write_u32(&mut self, id: u32) {
        self.0 = (self.0 ^ u64::from(id)).wrapping_mul(MULTIPLIER);
    }

    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    /// Ids in a row and ids that differ only in their high bits land in different buckets
    /// of a small table (low bits) and get different tags (top 7 bits).
    #[test]
    fn ids_that_differ_anywhere_spread_over_buckets_and_tags() {
        let build = BuildHasherDefault::<IdHasher>::default();
        for ids in [
            (0..64u32).collect::<Vec<_>>(),
            (0..64u32).map(|i| i << 24).collect(),
            (0..64u32).map(|i| i << 16).collect(),
        ] {
            let buckets: std::collections::HashSet<u64> =
                ids.iter().map(|&id| build.hash_one(id) & 127).collect();
            let tags: std::collections::HashSet<u64> =
                ids.iter().map(|&id| build.hash_one(id) >> 57).collect();
            assert!(buckets.len() >= 40, "{} buckets for {ids:?}", buckets.len());
            assert!(tags.len() >= 30, "{} tags for {ids:?}", tags.len());
        }
    }
}
