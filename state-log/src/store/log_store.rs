//! Raft's log store on RocksDB ([`LogStore`]: entries, vote, committed and purged ids) and the
//! [`Flusher`], the thread that syncs the write-ahead log before appends are acknowledged to
//! Raft, coalescing the syncs of appends that arrive together.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{Entry, LogId, LogState, OptionalSend, RaftLogReader, Vote};
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};

use crate::codec::{self, encode};
use crate::raft_types::TypeConfig;

use super::db::{cf, sto_read, sto_write, sync_opts, StorageResult, CF_LOGS, CF_RAFT_META};

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
