//! The coordination log's keyspace in the state machine: one totally ordered list of opaque
//! entries at positions 1, 2, 3, … without gaps, beside the ledgers and apart from them (column
//! families of its own, so no ledger name can reach it). An append takes the position after the
//! last and stores the entry with its crc32; a request id applied before answers with its
//! original position. Nothing here is ever compacted: whoever replays the log replays it from
//! position 1. Reads verify every checksum and that no position is missing, and report what is
//! wrong as [`Error::CorruptEntry`].

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use rocksdb::{Direction, IteratorMode, WriteBatch, DB};
use tokio::sync::watch;

use crate::codec::{self, crc};
use crate::coordination::CoordinationEntry;
use crate::error::{Error, Result};
use crate::raft_types::Outcome;
use crate::types::{RequestId, REQUEST_ID_WINDOW};

use super::db::{cf, sto_read, StorageResult, CF_ENTRIES, CF_ENTRY_REQUESTS};

/// The coordination log's keyspace of one node's database (which the state machine owns and
/// passes in), with the notification of its last applied position. Cloning shares it.
#[derive(Clone)]
pub(crate) struct EntryStore {
    /// The position of the last entry (0: empty), sent after every write that moves it (an
    /// apply, an installed Raft snapshot): the subscriptions' wake-up, and the position the
    /// next append takes (+ 1). Every entry up to it is in the database.
    last: Arc<watch::Sender<u64>>,
}

/// Appends of one `apply` call that are not in the database yet.
#[derive(Default)]
pub(super) struct PendingEntries {
    /// The last position after this call's appends, if it appended.
    last: Option<u64>,
    /// Request ids applied in this call.
    requests: HashMap<(u64, u64), u64>,
}

/// Key of the entry at `position` (BE, so keys sort by position).
fn entry_key(position: u64) -> [u8; 8] {
    position.to_be_bytes()
}

/// Position from a stored key; `None` if the key is not 8 bytes.
fn key_position(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

/// The position of the last stored entry (0 if there is none), read from the database.
pub(super) fn stored_last_position(db: &DB) -> Result<u64> {
    let mut it = db.iterator_cf(cf(db, CF_ENTRIES), IteratorMode::End);
    match it.next() {
        None => Ok(0),
        Some(kv) => {
            let (k, _) = kv?;
            key_position(&k).ok_or_else(|| Error::CorruptEntry {
                position: 0,
                detail: format!("the last stored key has {} bytes, not 8", k.len()),
            })
        }
    }
}

impl EntryStore {
    /// The keyspace of `db`, whose last position is read once here.
    pub(super) fn open(db: &DB) -> Result<Self> {
        let last = stored_last_position(db)?;
        Ok(EntryStore {
            last: Arc::new(watch::channel(last).0),
        })
    }

    /// Applies one append (see [`crate::raft_types::Command::AppendEntry`]) into `batch`.
    pub(super) fn apply_append(
        &self,
        db: &DB,
        request: RequestId,
        entry: &Bytes,
        sum: u32,
        pending: &mut PendingEntries,
        batch: &mut WriteBatch,
    ) -> StorageResult<Outcome> {
        let id = (request.client, request.seq);
        if let Some(p) = pending.requests.get(&id) {
            return Ok(Outcome::Appended(*p));
        }
        let rk = codec::request_key(request.client, request.seq);
        let requests = cf(db, CF_ENTRY_REQUESTS);
        if let Some(v) = db.get_cf(requests, rk).map_err(sto_read)? {
            let p = u64::from_be_bytes(v.as_slice().try_into().map_err(sto_read)?);
            return Ok(Outcome::Appended(p));
        }
        let position = pending.last.unwrap_or(*self.last.borrow()) + 1;
        if crc(entry) != sum {
            return Ok(Outcome::Rejected(Error::CorruptEntry {
                position,
                detail: "entry checksum mismatch before apply; not stored".into(),
            }));
        }
        batch.put_cf(
            cf(db, CF_ENTRIES),
            entry_key(position),
            codec::record_value(sum, entry),
        );
        batch.put_cf(requests, rk, position.to_be_bytes());
        // Forget a client's old request ids now and then, as for ledgers.
        if request.seq.is_multiple_of(1024) && request.seq >= REQUEST_ID_WINDOW {
            batch.delete_range_cf(
                requests,
                codec::request_key(request.client, 0),
                codec::request_key(request.client, request.seq - REQUEST_ID_WINDOW),
            );
        }
        pending.requests.insert(id, position);
        pending.last = Some(position);
        Ok(Outcome::Appended(position))
    }

    /// Tells subscribers of the appends of an `apply` call, once its batch is written.
    pub(super) fn publish(&self, pending: &PendingEntries) {
        if let Some(last) = pending.last {
            self.last.send_replace(last);
        }
    }

    /// Reads the last position again from the database (after a Raft snapshot replaced the
    /// keyspace) and tells subscribers. A snapshot only ever moves a node forward along the
    /// committed log, so this never takes back a position a subscriber was told of.
    pub(super) fn reload(&self, db: &DB) -> Result<()> {
        self.last.send_replace(stored_last_position(db)?);
        Ok(())
    }

    /// The position of the last applied entry (0 if the log is empty).
    pub(super) fn last_position(&self) -> u64 {
        *self.last.borrow()
    }

    /// A receiver of the last applied position, changed after every apply that appended (and
    /// every installed Raft snapshot).
    pub(super) fn watch_last(&self) -> watch::Receiver<u64> {
        self.last.subscribe()
    }

    /// Reads the entries from position `from` (at least 1) on: at most `max` of them, up to the
    /// last applied position, and stopping before the payloads would pass `budget` bytes — but
    /// never with nothing while an entry at `from` exists. Every checksum is verified and the
    /// positions must follow one another. A bad or missing entry ends the page before it; a
    /// page that would start with one is [`Error::CorruptEntry`] (so a reader gets every good
    /// entry before the damage, then the error, and never an entry after it).
    pub(super) fn read_entries(
        &self,
        db: &DB,
        from: u64,
        max: usize,
        budget: usize,
    ) -> Result<Vec<CoordinationEntry>> {
        if from == 0 {
            return Err(Error::InvalidRequest(
                "coordination log positions start at 1".into(),
            ));
        }
        // Read the last position before taking the database snapshot: every entry up to it is
        // in that snapshot (the position is published after the write).
        let last = self.last_position();
        if from > last || max == 0 {
            return Ok(Vec::new());
        }
        let want = usize::try_from(last - from + 1).map_or(max, |n| n.min(max));
        let snap = db.snapshot();
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_snapshot(&snap);
        let key = entry_key(from);
        let it = db.iterator_cf_opt(
            cf(db, CF_ENTRIES),
            ro,
            IteratorMode::From(&key, Direction::Forward),
        );
        let mut entries = Vec::with_capacity(want.min(1024));
        let mut bytes = 0usize;
        for kv in it {
            if entries.len() == want {
                break;
            }
            let expected = from + entries.len() as u64;
            let (k, v) = kv?;
            let checked = match key_position(&k) {
                None => Err(Error::CorruptEntry {
                    position: expected,
                    detail: format!("a stored key of {} bytes, not 8", k.len()),
                }),
                Some(position) if position != expected => Err(missing(expected, Some(position))),
                Some(position) => {
                    let size = v.len().saturating_sub(4);
                    if !entries.is_empty() && bytes.saturating_add(size) > budget {
                        return Ok(entries);
                    }
                    codec::check_record_value(&v)
                        .map_err(|detail| Error::CorruptEntry { position, detail })
                }
            };
            match checked {
                Ok(payload) => {
                    bytes += payload.len();
                    entries.push((expected, payload.to_vec()));
                }
                Err(_) if !entries.is_empty() => return Ok(entries),
                Err(e) => return Err(e),
            }
        }
        if entries.is_empty() {
            return Err(missing(from, None));
        }
        Ok(entries)
    }

    /// [`EntryStore::read_entries`] page after page: `max` entries from `from`, fewer
    /// only if the log ends first; an error if a bad or missing entry comes before that.
    pub(super) fn read_all_entries(
        &self,
        db: &DB,
        from: u64,
        max: usize,
        budget: usize,
    ) -> Result<Vec<CoordinationEntry>> {
        let mut out = Vec::new();
        while out.len() < max {
            let next = from + out.len() as u64;
            let page = self.read_entries(db, next, max - out.len(), budget)?;
            if page.is_empty() {
                break;
            }
            out.extend(page);
        }
        Ok(out)
    }
}

/// The error for an entry that should be stored and is not.
fn missing(position: u64, next_stored: Option<u64>) -> Error {
    let detail = match next_stored {
        Some(next) => format!("missing; the next stored entry is at position {next}"),
        None => "missing; no entry is stored at or after it".to_string(),
    };
    Error::CorruptEntry { position, detail }
}
