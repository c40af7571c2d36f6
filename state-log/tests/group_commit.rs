//! Concurrent appends are group-committed: fewer Raft entries (and fsyncs) than appends.

use std::time::Instant;

use sardonyx_state_log::{EmbeddedLog, RequestId};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_raft_entries() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path()).await.unwrap();
    let before = log.raft_last_log_index().unwrap();
    let stats_before = log.commit_stats();

    const N: u64 = 400;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..N {
        let log = log.clone();
        tasks.spawn(async move {
            let ledger = format!("slot-{}", i % 4);
            log.append(&ledger, RequestId::new(9, i), vec![i as u8; 100])
                .await
        });
    }
    let mut positions = Vec::new();
    while let Some(r) = tasks.join_next().await {
        positions.push(r.unwrap().unwrap());
    }
    let elapsed = started.elapsed();

    let entries = log.raft_last_log_index().unwrap() - before;
    let stats = log.commit_stats();
    let writes = stats.raft_writes - stats_before.raft_writes;
    assert_eq!(stats.commands - stats_before.commands, N);
    assert_eq!(entries, writes, "one Raft entry per group commit");
    assert!(entries < N, "{N} appends took {entries} Raft entries");
    // Every ledger got dense positions 0..N/4.
    positions.sort_unstable();
    let want: Vec<u64> = (0..N / 4).flat_map(|p| std::iter::repeat_n(p, 4)).collect();
    assert_eq!(positions, want);
    for s in 0..4 {
        let read = log.read(&format!("slot-{s}"), 0).await.unwrap();
        assert_eq!(read.entries.len() as u64, N / 4);
    }
    eprintln!(
        "{N} concurrent appends: {entries} Raft entries, {} WAL syncs, {:?} ({:.0} appends/s)",
        log.wal_syncs(),
        elapsed,
        N as f64 / elapsed.as_secs_f64()
    );
    drop(tasks);
    log.close().await.unwrap();
}
