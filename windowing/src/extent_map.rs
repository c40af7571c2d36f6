//! [`ExtentMap`]: the extents of one group in one window, a map from extent id (or a session's
//! lower bound) to state kept as a vector sorted by key.
//!
//! A group holds few live extents (one session, a handful of fixed windows, `range / slide`
//! sliding ones), and new extents are mostly the newest. A `BTreeMap` allocates a node of
//! eleven slots for each of them (~350 bytes for one session, about a quarter of Q4's peak heap
//! with 50 000 open sessions); a sorted vector holds exactly what is there, finds a key with a
//! binary search over one cache line or two, and appends the newest extent at its end.
//!
//! It serializes exactly as a `BTreeMap<i64, V>` does (a map, ascending keys), so snapshots
//! written before it read the same.

use serde::{Deserialize, Serialize};

/// A map from `i64` to `V`, ascending by key (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct ExtentMap<V> {
    entries: Vec<(i64, V)>,
}

impl<V> Default for ExtentMap<V> {
    fn default() -> Self {
        ExtentMap {
            entries: Vec::new(),
        }
    }
}

impl<V> ExtentMap<V> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Room for one more entry. The first entry gets exactly one slot, then the vector
    /// doubles: most groups hold a single extent (one session, the current fixed window), and
    /// `Vec`'s own first allocation of four slots was three quarters empty for them (8.4 of
    /// Q4's 11.2 MB of extents at 10M events, 50 000 open sessions).
    fn make_room(&mut self) {
        if self.entries.len() == self.entries.capacity() {
            self.entries.reserve_exact(self.entries.len().max(1));
        }
    }

    fn find(&self, key: i64) -> Result<usize, usize> {
        // The newest extent (the last) is the one most looked up.
        match self.entries.last() {
            Some((k, _)) if *k == key => Ok(self.entries.len() - 1),
            Some((k, _)) if *k < key => Err(self.entries.len()),
            _ => self.entries.binary_search_by_key(&key, |(k, _)| *k),
        }
    }

    /// The value under `key`.
    pub fn get(&self, key: &i64) -> Option<&V> {
        self.find(*key).ok().map(|i| &self.entries[i].1)
    }

    /// The value under `key`, mutably.
    pub fn get_mut(&mut self, key: &i64) -> Option<&mut V> {
        self.find(*key).ok().map(|i| &mut self.entries[i].1)
    }

    /// The value under `key`, inserting `f()` first if there is none.
    pub fn get_or_insert_with(&mut self, key: i64, f: impl FnOnce() -> V) -> &mut V {
        let i = match self.find(key) {
            Ok(i) => i,
            Err(i) => {
                self.make_room();
                self.entries.insert(i, (key, f()));
                i
            }
        };
        &mut self.entries[i].1
    }

    /// Sets `key` to `value`, returning the previous value.
    pub fn insert(&mut self, key: i64, value: V) -> Option<V> {
        match self.find(key) {
            Ok(i) => Some(std::mem::replace(&mut self.entries[i].1, value)),
            Err(i) => {
                self.make_room();
                self.entries.insert(i, (key, value));
                None
            }
        }
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &i64) -> Option<V> {
        let i = self.find(*key).ok()?;
        Some(self.entries.remove(i).1)
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there is no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries, ascending by key.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&i64, &V)> + ExactSizeIterator {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    /// The keys, ascending.
    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &i64> + ExactSizeIterator {
        self.entries.iter().map(|(k, _)| k)
    }

    /// The entries with a key at most `key`, ascending.
    pub fn up_to(&self, key: i64) -> impl DoubleEndedIterator<Item = (&i64, &V)> {
        let end = match self.find(key) {
            Ok(i) => i + 1,
            Err(i) => i,
        };
        self.entries[..end].iter().map(|(k, v)| (k, v))
    }
}

impl<'a, V> IntoIterator for &'a ExtentMap<V> {
    type Item = (&'a i64, &'a V);
    type IntoIter = std::iter::Map<std::slice::Iter<'a, (i64, V)>, fn(&'a (i64, V)) -> Self::Item>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter().map(|(k, v)| (k, v))
    }
}

impl<V: Serialize> Serialize for ExtentMap<V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.entries.iter().map(|(k, v)| (k, v)))
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for ExtentMap<V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = std::collections::BTreeMap::<i64, V>::deserialize(d)?;
        Ok(ExtentMap {
            entries: map.into_iter().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[test]
    fn a_single_extent_takes_a_single_slot_then_the_vector_doubles() {
        let mut m = ExtentMap::new();
        let mut caps = Vec::new();
        for k in 0..5 {
            m.insert(k, ());
            caps.push(m.entries.capacity());
        }
        assert_eq!(caps, [1, 2, 4, 4, 8]);
        let mut m = ExtentMap::new();
        m.get_or_insert_with(7, || 0_u8);
        assert_eq!(m.entries.capacity(), 1);
    }

    proptest! {
        /// Against a `BTreeMap`: the same answers after any inserts and removes, the same
        /// bincode bytes, and it reads what a `BTreeMap` wrote.
        #[test]
        fn behaves_as_a_btree_map(
            ops in proptest::collection::vec((0_u8..4, -20_i64..20, any::<u16>()), 0..120),
        ) {
            let mut m = ExtentMap::new();
            let mut model = BTreeMap::new();
            for (op, k, v) in ops {
                match op {
                    0 => prop_assert_eq!(m.insert(k, v), model.insert(k, v)),
                    1 => prop_assert_eq!(m.remove(&k), model.remove(&k)),
                    2 => {
                        let got = *m.get_or_insert_with(k, || v);
                        prop_assert_eq!(got, *model.entry(k).or_insert(v));
                    }
                    _ => {
                        let got: Vec<_> = m.up_to(k).map(|(a, b)| (*a, *b)).collect();
                        let want: Vec<_> = model.range(..=k).map(|(a, b)| (*a, *b)).collect();
                        prop_assert_eq!(got, want);
                    }
                }
                prop_assert_eq!(m.get(&k), model.get(&k));
                prop_assert_eq!(m.len(), model.len());
                let all: Vec<_> = m.iter().map(|(a, b)| (*a, *b)).collect();
                let want: Vec<_> = model.iter().map(|(a, b)| (*a, *b)).collect();
                prop_assert_eq!(all, want);
            }
            let cfg = bincode::config::standard();
            let bytes = bincode::serde::encode_to_vec(&m, cfg).unwrap();
            prop_assert_eq!(&bytes, &bincode::serde::encode_to_vec(&model, cfg).unwrap());
            let (back, _): (ExtentMap<u16>, _) =
                bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
            prop_assert_eq!(back, m);
        }
    }
}
