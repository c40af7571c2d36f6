//! The dedup filter: "has this segment id been applied?" for exactly-once state.
//!
//! Ids live in rotating **buckets**. Each bucket is a RocksDB column family (the truth) with an
//! in-memory bloom filter in front of it (the fast "no"): a lookup asks each bucket's bloom
//! filter, newest first, and confirms a "maybe" with a RocksDB point read, so the answer is
//! exact. When the newest bucket holds `bucket_size` ids a new bucket is started, and once there
//! are more than `num_buckets` buckets the oldest one is dropped with its column family.
//!
//! **Horizon.** The filter remembers the most recent inserts: always at least
//! `(num_buckets - 1) × bucket_size` ids and at most `num_buckets × bucket_size`
//! ([`DedupConfig::horizon`]); an id inserted longer ago than that may be forgotten (and a
//! redelivery of it counted again). Size the horizon to cover every id that can be redelivered:
//! inputs resume from their last committed position, so a horizon well beyond the ids of one
//! checkpoint interval suffices.
//!
//! **Durability.** Writes go through RocksDB's WAL without fsync: the filter is derived state.
//! The engine stores its contents ([`DedupFilter::export`]) in ledger snapshots and re-inserts
//! the ids of replayed ledger entries on recovery ([`DedupFilter::import`], then
//! [`DedupFilter::insert_batch`]).

use std::collections::VecDeque;
use std::path::Path;

use bloomfilter::Bloom;
use rocksdb::{IteratorMode, Options, WriteBatch, DB};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::codec;
use crate::error::{Error, Result};

/// Shape of a [`DedupFilter`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DedupConfig {
    /// Ids per bucket before a new bucket is started.
    pub bucket_size: u64,
    /// Buckets kept; the oldest is dropped when a new one would exceed this.
    pub num_buckets: usize,
    /// Target false-positive rate of each bucket's bloom filter (a false positive costs one
    /// RocksDB read, never a wrong answer).
    pub false_positive_rate: f64,
}

impl Default for DedupConfig {
    /// 10 buckets of 100 000 ids (horizon 900 000 – 1 000 000 ids), 1 % false positives
    /// (about 120 KB of bloom filter per full bucket).
    fn default() -> Self {
        Self {
            bucket_size: 100_000,
            num_buckets: 10,
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

    fn validate(&self) -> Result<()> {
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

/// A fixed seed keeps bloom filters reproducible (they are rebuilt from RocksDB on open).
const BLOOM_SEED: [u8; 32] = *b"sardonyx-dedup-filter-bloom-seed";

struct Bucket {
    seq: u64,
    bloom: Bloom<[u8]>,
    count: u64,
}

fn bucket_name(seq: u64) -> String {
    format!("bucket-{seq:020}")
}

fn parse_bucket_name(name: &str) -> Option<u64> {
    name.strip_prefix("bucket-")?.parse().ok()
}

/// The exported contents of a filter: its buckets' ids, oldest bucket first.
#[derive(Serialize, Deserialize)]
struct Export {
    buckets: Vec<Vec<ByteBuf>>,
}

/// A local, persistent set of recently seen ids in rotating buckets (see the module docs).
pub struct DedupFilter {
    db: DB,
    config: DedupConfig,
    /// Oldest first; never empty.
    buckets: VecDeque<Bucket>,
}

impl std::fmt::Debug for DedupFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DedupFilter")
            .field("config", &self.config)
            .field("buckets", &self.buckets.len())
            .field("len", &self.len())
            .finish()
    }
}

impl DedupFilter {
    /// Opens (or creates) the filter stored under `dir`, rebuilding the bloom filters from its
    /// buckets. If `config` keeps fewer buckets than are stored, the oldest are dropped.
    pub fn open(dir: impl AsRef<Path>, config: DedupConfig) -> Result<DedupFilter> {
        config.validate()?;
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir)?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let existing = DB::list_cf(&opts, dir).unwrap_or_default();
        let mut seqs: Vec<u64> = existing
            .iter()
            .filter_map(|n| parse_bucket_name(n))
            .collect();
        seqs.sort_unstable();
        let mut names: Vec<String> = vec!["default".into()];
        names.extend(seqs.iter().map(|s| bucket_name(*s)));
        let db = DB::open_cf(&opts, dir, &names)?;
        let mut filter = DedupFilter {
            db,
            config,
            buckets: VecDeque::new(),
        };
        for seq in seqs {
            let name = bucket_name(seq);
            let handle = filter.db.cf_handle(&name).expect("opened above");
            let mut ids = Vec::new();
            for kv in filter.db.iterator_cf(handle, IteratorMode::Start) {
                let (k, _) = kv?;
                ids.push(k);
            }
            let mut bucket = filter.new_bucket(seq, ids.len() as u64)?;
            for id in &ids {
                bucket.bloom.set(id);
            }
            bucket.count = ids.len() as u64;
            filter.buckets.push_back(bucket);
        }
        if filter.buckets.is_empty() {
            filter.start_bucket(0)?;
        }
        filter.drop_excess()?;
        Ok(filter)
    }

    fn new_bucket(&self, seq: u64, at_least: u64) -> Result<Bucket> {
        let items = self.config.bucket_size.max(at_least).max(1) as usize;
        let bloom =
            Bloom::new_for_fp_rate_with_seed(items, self.config.false_positive_rate, &BLOOM_SEED)
                .map_err(|e| Error::InvalidRequest(format!("bloom filter: {e}")))?;
        Ok(Bucket {
            seq,
            bloom,
            count: 0,
        })
    }

    fn start_bucket(&mut self, seq: u64) -> Result<()> {
        self.db.create_cf(bucket_name(seq), &Options::default())?;
        let b = self.new_bucket(seq, 0)?;
        self.buckets.push_back(b);
        Ok(())
    }

    fn drop_excess(&mut self) -> Result<()> {
        while self.buckets.len() > self.config.num_buckets {
            let old = self.buckets.pop_front().expect("non-empty");
            self.db.drop_cf(&bucket_name(old.seq))?;
        }
        Ok(())
    }

    /// Starts a new bucket and drops the oldest past `num_buckets`.
    fn rotate(&mut self) -> Result<()> {
        let seq = self.buckets.back().map_or(0, |b| b.seq + 1);
        self.start_bucket(seq)?;
        self.drop_excess()
    }

    /// True if `id` was inserted within the horizon. Never a false "no" within the horizon;
    /// never a false "yes" (bloom "maybe" answers are confirmed in RocksDB).
    pub fn contains(&self, id: &[u8]) -> Result<bool> {
        for b in self.buckets.iter().rev() {
            if b.bloom.check(id) {
                let handle = self
                    .db
                    .cf_handle(&bucket_name(b.seq))
                    .expect("bucket column family exists");
                if self.db.get_pinned_cf(handle, id)?.is_some() {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Inserts ids into the newest bucket, rotating buckets as they fill.
    pub fn insert_batch<I, T>(&mut self, ids: I) -> Result<()>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<[u8]>,
    {
        let mut batch = WriteBatch::default();
        for id in ids {
            let id = id.as_ref();
            if self.buckets.back().expect("non-empty").count >= self.config.bucket_size {
                // Write what belongs to the full bucket before its handle may be dropped.
                self.db.write(std::mem::take(&mut batch))?;
                self.rotate()?;
            }
            let current = self.buckets.back_mut().expect("non-empty");
            let handle = self
                .db
                .cf_handle(&bucket_name(current.seq))
                .expect("bucket column family exists");
            batch.put_cf(handle, id, []);
            current.bloom.set(id);
            current.count += 1;
        }
        self.db.write(batch)?;
        Ok(())
    }

    /// Forgets every id.
    pub fn clear(&mut self) -> Result<()> {
        let next = self.buckets.back().map_or(0, |b| b.seq + 1);
        while let Some(b) = self.buckets.pop_front() {
            self.db.drop_cf(&bucket_name(b.seq))?;
        }
        self.start_bucket(next)
    }

    /// Ids currently stored (inserts counted per bucket; an id inserted twice into one bucket
    /// counts twice).
    pub fn len(&self) -> u64 {
        self.buckets.iter().map(|b| b.count).sum()
    }

    /// True if no id is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Buckets currently kept (1 ..= `num_buckets`).
    pub fn bucket_count(&self) -> usize {
        self.buckets.len()
    }

    /// The filter's shape.
    pub fn config(&self) -> DedupConfig {
        self.config
    }

    /// Serializes every stored id with its bucket boundaries (for a ledger snapshot).
    pub fn export(&self) -> Result<Vec<u8>> {
        let mut buckets = Vec::with_capacity(self.buckets.len());
        for b in &self.buckets {
            let handle = self
                .db
                .cf_handle(&bucket_name(b.seq))
                .expect("bucket column family exists");
            let mut ids = Vec::new();
            for kv in self.db.iterator_cf(handle, IteratorMode::Start) {
                let (k, _) = kv?;
                ids.push(ByteBuf::from(k.into_vec()));
            }
            buckets.push(ids);
        }
        codec::encode(&Export { buckets })
    }

    /// Replaces the contents with an [`DedupFilter::export`], keeping its bucket boundaries (the
    /// oldest buckets are dropped if the export has more than `num_buckets`).
    pub fn import(&mut self, bytes: &[u8]) -> Result<()> {
        let export: Export = codec::decode(bytes).map_err(|detail| Error::Corrupt {
            ledger: String::from("<dedup filter export>"),
            position: 0,
            detail,
        })?;
        self.clear()?;
        for (i, ids) in export.buckets.into_iter().enumerate() {
            if i > 0 {
                self.rotate()?;
            }
            let current = self.buckets.back_mut().expect("non-empty");
            if ids.len() as u64 > self.config.bucket_size {
                // A bucket from a filter with larger buckets: size its bloom filter to fit.
                let seq = current.seq;
                *current = Bucket {
                    seq,
                    bloom: Bloom::new_for_fp_rate_with_seed(
                        ids.len(),
                        self.config.false_positive_rate,
                        &BLOOM_SEED,
                    )
                    .map_err(|e| Error::InvalidRequest(format!("bloom filter: {e}")))?,
                    count: 0,
                };
            }
            let current = self.buckets.back_mut().expect("non-empty");
            let handle = self
                .db
                .cf_handle(&bucket_name(current.seq))
                .expect("bucket column family exists");
            let mut batch = WriteBatch::default();
            for id in &ids {
                batch.put_cf(handle, id.as_slice(), []);
                current.bloom.set(id.as_slice());
            }
            current.count = ids.len() as u64;
            self.db.write(batch)?;
        }
        Ok(())
    }
}
