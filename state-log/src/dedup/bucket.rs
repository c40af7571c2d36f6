//! The in-memory index of one bucket: its bloom filter, its locator and its counts.

use super::bloom::BloomBits;
use super::config::DedupConfig;
use super::filter::bucket_name;
use super::hash::IdHash;
use super::locator::{Firsts, KeyMap};

pub(super) struct Bucket {
    pub(super) seq: u64,
    /// The column family's name, made once.
    pub(super) name: String,
    pub(super) bloom: BloomBits,
    /// Locator key → number of the first stored batch holding an id with that key.
    pub(super) first: Firsts,
    /// Further batches for a locator key (another id with the same 32 bits, or an id inserted
    /// again in a later batch): about one entry per 100 000 ids.
    pub(super) more: KeyMap<Vec<u32>>,
    /// Number of the next stored batch.
    pub(super) next_batch: u32,
    pub(super) count: u64,
}

impl Bucket {
    pub(super) fn new(seq: u64, items: u64, config: &DedupConfig) -> Bucket {
        let items = config.bucket_size.max(items).max(1) as usize;
        Bucket {
            seq,
            name: bucket_name(seq),
            bloom: BloomBits::new(items, config.false_positive_rate),
            // Sized up front (the table is rebuilt with every doubling otherwise).
            first: Firsts::Open(KeyMap::with_capacity_and_hasher(
                items.min(1 << 20),
                Default::default(),
            )),
            more: KeyMap::default(),
            next_batch: 0,
            count: 0,
        }
    }

    /// Records that stored batch `batch` holds an id of hash `h`.
    #[inline]
    pub(super) fn note(&mut self, h: IdHash, batch: u32) {
        self.bloom.set(h);
        self.count += 1;
        let Firsts::Open(first) = &mut self.first else {
            unreachable!("ids go to the newest bucket only, which is never sealed");
        };
        match first.entry(h.key()) {
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(batch);
            }
            std::collections::hash_map::Entry::Occupied(e) => {
                if *e.get() != batch {
                    let more = self.more.entry(h.key()).or_default();
                    if more.last() != Some(&batch) {
                        more.push(batch);
                    }
                }
            }
        }
    }
}
