//! Honest watermarks end to end (DESIGN §4): a slow peer is not an idle one, every partition an
//! input owns holds the watermark from the start, and idleness is declared by inputs only and
//! travels downstream as an explicit mark.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sardonyx::job::builder::JobBuilder;
use sardonyx::job::{
    AggregationDef, FlowCondition, FlowTo, PredicateExpr, Span, TaskSpec, TriggerDef,
    WatermarkSpec, WindowDef,
};
use sardonyx::plugin::{InputPlugin, InputReader};
use sardonyx::{run_job, Registry, RunOptions, Value};
use sardonyx_connectors::jsonl::JsonLinesSource;
use sardonyx_connectors::{ConnectorError, Position, Record, Source, SourceBatch};

/// Writes one `{"n", "t"}` line per `(n, t)`.
fn write_lines(path: &Path, rows: impl IntoIterator<Item = (i64, i64)>) {
    let text: String = rows
        .into_iter()
        .map(|(n, t)| format!("{{\"n\":{n},\"t\":{t}}}\n"))
        .collect();
    std::fs::write(path, text).unwrap();
}

/// A watermark on `t`, nothing out of order, and the given `idle_timeout`.
fn watermark_on_t(idle_timeout: Option<Span>) -> Option<WatermarkSpec> {
    Some(WatermarkSpec {
        key: "t".into(),
        max_out_of_order: Some(Span::millis(0)),
        idle_timeout,
    })
}

/// The 1-second windows counting segments on task `task`, fired by the watermark into the
/// jsonl sync at `sync`.
fn counted_per_second(job: JobBuilder, task: &str, sync: &Path) -> JobBuilder {
    job.window(WindowDef::fixed(
        "per-second",
        task,
        "t",
        Span::millis(1_000),
        AggregationDef::count(),
    ))
    .trigger(TriggerDef::watermark("per-second", "closed").sync_jsonl(sync.to_str().unwrap()))
}

/// The firings the jsonl sync wrote: (lower, upper, state, event), in order.
fn firings(sync: &Path) -> Vec<(i64, i64, i64, String)> {
    std::fs::read_to_string(sync)
        .unwrap()
        .lines()
        .map(|l| {
            let f: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                f["lower"].as_i64().unwrap(),
                f["upper"].as_i64().unwrap(),
                f["state"].as_i64().unwrap(),
                f["event"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Window `k` of one second, with `count` segments, fired by `event`.
fn window(k: i64, count: i64, event: &str) -> (i64, i64, i64, String) {
    (1_000 * k, 1_000 * k + 999, count, event.to_owned())
}

fn options(dir: &Path) -> RunOptions {
    RunOptions {
        errors_path: dir.join("errors.jsonl"),
        ..RunOptions::default()
    }
}

/// `in` → `fast` (identity) and `in` → `slow` (sleeps 300 ms per input batch, longer than the
/// input's `idle_timeout` of 100 ms), even `n` to `fast` and odd `n` to `slow`; both → `win`,
/// whose one-second windows fire on the watermark. In-order data: `slow` only lags, so it must
/// hold `win`'s watermark back rather than be taken for idle; no segment is late and every
/// window fires once, complete, on the watermark (the last at job completion). Every task
/// takes batches of 5 (one message at a time: each input batch sends 5 segments each way), so
/// that watermarks move between batches rather than a task taking everything, and the end,
/// in one. A timer trigger (every 20 ms) makes `win` look at its watermark while `slow`
/// sleeps, as a steady stream from elsewhere would, not only when a message arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_function_peer_holds_the_watermark_and_nothing_is_late() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let sync = dir.path().join("firings.jsonl");
    // 100 segments 100 ms apart: 10 windows of 10, read in batches of 10.
    write_lines(&input, (0..100).map(|n| (n, n * 100)));
    let mut source = TaskSpec::input("in", "sardonyx/jsonl")
        .param("path", input.to_str().unwrap())
        .batch_size(10);
    source.watermark = watermark_on_t(Some(Span::millis(100)));
    let job = JobBuilder::new()
        .edge("in", "fast")
        .edge("in", "slow")
        .edge("fast", "win")
        .edge("slow", "win")
        .edge("win", "out")
        .task(source)
        .task(TaskSpec::function("fast", "sardonyx/identity").batch_size(5))
        .task(TaskSpec::function("slow", "test/slow").batch_size(5))
        .task(
            TaskSpec::function("win", "sardonyx/identity")
                .deduplicate(false)
                .batch_size(5),
        )
        .task(TaskSpec::output("out", "sardonyx/null"))
        .flow(FlowCondition::new(
            "in",
            FlowTo::tasks(["fast"]),
            PredicateExpr::named("test/even"),
        ))
        .flow(FlowCondition::new(
            "in",
            FlowTo::tasks(["slow"]),
            PredicateExpr::Not(Box::new(PredicateExpr::named("test/even"))),
        ));
    let job = counted_per_second(job, "win", &sync)
        .trigger(
            TriggerDef::timer("per-second", "tick", Span::millis(20))
                .sync_jsonl(dir.path().join("ticks.jsonl").to_str().unwrap()),
        )
        .build();
    let mut registry = Registry::new();
    let n = |s: &sardonyx::Segment| s.get("n").and_then(Value::as_i64).unwrap();
    registry.register_predicate("test/even", move |s, _| n(s) % 2 == 0);
    // The first odd segment of each input batch of 10 (n = 1, 11, 21, ...) costs 300 ms.
    registry.register_function("test/slow", move |s, _| {
        if n(&s) % 10 == 1 {
            std::thread::sleep(Duration::from_millis(300));
        }
        Ok(vec![s])
    });

    let report = run_job(&job, &registry, options(dir.path())).await.unwrap();

    assert_eq!((report.read, report.late, report.rejected), (100, 0, 0));
    let mut expected: Vec<_> = (0..9).map(|k| window(k, 10, "watermark")).collect();
    expected.push(window(9, 10, "job_completed"));
    assert_eq!(firings(&sync), expected);
}

/// A JSON-lines input over several files, file `p` being partition `p`, read one after the
/// other (as a consumer may get one Kafka partition's backlog before another's). `declared`:
/// the partitions it reports to the engine ([`Source::partitions`]).
struct FilesAsPartitions {
    files: Vec<JsonLinesSource>,
    reading: usize,
    declared: Vec<u32>,
}

impl Source for FilesAsPartitions {
    fn poll_batch(&mut self, max: usize, timeout: Duration) -> Result<SourceBatch, ConnectorError> {
        while let Some(file) = self.files.get_mut(self.reading) {
            match file.poll_batch(max, timeout)? {
                SourceBatch::Records(records) => {
                    let partition = self.reading as u32;
                    let records = records
                        .into_iter()
                        .map(|r| Record {
                            position: Position {
                                partition,
                                ..r.position
                            },
                            ..r
                        })
                        .collect();
                    return Ok(SourceBatch::Records(records));
                }
                SourceBatch::Idle => return Ok(SourceBatch::Idle),
                SourceBatch::Done => self.reading += 1,
            }
        }
        Ok(SourceBatch::Done)
    }

    fn seek(&mut self, position: Position) -> Result<(), ConnectorError> {
        self.files[position.partition as usize].seek(Position {
            partition: 0,
            ..position
        })
    }

    fn partitions(&self) -> Vec<u32> {
        self.declared.clone()
    }
}

/// Registers input plugin `test/files` reading `files` as partitions, declaring `declared`.
fn register_files(registry: &mut Registry, files: Vec<PathBuf>, declared: Vec<u32>) {
    registry.register_input(
        "test/files",
        InputPlugin {
            check: Arc::new(|_| Vec::new()),
            open: Arc::new(move |_| {
                let files = files
                    .iter()
                    .map(JsonLinesSource::open)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| e.to_string())?;
                Ok(InputReader::Records(Box::new(FilesAsPartitions {
                    files,
                    reading: 0,
                    declared: declared.clone(),
                })))
            }),
        },
    );
}

/// Partition 0 holds 100 segments at t = 0, 100, …, 9900 and partition 1 another 100 at
/// t = 50, 150, …, 9950; partition 1 produces nothing until partition 0 is read to its end.
/// `in` → `win` (one-second windows fired by the watermark, batches of 10: one input batch at
/// a time) → `out`. Returns the report and the firings.
async fn run_two_partitions(
    declared: Vec<u32>,
) -> (sardonyx::JobReport, Vec<(i64, i64, i64, String)>) {
    let dir = tempfile::tempdir().unwrap();
    let (p0, p1) = (dir.path().join("p0.jsonl"), dir.path().join("p1.jsonl"));
    write_lines(&p0, (0..100).map(|n| (n, n * 100)));
    write_lines(&p1, (0..100).map(|n| (100 + n, n * 100 + 50)));
    let sync = dir.path().join("firings.jsonl");
    let mut source = TaskSpec::input("in", "test/files").batch_size(10);
    source.watermark = watermark_on_t(None);
    let job = JobBuilder::new()
        .edge("in", "win")
        .edge("win", "out")
        .task(source)
        .task(
            TaskSpec::function("win", "sardonyx/identity")
                .deduplicate(false)
                .batch_size(10),
        )
        .task(TaskSpec::output("out", "sardonyx/null"));
    let job = counted_per_second(job, "win", &sync).build();
    let mut registry = Registry::new();
    register_files(&mut registry, vec![p0, p1], declared);
    let report = run_job(&job, &registry, options(dir.path())).await.unwrap();
    (report, firings(&sync))
}

/// Partition 1 has not produced a record while partition 0's 100 are read, yet it holds the
/// watermark from the start: its first records are not late, and every window fires once,
/// with both partitions' segments, at job completion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_that_has_not_produced_yet_holds_the_watermark() {
    let (report, fired) = run_two_partitions(vec![0, 1]).await;
    assert_eq!((report.read, report.late, report.rejected), (200, 0, 0));
    let mut expected: Vec<_> = (0..9).map(|k| window(k, 20, "watermark")).collect();
    expected.push(window(9, 20, "job_completed"));
    assert_eq!(fired, expected);
}

/// What registering the partitions prevents: a source that does not tell of partition 1 lets
/// partition 0 take the watermark to 9900 alone, and partition 1's first 90 records (t < 9000,
/// in windows already closed) are late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unregistered_partition_comes_late() {
    let (report, fired) = run_two_partitions(vec![0]).await;
    assert_eq!((report.read, report.late, report.rejected), (200, 90, 90));
    let mut expected: Vec<_> = (0..9).map(|k| window(k, 10, "watermark")).collect();
    expected.push(window(9, 20, "job_completed"));
    assert_eq!(fired, expected);
}

/// Idleness is declared by an input and travels as a mark: `quiet` (a channel input with an
/// `idle_timeout` of 2 s) sends one segment and then nothing for a while, staying open; `busy`
/// goes on. `quiet` → `relay` (a function peer: it never infers idleness, it passes its
/// upstream's on) → `win`, and `busy` → `win`. Until `quiet` declares itself idle it holds
/// `win`'s watermark back; once idle, `busy` alone moves it and the windows `busy` closed fire.
/// When `quiet` sends again it holds the watermark once more, so its next segment is not late.
/// A second trigger on the window fires on every segment, to see when `win` has taken one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_input_says_so_downstream_and_data_makes_it_hold_again() {
    let dir = tempfile::tempdir().unwrap();
    let closed = dir.path().join("closed.jsonl");
    let taken = dir.path().join("taken.jsonl");
    let idle_timeout = Duration::from_secs(2);
    let mut quiet = TaskSpec::input("quiet", "sardonyx/channel")
        .param("channel", "quiet")
        .batch_size(1);
    quiet.watermark = watermark_on_t(Some(Span::millis(idle_timeout.as_millis() as i64)));
    let mut busy = TaskSpec::input("busy", "sardonyx/channel")
        .param("channel", "busy")
        .batch_size(1);
    busy.watermark = watermark_on_t(None);
    let job = JobBuilder::new()
        .edge("quiet", "relay")
        .edge("relay", "win")
        .edge("busy", "win")
        .edge("win", "out")
        .task(quiet)
        .task(busy)
        .task(TaskSpec::function("relay", "sardonyx/identity"))
        .task(TaskSpec::function("win", "sardonyx/identity").deduplicate(false))
        .task(TaskSpec::output("out", "sardonyx/null"))
        .trigger(TriggerDef::segment("per-second", "taken", 1).sync_jsonl(taken.to_str().unwrap()));
    let job = counted_per_second(job, "win", &closed).build();
    let registry = Registry::new();
    let quiet_tx = registry.input_channel("quiet", 16);
    let busy_tx = registry.input_channel("busy", 16);
    let segment = |n: i64, t: i64| {
        let mut s = sardonyx::Segment::new();
        s.insert("n", n);
        s.insert("t", t);
        s
    };
    let job_dir = dir.path().to_path_buf();
    let run = tokio::spawn(async move { run_job(&job, &registry, options(&job_dir)).await });

    let quiet_since = tokio::time::Instant::now();
    quiet_tx.send(segment(0, 500)).await.unwrap();
    for (n, t) in [(1, 100), (2, 1_200), (3, 2_500)] {
        busy_tx.send(segment(n, t)).await.unwrap();
    }
    // Windows 0 and 1 ([0, 999] and [1000, 1999]) close on `busy`'s 2500 alone, once `quiet`
    // has declared itself idle, and not before.
    wait_for_lines(&closed, 2).await;
    assert!(quiet_since.elapsed() >= idle_timeout);
    assert_eq!(
        firings(&closed),
        vec![window(0, 2, "watermark"), window(1, 1, "watermark")]
    );
    // `quiet` wakes at 2600: once `win` has taken that segment, `quiet` holds its watermark
    // again, so `busy` moving to 5500 does not close window 2 ([2000, 2999]) ...
    quiet_tx.send(segment(4, 2_600)).await.unwrap();
    wait_for_lines(&taken, 5).await;
    busy_tx.send(segment(5, 5_500)).await.unwrap();
    wait_for_lines(&taken, 6).await;
    // ... and `quiet`'s 2700 still counts in it.
    quiet_tx.send(segment(6, 2_700)).await.unwrap();
    drop((quiet_tx, busy_tx));
    let report = run.await.unwrap().unwrap();
    assert_eq!((report.read, report.late, report.rejected), (7, 0, 0));
    // Whichever input finishes first, windows 2 and 5 fire last, complete.
    let fired: Vec<_> = firings(&closed)
        .into_iter()
        .map(|(lower, upper, state, _)| (lower, upper, state))
        .collect();
    assert_eq!(
        fired,
        vec![
            (0, 999, 2),
            (1_000, 1_999, 1),
            (2_000, 2_999, 3),
            (5_000, 5_999, 1)
        ]
    );
}

/// Waits (up to 20 s) until the jsonl file at `path` has at least `n` lines.
async fn wait_for_lines(path: &Path, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let lines = std::fs::read_to_string(path).map_or(0, |t| t.lines().count());
        if lines >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} has {lines} lines, not {n}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
