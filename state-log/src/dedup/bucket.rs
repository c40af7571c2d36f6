//! One bucket of the dedup filter in memory: the name of the RocksDB column family that holds
//! its ids (the truth), and the two structures derived from them that answer lookups without
//! reading RocksDB — its bloom filter and its locator — with its counts. No I/O here: the
//! filter reads and writes the column family and tells the bucket what it stored where.

use super::bloom::BloomBits;
use super::config::DedupConfig;
use super::hash::IdHash;
use super::locator::Locator;

/// Column families of buckets: `coded-<seq>` (stored batches of labelled ids, each coded against
/// the one before it).
const BUCKET_PREFIX: &str = "coded-";

/// The column family of bucket `seq`: `coded-` and the number in 20 digits, so that names
/// sort as numbers do.
pub(super) fn bucket_name(seq: u64) -> String {
    format!("{BUCKET_PREFIX}{seq:020}")
}

/// The bucket number of a column family named `<prefix><digits>`, or `None` for any other name.
pub(super) fn parse_name(name: &str, prefix: &str) -> Option<u64> {
    let digits = name.strip_prefix(prefix)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The bucket number of a column family of the current layout ([`bucket_name`]).
pub(super) fn parse_bucket_name(name: &str) -> Option<u64> {
    parse_name(name, BUCKET_PREFIX)
}

/// One bucket: its column family and what is derived from the ids stored in it.
pub(super) struct Bucket {
    /// The bucket's number (buckets are started in increasing order).
    pub(super) seq: u64,
    /// The column family's name, made once.
    pub(super) name: String,
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
            name: bucket_name(seq),
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
    fn names_sort_as_numbers_and_parse_back() {
        assert_eq!(bucket_name(7), "coded-00000000000000000007");
        assert!(bucket_name(9) < bucket_name(10));
        for seq in [0, 7, u64::MAX] {
            assert_eq!(parse_bucket_name(&bucket_name(seq)), Some(seq));
        }
        for other in [
            "default",
            "coded-",
            "coded-12a",
            "labelled-1",
            "bucket-1",
            "batches-1",
            "coded--1",
        ] {
            assert_eq!(parse_bucket_name(other), None, "{other}");
        }
    }
}
