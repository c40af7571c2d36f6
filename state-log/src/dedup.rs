//! The dedup filter: "has this segment id been applied?" for exactly-once state.
//!
//! Ids live in rotating **buckets**. Each bucket is a RocksDB column family (the truth) with two
//! in-memory structures in front of it, both derived from it:
//!
//! - a **bloom filter** (the fast "no"; split into 32-byte blocks so that probing it for an id
//!   touches one cache line; about 1.5 bytes per id at 1 %, so the filters of all
//!   buckets stay in the CPU caches);
//! - a **locator**: 32 bits of the id's hash → the number of the stored batch that holds the
//!   id (about 10–18 bytes per id), consulted only on a bloom "maybe".
//!
//! Each id is hashed **once** (a 64-bit multiply-fold hash, `IdHash`); the bloom block and bits of
//! every bucket and the locator key are derived from that one hash.
//!
//! **Storage.** A bucket's column family holds one RocksDB value per stored batch (key: the
//! batch's number in the bucket, 8 bytes big-endian; value: its ids, each as a LEB128 length
//! and the bytes), not one key per id: `insert_batch` of 1000 ids is one `WriteBatch` with one
//! value per bucket touched (a batch is split every 1024 ids, `MAX_IDS_PER_BATCH`, so that confirming
//! an id never scans much). A lookup asks each bucket's bloom filter, newest first; a "maybe" is
//! looked up in the bucket's locator and confirmed by reading the stored batch it names and
//! finding the exact id bytes in it, so the answer is exact: a bloom or locator false positive
//! costs at most one RocksDB read, never a wrong answer. When the newest bucket holds
//! `bucket_size` ids a new bucket is started, and once there are more than `num_buckets`
//! buckets the oldest one is dropped with its column family.
//!
//! **Horizon.** The filter remembers the most recent inserts: always at least
//! `(num_buckets - 1) × bucket_size` ids and at most `num_buckets × bucket_size`
//! ([`DedupConfig::horizon`]); an id inserted longer ago than that may be forgotten (and a
//! redelivery of it counted again). Size the horizon to cover every id that can be redelivered:
//! inputs resume from their last committed position, so a horizon well beyond the ids of one
//! checkpoint interval suffices.
//!
//! **Durability.** Writes go through RocksDB's WAL without fsync (one WAL record per
//! `insert_batch`, so this costs a few nanoseconds per id): a process that dies keeps every
//! completed insert; a machine crash may lose the most recent ones. The bloom filters and
//! locators are never stored: [`DedupFilter::open`] rebuilds them from the stored batches, so
//! after any crash they agree with what RocksDB kept (and a lookup always confirms in RocksDB,
//! so they could never make an answer wrong anyway). The filter is derived state: the engine
//! stores its contents ([`DedupFilter::export`]) in ledger snapshots and, on a recovery where
//! the filter on disk does not match the ledger (see the mark below), clears it and re-inserts
//! the ids of the snapshot and of the replayed ledger entries ([`DedupFilter::clear`],
//! [`DedupFilter::import`], then [`DedupFilter::insert_batch`]).
//!
//! **Mark.** An insert may carry a **mark**, opaque bytes stored in the same RocksDB write as
//! the ids (the engine stores the ledger position whose ids they are). [`DedupFilter::mark`]
//! returns the mark of the last insert, so a process that opens the filter again knows which
//! prefix of its ledger the filter already holds and replays only the rest instead of
//! rebuilding. Any insert without a mark, [`DedupFilter::clear`] and [`DedupFilter::import`]
//! remove the mark: the filter no longer corresponds to a ledger prefix.
//!
//! Directories written by earlier versions (one key per id in `bucket-…` column families) are
//! converted to this layout by [`DedupFilter::open`].

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::path::Path;

use bloomfilter::Bloom;
use rocksdb::{IteratorMode, WriteBatch, WriteOptions, DB};

use crate::error::{Error, Result};

/// Shape of a [`DedupFilter`].
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
    /// 10 buckets of 100 000 ids (horizon 900 000 – 1 000 000 ids), 1 % false positives
    /// (about 150 KB of bloom filter per full bucket).
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

/// Ids per stored batch at most: a confirmation reads one stored batch and scans it for the id,
/// so this bounds its cost (about 10 KB for 9-byte ids).
const MAX_IDS_PER_BATCH: usize = 1024;

/// Memtable budget of the filter's database: ids are written once and read only to confirm a
/// rare bloom "maybe", so a smaller budget than the log's costs nothing measurable.
const MEMTABLE_BYTES: usize = 4 << 20;
/// Block cache of the filter's database (confirmations and the rebuild on open read it).
const BLOCK_CACHE_BYTES: usize = 2 << 20;

/// Key of the mark in the default column family.
const MARK_KEY: &[u8] = b"mark";

/// Column families of buckets in the current layout: `batches-<seq>`.
const BUCKET_PREFIX: &str = "batches-";
/// Column families of buckets in the layout before it (one key per id): `bucket-<seq>`.
const LEGACY_PREFIX: &str = "bucket-";

fn bucket_name(seq: u64) -> String {
    format!("{BUCKET_PREFIX}{seq:020}")
}

fn parse_name(name: &str, prefix: &str) -> Option<u64> {
    let digits = name.strip_prefix(prefix)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The one hash of an id from which every bloom probe and the locator key are derived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IdHash {
    /// The id's 64-bit hash: its high half picks the bloom block, its low half is the locator
    /// key.
    h1: u64,
    /// A second 64 bits derived from `h1`: its high half picks the bits within the block.
    h2: u64,
}

const K0: u64 = 0xa076_1d64_78bd_642f;
const K1: u64 = 0xe703_7ed1_a0b4_28db;

/// 128-bit product folded to 64 bits (the mixing step of wyhash and foldhash).
#[inline]
fn fold_mul(a: u64, b: u64) -> u64 {
    let r = (a as u128) * (b as u128);
    (r as u64) ^ ((r >> 64) as u64)
}

/// Murmur3's 64-bit finalizer: every input bit affects every output bit.
#[inline]
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The 1–7 bytes after the last whole word as one word, read without a copy: two overlapping
/// 4-byte reads for 4–7 bytes, three single bytes (first, middle, last) for 1–3. For a given
/// length every byte lands in the word, so ids of the same length never share it (the length
/// itself is mixed into the hash first).
#[inline]
fn tail_word(rest: &[u8]) -> u64 {
    let n = rest.len();
    if n >= 4 {
        let lo = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes"));
        let hi = u32::from_le_bytes(rest[n - 4..].try_into().expect("4 bytes"));
        lo as u64 | (hi as u64) << 32
    } else {
        rest[0] as u64 | (rest[n / 2] as u64) << 8 | (rest[n - 1] as u64) << 16
    }
}

impl IdHash {
    /// Hashes `id` once: 8 bytes at a time through a folded multiply, then a finalizer.
    /// Deterministic (a fixed key), though nothing relies on that across processes: bloom
    /// filters and locators are rebuilt from the stored ids on open.
    #[inline]
    pub(crate) fn of(id: &[u8]) -> IdHash {
        let mut h = K0 ^ (id.len() as u64).wrapping_mul(K1);
        let mut chunks = id.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            h = fold_mul(h ^ w, K1);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            h = fold_mul(h ^ tail_word(rest), K1);
        }
        let h1 = fmix64(h ^ K0);
        let h2 = fmix64(h1 ^ K1);
        IdHash { h1, h2 }
    }

    /// The locator key: 32 bits of the hash (others pick the bloom bits).
    #[inline]
    fn key(self) -> u32 {
        self.h1 as u32
    }
}

/// One block of a [`BloomBits`]: 256 bits as eight 32-bit words, aligned so that a block is
/// never split across two cache lines.
#[derive(Clone, Copy, Default)]
#[repr(C, align(32))]
struct Block([u32; 8]);

/// Odd multipliers that pick one bit in each word of a block from the same 32 hash bits.
const BLOCK_SALTS: [u32; 8] = [
    0x47b6_137b,
    0x4497_4d91,
    0x8824_ad5b,
    0xa2b7_289d,
    0x7054_95c7,
    0x2df1_424b,
    0x9efc_4947,
    0x5c6b_fb31,
];

/// A split-block bloom filter probed with bits derived from one [`IdHash`]: an id picks one
/// 256-bit block (multiply-shift of the hash's high 32 bits) and sets or tests one bit in each
/// of the block's eight words (from 32 other hash bits). Every probe of an id touches one cache
/// line, where a classic bloom filter touches one per bit (about seven at 1 %): with a lookup
/// probing up to `num_buckets` filters, that is what a lookup costs. Blocks cost some accuracy
/// (ids crowd unevenly into blocks), so the filter gets 25 % more bits than the `bloomfilter` crate
/// gives a classic one of the same rate (0.6 % measured for a 1 % target); the test
/// `bloom_false_positive_rate_is_near_the_target` measures the rate.
struct BloomBits {
    blocks: Vec<Block>,
}

impl BloomBits {
    fn new(items: usize, false_positive_rate: f64) -> BloomBits {
        let items = items.max(1);
        let classic = Bloom::<[u8]>::compute_bitmap_size(items, false_positive_rate);
        let bytes = classic + classic / 4;
        BloomBits {
            blocks: vec![Block::default(); bytes.div_ceil(32).max(1)],
        }
    }

    /// The block of `h`.
    #[inline]
    fn block_of(&self, h: IdHash) -> usize {
        (((h.h1 >> 32) * self.blocks.len() as u64) >> 32) as usize
    }

    #[inline]
    fn set(&mut self, h: IdHash) {
        let (i, mask) = (self.block_of(h), BloomMask::of(h));
        for (word, bit) in self.blocks[i].0.iter_mut().zip(mask.0) {
            *word |= bit;
        }
    }

    #[cfg(test)]
    fn check(&self, h: IdHash) -> bool {
        self.check_masked(h, &BloomMask::of(h))
    }

    /// [`BloomBits::check`] with the bits of `h` already computed (they are the same in every
    /// bucket).
    #[inline]
    fn check_masked(&self, h: IdHash, mask: &BloomMask) -> bool {
        let block = &self.blocks[self.block_of(h)].0;
        let missing = block
            .iter()
            .zip(mask.0)
            .fold(0, |missing, (word, bit)| missing | (bit & !word));
        missing == 0
    }
}

/// The bit an id sets or tests in each word of its block, in every bucket's filter.
struct BloomMask([u32; 8]);

impl BloomMask {
    #[inline]
    fn of(h: IdHash) -> BloomMask {
        let bits = (h.h2 >> 32) as u32;
        BloomMask(BLOCK_SALTS.map(|s| 1u32 << (bits.wrapping_mul(s) >> 27)))
    }
}

/// Hashes a locator key (already 32 random bits) to 64 for the hash map: a multiplication
/// spreads it over the high bits the map's tags come from.
#[derive(Default)]
struct KeyHasher(u64);

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

type KeyMap<V> = HashMap<u32, V, BuildHasherDefault<KeyHasher>>;

struct Bucket {
    seq: u64,
    /// The column family's name, made once.
    name: String,
    bloom: BloomBits,
    /// Locator key → number of the first stored batch holding an id with that key.
    first: Firsts,
    /// Further batches for a locator key (another id with the same 32 bits, or an id inserted
    /// again in a later batch): about one entry per 100 000 ids.
    more: KeyMap<Vec<u32>>,
    /// Number of the next stored batch.
    next_batch: u32,
    count: u64,
}

impl Bucket {
    fn new(seq: u64, items: u64, config: &DedupConfig) -> Bucket {
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
    fn note(&mut self, h: IdHash, batch: u32) {
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

/// A bucket's locator: key → number of the first stored batch holding an id with that key.
enum Firsts {
    /// The newest bucket, still taking ids.
    Open(KeyMap<u32>),
    /// An older bucket (it takes no more ids): `(key, batch)` sorted by key. 8 bytes per key
    /// instead of a hash table's ~9 per slot at ~80 % load; a lookup (only after a bloom
    /// "maybe") is a binary search.
    Sealed(Box<[(u32, u32)]>),
}

impl Firsts {
    fn get(&self, key: u32) -> Option<u32> {
        match self {
            Firsts::Open(m) => m.get(&key).copied(),
            Firsts::Sealed(v) => v
                .binary_search_by_key(&key, |&(k, _)| k)
                .ok()
                .map(|i| v[i].1),
        }
    }

    /// Makes the locator sealed (no-op if it is).
    fn seal(&mut self) {
        if let Firsts::Open(m) = self {
            let mut v: Box<[(u32, u32)]> = m.drain().collect();
            v.sort_unstable_by_key(|&(k, _)| k);
            *self = Firsts::Sealed(v);
        }
    }
}

/// Appends `n` as LEB128 (7 bits per byte, low first).
fn put_varint(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Takes a LEB128 number off the front of `bytes`; `None` if it is cut short or too long.
fn take_varint(bytes: &mut &[u8]) -> Option<usize> {
    let mut n = 0usize;
    let mut shift = 0;
    loop {
        let (&b, rest) = bytes.split_first()?;
        *bytes = rest;
        if shift > 56 {
            return None;
        }
        n |= ((b & 0x7f) as usize) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            return Some(n);
        }
    }
}

fn encode_id(blob: &mut Vec<u8>, id: &[u8]) {
    put_varint(blob, id.len());
    blob.extend_from_slice(id);
}

/// The ids of a stored batch, in order.
struct BlobIds<'a> {
    blob: &'a [u8],
}

impl<'a> Iterator for BlobIds<'a> {
    type Item = std::result::Result<&'a [u8], ()>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.blob.is_empty() {
            return None;
        }
        let Some(len) = take_varint(&mut self.blob).filter(|l| *l <= self.blob.len()) else {
            self.blob = &[];
            return Some(Err(()));
        };
        let (id, rest) = self.blob.split_at(len);
        self.blob = rest;
        Some(Ok(id))
    }
}

/// Appends `id` to a version-3 export bucket as the length of the prefix it shares with the
/// previous id (`prev`, then replaced by `id`), the length of the rest, and the rest.
#[cfg(test)]
fn put_front_coded(out: &mut Vec<u8>, prev: &mut Vec<u8>, id: &[u8]) {
    let shared = prev.iter().zip(id).take_while(|(a, b)| a == b).count();
    put_varint(out, shared);
    put_varint(out, id.len() - shared);
    out.extend_from_slice(&id[shared..]);
    prev.truncate(shared);
    prev.extend_from_slice(&id[shared..]);
}

/// Takes one id written by [`put_front_coded`] off `bytes` into `id` (which holds the previous
/// one); `None` if it does not decode.
fn take_front_coded(bytes: &mut &[u8], id: &mut Vec<u8>) -> Option<()> {
    let shared = take_varint(bytes).filter(|s| *s <= id.len())?;
    let rest = take_varint(bytes).filter(|r| *r <= bytes.len())?;
    id.truncate(shared);
    id.extend_from_slice(&bytes[..rest]);
    *bytes = &bytes[rest..];
    Some(())
}

/// Takes one id of an export bucket off the bytes into the id buffer (which holds the previous
/// id): [`take_id_v4`] or, for version-3 exports, [`take_front_coded`].
type TakeId = fn(&mut &[u8], &mut Vec<u8>) -> Option<()>;

/// The last 8 bytes of `id` as a big-endian counter (`None` for ids shorter than 8 bytes).
fn counter(id: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = id.get(id.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

/// Deltas smaller than this (either sign) are written as deltas: their tag
/// (`zigzag(delta) << 1`) stays below 2^63, which `take_varint` reads back.
const MAX_DELTA: u64 = 1 << 61;

/// Appends `id` to a version-4 export bucket. An id of the previous id's length that differs
/// from it only in its last 8 bytes (a big-endian counter, as the engine's integer ids are) is
/// written as the counter's difference: one LEB128 number `zigzag(delta) << 1`, so one byte for
/// the next integer. Any other id is front-coded: `shared << 1 | 1` (the length of the prefix
/// it shares with the previous id), the length of the rest, the rest. `prev` holds the previous
/// id and is replaced by `id`.
fn put_id_v4(out: &mut Vec<u8>, prev: &mut Vec<u8>, id: &[u8]) {
    if prev.len() == id.len() && id.len() >= 8 && prev[..id.len() - 8] == id[..id.len() - 8] {
        let (a, b) = (counter(prev), counter(id));
        let delta = b.expect("8 bytes").wrapping_sub(a.expect("8 bytes")) as i64;
        if delta.unsigned_abs() < MAX_DELTA {
            let zigzag = ((delta << 1) ^ (delta >> 63)) as u64;
            put_varint(out, (zigzag << 1) as usize);
            let at = id.len() - 8;
            prev[at..].copy_from_slice(&id[at..]);
            return;
        }
    }
    let shared = prev.iter().zip(id).take_while(|(a, b)| a == b).count();
    put_varint(out, shared << 1 | 1);
    put_varint(out, id.len() - shared);
    out.extend_from_slice(&id[shared..]);
    prev.truncate(shared);
    prev.extend_from_slice(&id[shared..]);
}

/// Takes one id written by [`put_id_v4`] off `bytes` into `id` (which holds the previous one);
/// `None` if it does not decode.
fn take_id_v4(bytes: &mut &[u8], id: &mut Vec<u8>) -> Option<()> {
    let tag = take_varint(bytes)? as u64;
    if tag & 1 == 0 {
        let zigzag = tag >> 1;
        let delta = ((zigzag >> 1) as i64) ^ -((zigzag & 1) as i64);
        let next = counter(id)?.wrapping_add(delta as u64);
        let at = id.len() - 8;
        id[at..].copy_from_slice(&next.to_be_bytes());
        return Some(());
    }
    let shared = usize::try_from(tag >> 1).ok().filter(|s| *s <= id.len())?;
    let rest = take_varint(bytes).filter(|r| *r <= bytes.len())?;
    id.truncate(shared);
    id.extend_from_slice(&bytes[..rest]);
    *bytes = &bytes[rest..];
    Some(())
}

fn corrupt(bucket: &str, batch: u64) -> Error {
    Error::Corrupt {
        ledger: format!("<dedup filter {bucket}>"),
        position: batch,
        detail: "stored batch of ids does not decode".into(),
    }
}

fn batch_number(bucket: &str, key: &[u8]) -> Result<u32> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| corrupt(bucket, 0))?;
    u32::try_from(u64::from_be_bytes(bytes)).map_err(|_| corrupt(bucket, 0))
}

/// The ids being written by one call: a `WriteBatch` and the newest bucket's open stored batch.
struct Pending {
    writes: WriteBatch,
    blob: Vec<u8>,
    ids: usize,
}

impl Pending {
    fn new() -> Pending {
        Pending {
            writes: WriteBatch::default(),
            blob: Vec::new(),
            ids: 0,
        }
    }

    /// Adds `id` to the open stored batch of `bucket` (the newest).
    #[inline]
    fn add(&mut self, db: &DB, bucket: &mut Bucket, id: &[u8]) -> Result<()> {
        if self.ids == MAX_IDS_PER_BATCH {
            self.seal(db, bucket)?;
        }
        if self.ids == 0 && bucket.next_batch == u32::MAX {
            return Err(Error::InvalidRequest(
                "dedup filter bucket holds 2^32 stored batches: use larger insert batches".into(),
            ));
        }
        bucket.note(IdHash::of(id), bucket.next_batch);
        encode_id(&mut self.blob, id);
        self.ids += 1;
        Ok(())
    }

    /// Puts the open stored batch (if any) into the `WriteBatch`.
    fn seal(&mut self, db: &DB, bucket: &mut Bucket) -> Result<()> {
        if self.ids > 0 {
            let cf = db
                .cf_handle(&bucket.name)
                .expect("bucket column family exists");
            self.writes
                .put_cf(cf, (bucket.next_batch as u64).to_be_bytes(), &self.blob);
            bucket.next_batch += 1;
            self.blob.clear();
            self.ids = 0;
        }
        Ok(())
    }

    /// Seals and writes everything pending.
    fn write(&mut self, db: &DB, bucket: &mut Bucket, opts: &WriteOptions) -> Result<()> {
        self.seal(db, bucket)?;
        if !self.writes.is_empty() {
            db.write_opt(std::mem::take(&mut self.writes), opts)?;
        }
        Ok(())
    }
}

/// The first bytes of a [`DedupFilter::export`] (version 4: integer-like ids as deltas, others
/// front-coded).
pub const EXPORT_MAGIC: &[u8] = b"sardonyx-dedup-export-4\0";
/// The first bytes of a version-3 export (every id front-coded), still read by
/// [`DedupFilter::import`]; earlier exports (a bincode list of ids) are no longer read.
const EXPORT_MAGIC_V3: &[u8] = b"sardonyx-dedup-export-3\0";

/// A local, persistent set of recently seen ids in rotating buckets (see the module docs).
pub struct DedupFilter {
    db: DB,
    config: DedupConfig,
    /// Oldest first; never empty.
    buckets: VecDeque<Bucket>,
    write_opts: WriteOptions,
    /// The block cache the column families share (memory bounded as for the log's database).
    cache: rocksdb::Cache,
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
    /// locators from its buckets' stored batches (and converting buckets of the earlier
    /// one-key-per-id layout). If `config` keeps fewer buckets than are stored, the oldest are
    /// dropped.
    pub fn open(dir: impl AsRef<Path>, config: DedupConfig) -> Result<DedupFilter> {
        config.validate()?;
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir)?;
        let (opts, cache) = crate::store::db_options(MEMTABLE_BYTES, BLOCK_CACHE_BYTES)?;
        let existing = DB::list_cf(&opts, dir).unwrap_or_default();
        let mut seqs: Vec<u64> = existing
            .iter()
            .filter_map(|n| parse_name(n, BUCKET_PREFIX))
            .collect();
        let legacy: Vec<(u64, String)> = existing
            .iter()
            .filter_map(|n| Some((parse_name(n, LEGACY_PREFIX)?, n.clone())))
            .collect();
        let mut names: Vec<String> = vec!["default".into()];
        names.extend(seqs.iter().map(|s| bucket_name(*s)));
        names.extend(legacy.iter().map(|(_, n)| n.clone()));
        let db = DB::open_cf(&opts, dir, &names)?;
        let mut filter = DedupFilter {
            db,
            config,
            buckets: VecDeque::new(),
            write_opts: WriteOptions::default(),
            cache,
        };
        for (seq, name) in legacy {
            filter.convert_legacy(seq, &name)?;
            seqs.push(seq);
        }
        seqs.sort_unstable();
        seqs.dedup();
        for seq in seqs {
            let bucket = filter.load_bucket(seq)?;
            filter.buckets.push_back(bucket);
        }
        if filter.buckets.is_empty() {
            filter.start_bucket(0)?;
        }
        filter.drop_excess()?;
        let newest = filter.buckets.len() - 1;
        for b in filter.buckets.iter_mut().take(newest) {
            b.first.seal();
        }
        Ok(filter)
    }

    /// Rewrites a bucket of the earlier layout (id → empty value) as stored batches, then drops
    /// it. Idempotent: a conversion cut short is redone from the old bucket on the next open.
    fn convert_legacy(&mut self, seq: u64, old: &str) -> Result<()> {
        let new = bucket_name(seq);
        if self.db.cf_handle(&new).is_some() {
            self.db.drop_cf(&new)?;
        }
        self.db
            .create_cf(&new, &crate::store::cf_options(&self.cache))?;
        let mut ids = Vec::new();
        {
            let handle = self.db.cf_handle(old).expect("opened above");
            for kv in self.db.iterator_cf(handle, IteratorMode::Start) {
                let (k, _) = kv?;
                ids.push(k);
            }
        }
        let mut bucket = Bucket::new(seq, ids.len() as u64, &self.config);
        let mut pending = Pending::new();
        for id in &ids {
            pending.add(&self.db, &mut bucket, id)?;
        }
        pending.write(&self.db, &mut bucket, &self.write_opts)?;
        self.db.drop_cf(old)?;
        Ok(())
    }

    /// Reads a bucket's stored batches and rebuilds its bloom filter and locator.
    fn load_bucket(&self, seq: u64) -> Result<Bucket> {
        let name = bucket_name(seq);
        let handle = self.db.cf_handle(&name).expect("opened above");
        let mut batches = Vec::new();
        let mut count = 0u64;
        for kv in self.db.iterator_cf(handle, IteratorMode::Start) {
            let (k, v) = kv?;
            let n = batch_number(&name, &k)?;
            for id in (BlobIds { blob: &v }) {
                id.map_err(|()| corrupt(&name, n as u64))?;
                count += 1;
            }
            batches.push((n, v));
        }
        let mut bucket = Bucket::new(seq, count, &self.config);
        for (n, v) in &batches {
            for id in (BlobIds { blob: v }) {
                bucket.note(IdHash::of(id.expect("decoded above")), *n);
            }
            bucket.next_batch = n.saturating_add(1);
        }
        Ok(bucket)
    }

    fn start_bucket(&mut self, seq: u64) -> Result<()> {
        let b = Bucket::new(seq, 0, &self.config);
        self.db
            .create_cf(&b.name, &crate::store::cf_options(&self.cache))?;
        self.buckets.push_back(b);
        Ok(())
    }

    fn drop_excess(&mut self) -> Result<()> {
        while self.buckets.len() > self.config.num_buckets {
            let old = self.buckets.pop_front().expect("non-empty");
            self.db.drop_cf(&old.name)?;
        }
        Ok(())
    }

    /// Seals the newest bucket, starts a new one and drops the oldest past `num_buckets`.
    fn rotate(&mut self) -> Result<()> {
        if let Some(b) = self.buckets.back_mut() {
            b.first.seal();
        }
        let seq = self.buckets.back().map_or(0, |b| b.seq + 1);
        self.start_bucket(seq)?;
        self.drop_excess()
    }

    /// True if stored batch `batch` of `bucket` holds exactly `id`.
    fn batch_holds(&self, bucket: &Bucket, batch: u32, id: &[u8]) -> Result<bool> {
        let handle = self
            .db
            .cf_handle(&bucket.name)
            .expect("bucket column family exists");
        let Some(blob) = self
            .db
            .get_pinned_cf(handle, (batch as u64).to_be_bytes())?
        else {
            return Ok(false);
        };
        for stored in (BlobIds { blob: &blob }) {
            if stored.map_err(|()| corrupt(&bucket.name, batch as u64))? == id {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// True if `id` is stored in `bucket` (after a bloom "maybe").
    fn confirm(&self, bucket: &Bucket, h: IdHash, id: &[u8]) -> Result<bool> {
        let Some(first) = bucket.first.get(h.key()) else {
            return Ok(false);
        };
        if self.batch_holds(bucket, first, id)? {
            return Ok(true);
        }
        for &batch in bucket.more.get(&h.key()).into_iter().flatten() {
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
        // Pass 1, branch-free: does any bucket's bloom say "maybe"?
        answers.extend(hashes.iter().map(|&h| {
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

    /// Inserts ids into the newest bucket, rotating buckets as they fill: one RocksDB write
    /// (one stored batch per bucket touched, split every 1024 ids) per call,
    /// plus one per rotation. Removes the mark.
    pub fn insert_batch<I, T>(&mut self, ids: I) -> Result<()>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<[u8]>,
    {
        self.insert_batch_marked(ids, None)
    }

    /// [`DedupFilter::insert_batch`], storing `mark` (or removing the mark, for `None`) in the
    /// same RocksDB write as the last of the ids (a call with no ids only sets the mark).
    pub fn insert_batch_marked<I, T>(&mut self, ids: I, mark: Option<&[u8]>) -> Result<()>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<[u8]>,
    {
        let mut pending = Pending::new();
        if mark.is_none() {
            // In the first write: no id of this call is ever stored under the old mark.
            pending.writes.delete(MARK_KEY);
        }
        for id in ids {
            if self.buckets.back().expect("non-empty").count >= self.config.bucket_size {
                // Write what belongs to the full bucket before its column family may be dropped.
                let full = self.buckets.back_mut().expect("non-empty");
                pending.write(&self.db, full, &self.write_opts)?;
                self.rotate()?;
            }
            let current = self.buckets.back_mut().expect("non-empty");
            pending.add(&self.db, current, id.as_ref())?;
        }
        if let Some(m) = mark {
            pending.writes.put(MARK_KEY, m);
        }
        let current = self.buckets.back_mut().expect("non-empty");
        pending.write(&self.db, current, &self.write_opts)
    }

    /// The mark stored by the last insert, if it had one (see the module docs).
    pub fn mark(&self) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get(MARK_KEY)?)
    }

    /// Forgets every id (and the mark).
    pub fn clear(&mut self) -> Result<()> {
        // The mark goes first and durably: a filter emptied only in part must never look like
        // the ledger prefix the mark names.
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        self.db.delete_opt(MARK_KEY, &sync)?;
        let next = self.buckets.back().map_or(0, |b| b.seq + 1);
        while let Some(b) = self.buckets.pop_front() {
            self.db.drop_cf(&b.name)?;
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

    /// Serializes every stored id with its bucket boundaries (for a ledger snapshot): each
    /// bucket's ids in insertion order. The format is the magic `sardonyx-dedup-export-4\0`,
    /// then per bucket (oldest first) its byte length (u64, little-endian) and its ids, each
    /// written as a delta from the previous id when only its last 8 bytes (a big-endian counter)
    /// differ, front-coded otherwise (see `put_id_v4`): a sequential 9-byte integer id costs one
    /// byte, an arbitrary id little more than its bytes. The export is one buffer built without
    /// an allocation per id, and reading the stored batches for it does not fill the block cache.
    pub fn export(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(EXPORT_MAGIC.len() + 64 + self.len() as usize);
        out.extend_from_slice(EXPORT_MAGIC);
        let mut prev = Vec::new();
        for b in &self.buckets {
            let handle = self
                .db
                .cf_handle(&b.name)
                .expect("bucket column family exists");
            let at = out.len();
            out.extend_from_slice(&[0; 8]);
            prev.clear();
            let mut once = rocksdb::ReadOptions::default();
            once.fill_cache(false);
            for kv in self.db.iterator_cf_opt(handle, once, IteratorMode::Start) {
                let (k, v) = kv?;
                let n = batch_number(&b.name, &k)?;
                for id in (BlobIds { blob: &v }) {
                    let id = id.map_err(|()| corrupt(&b.name, n as u64))?;
                    put_id_v4(&mut out, &mut prev, id);
                }
            }
            let len = (out.len() - at - 8) as u64;
            out[at..at + 8].copy_from_slice(&len.to_le_bytes());
        }
        Ok(out)
    }

    /// Replaces the contents with an [`DedupFilter::export`] (or a version-3 export of an earlier
    /// release), keeping its bucket boundaries (the oldest buckets are dropped if the export has
    /// more than `num_buckets`).
    pub fn import(&mut self, bytes: &[u8]) -> Result<()> {
        let bad = |detail: &str| Error::Corrupt {
            ledger: String::from("<dedup filter export>"),
            position: 0,
            detail: detail.to_owned(),
        };
        let (mut rest, take_id): (&[u8], TakeId) =
            if let Some(rest) = bytes.strip_prefix(EXPORT_MAGIC) {
                (rest, take_id_v4)
            } else if let Some(rest) = bytes.strip_prefix(EXPORT_MAGIC_V3) {
                (rest, take_front_coded)
            } else {
                return Err(bad("not a dedup filter export"));
            };
        // Check the whole export before changing anything.
        let mut buckets = Vec::new();
        let mut id = Vec::new();
        while !rest.is_empty() {
            let (len, tail) = rest
                .split_first_chunk::<8>()
                .ok_or_else(|| bad("truncated bucket length"))?;
            let len = usize::try_from(u64::from_le_bytes(*len))
                .ok()
                .filter(|l| *l <= tail.len())
                .ok_or_else(|| bad("bucket longer than the export"))?;
            let (blob, tail) = tail.split_at(len);
            let mut count = 0u64;
            let mut ids = blob;
            id.clear();
            while !ids.is_empty() {
                take_id(&mut ids, &mut id).ok_or_else(|| bad("an id does not decode"))?;
                count += 1;
            }
            buckets.push((blob, count));
            rest = tail;
        }
        self.clear()?;
        for (i, (blob, count)) in buckets.into_iter().enumerate() {
            if i > 0 {
                self.rotate()?;
            }
            let current = self.buckets.back_mut().expect("non-empty");
            if count > self.config.bucket_size {
                // A bucket from a filter with larger buckets: size its bloom filter to fit.
                *current = Bucket::new(current.seq, count, &self.config);
            }
            let mut pending = Pending::new();
            let mut ids = blob;
            id.clear();
            while !ids.is_empty() {
                take_id(&mut ids, &mut id).expect("checked above");
                pending.add(&self.db, current, &id)?;
            }
            pending.write(&self.db, current, &self.write_opts)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::Strategy;

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

    #[test]
    fn hash_depends_on_every_byte_and_the_length() {
        let a = IdHash::of(b"vote-12345");
        assert_eq!(a, IdHash::of(b"vote-12345"));
        assert_ne!(a, IdHash::of(b"vote-12346"));
        assert_ne!(IdHash::of(b""), IdHash::of(b"\0"));
        assert_ne!(IdHash::of(b"ab"), IdHash::of(b"ab\0"));
        assert_ne!(IdHash::of(&[0; 8]), IdHash::of(&[0; 16]));
        // Every byte of every length of tail: flipping any one changes the hash.
        for len in 1..=16usize {
            let base: Vec<u8> = (0..len as u8).collect();
            for i in 0..len {
                let mut other = base.clone();
                other[i] ^= 0x5a;
                assert_ne!(IdHash::of(&base), IdHash::of(&other), "len {len} byte {i}");
            }
        }
    }

    /// The bloom filters keep close to the configured false-positive rate on sequential ids
    /// (the ids of the vote workload): the one hash and the blocks lose nothing visible.
    #[test]
    fn bloom_false_positive_rate_is_near_the_target() {
        for fp in [0.01, 0.001] {
            let n = 100_000u64;
            let mut bloom = BloomBits::new(n as usize, fp);
            for i in 0..n {
                bloom.set(IdHash::of(&id(i)));
            }
            for i in 0..n {
                assert!(bloom.check(IdHash::of(&id(i))));
            }
            let trials = 200_000u64;
            let hits = (n..n + trials)
                .filter(|i| bloom.check(IdHash::of(&id(*i))))
                .count();
            let rate = hits as f64 / trials as f64;
            eprintln!("false-positive rate {rate} for target {fp}");
            assert!(rate < fp * 1.3, "{rate} for target {fp}");
        }
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
        for b in f.buckets.iter_mut() {
            let batches: Vec<u32> = (0..b.next_batch).collect();
            for i in 0..240u64 {
                let k = IdHash::of(&id(i)).key();
                match &mut b.first {
                    Firsts::Open(m) => {
                        m.insert(k, batches[0]);
                    }
                    Firsts::Sealed(v) => {
                        let mut all: Vec<(u32, u32)> =
                            v.iter().copied().filter(|e| e.0 != k).collect();
                        all.push((k, batches[0]));
                        all.sort_unstable();
                        *v = all.into();
                    }
                }
                b.more.insert(k, batches[1..].to_vec());
            }
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
            f.buckets
                .iter()
                .map(|b| matches!(b.first, Firsts::Sealed(_)))
                .collect()
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

    #[test]
    fn locator_keeps_every_batch_of_a_repeated_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = DedupFilter::open(dir.path(), cfg(1000, 2, 0.01)).unwrap();
        f.insert_batch([b"x"]).unwrap();
        f.insert_batch([b"y"]).unwrap();
        f.insert_batch([b"x", b"x"]).unwrap();
        let b = f.buckets.back().unwrap();
        let kx = IdHash::of(b"x").key();
        assert_eq!(b.first.get(kx), Some(0));
        assert_eq!(b.more[&kx], vec![2]);
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

    #[test]
    fn converts_the_one_key_per_id_layout() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut opts = rocksdb::Options::default();
            opts.create_if_missing(true);
            opts.create_missing_column_families(true);
            let names = [
                "default",
                "bucket-00000000000000000004",
                "bucket-00000000000000000005",
            ];
            let db = DB::open_cf(&opts, dir.path(), names).unwrap();
            for (cf, ids) in [(names[1], 0..10u64), (names[2], 10..13u64)] {
                let h = db.cf_handle(cf).unwrap();
                for i in ids {
                    db.put_cf(h, id(i), []).unwrap();
                }
            }
        }
        let mut f = DedupFilter::open(dir.path(), cfg(10, 3, 0.01)).unwrap();
        assert_eq!(f.bucket_count(), 2);
        assert_eq!(f.len(), 13);
        for i in 0..13 {
            assert!(f.contains(&id(i)).unwrap(), "{i}");
        }
        assert!(!f.contains(&id(13)).unwrap());
        // Rotation continues after the converted buckets.
        f.insert_batch((13..30).map(id)).unwrap();
        assert_eq!(f.buckets.back().unwrap().seq, 6);
        drop(f);
        let names = DB::list_cf(&rocksdb::Options::default(), dir.path()).unwrap();
        assert!(
            names.iter().all(|n| !n.starts_with(LEGACY_PREFIX)),
            "{names:?}"
        );
    }

    #[test]
    fn corrupt_stored_batch_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut f = DedupFilter::open(dir.path(), cfg(10, 2, 0.01)).unwrap();
            f.insert_batch([b"abc"]).unwrap();
            let b = f.buckets.back().unwrap();
            let h = f.db.cf_handle(&b.name).unwrap();
            f.db.put_cf(h, 0u64.to_be_bytes(), [0x05, b'a']).unwrap();
            assert!(f.contains(b"abc").is_err());
        }
        assert!(DedupFilter::open(dir.path(), cfg(10, 2, 0.01)).is_err());
    }

    /// `ids` written one after the other with `put`, then read back with `take`.
    fn coded(
        ids: &[Vec<u8>],
        put: fn(&mut Vec<u8>, &mut Vec<u8>, &[u8]),
        take: TakeId,
    ) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut prev = Vec::new();
        for id in ids {
            put(&mut out, &mut prev, id);
        }
        let (mut rest, mut id, mut back) = (&out[..], Vec::new(), Vec::new());
        while !rest.is_empty() {
            take(&mut rest, &mut id).expect("every id decodes");
            back.push(id.clone());
        }
        back
    }

    proptest::proptest! {
        /// Front coding gives back exactly the ids written, in order, whatever they share.
        #[test]
        fn front_coding_round_trips(ids in proptest::collection::vec(
            proptest::collection::vec(0u8..4, 0..12), 0..40)
        ) {
            proptest::prop_assert_eq!(coded(&ids, put_front_coded, take_front_coded), ids);
        }

        /// The version-4 id coding gives back exactly the ids written, in order: integer-like ids
        /// (a shared first byte and a big-endian counter, with deltas of any size and sign) mixed
        /// with arbitrary ones of any length.
        #[test]
        fn id_coding_round_trips(ids in proptest::collection::vec(
            proptest::prop_oneof![
                (0u8..2, proptest::prop_oneof![
                    0u64..40,
                    (1u64 << 60)..(1u64 << 60) + 40,
                    proptest::num::u64::ANY,
                ])
                    .prop_map(|(p, n)| {
                        let mut id = vec![b'i' + p];
                        id.extend_from_slice(&n.to_be_bytes());
                        id
                    }),
                proptest::collection::vec(0u8..4, 0..12),
            ],
            0..60)
        ) {
            proptest::prop_assert_eq!(coded(&ids, put_id_v4, take_id_v4), ids);
        }
    }

    /// Counter deltas at the edge of what is written as a delta round-trip (a tag of 2^63 would
    /// need a tenth LEB128 byte, which the reader refuses).
    #[test]
    fn the_largest_deltas_round_trip() {
        let at = |n: u64| [b"i".as_slice(), &n.to_be_bytes()].concat();
        let edge = MAX_DELTA;
        let ids: Vec<Vec<u8>> = [0, edge, 0, edge - 1, 0, edge + 1, u64::MAX, 0]
            .into_iter()
            .map(at)
            .collect();
        assert_eq!(coded(&ids, put_id_v4, take_id_v4), ids);
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
        let v4 = f.export().unwrap();
        assert!(v4.starts_with(EXPORT_MAGIC) && v4.len() < v3.len() / 2);
        let g_dir = tempfile::tempdir().unwrap();
        let mut g = DedupFilter::open(g_dir.path(), cfg(2_000, 3, 0.01)).unwrap();
        g.import(&v4).unwrap();
        assert_eq!(g.export().unwrap(), v4);
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
