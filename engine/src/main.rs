//! The `sardonyx` command: run, validate and demo jobs.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use sardonyx::runtime::{run_job_with_progress, Progress};
use sardonyx::{demo, Job, Registry, RunOptions};

#[derive(Parser)]
#[command(
    name = "sardonyx",
    version,
    about = "A stateful stream processor: jobs as data, event-time windows, exactly-once state."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a job file (JSON or TOML) to completion.
    Run {
        /// The job file.
        job: PathBuf,
        /// Run every task on this many peers (overrides the catalog).
        #[arg(long)]
        peers: Option<usize>,
        /// Where rejected segments go unless the job says otherwise.
        #[arg(long, default_value = "sardonyx-errors.jsonl")]
        errors: PathBuf,
    },
    /// Check a job file and print every problem.
    Validate {
        /// The job file.
        job: PathBuf,
    },
    /// Run a built-in demonstration job.
    Demo {
        #[command(subcommand)]
        which: DemoCommand,
    },
}

#[derive(Subcommand)]
enum DemoCommand {
    /// The vote count: votes per candidate, overall, per minute, hourly, and per-voter sessions.
    Votes {
        /// How many votes to generate.
        #[arg(long, default_value_t = 200_000)]
        events: u64,
        /// Where the demo writes its input and outputs.
        #[arg(long, default_value = "sardonyx-data/demo")]
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SARDONYX_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
        .and_then(|rt| rt.block_on(execute(cli.command)));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Validate { job } => {
            let registry = Registry::new();
            let loaded = Job::load(&job);
            match loaded
                .map_err(anyhow::Error::from)
                .and_then(|j| j.validate(&registry).map_err(Into::into))
            {
                Ok(()) => {
                    println!("{}: valid", job.display());
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("{}: {e}", job.display());
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Run { job, peers, errors } => {
            let registry = Registry::new();
            let loaded = Job::load(&job).map_err(|e| anyhow::anyhow!("{}: {e}", job.display()))?;
            let options = RunOptions {
                peers_override: peers,
                errors_path: errors,
                ..RunOptions::default()
            };
            let progress = Arc::new(Progress::default());
            let started = Instant::now();
            let watcher = tokio::spawn(show_progress(progress.clone()));
            let result = run_job_with_progress(&loaded, &registry, options, progress).await;
            watcher.abort();
            let report = result?;
            println!(
                "{}: read {} records, wrote {} segments, rejected {} in {:.2?}",
                job.display(),
                report.read,
                report.written,
                report.rejected,
                started.elapsed()
            );
            if let Some(path) = &report.errors_path {
                println!("rejected segments and their causes: {}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo {
            which: DemoCommand::Votes { events, dir },
        } => {
            demo::votes(events, &dir).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A spinner with counts on a terminal; a plain line every few seconds when piped.
async fn show_progress(progress: Arc<Progress>) {
    let terminal = std::io::stderr().is_terminal();
    let bar = indicatif::ProgressBar::new_spinner();
    if !terminal {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {elapsed} {msg}")
            .expect("a valid template"),
    );
    let mut ticks = 0_u64;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        ticks += 1;
        let msg = format!(
            "read {} · written {} · rejected {}",
            progress.read.load(Ordering::Relaxed),
            progress.written.load(Ordering::Relaxed),
            progress.rejected.load(Ordering::Relaxed)
        );
        if terminal {
            bar.set_message(msg);
            bar.tick();
        } else if ticks % 50 == 0 {
            eprintln!("progress: {msg}");
        }
    }
}
