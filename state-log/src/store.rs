//! RocksDB storage of one node: Raft's log store and the ledger state machine (with its Raft
//! snapshots), in column families of one database.
//!
//! Durability: log appends are written to RocksDB (readable at once) and acknowledged to Raft only
//! after a dedicated flusher thread has synced the write-ahead log (`fsync`), coalescing the
//! syncs of appends that arrive together. Votes, truncations and installed snapshots are written
//! with `sync = true`. State machine writes are not synced on their own: every state machine
//! write is followed in the same WAL by a synced log write or is re-applied from the synced log
//! after a crash (each entry's changes and its `last_applied` are one atomic write batch).

// openraft's storage traits fix the error type (`StorageError`, ~224 bytes); helpers share it.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};

use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, LogState, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership,
    Vote,
};
use rocksdb::{
    ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB,
};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::codec::{self, crc, encode};
use crate::error::{Error, Result};
use crate::raft_types::{BatchOutcome, Command, Outcome, TypeConfig};
use crate::types::{LedgerInfo, LedgerRead, ReadStats};

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

/// The state machine's data column families (what a Raft snapshot carries).
const DATA_CFS: [&str; 4] = [CF_RECORDS, CF_LEDGERS, CF_SNAPSHOTS, CF_REQUESTS];

/// How many recent sequence numbers per client the state machine remembers for deduplication.
pub const REQUEST_ID_WINDOW: u64 = 1 << 16;

type StorageResult<T> = std::result::Result<T, StorageError<u64>>;

fn sto_read(e: impl std::fmt::Display) -> StorageError<u64> {
    StorageIOError::read(AnyError::error(e)).into()
}

fn sto_write(e: impl std::fmt::Display) -> StorageError<u64> {
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

/// Opens (or creates) a node's database with all column families.
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
    ]
    .into_iter()
    .map(|n| ColumnFamilyDescriptor::new(n, cf_options(&cache)));
    let db = DB::open_cf_descriptors(&opts, dir, cfs)?;
    Ok(Arc::new(db))
}

fn cf<'a>(db: &'a DB, name: &str) -> &'a rocksdb::ColumnFamily {
    db.cf_handle(name).expect("column family created at open")
}

fn sync_opts() -> WriteOptions {
    let mut o = WriteOptions::default();
    o.set_sync(true);
    o
}

// ---------------------------------------------------------------------------------------------
// Log store

enum FlushMsg {
    Flush(LogFlushed<TypeConfig>),
    Stop,
}

/// The thread that syncs the WAL and acknowledges log appends to Raft, in order.
pub(crate) struct Flusher {
    tx: std_mpsc::Sender<FlushMsg>,
    handle: Option<std::thread::JoinHandle<()>>,
    /// Number of WAL syncs made (each may cover many appends).
    pub(crate) syncs: Arc<AtomicU64>,
}

impl Flusher {
    pub(crate) fn start(db: Arc<DB>) -> Self {
        let (tx, rx) = std_mpsc::channel::<FlushMsg>();
        let syncs = Arc::new(AtomicU64::new(0));
        let counter = syncs.clone();
        let handle = std::thread::Builder::new()
            .name("state-log-fsync".into())
            .spawn(move || {
                let mut stop = false;
                while !stop {
                    let Ok(first) = rx.recv() else { break };
                    let mut waiting = Vec::new();
                    for msg in std::iter::once(first).chain(rx.try_iter()) {
                        match msg {
                            FlushMsg::Flush(cb) => waiting.push(cb),
                            FlushMsg::Stop => stop = true,
                        }
                    }
                    if waiting.is_empty() {
                        continue;
                    }
                    let res = db.flush_wal(true);
                    counter.fetch_add(1, Ordering::Relaxed);
                    for cb in waiting {
                        cb.log_io_completed(match &res {
                            Ok(()) => Ok(()),
                            Err(e) => Err(std::io::Error::other(e.to_string())),
                        });
                    }
                }
            })
            .expect("spawn fsync thread");
        Self {
            tx,
            handle: Some(handle),
            syncs,
        }
    }

    fn sender(&self) -> std_mpsc::Sender<FlushMsg> {
        self.tx.clone()
    }

    /// Asks the thread to stop after acknowledging everything queued; returns it to join.
    pub(crate) fn begin_stop(&mut self) -> Option<std::thread::JoinHandle<()>> {
        let _ = self.tx.send(FlushMsg::Stop);
        self.handle.take()
    }

    /// Stops the thread and joins it.
    pub(crate) fn stop(&mut self) {
        if let Some(h) = self.begin_stop() {
            let _ = h.join();
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Raft's log storage on RocksDB.
#[derive(Clone)]
pub(crate) struct LogStore {
    db: Arc<DB>,
    flush_tx: std_mpsc::Sender<FlushMsg>,
}

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"last_purged";

impl LogStore {
    pub(crate) fn new(db: Arc<DB>, flusher: &Flusher) -> Self {
        Self {
            db,
            flush_tx: flusher.sender(),
        }
    }

    fn get_meta<T: for<'de> Deserialize<'de>>(&self, key: &[u8]) -> StorageResult<Option<T>> {
        match self
            .db
            .get_cf(cf(&self.db, CF_RAFT_META), key)
            .map_err(sto_read)?
        {
            None => Ok(None),
            Some(v) => codec::decode(&v).map(Some).map_err(sto_read),
        }
    }

    fn put_meta<T: Serialize>(&self, key: &[u8], value: &T, sync: bool) -> StorageResult<()> {
        let v = encode(value).map_err(sto_write)?;
        let opts = if sync {
            sync_opts()
        } else {
            WriteOptions::default()
        };
        self.db
            .put_cf_opt(cf(&self.db, CF_RAFT_META), key, v, &opts)
            .map_err(sto_write)
    }

    fn last_entry_log_id(&self) -> StorageResult<Option<LogId<u64>>> {
        let mut it = self
            .db
            .iterator_cf(cf(&self.db, CF_LOGS), IteratorMode::End);
        match it.next() {
            None => Ok(None),
            Some(kv) => {
                let (_, v) = kv.map_err(sto_read)?;
                let e: Entry<TypeConfig> = codec::decode(&v).map_err(sto_read)?;
                Ok(Some(e.log_id))
            }
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(&n) => n,
            Bound::Excluded(&n) => n + 1,
            Bound::Unbounded => 0,
        };
        let key = codec::u64_key(start);
        let it = self.db.iterator_cf(
            cf(&self.db, CF_LOGS),
            IteratorMode::From(&key, Direction::Forward),
        );
        let mut out = Vec::new();
        for kv in it {
            let (k, v) = kv.map_err(sto_read)?;
            let idx = u64::from_be_bytes(k.as_ref().try_into().map_err(sto_read)?);
            if !range.contains(&idx) {
                break;
            }
            out.push(codec::decode(&v).map_err(sto_read)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged: Option<LogId<u64>> = self.get_meta(KEY_PURGED)?.flatten();
        let last = self.last_entry_log_id()?.or(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> StorageResult<()> {
        self.put_meta(KEY_VOTE, vote, true)
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<u64>>> {
        self.get_meta(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> StorageResult<()> {
        self.put_meta(KEY_COMMITTED, &committed, false)
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<u64>>> {
        Ok(self
            .get_meta::<Option<LogId<u64>>>(KEY_COMMITTED)?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::default();
        let logs = cf(&self.db, CF_LOGS);
        for e in entries {
            batch.put_cf(
                logs,
                codec::u64_key(e.log_id.index),
                encode(&e).map_err(sto_write)?,
            );
        }
        // Readable now; durable when the flusher has synced the WAL and called back.
        self.db.write(batch).map_err(sto_write)?;
        self.flush_tx
            .send(FlushMsg::Flush(callback))
            .map_err(|_| sto_write("fsync thread stopped"))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> StorageResult<()> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            cf(&self.db, CF_LOGS),
            codec::u64_key(log_id.index),
            codec::u64_key(u64::MAX),
        );
        self.db.write_opt(batch, &sync_opts()).map_err(sto_write)
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> StorageResult<()> {
        let mut batch = WriteBatch::default();
        batch.put_cf(
            cf(&self.db, CF_RAFT_META),
            KEY_PURGED,
            encode(&Some(log_id)).map_err(sto_write)?,
        );
        batch.delete_range_cf(
            cf(&self.db, CF_LOGS),
            codec::u64_key(0),
            codec::u64_key(log_id.index + 1),
        );
        self.db.write(batch).map_err(sto_write)
    }
}

// ---------------------------------------------------------------------------------------------
// State machine

/// Per-ledger metadata kept by the state machine.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct LedgerMeta {
    next_position: u64,
    first_position: u64,
    entry_bytes: u64,
}

/// Key of a ledger's fence in [`CF_LEDGERS`]: `0xFF ‖ ledger name`. The byte 0xFF never occurs
/// in UTF-8, so the key cannot be any ledger's [`LedgerMeta`] key; a row of its own leaves the
/// encoding of `LedgerMeta` rows written before fences existed unchanged. Being a row of a data
/// column family, it is carried by Raft snapshots like every other.
fn fence_key(ledger: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + ledger.len());
    k.push(0xFF);
    k.extend_from_slice(ledger.as_bytes());
    k
}

/// Decodes a stored fence value.
fn decode_fence(v: &[u8]) -> std::result::Result<u64, String> {
    v.try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| format!("fence value of {} bytes", v.len()))
}

const KEY_APPLIED: &[u8] = b"last_applied";
const KEY_MEMBERSHIP: &[u8] = b"membership";
const KEY_SNAPSHOT: &[u8] = b"raft_snapshot";

/// A Raft snapshot as stored: its metadata and the serialized state machine.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<u64, openraft::BasicNode>,
    data: ByteBuf,
}

/// The serialized state machine carried by a Raft snapshot: every row of the data column
/// families (`(column family index in DATA_CFS, key, value)`).
#[derive(Serialize, Deserialize)]
struct SnapshotData {
    rows: Vec<(u8, ByteBuf, ByteBuf)>,
}

/// The ledger state machine on RocksDB. Cloning shares the database; reads may run concurrently
/// with Raft's apply (they use RocksDB snapshots for a consistent view).
#[derive(Clone)]
pub(crate) struct StateMachineStore {
    db: Arc<DB>,
    snapshot_seq: Arc<AtomicU64>,
}

/// Changes made by the entries of one `apply` call that are not in the database yet.
#[derive(Default)]
struct Overlay {
    metas: HashMap<String, LedgerMeta>,
    requests: HashMap<(u64, u64), u64>,
    /// Records put in this call: ledger → position → payload length.
    records: HashMap<String, BTreeMap<u64, u64>>,
    /// Latest snapshot position per ledger set in this call.
    snapshots: HashMap<String, u64>,
    /// Fences raised in this call.
    fences: HashMap<String, u64>,
}

impl StateMachineStore {
    pub(crate) fn new(db: Arc<DB>) -> Self {
        Self {
            db,
            snapshot_seq: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The underlying database (for shutdown accounting).
    pub(crate) fn db(&self) -> &Arc<DB> {
        &self.db
    }

    fn meta_of(&self, ov: &Overlay, ledger: &str) -> StorageResult<LedgerMeta> {
        if let Some(m) = ov.metas.get(ledger) {
            return Ok(*m);
        }
        match self
            .db
            .get_cf(cf(&self.db, CF_LEDGERS), ledger.as_bytes())
            .map_err(sto_read)?
        {
            None => Ok(LedgerMeta::default()),
            Some(v) => codec::decode(&v).map_err(sto_read),
        }
    }

    /// The ledger's fence (0 for a ledger never written with a fence).
    fn fence_of(&self, ov: &Overlay, ledger: &str) -> StorageResult<u64> {
        if let Some(f) = ov.fences.get(ledger) {
            return Ok(*f);
        }
        match self
            .db
            .get_cf(cf(&self.db, CF_LEDGERS), fence_key(ledger))
            .map_err(sto_read)?
        {
            None => Ok(0),
            Some(v) => decode_fence(&v).map_err(sto_read),
        }
    }

    fn snapshot_covers(&self, ov: &Overlay, ledger: &str) -> StorageResult<Option<u64>> {
        if let Some(c) = ov.snapshots.get(ledger) {
            return Ok(Some(*c));
        }
        // Pinned: only the 12-byte head is read, the snapshot (megabytes) is not copied out.
        match self
            .db
            .get_pinned_cf(cf(&self.db, CF_SNAPSHOTS), ledger.as_bytes())
            .map_err(sto_read)?
        {
            Some(v) if v.len() >= 12 => Ok(Some(u64::from_be_bytes(
                v[4..12].try_into().expect("8 bytes"),
            ))),
            _ => Ok(None),
        }
    }

    fn apply_command(
        &self,
        cmd: Command,
        ov: &mut Overlay,
        batch: &mut WriteBatch,
    ) -> StorageResult<Outcome> {
        match cmd {
            Command::Fenced { fence, command } => {
                let ledger = command.ledger().to_owned();
                let current = self.fence_of(ov, &ledger)?;
                if fence < current {
                    return Ok(Outcome::Rejected(Error::Fenced {
                        ledger,
                        fence,
                        current,
                    }));
                }
                let outcome = self.apply_command(*command, ov, batch)?;
                // Raise the fence only for an accepted command (and never lower it, even if the
                // command was itself a fenced one that raised it further).
                if !matches!(outcome, Outcome::Rejected(_)) && fence > self.fence_of(ov, &ledger)? {
                    batch.put_cf(
                        cf(&self.db, CF_LEDGERS),
                        fence_key(&ledger),
                        fence.to_be_bytes(),
                    );
                    ov.fences.insert(ledger, fence);
                }
                Ok(outcome)
            }
            Command::Append {
                ledger,
                request,
                record,
                crc: sum,
            } => {
                let rk = codec::request_key(request.client, request.seq);
                if let Some(p) = ov.requests.get(&(request.client, request.seq)) {
                    return Ok(Outcome::Appended(*p));
                }
                if let Some(v) = self
                    .db
                    .get_cf(cf(&self.db, CF_REQUESTS), rk)
                    .map_err(sto_read)?
                {
                    let p = u64::from_be_bytes(v.as_slice().try_into().map_err(sto_read)?);
                    return Ok(Outcome::Appended(p));
                }
                let prefix = match codec::ledger_prefix(&ledger) {
                    Ok(p) => p,
                    Err(e) => return Ok(Outcome::Rejected(e)),
                };
                let mut meta = self.meta_of(ov, &ledger)?;
                let position = meta.next_position;
                if crc(&record) != sum {
                    return Ok(Outcome::Rejected(Error::Corrupt {
                        ledger,
                        position,
                        detail: "record checksum mismatch before apply; not stored".into(),
                    }));
                }
                batch.put_cf(
                    cf(&self.db, CF_RECORDS),
                    codec::record_key(&prefix, position),
                    codec::record_value(sum, &record),
                );
                meta.next_position += 1;
                meta.entry_bytes += record.len() as u64;
                batch.put_cf(cf(&self.db, CF_REQUESTS), rk, position.to_be_bytes());
                if request.seq % 1024 == 0 && request.seq >= REQUEST_ID_WINDOW {
                    batch.delete_range_cf(
                        cf(&self.db, CF_REQUESTS),
                        codec::request_key(request.client, 0),
                        codec::request_key(request.client, request.seq - REQUEST_ID_WINDOW),
                    );
                }
                batch.put_cf(
                    cf(&self.db, CF_LEDGERS),
                    ledger.as_bytes(),
                    encode(&meta).map_err(sto_write)?,
                );
                ov.requests.insert((request.client, request.seq), position);
                ov.records
                    .entry(ledger.clone())
                    .or_default()
                    .insert(position, record.len() as u64);
                ov.metas.insert(ledger, meta);
                Ok(Outcome::Appended(position))
            }
            Command::Snapshot {
                ledger,
                covers,
                bytes,
                crc: sum,
            } => {
                let prefix = match codec::ledger_prefix(&ledger) {
                    Ok(p) => p,
                    Err(e) => return Ok(Outcome::Rejected(e)),
                };
                let mut meta = self.meta_of(ov, &ledger)?;
                if covers >= meta.next_position {
                    return Ok(Outcome::Rejected(Error::InvalidRequest(format!(
                        "snapshot of ledger {ledger:?} covers position {covers} but the ledger ends before {}",
                        meta.next_position
                    ))));
                }
                if crc(&bytes) != sum {
                    return Ok(Outcome::Rejected(Error::Corrupt {
                        ledger,
                        position: covers,
                        detail: "snapshot checksum mismatch before apply; not stored".into(),
                    }));
                }
                if let Some(existing) = self.snapshot_covers(ov, &ledger)? {
                    if existing >= covers {
                        return Ok(Outcome::Snapshotted);
                    }
                }
                // Account for the entries being dropped: those in the database and those put
                // earlier in this same apply call.
                let mut dropped_bytes = 0u64;
                let records = cf(&self.db, CF_RECORDS);
                let from = codec::record_key(&prefix, meta.first_position);
                for kv in self
                    .db
                    .iterator_cf(records, IteratorMode::From(&from, Direction::Forward))
                {
                    let (k, v) = kv.map_err(sto_read)?;
                    match codec::record_position(&prefix, &k) {
                        Some(p) if p <= covers => {
                            dropped_bytes += (v.len() as u64).saturating_sub(4)
                        }
                        _ => break,
                    }
                }
                if let Some(pending) = ov.records.get_mut(&ledger) {
                    let keep = pending.split_off(&(covers + 1));
                    dropped_bytes += pending.values().sum::<u64>();
                    *pending = keep;
                }
                batch.delete_range_cf(
                    records,
                    codec::record_key(&prefix, meta.first_position),
                    codec::record_key(&prefix, covers + 1),
                );
                let mut value = Vec::with_capacity(12 + bytes.len());
                value.extend_from_slice(&sum.to_le_bytes());
                value.extend_from_slice(&covers.to_be_bytes());
                value.extend_from_slice(&bytes);
                batch.put_cf(cf(&self.db, CF_SNAPSHOTS), ledger.as_bytes(), value);
                meta.first_position = covers + 1;
                meta.entry_bytes = meta.entry_bytes.saturating_sub(dropped_bytes);
                batch.put_cf(
                    cf(&self.db, CF_LEDGERS),
                    ledger.as_bytes(),
                    encode(&meta).map_err(sto_write)?,
                );
                ov.snapshots.insert(ledger.clone(), covers);
                ov.metas.insert(ledger, meta);
                Ok(Outcome::Snapshotted)
            }
        }
    }

    /// Reads a ledger: the latest snapshot if it covers `from` or later, and the entries after.
    /// Every record is checksummed; a mismatch is [`Error::Corrupt`].
    pub(crate) fn read_ledger(&self, ledger: &str, from: u64) -> Result<LedgerRead> {
        self.read_ledger_page(ledger, from, usize::MAX)
            .map(|(read, _)| read)
    }

    /// Like [`StateMachineStore::read_ledger`], stopping before the entries would take the
    /// read past `budget` bytes (snapshot included) — but never with nothing: without a
    /// snapshot, the first entry is always taken. Also says whether the read is complete (no
    /// entry was left out); if not, the rest is read from the position after the last entry
    /// (or after the snapshot, if it came alone).
    pub(crate) fn read_ledger_page(
        &self,
        ledger: &str,
        from: u64,
        budget: usize,
    ) -> Result<(LedgerRead, bool)> {
        let prefix = codec::ledger_prefix(ledger)?;
        let snap = self.db.snapshot();
        let mut stats = ReadStats::default();
        let mut snapshot = None;
        let mut start = from;
        if let Some(v) = snap.get_cf(cf(&self.db, CF_SNAPSHOTS), ledger.as_bytes())? {
            let (covers, payload) = decode_snapshot_value(ledger, &v)?;
            if covers >= from {
                stats.bytes_read += payload.len() as u64;
                snapshot = Some((covers, payload.to_vec()));
                start = covers + 1;
            }
        }
        let mut entries = Vec::new();
        let mut complete = true;
        let key = codec::record_key(&prefix, start);
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_snapshot(&snap);
        let it = self.db.iterator_cf_opt(
            cf(&self.db, CF_RECORDS),
            ro,
            IteratorMode::From(&key, Direction::Forward),
        );
        for kv in it {
            let (k, v) = kv?;
            let Some(position) = codec::record_position(&prefix, &k) else {
                break;
            };
            let taken = stats.bytes_read as usize;
            let alone = snapshot.is_none() && entries.is_empty();
            if !alone && taken.saturating_add(v.len().saturating_sub(4)) > budget {
                complete = false;
                break;
            }
            stats.records_scanned += 1;
            let payload = codec::check_record_value(&v).map_err(|detail| Error::Corrupt {
                ledger: ledger.to_string(),
                position,
                detail,
            })?;
            stats.bytes_read += payload.len() as u64;
            entries.push((position, payload.to_vec()));
        }
        let read = LedgerRead {
            snapshot,
            entries,
            stats,
        };
        Ok((read, complete))
    }

    /// Size information of a ledger (all zero for a ledger never appended to).
    pub(crate) fn ledger_info(&self, ledger: &str) -> Result<LedgerInfo> {
        let snap = self.db.snapshot();
        let meta: LedgerMeta = match snap.get_cf(cf(&self.db, CF_LEDGERS), ledger.as_bytes())? {
            None => LedgerMeta::default(),
            Some(v) => codec::decode(&v).map_err(|detail| Error::Corrupt {
                ledger: ledger.to_string(),
                position: 0,
                detail: format!("ledger metadata: {detail}"),
            })?,
        };
        let (snapshot_position, snapshot_bytes) =
            match snap.get_cf(cf(&self.db, CF_SNAPSHOTS), ledger.as_bytes())? {
                None => (None, 0),
                Some(v) if v.len() >= 12 => (
                    Some(u64::from_be_bytes(v[4..12].try_into().expect("8 bytes"))),
                    v.len() as u64 - 12,
                ),
                Some(_) => {
                    return Err(Error::Corrupt {
                        ledger: ledger.to_string(),
                        position: 0,
                        detail: "snapshot value too short".into(),
                    })
                }
            };
        let fence = match snap.get_cf(cf(&self.db, CF_LEDGERS), fence_key(ledger))? {
            None => 0,
            Some(v) => decode_fence(&v).map_err(|detail| Error::Corrupt {
                ledger: ledger.to_string(),
                position: 0,
                detail,
            })?,
        };
        Ok(LedgerInfo {
            fence,
            next_position: meta.next_position,
            first_position: meta.first_position,
            entries: meta.next_position - meta.first_position,
            entry_bytes: meta.entry_bytes,
            snapshot_position,
            snapshot_bytes,
        })
    }

    fn read_sm_meta<T: for<'de> Deserialize<'de>>(&self, key: &[u8]) -> StorageResult<Option<T>> {
        match self
            .db
            .get_cf(cf(&self.db, CF_SM_META), key)
            .map_err(sto_read)?
        {
            None => Ok(None),
            Some(v) => codec::decode(&v).map(Some).map_err(sto_read),
        }
    }
}

fn decode_snapshot_value<'a>(ledger: &str, v: &'a [u8]) -> Result<(u64, &'a [u8])> {
    let corrupt = |position, detail: String| Error::Corrupt {
        ledger: ledger.to_string(),
        position,
        detail,
    };
    if v.len() < 12 {
        return Err(corrupt(0, "snapshot value too short".into()));
    }
    let sum = u32::from_le_bytes(v[..4].try_into().expect("4 bytes"));
    let covers = u64::from_be_bytes(v[4..12].try_into().expect("8 bytes"));
    let payload = &v[12..];
    let actual = crc(payload);
    if sum != actual {
        return Err(corrupt(
            covers,
            format!("snapshot checksum mismatch: stored {sum:08x}, computed {actual:08x}"),
        ));
    }
    Ok((covers, payload))
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let (meta, data) = {
            let snap = self.db.snapshot();
            let get = |key: &[u8]| snap.get_cf(cf(&self.db, CF_SM_META), key).map_err(sto_read);
            let last_applied: Option<LogId<u64>> = match get(KEY_APPLIED)? {
                None => None,
                Some(v) => codec::decode(&v).map_err(sto_read)?,
            };
            let membership: StoredMembership<u64, openraft::BasicNode> = match get(KEY_MEMBERSHIP)?
            {
                None => StoredMembership::default(),
                Some(v) => codec::decode(&v).map_err(sto_read)?,
            };
            let mut rows = Vec::new();
            for (i, name) in DATA_CFS.iter().enumerate() {
                let mut ro = rocksdb::ReadOptions::default();
                ro.set_snapshot(&snap);
                for kv in self
                    .db
                    .iterator_cf_opt(cf(&self.db, name), ro, IteratorMode::Start)
                {
                    let (k, v) = kv.map_err(sto_read)?;
                    rows.push((
                        i as u8,
                        ByteBuf::from(k.to_vec()),
                        ByteBuf::from(v.to_vec()),
                    ));
                }
            }
            let seq = self.snapshot_seq.fetch_add(1, Ordering::Relaxed);
            let snapshot_id = match &last_applied {
                Some(l) => format!("{}-{}-{seq}", l.leader_id, l.index),
                None => format!("none-{seq}"),
            };
            let meta = SnapshotMeta {
                last_log_id: last_applied,
                last_membership: membership,
                snapshot_id,
            };
            (meta, encode(&SnapshotData { rows }).map_err(sto_write)?)
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: ByteBuf::from(data.clone()),
        };
        self.db
            .put_cf_opt(
                cf(&self.db, CF_SM_META),
                KEY_SNAPSHOT,
                encode(&stored).map_err(sto_write)?,
                &sync_opts(),
            )
            .map_err(sto_write)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(
        Option<LogId<u64>>,
        StoredMembership<u64, openraft::BasicNode>,
    )> {
        let applied = self
            .read_sm_meta::<Option<LogId<u64>>>(KEY_APPLIED)?
            .flatten();
        let membership = self.read_sm_meta(KEY_MEMBERSHIP)?.unwrap_or_default();
        Ok((applied, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<BatchOutcome>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::default();
        let mut ov = Overlay::default();
        let mut responses = Vec::new();
        let mut last = None;
        for entry in entries {
            last = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => responses.push(BatchOutcome::default()),
                EntryPayload::Membership(m) => {
                    let stored = StoredMembership::new(Some(entry.log_id), m);
                    batch.put_cf(
                        cf(&self.db, CF_SM_META),
                        KEY_MEMBERSHIP,
                        encode(&stored).map_err(sto_write)?,
                    );
                    responses.push(BatchOutcome::default());
                }
                EntryPayload::Normal(cmds) => {
                    let mut outcomes = Vec::with_capacity(cmds.commands.len());
                    for c in cmds.commands {
                        outcomes.push(self.apply_command(c, &mut ov, &mut batch)?);
                    }
                    responses.push(BatchOutcome { outcomes });
                }
            }
        }
        if let Some(last) = last {
            batch.put_cf(
                cf(&self.db, CF_SM_META),
                KEY_APPLIED,
                encode(&Some(last)).map_err(sto_write)?,
            );
        }
        self.db.write(batch).map_err(sto_write)?;
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data = snapshot.into_inner();
        let decoded: SnapshotData = codec::decode(&data).map_err(sto_read)?;
        let mut batch = WriteBatch::default();
        for name in DATA_CFS {
            let handle = cf(&self.db, name);
            for kv in self.db.iterator_cf(handle, IteratorMode::Start) {
                let (k, _) = kv.map_err(sto_read)?;
                batch.delete_cf(handle, k);
            }
        }
        for (i, k, v) in decoded.rows {
            let name = DATA_CFS
                .get(i as usize)
                .ok_or_else(|| sto_read(format!("snapshot row names column family {i}")))?;
            batch.put_cf(cf(&self.db, name), k, v);
        }
        let meta_cf = cf(&self.db, CF_SM_META);
        batch.put_cf(
            meta_cf,
            KEY_APPLIED,
            encode(&meta.last_log_id).map_err(sto_write)?,
        );
        batch.put_cf(
            meta_cf,
            KEY_MEMBERSHIP,
            encode(&meta.last_membership).map_err(sto_write)?,
        );
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: ByteBuf::from(data),
        };
        batch.put_cf(meta_cf, KEY_SNAPSHOT, encode(&stored).map_err(sto_write)?);
        self.db.write_opt(batch, &sync_opts()).map_err(sto_write)
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let stored: Option<StoredSnapshot> = self.read_sm_meta(KEY_SNAPSHOT)?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data.into_vec())),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft_types::CommandBatch;
    use crate::types::RequestId;
    use bytes::Bytes;

    fn append(ledger: &str, seq: u64, record: &[u8]) -> Command {
        Command::Append {
            ledger: ledger.into(),
            request: RequestId::new(9, seq),
            record: Bytes::copy_from_slice(record),
            crc: crc(record),
        }
    }

    fn snapshot(ledger: &str, covers: u64, bytes: &[u8]) -> Command {
        Command::Snapshot {
            ledger: ledger.into(),
            covers,
            bytes: Bytes::copy_from_slice(bytes),
            crc: crc(bytes),
        }
    }

    fn fenced(fence: u64, command: Command) -> Command {
        command.fenced(Some(fence))
    }

    /// Applies the commands as one Raft entry at `index` (one `apply` call).
    async fn apply(sm: &mut StateMachineStore, index: u64, commands: Vec<Command>) -> Vec<Outcome> {
        let entry = Entry::<TypeConfig> {
            log_id: openraft::testing::log_id(1, 1, index),
            payload: EntryPayload::Normal(CommandBatch { commands }),
        };
        let mut out = sm.apply([entry]).await.unwrap();
        out.pop().unwrap().outcomes
    }

    fn fenced_error(ledger: &str, fence: u64, current: u64) -> Outcome {
        Outcome::Rejected(Error::Fenced {
            ledger: ledger.into(),
            fence,
            current,
        })
    }

    #[test]
    fn new_variants_come_last_so_old_encodings_still_decode() {
        // bincode writes an enum's variant index first: Append 0, Snapshot 1 as before.
        assert_eq!(encode(&append("l", 0, b"r")).unwrap()[0], 0);
        assert_eq!(encode(&snapshot("l", 0, b"s")).unwrap()[0], 1);
        assert_eq!(encode(&fenced(1, append("l", 0, b"r"))).unwrap()[0], 2);
        let e = Error::Fenced {
            ledger: "l".into(),
            fence: 1,
            current: 2,
        };
        assert_eq!(encode(&e).unwrap()[0], 6);
        // A ledger's metadata row is what it was.
        let meta = LedgerMeta {
            next_position: 3,
            first_position: 1,
            entry_bytes: 7,
        };
        assert_eq!(encode(&meta).unwrap(), vec![3, 1, 7]);
        // A fence key is never a ledger's key (0xFF is no UTF-8 byte).
        assert_eq!(fence_key("ab"), vec![0xFF, b'a', b'b']);
        assert!(std::str::from_utf8(&fence_key("ab")).is_err());
    }

    #[tokio::test]
    async fn fences_hold_within_one_apply_and_travel_in_raft_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachineStore::new(open_db(&dir.path().join("a")).unwrap());
        // One apply call (one Raft entry): the overlay keeps the fence consistent within it.
        let out = apply(
            &mut sm,
            1,
            vec![
                append("l", 0, b"plain"),
                fenced(3, append("l", 1, b"owner-3")),
                fenced(2, append("l", 2, b"stale")),
                fenced(2, snapshot("l", 1, b"stale-state")),
                fenced(3, append("l", 3, b"batch-3")),
                // Rejected by the command itself (covers past the end): the fence stays at 3.
                fenced(7, snapshot("l", 99, b"x")),
                fenced(1, append("other", 4, b"o")),
            ],
        )
        .await;
        assert_eq!(out[0], Outcome::Appended(0));
        assert_eq!(out[1], Outcome::Appended(1));
        assert_eq!(out[2], fenced_error("l", 2, 3));
        assert_eq!(out[3], fenced_error("l", 2, 3));
        assert_eq!(out[4], Outcome::Appended(2));
        assert!(
            matches!(&out[5], Outcome::Rejected(Error::InvalidRequest(_))),
            "{:?}",
            out[5]
        );
        assert_eq!(out[6], Outcome::Appended(0));
        let info = sm.ledger_info("l").unwrap();
        assert_eq!((info.fence, info.next_position), (3, 3));
        assert_eq!(sm.ledger_info("other").unwrap().fence, 1);
        assert_eq!(sm.ledger_info("never").unwrap().fence, 0);
        // The refused writes left nothing.
        let read = sm.read_ledger("l", 0).unwrap();
        assert_eq!(read.snapshot, None);
        let records: Vec<&[u8]> = read.entries.iter().map(|(_, r)| r.as_slice()).collect();
        assert_eq!(records, [&b"plain"[..], b"owner-3", b"batch-3"]);

        // A Raft snapshot of this state machine, installed on a fresh one, carries the fences.
        let snap = sm.build_snapshot().await.unwrap();
        let mut other = StateMachineStore::new(open_db(&dir.path().join("b")).unwrap());
        other
            .install_snapshot(&snap.meta, snap.snapshot)
            .await
            .unwrap();
        assert_eq!(other.ledger_info("l").unwrap(), info);
        assert_eq!(other.ledger_info("other").unwrap().fence, 1);
        let out = apply(
            &mut other,
            2,
            vec![
                fenced(2, snapshot("l", 2, b"stale-state")),
                fenced(4, snapshot("l", 2, b"state-4")),
                fenced(3, append("l", 5, b"late-3")),
                snapshot("l", 0, b"older, ignored"),
            ],
        )
        .await;
        assert_eq!(
            out,
            [
                fenced_error("l", 2, 3),
                Outcome::Snapshotted,
                fenced_error("l", 3, 4),
                Outcome::Snapshotted,
            ]
        );
        let read = other.read_ledger("l", 0).unwrap();
        assert_eq!(read.snapshot, Some((2, b"state-4".to_vec())));
        assert!(read.entries.is_empty());
        assert_eq!(other.ledger_info("l").unwrap().fence, 4);
    }
}
