//! The database of one node: the names of its column families (what each holds and how it is
//! keyed), the RocksDB options and memory budgets shared with the dedup filter's database, and
//! opening it. The log store and the state machine each own some of its column families; the
//! helpers they share (storage errors in openraft's type, synced writes) live here too.

use std::path::Path;
use std::sync::Arc;

use openraft::{AnyError, StorageError, StorageIOError};
use rocksdb::{ColumnFamilyDescriptor, Options, WriteOptions, DB};

use crate::error::Result;

/// Raft log entries, keyed by index (u64 BE).
pub(crate) const CF_LOGS: &str = "raft_logs";
/// Raft vote, committed id, last purged id.
pub(crate) const CF_RAFT_META: &str = "raft_meta";
/// Ledger records: `u16 len ‖ ledger ‖ position BE` → `crc32 LE ‖ payload`.
pub(crate) const CF_RECORDS: &str = "ledger_records";
/// Ledger metadata: `ledger` → bincode [`LedgerMeta`]; and each fenced ledger's fence:
/// `0xFF ‖ ledger` → fence (u64 BE) (see [`fence_key`]).
pub(crate) const CF_LEDGERS: &str = "ledger_meta";
/// Latest ledger snapshot: `ledger` → `crc32 LE ‖ covers BE ‖ payload`.
pub(crate) const CF_SNAPSHOTS: &str = "ledger_snapshots";
/// Remembered request ids: `client BE ‖ seq BE` → position BE.
pub(crate) const CF_REQUESTS: &str = "ledger_requests";
/// State machine metadata: last applied log id, membership, the current Raft snapshot.
pub(crate) const CF_SM_META: &str = "sm_meta";
/// The coordination log's entries: position (u64 BE, from 1) → `crc32 LE ‖ payload`. A column
/// family of its own, so no ledger name can ever address it.
pub(crate) const CF_ENTRIES: &str = "coord_entries";
/// The coordination log's remembered request ids: `client BE ‖ seq BE` → position BE (apart
/// from the ledgers' [`CF_REQUESTS`], so the same id used for a ledger and for the
/// coordination log are two requests).
pub(crate) const CF_ENTRY_REQUESTS: &str = "coord_requests";

/// The state machine's data column families (what a Raft snapshot carries). A snapshot row
/// names its column family by its index here: new ones go last, so that snapshots written
/// before them still install.
pub(super) const DATA_CFS: [&str; 6] = [
    CF_RECORDS,
    CF_LEDGERS,
    CF_SNAPSHOTS,
    CF_REQUESTS,
    CF_ENTRIES,
    CF_ENTRY_REQUESTS,
];

pub(super) type StorageResult<T> = std::result::Result<T, StorageError<u64>>;

pub(super) fn sto_read(e: impl std::fmt::Display) -> StorageError<u64> {
    StorageIOError::read(AnyError::error(e)).into()
}

pub(super) fn sto_write(e: impl std::fmt::Display) -> StorageError<u64> {
    StorageIOError::write(AnyError::error(e)).into()
}

/// Memtable budget of one database, all column families together: past it RocksDB flushes the
/// largest memtable. Without a budget every column family may hold two 64 MiB memtables (the
/// default), which is where most of a 1M-event run's peak RSS went.
pub(crate) const DB_WRITE_BUFFER_BYTES: usize = 8 << 20;
/// Memtable size of one column family (RocksDB's default is 64 MiB).
const CF_WRITE_BUFFER_BYTES: usize = 2 << 20;
/// Write-ahead log budget of one database: past it RocksDB flushes the column families whose
/// memtables keep the oldest WAL file alive, so it can be deleted. RocksDB's default is four
/// times all memtables together; with a column family that is written rarely (Raft's vote, a
/// ledger's fence) that let 100 WAL files (208 MB at 10M events) pile up, and a restart replayed
/// every one of them.
const WAL_BUDGET_BYTES: u64 = 16 << 20;
/// Block cache shared by the column families of one database (RocksDB's default is a cache
/// per column family). Small: ledger entries are read back once, when they are applied (most
/// still in the memtable) or at a recovery, so a cache buys little; 8 MiB of it was ~4 MiB of
/// Q4's peak RSS at 10M events.
const BLOCK_CACHE_BYTES: usize = 2 << 20;

/// Values of this size or more go to blob files (see [`cf_options`]).
const LARGE_VALUE_BYTES: u64 = 64 << 10;

/// Options of every column family: small memtables, a shared block cache, no compression.
///
/// Compression is off because what these databases hold is short-lived (ledger entries are
/// dropped at the next snapshot, dedup batches when their bucket rotates) and mostly small
/// integers already packed by our own encodings: snappy cost CPU on every flush and
/// compaction, and it held a compressed copy of each block being written, megabytes when a
/// block holds a ledger snapshot (7 MB of Q4's 83 MB peak heap at 10M events).
pub(crate) fn cf_options(cache: &rocksdb::Cache) -> Options {
    let mut o = Options::default();
    o.set_write_buffer_size(CF_WRITE_BUFFER_BYTES);
    o.set_max_write_buffer_number(2);
    o.set_compression_type(rocksdb::DBCompressionType::None);
    // Large values (ledger snapshots, Raft entries that pack many commands) are kept apart in
    // blob files: a flush or compaction writes them out as they are instead of building a
    // table block around each (a block is buffered whole and copied again when finished),
    // and compactions of the Raft log move references instead of megabytes. A blob file is
    // deleted once compactions have dropped every key that refers to it.
    o.set_enable_blob_files(true);
    o.set_min_blob_size(LARGE_VALUE_BYTES);
    let mut table = rocksdb::BlockBasedOptions::default();
    table.set_block_cache(cache);
    o.set_block_based_table_factory(&table);
    o
}

/// Options of a database (created if missing) whose memory is bounded: the options of
/// [`cf_options`] with a block cache of `cache_bytes` of its own, a memtable budget of
/// `memtable_bytes` and a WAL budget of [`WAL_BUDGET_BYTES`]. Also returns the cache, for the
/// column families.
pub(crate) fn db_options(
    memtable_bytes: usize,
    cache_bytes: usize,
) -> Result<(Options, rocksdb::Cache)> {
    let cache = rocksdb::Cache::new_lru_cache(cache_bytes)?;
    let mut opts = cf_options(&cache);
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_db_write_buffer_size(memtable_bytes);
    opts.set_max_total_wal_size(WAL_BUDGET_BYTES);
    Ok((opts, cache))
}

/// Opens (or creates) a node's database with all column families (a database made before a
/// column family existed gets it, empty, at its next open).
pub(crate) fn open_db(dir: &Path) -> Result<Arc<DB>> {
    std::fs::create_dir_all(dir)?;
    let (opts, cache) = db_options(DB_WRITE_BUFFER_BYTES, BLOCK_CACHE_BYTES)?;
    let cfs = [
        CF_LOGS,
        CF_RAFT_META,
        CF_RECORDS,
        CF_LEDGERS,
        CF_SNAPSHOTS,
        CF_REQUESTS,
        CF_SM_META,
        CF_ENTRIES,
        CF_ENTRY_REQUESTS,
    ]
    .into_iter()
    .map(|n| ColumnFamilyDescriptor::new(n, cf_options(&cache)));
    let db = DB::open_cf_descriptors(&opts, dir, cfs)?;
    Ok(Arc::new(db))
}

pub(super) fn cf<'a>(db: &'a DB, name: &str) -> &'a rocksdb::ColumnFamily {
    db.cf_handle(name).expect("column family created at open")
}

pub(super) fn sync_opts() -> WriteOptions {
    let mut o = WriteOptions::default();
    o.set_sync(true);
    o
}
