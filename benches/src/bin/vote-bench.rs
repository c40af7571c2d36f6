//! `vote-bench`: the vote workload of `../shared/bench-peers` through the real engine.
//!
//! `vote-bench run --input votes.jsonl` runs every query (Q1–Q4) in every state mode
//! (`memory`: no state log; `embedded`: exactly-once on the embedded log, fsync on; `cluster`:
//! exactly-once on a 3-node log cluster on loopback) from every source (`file`: the JSON-lines
//! file through `sardonyx/jsonl`; `segments`: segments built in memory beforehand and handed
//! over through `sardonyx/channel`). Each run is a fresh child process (`vote-bench once`), so
//! peak RSS (`VmHWM`) and allocator state belong to that run alone. The parent computes the
//! exact answers with plain `BTreeMap`s, checks every run's answer against them, and refuses
//! to print a figure for a wrong answer (exit code 1).
//!
//! `vote-bench recovery --input votes.jsonl --events 1000000` measures recovery after a kill -9:
//! the query's job runs as a real `sardonyx run` process (exactly-once on the embedded log),
//! is killed with SIGKILL after N events and restarted on the same data directory, with and
//! without compaction; see `sardonyx_benches::recovery` for what is timed.
//! `vote-bench sardonyx ARGS…` is the engine's own command line (`sardonyx::cli`), so
//! `recovery` needs no separately built binary.
//!
//! Generate the workload with
//! `python3 ../shared/bench-peers/gen_votes.py /tmp/votes_1m.jsonl -n 1000000 --seed 42 --vote-id`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use sardonyx::plugin::{SyncPlugin, SyncSink};
use sardonyx::runtime::{run_job_with_progress, Progress, StateOptions};
use sardonyx::{Map, Registry, RunOptions, Segment, Value};
use sardonyx_benches::{
    check, proc_status_kib, quantile, vote_job, Answer, Query, Reference, Source,
};
use serde::{Deserialize, Serialize};

#[derive(Parser)]
#[command(
    version,
    about = "The vote workload through the real Sardonyx engine, checked against a reference"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run queries × modes × sources, each in a fresh child process; check and tabulate.
    Run(RunArgs),
    /// Run one query once in this process and write its answer as canonical CSV
    /// (`OUT/<query>.csv`, the `../shared/bench-peers` format); prints one JSON line of figures.
    Once(OnceArgs),
    /// Recovery time: run the job as a `sardonyx run` process, kill -9 it after N events,
    /// restart it on the same data directory; with and without compaction; check the answer.
    Recovery(RecoveryArgs),
    /// The engine's command line (`vote-bench sardonyx run job.json …` is `sardonyx run …`).
    Sardonyx,
}

#[derive(Parser)]
struct RecoveryArgs {
    /// The vote file (with `vote_id`); it must hold more events than the largest kill point.
    #[arg(long)]
    input: PathBuf,
    /// Kill points: kill once this many events were committed (comma-separated).
    #[arg(long, default_value = "1000000", value_delimiter = ',')]
    events: Vec<u64>,
    /// Queries, comma-separated.
    #[arg(long, default_value = "q2", value_delimiter = ',')]
    queries: Vec<String>,
    /// Compaction on (`--compact-bytes`), off (never), or both.
    #[arg(long, value_enum, default_value = "on,off", value_delimiter = ',')]
    compaction: Vec<Compaction>,
    /// The compaction threshold when on (the `sardonyx run` default: 16 MiB).
    #[arg(long, default_value_t = 16 << 20)]
    compact_bytes: u64,
    /// Peers of the windowed task.
    #[arg(long, default_value_t = 1)]
    peers: usize,
    /// Batch size of the input and the windowed task (default: the engine's).
    #[arg(long)]
    batch_size: Option<usize>,
    /// A `sardonyx` binary to run instead of this executable's built-in command line.
    #[arg(long)]
    sardonyx: Option<PathBuf>,
    /// Scratch directory (one sub-directory per case, wiped first).
    #[arg(long, default_value = "/tmp/vote-bench/recovery")]
    work: PathBuf,
    /// Give up on a process after this many seconds.
    #[arg(long, default_value_t = 3600)]
    timeout_secs: u64,
    /// Append one JSON record per case to this file.
    #[arg(long)]
    results: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Compaction {
    /// Compact past `--compact-bytes`.
    On,
    /// Never compact (`--compact-bytes` = u64::MAX).
    Off,
}

#[derive(Parser)]
struct RunArgs {
    /// The vote file (JSON lines with `vote_id`; see the module docs to generate it).
    #[arg(long)]
    input: PathBuf,
    /// Queries, comma-separated.
    #[arg(long, default_value = "q1,q2,q3,q4", value_delimiter = ',')]
    queries: Vec<String>,
    /// State modes, comma-separated.
    #[arg(
        long,
        value_enum,
        default_value = "memory,embedded",
        value_delimiter = ','
    )]
    modes: Vec<Mode>,
    /// Sources, comma-separated.
    #[arg(
        long,
        value_enum,
        default_value = "file,segments",
        value_delimiter = ','
    )]
    sources: Vec<SourceKind>,
    /// Runs per combination (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Peers of the windowed task.
    #[arg(long, default_value_t = 1)]
    peers: usize,
    /// Peers of the `file` source's input (each reads its stripe of the file).
    #[arg(long, default_value_t = 1)]
    input_peers: usize,
    /// Batch size of the input and the windowed task (default: the engine's, 1000).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Scratch directory (sync outputs, state logs); wiped per run.
    #[arg(long, default_value = "/tmp/vote-bench")]
    work: PathBuf,
    /// Append one JSON record per combination to this file.
    #[arg(long)]
    results: Option<PathBuf>,
}

#[derive(Parser, Clone)]
struct OnceArgs {
    /// The vote file.
    #[arg(long)]
    input: PathBuf,
    /// The query.
    #[arg(long)]
    query: String,
    /// State mode.
    #[arg(long, value_enum, default_value = "memory")]
    mode: Mode,
    /// Source.
    #[arg(long, value_enum, default_value = "file")]
    source: SourceKind,
    /// Peers of the windowed task.
    #[arg(long, default_value_t = 1)]
    peers: usize,
    /// Peers of the `file` source's input (each reads its stripe of the file).
    #[arg(long, default_value_t = 1)]
    input_peers: usize,
    /// Batch size of the input and the windowed task.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Where the canonical CSV goes.
    #[arg(long)]
    out: PathBuf,
    /// Scratch directory (sync output, state log); wiped first.
    #[arg(long, default_value = "/tmp/vote-bench/once")]
    work: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    /// State in memory only (no log, no dedup).
    Memory,
    /// Exactly-once on the embedded log (one in-process Raft node on RocksDB, fsync on).
    Embedded,
    /// Exactly-once on a 3-node log cluster on loopback (three servers in this process).
    Cluster,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum SourceKind {
    /// The JSON-lines file through `sardonyx/jsonl` (parsing included in the time).
    File,
    /// Segments built in memory before the clock starts, through `sardonyx/channel`.
    Segments,
}

/// The figures of one run (the JSON line `once` prints).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Figures {
    query: String,
    mode: Mode,
    source: SourceKind,
    events: u64,
    /// Wall time of `run_job` (job start to every peer finished), seconds.
    secs: f64,
    /// Closing the state log afterwards, seconds (not in `secs`).
    close_secs: f64,
    /// Peak resident set of the process, KiB.
    peak_rss_kib: u64,
    /// Resident set just before the job started, KiB (segments mode holds its input here).
    start_rss_kib: u64,
    logged_records: u64,
    logged_bytes: u64,
    fired: u64,
    late: u64,
    rejected: u64,
    duplicates: u64,
    /// Trigger-to-sync latency of watermark firings in ms (segments source only), p50/p99.
    latency_ms: Option<(f64, f64)>,
    /// Embedded log: WAL fsyncs, ledger commands, and the Raft entries they were packed into.
    wal_syncs: Option<u64>,
    log_commands: Option<u64>,
    raft_writes: Option<u64>,
}

fn main() -> std::process::ExitCode {
    // This process is ours, as the `sardonyx` binary's is: the same allocator setting.
    sardonyx::allocator::bound_retained_memory();
    // `vote-bench sardonyx ARGS…`: the engine's command line, as the `sardonyx` binary runs it.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "sardonyx") {
        return sardonyx::cli::main_from(args.into_iter().skip(1));
    }
    match bench_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn bench_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run(a) => run(a),
        Cmd::Recovery(a) => recovery(a),
        Cmd::Sardonyx => unreachable!("handled before parsing"),
        Cmd::Once(a) => {
            let rt = tokio::runtime::Runtime::new()?;
            let figures = rt.block_on(once(&a))?;
            println!("{}", serde_json::to_string(&figures)?);
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One run, in this process.

/// A sync that keeps every firing in memory with the instant it arrived (segments source).
struct Collect(Arc<Mutex<Vec<(Map, Instant)>>>);

impl SyncSink for Collect {
    fn sync(&mut self, firing: &Map) -> Result<(), String> {
        let now = Instant::now();
        self.0
            .lock()
            .map_err(|e| e.to_string())?
            .push((firing.clone(), now));
        Ok(())
    }
}

/// Send instants of the segments source are recorded once per this many segments.
const STAMP_EVERY: usize = 64;

async fn once(a: &OnceArgs) -> anyhow::Result<Figures> {
    let query = Query::parse(&a.query).with_context(|| format!("unknown query {}", a.query))?;
    if a.work.exists() {
        std::fs::remove_dir_all(&a.work)?;
    }
    std::fs::create_dir_all(&a.work)?;
    let sync_path = a.work.join("firings.jsonl");
    let input = a
        .input
        .canonicalize()
        .with_context(|| format!("input {}", a.input.display()))?;
    let mut registry = Registry::new();
    let collected = Arc::new(Mutex::new(Vec::new()));
    let (source, segments) = match a.source {
        SourceKind::File => (Source::File(input.display().to_string()), Vec::new()),
        SourceKind::Segments => {
            let text = std::fs::read(&input)?;
            let segments: Vec<Segment> = text
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(sardonyx::segment::from_json_slice)
                .collect::<Result<_, _>>()
                .map_err(|e| anyhow::anyhow!(e))?;
            let shared = collected.clone();
            registry.register_sync(
                "bench/collect",
                SyncPlugin {
                    check: Arc::new(|_| Vec::new()),
                    open: Arc::new(move |_| {
                        Ok(Box::new(Collect(shared.clone())) as Box<dyn SyncSink>)
                    }),
                },
            );
            (Source::Channel("votes".into()), segments)
        }
    };
    let mut job = vote_job(
        query,
        &source,
        &sync_path.display().to_string(),
        a.peers,
        a.batch_size,
    );
    if a.source == SourceKind::File {
        for t in job.catalog.iter_mut().filter(|t| t.name == "read-votes") {
            t.n_peers = Some(a.input_peers);
        }
    }
    if a.source == SourceKind::Segments {
        for t in &mut job.triggers {
            t.sync = Some("bench/collect".into());
            t.params = Map::new();
        }
    }
    // The event time each segment brings the input's watermark to (prefix maximum), to find
    // which segment made a watermark trigger fire.
    let prefix_max: Vec<i64> = segments
        .iter()
        .scan(i64::MIN, |m, s| {
            *m = (*m).max(
                s.get("event_time")
                    .and_then(Value::as_i64)
                    .unwrap_or(i64::MIN),
            );
            Some(*m)
        })
        .collect();

    // State.
    let state_dir = a.work.join("state");
    let mut embedded = None;
    let mut servers = Vec::new();
    let state = match a.mode {
        Mode::Memory => None,
        Mode::Embedded => {
            let log = sardonyx_state_log::EmbeddedLog::open(state_dir.join("log")).await?;
            embedded = Some(log.clone());
            Some(StateOptions::new(Arc::new(log), &state_dir))
        }
        Mode::Cluster => {
            let mut listeners = Vec::new();
            let mut cluster = BTreeMap::new();
            for id in 1..=3_u64 {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                cluster.insert(id, l.local_addr()?.to_string());
                listeners.push((id, l));
            }
            for (id, l) in listeners {
                let config = sardonyx_state_log::ServerConfig::new(
                    id,
                    cluster[&id].clone(),
                    state_dir.join(format!("server-{id}")),
                    cluster.clone(),
                );
                servers.push(sardonyx_state_log::LogServer::start_on(l, config).await?);
            }
            servers[0].wait_for_leader(Duration::from_secs(10)).await?;
            let client = sardonyx_state_log::LogClient::connect(cluster.values().cloned())?;
            Some(StateOptions::new(
                Arc::new(client),
                state_dir.join("filters"),
            ))
        }
    };
    let options = RunOptions {
        errors_path: a.work.join("errors.jsonl"),
        state,
        ..RunOptions::default()
    };

    let progress = Arc::new(Progress::default());
    let bar = progress_bar(&progress, segments.len() as u64, &input);
    let start_rss_kib = proc_status_kib("VmRSS").unwrap_or(0);
    let stamps = Arc::new(Mutex::new(Vec::with_capacity(
        segments.len() / STAMP_EVERY + 1,
    )));
    let started = Instant::now();
    let feeder = if segments.is_empty() {
        None
    } else {
        let tx = registry.input_channel("votes", 4096);
        let stamps = stamps.clone();
        Some(tokio::spawn(async move {
            for (i, s) in segments.into_iter().enumerate() {
                if i % STAMP_EVERY == 0 {
                    stamps.lock().expect("stamps").push(Instant::now());
                }
                if tx.send(s).await.is_err() {
                    break;
                }
            }
        }))
    };
    let report = run_job_with_progress(&job, &registry, options, progress.clone()).await;
    let secs = started.elapsed().as_secs_f64();
    if let Some(f) = feeder {
        f.await?;
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let report = report?;
    let log_counters = embedded.as_ref().map(|l| (l.wal_syncs(), l.commit_stats()));
    let closing = Instant::now();
    if let Some(log) = embedded {
        log.close().await?;
    }
    for s in servers {
        s.shutdown().await?;
    }
    let close_secs = closing.elapsed().as_secs_f64();
    let peak_rss_kib = proc_status_kib("VmHWM").unwrap_or(0);

    // The answer, and the latency of watermark firings (segments source).
    let (answer, latency_ms) = if a.source == SourceKind::Segments {
        let firings = std::mem::take(&mut *collected.lock().expect("collected"));
        let stamps = stamps.lock().expect("stamps");
        let mut lat = Vec::new();
        let mut lines = String::new();
        for (f, at) in &firings {
            lines.push_str(&f.to_string());
            lines.push('\n');
            let is_wm = f.get("event").and_then(Value::as_str) == Some("watermark");
            if let (true, Some(upper)) = (is_wm, f.get("upper").and_then(Value::as_i64)) {
                // The first segment that brought the watermark (max event time − 6 min) to
                // the extent's upper bound.
                let need = upper.saturating_add(sardonyx_benches::MAX_OUT_OF_ORDER_MS);
                let i = prefix_max.partition_point(|m| *m < need);
                if let Some(sent) = stamps.get(i / STAMP_EVERY) {
                    lat.push(at.saturating_duration_since(*sent).as_secs_f64() * 1e3);
                }
            }
        }
        std::fs::write(&sync_path, lines)?;
        lat.sort_by(f64::total_cmp);
        let latency = quantile(&lat, 0.5).zip(quantile(&lat, 0.99));
        (Answer::from_sync_file(query, &sync_path)?, latency)
    } else {
        (Answer::from_sync_file(query, &sync_path)?, None)
    };
    answer.write_csv(query, &a.out)?;
    let (logged_records, logged_bytes, _) = report.logged;
    Ok(Figures {
        query: query.name().into(),
        mode: a.mode,
        source: a.source,
        events: report.read,
        secs,
        close_secs,
        peak_rss_kib,
        start_rss_kib,
        logged_records,
        logged_bytes,
        fired: report.fired,
        late: report.late,
        rejected: report.rejected,
        duplicates: report.duplicates,
        latency_ms,
        wal_syncs: log_counters.map(|c| c.0),
        log_commands: log_counters.map(|c| c.1.commands),
        raft_writes: log_counters.map(|c| c.1.raft_writes),
    })
}

/// A progress bar on a terminal (stderr), nothing when piped.
fn progress_bar(
    progress: &Arc<Progress>,
    total: u64,
    input: &Path,
) -> Option<indicatif::ProgressBar> {
    let total = if total > 0 {
        total
    } else {
        // Roughly: the file's size over a vote line's length.
        std::fs::metadata(input).map_or(0, |m| m.len() / 80)
    };
    sardonyx_benches::read_progress_bar(progress, total, "events")
}

// ---------------------------------------------------------------------------------------------
// The orchestrator.

/// Appends `value` as one JSON line to the results file at `path`.
fn append_json_line(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(f, "{}", serde_json::to_string(value)?)?;
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn run(a: RunArgs) -> anyhow::Result<()> {
    let queries: Vec<Query> = a
        .queries
        .iter()
        .map(|q| Query::parse(q).with_context(|| format!("unknown query {q}")))
        .collect::<anyhow::Result<_>>()?;
    if a.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let t = Instant::now();
    let reference = Reference::from_file(&a.input)?;
    eprintln!(
        "reference: {} events, {} exact-gap pairs, rows q1..q4 = {:?} ({:.1}s)",
        reference.events,
        reference.exact_gap_pairs,
        reference.rows.values().map(|r| r.len()).collect::<Vec<_>>(),
        t.elapsed().as_secs_f64()
    );
    if !reference.all_have_vote_id && a.modes.iter().any(|m| *m != Mode::Memory) {
        bail!("exactly-once modes deduplicate on vote_id: generate the input with --vote-id");
    }
    let exe = std::env::current_exe()?;
    let mut wrong = 0;
    let mut table = Vec::new();
    for &q in &queries {
        for &mode in &a.modes {
            for &source in &a.sources {
                let mut figs = Vec::new();
                let mut error = None;
                for run in 1..=a.runs {
                    let out = a.work.join("answer");
                    let mut cmd = Command::new(&exe);
                    cmd.arg("once")
                        .arg("--input")
                        .arg(&a.input)
                        .args(["--query", q.name()])
                        .arg("--mode")
                        .arg(mode.to_possible_value().expect("no skipped").get_name())
                        .arg("--source")
                        .arg(source.to_possible_value().expect("no skipped").get_name())
                        .args(["--peers", &a.peers.to_string()])
                        .args(["--input-peers", &a.input_peers.to_string()])
                        .arg("--out")
                        .arg(&out)
                        .arg("--work")
                        .arg(a.work.join("run"));
                    if let Some(b) = a.batch_size {
                        cmd.args(["--batch-size", &b.to_string()]);
                    }
                    let output = cmd.stderr(std::process::Stdio::inherit()).output()?;
                    if !output.status.success() {
                        error = Some(format!("run failed: {}", output.status));
                        break;
                    }
                    let line = String::from_utf8_lossy(&output.stdout);
                    let f: Figures = serde_json::from_str(line.trim())
                        .with_context(|| format!("child printed: {line}"))?;
                    let got = read_csv(&out.join(format!("{}.csv", q.name())))?;
                    let verdict = check(&reference.rows[&q], &got);
                    let log = match (f.wal_syncs, f.log_commands, f.raft_writes) {
                        (Some(s), Some(c), Some(r)) => format!(
                            ", {} log records ({} B), {c} ledger commands in {r} raft entries, {s} WAL fsyncs",
                            f.logged_records, f.logged_bytes
                        ),
                        _ => String::new(),
                    };
                    eprintln!(
                        "  {} {:?} {:?} run {run}: {:.3}s, {:.0} ev/s, peak RSS {:.0} MiB{log}, {}",
                        q.name(),
                        mode,
                        source,
                        f.secs,
                        f.events as f64 / f.secs,
                        mib(f.peak_rss_kib),
                        match &verdict {
                            Ok(n) => format!("correct ({n} rows)"),
                            Err(e) => format!("WRONG: {e}"),
                        }
                    );
                    if let Err(e) = verdict {
                        error = Some(e);
                        break;
                    }
                    if f.events != reference.events {
                        error = Some(format!(
                            "read {} events, the file has {}",
                            f.events, reference.events
                        ));
                        break;
                    }
                    figs.push(f);
                }
                let row = Row::new(q, mode, source, &figs, error, a.runs);
                if row.error.is_some() {
                    wrong += 1;
                }
                if let Some(path) = &a.results {
                    append_json_line(path, &row)?;
                }
                table.push(row);
            }
        }
    }
    println!();
    println!(
        "| query | state | source | events | runs | wall s (median) | events/s | best peer ev/s | × best peer | peak RSS MiB | log bytes/event | trigger→sync p50/p99 ms | correct |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &table {
        println!("{}", r.markdown());
    }
    if wrong > 0 {
        bail!("{wrong} combination(s) gave a wrong answer or failed: no figure printed for them");
    }
    Ok(())
}

fn recovery(a: RecoveryArgs) -> anyhow::Result<()> {
    use sardonyx_benches::recovery::{measure, Case, Launcher, Recovery, Setup};
    let queries: Vec<Query> = a
        .queries
        .iter()
        .map(|q| Query::parse(q).with_context(|| format!("unknown query {q}")))
        .collect::<anyhow::Result<_>>()?;
    let t = Instant::now();
    let reference = Reference::from_file(&a.input)?;
    eprintln!(
        "reference: {} events ({:.1}s)",
        reference.events,
        t.elapsed().as_secs_f64()
    );
    if !reference.all_have_vote_id {
        bail!("exactly-once deduplicates on vote_id: generate the input with --vote-id");
    }
    let launcher = match &a.sardonyx {
        Some(bin) => Launcher::Binary(bin.clone()),
        None => Launcher::Internal(std::env::current_exe()?),
    };
    let setup = Setup {
        input: a.input.clone(),
        launcher,
        work: a.work.clone(),
        peers: a.peers,
        batch_size: a.batch_size,
        timeout: Duration::from_secs(a.timeout_secs),
    };
    let mut rows = Vec::new();
    let mut wrong = 0;
    for &q in &queries {
        for &n in &a.events {
            for &c in &a.compaction {
                let case = Case {
                    query: q,
                    kill_at: n,
                    compact_bytes: (c == Compaction::On).then_some(a.compact_bytes),
                };
                eprintln!(
                    "== recovery {} after {n} events, compaction {c:?}",
                    q.name()
                );
                let r = measure(&setup, case, &reference)?;
                let slots = r
                    .slots
                    .iter()
                    .map(|s| {
                        format!(
                            "{}: snapshot {:?}, {} records, {} B, {} batches, {} ids, {} ms",
                            s.ledger,
                            s.snapshot,
                            s.records_scanned,
                            s.bytes_read,
                            s.batches,
                            s.ids,
                            s.millis
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                eprintln!(
                    "  killed at read {} (logged {}, {} compactions) after {:.2}s, {} B on disk; \
                     restart: slot recovered {:?}s, reading {:?}s, processing {:?}s, done {:.2}s \
                     after reading {}; {slots}; {}",
                    r.read_at_kill,
                    r.logged_at_kill,
                    r.compactions_before_kill,
                    r.killed_after_secs,
                    r.data_bytes_at_kill,
                    r.slot_recovered_secs,
                    r.reading_again_secs,
                    r.processing_again_secs,
                    r.restart_wall_secs,
                    r.read_after_restart,
                    match &r.verdict {
                        Ok(n) => format!("correct ({n} rows)"),
                        Err(e) => format!("WRONG: {e}"),
                    }
                );
                if r.verdict.is_err() {
                    wrong += 1;
                }
                if let Some(path) = &a.results {
                    append_json_line(path, &r)?;
                }
                rows.push(r);
            }
        }
    }
    println!();
    println!("{}", Recovery::HEADER);
    for r in &rows {
        println!("{}", r.markdown());
    }
    if wrong > 0 {
        bail!("{wrong} case(s) gave a wrong answer: no figure printed for them");
    }
    Ok(())
}

fn read_csv(path: &Path) -> anyhow::Result<BTreeMap<String, i64>> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let mut rows = BTreeMap::new();
    for line in text.lines().skip(1).filter(|l| !l.is_empty()) {
        let (k, n) = line.rsplit_once(',').context("a CSV row without a comma")?;
        rows.insert(k.to_owned(), n.parse()?);
    }
    Ok(rows)
}

/// One line of the table: the median run of a combination, or why there is no figure.
#[derive(Serialize)]
struct Row {
    query: String,
    mode: Mode,
    source: SourceKind,
    events: u64,
    runs: usize,
    secs_median: Option<f64>,
    eps: Option<f64>,
    best_peer: String,
    best_peer_eps: f64,
    ratio: Option<f64>,
    peak_rss_mib: Option<f64>,
    start_rss_mib: Option<f64>,
    log_bytes_per_event: Option<f64>,
    latency_ms: Option<(f64, f64)>,
    error: Option<String>,
}

impl Row {
    fn new(
        q: Query,
        mode: Mode,
        source: SourceKind,
        figs: &[Figures],
        error: Option<String>,
        runs: usize,
    ) -> Row {
        let (peer, peer_eps) = q.best_peer();
        let ok = error.is_none() && figs.len() == runs;
        let events = figs.first().map_or(0, |f| f.events);
        let secs = ok.then(|| median(&mut figs.iter().map(|f| f.secs).collect::<Vec<_>>()));
        let eps = secs.map(|s| events as f64 / s);
        let lat = figs.iter().filter_map(|f| f.latency_ms).collect::<Vec<_>>();
        Row {
            query: q.name().into(),
            mode,
            source,
            events,
            runs: figs.len(),
            secs_median: secs,
            eps,
            best_peer: peer.into(),
            best_peer_eps: peer_eps,
            ratio: eps.map(|e| e / peer_eps),
            peak_rss_mib: ok.then(|| mib(figs.iter().map(|f| f.peak_rss_kib).max().unwrap_or(0))),
            start_rss_mib: ok.then(|| mib(figs.iter().map(|f| f.start_rss_kib).max().unwrap_or(0))),
            log_bytes_per_event: ok.then(|| {
                figs.iter().map(|f| f.logged_bytes).max().unwrap_or(0) as f64 / events.max(1) as f64
            }),
            latency_ms: (ok && !lat.is_empty()).then(|| {
                (
                    median(&mut lat.iter().map(|l| l.0).collect::<Vec<_>>()),
                    median(&mut lat.iter().map(|l| l.1).collect::<Vec<_>>()),
                )
            }),
            error: if ok {
                None
            } else {
                Some(error.unwrap_or_else(|| "incomplete".into()))
            },
        }
    }

    fn markdown(&self) -> String {
        let mode = format!("{:?}", self.mode).to_lowercase();
        let source = format!("{:?}", self.source).to_lowercase();
        match (&self.error, self.secs_median, self.eps, self.ratio) {
            (None, Some(s), Some(eps), Some(ratio)) => {
                let rss = match self.source {
                    SourceKind::File => format!("{:.0}", self.peak_rss_mib.unwrap_or(0.0)),
                    // The input itself is resident before the clock starts.
                    SourceKind::Segments => format!(
                        "{:.0} (input {:.0})",
                        self.peak_rss_mib.unwrap_or(0.0),
                        self.start_rss_mib.unwrap_or(0.0)
                    ),
                };
                let lat = self
                    .latency_ms
                    .map_or("–".to_string(), |(p50, p99)| format!("{p50:.1} / {p99:.1}"));
                let bytes = match self.mode {
                    Mode::Memory => "–".to_string(),
                    _ => format!("{:.1}", self.log_bytes_per_event.unwrap_or(0.0)),
                };
                format!(
                    "| {} | {mode} | {source} | {} | {} | {s:.3} | {eps:.0} | {:.0} ({}) | {ratio:.2} | {rss} | {bytes} | {lat} | yes |",
                    self.query, self.events, self.runs, self.best_peer_eps, self.best_peer
                )
            }
            (e, ..) => format!(
                "| {} | {mode} | {source} | {} | {} | – | – | {:.0} ({}) | – | – | – | – | NO: {} |",
                self.query,
                self.events,
                self.runs,
                self.best_peer_eps,
                self.best_peer,
                e.as_deref().unwrap_or("?")
            ),
        }
    }
}
