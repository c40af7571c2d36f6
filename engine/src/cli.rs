//! The `sardonyx` command line: run, validate and demo jobs; run and inspect log servers; run
//! peer processes of a cluster and inspect the cluster (its status, its history).
//!
//! It lives in the library so that tests (and embedders) can run the very same command in a
//! process of their own: [`main_from`].

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::collections::BTreeMap;

use crate::cluster;
use crate::coordination::DetectorConfig;
use crate::data_dir::DataDirLock;
use crate::metrics::{
    LedgerTiming, MetricsServer, Observed, ObservedJob, ObservedLog, TimedLedgers,
};
use crate::runtime::{run_job_with_progress, Progress, StateOptions};
use crate::{demo, Job, JobReport, Registry, RunOptions};
use sardonyx_state_log::{
    ClientOptions, ClusterSecret, DedupConfig, EmbeddedLog, Ledgers, LogClient, LogServer, Role,
    ServerConfig,
};

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
    /// Run a job file (JSON or TOML) to completion. SIGINT or SIGTERM stops it gracefully
    /// (inputs stop, what was read is processed, positions committed, outputs flushed, report
    /// printed, exit 0; it resumes where it stopped); a second signal exits at once.
    Run {
        /// The job file.
        job: PathBuf,
        /// Run every task on this many peers (overrides the catalog).
        #[arg(long)]
        peers: Option<usize>,
        /// Where rejected segments go unless the job says otherwise.
        #[arg(long, default_value = "sardonyx-errors.jsonl")]
        errors: PathBuf,
        #[command(flatten)]
        state: StateArgs,
        /// When output is not a terminal, print a progress line this often (milliseconds):
        /// records read, records committed (fully processed, their input positions in the state
        /// log: a rerun resumes after them), segments written, rejected, and logged.
        #[arg(long, default_value_t = 5000)]
        progress_ms: u64,
        /// Serve metrics (Prometheus text format) at http://ADDR/metrics and a live dashboard
        /// at http://ADDR/ (`host:port`; port 0 picks a free port; the address is printed).
        #[arg(long, value_name = "ADDR")]
        metrics: Option<String>,
    },
    /// Run one server of a state-log cluster (3 servers tolerate the loss of one).
    LogServer {
        /// This server's id in the cluster map.
        #[arg(long)]
        id: u64,
        /// Address to listen on (host:port).
        #[arg(long)]
        listen: String,
        /// Directory of this server's RocksDB (reused on restart: the server rejoins with it).
        #[arg(long)]
        data: PathBuf,
        /// Every member: `1=host:port,2=host:port,3=host:port` (the same on every server).
        #[arg(long)]
        cluster: String,
        /// File holding the cluster secret (at least 16 bytes, not accessible to every user),
        /// the same on every server and client: connections that cannot prove it are refused.
        /// Without it, connections are not authenticated, and the server listens only on a
        /// loopback address.
        #[arg(long)]
        secret_file: Option<PathBuf>,
        /// Serve metrics (Prometheus text format) at http://ADDR/metrics (this server's Raft role, term and
        /// indexes, group commit, WAL syncs) and a page at http://ADDR/ (`host:port`; port 0 picks a free port; the address is printed).
        #[arg(long, value_name = "ADDR")]
        metrics: Option<String>,
    },
    /// Show each log server's id, address, role and its last log and applied index.
    LogStatus {
        /// Addresses of log servers (any subset; the others are found through them).
        #[arg(long, value_delimiter = ',', required = true)]
        log: Vec<String>,
        /// File holding the cluster secret the servers were started with.
        #[arg(long)]
        secret_file: Option<PathBuf>,
    },
    /// Run a peer process of a cluster: it joins the cluster through the coordination log of the
    /// log servers, watches the next process in the join ring with heartbeats and declares it gone
    /// after the failure timeout, until stopped (SIGINT or SIGTERM: it leaves the cluster).
    /// It runs the slots of jobs the cluster gives it, and takes over those of processes that
    /// die.
    Peer {
        /// Addresses of log servers (any subset; the others are found through them).
        #[arg(long, value_delimiter = ',', required = true)]
        log: Vec<String>,
        /// Address to listen on for other peer processes (host:port; port 0 picks one).
        #[arg(long)]
        listen: SocketAddr,
        /// The address other processes dial (default: the address listened on).
        #[arg(long)]
        advertise: Option<String>,
        /// Virtual peers this process offers (default: the number of cores).
        #[arg(long)]
        slots: Option<u32>,
        /// File holding the cluster secret the log servers were started with (also required of
        /// other peer processes).
        #[arg(long)]
        secret_file: Option<PathBuf>,
        /// Time between heartbeats to the watched process (milliseconds).
        #[arg(long, default_value_t = 200)]
        heartbeat_ms: u64,
        /// Time without an answer after which the watched process is declared gone
        /// (milliseconds).
        #[arg(long, default_value_t = 2000)]
        failure_timeout_ms: u64,
        /// Time after which a batch sent to another process and not acknowledged is replayed
        /// from its input (the job's runs restart: `restart_job`), in milliseconds.
        #[arg(long, default_value_t = 60_000)]
        pending_timeout_ms: u64,
        /// Write the replica after every coordination-log entry to this file, one JSON line each.
        #[arg(long, hide = true)]
        trace_replicas: Option<PathBuf>,
        /// Serve metrics (Prometheus text format) at http://ADDR/metrics and a page at
        /// http://ADDR/ with the cluster as this process sees it and the coordination log's time
        /// machine (`host:port`; port 0 picks a free port; the address is printed).
        #[arg(long, value_name = "ADDR")]
        metrics: Option<String>,
        /// Directory for the derived state of the slots it runs (dedup filters) and error files
        /// (default: `sardonyx-peer-data/<port>`, the port it listens on).
        #[arg(long)]
        data: Option<PathBuf>,
        /// When output is not a terminal, print a progress line of the runs of jobs in this
        /// process this often (milliseconds).
        #[arg(long, default_value_t = 5000)]
        progress_ms: u64,
        /// Compact a windowed slot's ledger once this many bytes were logged since its snapshot
        /// (a slot that moves, or restarts with its job's run, replays at most about this much:
        /// the default keeps the failover under 3 s, 4x smaller than `run`'s).
        #[arg(long, default_value_t = 4 << 20)]
        compact_bytes: u64,
    },
    /// Submit a job to a cluster: its slots are placed on the peer processes, which run them.
    /// The job must have an `id`.
    Submit {
        /// The job file (JSON or TOML).
        job: PathBuf,
        /// Addresses of log servers.
        #[arg(long, value_delimiter = ',', required = true)]
        log: Vec<String>,
        /// Wait until the job completes (exit 0) or is killed (exit 1).
        #[arg(long)]
        wait: bool,
        /// File holding the cluster secret.
        #[arg(long)]
        secret_file: Option<PathBuf>,
    },
    /// Kill a job of a cluster: its slots stop and it never runs again.
    KillJob {
        /// The job's id.
        id: String,
        /// Addresses of log servers.
        #[arg(long, value_delimiter = ',', required = true)]
        log: Vec<String>,
        /// File holding the cluster secret.
        #[arg(long)]
        secret_file: Option<PathBuf>,
    },
    /// Show the cluster as the coordination log says: processes, the join ring, joins in
    /// progress, jobs and which process owns which slot.
    ClusterStatus {
        /// Addresses of log servers.
        #[arg(long, value_delimiter = ',', required = true)]
        log: Vec<String>,
        /// Print the replica as JSON.
        #[arg(long)]
        json: bool,
        /// File holding the cluster secret.
        #[arg(long)]
        secret_file: Option<PathBuf>,
    },
    /// The time machine: the cluster as it was after coordination-log entry N (default: the
    /// last), with that entry.
    Replay {
        /// Addresses of log servers.
        #[arg(long, value_delimiter = ',', required = true)]
        log: Vec<String>,
        /// The position to play the log to.
        #[arg(long)]
        to: Option<u64>,
        /// Print `{"position", "entry", "replica"}` as JSON.
        #[arg(long)]
        json: bool,
        /// File holding the cluster secret.
        #[arg(long)]
        secret_file: Option<PathBuf>,
    },
    /// Check a job file and print every problem.
    Validate {
        /// The job file.
        job: PathBuf,
        /// Also check the job against its state in this data directory's embedded log (read
        /// only; the job must not be running): a changed `key_groups`, or a peer count its state
        /// cannot follow, is refused as `run` would refuse it.
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Run a built-in demonstration job.
    Demo {
        #[command(subcommand)]
        which: DemoCommand,
    },
}

/// Where `run` keeps its exactly-once state.
#[derive(clap::Args)]
struct StateArgs {
    /// Local data directory: the embedded state log (unless --log is given) and the dedup
    /// filters.
    #[arg(long, default_value = "sardonyx-data")]
    data: PathBuf,
    /// Keep state on this log cluster (`host:port,host:port,…`) instead of the embedded log.
    #[arg(long, value_delimiter = ',')]
    log: Vec<String>,
    /// File holding the log cluster's secret (with --log; see `sardonyx log-server --help`).
    #[arg(long, requires = "log")]
    secret_file: Option<PathBuf>,
    /// Start the job over, ignoring the state of earlier runs with the same job id.
    #[arg(long)]
    fresh: bool,
    /// Keep no state at all: nothing survives a crash, nothing is deduplicated.
    #[arg(long, conflicts_with_all = ["log", "fresh"])]
    in_memory: bool,
    /// Compact a windowed slot's ledger once this many bytes were logged since its snapshot.
    #[arg(long, default_value_t = 16 << 20)]
    compact_bytes: u64,
    /// Ids per dedup-filter bucket.
    #[arg(long, default_value_t = 200_000)]
    dedup_bucket_size: u64,
    /// Dedup-filter buckets kept (horizon: (buckets − 1) × bucket size ids at least).
    #[arg(long, default_value_t = 5)]
    dedup_buckets: usize,
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
        /// Serve metrics at http://ADDR/metrics and the live dashboard at http://ADDR/ (the
        /// address is printed), and, on a terminal, keep serving after the count until Ctrl-C.
        #[arg(long, value_name = "ADDR")]
        metrics: Option<String>,
    },
}

/// Runs the `sardonyx` command with this process's arguments (the process is ours: its
/// allocator is tuned first, [`crate::allocator`]).
pub fn main() -> ExitCode {
    crate::allocator::bound_retained_memory();
    main_from(std::env::args_os())
}

/// Runs the `sardonyx` command with `args` (the first one is the program name).
pub fn main_from<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SARDONYX_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
        .and_then(|rt| rt.block_on(execute(cli.command)));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_report(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, `error: cause: cause…`, leaving out a cause whose text
/// its error's message already holds (many of our errors name their cause in their message and
/// keep it as their typed source too).
fn error_report(e: &anyhow::Error) -> String {
    let mut report = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !report.contains(&text) {
            report.push_str(": ");
            report.push_str(&text);
        }
    }
    report
}

async fn execute(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Peer {
            log,
            listen,
            advertise,
            slots,
            secret_file,
            heartbeat_ms,
            failure_timeout_ms,
            pending_timeout_ms,
            trace_replicas,
            metrics,
            data,
            progress_ms,
            compact_bytes,
        } => {
            let secret = load_secret(secret_file.as_deref())?;
            if secret.is_none() {
                refuse_open_listener(&listen.to_string()).await?;
            }
            let data = data
                .unwrap_or_else(|| PathBuf::from(format!("sardonyx-peer-data/{}", listen.port())));
            let slots = slots.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
            });
            let config = cluster::PeerConfig {
                log,
                listen,
                advertise,
                slots,
                secret,
                detector: DetectorConfig {
                    heartbeat_interval: Duration::from_millis(heartbeat_ms),
                    failure_timeout: Duration::from_millis(failure_timeout_ms),
                },
                pending_timeout: Duration::from_millis(pending_timeout_ms),
                trace_replicas,
                view: Arc::new(cluster::ClusterView::new()),
                registry: Registry::new(),
                data,
                compact_after_bytes: compact_bytes,
                progress: Arc::new(Progress::default()),
            };
            let watcher = tokio::spawn(show_progress(config.progress.clone(), progress_ms));
            let server = match metrics {
                Some(addr) => {
                    // The runs of this process, whatever their jobs: its counters, per slot.
                    let runs = crate::metrics::ObservedJob {
                        name: "peer".to_owned(),
                        graph: crate::metrics::JobGraph::default(),
                        progress: config.progress.clone(),
                        started: std::time::SystemTime::now(),
                    };
                    let observed = Observed {
                        job: Some(runs),
                        log: None,
                        cluster: Some(config.view.clone()),
                    };
                    Some(MetricsServer::start(&addr, observed).await?)
                }
                None => None,
            };
            let stop = tokio_util::sync::CancellationToken::new();
            let mut signals = StopSignals::install()?;
            let on_signal = stop.clone();
            tokio::spawn(async move {
                let (name, _) = signals.next().await;
                eprintln!("{name}: leaving the cluster (send it again to exit at once)");
                on_signal.cancel();
                exit_on_second_signal(signals).await;
            });
            if let Some(path) = &config.trace_replicas {
                std::fs::File::create(path)
                    .with_context(|| format!("creating {}", path.display()))?;
            }
            let exit = loop {
                match cluster::run_peer(config.clone(), stop.clone()).await {
                    // Its slots moved while it was cut off: it joins again as a new process.
                    Ok(cluster::PeerExit::CutOff) => {
                        eprintln!(
                            "left the cluster after being cut off from the log for longer than \
                             the failure timeout (its slots moved to the others); joining again \
                             as a new process"
                        );
                    }
                    other => break other,
                }
            };
            watcher.abort();
            if let Some(server) = server {
                server.shutdown().await;
            }
            match exit? {
                cluster::PeerExit::Stopped => {
                    eprintln!("left the cluster");
                    Ok(ExitCode::SUCCESS)
                }
                cluster::PeerExit::CutOff => unreachable!("a cut-off process joins again"),
                cluster::PeerExit::Removed { position } => {
                    eprintln!(
                        "removed from the cluster by another process (coordination log entry \
                         {position}): it was declared gone; start the process again to rejoin"
                    );
                    Ok(ExitCode::from(3))
                }
            }
        }
        Command::Submit {
            job: path,
            log,
            wait,
            secret_file,
        } => {
            let job = Job::load(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            job.validate_for_cluster(&Registry::new())
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let spec = crate::coordination::JobSpec::from_job(&job)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let id = spec.id.clone();
            let client = coordination_client(log, secret_file)?;
            let position = match cluster::submission::submit(&client, spec).await? {
                cluster::Submitted::Accepted { position } => position,
                cluster::Submitted::Refused { position, reason } => {
                    eprintln!("job \"{id}\" was not taken (entry {position}): {reason}");
                    return Ok(ExitCode::from(2));
                }
            };
            println!("submitted job \"{id}\" (coordination log entry {position})");
            if !wait {
                return Ok(ExitCode::SUCCESS);
            }
            match cluster::submission::wait_for(&client, &id, position).await? {
                cluster::JobOutcome::Completed { position } => {
                    println!("job \"{id}\" completed (entry {position})");
                    Ok(ExitCode::SUCCESS)
                }
                cluster::JobOutcome::Killed {
                    position,
                    reason: Some(reason),
                } => {
                    eprintln!("job \"{id}\" was killed (entry {position}): {reason}");
                    Ok(ExitCode::from(1))
                }
                cluster::JobOutcome::Killed {
                    position,
                    reason: None,
                } => {
                    eprintln!(
                        "job \"{id}\" was killed (entry {position}): see the peer processes' logs \
                         for why"
                    );
                    Ok(ExitCode::from(1))
                }
            }
        }
        Command::KillJob {
            id,
            log,
            secret_file,
        } => {
            let client = coordination_client(log, secret_file)?;
            let job = crate::coordination::JobId(id);
            match cluster::submission::kill(&client, &job).await? {
                Ok(position) => {
                    println!("killed job \"{job}\" (coordination log entry {position})");
                    Ok(ExitCode::SUCCESS)
                }
                Err(reason) => {
                    eprintln!("{reason}: nothing to kill");
                    Ok(ExitCode::from(1))
                }
            }
        }
        Command::ClusterStatus {
            log,
            json,
            secret_file,
        } => {
            let view = read_coordination_log(log, secret_file).await?;
            let replica = view.replica_at(None);
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&replica).context("replica as JSON")?
                );
            } else {
                print!("{replica}");
                if !view.undecodable.is_empty() {
                    println!(
                        "entries skipped (they do not decode): {:?}",
                        view.undecodable
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay {
            log,
            to,
            json,
            secret_file,
        } => {
            let view = read_coordination_log(log, secret_file).await?;
            let at = to.unwrap_or(view.last);
            if at > view.last {
                anyhow::bail!(
                    "--to {at}: the coordination log ends at entry {}",
                    view.last
                );
            }
            let replica = view.replica_at(Some(at));
            let entry = view.entry(at);
            if json {
                let entry = serde_json::to_value(entry).context("entry as JSON")?;
                let replica = serde_json::to_value(&replica).context("replica as JSON")?;
                let out = serde_json::json!({"position": at, "entry": entry, "replica": replica});
                println!("{out}");
            } else {
                match entry {
                    Some(e) => println!("entry {at} of {}: {}", view.last, e.name()),
                    None if at == 0 => {
                        println!("before the first entry (the log has {})", view.last)
                    }
                    None => println!("entry {at} of {}: does not decode (skipped)", view.last),
                }
                print!("{replica}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { job, data } => {
            let registry = Registry::new();
            let loaded = Job::load(&job);
            let checked = match loaded
                .map_err(anyhow::Error::from)
                .and_then(|j| j.validate(&registry).map(|()| j).map_err(Into::into))
            {
                Ok(j) => match data {
                    Some(dir) => check_against_state(&j, &dir).await,
                    None => Ok(None),
                },
                Err(e) => Err(e),
            };
            match checked {
                Ok(state) => {
                    match state {
                        Some(summary) => println!("{}: valid; {summary}", job.display()),
                        None => println!("{}: valid", job.display()),
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("{}: {e}", job.display());
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Run {
            job,
            peers,
            errors,
            state,
            progress_ms,
            metrics,
        } => {
            let registry = Registry::new();
            let loaded = Job::load(&job).map_err(|e| anyhow::anyhow!("{}: {e}", job.display()))?;
            // One process per data directory: held until this command returns.
            let _lock = (!state.in_memory)
                .then(|| DataDirLock::acquire(&state.data))
                .transpose()?;
            let timing = metrics.as_ref().map(|_| Arc::new(LedgerTiming::default()));
            let (state_options, embedded) = open_state(&state, timing.clone()).await?;
            let stop = tokio_util::sync::CancellationToken::new();
            let signals = tokio::spawn(stop_on_signals(StopSignals::install()?, stop.clone()));
            let options = RunOptions {
                peers_override: peers,
                errors_path: errors,
                state: state_options,
                stop,
                ..RunOptions::default()
            };
            let progress = Arc::new(Progress::default());
            let server = match &metrics {
                Some(addr) => {
                    let name = job
                        .file_stem()
                        .map_or("job".into(), |s| s.to_string_lossy());
                    let observed = Observed {
                        job: Some(ObservedJob::new(&loaded, &name, progress.clone())),
                        log: (!state.in_memory).then(|| ObservedLog {
                            name: if state.log.is_empty() {
                                "embedded"
                            } else {
                                "cluster"
                            }
                            .to_owned(),
                            timing: timing.clone(),
                            node: embedded.as_ref().map(EmbeddedLog::observer),
                        }),
                        cluster: None,
                    };
                    Some(MetricsServer::start(addr, observed).await?)
                }
                None => None,
            };
            let started = Instant::now();
            let watcher = tokio::spawn(show_progress(progress.clone(), progress_ms));
            let result = run_job_with_progress(&loaded, &registry, options, progress).await;
            watcher.abort();
            if let Some(server) = server {
                server.shutdown().await;
            }
            // The job is over: what is left (closing the log, the report) ends by itself. (tokio
            // keeps the handlers, so a signal from now on is ignored.)
            signals.abort();
            if let Some(log) = embedded {
                if let Err(e) = log.close().await {
                    tracing::warn!(error = %e, "closing the embedded state log");
                }
            }
            let report = result?;
            print_state_report(&report);
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
            if report.unmatched > 0 {
                println!(
                    "{} segments matched no flow condition (counted; the job's \"unmatched\" \
                     says whether they go to the error output)",
                    report.unmatched
                );
            }
            if report.restarts > 0 {
                println!(
                    "the job's peers were restarted {} times from the committed positions",
                    report.restarts
                );
            }
            if report.stopped {
                println!(
                    "stopped before the inputs were exhausted: positions committed and outputs \
                     flushed; the job is not complete (no job-completion firings): run it \
                     again to resume where it stopped"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::LogServer {
            id,
            listen,
            data,
            cluster,
            secret_file,
            metrics,
        } => {
            let cluster = parse_cluster(&cluster)?;
            let secret = load_secret(secret_file.as_deref())?;
            if secret.is_none() {
                refuse_open_listener(&listen).await?;
                tracing::warn!(
                    "no --secret-file: connections to this log server are not authenticated \
                     (allowed on loopback addresses only)"
                );
            }
            let config = ServerConfig {
                secret,
                ..ServerConfig::new(id, listen, data, cluster)
            };
            let server = LogServer::start(config)
                .await
                .context("starting the log server")?;
            println!("log server {id} listening on {}", server.local_addr());
            let endpoint = match &metrics {
                Some(addr) => {
                    let observed = Observed {
                        job: None,
                        log: Some(ObservedLog {
                            name: format!("server-{id}"),
                            timing: None,
                            node: Some(server.observer()),
                        }),
                        cluster: None,
                    };
                    Some(MetricsServer::start(addr, observed).await?)
                }
                None => None,
            };
            tokio::signal::ctrl_c().await?;
            if let Some(endpoint) = endpoint {
                endpoint.shutdown().await;
            }
            server.shutdown().await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::LogStatus { log, secret_file } => {
            let secret = load_secret(secret_file.as_deref())?;
            let statuses = sardonyx_state_log::status_with(&log, secret.as_ref()).await;
            println!(
                "{:<4} {:<22} {:<12} {:>7} {:>6} {:>14} {:>13} {:>14}",
                "id",
                "address",
                "role",
                "leader",
                "term",
                "last log index",
                "applied index",
                "coord position"
            );
            let opt = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
            for s in &statuses {
                println!(
                    "{:<4} {:<22} {:<12} {:>7} {:>6} {:>14} {:>13} {:>14}",
                    opt(s.id),
                    s.addr,
                    format!("{:?}", s.role).to_lowercase(),
                    opt(s.current_leader),
                    s.current_term,
                    opt(s.last_log_index),
                    opt(s.last_applied),
                    opt(s.last_entry_position)
                );
            }
            for s in &statuses {
                if let Some(reason) = &s.refused {
                    eprintln!("{}: {reason}", s.addr);
                }
            }
            let reachable = statuses.iter().any(|s| s.role != Role::Unreachable);
            Ok(if reachable {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Demo {
            which:
                DemoCommand::Votes {
                    events,
                    dir,
                    metrics,
                },
        } => {
            demo::votes(events, &dir, metrics.as_deref()).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// SIGINT and SIGTERM, caught (registered before the job starts, so that no signal meets the
/// default action while it runs).
struct StopSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            interrupt: signal(SignalKind::interrupt()).context("catching SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("catching SIGTERM")?,
        })
    }

    /// The next signal: its name and the exit code of a process it ends (128 + its number).
    async fn next(&mut self) -> (&'static str, i32) {
        tokio::select! {
            _ = self.interrupt.recv() => ("SIGINT", 130),
            _ = self.terminate.recv() => ("SIGTERM", 143),
        }
    }
}

/// The first signal stops the job gracefully ([`RunOptions::stop`]); a second one ends the
/// process at once, with 128 + the signal's number.
async fn stop_on_signals(mut signals: StopSignals, stop: tokio_util::sync::CancellationToken) {
    let (name, _) = signals.next().await;
    eprintln!(
        "{name}: stopping: the inputs stop reading, what was read is processed, positions are \
         committed and outputs flushed (send it again to exit at once)"
    );
    stop.cancel();
    exit_on_second_signal(signals).await;
}

/// After the first signal (which `stop` answers): a second one ends the process at once.
async fn exit_on_second_signal(mut signals: StopSignals) {
    let (name, code) = signals.next().await;
    eprintln!("{name} again: exiting at once, without finishing the batches in flight");
    std::process::exit(code);
}

/// `validate --data DIR`: what a run would do with the job's state in DIR's embedded log (read
/// only; the directory's lock is taken so a running job is not read under its feet).
async fn check_against_state(job: &Job, dir: &std::path::Path) -> anyhow::Result<Option<String>> {
    let log_dir = dir.join("log");
    if !log_dir.exists() {
        return Ok(None);
    }
    let _lock = crate::data_dir::DataDirLock::acquire(dir)?;
    let log = EmbeddedLog::open(&log_dir)
        .await
        .with_context(|| format!("opening the embedded state log in {}", log_dir.display()))?;
    let checked = crate::runtime::check_state(job, &log).await;
    log.close().await.ok();
    Ok(checked?)
}

/// Opens the state log `run` uses: none (`--in-memory`), a log cluster (`--log`) or the
/// embedded log under `--data` (returned too, so it can be closed cleanly).
/// With `timing`, appends are timed for the metrics endpoint ([`TimedLedgers`]).
async fn open_state(
    args: &StateArgs,
    timing: Option<Arc<LedgerTiming>>,
) -> anyhow::Result<(Option<StateOptions>, Option<EmbeddedLog>)> {
    if args.in_memory {
        return Ok((None, None));
    }
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("creating {}", args.data.display()))?;
    let (store, embedded): (Arc<dyn Ledgers>, _) = if args.log.is_empty() {
        let dir = args.data.join("log");
        let log = EmbeddedLog::open(&dir)
            .await
            .with_context(|| format!("opening the embedded state log in {}", dir.display()))?;
        (Arc::new(log.clone()), Some(log))
    } else {
        let options = ClientOptions {
            secret: load_secret(args.secret_file.as_deref())?,
            ..ClientOptions::default()
        };
        (
            Arc::new(LogClient::with_options(args.log.iter().cloned(), options)?),
            None,
        )
    };
    let store: Arc<dyn Ledgers> = match timing {
        Some(timing) => Arc::new(TimedLedgers::new(store, timing)),
        None => store,
    };
    let mut options = StateOptions::new(store, &args.data);
    options.fresh = args.fresh;
    options.compact_after_bytes = args.compact_bytes;
    options.dedup = DedupConfig {
        bucket_size: args.dedup_bucket_size,
        num_buckets: args.dedup_buckets,
        ..DedupConfig::default()
    };
    Ok((Some(options), embedded))
}

/// Parses `1=host:port,2=host:port`.
/// A client of the log servers at `log`, for their coordination log.
fn coordination_client(
    log: Vec<String>,
    secret_file: Option<PathBuf>,
) -> anyhow::Result<LogClient> {
    let options = ClientOptions {
        secret: load_secret(secret_file.as_deref())?,
        ..ClientOptions::default()
    };
    Ok(LogClient::with_options(log, options)?)
}

/// Every entry of the coordination log of the log servers at `log`.
async fn read_coordination_log(
    log: Vec<String>,
    secret_file: Option<PathBuf>,
) -> anyhow::Result<cluster::LogView> {
    let client = coordination_client(log, secret_file)?;
    cluster::read_entries(&client)
        .await
        .context("reading the coordination log")
}

/// The cluster secret from `--secret-file`, if given.
fn load_secret(path: Option<&std::path::Path>) -> anyhow::Result<Option<ClusterSecret>> {
    path.map(ClusterSecret::from_file)
        .transpose()
        .map_err(anyhow::Error::from)
}

/// Refuses to serve without a secret on an address other hosts may reach: anyone who reaches
/// it could append to ledgers, vote in Raft or install snapshots.
async fn refuse_open_listener(listen: &str) -> anyhow::Result<()> {
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host(listen)
        .await
        .with_context(|| format!("resolving --listen {listen}"))?
        .collect();
    if addrs.is_empty() || addrs.iter().any(|a| !a.ip().is_loopback()) {
        anyhow::bail!(
            "refusing to listen on {listen} without --secret-file: any host that reaches it \
             could append to ledgers, vote in Raft or install snapshots. Give every server and \
             client the same --secret-file PATH, or listen on a loopback address (127.0.0.1)"
        );
    }
    Ok(())
}

fn parse_cluster(s: &str) -> anyhow::Result<BTreeMap<u64, String>> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let (id, addr) = p
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--cluster: expected id=host:port, got {p:?}"))?;
            let id = id
                .trim()
                .parse()
                .with_context(|| format!("--cluster: bad id in {p:?}"))?;
            Ok((id, addr.trim().to_owned()))
        })
        .collect()
}

/// What the state log did: recoveries, bytes logged, duplicates skipped.
fn print_state_report(report: &JobReport) {
    for r in &report.recoveries {
        println!(
            "recovered {}: snapshot {}, {} records scanned, {} bytes read, {} batches replayed, \
             {} fenced, {} ids, dedup filter {}, {} firings synced again, {} ms",
            r.ledger,
            r.snapshot_position
                .map_or("none".to_owned(), |p| format!("at {p}")),
            r.records_scanned,
            r.bytes_read,
            r.batches,
            r.fenced,
            r.filter.map_or(0, |f| f.ids),
            match r.filter {
                None => "off",
                Some(f) if f.reused => "reused",
                Some(_) => "rebuilt",
            },
            r.pending_firings,
            r.millis
        );
    }
    let (records, bytes, segments) = report.logged;
    if records > 0 || report.duplicates > 0 {
        println!(
            "state log: {records} records, {bytes} bytes for {segments} segments ({:.1} bytes per \
             segment), {} duplicates skipped, {} snapshots",
            bytes as f64 / segments.max(1) as f64,
            report.duplicates,
            report.snapshots
        );
    }
}

/// A spinner with counts on a terminal; a plain line every `every_ms` when piped.
async fn show_progress(progress: Arc<Progress>, every_ms: u64) {
    let terminal = std::io::stderr().is_terminal();
    let bar = indicatif::ProgressBar::new_spinner();
    if !terminal {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {elapsed} {msg}")
            .expect("a valid template"),
    );
    let tick = if terminal { 100 } else { every_ms.max(10) };
    loop {
        tokio::time::sleep(Duration::from_millis(tick)).await;
        let msg = format!(
            "read {} · committed {} · written {} · rejected {} · logged {}",
            progress.read.load(Ordering::Relaxed),
            progress.committed.load(Ordering::Relaxed),
            progress.written.load(Ordering::Relaxed),
            progress.rejected.load(Ordering::Relaxed),
            progress.logged_segments.load(Ordering::Relaxed)
        );
        if terminal {
            bar.set_message(msg);
            bar.tick();
        } else {
            eprintln!("progress: {msg}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::error_report;
    use crate::runtime::RunError;

    /// A cause already named in its error's message is not repeated; a cause that is not
    /// (context added on the way up) is.
    #[test]
    fn an_error_report_names_each_cause_once() {
        let e = anyhow::Error::from(RunError::DedupFilter {
            ledger: "votes/g0/count/0".into(),
            source: sardonyx_state_log::Error::Io("disk full".into()),
        });
        assert_eq!(
            error_report(&e),
            "state log: dedup filter of votes/g0/count/0: I/O error: disk full"
        );
        let e = anyhow::anyhow!("no such file").context("reading votes.jsonl");
        assert_eq!(error_report(&e), "reading votes.jsonl: no such file");
    }
}
