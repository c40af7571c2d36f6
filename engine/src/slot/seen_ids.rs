//! The uniqueness ids a windowed slot has applied that the dedup filter may not hold yet (this
//! batch's and the previous one's), in sets built for the common case of increasing integer
//! ids, and a batch's id keys in one buffer for the filter's batch lookup.

use std::collections::HashSet;

use crate::segment::{Segment, Value};

/// The uniqueness ids one batch applied (kept between batches for their allocations).
#[derive(Default)]
pub(crate) struct SeenIds {
    /// Integer ids (their key `i` + 8 bytes stands for exactly one value).
    ints: IntIds,
    /// The keys ([`super::record::id_key`]) of other ids.
    keys: HashSet<Vec<u8>, foldhash::fast::RandomState>,
}

impl SeenIds {
    pub(crate) fn clear(&mut self) {
        self.ints.clear();
        self.keys.clear();
    }

    pub(crate) fn contains(&self, v: &Value, key: &[u8]) -> bool {
        match v {
            Value::Int(i) => self.ints.contains(*i),
            _ => self.keys.contains(key),
        }
    }

    pub(crate) fn insert(&mut self, v: &Value, key: &[u8]) {
        match v {
            Value::Int(i) => self.ints.insert(*i),
            _ => {
                self.keys.insert(key.to_vec());
            }
        }
    }
}

/// A set of integer ids built for ids that mostly arrive in increasing order (sequence
/// numbers, offsets): those above every id before them extend a sorted run, so asking about
/// the next one is a comparison instead of a hash lookup; the others go to a hash set.
#[derive(Default)]
pub(crate) struct IntIds {
    /// Increasing.
    run: Vec<i64>,
    /// Ids that were not above the run's last when inserted (possibly also in the run).
    others: HashSet<i64, foldhash::fast::RandomState>,
}

impl IntIds {
    pub(crate) fn clear(&mut self) {
        self.run.clear();
        self.others.clear();
    }

    pub(crate) fn contains(&self, i: i64) -> bool {
        let in_run = match self.run.last() {
            Some(&last) if i <= last => self.run.binary_search(&i).is_ok(),
            _ => false,
        };
        in_run || (!self.others.is_empty() && self.others.contains(&i))
    }

    /// Adds `i` (callers ask [`IntIds::contains`] first, so an id already in the run is not
    /// searched for again; one would only be held twice).
    pub(crate) fn insert(&mut self, i: i64) {
        match self.run.last() {
            Some(&last) if i <= last => {
                self.others.insert(i);
            }
            _ => self.run.push(i),
        }
    }
}

/// The ids a windowed peer has applied that the dedup filter may not hold yet: those of the
/// batch being prepared and of the batch prepared before it (whose record may still be in
/// flight, or whose ids are inserted into the filter only while the next record is appended).
/// Every earlier batch's ids are in the filter.
#[derive(Default)]
pub(crate) struct SeenPair {
    here: SeenIds,
    prev: SeenIds,
    /// The key of the id at hand.
    pub(crate) key: Vec<u8>,
    /// The keys of the ids of the batch at hand.
    pub(crate) batch: BatchKeys,
}

/// The id keys of a batch's segments, one after another in one buffer (an empty key for a
/// segment without the uniqueness field).
#[derive(Default)]
pub(crate) struct BatchKeys {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl BatchKeys {
    /// Each segment's key, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &[u8]> + Clone {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(&self.ends).map(|(a, &b)| &self.bytes[a..b])
    }
}

impl SeenPair {
    /// Starts a batch: the current batch's ids become the previous batch's.
    pub(crate) fn next_batch(&mut self) {
        std::mem::swap(&mut self.here, &mut self.prev);
        self.here.clear();
    }

    /// True if the id `v`, whose key is in `self.key`, was applied by this batch or the one
    /// before.
    pub(crate) fn contains(&self, v: &Value) -> bool {
        self.here.contains(v, &self.key) || self.prev.contains(v, &self.key)
    }

    /// Computes the id key of each of `segments` (by the uniqueness field `field`) into
    /// `self.batch`.
    pub(crate) fn batch_keys(&mut self, segments: &[Segment], field: &str) {
        self.batch.bytes.clear();
        self.batch.ends.clear();
        for s in segments {
            if let Some(v) = s.get(field) {
                super::record::id_key_into(v, &mut self.key);
                self.batch.bytes.extend_from_slice(&self.key);
            }
            self.batch.ends.push(self.batch.bytes.len());
        }
    }

    /// Notes the id `v`, whose key is in `self.key`, as applied by this batch.
    pub(crate) fn insert(&mut self, v: &Value) {
        self.here.insert(v, &self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::IntIds;
    use proptest::prelude::*;
    use std::collections::HashSet;

    proptest! {
        /// Whatever the order of the ids, the set answers as a plain hash set does; runs of
        /// increasing ids (the case it is built for) are mixed with repeats and strays.
        #[test]
        fn int_ids_answer_as_a_hash_set(
            steps in prop::collection::vec((any::<bool>(), -20_i64..20, prop::bool::weighted(0.05)), 0..200),
        ) {
            let mut ids = IntIds::default();
            let mut model = HashSet::new();
            let mut next = 0_i64;
            for (increasing, stray, clear) in steps {
                if clear {
                    ids.clear();
                    model.clear();
                    continue;
                }
                let i = if increasing { next += 3; next } else { next + stray };
                prop_assert_eq!(ids.contains(i), model.contains(&i), "before inserting {}", i);
                ids.insert(i);
                model.insert(i);
                prop_assert!(ids.contains(i));
                for probe in next - 25..next + 25 {
                    prop_assert_eq!(ids.contains(probe), model.contains(&probe), "probe {}", probe);
                }
            }
        }
    }
}
