//! The local runtime end to end: batching, lifecycles, backpressure, committed positions.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sardonyx::job::builder::JobBuilder;
use sardonyx::job::TaskSpec;
use sardonyx::lifecycle::{ExceptionAction, Lifecycle};
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

/// `restart` restarts the job's peers from the state log; a run without one cannot, and says so
/// (with a state log: `a_lifecycle_restart_resumes_from_the_committed_positions` below).
#[tokio::test]
async fn restart_without_a_state_log_fails_with_the_cause() {
    let (result, _, events, _dir) = run_with(ExceptionAction::Restart, vec![2, 3, 4], 10).await;
    assert_eq!(
        result.unwrap_err().to_string(),
        "task \"f\": a lifecycle asked to restart the peer after: 3 is odd; restarting needs a \
         state log, and this run keeps state in memory"
    );
    assert_eq!(events.iter().filter(|e| *e == "start f").count(), 1);
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

impl sardonyx::plugin::SyncSink for CountingSync {
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
    open: impl Fn() -> Box<dyn sardonyx::plugin::SyncSink> + Send + Sync + 'static,
) {
    registry.register_sync(
        name,
        sardonyx::plugin::SyncPlugin {
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

impl sardonyx::plugin::SyncSink for MaxStateSync {
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

impl sardonyx::plugin::SyncSink for RecordingSync {
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

// Every key acts or is refused; a stopped job resumes where it stopped (issue 17).

use sardonyx::job::{FluxPolicy, LifecycleDef};
use std::collections::BTreeSet;

/// `n` votes (`vote_id` 0..n), one per line, in `dir/votes.jsonl`.
fn vote_file(dir: &std::path::Path, n: i64) -> (std::path::PathBuf, String) {
    let path = dir.join("votes.jsonl");
    let text: String = (0..n).map(|i| format!("{{\"vote_id\":{i}}}\n")).collect();
    std::fs::write(&path, &text).unwrap();
    (path, text)
}

/// `in` (jsonl, batches of 10) → `count` (function `function`, deduplicated on `vote_id`, a
/// global count window whose trigger fires every 50 segments into `test/firings`) → `out`
/// (output plugin `test/ids`).
fn file_counting_job(input: &std::path::Path, function: &str) -> sardonyx::Job {
    use sardonyx::job::{AggregationDef, TriggerDef, WindowDef};
    JobBuilder::new()
        .id("file-count")
        .edge("in", "count")
        .edge("count", "out")
        .task(
            TaskSpec::input("in", "sardonyx/jsonl")
                .param("path", input.display().to_string())
                .batch_size(10),
        )
        .task(
            TaskSpec::function("count", function)
                .uniqueness_key("vote_id")
                .batch_size(10),
        )
        .task(TaskSpec::output("out", "test/ids").batch_size(10))
        .window(WindowDef::global(
            "totals",
            "count",
            AggregationDef::count(),
        ))
        .trigger(TriggerDef::segment("totals", "every-50", 50).sync("test/firings"))
        .build()
}

/// The `(event, state)` of every firing synced to `test/firings`.
type Firings = Arc<Mutex<Vec<(String, i64)>>>;

struct EventSync(Firings);

impl sardonyx::plugin::SyncSink for EventSync {
    fn sync(&mut self, firing: &sardonyx::Map) -> Result<(), String> {
        let event = firing.get("event").and_then(Value::as_str).unwrap_or("");
        let state = firing.get("state").and_then(Value::as_i64).unwrap_or(-1);
        self.0.lock().unwrap().push((event.to_owned(), state));
        Ok(())
    }
    fn flush(&mut self) -> Result<(), String> {
        Ok(())
    }
}

fn register_firings(r: &mut Registry) -> Firings {
    let firings = Firings::default();
    let f = firings.clone();
    register_sync(r, "test/firings", move || Box::new(EventSync(f.clone())));
    firings
}

/// The final count: the greatest state synced (the count accumulates).
fn final_count(firings: &Firings) -> i64 {
    firings
        .lock()
        .unwrap()
        .iter()
        .map(|(_, s)| *s)
        .max()
        .unwrap_or(0)
}

fn events(firings: &Firings, event: &str) -> usize {
    firings
        .lock()
        .unwrap()
        .iter()
        .filter(|(e, _)| e == event)
        .count()
}

/// The output `test/ids`: records the `vote_id`s written; the writes (numbered from 1 over
/// every sink it opened) for which `fail` holds fail, as a sink going away.
#[derive(Clone)]
struct IdsOutput {
    ids: Arc<Mutex<BTreeSet<i64>>>,
    writes: Arc<AtomicUsize>,
    opened: Arc<AtomicUsize>,
    fail: Arc<dyn Fn(usize) -> bool + Send + Sync>,
}

impl IdsOutput {
    fn register(r: &mut Registry, fail: impl Fn(usize) -> bool + Send + Sync + 'static) -> Self {
        let out = IdsOutput {
            ids: Arc::default(),
            writes: Arc::default(),
            opened: Arc::default(),
            fail: Arc::new(fail),
        };
        let o = out.clone();
        r.register_output(
            "test/ids",
            sardonyx::plugin::OutputPlugin {
                check: Arc::new(|_| Vec::new()),
                open: Arc::new(move |_| {
                    o.opened.fetch_add(1, Ordering::SeqCst);
                    Ok(Box::new(IdsSink(o.clone())) as Box<dyn sardonyx::plugin::SegmentSink>)
                }),
            },
        );
        out
    }

    fn ids(&self) -> BTreeSet<i64> {
        self.ids.lock().unwrap().clone()
    }
}

struct IdsSink(IdsOutput);

impl sardonyx::plugin::SegmentSink for IdsSink {
    fn write(&mut self, segments: &[Segment]) -> Result<(), sardonyx_connectors::ConnectorError> {
        let n = self.0.writes.fetch_add(1, Ordering::SeqCst) + 1;
        if (self.0.fail)(n) {
            return Err(sardonyx_connectors::ConnectorError::Fatal {
                context: "writing".into(),
                message: "the sink is down".into(),
            });
        }
        let ids = segments
            .iter()
            .filter_map(|s| s.get("vote_id").and_then(Value::as_i64));
        self.0.ids.lock().unwrap().extend(ids);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), sardonyx_connectors::ConnectorError> {
        Ok(())
    }
}

fn state_options(log: &sardonyx_state_log::EmbeddedLog, dir: &std::path::Path) -> RunOptions {
    RunOptions {
        errors_path: dir.join("errors.jsonl"),
        state: Some(sardonyx::runtime::StateOptions::new(
            Arc::new(log.clone()),
            dir.join("data"),
        )),
        ..RunOptions::default()
    }
}

fn set_flux_policy(job: &mut sardonyx::Job, task: &str, policy: FluxPolicy) {
    let t = job.catalog.iter_mut().find(|t| t.name == task).unwrap();
    t.flux_policy = Some(policy);
}

async fn open_log(dir: &std::path::Path) -> sardonyx_state_log::EmbeddedLog {
    sardonyx_state_log::EmbeddedLog::open(dir.join("log"))
        .await
        .unwrap()
}

/// The output's sink fails once (its second write): with `flux_policy: recover` the job's peers restart from the
/// committed positions; what the failed attempt had counted but not committed is read again
/// and skipped by the dedup filter, so every vote is counted once and written at least once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flux_policy_recover_restarts_the_peers_and_counts_every_vote_once() {
    let dir = tempfile::tempdir().unwrap();
    let (input, _) = vote_file(dir.path(), 2003);
    let mut job = file_counting_job(&input, "sardonyx/identity");
    set_flux_policy(&mut job, "out", FluxPolicy::Recover);
    let mut r = Registry::new();
    let firings = register_firings(&mut r);
    let out = IdsOutput::register(&mut r, |n| n == 2);
    let log = open_log(dir.path()).await;
    let report = run_job(&job, &r, state_options(&log, dir.path()))
        .await
        .unwrap();
    assert_eq!(report.restarts, 1);
    assert_eq!(out.opened.load(Ordering::SeqCst), 2);
    assert_eq!(final_count(&firings), 2003);
    assert_eq!(events(&firings, "job_completed"), 1);
    assert_eq!(out.ids(), (0..2003).collect::<BTreeSet<_>>());
    // The failed write's segments were counted before they reached the sink.
    assert!(report.duplicates >= 1, "{report:?}");
    // Read again: what was counted (skipped now), and what was in flight behind the failure.
    assert!(report.read >= 2003 + report.duplicates, "{report:?}");
    assert!(!report.stopped);
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flux_policy_recover_gives_up_after_max_restarts_with_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let (input, _) = vote_file(dir.path(), 50);
    let mut job = file_counting_job(&input, "sardonyx/identity");
    set_flux_policy(&mut job, "out", FluxPolicy::Recover);
    let mut r = Registry::new();
    register_firings(&mut r);
    let out = IdsOutput::register(&mut r, |_| true);
    let log = open_log(dir.path()).await;
    let options = RunOptions {
        max_restarts: 2,
        ..state_options(&log, dir.path())
    };
    let err = run_job(&job, &r, options).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "task \"out\" failed again after 2 restarts: task \"out\": writing: the sink is down"
    );
    assert_eq!(out.opened.load(Ordering::SeqCst), 3);
    log.close().await.unwrap();
}

/// Without `flux_policy` (or with `kill`), a lost peer fails the job with the cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flux_policy_kill_fails_the_job_with_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let (input, _) = vote_file(dir.path(), 50);
    let mut job = file_counting_job(&input, "sardonyx/identity");
    set_flux_policy(&mut job, "out", FluxPolicy::Kill);
    let mut r = Registry::new();
    register_firings(&mut r);
    let out = IdsOutput::register(&mut r, |n| n == 2);
    let log = open_log(dir.path()).await;
    let err = run_job(&job, &r, state_options(&log, dir.path()))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "task \"out\": writing: the sink is down");
    assert_eq!(out.opened.load(Ordering::SeqCst), 1);
    log.close().await.unwrap();
}

#[tokio::test]
async fn flux_policy_recover_without_a_state_log_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (input, _) = vote_file(dir.path(), 5);
    let mut job = file_counting_job(&input, "sardonyx/identity");
    set_flux_policy(&mut job, "out", FluxPolicy::Recover);
    let mut r = Registry::new();
    register_firings(&mut r);
    let out = IdsOutput::register(&mut r, |_| false);
    let options = RunOptions {
        errors_path: dir.path().join("errors.jsonl"),
        ..RunOptions::default()
    };
    let err = run_job(&job, &r, options).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "1 problem in the job:\n  - task \"out\", field flux_policy: recover restarts the \
         job's peers from the state log, and this run keeps no state (in memory): run it with \
         a state log, or use \"kill\""
    );
    assert_eq!(out.opened.load(Ordering::SeqCst), 0);
}

#[test]
fn max_peers_is_refused_outside_a_cluster_and_flux_policy_continue_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let (input, _) = vote_file(dir.path(), 1);
    let mut job = file_counting_job(&input, "sardonyx/identity");
    set_flux_policy(&mut job, "count", FluxPolicy::Continue);
    let count = job.catalog.iter_mut().find(|t| t.name == "count").unwrap();
    count.min_peers = Some(1);
    count.max_peers = Some(4);
    let mut r = Registry::new();
    register_firings(&mut r);
    IdsOutput::register(&mut r, |_| false);
    let err = job.validate(&r).unwrap_err();
    assert_eq!(
        err.messages(),
        [
            "task \"count\", field max_peers: max_peers (4) acts only in a cluster: peers are \
             added up to it by processes joining one (`sardonyx submit`), which `sardonyx run` \
             does not do; give n_peers or min_peers",
            "task \"count\", field flux_policy: \"continue\" is not supported yet: it needs \
             other processes to take over a lost peer's keys (the cluster runtime); in one \
             process use \"recover\" (restart the job's peers from the state log) or \"kill\"",
        ]
    );
    // For a cluster, max_peers acts (joining processes add slots up to it).
    let err = job.validate_for_cluster(&r).unwrap_err();
    assert_eq!(err.messages().len(), 1);
    assert!(err.messages()[0].contains("field flux_policy"));
}

/// A registry whose function `test/cursed-57` fails on vote 57 while `curses` is above 0 (each
/// failure uses one up), with a lifecycle on `count` that answers `restart` and counts the
/// peer's starts.
fn cursed_registry(curses: usize) -> (Registry, Firings, IdsOutput, Arc<AtomicUsize>) {
    let mut r = Registry::new();
    let curses = Arc::new(AtomicUsize::new(curses));
    r.register_function("test/cursed-57", move |s, _| {
        let cursed = s.get("vote_id").and_then(Value::as_i64) == Some(57)
            && curses
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| c.checked_sub(1))
                .is_ok();
        if cursed {
            return Err("57 is cursed".to_owned());
        }
        Ok(vec![s])
    });
    let starts = Arc::new(AtomicUsize::new(0));
    let st = starts.clone();
    r.register_lifecycle(
        "test/restart",
        Lifecycle {
            before_task_start: Some(Arc::new(move |_| {
                st.fetch_add(1, Ordering::SeqCst);
            })),
            handle_exception: Some(Arc::new(|_, _, _| ExceptionAction::Restart)),
            ..Lifecycle::default()
        },
    );
    let firings = register_firings(&mut r);
    let out = IdsOutput::register(&mut r, |_| false);
    (r, firings, out, starts)
}

fn cursed_job(input: &std::path::Path) -> sardonyx::Job {
    let mut job = file_counting_job(input, "test/cursed-57");
    job.lifecycles.push(LifecycleDef {
        task: "count".into(),
        calls: "test/restart".into(),
        doc: None,
    });
    job
}

/// `handle_exception` → `restart`: the peers restart from the committed positions (the failing
/// segment is read again, not sent to the error output), `before_task_start` runs again, and
/// every vote is counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lifecycle_restart_resumes_from_the_committed_positions() {
    let dir = tempfile::tempdir().unwrap();
    let (input, _) = vote_file(dir.path(), 203);
    let (r, firings, out, starts) = cursed_registry(1);
    let log = open_log(dir.path()).await;
    let report = run_job(&cursed_job(&input), &r, state_options(&log, dir.path()))
        .await
        .unwrap();
    assert_eq!((report.restarts, report.rejected), (1, 0));
    assert_eq!(starts.load(Ordering::SeqCst), 2);
    assert_eq!(final_count(&firings), 203);
    assert_eq!(out.ids(), (0..203).collect::<BTreeSet<_>>());
    assert!(!dir.path().join("errors.jsonl").exists());
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lifecycle_restart_gives_up_after_max_restarts_with_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let (input, _) = vote_file(dir.path(), 100);
    let (r, _, _, starts) = cursed_registry(usize::MAX);
    let log = open_log(dir.path()).await;
    let err = run_job(&cursed_job(&input), &r, state_options(&log, dir.path()))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "task \"count\" failed again after 3 restarts: task \"count\": a lifecycle restarted \
         the peer after: 57 is cursed"
    );
    assert_eq!(starts.load(Ordering::SeqCst), 4);
    log.close().await.unwrap();
}

/// A job stopped through `RunOptions::stop` (here by its own function, at vote 20) processes
/// everything it read, commits it, and does not fire as at job completion; run again, it
/// resumes exactly where it stopped: nothing read twice, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_job_commits_what_it_read_and_resumes_exactly_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let (input, text) = vote_file(dir.path(), 2003);
    let job = file_counting_job(&input, "test/stop-at-20");
    let log = open_log(dir.path()).await;
    let run = || {
        let options = RunOptions {
            // Little read-ahead: the input sees the stop long before the end of the file.
            channel_capacity: 1,
            ..state_options(&log, dir.path())
        };
        let mut r = Registry::new();
        let stop = options.stop.clone();
        r.register_function("test/stop-at-20", move |s, _| {
            if s.get("vote_id").and_then(Value::as_i64) == Some(20) {
                stop.cancel();
            }
            Ok(vec![s])
        });
        let firings = register_firings(&mut r);
        let out = IdsOutput::register(&mut r, |_| false);
        (r, options, firings, out)
    };

    let (r, options, firings, out) = run();
    let first = run_job(&job, &r, options).await.unwrap();
    assert!(first.stopped);
    assert!(first.read >= 30 && first.read < 1000, "{first:?}");
    assert_eq!(events(&firings, "job_completed"), 0);
    // Everything read was processed and committed: the position is the end of its last line.
    assert_eq!(out.ids(), (0..first.read as i64).collect::<BTreeSet<_>>());
    let end_of_read: usize = text
        .lines()
        .take(first.read as usize)
        .map(|l| l.len() + 1)
        .sum();
    assert_eq!(
        first.committed[&("in".to_owned(), 0)].get(0),
        Some(end_of_read as u64)
    );

    let (r, options, firings, out) = run();
    let second = run_job(&job, &r, options).await.unwrap();
    assert!(!second.stopped);
    assert_eq!((second.read, second.duplicates), (2003 - first.read, 0));
    assert_eq!(
        out.ids(),
        (first.read as i64..2003).collect::<BTreeSet<_>>()
    );
    assert_eq!(events(&firings, "job_completed"), 1);
    assert_eq!(final_count(&firings), 2003);
    log.close().await.unwrap();
}

/// A segment that matches none of its task's flow conditions is counted; with
/// `unmatched: "error"` it also goes to the error output. A match whose `to` is `"none"` is a
/// choice, not unmatched.
#[tokio::test]
async fn unmatched_segments_are_counted_and_go_to_the_error_output_when_asked() {
    use sardonyx::job::{FlowCondition, FlowTo, PredicateExpr, Unmatched};
    let run = |unmatched: Option<Unmatched>| async move {
        let mut r = Registry::new();
        r.register_predicate("test/even", |s, _| {
            s.get("n")
                .and_then(Value::as_i64)
                .is_some_and(|n| n % 2 == 0)
        });
        r.register_predicate("test/five", |s, _| {
            s.get("n").and_then(Value::as_i64) == Some(5)
        });
        let tx = r.input_channel("in", 16);
        let mut rx = r.output_channel("out", 64);
        let mut builder = JobBuilder::new()
            .edge("in", "f")
            .edge("f", "out")
            .task(TaskSpec::input("in", "sardonyx/channel").param("channel", "in"))
            .task(TaskSpec::function("f", "sardonyx/identity"))
            .task(TaskSpec::output("out", "sardonyx/channel").param("channel", "out"))
            .flow(FlowCondition::new(
                "f",
                FlowTo::tasks(["out"]),
                PredicateExpr::named("test/even"),
            ))
            .flow(FlowCondition::new(
                "f",
                FlowTo::None,
                PredicateExpr::named("test/five"),
            ));
        if let Some(u) = unmatched {
            builder = builder.unmatched(u);
        }
        let dir = tempfile::tempdir().unwrap();
        let options = RunOptions {
            errors_path: dir.path().join("errors.jsonl"),
            ..RunOptions::default()
        };
        for i in 0..10 {
            tx.send(seg(i)).await.unwrap();
        }
        drop(tx);
        let report = run_job(&builder.build(), &r, options).await.unwrap();
        let mut written = 0;
        while rx.try_recv().is_ok() {
            written += 1;
        }
        let errors = std::fs::read_to_string(dir.path().join("errors.jsonl")).unwrap_or_default();
        (report, written, errors)
    };
    let (report, written, errors) = run(None).await;
    assert_eq!((report.unmatched, report.rejected, written), (4, 0, 5));
    assert_eq!(errors, "");
    let (report, written, errors) = run(Some(Unmatched::Error)).await;
    assert_eq!((report.unmatched, report.rejected, written), (4, 4, 5));
    let mut lines: Vec<&str> = errors.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        [1, 3, 7, 9].map(|n| format!(
            "{{\"task\":\"f\",\"reason\":\"matched none of the flow conditions of task \
             \\\"f\\\"\",\"segment\":{{\"n\":{n}}}}}"
        ))
    );
}
