//! The shape of a dedup filter ([`DedupConfig`]): ids per bucket, buckets kept, and the bloom
//! filters' false-positive rate; together they set the horizon, how many of the most recent
//! ids the filter is sure to remember.

use crate::error::{Error, Result};

/// Shape of a [`DedupFilter`](super::DedupFilter).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DedupConfig {
    /// Ids per bucket before a new bucket is started.
    pub bucket_size: u64,
    /// Buckets kept; the oldest is dropped when a new one would exceed this.
    pub num_buckets: usize,
    /// Target false-positive rate of each bucket's bloom filter (a false positive costs a
    /// locator lookup and rarely one RocksDB read, never a wrong answer).
    pub false_positive_rate: f64,
}

impl Default for DedupConfig {
    /// 5 buckets of 200 000 ids (horizon 800 000 – 1 000 000 ids), 1 % false positives
    /// (about 300 KB of bloom filter per full bucket). Few, large buckets make a lookup cheap
    /// (one bloom probe per bucket) and rotations (a memtable flush and a range delete) rare;
    /// the open bucket's locator stays one bounded chunk whatever the bucket size. The maximum
    /// horizon is what memory holds (sealed locators, blooms, RocksDB memtables: ~12 bytes per
    /// id), and is the same as 10 buckets of 100 000 (BENCHMARKS.md, sessions 17 and 18).
    fn default() -> Self {
        Self {
            bucket_size: 200_000,
            num_buckets: 5,
            false_positive_rate: 0.01,
        }
    }
}

impl DedupConfig {
    /// `(guaranteed, maximum)` number of most recent inserts remembered:
    /// `((num_buckets - 1) × bucket_size, num_buckets × bucket_size)`.
    pub fn horizon(&self) -> (u64, u64) {
        let n = self.num_buckets as u64;
        (n.saturating_sub(1) * self.bucket_size, n * self.bucket_size)
    }

    /// Refuses a shape no filter can have (no bucket, empty buckets, a rate outside (0, 1)).
    pub(super) fn validate(&self) -> Result<()> {
        if self.bucket_size == 0 || self.num_buckets == 0 {
            return Err(Error::InvalidRequest(
                "dedup filter needs bucket_size > 0 and num_buckets > 0".into(),
            ));
        }
        if !(self.false_positive_rate > 0.0 && self.false_positive_rate < 1.0) {
            return Err(Error::InvalidRequest(
                "dedup false_positive_rate must be in (0, 1)".into(),
            ));
        }
        Ok(())
    }
}
