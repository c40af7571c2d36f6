//! The coordination log's keyspace applied through the state machine (a child of
//! `state_machine`, so that `coordination_log` itself does not depend on it).

use bytes::Bytes;
use openraft::storage::RaftStateMachine;
use openraft::{Entry, EntryPayload, RaftSnapshotBuilder};

use super::super::db::{cf, open_db, CF_ENTRIES};
use super::*;
use crate::codec::crc;
use crate::error::Error;
use crate::raft_types::{Command, CommandBatch, Outcome, TypeConfig};
use crate::types::RequestId;

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
        .delete_cf(cf(&sm.db, CF_ENTRIES), 2u64.to_be_bytes())
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
        .delete_cf(cf(&sm.db, CF_ENTRIES), 4u64.to_be_bytes())
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
