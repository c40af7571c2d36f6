//! Retries against a real PostgreSQL: a job whose output is a PostgreSQL table goes on when the
//! server is stopped for a few seconds mid-job (its writes are retried with backoff, nothing is
//! lost), and fails with the cause once a server that stays away has exhausted the retry bound.
//!
//! The test stops and starts a PostgreSQL cluster of its own (`sardonyx_retry`, set up by
//! `connectors/tests/pg-setup.sh sardonyx_retry`, which needs root), never the shared one. It
//! runs when `SARDONYX_PG_URL` is set (PostgreSQL is installed); with `CI=true` and no
//! `SARDONYX_PG_URL` it fails instead of skipping.

use std::process::Command;
use std::time::{Duration, Instant};

use sardonyx::{run_job, Job, Map, Registry, RunOptions, Segment, Value};
use tokio::sync::mpsc;
use tokio_postgres::NoTls;

const CLUSTER: &str = "sardonyx_retry";

/// The URL of the test's own cluster, started; `None` (after a notice) on a machine without
/// PostgreSQL, a failure on CI.
fn private_cluster() -> Option<String> {
    match std::env::var("SARDONYX_PG_URL") {
        Ok(url) if !url.is_empty() => {}
        _ if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") => panic!(
            "CI=true but SARDONYX_PG_URL is unset: the PostgreSQL tests need a real server; run `export SARDONYX_PG_URL=\"$(bash connectors/tests/pg-setup.sh)\"` first"
        ),
        _ => {
            eprintln!(
                "SKIPPED: SARDONYX_PG_URL is unset; run `export SARDONYX_PG_URL=\"$(bash connectors/tests/pg-setup.sh)\"`"
            );
            return None;
        }
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../connectors/tests/pg-setup.sh"
    );
    let out = Command::new("bash")
        .args([script, CLUSTER])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg-setup.sh {CLUSTER} failed (it needs root):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8(out.stdout).unwrap().trim().to_owned())
}

/// `pg_ctlcluster VERSION sardonyx_retry ACTION`.
fn pg_ctl(action: &str) {
    let version = std::fs::read_dir("/etc/postgresql")
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| e.path().join(CLUSTER).is_dir())
        .expect("the test cluster exists")
        .file_name();
    let status = Command::new("pg_ctlcluster")
        .arg(&version)
        .args([CLUSTER, action])
        .status()
        .unwrap();
    assert!(status.success(), "pg_ctlcluster {CLUSTER} {action} failed");
}

async fn query(url: &str, sql: &str) -> Vec<i64> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(conn);
    let rows = client.simple_query(sql).await.unwrap();
    rows.iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(|v| v.parse().unwrap()),
            _ => None,
        })
        .collect()
}

/// Polls until `table` holds `n` rows (at most 30 s).
async fn wait_rows(url: &str, table: &str, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = query(url, &format!("SELECT count(*) FROM {table}")).await[0];
        if got == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{table} holds {got} rows, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A job: channel input → PostgreSQL output (upsert on `vote_id`) with `retry`.
fn job(url: &str, table: &str, retry: serde_json::Value) -> Job {
    let text = serde_json::json!({
        "id": table,
        "workflow": [["in", "out"]],
        "catalog": [
            {"name": "in", "type": "input", "plugin": "sardonyx/channel",
             "params": {"channel": table}, "batch_size": 100, "batch_timeout": [5, "milliseconds"]},
            {"name": "out", "type": "output", "plugin": "postgres",
             "params": {"url": url, "table": table, "key": ["vote_id"], "retry": retry}}
        ]
    });
    Job::from_json_str(&text.to_string()).unwrap()
}

fn vote(id: i64) -> Segment {
    let mut s = Map::with_capacity(2);
    s.insert("vote_id", Value::from(id));
    s.insert("candidate", ["ada", "grace", "alan"][id as usize % 3]);
    s
}

async fn send(tx: mpsc::Sender<Segment>, ids: std::ops::Range<i64>) {
    for id in ids {
        tx.send(vote(id)).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_is_retried_and_one_that_stays_away_fails_the_job() {
    let Some(url) = private_cluster() else { return };
    let dir = tempfile::tempdir().unwrap();
    let errors = dir.path().join("errors.jsonl");
    let options = move || RunOptions {
        errors_path: errors.clone(),
        ..RunOptions::default()
    };
    let table = format!("retry_votes_{}", std::process::id());
    query(
        &url,
        &format!("DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (vote_id bigint PRIMARY KEY, candidate text NOT NULL)"),
    )
    .await;

    // 1. The server is stopped for 3 s while the job writes: every row is there at the end.
    let registry = Registry::new();
    let tx = registry.input_channel(&table, 100);
    let j = job(
        &url,
        &table,
        serde_json::json!({"max_retries": 50, "first_delay_ms": 50, "max_delay_ms": 400}),
    );
    let opts = options();
    let running = tokio::spawn(async move { run_job(&j, &registry, opts).await });
    send(tx.clone(), 0..1_000).await;
    wait_rows(&url, &table, 1_000).await;
    pg_ctl("stop");
    // (The job pushes back while its writes fail: feed it from a task of its own.)
    let feeder = tokio::spawn(send(tx, 1_000..3_000));
    // The outage the job must ride out (not a wait for something).
    tokio::time::sleep(Duration::from_secs(3)).await;
    pg_ctl("start");
    feeder.await.unwrap();
    let report = running
        .await
        .unwrap()
        .expect("the job rides out the outage");
    assert_eq!(report.written, 3_000, "{report:?}");
    let ids = query(
        &url,
        &format!("SELECT vote_id FROM {table} ORDER BY vote_id"),
    )
    .await;
    assert_eq!(ids, (0..3_000).collect::<Vec<i64>>());

    // 2. The server stays away: after 1 + 3 attempts the job fails with the cause.
    query(&url, &format!("TRUNCATE {table}")).await;
    let registry = Registry::new();
    let tx = registry.input_channel(&table, 100);
    let j = job(
        &url,
        &table,
        serde_json::json!({"max_retries": 3, "first_delay_ms": 20, "max_delay_ms": 40}),
    );
    let opts = options();
    let running = tokio::spawn(async move { run_job(&j, &registry, opts).await });
    send(tx.clone(), 0..10).await;
    wait_rows(&url, &table, 10).await;
    pg_ctl("stop");
    send(tx, 10..20).await;
    let result = running.await.unwrap();
    pg_ctl("start");
    let err = result
        .expect_err("a server that stays away fails the job")
        .to_string();
    assert!(
        err.starts_with("task \"out\": writing a batch: gave up after 4 attempts in ")
            && err.contains(" ms: connecting to PostgreSQL: ")
            && err.ends_with("(retryable)"),
        "{err}"
    );
    let ids = query(
        &url,
        &format!("SELECT vote_id FROM {table} ORDER BY vote_id"),
    )
    .await;
    assert_eq!(
        ids,
        (0..10).collect::<Vec<i64>>(),
        "nothing past the failure"
    );
    query(&url, &format!("DROP TABLE {table}")).await;
}
