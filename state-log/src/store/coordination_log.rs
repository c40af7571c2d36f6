//! The coordination log's keyspace in the state machine: one totally ordered list of opaque
//! entries at positions 1, 2, 3, … without gaps, beside the ledgers and apart from them (column
//! families of its own, so no ledger name can reach it). An append takes the position after the
//! last and stores the entry with its crc32; a request id applied before answers with its
//! original position. Nothing here is ever compacted: whoever replays the log replays it from
//! position 1. Reads verify every checksum and that no position is missing, and report what is
//! wrong as [`Error::CorruptEntry`].

use bytes::Bytes;
use rocksdb::{Direction, IteratorMode, WriteBatch, DB};

use crate::codec::{self, crc};
use crate::error::{Error, Result};
use crate::raft_types::Outcome;
use crate::store::REQUEST_ID_WINDOW;
use crate::types::RequestId;

use super::db::{cf, sto_read, StorageResult, CF_ENTRIES, CF_ENTRY_REQUESTS};
use super::state_machine::{Overlay, StateMachineStore};

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

impl StateMachineStore {
    /// Applies one append to the coordination log (see [`crate::raft_types::Command`]).
    pub(super) fn apply_append_entry(
        &self,
        request: RequestId,
        entry: &Bytes,
        sum: u32,
        ov: &mut Overlay,
        batch: &mut WriteBatch,
    ) -> StorageResult<Outcome> {
        let id = (request.client, request.seq);
        if let Some(p) = ov.entry_requests.get(&id) {
            return Ok(Outcome::Appended(*p));
        }
        let rk = codec::request_key(request.client, request.seq);
        let requests = cf(&self.db, CF_ENTRY_REQUESTS);
        if let Some(v) = self.db.get_cf(requests, rk).map_err(sto_read)? {
            let p = u64::from_be_bytes(v.as_slice().try_into().map_err(sto_read)?);
            return Ok(Outcome::Appended(p));
        }
        let position = ov.last_entry.unwrap_or(*self.last_entry.borrow()) + 1;
        if crc(entry) != sum {
            return Ok(Outcome::Rejected(Error::CorruptEntry {
                position,
                detail: "entry checksum mismatch before apply; not stored".into(),
            }));
        }
        batch.put_cf(
            cf(&self.db, CF_ENTRIES),
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
        ov.entry_requests.insert(id, position);
        ov.last_entry = Some(position);
        Ok(Outcome::Appended(position))
    }

    /// The position of the coordination log's last applied entry (0 if it is empty).
    pub(crate) fn last_entry_position(&self) -> u64 {
        *self.last_entry.borrow()
    }

    /// A receiver of the coordination log's last applied position, changed after every apply
    /// that appended to it (and every installed Raft snapshot).
    pub(crate) fn watch_last_entry(&self) -> tokio::sync::watch::Receiver<u64> {
        self.last_entry.subscribe()
    }

    /// Reads the entries from position `from` (at least 1) on: at most `max` of them, up to the
    /// last applied position, and stopping before the payloads would pass `budget` bytes — but
    /// never with nothing while an entry at `from` exists. Every checksum is verified and the
    /// positions must follow one another. A bad or missing entry ends the page before it; a
    /// page that would start with one is [`Error::CorruptEntry`] (so a reader gets every good
    /// entry before the damage, then the error, and never an entry after it).
    pub(crate) fn read_entries(
        &self,
        from: u64,
        max: usize,
        budget: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>> {
        if from == 0 {
            return Err(Error::InvalidRequest(
                "coordination log positions start at 1".into(),
            ));
        }
        // Read the last position before taking the database snapshot: every entry up to it is
        // in that snapshot (the position is published after the write).
        let last = self.last_entry_position();
        if from > last || max == 0 {
            return Ok(Vec::new());
        }
        let want = usize::try_from(last - from + 1).map_or(max, |n| n.min(max));
        let snap = self.db.snapshot();
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_snapshot(&snap);
        let key = entry_key(from);
        let it = self.db.iterator_cf_opt(
            cf(&self.db, CF_ENTRIES),
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

    /// [`StateMachineStore::read_entries`] page after page: `max` entries from `from`, fewer
    /// only if the log ends first; an error if a bad or missing entry comes before that.
    pub(crate) fn read_all_entries(
        &self,
        from: u64,
        max: usize,
        budget: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>> {
        let mut out = Vec::new();
        while out.len() < max {
            let next = from + out.len() as u64;
            let page = self.read_entries(next, max - out.len(), budget)?;
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

#[cfg(test)]
mod tests {
    use openraft::storage::RaftStateMachine;
    use openraft::{Entry, EntryPayload, RaftSnapshotBuilder};

    use super::super::db::open_db;
    use super::*;
    use crate::raft_types::{Command, CommandBatch, TypeConfig};

    fn append(seq: u64, entry: &[u8]) -> Command {
        Command::AppendEntry {
            request: RequestId::new(5, seq),
            entry: Bytes::copy_from_slice(entry),
            crc: crc(entry),
        }
    }

    /// Applies the commands as one Raft entry at `index` (one `apply` call).
    async fn apply(sm: &mut StateMachineStore, index: u64, commands: Vec<Command>) -> Vec<Outcome> {
        let entry = Entry::<TypeConfig> {
            log_id: openraft::testing::log_id(1, 1, index),
            payload: EntryPayload::Normal(CommandBatch { commands }),
        };
        sm.apply([entry]).await.unwrap().pop().unwrap().outcomes
    }

    #[test]
    fn new_variants_come_last_so_old_encodings_still_decode() {
        // bincode writes an enum's variant index first: Append 0, Snapshot 1, Fenced 2 as
        // before, then the coordination log's append.
        assert_eq!(crate::codec::encode(&append(0, b"e")).unwrap()[0], 3);
        let e = Error::CorruptEntry {
            position: 1,
            detail: String::new(),
        };
        assert_eq!(crate::codec::encode(&e).unwrap()[0], 10);
    }

    #[tokio::test]
    async fn a_fenced_append_to_the_coordination_log_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachineStore::new(open_db(dir.path()).unwrap()).unwrap();
        let out = apply(&mut sm, 1, vec![append(0, b"e").fenced(Some(1))]).await;
        assert_eq!(
            out,
            [Outcome::Rejected(Error::InvalidRequest(
                "only ledger writes can be fenced".into()
            ))]
        );
        assert_eq!(sm.last_entry_position(), 0);
    }

    #[tokio::test]
    async fn positions_follow_from_one_apart_from_ledgers_and_travel_in_raft_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachineStore::new(open_db(&dir.path().join("a")).unwrap()).unwrap();
        let mut watch = sm.watch_last_entry();
        assert_eq!(sm.last_entry_position(), 0);
        let ledger_append = Command::Append {
            ledger: "l".into(),
            // The same request id as the first entry: a ledger's ids are another keyspace.
            request: RequestId::new(5, 0),
            record: Bytes::from_static(b"ledger"),
            crc: crc(b"ledger"),
        };
        let out = apply(
            &mut sm,
            1,
            vec![
                append(0, b"first"),
                ledger_append,
                append(1, b"second"),
                append(0, b"retried"),
                Command::AppendEntry {
                    request: RequestId::new(5, 2),
                    entry: Bytes::from_static(b"damaged"),
                    crc: 7,
                },
                append(1, b"retried again"),
            ],
        )
        .await;
        assert_eq!(out[0], Outcome::Appended(1));
        assert_eq!(out[1], Outcome::Appended(0));
        assert_eq!(out[2], Outcome::Appended(2));
        assert_eq!(out[3], Outcome::Appended(1));
        assert!(
            matches!(
                &out[4],
                Outcome::Rejected(Error::CorruptEntry { position: 3, .. })
            ),
            "{:?}",
            out[4]
        );
        assert_eq!(out[5], Outcome::Appended(2));
        assert!(watch.has_changed().unwrap());
        assert_eq!(*watch.borrow_and_update(), 2);
        // A later apply call goes on from the stored position, and remembers earlier ids.
        let out = apply(&mut sm, 2, vec![append(1, b"x"), append(2, b"third")]).await;
        assert_eq!(out, [Outcome::Appended(2), Outcome::Appended(3)]);
        let all = sm.read_entries(1, usize::MAX, usize::MAX).unwrap();
        let want: Vec<(u64, Vec<u8>)> = vec![
            (1, b"first".to_vec()),
            (2, b"second".to_vec()),
            (3, b"third".to_vec()),
        ];
        assert_eq!(all, want);
        assert_eq!(
            sm.read_ledger("l", 0).unwrap().entries,
            [(0, b"ledger".to_vec())]
        );
        // Limits: a count, a byte budget (never nothing), the end of the log.
        assert_eq!(sm.read_entries(2, 1, usize::MAX).unwrap(), want[1..2]);
        assert_eq!(sm.read_entries(1, 10, 6).unwrap(), want[..1]);
        assert_eq!(sm.read_entries(1, 10, 11).unwrap(), want[..2]);
        assert_eq!(sm.read_entries(1, 10, 0).unwrap(), want[..1]);
        assert!(sm.read_entries(4, 10, usize::MAX).unwrap().is_empty());
        assert!(sm.read_entries(1, 0, usize::MAX).unwrap().is_empty());
        assert!(matches!(
            sm.read_entries(0, 10, usize::MAX),
            Err(Error::InvalidRequest(_))
        ));

        // A Raft snapshot carries the entries and the remembered ids to a fresh node, whose
        // position (and watch) starts where the snapshot is.
        let snap = sm.build_snapshot().await.unwrap();
        let mut other = StateMachineStore::new(open_db(&dir.path().join("b")).unwrap()).unwrap();
        let mut other_watch = other.watch_last_entry();
        other
            .install_snapshot(&snap.meta, snap.snapshot)
            .await
            .unwrap();
        assert_eq!(*other_watch.borrow_and_update(), 3);
        assert_eq!(other.read_entries(1, 10, usize::MAX).unwrap(), want);
        let out = apply(&mut other, 3, vec![append(2, b"dup"), append(3, b"fourth")]).await;
        assert_eq!(out, [Outcome::Appended(3), Outcome::Appended(4)]);
        drop(other);

        // Reopened, the store finds its last position again.
        drop(sm);
        let sm = StateMachineStore::new(open_db(&dir.path().join("a")).unwrap()).unwrap();
        assert_eq!(sm.last_entry_position(), 3);
    }

    #[tokio::test]
    async fn a_missing_entry_is_reported_as_corrupt_not_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachineStore::new(open_db(dir.path()).unwrap()).unwrap();
        let commands = (0..4).map(|i| append(i, &[i as u8])).collect();
        apply(&mut sm, 1, commands).await;
        sm.db
            .delete_cf(cf(&sm.db, CF_ENTRIES), entry_key(2))
            .unwrap();
        // A page ends before the gap; the page that would start at it is the error.
        assert_eq!(sm.read_entries(1, 10, usize::MAX).unwrap(), [(1, vec![0])]);
        let gap = "missing; the next stored entry is at position 3";
        match sm.read_entries(2, 10, usize::MAX) {
            Err(Error::CorruptEntry { position, detail }) => {
                assert_eq!((position, detail.as_str()), (2, gap));
            }
            other => panic!("expected CorruptEntry, got {other:?}"),
        }
        // Reading the whole log (page after page) reports it.
        match sm.read_all_entries(1, 10, usize::MAX) {
            Err(Error::CorruptEntry { position, .. }) => assert_eq!(position, 2),
            other => panic!("expected CorruptEntry, got {other:?}"),
        }
        // After the gap, reads work again.
        assert_eq!(sm.read_all_entries(3, 10, usize::MAX).unwrap().len(), 2);
        // A missing tail is reported too.
        sm.db
            .delete_cf(cf(&sm.db, CF_ENTRIES), entry_key(4))
            .unwrap();
        assert_eq!(sm.read_entries(3, 10, usize::MAX).unwrap(), [(3, vec![2])]);
        match sm.read_entries(4, 10, usize::MAX) {
            Err(Error::CorruptEntry { position, detail }) => {
                assert_eq!(position, 4);
                assert_eq!(detail, "missing; no entry is stored at or after it");
            }
            other => panic!("expected CorruptEntry, got {other:?}"),
        }
    }
}
