//! Throughput and latency figures (ignored by default; run with
//! `cargo test -p sardonyx-state-log --release --test measure -- --ignored --nocapture`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sardonyx_state_log::{EmbeddedLog, LogClient, LogServer, RequestId, ServerConfig};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_embedded() {
    for inflight in [1usize, 2, 4] {
        eprintln!("-- max_inflight_batches = {inflight}");
        let tuning = sardonyx_state_log::Tuning {
            max_inflight_batches: inflight,
            ..Default::default()
        };
        measure_embedded_with(tuning).await;
    }
}

async fn measure_embedded_with(tuning: sardonyx_state_log::Tuning) {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open_with(dir.path(), tuning).await.unwrap();
    let record = vec![7u8; 200];

    // Sequential: one append at a time (each waits for its own fsync).
    let n = 500u64;
    let mut lat = Vec::new();
    let t = Instant::now();
    for i in 0..n {
        let s = Instant::now();
        log.append("seq", RequestId::new(1, i), record.clone())
            .await
            .unwrap();
        lat.push(s.elapsed());
    }
    let el = t.elapsed();
    lat.sort();
    eprintln!(
        "embedded sequential: {n} appends in {el:?} = {:.0}/s, p50 {:?} p99 {:?}",
        n as f64 / el.as_secs_f64(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );

    // Concurrent: 64 appenders (group commit).
    for writers in [8u64, 64] {
        let per = 20_000 / writers;
        let s0 = log.commit_stats();
        let f0 = log.wal_syncs();
        let t = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for w in 0..writers {
            let log = log.clone();
            let record = record.clone();
            set.spawn(async move {
                let mut lat = Vec::new();
                for i in 0..per {
                    let s = Instant::now();
                    log.append(
                        &format!("slot-{w}"),
                        RequestId::new(100 + w, i),
                        record.clone(),
                    )
                    .await
                    .unwrap();
                    lat.push(s.elapsed());
                }
                lat
            });
        }
        let mut lat = Vec::new();
        while let Some(l) = set.join_next().await {
            lat.extend(l.unwrap());
        }
        let el = t.elapsed();
        lat.sort();
        let s1 = log.commit_stats();
        eprintln!(
            "embedded {writers} writers: {} appends in {el:?} = {:.0}/s, p50 {:?} p99 {:?}, {} raft entries, {} fsyncs",
            writers * per,
            (writers * per) as f64 / el.as_secs_f64(),
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            s1.raft_writes - s0.raft_writes,
            log.wal_syncs() - f0
        );
    }
    let t = Instant::now();
    let r = log.read("slot-0", 0).await.unwrap();
    eprintln!("read {} entries in {:?}", r.entries.len(), t.elapsed());
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_cluster() {
    for inflight in [1usize, 2, 4] {
        eprintln!("-- max_inflight_batches = {inflight}");
        let tuning = sardonyx_state_log::Tuning {
            max_inflight_batches: inflight,
            ..Default::default()
        };
        measure_cluster_with(tuning).await;
    }
}

async fn measure_cluster_with(tuning: sardonyx_state_log::Tuning) {
    let mut listeners = Vec::new();
    let mut cluster = BTreeMap::new();
    for id in 1..=3u64 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        cluster.insert(id, l.local_addr().unwrap().to_string());
        listeners.push(l);
    }
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut servers = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let id = i as u64 + 1;
        let cfg = ServerConfig {
            tuning: tuning.clone(),
            ..ServerConfig::new(id, cluster[&id].clone(), dirs[i].path(), cluster.clone())
        };
        servers.push(LogServer::start_on(l, cfg).await.unwrap());
    }
    let client = LogClient::connect(cluster.values().cloned()).unwrap();
    let record = vec![7u8; 200];
    client
        .append("warm", RequestId::new(1, 0), record.clone())
        .await
        .unwrap();

    let n = 300u64;
    let mut lat = Vec::new();
    let t = Instant::now();
    for i in 0..n {
        let s = Instant::now();
        client
            .append("seq", RequestId::new(2, i), record.clone())
            .await
            .unwrap();
        lat.push(s.elapsed());
    }
    let el = t.elapsed();
    lat.sort();
    eprintln!(
        "3-node sequential: {n} appends in {el:?} = {:.0}/s, p50 {:?} p99 {:?}",
        n as f64 / el.as_secs_f64(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );

    let writers = 64u64;
    let per = 10_000 / writers;
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for w in 0..writers {
        let client = client.clone();
        let record = record.clone();
        set.spawn(async move {
            for i in 0..per {
                client
                    .append(
                        &format!("slot-{w}"),
                        RequestId::new(100 + w, i),
                        record.clone(),
                    )
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    let el = t.elapsed();
    let stats: Vec<_> = servers.iter().map(|s| s.commit_stats()).collect();
    eprintln!(
        "3-node {writers} writers: {} appends in {el:?} = {:.0}/s; commit stats per server {stats:?}",
        writers * per,
        (writers * per) as f64 / el.as_secs_f64()
    );
    for s in servers {
        s.shutdown().await.unwrap();
    }
}
