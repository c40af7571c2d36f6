//! A bucket's locator: 32 bits of an id's hash → the numbers of the stored batches that may
//! hold the id. It is consulted only after a bloom "maybe", and it narrows the confirmation in
//! RocksDB to one stored batch (rarely a few: another id with the same 32 bits, or the same id
//! inserted again in a later batch). Pure in-memory logic: it knows keys and batch numbers,
//! neither ids nor RocksDB. A locator is a list of chunks, each covering a run of stored
//! batches: the newest bucket's last chunk is a hash map that takes keys, every other chunk is
//! sealed into a sorted array with a directory, smaller and read-only.

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
    /// The newest chunk of the newest bucket, still taking ids.
    Open(KeyMap<u32>),
    /// A chunk that takes no more ids.
    Sealed(Sorted),
}

impl Firsts {
    /// The first batch noted for `key`.
    #[inline]
    pub(super) fn get(&self, key: u32) -> Option<u32> {
        match self {
            Firsts::Open(m) => m.get(&key).copied(),
            Firsts::Sealed(s) => s.get(key),
        }
    }

    /// Makes the locator sealed (no-op if it is).
    pub(super) fn seal(&mut self) {
        if let Firsts::Open(m) = self {
            let sorted = Sorted::new(m.iter().map(|(&k, &b)| (k, b)));
            *self = Firsts::Sealed(sorted);
        }
    }
}

/// Pairs per directory slot of a [`Sorted`], on average.
const PAIRS_PER_SLOT: usize = 8;

/// `(key, batch)` pairs sorted by key: 8 bytes per key instead of a hash table's ~9 per slot at
/// ~80 % load. A directory gives the first pair of each run of keys that share their top bits,
/// about [`PAIRS_PER_SLOT`]–16 pairs each, so a lookup (only after a bloom "maybe") searches one
/// or two cache lines instead of binary-searching the whole array (a bloom false positive
/// probes every chunk of a bucket). Locator keys are hash bits, so the runs are even. The
/// directory costs 0.25–0.5 bytes per key.
pub(super) struct Sorted {
    /// The pairs, sorted by key.
    pairs: Box<[(u32, u32)]>,
    /// `starts[s]` is the index of the first pair whose key's top bits are `s` or more; one
    /// more entry than there are slots, so that `starts[s + 1]` ends slot `s`.
    starts: Box<[u32]>,
    /// A key's slot is `key >> shift` (as a 64-bit shift, so 32 gives slot 0).
    shift: u32,
}

impl Sorted {
    /// Sorts `pairs` and builds their directory. A counting sort on the directory's slots
    /// (one pass to count, one to place; the counts are the directory), then each slot's run,
    /// about [`PAIRS_PER_SLOT`] pairs, sorted on its own: linear in the pairs where a
    /// comparison sort of them all took about 200 instructions a pair (a bucket's locator is
    /// sealed once per 56 320 ids, on the exactly-once path).
    pub(super) fn new<I>(pairs: I) -> Sorted
    where
        I: ExactSizeIterator<Item = (u32, u32)> + Clone,
    {
        let n = pairs.len();
        let bits = (n / PAIRS_PER_SLOT).max(1).ilog2().min(24);
        let shift = 32 - bits;
        let slot = |k: u32| ((k as u64) >> shift) as usize;
        let slots = 1usize << bits;
        // `starts[s + 1]` counts slot `s`'s pairs, then (summed) ends its run.
        let mut starts = vec![0u32; slots + 1];
        for (k, _) in pairs.clone() {
            starts[slot(k) + 1] += 1;
        }
        for s in 0..slots {
            starts[s + 1] += starts[s];
        }
        let mut next = starts[..slots].to_vec();
        let mut placed = vec![(0u32, 0u32); starts[slots] as usize];
        for (k, b) in pairs {
            let at = &mut next[slot(k)];
            placed[*at as usize] = (k, b);
            *at += 1;
        }
        for run in starts.windows(2) {
            placed[run[0] as usize..run[1] as usize].sort_unstable_by_key(|&(k, _)| k);
        }
        Sorted {
            pairs: placed.into(),
            starts: starts.into(),
            shift,
        }
    }

    /// The batch paired with `key`.
    #[inline]
    pub(super) fn get(&self, key: u32) -> Option<u32> {
        let s = ((key as u64) >> self.shift) as usize;
        let run = &self.pairs[self.starts[s] as usize..self.starts[s + 1] as usize];
        run.binary_search_by_key(&key, |&(k, _)| k)
            .ok()
            .map(|i| run[i].1)
    }

    /// Number of pairs.
    pub(super) fn len(&self) -> usize {
        self.pairs.len()
    }

    /// The pairs, sorted by key.
    #[cfg(test)]
    pub(super) fn pairs(&self) -> &[(u32, u32)] {
        &self.pairs
    }
}

/// Keys a chunk's hash map takes before the chunk is sealed at the next stored batch: a stored
/// batch adds at most 1 024 more, and 56 320 + 1 023 stays under 57 344, the most a map of
/// 65 536 slots holds before it doubles. However large a bucket is, its open part is one such
/// map (~600 KB) and the sorted copy made while sealing it (~450 KB).
pub(super) const CHUNK_KEYS: usize = 56_320;

/// What a map sized for [`CHUNK_KEYS`] plus one stored batch is created with.
const CHUNK_CAPACITY: usize = 57_344;

/// The locator of a run of consecutive stored batches: for each key, the batches noted for it,
/// in the order they were noted, each once.
pub(super) struct Chunk {
    /// Key → the first batch noted for it (almost every key has only this one).
    pub(super) first: Firsts,
    /// Further batches for a key (another id with the same 32 bits, or an id inserted again in
    /// a later batch): about one entry per 100 000 ids.
    pub(super) more: KeyMap<Vec<u32>>,
}

impl Chunk {
    fn open(keys: usize) -> Chunk {
        Chunk {
            first: Firsts::Open(KeyMap::with_capacity_and_hasher(
                keys.min(CHUNK_CAPACITY),
                Default::default(),
            )),
            more: KeyMap::default(),
        }
    }

    fn len(&self) -> usize {
        match &self.first {
            Firsts::Open(m) => m.len(),
            Firsts::Sealed(v) => v.len(),
        }
    }

    fn batches(&self, key: u32) -> impl Iterator<Item = u32> + '_ {
        self.first
            .get(key)
            .into_iter()
            .chain(self.more.get(&key).into_iter().flatten().copied())
    }
}

/// The locator of one bucket: for each key, the stored batches noted for it, in the order
/// they were noted, each once. It is a list of chunks, each the locator of a run of
/// consecutive stored batches; all but the last are sealed, and the last is sealed too once
/// it holds [`CHUNK_KEYS`] keys (at the next stored batch) or the bucket is. A bucket of any
/// size thus keeps at most one hash map, of bounded size; a lookup (only after a bloom "maybe")
/// consults every chunk.
pub(super) struct Locator {
    /// Chunks in the order of their stored batches; never empty.
    pub(super) chunks: Vec<Chunk>,
    /// Keys the bucket is expected to take, for sizing the next open chunk.
    expected: usize,
    /// The last batch noted, if any.
    last: Option<u32>,
    /// Keys after which the open chunk is sealed at the next stored batch ([`CHUNK_KEYS`]).
    chunk_keys: usize,
}

impl Locator {
    /// An open locator expecting `keys` keys (its open chunk takes at most [`CHUNK_KEYS`] and one
    /// stored batch without growing).
    pub(super) fn with_capacity(keys: usize) -> Locator {
        Locator {
            chunks: vec![Chunk::open(keys)],
            expected: keys,
            last: None,
            chunk_keys: CHUNK_KEYS,
        }
    }

    /// [`Locator::with_capacity`] with chunks sealed after `chunk_keys` keys: tests reach
    /// several chunks with few keys.
    #[cfg(test)]
    pub(super) fn with_chunks(keys: usize, chunk_keys: usize) -> Locator {
        Locator {
            chunk_keys,
            ..Locator::with_capacity(keys)
        }
    }

    /// Records that stored batch `batch` holds an id with `key`. Batches are noted in
    /// non-decreasing order (a bucket fills its stored batches one after the other).
    ///
    /// # Panics
    /// If the locator is sealed: ids go to the newest bucket only, which is never sealed.
    #[inline]
    pub(super) fn note(&mut self, key: u32, batch: u32) {
        if self.last != Some(batch) {
            self.start_batch(batch);
        }
        let chunk = self.chunks.last_mut().expect("never empty");
        let Firsts::Open(first) = &mut chunk.first else {
            unreachable!("ids go to the newest bucket only, which is never sealed");
        };
        match first.entry(key) {
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(batch);
            }
            std::collections::hash_map::Entry::Occupied(e) => {
                if *e.get() != batch {
                    let more = chunk.more.entry(key).or_default();
                    if more.last() != Some(&batch) {
                        more.push(batch);
                    }
                }
            }
        }
    }

    /// Notes that ids of stored batch `batch` follow: the open chunk is sealed, and a new one
    /// opened, if it holds [`Locator::chunk_keys`] keys (so a batch never spans two chunks).
    fn start_batch(&mut self, batch: u32) {
        self.last = Some(batch);
        let chunk = self.chunks.last_mut().expect("never empty");
        if let Firsts::Open(m) = &chunk.first {
            if m.len() >= self.chunk_keys {
                chunk.first.seal();
                let noted: usize = self.chunks.iter().map(Chunk::len).sum();
                self.chunks
                    .push(Chunk::open(self.expected.saturating_sub(noted)));
            }
        }
    }

    /// The batches noted for `key`, first noted first (none for a key never noted). Chunks
    /// cover disjoint runs of batches, so no batch comes twice.
    pub(super) fn batches(&self, key: u32) -> impl Iterator<Item = u32> + '_ {
        self.chunks.iter().flat_map(move |c| c.batches(key))
    }

    /// Seals the locator: it takes no more keys and holds its first batches in sorted arrays
    /// (no-op if it is sealed).
    pub(super) fn seal(&mut self) {
        self.chunks.last_mut().expect("never empty").first.seal();
    }

    /// True once [`Locator::seal`] was called.
    #[cfg(test)]
    pub(super) fn is_sealed(&self) -> bool {
        self.chunks
            .iter()
            .all(|c| matches!(c.first, Firsts::Sealed(_)))
    }

    /// Makes every key of `keys` name `batches` in the first chunk: forces locator collisions
    /// for tests of the confirmation.
    #[cfg(test)]
    pub(super) fn force(&mut self, keys: &[u32], batches: &[u32]) {
        let c = &mut self.chunks[0];
        for &k in keys {
            match &mut c.first {
                Firsts::Open(m) => {
                    m.insert(k, batches[0]);
                }
                Firsts::Sealed(v) => {
                    let mut all: Vec<(u32, u32)> =
                        v.pairs().iter().copied().filter(|e| e.0 != k).collect();
                    all.push((k, batches[0]));
                    *v = Sorted::new(all.into_iter());
                }
            }
            c.more.insert(k, batches[1..].to_vec());
        }
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

    /// The open chunk is sealed at the first new batch after it holds `chunk_keys` keys, never
    /// inside a batch; only the last chunk is open, and sealing the locator seals it.
    #[test]
    fn chunks_are_sealed_between_batches() {
        let mut l = Locator::with_chunks(100, 2);
        for (key, batch) in [
            (1, 0),
            (2, 0),
            (3, 0),
            (4, 0),
            (5, 1),
            (1, 1),
            (6, 2),
            (1, 2),
        ] {
            l.note(key, batch);
        }
        let lens: Vec<usize> = l.chunks.iter().map(Chunk::len).collect();
        assert_eq!(lens, [4, 2, 2], "batch 0 whole, then batch 1, then batch 2");
        let open: Vec<bool> = l
            .chunks
            .iter()
            .map(|c| matches!(c.first, Firsts::Open(_)))
            .collect();
        assert_eq!(open, [false, false, true]);
        assert_eq!(l.batches(1).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(l.batches(4).collect::<Vec<_>>(), [0]);
        l.seal();
        assert!(l.is_sealed());
        assert_eq!(l.batches(1).collect::<Vec<_>>(), [0, 1, 2]);
    }

    #[test]
    #[should_panic(expected = "never sealed")]
    fn a_sealed_locator_takes_no_keys() {
        let mut l = Locator::with_capacity(1);
        l.seal();
        l.note(1, 0);
    }

    proptest! {
        /// A sorted chunk finds the batch of every key it holds and none for any other key,
        /// whatever the number of keys (the directory's size follows it) and wherever the keys
        /// fall (both ends of the key space included).
        #[test]
        fn sorted_pairs_find_exactly_their_keys(
            keys in proptest::collection::btree_set(
                prop_oneof![any::<u32>(), Just(0u32), Just(u32::MAX), 0u32..64, (u32::MAX - 64)..],
                0..3_000,
            ),
            probes in proptest::collection::vec(any::<u32>(), 0..200),
        ) {
            let pairs: Vec<(u32, u32)> = keys.iter().map(|&k| (k, k.wrapping_mul(7))).collect();
            let mut shuffled = pairs.clone();
            shuffled.reverse();
            let sorted = Sorted::new(shuffled.into_iter());
            prop_assert_eq!(sorted.pairs(), &pairs[..], "sorted by key");
            prop_assert_eq!(sorted.len(), pairs.len());
            for &(k, b) in &pairs {
                prop_assert_eq!(sorted.get(k), Some(b));
            }
            for p in probes.into_iter().chain([0, u32::MAX]) {
                let want = keys.contains(&p).then(|| p.wrapping_mul(7));
                prop_assert_eq!(sorted.get(p), want);
            }
        }

        /// Whatever keys are noted (collisions included), each key gives back exactly the
        /// distinct batches noted for it, in order, before and after sealing.
        #[test]
        fn gives_back_every_batch_noted_for_a_key(
            notes in proptest::collection::vec((0u32..16, 0u32..4), 0..200),
            chunk_keys in prop_oneof![1usize..6, Just(CHUNK_KEYS)],
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
            let mut l = Locator::with_chunks(notes.len(), chunk_keys);
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
