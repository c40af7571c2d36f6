//! The due index of a window: entries `(key, group, extent)` taken out once a watermark
//! reaches their key.
//!
//! The operator keeps one per window, keyed by the earliest watermark at which an extent needs
//! attention. It is lazy: an entry is added when an extent's key comes earlier than its entry
//! (a new extent, or a key that shrank) and never removed in place; the caller drops an entry
//! whose extent is gone, and indexes again an extent whose entry came before its key, when the
//! entry is taken. A session that grows with every event thus costs no push per event, only
//! one each time a watermark passes its entry, instead of a remove and an insert in a search
//! tree.
//!
//! Entries are held in buckets of [`BUCKET_SPAN`] consecutive keys: a push appends to its
//! bucket's vector, and taking everything up to a watermark takes whole buckets and splits at
//! most the one the watermark falls in. Keys grow with event time, so the buckets in use are
//! the few hundred spanning the watermark's lag, and a push finds its bucket among them; the
//! newest bucket is kept aside, so most pushes need no search at all.

use std::collections::BTreeMap;

/// An entry: `(key, group id, extent id)`.
pub type DueEntry = (i64, u32, i64);

/// Keys per bucket, as a power of two: 1024 (about a second of event time in milliseconds).
const BUCKET_BITS: u32 = 10;
/// The number of consecutive keys a bucket holds.
pub const BUCKET_SPAN: i64 = 1 << BUCKET_BITS;

/// A lazy multiset of [`DueEntry`]s ordered by key (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct DueIndex {
    buckets: BTreeMap<i64, Vec<DueEntry>>,
    /// The newest bucket pushed to, kept out of `buckets`: keys follow event time, so most
    /// pushes land in it and need no search.
    hot: Option<(i64, Vec<DueEntry>)>,
    len: usize,
}

impl DueIndex {
    /// An empty index.
    pub fn new() -> Self {
        DueIndex::default()
    }

    /// Adds an entry (a duplicate of one already held is kept as well).
    pub fn push(&mut self, entry: DueEntry) {
        let b = entry.0 >> BUCKET_BITS;
        self.len += 1;
        match &mut self.hot {
            Some((hot, entries)) if *hot == b => entries.push(entry),
            // An older bucket (a key that went back): pushed in place, the hot one stays.
            Some((hot, _)) if *hot > b => self.buckets.entry(b).or_default().push(entry),
            _ => {
                self.cool();
                let mut entries = self.buckets.remove(&b).unwrap_or_default();
                entries.push(entry);
                self.hot = Some((b, entries));
            }
        }
    }

    /// Puts the hot bucket back among the others.
    fn cool(&mut self) {
        if let Some((b, entries)) = self.hot.take() {
            self.buckets.insert(b, entries);
        }
    }

    /// Takes out every entry whose key is at most `upto`, in no particular order.
    pub fn take_upto(&mut self, upto: i64) -> Vec<DueEntry> {
        self.cool();
        let last = upto >> BUCKET_BITS;
        let mut taken = Vec::new();
        while let Some(mut first) = self.buckets.first_entry() {
            let b = *first.key();
            if b > last {
                break;
            }
            if b < last || upto == i64::MAX || (upto & (BUCKET_SPAN - 1)) == BUCKET_SPAN - 1 {
                // Every key of the bucket is at most `upto`.
                taken.append(first.get_mut());
                first.remove();
            } else {
                let entries = first.get_mut();
                let mut i = 0;
                while i < entries.len() {
                    if entries[i].0 <= upto {
                        taken.push(entries.swap_remove(i));
                    } else {
                        i += 1;
                    }
                }
                if entries.is_empty() {
                    first.remove();
                }
                break;
            }
        }
        self.len -= taken.len();
        taken
    }

    /// The number of entries held (stale ones included).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every entry held, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &DueEntry> {
        let hot = self.hot.iter().flat_map(|(_, entries)| entries);
        self.buckets.values().flatten().chain(hot)
    }
}

impl FromIterator<DueEntry> for DueIndex {
    /// Sorts the entries by bucket and builds the tree in one go (a rebuild's entries come in
    /// group order, so pushing them one by one would search the tree for nearly every one).
    fn from_iter<I: IntoIterator<Item = DueEntry>>(entries: I) -> Self {
        let mut entries: Vec<DueEntry> = entries.into_iter().collect();
        entries.sort_unstable_by_key(|e| e.0 >> BUCKET_BITS);
        let len = entries.len();
        let buckets = entries
            .chunk_by(|a, b| a.0 >> BUCKET_BITS == b.0 >> BUCKET_BITS)
            .map(|run| (run[0].0 >> BUCKET_BITS, run.to_vec()))
            .collect();
        DueIndex {
            buckets,
            hot: None,
            len,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn takes_whole_buckets_and_splits_the_last() {
        let mut d: DueIndex = [
            (5, 0, 0),
            (2047, 1, 0),
            (1024, 2, 0),
            (-3, 3, 0),
            (i64::MAX, 4, 0),
        ]
        .into_iter()
        .collect();
        assert_eq!(d.len(), 5);
        let mut t = d.take_upto(1500);
        t.sort_unstable();
        assert_eq!(t, [(-3, 3, 0), (5, 0, 0), (1024, 2, 0)]);
        assert_eq!(d.len(), 2);
        assert_eq!(d.take_upto(1500), []);
        assert_eq!(d.take_upto(2047), [(2047, 1, 0)]);
        assert_eq!(d.take_upto(i64::MAX), [(i64::MAX, 4, 0)]);
        assert!(d.is_empty());
    }

    proptest! {
        /// An index collected at once holds what pushing the entries one by one holds, and
        /// gives the same entries up to any bound.
        #[test]
        fn collecting_is_pushing(
            entries in proptest::collection::vec((-5000_i64..5000, 0_u32..4, 0_i64..3), 0..300),
            bound in -6000_i64..6000,
        ) {
            let mut collected: DueIndex = entries.iter().copied().collect();
            let mut pushed = DueIndex::new();
            for e in &entries {
                pushed.push(*e);
            }
            prop_assert_eq!(collected.len(), entries.len());
            let mut a: Vec<DueEntry> = collected.iter().copied().collect();
            let mut b: Vec<DueEntry> = pushed.iter().copied().collect();
            a.sort_unstable();
            b.sort_unstable();
            prop_assert_eq!(a, b);
            let mut a = collected.take_upto(bound);
            let mut b = pushed.take_upto(bound);
            a.sort_unstable();
            b.sort_unstable();
            prop_assert_eq!(a, b);
            prop_assert_eq!(collected.len(), pushed.len());
        }

        /// Against a sorted list: any interleaving of pushes and takes takes exactly the
        /// entries at or below each bound, duplicates included.
        #[test]
        fn takes_what_a_sorted_list_would(
            ops in proptest::collection::vec(
                prop_oneof![
                    (-5000_i64..5000, 0_u32..4).prop_map(|(k, g)| (true, k, g)),
                    (-6000_i64..6000).prop_map(|k| (false, k, 0)),
                    Just((false, i64::MAX, 0)),
                    (i64::MIN..i64::MIN + 3000).prop_map(|k| (true, k, 9)),
                ],
                0..200,
            ),
        ) {
            let mut d = DueIndex::new();
            let mut model: Vec<DueEntry> = Vec::new();
            for (push, k, g) in ops {
                if push {
                    d.push((k, g, 7));
                    model.push((k, g, 7));
                } else {
                    let mut got = d.take_upto(k);
                    got.sort_unstable();
                    let mut want: Vec<DueEntry> =
                        model.iter().copied().filter(|e| e.0 <= k).collect();
                    want.sort_unstable();
                    model.retain(|e| e.0 > k);
                    prop_assert_eq!(got, want);
                }
                prop_assert_eq!(d.len(), model.len());
                let mut all: Vec<DueEntry> = d.iter().copied().collect();
                all.sort_unstable();
                let mut m = model.clone();
                m.sort_unstable();
                prop_assert_eq!(all, m);
            }
        }
    }
}
