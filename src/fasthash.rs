//! A fast hasher for the small maps on the per-message path (packet ids, message handles,
//! publish tokens, the reply table).
//!
//! std's SipHash resists hash flooding, at ~100 instructions per small key; here it was a
//! quarter of the daemon's instructions per command. These maps never hold more than the
//! in-flight window or the configured reply table, and their keys are our own counters,
//! packet ids (16 bits) or lookups into a fixed table, so flooding is not a concern. The mix
//! is FxHash's (rustc's): rotate, xor, multiply by an odd constant, one word at a time.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` with [`FastHasher`]. Create it with `FastMap::default()`.
pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// FxHash: not DoS-resistant; see the module documentation.
#[derive(Debug, Default, Clone, Copy)]
pub struct FastHasher {
    hash: u64,
}

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FastHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u8(&mut self, n: u8) {
        self.add(n.into());
    }

    #[inline]
    fn write_u16(&mut self, n: u16) {
        self.add(n.into());
    }

    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.add(n.into());
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

#[cfg(test)]
mod tests {
    use super::FastMap;

    #[test]
    fn behaves_as_a_map() {
        let mut map: FastMap<u16, u16> = FastMap::default();
        for pkid in 1..=1000u16 {
            map.insert(pkid, pkid * 2);
        }
        for pkid in 1..=1000u16 {
            assert_eq!(map.remove(&pkid), Some(pkid * 2));
        }
        assert!(map.is_empty());
        let mut table: FastMap<String, usize> = FastMap::default();
        for (i, c) in ["CMD1", "CMD2", "a-much-longer-command-name", ""]
            .iter()
            .enumerate()
        {
            table.insert((*c).to_owned(), i);
        }
        assert_eq!(table.get("a-much-longer-command-name"), Some(&2));
        assert_eq!(table.get(""), Some(&3));
        assert_eq!(table.get("CMD3"), None);
    }
}
