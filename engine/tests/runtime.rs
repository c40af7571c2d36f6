//! The local runtime end to end: batching, lifecycles, backpressure, committed positions.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sardonyx::job::builder::JobBuilder;
use sardonyx::job::TaskSpec;
use sardonyx::registry::{ExceptionAction, Lifecycle};
use sardonyx::{run_job, Registry, RunError, RunOptions, Segment, Value};

fn seg(i: i64) -> Segment {
    let mut s = Segment::new();
    s.insert("n", i);
    s
}

fn channel_job(batch_size: usize) -> sardonyx::Job {
    JobBuilder::new()
        .edge("in", "f")
        .edge("f", "out")
        .task(
            TaskSpec::input("in", "sardonyx/channel")
                .param("channel", "in")
                .batch_size(batch_size),
        )
        .task(TaskSpec::function("f", "test/fail-on-odd").batch_size(batch_size))
        .task(TaskSpec::output("out", "sardonyx/channel").param("channel", "out"))
        .lifecycle("f", "test/watch")
        .build()
}

fn registry(action: ExceptionAction, events: Arc<Mutex<Vec<String>>>) -> Registry {
    let mut r = Registry::new();
    r.register_function("test/fail-on-odd", |s, _| {
        match s.get("n").and_then(Value::as_i64) {
            Some(n) if n % 2 == 1 => Err(format!("{n} is odd")),
            _ => Ok(vec![s]),
        }
    });
    let (e1, e2, e3) = (events.clone(), events.clone(), events.clone());
    r.register_lifecycle(
        "test/watch",
        Lifecycle {
            before_task_start: Some(Arc::new(move |ev| {
                e1.lock().unwrap().push(format!("start {}", ev.task))
            })),
            before_batch: Some(Arc::new(move |_, n| {
                e2.lock().unwrap().push(format!("batch {n}"))
            })),
            handle_exception: Some(Arc::new(move |_, s, reason| {
                e3.lock()
                    .unwrap()
                    .push(format!("exception {reason} on {s}"));
                action
            })),
            ..Lifecycle::default()
        },
    );
    r
}

async fn run_with(
    action: ExceptionAction,
    inputs: Vec<i64>,
    batch_size: usize,
) -> (
    Result<sardonyx::JobReport, RunError>,
    Vec<Segment>,
    Vec<String>,
    tempfile::TempDir,
) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let r = registry(action, events.clone());
    let tx = r.input_channel("in", 4);
    let mut rx = r.output_channel("out", 1024);
    let dir = tempfile::tempdir().unwrap();
    let options = RunOptions {
        errors_path: dir.path().join("errors.jsonl"),
        ..RunOptions::default()
    };
    let job = channel_job(batch_size);
    let feeder = tokio::spawn(async move {
        for i in inputs {
            if tx.send(seg(i)).await.is_err() {
                break;
            }
        }
    });
    let result = run_job(&job, &r, options).await;
    feeder.await.unwrap();
    let mut out = Vec::new();
    while let Ok(s) = rx.try_recv() {
        out.push(s);
    }
    let events = events.lock().unwrap().clone();
    (result, out, events, dir)
}

#[tokio::test]
async fn deferred_failures_go_to_the_error_file_and_the_job_goes_on() {
    let (result, out, events, dir) = run_with(ExceptionAction::Defer, (0..10).collect(), 3).await;
    let report = result.unwrap();
    assert_eq!((report.read, report.written, report.rejected), (10, 5, 5));
    let mut evens: Vec<i64> = out
        .iter()
        .map(|s| s.get("n").unwrap().as_i64().unwrap())
        .collect();
    evens.sort();
    assert_eq!(evens, [0, 2, 4, 6, 8]);
    let errors = std::fs::read_to_string(dir.path().join("errors.jsonl")).unwrap();
    let mut lines: Vec<&str> = errors.lines().collect();
    lines.sort();
    assert_eq!(
        lines[0],
        r#"{"task":"f","reason":"1 is odd","segment":{"n":1}}"#
    );
    assert_eq!(lines.len(), 5);
    assert_eq!(events.iter().filter(|e| e.starts_with("start")).count(), 1);
    // No batch is larger than batch_size.
    for e in events.iter().filter_map(|e| e.strip_prefix("batch ")) {
        assert!(e.parse::<usize>().unwrap() <= 3, "batch of {e}");
    }
    assert!(events.contains(&r#"exception 1 is odd on {"n":1}"#.to_owned()));
}

#[tokio::test]
async fn restart_reruns_before_task_start_and_still_reports_the_segment() {
    let (result, _, events, dir) = run_with(ExceptionAction::Restart, vec![2, 3, 4], 10).await;
    let report = result.unwrap();
    assert_eq!((report.written, report.rejected), (2, 1));
    assert_eq!(events.iter().filter(|e| *e == "start f").count(), 2);
    let errors = std::fs::read_to_string(dir.path().join("errors.jsonl")).unwrap();
    assert_eq!(
        errors,
        "{\"task\":\"f\",\"reason\":\"3 is odd (peer restarted)\",\"segment\":{\"n\":3}}\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_output_pushes_back_on_the_input() {
    let r = Registry::new();
    let tx = r.input_channel("in", 1);
    let mut rx = r.output_channel("out", 1);
    let job = JobBuilder::new()
        .edge("in", "f")
        .edge("f", "out")
        .task(
            TaskSpec::input("in", "sardonyx/channel")
                .param("channel", "in")
                .batch_size(1),
        )
        .task(TaskSpec::function("f", "sardonyx/identity").batch_size(1))
        .task(
            TaskSpec::output("out", "sardonyx/channel")
                .param("channel", "out")
                .batch_size(1),
        )
        .build();
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    let total = 10_000;
    let feeder = tokio::spawn(async move {
        for i in 0..total {
            tx.send(seg(i)).await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let options = RunOptions {
        errors_path: dir.path().join("errors.jsonl"),
        channel_capacity: 2,
        ..RunOptions::default()
    };
    let job_task = tokio::spawn(async move { run_job(&job, &r, options).await });
    // Nobody reads the output: the feeder must stall with only a few segments in flight.
    let stalled = tokio::time::timeout(Duration::from_millis(500), async {
        while sent.load(Ordering::SeqCst) < total as usize {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(stalled.is_err(), "the feeder was never held back");
    let in_flight = sent.load(Ordering::SeqCst);
    assert!(
        in_flight < 100,
        "{in_flight} segments accepted while the output was full"
    );
    // Draining the output lets everything through.
    let mut received = 0;
    while rx.recv().await.is_some() {
        received += 1;
    }
    feeder.await.unwrap();
    let report = job_task.await.unwrap().unwrap();
    assert_eq!((received, report.written), (total as usize, total as u64));
}

#[tokio::test]
async fn the_committed_position_of_a_drained_file_is_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let text: String = (0..250).map(|i| format!("{{\"n\":{i}}}\n")).collect();
    std::fs::write(&input, &text).unwrap();
    let job = JobBuilder::new()
        .edge("in", "out")
        .task(
            TaskSpec::input("in", "sardonyx/jsonl")
                .param("path", input.display().to_string())
                .batch_size(7),
        )
        .task(TaskSpec::output("out", "sardonyx/null"))
        .build();
    let options = RunOptions {
        errors_path: dir.path().join("errors.jsonl"),
        ..RunOptions::default()
    };
    let report = run_job(&job, &Registry::new(), options).await.unwrap();
    let committed = &report.committed[&("in".to_owned(), 0)];
    assert_eq!(committed.get(0), Some(text.len() as u64));
    assert_eq!(report.read, 250);
}
#[tokio::test]
async fn kill_stops_the_job_with_the_error() {
    let (result, _, _, _) = run_with(ExceptionAction::Kill, vec![2, 3, 4], 10).await;
    let err = result.unwrap_err();
    assert_eq!(err.to_string(), "task \"f\" killed the job: 3 is odd");
}

/// A state log that checks, at every append to the windowed slot's ledger, that every firing
/// synced so far was flushed: a batch's firings must be durable before the slot's next record
/// (recovery re-derives only the firings of the last record).
struct FlushCheckedLog {
    inner: Arc<dyn sardonyx_state_log::Ledgers>,
    slot_ledger_suffix: &'static str,
    unflushed: Arc<AtomicUsize>,
    violations: Arc<Mutex<Vec<u64>>>,
}

impl FlushCheckedLog {
    fn check(&self, ledger: &str) {
        if ledger.ends_with(self.slot_ledger_suffix) {
            let n = self.unflushed.load(Ordering::SeqCst);
            if n > 0 {
                self.violations.lock().unwrap().push(n as u64);
            }
        }
    }
}

impl sardonyx_state_log::Ledgers for FlushCheckedLog {
    fn append<'a>(
        &'a self,
        ledger: &'a str,
        request: sardonyx_state_log::RequestId,
        record: Vec<u8>,
    ) -> sardonyx_state_log::BoxFuture<'a, sardonyx_state_log::Result<u64>> {
        self.check(ledger);
        self.inner.append(ledger, request, record)
    }
    fn append_fenced<'a>(
        &'a self,
        ledger: &'a str,
        fence: u64,
        request: sardonyx_state_log::RequestId,
        record: Vec<u8>,
    ) -> sardonyx_state_log::BoxFuture<'a, sardonyx_state_log::Result<u64>> {
        self.check(ledger);
        self.inner.append_fenced(ledger, fence, request, record)
    }
    fn snapshot_fenced<'a>(
        &'a self,
        ledger: &'a str,
        fence: u64,
        covers: u64,
        bytes: Vec<u8>,
    ) -> sardonyx_state_log::BoxFuture<'a, sardonyx_state_log::Result<()>> {
        self.inner.snapshot_fenced(ledger, fence, covers, bytes)
    }
    fn read<'a>(
        &'a self,
        ledger: &'a str,
        from: u64,
    ) -> sardonyx_state_log::BoxFuture<'a, sardonyx_state_log::Result<sardonyx_state_log::LedgerRead>>
    {
        self.inner.read(ledger, from)
    }
    fn snapshot<'a>(
        &'a self,
        ledger: &'a str,
        covers: u64,
        bytes: Vec<u8>,
    ) -> sardonyx_state_log::BoxFuture<'a, sardonyx_state_log::Result<()>> {
        self.inner.snapshot(ledger, covers, bytes)
    }
    fn info<'a>(
        &'a self,
        ledger: &'a str,
    ) -> sardonyx_state_log::BoxFuture<'a, sardonyx_state_log::Result<sardonyx_state_log::LedgerInfo>>
    {
        self.inner.info(ledger)
    }
}

/// A sync that counts firings not yet flushed, and fails its `fail_at`-th firing (1-based; 0:
/// never), as a crash right after a batch was committed.
struct CountingSync {
    unflushed: Arc<AtomicUsize>,
    calls: usize,
    fail_at: usize,
}

impl sardonyx::registry::SyncSink for CountingSync {
    fn sync(&mut self, _firing: &sardonyx::Map) -> Result<(), String> {
        self.calls += 1;
        if self.calls == self.fail_at {
            return Err("the sync failed (a crash after the commit)".into());
        }
        self.unflushed.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), String> {
        self.unflushed.store(0, Ordering::SeqCst);
        Ok(())
    }
}

/// `in` (a `sardonyx/channel` input) → `count` (identity, deduplicated on `vote_id`, grouped by
/// `group_by` if given) → `out` (null), in batches of `batch`; `count` holds a global count
/// window `totals` whose trigger `trigger` fires every `every` segments into sync `sync`.
fn counting_job(
    id: &str,
    group_by: Option<&str>,
    batch: usize,
    (trigger, every): (&str, i64),
    sync: &str,
) -> sardonyx::Job {
    use sardonyx::job::{AggregationDef, TriggerDef, WindowDef};
    let mut count = TaskSpec::function("count", "sardonyx/identity")
        .uniqueness_key("vote_id")
        .batch_size(batch);
    if let Some(key) = group_by {
        count = count.group_by_key(key);
    }
    JobBuilder::new()
        .id(id)
        .edge("in", "count")
        .edge("count", "out")
        .task(
            TaskSpec::input("in", "sardonyx/channel")
                .param("channel", "in")
                .batch_size(batch),
        )
        .task(count)
        .task(TaskSpec::output("out", "sardonyx/null"))
        .window(WindowDef::global(
            "totals",
            "count",
            AggregationDef::count(),
        ))
        .trigger(TriggerDef::segment("totals", trigger, every).sync(sync))
        .build()
}

/// Registers sync `name`, each of whose sinks is made by `open`.
fn register_sync(
    registry: &mut Registry,
    name: &str,
    open: impl Fn() -> Box<dyn sardonyx::registry::SyncSink> + Send + Sync + 'static,
) {
    registry.register_sync(
        name,
        sardonyx::registry::SyncPlugin {
            check: Arc::new(|_| Vec::new()),
            open: Arc::new(move |_| Ok(open())),
        },
    );
}

/// The firings a restarted slot makes at once (the last batch's again, and `recovered` for what
/// changed since it last fired) are flushed before the slot logs anything more; so are every
/// batch's firings. The input is a channel (it does not resume), so the restarted run's first
/// batch is new votes and is logged right after the restart's own firings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firings_are_flushed_before_the_next_record_also_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let job = counting_job("flush-order", None, 10, ("every-7", 7), "test/counting");
    let log = Arc::new(
        sardonyx_state_log::EmbeddedLog::open(dir.path().join("log"))
            .await
            .unwrap(),
    );
    let unflushed = Arc::new(AtomicUsize::new(0));
    let violations = Arc::new(Mutex::new(Vec::new()));
    let run = |fail_at: usize, ids: std::ops::Range<i64>| {
        let mut registry = Registry::new();
        let u = unflushed.clone();
        register_sync(&mut registry, "test/counting", move || {
            Box::new(CountingSync {
                unflushed: u.clone(),
                calls: 0,
                fail_at,
            })
        });
        let tx = registry.input_channel("in", 16);
        let store = Arc::new(FlushCheckedLog {
            inner: log.clone(),
            slot_ledger_suffix: "/count/0",
            unflushed: unflushed.clone(),
            violations: violations.clone(),
        });
        let options = RunOptions {
            errors_path: dir.path().join("errors.jsonl"),
            state: Some(sardonyx::runtime::StateOptions {
                // One record per batch of 10, so the last record's firings are known.
                max_merged_batches: 1,
                ..sardonyx::runtime::StateOptions::new(store, dir.path().join("data"))
            }),
            ..RunOptions::default()
        };
        let job = job.clone();
        async move {
            let feeder = tokio::spawn(async move {
                for i in ids {
                    let mut s = Segment::new();
                    s.insert("vote_id", i);
                    if tx.send(s).await.is_err() {
                        break;
                    }
                }
            });
            let result = run_job(&job, &registry, options).await;
            feeder.await.unwrap();
            result
        }
    };
    // Run 1 stops at its 3rd firing (count 21), after the batch that made it (votes 21-30,
    // firing at 21 and 28) was committed.
    let err = run(3, 1..101).await.unwrap_err();
    assert!(err.to_string().contains("the sync failed"), "{err}");
    unflushed.store(0, Ordering::SeqCst);
    // Run 2 recovers: it syncs the last batch's firings (21, 28) again, fires `recovered` for
    // votes 29-30, then logs the batches of new votes.
    let report = run(0, 1001..1031).await.unwrap();
    assert_eq!(report.recoveries.len(), 1);
    assert_eq!(report.recoveries[0].pending_firings, 2);
    assert_eq!(*violations.lock().unwrap(), Vec::<u64>::new());
}

/// A sync that keeps the greatest `state` it was given (an accumulating count only grows).
struct MaxStateSync(Arc<AtomicUsize>);

impl sardonyx::registry::SyncSink for MaxStateSync {
    fn sync(&mut self, firing: &sardonyx::Map) -> Result<(), String> {
        if let Some(Value::Int(n)) = firing.get("state") {
            self.0.fetch_max(*n as usize, Ordering::SeqCst);
        }
        Ok(())
    }
    fn flush(&mut self) -> Result<(), String> {
        Ok(())
    }
}

/// Every id is delivered again 15 ids later, i.e. one or two batches of 10 later: while the
/// record holding it may still be in flight (its ids not in the dedup filter yet), or merged
/// into the same record. Each is counted once, whether records are pipelined and merged (the
/// default) or one per batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeliveries_in_the_next_batches_are_skipped_while_records_are_in_flight() {
    for max_merged_batches in [16, 1] {
        let dir = tempfile::tempdir().unwrap();
        let job = counting_job("redeliveries", None, 10, ("every-50", 50), "test/max");
        let max = Arc::new(AtomicUsize::new(0));
        let mut registry = Registry::new();
        let m = max.clone();
        register_sync(&mut registry, "test/max", move || {
            Box::new(MaxStateSync(m.clone()))
        });
        let tx = registry.input_channel("in", 64);
        let log = Arc::new(
            sardonyx_state_log::EmbeddedLog::open(dir.path().join("log"))
                .await
                .unwrap(),
        );
        let options = RunOptions {
            errors_path: dir.path().join("errors.jsonl"),
            state: Some(sardonyx::runtime::StateOptions {
                max_merged_batches,
                ..sardonyx::runtime::StateOptions::new(log, dir.path().join("data"))
            }),
            ..RunOptions::default()
        };
        let feeder = tokio::spawn(async move {
            let vote = |i: i64| {
                let mut s = Segment::new();
                s.insert("vote_id", i);
                s
            };
            for i in 0..615 {
                if i < 600 {
                    tx.send(vote(i)).await.unwrap();
                }
                if i >= 15 {
                    tx.send(vote(i - 15)).await.unwrap();
                }
            }
        });
        let report = run_job(&job, &registry, options).await.unwrap();
        feeder.await.unwrap();
        assert_eq!(
            report.duplicates, 600,
            "max_merged_batches {max_merged_batches}"
        );
        // 600 ids: the count trigger fires at every 50th, so the last firing holds 600.
        assert_eq!(
            max.load(Ordering::SeqCst),
            600,
            "max_merged_batches {max_merged_batches}"
        );
    }
}

/// A sync that keeps every firing it was given as (group, state, event), and fails its
/// `fail_at`-th firing (1-based; 0: never), as a crash right after a record was committed.
struct RecordingSync {
    seen: Arc<Mutex<Vec<(i64, i64, String)>>>,
    calls: usize,
    fail_at: usize,
}

impl sardonyx::registry::SyncSink for RecordingSync {
    fn sync(&mut self, firing: &sardonyx::Map) -> Result<(), String> {
        self.calls += 1;
        if self.calls == self.fail_at {
            return Err("the sync failed (a crash after the commit)".into());
        }
        let int = |k: &str| match firing.get(k) {
            Some(Value::Int(n)) => *n,
            other => panic!("{k} is {other:?}"),
        };
        let event = match firing.get("event") {
            Some(Value::Str(s)) => s.to_string(),
            other => panic!("event is {other:?}"),
        };
        self.seen
            .lock()
            .unwrap()
            .push((int("group"), int("state"), event));
        Ok(())
    }
    fn flush(&mut self) -> Result<(), String> {
        Ok(())
    }
}

/// Job completion with more open windows than one completion record holds: the final firings
/// go out in records of about `COMPLETION_FIRINGS`. A crash in the middle of them (the sync
/// fails during the second record's firings) loses nothing: the restarted slot syncs the last
/// record's firings again (`recovered`) and completes the job again, firing the rest
/// (`job_completed`), each group's count exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_completion_in_several_records_survives_a_crash_between_them() {
    use sardonyx::runtime::COMPLETION_FIRINGS;
    const GROUPS: i64 = 10_000;
    const VOTES: i64 = 25_000;
    let dir = tempfile::tempdir().unwrap();
    // The trigger's threshold is never reached: every group fires only at job completion.
    let job = counting_job(
        "many-groups",
        Some("g"),
        1000,
        ("big", 1_000_000),
        "test/recording",
    );
    let log: Arc<dyn sardonyx_state_log::Ledgers> = Arc::new(
        sardonyx_state_log::EmbeddedLog::open(dir.path().join("log"))
            .await
            .unwrap(),
    );
    let seen = Arc::new(Mutex::new(Vec::new()));
    let run = |fail_at: usize, ids: std::ops::Range<i64>| {
        let mut registry = Registry::new();
        let s = seen.clone();
        register_sync(&mut registry, "test/recording", move || {
            Box::new(RecordingSync {
                seen: s.clone(),
                calls: 0,
                fail_at,
            })
        });
        let tx = registry.input_channel("in", 16);
        let options = RunOptions {
            errors_path: dir.path().join("errors.jsonl"),
            state: Some(sardonyx::runtime::StateOptions::new(
                log.clone(),
                dir.path().join("data"),
            )),
            ..RunOptions::default()
        };
        let job = job.clone();
        async move {
            let feeder = tokio::spawn(async move {
                for i in ids {
                    let mut s = Segment::new();
                    s.insert("vote_id", i);
                    s.insert("g", i % GROUPS);
                    if tx.send(s).await.is_err() {
                        break;
                    }
                }
            });
            let result = run_job(&job, &registry, options).await;
            feeder.await.unwrap();
            result
        }
    };
    // Run 1 reads every vote; at completion it commits the first record of final firings, syncs
    // it, commits the second, and fails in the middle of syncing that one.
    let fail_at = COMPLETION_FIRINGS + 1000;
    let err = run(fail_at, 0..VOTES).await.unwrap_err();
    assert!(err.to_string().contains("the sync failed"), "{err}");
    let first_run: Vec<(i64, i64, String)> = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(first_run.len(), fail_at - 1);
    assert!(first_run.iter().all(|(_, _, e)| e == "job_completed"));
    // Run 2 has no new votes: it syncs the second record's firings again and fires the groups
    // the crash left; completion then has nothing left to fire.
    let report = run(0, 0..0).await.unwrap();
    assert_eq!(report.recoveries.len(), 1);
    assert_eq!(
        report.recoveries[0].pending_firings,
        COMPLETION_FIRINGS as u64
    );
    // 4096 synced again (`recovered`), then the 1808 never fired before, by the completion
    // of this run (recovery itself fires nothing new).
    let second_run = seen.lock().unwrap().clone();
    assert_eq!(
        second_run.len(),
        COMPLETION_FIRINGS + (GROUPS as usize - 2 * COMPLETION_FIRINGS)
    );
    assert!(second_run[..COMPLETION_FIRINGS]
        .iter()
        .all(|(_, _, e)| e == "recovered"));
    assert!(second_run[COMPLETION_FIRINGS..]
        .iter()
        .all(|(_, _, e)| e == "job_completed"));
    let synced_again: std::collections::BTreeSet<i64> = second_run[..COMPLETION_FIRINGS]
        .iter()
        .map(|f| f.0)
        .collect();
    let second_record: std::collections::BTreeSet<i64> = first_run[COMPLETION_FIRINGS..]
        .iter()
        .map(|f| f.0)
        .collect();
    assert!(second_record.is_subset(&synced_again));
    // Every group was synced, with its exact count, and none twice with different counts.
    let mut finals = std::collections::BTreeMap::new();
    for (g, n, _) in first_run.iter().chain(&second_run) {
        if let Some(old) = finals.insert(*g, *n) {
            assert_eq!(old, *n, "group {g} synced with two counts");
        }
    }
    assert_eq!(finals.len(), GROUPS as usize);
    for (g, n) in finals {
        let expected = VOTES / GROUPS + i64::from(g < VOTES % GROUPS);
        assert_eq!(n, expected, "group {g}");
    }
}
