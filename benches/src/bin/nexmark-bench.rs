//! `nexmark-bench`: window stages of Nexmark queries through the real engine, each checked
//! against an exact reference (see `sardonyx_benches::nexmark` for what is and is not Nexmark).
//!
//! ```sh
//! # The first N bids of the Nexmark generator (fixed base time and rate: same N, same file).
//! nexmark-bench generate --events 1000000 --out /tmp/bids_1m.jsonl
//! # One query once, in this process: the canonical CSV goes to OUT/<query>.csv, and one JSON
//! # line of figures (events, seconds, peak RSS, log bytes, correct) to stdout.
//! nexmark-bench once --input /tmp/bids_1m.jsonl --query q5 --mode embedded --out /tmp/nexmark
//! # The reference answer alone, as the same canonical CSV (to compare another engine's).
//! nexmark-bench reference --input /tmp/bids_1m.jsonl --query q5 --out /tmp/nexmark-ref
//! ```
//!
//! `once` exits with status 1 when the answer differs from the reference (after printing its
//! line, with `"correct": false` and the difference). `once --no-check` only runs the job and
//! writes the CSV (`"correct": null`): for the peers' harness (`benches/run-nexmark.sh`), which
//! checks the CSV against `reference`'s itself and times the whole process, so the reference
//! must not run inside it.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sardonyx::runtime::Progress;
use sardonyx_benches::nexmark::{
    write_bids, write_csv, GeneratorSettings, JobOptions, Mode, NexmarkQuery, OnceSpec, Reference,
    BASE_TIME_MS, DEFAULT_RATE, Q12_PERIOD_MS,
};

#[derive(Parser)]
#[command(
    version,
    about = "Window stages of Nexmark queries through the real Sardonyx engine, checked against a reference"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write the first N bids of the Nexmark generator as JSON lines.
    Generate(GenerateArgs),
    /// Run one query once in this process; write its answer as canonical CSV
    /// (`OUT/<query>.csv`) and print one JSON line of figures.
    Once(OnceArgs),
    /// Write the reference answer of one query as canonical CSV (`OUT/<query>.csv`).
    Reference(ReferenceArgs),
}

#[derive(Parser)]
struct GenerateArgs {
    /// Bids to write.
    #[arg(long)]
    events: u64,
    /// The file to write.
    #[arg(long)]
    out: PathBuf,
    /// Events (persons, auctions and bids) per second of event time.
    #[arg(long, default_value_t = DEFAULT_RATE)]
    rate: usize,
    /// Event time of the first event, epoch milliseconds (default 2026-01-01T00:00:00Z).
    #[arg(long, default_value_t = BASE_TIME_MS)]
    base_time_ms: u64,
}

#[derive(Parser)]
struct OnceArgs {
    /// The bids file.
    #[arg(long)]
    input: PathBuf,
    /// The query: q5, q7, q11 or q12.
    #[arg(long, value_parser = parse_query)]
    query: NexmarkQuery,
    /// Where window state lives.
    #[arg(long, value_enum, default_value = "memory")]
    mode: Mode,
    /// Peers of the windowed task (q7 needs 1).
    #[arg(long, default_value_t = 1)]
    peers: usize,
    /// Batch size of the input and the windowed task (default: the engine's).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Q12's processing-time period, milliseconds.
    #[arg(long, default_value_t = Q12_PERIOD_MS)]
    q12_period_ms: i64,
    /// Where the canonical CSV goes.
    #[arg(long)]
    out: PathBuf,
    /// Scratch directory (sync output, state log, error file); wiped first.
    #[arg(long, default_value = "/tmp/nexmark-bench/once")]
    work: PathBuf,
    /// Only run the job and write the CSV: no reference, no comparison (`"correct": null`).
    #[arg(long)]
    no_check: bool,
}

#[derive(Parser)]
struct ReferenceArgs {
    /// The bids file.
    #[arg(long)]
    input: PathBuf,
    /// The query: q5, q7, q11 or q12.
    #[arg(long, value_parser = parse_query)]
    query: NexmarkQuery,
    /// Where the canonical CSV goes.
    #[arg(long)]
    out: PathBuf,
}

fn parse_query(s: &str) -> Result<NexmarkQuery, String> {
    NexmarkQuery::parse(s).ok_or_else(|| format!("unknown query {s} (q5, q7, q11 or q12)"))
}

fn main() -> std::process::ExitCode {
    // The same allocator setting as the `sardonyx` binary's process.
    sardonyx::allocator::bound_retained_memory();
    match bench_main() {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the command; `Ok(false)`: it ran, and the answer was wrong.
fn bench_main() -> anyhow::Result<bool> {
    match Cli::parse().cmd {
        Cmd::Generate(a) => generate(&a).map(|()| true),
        Cmd::Reference(a) => {
            let r = Reference::from_file(a.query, &a.input)?;
            let path = write_csv(a.query, &r.rows, &a.out)?;
            eprintln!(
                "{}: {} bids, {} rows, {} out of order, {} exact-gap pairs → {}",
                a.query.name(),
                r.events,
                r.rows.len(),
                r.out_of_order,
                r.exact_gap_pairs,
                path.display()
            );
            Ok(true)
        }
        Cmd::Once(a) => {
            let spec = OnceSpec {
                input: a.input,
                query: a.query,
                mode: a.mode,
                job: JobOptions {
                    peers: a.peers,
                    batch_size: a.batch_size,
                    q12_period_ms: a.q12_period_ms,
                },
                out: a.out,
                work: a.work,
                check: !a.no_check,
            };
            let rt = tokio::runtime::Runtime::new()?;
            let figures = rt.block_on(async {
                let progress = Arc::new(Progress::default());
                let bar = progress_bar(&progress, &spec.input);
                let figures = sardonyx_benches::nexmark::run_once(&spec, progress).await;
                if let Some(bar) = bar {
                    bar.finish_and_clear();
                }
                figures
            })?;
            println!("{}", serde_json::to_string(&figures)?);
            if let Some(d) = &figures.difference {
                eprintln!("{}: WRONG: {d}", figures.query);
            }
            Ok(figures.correct != Some(false))
        }
    }
}

fn generate(a: &GenerateArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.rate > 0, "--rate must be at least 1");
    let settings = GeneratorSettings {
        rate: a.rate,
        base_time_ms: a.base_time_ms,
    };
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let file =
        std::fs::File::create(&a.out).with_context(|| format!("create {}", a.out.display()))?;
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(a.events);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {pos}/{len} bids {per_sec} {elapsed} {wide_bar}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    write_bids(a.events, settings, file, |n| {
        if let Some(bar) = &bar {
            bar.set_position(n);
        }
    })?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(())
}

/// A progress bar of bids read on a terminal (stderr), nothing when piped.
fn progress_bar(progress: &Arc<Progress>, input: &Path) -> Option<indicatif::ProgressBar> {
    // Roughly: the file's size over a bid line's length.
    let total = std::fs::metadata(input).map_or(0, |m| m.len() / 260);
    sardonyx_benches::read_progress_bar(progress, total, "bids")
}
