//! The embedded state log on real RocksDB files: append, read, snapshot, reopen.

use sardonyx_state_log::{EmbeddedLog, Error, Ledgers, RequestId};

fn rid(seq: u64) -> RequestId {
    RequestId::new(42, seq)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_read_snapshot_reopen() {
    let dir = tempfile::tempdir().unwrap();

    let log = EmbeddedLog::open(dir.path()).await.unwrap();
    for i in 0..5u64 {
        let p = log
            .append("a", rid(i), format!("a{i}").into_bytes())
            .await
            .unwrap();
        assert_eq!(p, i);
    }
    for i in 0..3u64 {
        let p = log
            .append("b", rid(100 + i), format!("b{i}").into_bytes())
            .await
            .unwrap();
        assert_eq!(p, i, "positions are per ledger");
    }
    let read = log.read("a", 0).await.unwrap();
    assert_eq!(read.snapshot, None);
    let want: Vec<(u64, Vec<u8>)> = (0..5).map(|i| (i, format!("a{i}").into_bytes())).collect();
    assert_eq!(read.entries, want);
    assert_eq!(read.stats.records_scanned, 5);
    assert_eq!(log.read("a", 3).await.unwrap().entries, want[3..].to_vec());
    assert!(log
        .read("never-written", 0)
        .await
        .unwrap()
        .entries
        .is_empty());

    let info = log.info("a").await.unwrap();
    assert_eq!(
        (info.next_position, info.entries, info.entry_bytes),
        (5, 5, 10)
    );

    // A repeated request id is applied once and answers with the original position.
    assert_eq!(log.append("a", rid(2), b"dup".to_vec()).await.unwrap(), 2);
    assert_eq!(log.info("a").await.unwrap().next_position, 5);
    log.close().await.unwrap();

    // Reopen: the same entries, and appends continue where they were.
    let log = EmbeddedLog::open(dir.path()).await.unwrap();
    assert_eq!(log.read("a", 0).await.unwrap().entries, want);
    assert_eq!(log.append("a", rid(5), b"a5".to_vec()).await.unwrap(), 5);
    assert_eq!(
        log.append("a", rid(3), b"dup".to_vec()).await.unwrap(),
        3,
        "dedup survives reopen"
    );

    // Compaction: snapshot covering 0..=3, then a read returns the snapshot and the tail only.
    log.snapshot("a", 3, b"state@3".to_vec()).await.unwrap();
    let read = log.read("a", 0).await.unwrap();
    assert_eq!(read.snapshot, Some((3, b"state@3".to_vec())));
    assert_eq!(read.entries, vec![(4, b"a4".to_vec()), (5, b"a5".to_vec())]);
    assert_eq!(
        read.stats.records_scanned, 2,
        "recovery reads snapshot + tail only"
    );
    assert_eq!(read.stats.bytes_read, 7 + 4);
    let info = log.info("a").await.unwrap();
    assert_eq!(info.first_position, 4);
    assert_eq!(info.entries, 2);
    assert_eq!(info.entry_bytes, 4);
    assert_eq!(info.snapshot_position, Some(3));
    // Reading past the snapshot gives entries only.
    let read = log.read("a", 5).await.unwrap();
    assert_eq!(read.snapshot, None);
    assert_eq!(read.entries, vec![(5, b"a5".to_vec())]);
    // An older snapshot is ignored; one past the end is rejected.
    log.snapshot("a", 1, b"old".to_vec()).await.unwrap();
    assert_eq!(
        log.read("a", 0).await.unwrap().snapshot,
        Some((3, b"state@3".to_vec()))
    );
    let err = log.snapshot("a", 99, b"x".to_vec()).await.unwrap_err();
    assert!(matches!(err, Error::InvalidRequest(_)), "{err:?}");
    // Ledger b untouched.
    assert_eq!(log.read("b", 0).await.unwrap().entries.len(), 3);
    log.close().await.unwrap();

    // Compaction survives a reopen too.
    let log = EmbeddedLog::open(dir.path()).await.unwrap();
    let read = log.read("a", 0).await.unwrap();
    assert_eq!(read.snapshot, Some((3, b"state@3".to_vec())));
    assert_eq!(read.entries.len(), 2);
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usable_as_dyn_ledgers() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path()).await.unwrap();
    let ledgers: std::sync::Arc<dyn Ledgers> = std::sync::Arc::new(log.clone());
    assert_eq!(ledgers.append("x", rid(0), vec![1, 2, 3]).await.unwrap(), 0);
    assert_eq!(
        ledgers.read("x", 0).await.unwrap().entries,
        vec![(0, vec![1, 2, 3])]
    );
    assert_eq!(ledgers.info("x").await.unwrap().next_position, 1);
    drop(ledgers);
    log.close().await.unwrap();
}

/// Total size of the RocksDB write-ahead log files (`*.log`) anywhere under `dir`. RocksDB
/// deletes WAL files while the directory is listed: a file gone by the time it is looked at
/// counts nothing.
fn wal_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        if path.is_dir() {
            total += wal_bytes(&path);
        } else if path.extension().is_some_and(|e| e == "log") {
            total += entry.metadata().map_or(0, |m| m.len());
        }
    }
    total
}

/// The write-ahead log stays within its budget (16 MiB) however much is appended: column
/// families written only at the start (Raft's vote) must not keep every WAL file alive, which
/// made a restart after 10M events replay 208 MB of WAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_write_ahead_log_is_recycled() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path()).await.unwrap();
    let record = vec![7u8; 1 << 20];
    let mut most = 0;
    for i in 0..96u64 {
        log.append("a", rid(i), record.clone()).await.unwrap();
        most = most.max(wal_bytes(dir.path()));
    }
    // 96 MiB of records are written twice (the Raft entry, then the ledger row it applies to);
    // the budget plus what is in flight while a flush runs stays far below that.
    assert!(
        most < 48 << 20,
        "WAL files reached {most} bytes for 96 MiB of appends"
    );
    assert_eq!(log.read("a", 95).await.unwrap().entries.len(), 1);
    log.close().await.unwrap();
}

/// Bytes of `len` that differ from record to record (`seed`), so a mix-up shows.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seed.wrapping_mul(31).wrapping_add(i as u64 * 7) % 251) as u8)
        .collect()
}

/// Records and snapshots of hundreds of kilobytes (stored apart from the table blocks, in
/// RocksDB blob files, past several memtable flushes) read back exactly, before and after a
/// reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_records_and_snapshots_read_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path()).await.unwrap();
    // 30 × 200 KB: several times a column family's memtable, so most of it is flushed.
    for i in 0..30u64 {
        let p = log
            .append("big", rid(i), pattern(i, 200 << 10))
            .await
            .unwrap();
        assert_eq!(p, i);
    }
    let snapshot = pattern(1000, 1 << 20);
    log.snapshot("big", 19, snapshot.clone()).await.unwrap();
    let want: Vec<(u64, Vec<u8>)> = (20..30).map(|i| (i, pattern(i, 200 << 10))).collect();
    let read = log.read("big", 0).await.unwrap();
    assert_eq!(read.snapshot, Some((19, snapshot.clone())));
    assert_eq!(read.entries, want);
    log.close().await.unwrap();

    let log = EmbeddedLog::open(dir.path()).await.unwrap();
    let read = log.read("big", 0).await.unwrap();
    assert_eq!(read.snapshot, Some((19, snapshot)));
    assert_eq!(read.entries, want);
    assert_eq!(
        log.append("big", rid(30), b"small".to_vec()).await.unwrap(),
        30
    );
    log.close().await.unwrap();
}
