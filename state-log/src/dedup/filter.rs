//! The [`DedupFilter`] and its RocksDB I/O: the buckets' stored batches (one column family, a
//! key range per bucket) and the mark in one database, opening (rebuilding every bucket's bloom
//! filter and locator from its stored batches), lookups (bloom, then locator, then one stored
//! batch read), inserts kept in memory until the newest bucket is written as one `WriteBatch`,
//! rotation, and the export and import of its ids. The decisions that need no I/O live in the
//! modules beside it: the hash, the bloom filter, the locator, the bucket, the stored batches'
//! and the export's layouts.

use std::collections::VecDeque;
use std::path::Path;

use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions, DB};

use super::bloom::BloomMask;
use super::bucket::{parse_name, Bucket};
use super::config::DedupConfig;
use super::export::{parse_export, ExportWriter};
use super::format::{batch_key, bucket_range, encode_id, parse_batch_key, scan_ids};
use super::hash::IdHash;
use crate::error::{Error, Result};

/// Ids per stored batch at most: a confirmation reads one stored batch and scans it for the id,
/// so this bounds its cost (about 10 KB for 9-byte ids).
const MAX_IDS_PER_BATCH: usize = 1024;

/// Memtable budget of the filter's database: ids are written once and read only to confirm a
/// rare bloom "maybe", so a smaller budget than the log's costs nothing measurable. Ids reach
/// it a whole bucket at a time, coded (about 400 KB per default bucket of integer ids), and a
/// full bucket's memtable is flushed at rotation, so the budget rarely fills.
const MEMTABLE_BYTES: usize = 1 << 20;
/// Block cache of the filter's database (confirmations and the rebuild on open read it).
const BLOCK_CACHE_BYTES: usize = 2 << 20;

/// Key of the mark in the default column family.
const MARK_KEY: &[u8] = b"mark";

/// The column family of every bucket's stored batches, under [`batch_key`]s. One column family
/// for all buckets, not one per bucket: creating and dropping a column family at each rotation
/// made RocksDB write and verify its OPTIONS file twice, about 35 million instructions per
/// rotation (50 rotations in a 10M-event run); dropping a bucket is now a range delete.
const IDS_CF: &str = "ids";

/// A key above every [`batch_key`] (which are 12 bytes): the end of a range delete of them all.
const PAST_ALL_KEYS: [u8; 13] = [0xff; 13];

/// Column families of buckets in layouts before the current one, no longer read:
/// `bucket-<seq>` (one key per id, before 2026-11-22), `batches-<seq>` (stored batches of
/// ids without labels, before 2026-12-06), `labelled-<seq>` (stored batches of whole ids,
/// before 2026-12-07) and `coded-<seq>` (stored batches as today, but one column family per
/// bucket, until `812e38d` of 2026-12-07).
const LEGACY_PREFIXES: [&str; 4] = ["bucket-", "batches-", "labelled-", "coded-"];

/// Ids an insert hashes (and whose bloom blocks it prefetches) ahead of the one it inserts:
/// enough loads in flight to cover a memory access, few enough that the blocks are still
/// cached when their turn comes.
const PREFETCH_AHEAD: usize = 8;

/// Ids a batch look-up prefetches the bloom blocks of (one per bucket) ahead of the one it
/// tests: with the default 5 buckets, 40 blocks in flight.
const LOOKUP_AHEAD: usize = 8;

/// Bytes of unwritten stored batches past which an insert writes them out at its end, so that
/// memory stays bounded whatever the bucket size and id length (a bucket of the default 200 000
/// ids is about 400 KB for the engine's integer ids, about 8 MB for 36-byte UUIDs).
const UNWRITTEN_BYTES: usize = 4 << 20;

/// The newest bucket's ids not yet written to RocksDB, and the mark to write with them (see
/// "Durability" in the module docs): the bucket's last stored batches, the last one open (it
/// takes ids until it holds [`MAX_IDS_PER_BATCH`]).
#[derive(Default)]
struct Unwritten {
    /// The values of the unwritten stored batches, in order; the number of the last one is the
    /// newest bucket's `next_batch - 1`.
    blobs: Vec<Vec<u8>>,
    /// Ids in the last blob.
    open_ids: usize,
    /// The last id of the last blob (ids are coded against the one before them).
    prev: Vec<u8>,
    /// Bytes in `blobs`.
    bytes: usize,
    /// The mark to write with them: `None` to leave the stored mark as it is, `Some(None)` to
    /// remove it, `Some(Some(m))` to store `m`.
    mark: Option<Option<Vec<u8>>>,
}

impl Unwritten {
    /// Adds `id` (of hash `h`) with its label to the open stored batch of `bucket` (the
    /// newest), starting a new stored batch when there is none open or the open one is full.
    #[inline]
    fn add(&mut self, bucket: &mut Bucket, label: Option<u16>, id: &[u8], h: IdHash) -> Result<()> {
        if self.blobs.is_empty() || self.open_ids == MAX_IDS_PER_BATCH {
            if bucket.next_batch == u32::MAX {
                return Err(Error::InvalidRequest(
                    "dedup filter bucket holds 2^32 stored batches: use larger insert batches"
                        .into(),
                ));
            }
            bucket.next_batch += 1;
            self.blobs.push(Vec::with_capacity(MAX_IDS_PER_BATCH * 2));
            self.open_ids = 0;
            self.prev.clear();
        }
        bucket.note(h, bucket.next_batch - 1);
        let blob = self.blobs.last_mut().expect("one is open");
        let before = blob.len();
        encode_id(blob, &mut self.prev, label, id);
        self.bytes += blob.len() - before;
        self.open_ids += 1;
        Ok(())
    }

    /// The number of the first unwritten stored batch of the newest bucket `bucket`.
    fn first(&self, bucket: &Bucket) -> u32 {
        bucket.next_batch - self.blobs.len() as u32
    }

    /// The unwritten stored batches of the newest bucket `bucket` with their numbers.
    fn numbered<'a>(&'a self, bucket: &Bucket) -> impl Iterator<Item = (u32, &'a [u8])> {
        (self.first(bucket)..).zip(self.blobs.iter().map(Vec::as_slice))
    }

    /// The unwritten stored batch `batch` of the newest bucket `bucket`, if it is one.
    fn blob(&self, bucket: &Bucket, batch: u32) -> Option<&[u8]> {
        let i = batch.checked_sub(self.first(bucket))?;
        self.blobs.get(i as usize).map(Vec::as_slice)
    }

    /// True if there is nothing to write.
    fn is_empty(&self) -> bool {
        self.blobs.is_empty() && self.mark.is_none()
    }
}

/// A local, persistent set of recently seen ids in rotating buckets (see the module docs).
pub struct DedupFilter {
    db: DB,
    config: DedupConfig,
    /// Oldest first; never empty.
    buckets: VecDeque<Bucket>,
    write_opts: WriteOptions,
    /// The newest bucket's ids and the mark not yet written.
    unwritten: Unwritten,
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
    /// Opens (or creates) the filter stored under `dir`, rebuilding the bloom filters and
    /// locators from its buckets' stored batches. If `config` keeps fewer buckets than are
    /// stored, the oldest are dropped.
    ///
    /// A directory that holds buckets of an earlier layout (`bucket-…` column families, one key
    /// per id, written by versions before 2026-11-22; `batches-…`, ids without labels, written
    /// before 2026-12-06; `labelled-…`, whole ids, written before 2026-12-07; `coded-…`, one
    /// column family per bucket, written until 2026-12-07) is not read: the filter forgets
    /// everything in it and opens empty and without a mark (logged as a warning). The engine
    /// then rebuilds it from the ledger, as it does for any filter whose mark does not name a
    /// replayed record.
    pub fn open(dir: impl AsRef<Path>, config: DedupConfig) -> Result<DedupFilter> {
        config.validate()?;
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir)?;
        let (opts, cache) = crate::store::db_options(MEMTABLE_BYTES, BLOCK_CACHE_BYTES)?;
        let existing = DB::list_cf(&opts, dir).unwrap_or_default();
        let legacy: Vec<(u64, String)> = existing
            .iter()
            .filter_map(|n| {
                let seq = LEGACY_PREFIXES.iter().find_map(|p| parse_name(n, p))?;
                Some((seq, n.clone()))
            })
            .collect();
        let mut names: Vec<String> = vec!["default".into(), IDS_CF.into()];
        names.extend(legacy.iter().map(|(_, n)| n.clone()));
        let cfs = (names.iter())
            .map(|n| rocksdb::ColumnFamilyDescriptor::new(n, crate::store::cf_options(&cache)));
        let db = DB::open_cf_descriptors(&opts, dir, cfs)?;
        let mut filter = DedupFilter {
            db,
            config,
            buckets: VecDeque::new(),
            write_opts: WriteOptions::default(),
            unwritten: Unwritten::default(),
        };
        let mut next = 0;
        if !legacy.is_empty() {
            tracing::warn!(
                dir = %dir.display(),
                legacy_buckets = legacy.len(),
                "dedup filter in a layout of earlier versions: no longer read; it opens empty, \
                 without a mark (the engine rebuilds it from the ledger)"
            );
            next = (legacy.iter().map(|(s, _)| *s))
                .max()
                .map_or(0, |s| s.saturating_add(1));
            filter.delete_mark()?;
            // Whatever a conversion cut short left in the current layout goes too.
            filter.delete_all_batches()?;
            for (_, name) in &legacy {
                filter.db.drop_cf(name)?;
            }
        }
        filter.buckets = filter.load_buckets()?;
        if filter.buckets.is_empty() {
            filter.start_bucket(next);
        }
        filter.drop_excess()?;
        let newest = filter.buckets.len() - 1;
        for b in filter.buckets.iter_mut().take(newest) {
            b.locator.seal();
        }
        Ok(filter)
    }

    /// The column family of the stored batches.
    fn ids_cf(&self) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(IDS_CF).expect("opened with the filter")
    }

    /// Deletes every stored batch, in one write.
    fn delete_all_batches(&self) -> Result<()> {
        let mut writes = WriteBatch::default();
        writes.delete_range_cf(self.ids_cf(), &[][..], &PAST_ALL_KEYS[..]);
        self.db.write_opt(writes, &self.write_opts)?;
        Ok(())
    }

    /// Removes the mark durably. Done before ids are forgotten: a filter emptied only in part
    /// must never look like the ledger prefix the mark names.
    fn delete_mark(&self) -> Result<()> {
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        self.db.delete_opt(MARK_KEY, &sync)?;
        Ok(())
    }

    /// Reads every bucket's stored batches (oldest bucket first) and rebuilds their bloom
    /// filters and locators.
    fn load_buckets(&self) -> Result<VecDeque<Bucket>> {
        let mut buckets = VecDeque::new();
        // One bucket's stored batches at a time: their ids are counted before its bloom filter
        // is sized.
        let mut batches: Vec<(u32, Box<[u8]>)> = Vec::new();
        let mut seq = None;
        for kv in self.db.iterator_cf(self.ids_cf(), IteratorMode::Start) {
            let (k, v) = kv?;
            let (s, n) = parse_batch_key(&k)?;
            if seq.is_some_and(|seq| seq != s) {
                buckets.push_back(self.load_bucket(seq.expect("checked"), &batches)?);
                batches.clear();
            }
            seq = Some(s);
            batches.push((n, v));
        }
        if let Some(seq) = seq {
            buckets.push_back(self.load_bucket(seq, &batches)?);
        }
        Ok(buckets)
    }

    /// Bucket `seq` rebuilt from its stored batches (numbered, in order).
    fn load_bucket(&self, seq: u64, batches: &[(u32, Box<[u8]>)]) -> Result<Bucket> {
        let mut count = 0u64;
        for (n, v) in batches {
            scan_ids(v, seq, *n, |_, _| {
                count += 1;
                false
            })?;
        }
        let mut bucket = Bucket::new(seq, count, &self.config);
        for (n, v) in batches {
            scan_ids(v, seq, *n, |_, id| {
                bucket.note(IdHash::of(id), *n);
                false
            })?;
            bucket.next_batch = n.saturating_add(1);
        }
        Ok(bucket)
    }

    /// Starts bucket `seq` (it has nothing stored yet, so nothing is written).
    fn start_bucket(&mut self, seq: u64) {
        self.buckets.push_back(Bucket::new(seq, 0, &self.config));
    }

    /// Drops the oldest buckets past `num_buckets`, with their stored batches.
    fn drop_excess(&mut self) -> Result<()> {
        if self.buckets.len() <= self.config.num_buckets {
            return Ok(());
        }
        let mut writes = WriteBatch::default();
        while self.buckets.len() > self.config.num_buckets {
            let old = self.buckets.pop_front().expect("non-empty");
            let (start, end) = bucket_range(old.seq);
            let end = end.as_ref().map_or(&PAST_ALL_KEYS[..], |e| &e[..]);
            writes.delete_range_cf(self.ids_cf(), &start[..], end);
        }
        self.db.write_opt(writes, &self.write_opts)?;
        Ok(())
    }

    /// Seals the newest bucket, starts a new one and drops the oldest past `num_buckets`.
    fn rotate(&mut self) -> Result<()> {
        // What belongs to the full bucket is written before its column family may be dropped.
        self.flush()?;
        if let Some(b) = self.buckets.back_mut() {
            b.locator.seal();
            // The full bucket takes no more writes: the memtable that holds its last stored
            // batches is flushed to a table file in the background now rather than held until
            // the memtable budget is reached, so that the filter's RocksDB memory is about one
            // bucket's recent writes, not several.
            let mut background = rocksdb::FlushOptions::default();
            background.set_wait(false);
            self.db.flush_cf_opt(self.ids_cf(), &background)?;
        }
        let seq = self.buckets.back().map_or(0, |b| b.seq + 1);
        self.start_bucket(seq);
        self.drop_excess()
    }

    /// True if stored batch `batch` of `bucket` holds exactly `id`.
    fn batch_holds(&self, bucket: &Bucket, batch: u32, id: &[u8]) -> Result<bool> {
        let newest = self.buckets.back().is_some_and(|b| b.seq == bucket.seq);
        if let Some(blob) = self.unwritten.blob(bucket, batch).filter(|_| newest) {
            return scan_ids(blob, bucket.seq, batch, |_, stored| stored == id);
        }
        let Some(blob) = self
            .db
            .get_pinned_cf(self.ids_cf(), batch_key(bucket.seq, batch))?
        else {
            return Ok(false);
        };
        scan_ids(&blob, bucket.seq, batch, |_, stored| stored == id)
    }

    /// True if `id` is stored in `bucket` (after a bloom "maybe").
    fn confirm(&self, bucket: &Bucket, h: IdHash, id: &[u8]) -> Result<bool> {
        for batch in bucket.locator.batches(h.key()) {
            if self.batch_holds(bucket, batch, id)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// True if `id` was inserted within the horizon. Never a false "no" within the horizon;
    /// never a false "yes" (bloom "maybe" answers are confirmed in RocksDB).
    pub fn contains(&self, id: &[u8]) -> Result<bool> {
        self.contains_hashed(IdHash::of(id), id)
    }

    fn contains_hashed(&self, h: IdHash, id: &[u8]) -> Result<bool> {
        let mask = BloomMask::of(h);
        for b in self.buckets.iter().rev() {
            if b.bloom.check_masked(h, &mask) && self.confirm(b, h, id)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// [`DedupFilter::contains`] for each of `ids`, in order, into `answers` (cleared first).
    ///
    /// Cheaper than one call per id: a lookup's cost is the cache misses of its bloom blocks
    /// (one per bucket), and here the blocks of all ids are tested in one tight pass with
    /// nothing between the loads, so the misses of many ids overlap instead of each lookup
    /// waiting for its own. Only ids some bloom says "maybe" to take the second pass (the
    /// confirmation).
    pub fn contains_each<'a, I>(&self, ids: I, answers: &mut Vec<bool>) -> Result<()>
    where
        I: IntoIterator<Item = &'a [u8]>,
        I::IntoIter: Clone,
    {
        let ids = ids.into_iter();
        answers.clear();
        let hashes: Vec<IdHash> = ids.clone().map(IdHash::of).collect();
        // Pass 1, branch-free: does any bucket's bloom say "maybe"? The blocks of the id
        // LOOKUP_AHEAD places on are prefetched: the loads of one id's blocks alone left most
        // of this pass waiting for memory.
        let ahead = hashes
            .iter()
            .skip(LOOKUP_AHEAD)
            .map(Some)
            .chain(std::iter::repeat(None));
        answers.extend(hashes.iter().zip(ahead).map(|(&h, next)| {
            if let Some(&next) = next {
                for b in &self.buckets {
                    b.bloom.prefetch(next);
                }
            }
            let mask = BloomMask::of(h);
            self.buckets
                .iter()
                .fold(false, |m, b| m | b.bloom.check_masked(h, &mask))
        }));
        // Pass 2: confirm the "maybe"s.
        for ((answer, id), &h) in answers.iter_mut().zip(ids).zip(&hashes) {
            if *answer {
                *answer = self.contains_hashed(h, id)?;
            }
        }
        Ok(())
    }

    /// Inserts ids without labels into the newest bucket, rotating buckets as they fill. The
    /// ids go into the newest bucket's stored batches in memory; RocksDB sees them when the
    /// bucket is full or on [`DedupFilter::flush`] (see "Durability" in the module docs).
    /// Removes the mark.
    pub fn insert_batch<I, T>(&mut self, ids: I) -> Result<()>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<[u8]>,
    {
        self.insert_batch_marked(ids, None)
    }

    /// [`DedupFilter::insert_batch`], storing `mark` (or removing the mark, for `None`) with
    /// the ids: any write that stores them stores the mark too (a call with no ids only sets
    /// the mark).
    pub fn insert_batch_marked<I, T>(&mut self, ids: I, mark: Option<&[u8]>) -> Result<()>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<[u8]>,
    {
        self.insert_labelled_marked(ids.into_iter().map(|id| (None, id)), mark)
    }

    /// [`DedupFilter::insert_batch_marked`] for ids that carry a **label** (the engine stores
    /// an id's key group there): the label is kept with the id and given back by
    /// [`DedupFilter::export`] and [`crate::export_ids`], so a subset of the ids can be taken
    /// out by label. Lookups ignore labels: an id is seen whatever its label.
    pub fn insert_labelled_marked<I, T>(&mut self, ids: I, mark: Option<&[u8]>) -> Result<()>
    where
        I: IntoIterator<Item = (Option<u16>, T)>,
        T: AsRef<[u8]>,
    {
        if mark.is_none() {
            // Before any id of this call can be written: none is ever stored under the old mark.
            self.unwritten.mark = Some(None);
        }
        // Ids are hashed PREFETCH_AHEAD ahead of their insert and their bloom blocks
        // prefetched: setting bits in a block not in the caches waited for memory, most of an
        // insert's time when one id was hashed and inserted at a time.
        let mut ids = ids.into_iter();
        let mut ahead: VecDeque<(Option<u16>, T, IdHash)> = VecDeque::with_capacity(PREFETCH_AHEAD);
        loop {
            while ahead.len() < PREFETCH_AHEAD {
                let Some((label, id)) = ids.next() else { break };
                let h = IdHash::of(id.as_ref());
                self.buckets.back().expect("non-empty").bloom.prefetch(h);
                ahead.push_back((label, id, h));
            }
            let Some((label, id, h)) = ahead.pop_front() else {
                break;
            };
            if self.buckets.back().expect("non-empty").count >= self.config.bucket_size {
                self.rotate()?;
            }
            let current = self.buckets.back_mut().expect("non-empty");
            self.unwritten.add(current, label, id.as_ref(), h)?;
        }
        if let Some(m) = mark {
            self.unwritten.mark = Some(Some(m.to_vec()));
        }
        if self.unwritten.bytes > UNWRITTEN_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the ids and the mark not yet written to RocksDB, in one write (through its WAL,
    /// without fsync): a process that dies after this keeps them. Inserts write by themselves
    /// when the newest bucket is full (and past a few MB of ids), and dropping the filter
    /// writes what is left; the engine also calls this once a snapshot's mark is inserted.
    pub fn flush(&mut self) -> Result<()> {
        if self.unwritten.is_empty() {
            return Ok(());
        }
        let bucket = self.buckets.back().expect("non-empty");
        let mut writes = WriteBatch::default();
        let cf = self.ids_cf();
        for (n, blob) in self.unwritten.numbered(bucket) {
            writes.put_cf(cf, batch_key(bucket.seq, n), blob);
        }
        match &self.unwritten.mark {
            None => {}
            Some(None) => writes.delete(MARK_KEY),
            Some(Some(m)) => writes.put(MARK_KEY, m),
        }
        self.db.write_opt(writes, &self.write_opts)?;
        // Only now: had the write failed, lookups would still find these ids in memory.
        self.unwritten = Unwritten::default();
        Ok(())
    }

    /// The mark stored by the last insert, if it had one (see the module docs).
    pub fn mark(&self) -> Result<Option<Vec<u8>>> {
        match &self.unwritten.mark {
            Some(m) => Ok(m.clone()),
            None => Ok(self.db.get(MARK_KEY)?),
        }
    }

    /// Forgets every id (and the mark).
    pub fn clear(&mut self) -> Result<()> {
        self.unwritten = Unwritten::default();
        self.delete_mark()?;
        let next = self.buckets.back().map_or(0, |b| b.seq + 1);
        self.delete_all_batches()?;
        self.buckets.clear();
        self.start_bucket(next);
        Ok(())
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

    /// Serializes every stored id with its label and its bucket boundaries (for a ledger
    /// snapshot): each bucket's ids in insertion order. The format is the magic
    /// `sardonyx-dedup-export-5\0`, then per bucket (oldest first) its byte length (u64,
    /// little-endian) and its ids in runs of one label (a run: the label's tag and the number
    /// of ids, LEB128, then the ids), each id written as a delta from the previous id when only
    /// its last 8 bytes (a big-endian counter) differ, front-coded otherwise (see `put_id_v4`):
    /// a sequential 9-byte integer id costs one byte, an arbitrary id little more than its
    /// bytes. The export is one buffer built without an allocation per id, and reading the
    /// stored batches for it does not fill the block cache.
    pub fn export(&self) -> Result<Vec<u8>> {
        let mut export = ExportWriter::with_capacity(self.len() as usize);
        for b in &self.buckets {
            export.start_bucket();
            let (start, end) = bucket_range(b.seq);
            let mut once = rocksdb::ReadOptions::default();
            once.fill_cache(false);
            if let Some(end) = end {
                once.set_iterate_upper_bound(end);
            }
            let from = IteratorMode::From(&start, Direction::Forward);
            for kv in self.db.iterator_cf_opt(self.ids_cf(), once, from) {
                let (k, v) = kv?;
                let (_, n) = parse_batch_key(&k)?;
                scan_ids(&v, b.seq, n, |label, id| {
                    export.push(label, id);
                    false
                })?;
            }
        }
        // The newest bucket's ids not yet written come after its stored ones.
        let newest = self.buckets.back().expect("non-empty");
        for (n, blob) in self.unwritten.numbered(newest) {
            scan_ids(blob, newest.seq, n, |label, id| {
                export.push(label, id);
                false
            })?;
        }
        Ok(export.finish())
    }

    /// Replaces the contents with an [`DedupFilter::export`] (or a version-4 or version-3 export
    /// of an earlier release, whose ids have no labels), keeping its bucket boundaries (the
    /// oldest buckets are dropped if the export has more than `num_buckets`) and the ids'
    /// labels. An export that does not decode changes nothing.
    pub fn import(&mut self, bytes: &[u8]) -> Result<()> {
        let buckets = parse_export(bytes)?;
        self.clear()?;
        for (i, bucket) in buckets.into_iter().enumerate() {
            if i > 0 {
                self.rotate()?;
            }
            let current = self.buckets.back_mut().expect("non-empty");
            if bucket.count() > self.config.bucket_size {
                // A bucket from a filter with larger buckets: size its bloom filter to fit.
                *current = Bucket::new(current.seq, bucket.count(), &self.config);
            }
            let unwritten = &mut self.unwritten;
            bucket.for_each_id(|label, id| unwritten.add(current, label, id, IdHash::of(id)))?;
        }
        self.flush()
    }
}

impl Drop for DedupFilter {
    /// Writes what is not yet written (a process that exits keeps it; one killed does not,
    /// and its engine brings the filter up to date from the ledger).
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::warn!(error = %e, "dedup filter: writing its last ids failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dedup::bloom::Block;
    use crate::dedup::export::{put_front_coded, EXPORT_MAGIC, EXPORT_MAGIC_V3};

    fn cfg(bucket_size: u64, num_buckets: usize, false_positive_rate: f64) -> DedupConfig {
        DedupConfig {
            bucket_size,
            num_buckets,
            false_positive_rate,
        }
    }

    fn id(i: u64) -> [u8; 8] {
        i.to_be_bytes()
    }

    /// `contains_each` over ids `0..n` answers `expected` for each, as `contains` does.
    fn assert_answers_each(f: &DedupFilter, n: u64, expected: impl Fn(u64) -> bool) {
        let ids: Vec<[u8; 8]> = (0..n).map(id).collect();
        let mut answers = vec![true; 3];
        f.contains_each(ids.iter().map(|i| &i[..]), &mut answers)
            .unwrap();
        let want: Vec<bool> = (0..n).map(expected).collect();
        assert_eq!(answers, want);
        let one_by_one: Vec<bool> = ids.iter().map(|i| f.contains(i).unwrap()).collect();
        assert_eq!(one_by_one, want);
    }

    /// The batch lookup agrees with the reference over several buckets: ids in every bucket,
    /// ids dropped with the oldest bucket, ids never inserted.
    #[test]
    fn contains_each_answers_as_contains_does() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = DedupFilter::open(dir.path(), cfg(100, 3, 0.01)).unwrap();
        let inserted: Vec<[u8; 8]> = (0..1_000).filter(|i| i % 3 != 0).map(id).collect();
        for chunk in inserted.chunks(77) {
            f.insert_batch(chunk).unwrap();
        }
        // 666 ids in buckets of 100, 3 kept: the last 266 (from position 400) remain.
        let first_kept = u64::from_be_bytes(inserted[400]);
        assert_answers_each(&f, 1_200, |i| i < 1_000 && i % 3 != 0 && i >= first_kept);
        assert_answers_each(&f, 0, |_| false);
    }

    /// A bloom filter that says "maybe" to almost everything: every answer must still be exact,
    /// through the locator and the stored batches.
    #[test]
    fn exact_with_false_positives_forced() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = DedupFilter::open(dir.path(), cfg(50, 3, 0.999)).unwrap();
        let ids: Vec<[u8; 8]> = (0..120).map(|i| id(i * 2)).collect();
        f.insert_batch(&ids[..70]).unwrap();
        f.insert_batch(&ids[70..]).unwrap();
        for b in f.buckets.iter_mut() {
            b.bloom.blocks.fill(Block([u32::MAX; 8]));
        }
        for i in 0..240u64 {
            assert_eq!(f.contains(&id(i)).unwrap(), i % 2 == 0, "{i}");
        }
        // Force locator collisions too: every key, of inserted ids or not, names every stored
        // batch of every bucket, so each lookup reads and scans them all.
        let keys: Vec<u32> = (0..240u64).map(|i| IdHash::of(&id(i)).key()).collect();
        for b in f.buckets.iter_mut() {
            let batches: Vec<u32> = (0..b.next_batch).collect();
            b.locator.force(&keys, &batches);
        }
        for i in 0..240u64 {
            assert_eq!(f.contains(&id(i)).unwrap(), i % 2 == 0, "{i}");
        }
        assert_answers_each(&f, 240, |i| i % 2 == 0);
    }

    #[test]
    fn older_buckets_are_sealed_and_answer_exactly_through_their_locators() {
        let dir = tempfile::tempdir().unwrap();
        let sealed = |f: &DedupFilter| -> Vec<bool> {
            f.buckets.iter().map(|b| b.locator.is_sealed()).collect()
        };
        // Ids 0, 2, 4, …, 698 (350 of them) in batches of 50: buckets of 100, 100, 100, 50.
        let inserted = |i: u64| i.is_multiple_of(2) && i < 700;
        {
            let mut f = DedupFilter::open(dir.path(), cfg(100, 4, 0.01)).unwrap();
            for c in (0..350u64).collect::<Vec<_>>().chunks(50) {
                f.insert_batch(c.iter().map(|i| id(i * 2))).unwrap();
            }
            assert_eq!(sealed(&f), [true, true, true, false]);
            // Every bloom says "maybe": every answer comes from the locators and RocksDB.
            for b in f.buckets.iter_mut() {
                b.bloom.blocks.fill(Block([u32::MAX; 8]));
            }
            for i in 0..800u64 {
                assert_eq!(f.contains(&id(i)).unwrap(), inserted(i), "{i}");
            }
            assert_answers_each(&f, 800, inserted);
        }
        // Reopened: rebuilt from the stored batches, sealed the same way.
        let mut f = DedupFilter::open(dir.path(), cfg(100, 4, 0.01)).unwrap();
        assert_eq!(sealed(&f), [true, true, true, false]);
        assert_answers_each(&f, 800, inserted);
        // The next rotation seals the newest and drops the oldest (ids 0..198).
        f.insert_batch((350..400u64).map(|i| id(i * 2))).unwrap();
        f.insert_batch([id(1_000_001)]).unwrap();
        assert_eq!(sealed(&f), [true, true, true, false]);
        assert_answers_each(&f, 800, |i| i.is_multiple_of(2) && i >= 200);
    }

    /// A bucket larger than a locator chunk keeps its locator in several chunks (only the
    /// newest a hash map), and answers exactly through all of them, before and after a reopen
    /// rebuilds them.
    #[test]
    fn a_large_bucket_answers_exactly_through_its_locator_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let n = 130_000u64;
        let inserted = |i: u64| i.is_multiple_of(2) && i < 2 * n;
        let chunks = |f: &DedupFilter| f.buckets.back().unwrap().locator.chunks.len();
        let check = |f: &mut DedupFilter| {
            for b in f.buckets.iter_mut() {
                b.bloom.blocks.fill(Block([u32::MAX; 8]));
            }
            let sample: Vec<[u8; 8]> = (0..2 * n + 100).step_by(89).map(id).collect();
            let mut answers = Vec::new();
            f.contains_each(sample.iter().map(|i| &i[..]), &mut answers)
                .unwrap();
            let want: Vec<bool> = (0..2 * n + 100).step_by(89).map(inserted).collect();
            assert_eq!(answers, want);
        };
        let mut f = DedupFilter::open(dir.path(), cfg(200_000, 2, 0.01)).unwrap();
        for c in (0..n).collect::<Vec<_>>().chunks(2_850) {
            f.insert_batch(c.iter().map(|i| id(i * 2))).unwrap();
        }
        assert_eq!(chunks(&f), 3, "130 000 keys in chunks of about 56 320");
        check(&mut f);
        drop(f);
        let mut f = DedupFilter::open(dir.path(), cfg(200_000, 2, 0.01)).unwrap();
        assert_eq!(chunks(&f), 3);
        check(&mut f);
    }

    /// The newest bucket's ids are partly written and partly in memory: lookups (every bloom
    /// forced to "maybe") and the export are exact across the boundary, the export is the same
    /// before and after the rest is written, and a reopen finds what was written.
    #[test]
    fn ids_not_yet_written_answer_and_export_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let inserted = |i: u64| i.is_multiple_of(3) && i < 3 * 2_500;
        let mut f = DedupFilter::open(dir.path(), cfg(10_000, 2, 0.01)).unwrap();
        f.insert_batch((0..1_500u64).map(|i| id(i * 3))).unwrap();
        f.flush().unwrap();
        f.insert_batch((1_500..2_500u64).map(|i| id(i * 3)))
            .unwrap();
        assert_eq!(
            f.unwritten.blobs.len(),
            1,
            "1000 ids, one open stored batch"
        );
        for b in f.buckets.iter_mut() {
            b.bloom.blocks.fill(Block([u32::MAX; 8]));
        }
        assert_answers_each(&f, 8_000, inserted);
        let export = f.export().unwrap();
        f.flush().unwrap();
        assert!(f.unwritten.blobs.is_empty());
        assert_eq!(f.export().unwrap(), export);
        drop(f);
        let f = DedupFilter::open(dir.path(), cfg(10_000, 2, 0.01)).unwrap();
        assert_eq!(f.len(), 2_500);
        assert_answers_each(&f, 8_000, inserted);
    }

    #[test]
    fn locator_keeps_every_batch_of_a_repeated_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = DedupFilter::open(dir.path(), cfg(1000, 2, 0.01)).unwrap();
        // A write closes the open stored batch: x in batch 0, y in 1, x twice in 2.
        f.insert_batch([b"x"]).unwrap();
        f.flush().unwrap();
        f.insert_batch([b"y"]).unwrap();
        f.flush().unwrap();
        f.insert_batch([b"x", b"x"]).unwrap();
        let b = f.buckets.back().unwrap();
        let kx = IdHash::of(b"x").key();
        assert_eq!(b.locator.batches(kx).collect::<Vec<_>>(), [0, 2]);
        assert_eq!(f.len(), 4, "inserts are counted, as before");
        assert!(f.contains(b"x").unwrap() && f.contains(b"y").unwrap());
    }

    #[test]
    fn large_batches_are_split_and_rotate_exactly_at_bucket_size() {
        let dir = tempfile::tempdir().unwrap();
        let size = (MAX_IDS_PER_BATCH * 2 + 100) as u64;
        let mut f = DedupFilter::open(dir.path(), cfg(size, 2, 0.01)).unwrap();
        let n = size * 3 + 5;
        f.insert_batch((0..n).map(id)).unwrap();
        assert_eq!(f.bucket_count(), 2);
        assert_eq!(f.len(), size + 5);
        assert_eq!(
            f.buckets[0].next_batch, 3,
            "2 full stored batches and 1 of 100"
        );
        assert_eq!(f.buckets[1].count, 5);
        for i in 0..n {
            assert_eq!(f.contains(&id(i)).unwrap(), i >= size * 2, "{i}");
        }
    }

    #[test]
    fn reopen_after_drop_keeps_batches_and_numbering() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut f = DedupFilter::open(dir.path(), cfg(100, 3, 0.01)).unwrap();
            for c in (0..250u64).collect::<Vec<_>>().chunks(30) {
                f.insert_batch(c.iter().map(|i| id(*i))).unwrap();
            }
        }
        let mut f = DedupFilter::open(dir.path(), cfg(100, 3, 0.01)).unwrap();
        assert_eq!(f.len(), 250);
        assert_eq!(f.bucket_count(), 3);
        let before = f.buckets.back().unwrap().next_batch;
        f.insert_batch([id(1000)]).unwrap();
        assert_eq!(f.buckets.back().unwrap().next_batch, before + 1);
        for i in 0..250 {
            assert!(f.contains(&id(i)).unwrap(), "{i}");
        }
        assert!(f.contains(&id(1000)).unwrap());
        assert!(!f.contains(&id(999)).unwrap());
    }

    /// A directory of an earlier layout (one key per id, before 2026-11-22, stored batches
    /// without labels, before 2026-12-06, of whole ids, before 2026-12-07, or one column
    /// family per bucket, until 2026-12-07; here all four, as conversions cut short would
    /// leave),
    /// even one that holds a mark, opens empty and without a mark: never with some of its ids,
    /// never looking like a ledger prefix. Rebuilt from an export (as the engine does on a
    /// missing mark), it answers exactly again.
    #[test]
    fn an_earlier_layout_opens_empty_without_a_mark() {
        let dir = tempfile::tempdir().unwrap();
        let names = [
            "default",
            "bucket-00000000000000000004",
            "bucket-00000000000000000005",
            "batches-00000000000000000004",
            "labelled-00000000000000000005",
            "coded-00000000000000000003",
        ];
        {
            let mut opts = rocksdb::Options::default();
            opts.create_if_missing(true);
            opts.create_missing_column_families(true);
            let db = DB::open_cf(&opts, dir.path(), names).unwrap();
            for (cf, ids) in [(names[1], 0..10u64), (names[2], 10..13u64)] {
                let h = db.cf_handle(cf).unwrap();
                for i in ids {
                    db.put_cf(h, id(i), []).unwrap();
                }
            }
            // The unlabelled layout: each id as a LEB128 length and its bytes.
            let mut blob = Vec::new();
            for i in 0..10 {
                blob.push(8);
                blob.extend_from_slice(&id(i));
            }
            db.put_cf(db.cf_handle(names[3]).unwrap(), 0u64.to_be_bytes(), &blob)
                .unwrap();
            // The whole-id layout: each id as its label's tag (0), a LEB128 length, its bytes.
            let blob: Vec<u8> = (0..10)
                .flat_map(|i| [&[0, 8][..], &id(i)].concat())
                .collect();
            db.put_cf(db.cf_handle(names[4]).unwrap(), 0u64.to_be_bytes(), &blob)
                .unwrap();
            // One column family per bucket (what its value holds is never read).
            db.put_cf(db.cf_handle(names[5]).unwrap(), 0u64.to_be_bytes(), &blob)
                .unwrap();
            db.put(MARK_KEY, b"pos-3").unwrap();
        }
        let mut f = DedupFilter::open(dir.path(), cfg(10, 3, 0.01)).unwrap();
        assert_eq!((f.bucket_count(), f.len()), (1, 0));
        assert_eq!(f.mark().unwrap(), None);
        assert_answers_each(&f, 20, |_| false);
        // Numbering continues after the buckets forgotten.
        assert_eq!(f.buckets.back().unwrap().seq, 6);
        let names = DB::list_cf(&rocksdb::Options::default(), dir.path()).unwrap();
        assert_eq!(names, ["default", "ids"]);

        // The engine's rebuild: clear, import the snapshot's export, insert the replayed ids.
        let src_dir = tempfile::tempdir().unwrap();
        let mut src = DedupFilter::open(src_dir.path(), cfg(10, 3, 0.01)).unwrap();
        src.insert_batch((0..10).map(id)).unwrap();
        f.clear().unwrap();
        f.import(&src.export().unwrap()).unwrap();
        f.insert_batch_marked((10..13).map(id), Some(b"pos-9"))
            .unwrap();
        drop(f);
        let f = DedupFilter::open(dir.path(), cfg(10, 3, 0.01)).unwrap();
        assert_eq!(f.mark().unwrap().as_deref(), Some(&b"pos-9"[..]));
        assert_answers_each(&f, 20, |i| i < 13);
    }

    /// Buckets dropped at rotation and by `clear` are gone from RocksDB too: a reopen finds
    /// exactly the buckets kept, numbered as before, and only their stored batches are left.
    #[test]
    fn dropped_buckets_are_deleted_from_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let stored_buckets = |f: &DedupFilter| -> Vec<u64> {
            let mut seqs: Vec<u64> = (f.db.iterator_cf(f.ids_cf(), IteratorMode::Start))
                .map(|kv| parse_batch_key(&kv.unwrap().0).unwrap().0)
                .collect();
            seqs.dedup();
            seqs
        };
        {
            let mut f = DedupFilter::open(dir.path(), cfg(100, 3, 0.01)).unwrap();
            for c in (0..1_000u64).collect::<Vec<_>>().chunks(64) {
                f.insert_batch(c.iter().map(|i| id(*i))).unwrap();
            }
            f.flush().unwrap();
            assert_eq!(stored_buckets(&f), [7, 8, 9]);
        }
        let f = DedupFilter::open(dir.path(), cfg(100, 3, 0.01)).unwrap();
        assert_eq!((f.bucket_count(), f.len()), (3, 300));
        assert_eq!(
            f.buckets.iter().map(|b| b.seq).collect::<Vec<_>>(),
            [7, 8, 9]
        );
        assert_answers_each(&f, 1_100, |i| (700..1_000).contains(&i));
        // Kept buckets fewer than stored: the oldest go at open.
        drop(f);
        let mut f = DedupFilter::open(dir.path(), cfg(100, 2, 0.01)).unwrap();
        assert_eq!(stored_buckets(&f), [8, 9]);
        assert_answers_each(&f, 1_100, |i| (800..1_000).contains(&i));
        f.clear().unwrap();
        f.insert_batch([id(5_000)]).unwrap();
        drop(f);
        let f = DedupFilter::open(dir.path(), cfg(100, 2, 0.01)).unwrap();
        assert_eq!(stored_buckets(&f), [10]);
        assert_answers_each(&f, 1_100, |_| false);
        assert!(f.contains(&id(5_000)).unwrap());
    }

    #[test]
    fn corrupt_stored_batch_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut f = DedupFilter::open(dir.path(), cfg(10, 2, 0.01)).unwrap();
            f.insert_batch([b"abc"]).unwrap();
            f.flush().unwrap();
            let key = batch_key(f.buckets.back().unwrap().seq, 0);
            f.db.put_cf(f.ids_cf(), key, [0x05, b'a']).unwrap();
            assert!(f.contains(b"abc").is_err());
        }
        assert!(DedupFilter::open(dir.path(), cfg(10, 2, 0.01)).is_err());
    }

    /// An export of the earlier version (every id front-coded) is still imported.
    #[test]
    fn imports_a_version_3_export() {
        let ids: Vec<Vec<u8>> = (0..2_500u64)
            .map(|i| [b"i".as_slice(), &i.to_be_bytes()].concat())
            .chain([b"abc".to_vec(), b"abd".to_vec()])
            .collect();
        let mut v3 = EXPORT_MAGIC_V3.to_vec();
        for bucket in [&ids[..1_000], &ids[1_000..]] {
            let mut blob = Vec::new();
            let mut prev = Vec::new();
            for id in bucket {
                put_front_coded(&mut blob, &mut prev, id);
            }
            v3.extend_from_slice(&(blob.len() as u64).to_le_bytes());
            v3.extend_from_slice(&blob);
        }
        let dir = tempfile::tempdir().unwrap();
        let mut f = DedupFilter::open(dir.path(), cfg(2_000, 3, 0.01)).unwrap();
        f.import(&v3).unwrap();
        assert_eq!((f.bucket_count(), f.len()), (2, 2_502));
        for id in &ids {
            assert!(f.contains(id).unwrap(), "{id:?}");
        }
        assert!(!f.contains(b"abe").unwrap());
        // Exported again, in the current version, it reads back to the same filter.
        let v5 = f.export().unwrap();
        assert!(v5.starts_with(EXPORT_MAGIC) && v5.len() < v3.len() / 2);
        let g_dir = tempfile::tempdir().unwrap();
        let mut g = DedupFilter::open(g_dir.path(), cfg(2_000, 3, 0.01)).unwrap();
        g.import(&v5).unwrap();
        assert_eq!(g.export().unwrap(), v5);
    }

    /// Labels survive an export and an import (and a reopen, through the stored batches), and
    /// change no answer: an id is seen whatever label it was inserted with.
    #[test]
    fn labels_travel_through_export_import_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = DedupFilter::open(dir.path(), cfg(4, 3, 0.01)).unwrap();
        let ids: Vec<(Option<u16>, [u8; 8])> = (0..10u64)
            .map(|i| (if i == 9 { None } else { Some((i % 3) as u16) }, id(i)))
            .collect();
        f.insert_labelled_marked(ids.iter().map(|(l, i)| (*l, i)), Some(b"m"))
            .unwrap();
        assert_answers_each(&f, 12, |i| i < 10);
        drop(f);
        let f = DedupFilter::open(dir.path(), cfg(4, 3, 0.01)).unwrap();
        let export = f.export().unwrap();
        let mut back = Vec::new();
        crate::export_ids(&export, |l, i| back.push((l, i.to_vec()))).unwrap();
        let want: Vec<(Option<u16>, Vec<u8>)> = ids.iter().map(|(l, i)| (*l, i.to_vec())).collect();
        assert_eq!(back, want);
        let g_dir = tempfile::tempdir().unwrap();
        let mut g = DedupFilter::open(g_dir.path(), cfg(4, 3, 0.01)).unwrap();
        g.import(&export).unwrap();
        assert_eq!(g.export().unwrap(), export);
        assert_answers_each(&g, 12, |i| i < 10);
    }

    /// The vote workload's ids (sequential integers, 9-byte keys) export at about 1 byte each.
    #[test]
    fn sequential_integer_ids_export_small() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = DedupFilter::open(dir.path(), cfg(50_000, 3, 0.01)).unwrap();
        let key = |i: i64| {
            let mut k = vec![b'i'];
            k.extend_from_slice(&i.to_be_bytes());
            k
        };
        f.insert_batch((1_000_000..1_100_000).map(key)).unwrap();
        let export = f.export().unwrap();
        let per_id = export.len() as f64 / 100_000.0;
        assert!((1.0..1.01).contains(&per_id), "{per_id} bytes per id");
        let g_dir = tempfile::tempdir().unwrap();
        let mut g = DedupFilter::open(g_dir.path(), cfg(50_000, 3, 0.01)).unwrap();
        g.import(&export).unwrap();
        assert_eq!(g.export().unwrap(), export);
        assert!(g.contains(&key(1_000_000)).unwrap() && g.contains(&key(1_099_999)).unwrap());
        assert!(!g.contains(&key(1_100_000)).unwrap());
    }
}
