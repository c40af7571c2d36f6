//! A bucket's locator: 32 bits of an id's hash → the numbers of the stored batches that may
//! hold the id. It is consulted only after a bloom "maybe", and it narrows the confirmation in
//! RocksDB to one stored batch (rarely a few: another id with the same 32 bits, or the same id
//! inserted again in a later batch). Pure in-memory logic: it knows keys and batch numbers,
//! neither ids nor RocksDB. The newest bucket's locator is a hash map that takes keys; an
//! older bucket's is sealed into a sorted array, smaller and read-only.

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

/// A hash map keyed by locator keys.
pub(super) type KeyMap<V> = HashMap<u32, V, BuildHasherDefault<KeyHasher>>;

/// Locator key → number of the first stored batch holding an id with that key.
pub(super) enum Firsts {
    /// The newest bucket, still taking ids.
    Open(KeyMap<u32>),
    /// An older bucket (it takes no more ids): `(key, batch)` sorted by key. 8 bytes per key
    /// instead of a hash table's ~9 per slot at ~80 % load; a lookup (only after a bloom
    /// "maybe") is a binary search.
    Sealed(Box<[(u32, u32)]>),
}

impl Firsts {
    /// The first batch noted for `key`.
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

/// The locator of one bucket: for each key, the stored batches noted for it, in the order
/// they were noted, each once.
pub(super) struct Locator {
    /// Key → the first batch noted for it (almost every key has only this one).
    pub(super) first: Firsts,
    /// Further batches for a key (another id with the same 32 bits, or an id inserted again in
    /// a later batch): about one entry per 100 000 ids.
    pub(super) more: KeyMap<Vec<u32>>,
}

impl Locator {
    /// An open locator with room for `keys` keys without growing (capped at 2^20: the table
    /// is rebuilt with every doubling otherwise).
    pub(super) fn with_capacity(keys: usize) -> Locator {
        Locator {
            first: Firsts::Open(KeyMap::with_capacity_and_hasher(
                keys.min(1 << 20),
                Default::default(),
            )),
            more: KeyMap::default(),
        }
    }

    /// Records that stored batch `batch` holds an id with `key`. Batches are noted in
    /// non-decreasing order (a bucket fills its stored batches one after the other).
    ///
    /// # Panics
    /// If the locator is sealed: ids go to the newest bucket only, which is never sealed.
    #[inline]
    pub(super) fn note(&mut self, key: u32, batch: u32) {
        let Firsts::Open(first) = &mut self.first else {
            unreachable!("ids go to the newest bucket only, which is never sealed");
        };
        match first.entry(key) {
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(batch);
            }
            std::collections::hash_map::Entry::Occupied(e) => {
                if *e.get() != batch {
                    let more = self.more.entry(key).or_default();
                    if more.last() != Some(&batch) {
                        more.push(batch);
                    }
                }
            }
        }
    }

    /// The batches noted for `key`, first noted first (none for a key never noted).
    pub(super) fn batches(&self, key: u32) -> impl Iterator<Item = u32> + '_ {
        self.first
            .get(key)
            .into_iter()
            .chain(self.more.get(&key).into_iter().flatten().copied())
    }

    /// Seals the locator: it takes no more keys and holds its first batches in a sorted array
    /// (no-op if it is sealed).
    pub(super) fn seal(&mut self) {
        self.first.seal();
    }

    /// True once [`Locator::seal`] was called.
    #[cfg(test)]
    pub(super) fn is_sealed(&self) -> bool {
        matches!(self.first, Firsts::Sealed(_))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_key_never_noted_has_no_batch() {
        let mut l = Locator::with_capacity(4);
        assert_eq!(l.batches(7).count(), 0);
        l.note(1, 0);
        assert_eq!(l.batches(7).count(), 0);
        l.seal();
        assert_eq!(l.batches(7).count(), 0);
    }

    #[test]
    fn repeated_notes_of_one_batch_are_kept_once() {
        let mut l = Locator::with_capacity(4);
        for (key, batch) in [(5, 0), (5, 0), (5, 2), (5, 2), (5, 3), (9, 3)] {
            l.note(key, batch);
        }
        assert_eq!(l.batches(5).collect::<Vec<_>>(), [0, 2, 3]);
        assert_eq!(l.batches(9).collect::<Vec<_>>(), [3]);
    }

    #[test]
    #[should_panic(expected = "never sealed")]
    fn a_sealed_locator_takes_no_keys() {
        let mut l = Locator::with_capacity(1);
        l.seal();
        l.note(1, 0);
    }

    proptest! {
        /// Whatever keys are noted (collisions included), each key gives back exactly the
        /// distinct batches noted for it, in order, before and after sealing.
        #[test]
        fn gives_back_every_batch_noted_for_a_key(
            notes in proptest::collection::vec((0u32..16, 0u32..4), 0..200),
        ) {
            // Batch numbers grow as a bucket fills: make them non-decreasing.
            let mut batch = 0u32;
            let notes: Vec<(u32, u32)> = notes
                .into_iter()
                .map(|(key, step)| {
                    batch += step / 3;
                    (key, batch)
                })
                .collect();
            let mut want: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
            let mut l = Locator::with_capacity(notes.len());
            for &(key, batch) in &notes {
                l.note(key, batch);
                let batches = want.entry(key).or_default();
                if batches.last() != Some(&batch) {
                    batches.push(batch);
                }
            }
            let none = Vec::new();
            for sealed in [false, true] {
                if sealed {
                    l.seal();
                }
                prop_assert_eq!(l.is_sealed(), sealed);
                for key in 0..20u32 {
                    let got: Vec<u32> = l.batches(key).collect();
                    prop_assert_eq!(&got, want.get(&key).unwrap_or(&none));
                }
            }
        }
    }
}
