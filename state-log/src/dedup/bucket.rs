//! One bucket of the dedup filter in memory: its number (its stored batches are the key range
//! of that number in the filter's `ids` column family, the truth), and the two structures
//! derived from them that answer lookups without reading RocksDB — its bloom filter and its
//! locator — with its counts. No I/O here: the filter reads and writes the column family and
//! tells the bucket what it stored where.

use super::bloom::BloomBits;
use super::config::DedupConfig;
use super::hash::IdHash;
use super::locator::Locator;

/// The number of a column family named `<prefix><digits>`, or `None` for any other name (the
/// column families of buckets in earlier layouts were named so).
pub(super) fn parse_name(name: &str, prefix: &str) -> Option<u64> {
    let digits = name.strip_prefix(prefix)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// One bucket: its number and what is derived from the ids stored under it.
pub(super) struct Bucket {
    /// The bucket's number (buckets are started in increasing order).
    pub(super) seq: u64,
    /// The fast "no".
    pub(super) bloom: BloomBits,
    /// Which stored batches may hold an id, consulted after a bloom "maybe".
    pub(super) locator: Locator,
    /// Number of the next stored batch.
    pub(super) next_batch: u32,
    /// Ids noted (an id inserted twice counts twice).
    pub(super) count: u64,
}

impl Bucket {
    /// An empty bucket `seq` sized for `items` ids (at least the configured bucket size).
    pub(super) fn new(seq: u64, items: u64, config: &DedupConfig) -> Bucket {
        let items = config.bucket_size.max(items).max(1) as usize;
        Bucket {
            seq,
            bloom: BloomBits::new(items, config.false_positive_rate),
            locator: Locator::with_capacity(items),
            next_batch: 0,
            count: 0,
        }
    }

    /// Records that stored batch `batch` holds an id of hash `h`.
    #[inline]
    pub(super) fn note(&mut self, h: IdHash, batch: u32) {
        self.bloom.set(h);
        self.count += 1;
        self.locator.note(h.key(), batch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earlier_layouts_names_parse_to_their_numbers() {
        assert_eq!(parse_name("coded-00000000000000000007", "coded-"), Some(7));
        assert_eq!(parse_name("bucket-12", "bucket-"), Some(12));
        for other in [
            "default",
            "ids",
            "coded-",
            "coded-12a",
            "coded--1",
            "batches-1",
        ] {
            assert_eq!(parse_name(other, "coded-"), None, "{other}");
        }
    }
}
