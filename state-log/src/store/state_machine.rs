//! The ledger state machine on RocksDB: it applies committed Raft entries to the ledgers
//! (appends, fenced writes, ledger snapshots, request-id deduplication) and to the coordination
//! log (its keyspace is in `coordination_log`), serves reads, and builds and installs the Raft
//! snapshots that carry all of it to a lagging node. Each entry's changes and its
//! `last_applied` are one atomic write batch, so a crash re-applies whole entries from the
//! synced log.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StoredMembership,
};
use rocksdb::{Direction, IteratorMode, WriteBatch, DB};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::codec::{self, crc, encode};
use crate::coordination::CoordinationEntry;
use crate::error::{Error, Result};
use crate::raft_types::{BatchOutcome, Command, Outcome, TypeConfig};
use crate::types::{LedgerInfo, LedgerRead, ReadStats, REQUEST_ID_WINDOW};

use super::coordination_log::{EntryStore, PendingEntries};
use super::db::{
    cf, sto_read, sto_write, sync_opts, StorageResult, CF_LEDGERS, CF_RECORDS, CF_REQUESTS,
    CF_SM_META, CF_SNAPSHOTS, DATA_CFS,
};

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
    /// The coordination log's keyspace (in the same database).
    entries: EntryStore,
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
    /// Appends to the coordination log in this call.
    entries: PendingEntries,
}

impl StateMachineStore {
    /// The state machine over `db` (whose coordination log's last position is read once here).
    pub(crate) fn new(db: Arc<DB>) -> Result<Self> {
        Ok(Self {
            entries: EntryStore::open(&db)?,
            db,
            snapshot_seq: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The position of the coordination log's last applied entry (0 if it is empty).
    pub(crate) fn last_entry_position(&self) -> u64 {
        self.entries.last_position()
    }

    /// A receiver of the coordination log's last applied position, changed after every apply
    /// that appended to it (and every installed Raft snapshot).
    pub(crate) fn watch_last_entry(&self) -> tokio::sync::watch::Receiver<u64> {
        self.entries.watch_last()
    }

    /// One page of the coordination log: see `EntryStore::read_entries`.
    pub(crate) fn read_entries(
        &self,
        from: u64,
        max: usize,
        budget: usize,
    ) -> Result<Vec<CoordinationEntry>> {
        self.entries.read_entries(&self.db, from, max, budget)
    }

    /// `max` entries of the coordination log, fewer only if it ends first: see
    /// `EntryStore::read_all_entries`.
    pub(crate) fn read_all_entries(
        &self,
        from: u64,
        max: usize,
        budget: usize,
    ) -> Result<Vec<CoordinationEntry>> {
        self.entries.read_all_entries(&self.db, from, max, budget)
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
                let Some(ledger) = command.ledger().map(str::to_owned) else {
                    return Ok(Outcome::Rejected(Error::InvalidRequest(
                        "only ledger writes can be fenced".into(),
                    )));
                };
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
            Command::AppendEntry {
                request,
                entry,
                crc: sum,
            } => self
                .entries
                .apply_append(&self.db, request, &entry, sum, &mut ov.entries, batch),
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
        // After the write: a subscriber woken by this finds the entries in the database.
        self.entries.publish(&ov.entries);
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
        self.db.write_opt(batch, &sync_opts()).map_err(sto_write)?;
        self.entries.reload(&self.db).map_err(sto_read)
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
#[path = "coordination_log_tests.rs"]
mod coordination_log_tests;

#[cfg(test)]
mod tests {
    use super::super::db::open_db;
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
        let mut sm = StateMachineStore::new(open_db(&dir.path().join("a")).unwrap()).unwrap();
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
        let mut other = StateMachineStore::new(open_db(&dir.path().join("b")).unwrap()).unwrap();
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
