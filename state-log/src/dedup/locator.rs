//! A bucket's locator: 32 bits of an id's hash → the stored batch that holds the id.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Hashes a locator key (already 32 random bits) to 64 for the hash map: a multiplication
/// spreads it over the high bits the map's tags come from.
#[derive(Default)]
pub(super) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u32(&mut self, k: u32) {
        self.0 = (k as u64 | (k as u64) << 32).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

pub(super) type KeyMap<V> = HashMap<u32, V, BuildHasherDefault<KeyHasher>>;

/// A bucket's locator: key → number of the first stored batch holding an id with that key.
pub(super) enum Firsts {
    /// The newest bucket, still taking ids.
    Open(KeyMap<u32>),
    /// An older bucket (it takes no more ids): `(key, batch)` sorted by key. 8 bytes per key
    /// instead of a hash table's ~9 per slot at ~80 % load; a lookup (only after a bloom
    /// "maybe") is a binary search.
    Sealed(Box<[(u32, u32)]>),
}

impl Firsts {
    pub(super) fn get(&self, key: u32) -> Option<u32> {
        match self {
            Firsts::Open(m) => m.get(&key).copied(),
            Firsts::Sealed(v) => v
                .binary_search_by_key(&key, |&(k, _)| k)
                .ok()
                .map(|i| v[i].1),
        }
    }

    /// Makes the locator sealed (no-op if it is).
    pub(super) fn seal(&mut self) {
        if let Firsts::Open(m) = self {
            let mut v: Box<[(u32, u32)]> = m.drain().collect();
            v.sort_unstable_by_key(|&(k, _)| k);
            *self = Firsts::Sealed(v);
        }
    }
}
