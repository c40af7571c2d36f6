//! The main job (DESIGN §8): `sardonyx demo votes`.
//!
//! Generates a vote stream (`vote_id`, `voter_id`, `candidate`, `event_time`, about 1 % up to
//! five minutes out of order) and counts it with real windows: total votes per candidate
//! (global window, timer trigger), votes per candidate per minute (fixed window, watermark
//! trigger), an hourly view sliding every 20 minutes, and per-voter sessions with a 5-minute
//! gap. It prints the standings while it runs and the final tally.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::job::builder::JobBuilder;
use crate::job::{AggregationDef, Job, Span, TaskSpec, TriggerDef, WindowDef};
use crate::metrics::{
    LedgerTiming, MetricsServer, Observed, ObservedJob, ObservedLog, TimedLedgers,
};
use crate::plugin::{SyncPlugin, SyncSink};
use crate::runtime::{run_job_with_progress, Progress, RunOptions};
use crate::segment::{Map, Value};
use crate::Registry;

/// The first event time of generated votes (2023-11-14T22:13:20Z).
pub const START_MS: i64 = 1_700_000_000_000;

/// The candidates of generated votes.
pub const CANDIDATES: [&str; 12] = [
    "ada", "brook", "cyra", "dax", "elin", "fenn", "gale", "hollis", "ines", "juno", "kit", "lior",
];

/// A small deterministic generator (xorshift64*), so the demo needs no extra crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Writes `n` votes as JSON lines to `path`: event times spread evenly over four hours, 1 % of
/// them shifted back by up to five minutes, candidates skewed (Zipf-like) so there is a race.
pub fn generate_votes(path: &Path, n: u64, seed: u64) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut rng = Rng(seed.max(1));
    let weights: Vec<f64> = (0..CANDIDATES.len())
        .map(|i| 1.0 / (i as f64 + 1.0))
        .collect();
    let total: f64 = weights.iter().sum();
    let span_ms: i64 = 4 * 3_600_000;
    for i in 0..n {
        let mut t = START_MS + (i as i64 * span_ms) / n.max(1) as i64;
        if rng.below(100) == 0 {
            t -= 1 + rng.below(300_000) as i64;
        }
        let mut pick = (rng.next() >> 11) as f64 / (1_u64 << 53) as f64 * total;
        let mut c = 0;
        while c + 1 < CANDIDATES.len() && pick >= weights[c] {
            pick -= weights[c];
            c += 1;
        }
        writeln!(
            out,
            r#"{{"vote_id":{i},"voter_id":{},"candidate":"{}","event_time":{t}}}"#,
            rng.below(5_000),
            CANDIDATES[c]
        )?;
    }
    out.flush()
}

/// The vote-count job over `input` (the job of `examples/votes.json`): `sync` gives each
/// trigger its sync, given the trigger and the name of the file it would naturally write
/// (`totals.jsonl`, `per-minute.jsonl`, `hourly.jsonl`, `sessions.jsonl`).
pub fn votes_job(input: &str, sync: impl Fn(TriggerDef, &str) -> TriggerDef) -> Job {
    JobBuilder::new()
        .id("vote-count")
        .edge("read-votes", "count-votes")
        .edge("read-votes", "voter-sessions")
        .edge("count-votes", "done")
        .edge("voter-sessions", "done")
        .task(
            TaskSpec::input("read-votes", "sardonyx/jsonl")
                .param("path", input)
                .watermark("event_time", Span::minutes(6))
                .doc("Votes as JSON lines; at most five minutes out of order."),
        )
        .task(
            TaskSpec::function("count-votes", "sardonyx/identity")
                .group_by_key("candidate")
                .uniqueness_key("vote_id")
                .n_peers(2),
        )
        .task(
            TaskSpec::function("voter-sessions", "sardonyx/identity")
                .group_by_key("voter_id")
                .uniqueness_key("vote_id")
                .n_peers(2),
        )
        .task(TaskSpec::output("done", "sardonyx/null"))
        .window(WindowDef::global(
            "totals",
            "count-votes",
            AggregationDef::count(),
        ))
        .window(WindowDef::fixed(
            "per-minute",
            "count-votes",
            "event_time",
            Span::minutes(1),
            AggregationDef::count(),
        ))
        .window(WindowDef::sliding(
            "hourly",
            "count-votes",
            "event_time",
            Span::hours(1),
            Span::minutes(20),
            AggregationDef::count(),
        ))
        .window(WindowDef::session(
            "sessions",
            "voter-sessions",
            "event_time",
            Span::minutes(5),
            AggregationDef::count(),
        ))
        .trigger(sync(
            TriggerDef::timer("totals", "standings", Span::seconds(1)),
            "totals.jsonl",
        ))
        .trigger(sync(
            TriggerDef::watermark("per-minute", "minute-closed"),
            "per-minute.jsonl",
        ))
        .trigger(sync(
            TriggerDef::watermark("hourly", "hour-closed"),
            "hourly.jsonl",
        ))
        .trigger(sync(
            TriggerDef::watermark("sessions", "session-closed"),
            "sessions.jsonl",
        ))
        .build()
}

/// Collects the latest total per candidate from the totals window's firings.
struct Standings(Arc<Mutex<BTreeMap<String, i64>>>);

impl SyncSink for Standings {
    fn sync(&mut self, firing: &Map) -> Result<(), String> {
        let candidate = firing
            .get("group")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned();
        let count = firing.get("state").and_then(Value::as_i64).unwrap_or(0);
        self.0
            .lock()
            .expect("standings lock")
            .insert(candidate, count);
        Ok(())
    }
}

fn render(standings: &BTreeMap<String, i64>) -> String {
    let mut rows: Vec<(&String, &i64)> = standings.iter().collect();
    rows.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    rows.iter()
        .take(5)
        .map(|(c, n)| format!("{c} {n}"))
        .collect::<Vec<_>>()
        .join(" · ")
}

/// Runs the vote demo with `events` votes under `dir`; prints standings while it runs and the
/// final tally. With `metrics` (an address), serves the metrics and the dashboard there while
/// it runs, and afterwards until Ctrl-C when run on a terminal.
pub async fn votes(events: u64, dir: &Path, metrics: Option<&str>) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let input = dir.join("votes.jsonl");
    let standings = Arc::new(Mutex::new(BTreeMap::new()));
    let mut registry = Registry::new();
    let shared = standings.clone();
    registry.register_sync(
        "demo/standings",
        SyncPlugin {
            check: Arc::new(|_| Vec::new()),
            open: Arc::new(move |_| Ok(Box::new(Standings(shared.clone())) as Box<dyn SyncSink>)),
        },
    );
    let job = votes_job(&input.display().to_string(), |t, file| {
        if file == "totals.jsonl" {
            t.sync("demo/standings")
        } else {
            t.sync_jsonl(dir.join(file).display().to_string())
        }
    });
    let progress = Arc::new(Progress::default());
    // Exactly-once state on the embedded log, started afresh on every demo run.
    let state_dir = dir.join("state");
    if state_dir.exists() {
        std::fs::remove_dir_all(&state_dir)?;
    }
    let log = sardonyx_state_log::EmbeddedLog::open(state_dir.join("log")).await?;
    let timing = Arc::new(LedgerTiming::default());
    let store: Arc<dyn sardonyx_state_log::Ledgers> = match metrics {
        Some(_) => Arc::new(TimedLedgers::new(Arc::new(log.clone()), timing.clone())),
        None => Arc::new(log.clone()),
    };
    let options = RunOptions {
        errors_path: dir.join("errors.jsonl"),
        state: Some(crate::runtime::StateOptions::new(store, &state_dir)),
        ..RunOptions::default()
    };
    let server = match metrics {
        Some(addr) => {
            let observed = Observed {
                job: Some(ObservedJob::new(&job, "vote-count", progress.clone())),
                log: Some(ObservedLog {
                    name: "embedded".to_owned(),
                    timing: Some(timing),
                    node: Some(log.observer()),
                }),
                cluster: None,
            };
            Some(MetricsServer::start(addr, observed).await?)
        }
        None => None,
    };
    // After the dashboard's address is printed, so that it can be opened before the count.
    println!("generating {events} votes into {}", input.display());
    generate_votes(&input, events, 42)?;
    let started = Instant::now();
    let printer = {
        let standings = standings.clone();
        let progress = progress.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let s = standings.lock().expect("standings lock").clone();
                if !s.is_empty() {
                    println!(
                        "[{:>5.1}s] {} votes read · leading: {}",
                        started.elapsed().as_secs_f64(),
                        progress.read.load(std::sync::atomic::Ordering::Relaxed),
                        render(&s)
                    );
                }
            }
        })
    };
    let report = run_job_with_progress(&job, &registry, options, progress).await;
    printer.abort();
    let _ = log.close().await;
    let report = report?;
    let tally = standings.lock().expect("standings lock").clone();
    println!(
        "\nfinal tally after {} votes ({:.2?}):",
        report.read,
        started.elapsed()
    );
    let mut rows: Vec<_> = tally.iter().collect();
    rows.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (i, (c, n)) in rows.iter().enumerate() {
        println!("  {:>2}. {c:<8} {n:>8}", i + 1);
    }
    let counted: i64 = tally.values().sum();
    println!(
        "counted {counted} votes; {} window firings; {} late; {} rejected",
        report.fired, report.late, report.rejected
    );
    let (records, bytes, segments) = report.logged;
    println!(
        "state log: {records} records, {bytes} bytes ({:.1} bytes per segment), {} duplicates",
        bytes as f64 / segments.max(1) as f64,
        report.duplicates
    );
    println!(
        "per-minute, hourly and per-voter session counts: {}/{{per-minute,hourly,sessions}}.jsonl",
        dir.display()
    );
    if let Some(server) = server {
        // On a terminal the dashboard stays up to be looked at; piped (a script, CI) the demo
        // ends with the count, as it does without `--metrics`.
        use std::io::IsTerminal;
        if std::io::stdin().is_terminal() && std::io::stdout().is_terminal() {
            println!(
                "the dashboard stays up at http://{}/ until Ctrl-C",
                server.local_addr()
            );
            tokio::signal::ctrl_c().await?;
        }
        server.shutdown().await;
    }
    Ok(())
}
