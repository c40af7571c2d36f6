//! The dedup filter: no false "no" within the horizon, rotation, export/import, reopen.

use proptest::prelude::*;
use sardonyx_state_log::{DedupConfig, DedupFilter};

fn cfg(bucket_size: u64, num_buckets: usize) -> DedupConfig {
    DedupConfig {
        bucket_size,
        num_buckets,
        false_positive_rate: 0.01,
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 20,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Every id among the last `(num_buckets - 1) * bucket_size` inserts is found; an id never
    /// inserted is never found (bloom "maybe" is confirmed in RocksDB).
    #[test]
    fn never_forgets_within_the_horizon(
        ids in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..12), 1..100),
        bucket_size in 3u64..25,
        num_buckets in 1usize..5,
        split in 1usize..30,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut f = DedupFilter::open(dir.path(), cfg(bucket_size, num_buckets)).unwrap();
        for chunk in ids.chunks(split) {
            f.insert_batch(chunk).unwrap();
        }
        let (guaranteed, _) = f.config().horizon();
        let recent = &ids[ids.len().saturating_sub(guaranteed as usize)..];
        for id in recent {
            prop_assert!(f.contains(id).unwrap(), "forgot {:?}", id);
        }
        // Ids are 1..12 bytes; a 12+ byte id was never inserted.
        prop_assert!(!f.contains(b"never-inserted-id").unwrap());
        prop_assert!(f.bucket_count() <= num_buckets);
    }
}

#[test]
fn rotation_drops_the_oldest_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = DedupFilter::open(dir.path(), cfg(2, 3)).unwrap();
    f.insert_batch([b"a", b"b", b"c", b"d", b"e", b"f"])
        .unwrap();
    assert_eq!(f.bucket_count(), 3);
    assert!(f.contains(b"a").unwrap());
    // The 7th id starts a 4th bucket: the first bucket ({a, b}) is dropped.
    f.insert_batch([b"g"]).unwrap();
    assert_eq!(f.bucket_count(), 3);
    assert!(!f.contains(b"a").unwrap());
    assert!(!f.contains(b"b").unwrap());
    for id in [b"c", b"d", b"e", b"f", b"g"] {
        assert!(f.contains(id).unwrap());
    }
    assert_eq!(f.len(), 5);
    assert_eq!(f.config().horizon(), (4, 6));
}

#[test]
fn reopen_rebuilds_bloom_filters() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut f = DedupFilter::open(dir.path(), cfg(10, 3)).unwrap();
        f.insert_batch((0..25u32).map(|i| i.to_be_bytes())).unwrap();
    }
    let f = DedupFilter::open(dir.path(), cfg(10, 3)).unwrap();
    assert_eq!(f.bucket_count(), 3);
    assert_eq!(f.len(), 25);
    for i in 0..25u32 {
        assert!(f.contains(&i.to_be_bytes()).unwrap(), "{i}");
    }
    assert!(!f.contains(&99u32.to_be_bytes()).unwrap());
    drop(f);
    // Fewer buckets on reopen drops the oldest.
    let f = DedupFilter::open(dir.path(), cfg(10, 2)).unwrap();
    assert_eq!(f.bucket_count(), 2);
    assert!(!f.contains(&0u32.to_be_bytes()).unwrap());
    assert!(f.contains(&24u32.to_be_bytes()).unwrap());
}

#[test]
fn export_import_round_trip_and_clear() {
    let a_dir = tempfile::tempdir().unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    let mut a = DedupFilter::open(a_dir.path(), cfg(4, 3)).unwrap();
    let ids: Vec<String> = (0..10).map(|i| format!("vote-{i}")).collect();
    a.insert_batch(&ids).unwrap();
    let bytes = a.export().unwrap();

    let mut b = DedupFilter::open(b_dir.path(), cfg(4, 3)).unwrap();
    b.insert_batch(["stale"]).unwrap();
    b.import(&bytes).unwrap();
    assert!(
        !b.contains(b"stale").unwrap(),
        "import replaces the contents"
    );
    assert_eq!(b.bucket_count(), a.bucket_count());
    assert_eq!(b.len(), a.len());
    for id in &ids {
        assert_eq!(
            b.contains(id.as_bytes()).unwrap(),
            a.contains(id.as_bytes()).unwrap()
        );
        assert!(b.contains(id.as_bytes()).unwrap());
    }
    assert_eq!(
        b.export().unwrap(),
        bytes,
        "export of the import is identical"
    );
    // Rotation continues from the imported buckets: 2 more ids fill the last bucket, the 3rd
    // drops the oldest bucket (vote-0..3).
    b.insert_batch(["x", "y", "z"]).unwrap();
    assert!(!b.contains(b"vote-0").unwrap());
    assert!(b.contains(b"vote-4").unwrap());

    b.clear().unwrap();
    assert!(b.is_empty());
    assert!(!b.contains(b"vote-9").unwrap());
    assert!(b.import(b"not an export").is_err());
    // A damaged export is refused before anything changes.
    b.insert_batch(["kept"]).unwrap();
    for cut in [1, 5, 9] {
        let err = b.import(&bytes[..bytes.len() - cut]).unwrap_err();
        assert!(err.to_string().contains("dedup filter export"), "{err}");
    }
    assert!(b.contains(b"kept").unwrap());
}

/// The mark names what the last insert stored; it survives a reopen, and any unmarked change
/// (insert, clear, import) removes it.
#[test]
fn the_mark_is_stored_with_the_ids_and_removed_by_unmarked_changes() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut f = DedupFilter::open(dir.path(), cfg(4, 3)).unwrap();
        assert_eq!(f.mark().unwrap(), None);
        // Rotations within one call: the mark still ends up stored.
        f.insert_batch_marked((0..10u32).map(|i| i.to_be_bytes()), Some(b"pos-7"))
            .unwrap();
        assert_eq!(f.mark().unwrap().as_deref(), Some(&b"pos-7"[..]));
        // A call without ids only moves the mark.
        f.insert_batch_marked(std::iter::empty::<&[u8]>(), Some(b"pos-8"))
            .unwrap();
    }
    let mut f = DedupFilter::open(dir.path(), cfg(4, 3)).unwrap();
    assert_eq!(f.mark().unwrap().as_deref(), Some(&b"pos-8"[..]));
    assert!(f.contains(&9u32.to_be_bytes()).unwrap());
    f.insert_batch([b"x"]).unwrap();
    assert_eq!(
        f.mark().unwrap(),
        None,
        "an unmarked insert removes the mark"
    );
    f.insert_batch_marked([b"y"], Some(b"pos-9")).unwrap();
    let export = f.export().unwrap();
    f.clear().unwrap();
    assert_eq!(f.mark().unwrap(), None, "clear removes the mark");
    f.insert_batch_marked([b"z"], Some(b"pos-10")).unwrap();
    f.import(&export).unwrap();
    assert_eq!(f.mark().unwrap(), None, "import removes the mark");
    assert!(f.contains(b"y").unwrap() && !f.contains(b"z").unwrap());
}

const CRASH_DIR_VAR: &str = "SARDONYX_DEDUP_CRASH_DIR";

/// The child of [`a_killed_process_keeps_a_marked_prefix`]: does nothing unless run by it.
/// Inserts 25 marked calls of 7 ids into buckets of 60 (rotations at ids 60 and 120 write what
/// came before them, with the mark of the call before), flushes
/// after call 20, then inserts 4 more calls and aborts: no destructor runs.
#[test]
fn dedup_crash_child() {
    let Ok(dir) = std::env::var(CRASH_DIR_VAR) else {
        return;
    };
    let mut f = DedupFilter::open(&dir, cfg(60, 10)).unwrap();
    for call in 0..25u32 {
        let ids = (call * 7..call * 7 + 7).map(u32::to_be_bytes);
        f.insert_batch_marked(ids, Some(format!("call-{call}").as_bytes()))
            .unwrap();
        if call == 20 {
            f.flush().unwrap();
        }
    }
    std::process::abort();
}

/// A process killed with ids not yet written leaves a filter that is a marked prefix of its
/// inserts: the mark names the last call it holds whole (at least the last flushed one), every
/// id up to that call is found, and nothing it did not insert is. The engine replays its ledger
/// from the mark, so the lost tail costs a replay, never a wrong answer.
#[test]
fn a_killed_process_keeps_a_marked_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "dedup_crash_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_DIR_VAR, dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success(), "the child must have aborted");
    let f = DedupFilter::open(dir.path(), cfg(60, 10)).unwrap();
    let mark = String::from_utf8(f.mark().unwrap().expect("a mark was flushed")).unwrap();
    let through: u32 = mark.strip_prefix("call-").unwrap().parse().unwrap();
    assert!((20..25).contains(&through), "{mark}");
    for i in 0..(through + 1) * 7 {
        assert!(f.contains(&i.to_be_bytes()).unwrap(), "{i} (mark {mark})");
    }
    // Calls 21–24 were not written (no rotation came after them: the next is at id 180), so
    // the mark is the flushed one and their ids are gone.
    assert_eq!(through, 20);
    assert_eq!(f.len(), 21 * 7);
    for i in 21 * 7..25 * 7 + 10u32 {
        assert!(!f.contains(&i.to_be_bytes()).unwrap(), "{i}");
    }
}
