//! The coordination log of the embedded node on real RocksDB files: gapless positions under
//! concurrent appends, subscriptions, retried appends, restarts, corruption, size limits.
//!
//! The corruption test edits the database directly: entries live in the column family
//! `coord_entries` under their position (u64 BE), valued `crc32 LE ‖ payload`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sardonyx_state_log::{CoordinationLog, EmbeddedLog, Error, RequestId, MAX_ENTRY_BYTES};

/// Upper bound on awaiting something that must happen.
const LIMIT: Duration = Duration::from_secs(10);

fn entry(client: u64, i: u64) -> Vec<u8> {
    format!("client {client} entry {i}").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_from_several_clients_take_every_position_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path()).await.unwrap();
    let stats_before = log.commit_stats();
    // Four appenders, each appending its own entries one after the other, all at once.
    let mut tasks = tokio::task::JoinSet::new();
    for client in 1..=4u64 {
        let log: Arc<dyn CoordinationLog> = Arc::new(log.clone());
        tasks.spawn(async move {
            let mut positions = Vec::new();
            for i in 0..50u64 {
                let p = log
                    .append_entry(RequestId::new(client, i), entry(client, i))
                    .await
                    .unwrap();
                positions.push((p, entry(client, i)));
            }
            positions
        });
    }
    let mut by_position = BTreeMap::new();
    while let Some(r) = tasks.join_next().await {
        let positions = r.unwrap();
        // One appender's entries are in the order it appended them.
        assert!(
            positions.windows(2).all(|w| w[0].0 < w[1].0),
            "{positions:?}"
        );
        for (p, e) in positions {
            assert!(
                by_position.insert(p, e).is_none(),
                "position {p} given twice"
            );
        }
    }
    // Every position from 1 to 200 was given exactly once, and holds what was appended there.
    assert_eq!(
        by_position.keys().copied().collect::<Vec<_>>(),
        (1..=200).collect::<Vec<_>>()
    );
    let read = log.read_entries(1, 1000).await.unwrap();
    assert_eq!(read, by_position.into_iter().collect::<Vec<_>>());
    assert_eq!(log.last_entry_position().await.unwrap(), 200);
    // They went through the group committer like ledger appends.
    let stats = log.commit_stats();
    assert_eq!(stats.commands - stats_before.commands, 200);
    assert!(
        stats.raft_writes - stats_before.raft_writes < 200,
        "{stats:?} {stats_before:?}"
    );
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_yields_the_past_in_order_then_each_new_entry() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path()).await.unwrap();
    for i in 1..=100u64 {
        assert_eq!(
            log.append_entry(RequestId::new(1, i), entry(1, i))
                .await
                .unwrap(),
            i
        );
    }
    let mut sub = log.subscribe_entries(1).unwrap();
    let mut from_50 = log.subscribe_entries(50).unwrap();
    for i in 1..=100u64 {
        assert_eq!(sub.next().await.unwrap(), (i, entry(1, i)));
    }
    assert_eq!(from_50.next().await.unwrap(), (50, entry(1, 50)));
    // Nothing more yet: `next` waits (and an abandoned wait loses nothing).
    assert!(tokio::time::timeout(Duration::from_millis(50), sub.next())
        .await
        .is_err());
    assert_eq!(sub.next_position(), 101);
    // New entries, appended concurrently by another task, arrive in order as they commit.
    let appender = {
        let log = log.clone();
        tokio::spawn(async move {
            for i in 101..=150u64 {
                log.append_entry(RequestId::new(2, i), entry(2, i))
                    .await
                    .unwrap();
            }
        })
    };
    for i in 101..=150u64 {
        let got = tokio::time::timeout(LIMIT, sub.next()).await.unwrap();
        assert_eq!(got.unwrap(), (i, entry(2, i)));
    }
    appender.await.unwrap();
    for i in 51..=150u64 {
        assert_eq!(from_50.next().await.unwrap().0, i);
    }
    assert!(matches!(
        log.subscribe_entries(0),
        Err(Error::InvalidRequest(_))
    ));
    // A subscription does not keep the log open; once it is closed, `next` says so.
    log.close().await.unwrap();
    match sub.next().await {
        Err(Error::Fatal(m)) => assert_eq!(m, "the embedded state log was closed"),
        other => panic!("expected Fatal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_append_is_applied_once_and_request_ids_are_apart_from_ledgers() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path()).await.unwrap();
    let id = RequestId::new(7, 0);
    assert_eq!(log.append_entry(id, b"join".to_vec()).await.unwrap(), 1);
    assert_eq!(log.append_entry(id, b"join".to_vec()).await.unwrap(), 1);
    // Even with other bytes: the request id decides.
    assert_eq!(log.append_entry(id, b"other".to_vec()).await.unwrap(), 1);
    // The same id on a ledger is another request, and takes the ledger's first position.
    assert_eq!(log.append("ledger", id, b"rec".to_vec()).await.unwrap(), 0);
    assert_eq!(
        log.append_entry(RequestId::new(7, 1), b"leave".to_vec())
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        log.read_entries(1, 10).await.unwrap(),
        vec![(1, b"join".to_vec()), (2, b"leave".to_vec())]
    );
    assert_eq!(
        log.read("ledger", 0).await.unwrap().entries,
        vec![(0, b"rec".to_vec())]
    );
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_every_entry_at_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path()).await.unwrap();
    assert_eq!(log.last_entry_position().await.unwrap(), 0);
    assert!(log.read_entries(1, 10).await.unwrap().is_empty());
    for i in 1..=30u64 {
        log.append_entry(RequestId::new(3, i), entry(3, i))
            .await
            .unwrap();
    }
    let before = log.read_entries(1, usize::MAX).await.unwrap();
    assert_eq!(before.len(), 30);
    log.close().await.unwrap();

    let log = EmbeddedLog::open(dir.path()).await.unwrap();
    assert_eq!(log.read_entries(1, usize::MAX).await.unwrap(), before);
    assert_eq!(log.last_entry_position().await.unwrap(), 30);
    // Remembered request ids survive too; new appends go on after the last position.
    assert_eq!(
        log.append_entry(RequestId::new(3, 7), b"again".to_vec())
            .await
            .unwrap(),
        7
    );
    assert_eq!(
        log.append_entry(RequestId::new(3, 31), entry(3, 31))
            .await
            .unwrap(),
        31
    );
    let mut sub = log.subscribe_entries(29).unwrap();
    for i in 29..=31u64 {
        assert_eq!(sub.next().await.unwrap(), (i, entry(3, i)));
    }
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_entry_is_refused_and_the_largest_allowed_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path()).await.unwrap();
    let e = log
        .append_entry(RequestId::new(4, 0), vec![1; MAX_ENTRY_BYTES + 1])
        .await
        .unwrap_err();
    assert_eq!(
        e,
        Error::TooLarge {
            what: "coordination log entry".into(),
            bytes: MAX_ENTRY_BYTES as u64 + 1,
            limit: MAX_ENTRY_BYTES as u64,
        }
    );
    assert_eq!(
        e.to_string(),
        "coordination log entry of 16777217 bytes exceeds the limit of 16777216 bytes"
    );
    assert!(!e.is_retryable());
    assert_eq!(log.last_entry_position().await.unwrap(), 0);
    let largest = vec![2; MAX_ENTRY_BYTES];
    assert_eq!(
        log.append_entry(RequestId::new(4, 1), largest.clone())
            .await
            .unwrap(),
        1
    );
    assert_eq!(log.read_entries(1, 1).await.unwrap(), vec![(1, largest)]);
    log.close().await.unwrap();
}

/// Flips one byte of the stored entry at `position`, with the node closed.
fn flip_entry_byte(dir: &Path, position: u64, offset: usize) {
    let names = rocksdb::DB::list_cf(&rocksdb::Options::default(), dir).unwrap();
    let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), dir, &names).unwrap();
    let handle = db.cf_handle("coord_entries").unwrap();
    let key = position.to_be_bytes();
    let mut value = db.get_cf(handle, key).unwrap().expect("entry stored");
    value[offset] ^= 0x40;
    db.put_cf(handle, key, value).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_entry_is_reported_with_its_position_never_yielded() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path()).await.unwrap();
    for i in 1..=3u64 {
        log.append_entry(RequestId::new(5, i), entry(5, i))
            .await
            .unwrap();
    }
    log.close().await.unwrap();

    // Inside the payload of position 2 (after the 4-byte checksum).
    flip_entry_byte(dir.path(), 2, 6);

    let log = EmbeddedLog::open(dir.path()).await.unwrap();
    let corrupt = |e: Error| match e {
        Error::CorruptEntry { position, detail } => {
            assert!(detail.starts_with("checksum mismatch: stored "), "{detail}");
            position
        }
        other => panic!("expected CorruptEntry, got {other:?}"),
    };
    assert_eq!(corrupt(log.read_entries(1, 10).await.unwrap_err()), 2);
    // A subscription yields every entry before the damage, then reports it, and stays there.
    let mut sub = log.subscribe_entries(1).unwrap();
    assert_eq!(sub.next().await.unwrap(), (1, entry(5, 1)));
    assert_eq!(corrupt(sub.next().await.unwrap_err()), 2);
    assert_eq!(sub.next_position(), 2);
    assert_eq!(corrupt(sub.next().await.unwrap_err()), 2);
    // Around the damaged entry, reads work; the error is not retryable.
    assert_eq!(
        log.read_entries(1, 1).await.unwrap(),
        vec![(1, entry(5, 1))]
    );
    assert_eq!(
        log.read_entries(3, 10).await.unwrap(),
        vec![(3, entry(5, 3))]
    );
    assert!(!Error::CorruptEntry {
        position: 2,
        detail: String::new()
    }
    .is_retryable());
    log.close().await.unwrap();
}
