//! A damaged stored record is reported as `Corrupt` with its ledger and position.
//!
//! The test edits the embedded node's RocksDB directly: ledger records live in the column family
//! `ledger_records` under `u16 BE name length ‖ name ‖ u64 BE position`, valued
//! `crc32 LE ‖ payload`; snapshots in `ledger_snapshots` under the name, valued
//! `crc32 LE ‖ covers BE ‖ payload`.

use std::path::Path;

use sardonyx_state_log::{EmbeddedLog, Error, RequestId};

fn record_key(ledger: &str, position: u64) -> Vec<u8> {
    let mut k = (ledger.len() as u16).to_be_bytes().to_vec();
    k.extend_from_slice(ledger.as_bytes());
    k.extend_from_slice(&position.to_be_bytes());
    k
}

/// Flips one payload byte of the value under `key` in column family `cf`, with the node closed.
fn flip_byte(dir: &Path, cf: &str, key: &[u8], offset: usize) {
    let names = rocksdb::DB::list_cf(&rocksdb::Options::default(), dir).unwrap();
    let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), dir, &names).unwrap();
    let handle = db.cf_handle(cf).unwrap();
    let mut value = db.get_cf(handle, key).unwrap().expect("value present");
    value[offset] ^= 0x40;
    db.put_cf(handle, key, value).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_record_byte_is_reported_with_ledger_and_position() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path()).await.unwrap();
    for i in 0..3u64 {
        log.append(
            "votes/0",
            RequestId::new(1, i),
            format!("record-{i}").into_bytes(),
        )
        .await
        .unwrap();
    }
    log.close().await.unwrap();

    // Damage the payload of position 1 (offset 4 + 2: inside the payload, under the checksum).
    flip_byte(dir.path(), "ledger_records", &record_key("votes/0", 1), 6);

    let log = EmbeddedLog::open(dir.path()).await.unwrap();
    match log.read("votes/0", 0).await {
        Err(Error::Corrupt {
            ledger, position, ..
        }) => {
            assert_eq!(ledger, "votes/0");
            assert_eq!(position, 1);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // Reading past the damaged record works; the error is not retryable.
    let tail = log.read("votes/0", 2).await.unwrap();
    assert_eq!(tail.entries, vec![(2, b"record-2".to_vec())]);
    assert!(!Error::Corrupt {
        ledger: String::new(),
        position: 0,
        detail: String::new()
    }
    .is_retryable());
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_snapshot_byte_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path()).await.unwrap();
    for i in 0..3u64 {
        log.append("s", RequestId::new(1, i), vec![i as u8])
            .await
            .unwrap();
    }
    log.snapshot("s", 1, b"snapshot-bytes".to_vec())
        .await
        .unwrap();
    log.close().await.unwrap();

    flip_byte(dir.path(), "ledger_snapshots", b"s", 14);

    let log = EmbeddedLog::open(dir.path()).await.unwrap();
    match log.read("s", 0).await {
        Err(Error::Corrupt {
            ledger, position, ..
        }) => {
            assert_eq!((ledger.as_str(), position), ("s", 1));
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    log.close().await.unwrap();
}
