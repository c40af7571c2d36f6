//! Starting a job: its options and report, validation, one attempt per start of the job's peers
//! (opening the state, spawning every peer on the topology, joining them), the restart loop,
//! and each input peer's commit loop (committed positions as its batches complete).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sardonyx_connectors::Positions;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::job::{ErrorsTarget, FluxPolicy, Job, Problem, TaskKind, ValidationError};
use crate::registry::Registry;
use sardonyx_state_log::Ledgers;

use super::ack;
use super::error::RunError;
use super::job_log::StateOptions;
use super::progress::Progress;
use super::progress::SlotRecovery;
use super::topology::{Layout, Topology};

/// How to run a job.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Run every task on this many peers, whatever the catalog says (used by tests to check
    /// that answers do not depend on the peer count).
    pub peers_override: Option<usize>,
    /// Where rejected segments go when the job does not say (default `sardonyx-errors.jsonl`).
    pub errors_path: PathBuf,
    /// Messages buffered per peer before senders wait (backpressure).
    pub channel_capacity: usize,
    /// Exactly-once state: windowed tasks log to this state log and deduplicate, inputs resume
    /// from their committed positions. `None` keeps everything in memory (nothing survives a
    /// crash, and nothing is deduplicated).
    pub state: Option<StateOptions>,
    /// Cancel it to stop the job: inputs stop reading, what was read is processed, positions
    /// are committed and outputs flushed, and the run returns a report with
    /// [`JobReport::stopped`] set (no job-completion firings: the job resumes where it stopped).
    pub stop: CancellationToken,
    /// How many times the job's peers may be restarted (`flux_policy: recover`, a lifecycle's
    /// `restart`) before the job fails with the cause.
    pub max_restarts: u32,
    /// Cancel it to abort the run: its peers are stopped where they are (and have ended when
    /// the run returns [`RunError::Aborted`]); nothing is committed past what they finished.
    /// A cluster aborts a process's run when the job's slots move.
    pub abort: CancellationToken,
}

/// The default of [`RunOptions::max_restarts`].
pub const MAX_RESTARTS: u32 = 3;

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            peers_override: None,
            errors_path: PathBuf::from("sardonyx-errors.jsonl"),
            // Four batches in flight per peer keep both cores busy; each one more is a batch
            // of segments held (8 held 1–3 MiB more in vote Q2/Q3, at no gain in speed).
            channel_capacity: 4,
            state: None,
            stop: CancellationToken::new(),
            max_restarts: MAX_RESTARTS,
            abort: CancellationToken::new(),
        }
    }
}

/// What a finished job did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobReport {
    /// Records read by input tasks.
    pub read: u64,
    /// Segments written by output tasks.
    pub written: u64,
    /// Segments (or input lines) sent to the error output.
    pub rejected: u64,
    /// Segments that came too late for a window (also counted in `rejected` when they went to
    /// the error output).
    pub late: u64,
    /// Segments that matched none of their task's flow conditions (a condition whose `to` is
    /// `"none"` is a match): dropped, or sent to the error output (and counted in `rejected`
    /// too) with the job's `unmatched: "error"`.
    pub unmatched: u64,
    /// Trigger firings.
    pub fired: u64,
    /// Segments skipped as already applied (dedup).
    pub duplicates: u64,
    /// Batch records appended to the state log, their bytes and the segment ids they carry.
    pub logged: (u64, u64, u64),
    /// Compaction snapshots written.
    pub snapshots: u64,
    /// What recovering each windowed slot read (empty without a state log).
    pub recoveries: Vec<SlotRecovery>,
    /// Per input task and peer, the committed positions: in each partition, everything before
    /// its position is fully processed.
    pub committed: BTreeMap<(String, usize), Positions>,
    /// The error file, if any rejection was written to one.
    pub errors_path: Option<PathBuf>,
    /// True if the run was stopped ([`RunOptions::stop`]) before its inputs were exhausted:
    /// the job is not complete, and running it again resumes where it stopped.
    pub stopped: bool,
    /// How many times the job's peers were restarted (counts such as `read` include what was
    /// read again after a restart).
    pub restarts: u32,
}

/// What `sardonyx run JOB` would do with the job's state in `store` (read only): `None` if it
/// has none, else a one-line summary (resumed; tasks rescaled). Errors are those a run would
/// stop with: another placement of keys (a changed `key_groups`), a peer count the state
/// cannot follow.
pub async fn check_state(job: &Job, store: &dyn Ledgers) -> Result<Option<String>, RunError> {
    let error_task = match &job.errors {
        Some(ErrorsTarget::Task(t)) => Some(t.clone()),
        _ => None,
    };
    let layout = Layout::of(job, None, error_task.as_deref());
    super::job_log::resume_check(job, store, &layout.peers).await
}

/// Runs `job` to completion in this process: validates it, starts every peer, waits until the
/// finite inputs are drained and every peer has finished.
pub async fn run_job(
    job: &Job,
    registry: &Registry,
    options: RunOptions,
) -> Result<JobReport, RunError> {
    run_job_with_progress(job, registry, options, Arc::new(Progress::default())).await
}

/// [`run_job`] with live counters the caller can watch.
pub async fn run_job_with_progress(
    job: &Job,
    registry: &Registry,
    options: RunOptions,
    progress: Arc<Progress>,
) -> Result<JobReport, RunError> {
    let (error_task, error_file) = prepare(job, registry, &options, &progress, false)?;
    // One error file for every attempt: a restart appends to what the failed attempt wrote.
    let mut syncs = None;
    let mut state = options.state.clone();
    let mut restarts = 0;
    let result = loop {
        let attempt = Attempt {
            job,
            registry,
            options: &options,
            state: state.clone(),
            progress: &progress,
            error_file: &error_file,
            error_task: &error_task,
        };
        match attempt.run(&mut syncs, None).await {
            Ok(mut report) => {
                report.restarts = restarts;
                break Ok(report);
            }
            Err(failure) => {
                let Some(task) = failure.restarts_job(job) else {
                    break Err(failure.error);
                };
                if options.stop.is_cancelled() {
                    break Err(failure.error);
                }
                if state.is_none() {
                    break Err(match failure.error {
                        RunError::RestartRequested { task, reason } => {
                            RunError::CannotRestart { task, reason }
                        }
                        other => other,
                    });
                }
                if restarts >= options.max_restarts {
                    break Err(RunError::RestartsExhausted {
                        task,
                        restarts,
                        cause: Box::new(failure.error),
                    });
                }
                restarts += 1;
                tracing::warn!(
                    %task, restart = restarts, error = %failure.error,
                    "a peer failed: restarting the job's peers from the committed positions"
                );
                // The restarted peers continue this run's state, never a fresh one.
                if let Some(s) = &mut state {
                    s.fresh = false;
                }
            }
        }
    };
    registry.drop_output_channels();
    result
}

/// What every run of `job` starts with: the job validated (for a cluster if `cluster`: its
/// `max_peers` acts there) and a recovery policy refused without a state log, its error task
/// if it has one, and its error file.
fn prepare(
    job: &Job,
    registry: &Registry,
    options: &RunOptions,
    progress: &Progress,
    cluster: bool,
) -> Result<(Option<String>, super::rejections::ErrorFile), RunError> {
    if cluster {
        job.validate_for_cluster(registry)?;
    } else {
        job.validate(registry)?;
    }
    if options.state.is_none() {
        refuse_recover_without_state(job)?;
    }
    let error_task = match &job.errors {
        Some(ErrorsTarget::Task(t)) => Some(t.clone()),
        _ => None,
    };
    let error_path = match &job.errors {
        Some(ErrorsTarget::Path(p)) => PathBuf::from(p),
        _ => options.errors_path.clone(),
    };
    let error_file = super::rejections::ErrorFile::new(error_path, progress.rejected.clone());
    Ok((error_task, error_file))
}

/// `flux_policy: recover` restarts peers from the state log; a run without one would lose the
/// windows' state and count replayed segments again, so it is refused before anything starts.
fn refuse_recover_without_state(job: &Job) -> Result<(), ValidationError> {
    let problems: Vec<Problem> = job
        .catalog
        .iter()
        .filter(|t| t.flux_policy == Some(FluxPolicy::Recover))
        .map(|t| {
            Problem::new(
                format!("task \"{}\"", t.name),
                Some("flux_policy"),
                "recover restarts the job's peers from the state log, and this run keeps no \
                 state (in memory): run it with a state log, or use \"kill\"",
            )
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ValidationError { problems })
    }
}

/// One start of every peer of a job (a run has several when peers are restarted).
struct Attempt<'a> {
    job: &'a Job,
    registry: &'a Registry,
    options: &'a RunOptions,
    state: Option<StateOptions>,
    progress: &'a Arc<Progress>,
    error_file: &'a super::rejections::ErrorFile,
    error_task: &'a Option<String>,
}

/// Why an attempt ended early: the error, and the task whose peer failed (if a peer did).
struct Failure {
    task: Option<String>,
    error: RunError,
}

impl From<RunError> for Failure {
    fn from(error: RunError) -> Self {
        Failure { task: None, error }
    }
}

impl Failure {
    /// The task to name if this failure restarts the job's peers: a lifecycle asked for it, or
    /// a peer of a task with `flux_policy: recover` was lost (a plugin failed, a peer panicked).
    /// Bad jobs, lifecycles' kills and errors of the state log or the error output do not.
    fn restarts_job(&self, job: &Job) -> Option<String> {
        match &self.error {
            RunError::RestartRequested { task, .. } => Some(task.clone()),
            RunError::Plugin { .. }
            | RunError::Source { .. }
            | RunError::Sink { .. }
            | RunError::PeerTask(_) => {
                let task = self.task.as_deref()?;
                (job.task(task)?.flux_policy == Some(FluxPolicy::Recover)).then(|| task.to_owned())
            }
            _ => None,
        }
    }
}

/// Runs this process's part of one run of `job` in a cluster: the peers `placement` puts here,
/// bridged to the others (`remote`). No restarts: a failure ends the run with its error, and
/// the cluster decides what follows. The report's counts are this process's.
pub async fn run_placed(
    job: &Job,
    registry: &Registry,
    options: RunOptions,
    placement: &super::remote::Placement,
    progress: Arc<Progress>,
) -> Result<JobReport, RunError> {
    let (error_task, error_file) = prepare(job, registry, &options, &progress, true)?;
    let attempt = Attempt {
        job,
        registry,
        options: &options,
        state: options.state.clone(),
        progress: &progress,
        error_file: &error_file,
        error_task: &error_task,
    };
    let result = attempt
        .run(&mut None, Some(placement))
        .await
        .map_err(|f| f.error);
    registry.drop_output_channels();
    result
}

impl Attempt<'_> {
    async fn run(
        self,
        syncs: &mut Option<Arc<super::window_stage::Syncs>>,
        placement: Option<&super::remote::Placement>,
    ) -> Result<JobReport, Failure> {
        let Attempt {
            job,
            registry,
            options,
            state,
            progress,
            error_file,
            error_task,
        } = self;
        use super::remote::SlotHome;
        let layout = match placement {
            Some(p) => {
                let mut layout = Layout::with_peers(
                    job,
                    |t| p.homes.get(t).map_or(0, Vec::len),
                    error_task.as_deref(),
                );
                layout.divisions = p.divisions.clone();
                layout
            }
            None => Layout::of(job, options.peers_override, error_task.as_deref()),
        };
        let here = |task: &str, peer: usize| {
            placement.is_none_or(|p| p.home(task, peer) == SlotHome::Here)
        };
        let local_inputs = job
            .catalog
            .iter()
            .filter(|t| t.kind == TaskKind::Input)
            .map(|t| {
                (0..layout.peers[&t.name])
                    .filter(|&i| here(&t.name, i))
                    .count()
            })
            .sum();
        let (topology, mut receivers) = Topology::new(
            &layout,
            options.channel_capacity,
            options.stop.clone(),
            local_inputs,
        );
        let mut bridges = match placement {
            Some(p) => Some(
                super::remote::start(p, &layout, &topology.senders, &mut receivers)
                    .map_err(RunError::Messaging)?,
            ),
            None => None,
        };
        let topology = Arc::new(topology);
        let stopped_early = topology.stopped_early.clone();
        let job_state = match state {
            Some(state) => {
                let windowed = job
                    .catalog
                    .iter()
                    .filter(|t| job.windows_of(&t.name).next().is_some())
                    .map(|t| t.name.clone())
                    .collect();
                let log = match placement {
                    Some(p) => {
                        super::job_log::JobLog::open_placed(
                            job,
                            state,
                            &layout.peers,
                            p.ledgers.clone(),
                            p.version,
                        )
                        .await?
                    }
                    None => {
                        super::job_log::JobLog::open(job, state, &layout.peers, windowed).await?
                    }
                };
                Some(Arc::new(log))
            }
            None => None,
        };

        let resuming = job_state.as_ref().is_some_and(|s| s.resumed);
        error_file.set_resuming(resuming);
        let syncs = match syncs {
            Some(s) => s.clone(),
            None => syncs
                .insert(Arc::new(super::progress::counted_syncs(
                    job,
                    super::window_stage::open_syncs(job, registry, resuming)
                        .map_err(|(task, message)| RunError::Plugin { task, message })?,
                    progress,
                )))
                .clone(),
        };
        let mut handles = tokio::task::JoinSet::new();
        let mut task_of = BTreeMap::new();
        let mut committers = Vec::new();
        let mut writers = Vec::new();
        for t in &job.catalog {
            let n = layout.peers[&t.name];
            let rxs = receivers.remove(&t.name).expect("made above");
            for (peer, rx) in rxs.into_iter().enumerate() {
                if !here(&t.name, peer) {
                    continue;
                }
                let ctx = super::context::PeerContext {
                    job: Arc::new(job.clone()),
                    registry: registry.clone(),
                    task: t.clone(),
                    peer,
                    n_peers: n,
                    topology: topology.clone(),
                    targets: layout.targets[&t.name].clone(),
                    error_task: error_task.clone().filter(|e| *e != t.name),
                    error_file: error_file.clone(),
                    progress: progress.clone(),
                    counters: progress.slot(&t.name, peer),
                    syncs: syncs.clone(),
                    state: job_state.clone(),
                };
                let handle = match t.kind {
                    TaskKind::Input => {
                        let (issuer, done) = ack::channel(ctx.id() as u32);
                        let key = (t.name.clone(), peer);
                        let (resume, writer) = match &job_state {
                            Some(js) => {
                                let log =
                                    super::input_log::InputLog::new(js.clone(), &t.name, peer);
                                let resume = log.resume_positions().await?;
                                let (tx, rx) = tokio::sync::watch::channel((resume.clone(), 0));
                                writers.push(tokio::spawn(log.write_loop(rx, progress.clone())));
                                (resume, Some(tx))
                            }
                            None => (Positions::new(), None),
                        };
                        // The source is told of committed positions too (Kafka stores them in
                        // its consumer group); the state log stays the resume point.
                        let (to_source, committed_rx) = tokio::sync::watch::channel(resume.clone());
                        let start = resume.clone();
                        let counts = progress.clone();
                        committers.push(tokio::spawn(async move {
                            let loop_ = commit_loop(done, start, writer, to_source, &counts);
                            (key, loop_.await)
                        }));
                        handles.spawn(super::input_peer::run_input(
                            ctx,
                            issuer,
                            resume,
                            committed_rx,
                        ))
                    }
                    TaskKind::Function | TaskKind::Output => {
                        handles.spawn(super::worker_peer::run_worker(ctx, rx))
                    }
                };
                task_of.insert(handle.id(), t.name.clone());
            }
        }
        drop(topology);
        drop(job_state);

        let mut first_error = join_peers(handles, &task_of, &options.abort).await;
        if first_error.is_none() {
            // What was sent to other processes is acknowledged, and what came from them is
            // finished here.
            if let Some(b) = &mut bridges {
                tokio::select! {
                    () = b.finished() => {}
                    () = options.abort.cancelled() => first_error = Some(RunError::Aborted.into()),
                }
            }
        }
        drop(bridges);
        let aborted = first_error
            .as_ref()
            .is_some_and(|f| matches!(f.error, RunError::Aborted));
        if aborted {
            tracing::info!("aborted: every peer of the run here has ended");
        }
        // Every peer has ended, so every ack is released or poisoned and the committers end;
        // their last positions are written before a restart reads them back.
        let mut committed = BTreeMap::new();
        for c in committers {
            let (key, positions) = c.await.map_err(RunError::PeerTask)?;
            if !positions.is_empty() {
                committed.insert(key, positions);
            }
        }
        for w in writers {
            w.await.map_err(RunError::PeerTask)??;
        }
        if aborted {
            tracing::info!("aborted: the inputs' committed positions are written");
        }
        if let Some(failure) = first_error {
            return Err(failure);
        }
        error_file.flush().map_err(RunError::ErrorOutput)?;
        let rejected = progress.rejected.load(Ordering::Relaxed);
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Ok(JobReport {
            read: progress.read.load(Ordering::Relaxed),
            written: progress.written.load(Ordering::Relaxed),
            rejected,
            late: progress.late.load(Ordering::Relaxed),
            unmatched: load(&progress.unmatched),
            fired: progress.fired.load(Ordering::Relaxed),
            duplicates: load(&progress.duplicates),
            logged: (
                load(&progress.logged_records),
                load(&progress.logged_bytes),
                load(&progress.logged_segments),
            ),
            snapshots: load(&progress.snapshots),
            recoveries: progress.recoveries.lock().expect("recoveries lock").clone(),
            committed,
            errors_path: (rejected > 0 && error_task.is_none())
                .then(|| error_file.path().to_path_buf()),
            stopped: stopped_early.load(Ordering::SeqCst),
            restarts: 0,
        })
    }
}

/// Waits for every peer of an attempt; the first failure (with the task whose peer failed)
/// stops every other peer, since peers downstream of a failed one would otherwise wait for it
/// forever.
async fn join_peers(
    mut handles: tokio::task::JoinSet<Result<(), RunError>>,
    task_of: &BTreeMap<tokio::task::Id, String>,
    abort: &CancellationToken,
) -> Option<Failure> {
    let mut first_error: Option<Failure> = None;
    loop {
        let joined = tokio::select! {
            joined = handles.join_next_with_id() => match joined {
                Some(joined) => joined,
                None => break,
            },
            () = abort.cancelled(), if first_error.is_none() => {
                // Every peer has ended (its state dropped: files, filters) when this returns.
                handles.shutdown().await;
                return Some(RunError::Aborted.into());
            }
        };
        let (id, result) = match joined {
            Ok((id, r)) => (id, r),
            Err(e) if e.is_cancelled() => continue,
            Err(e) => (e.id(), Err(RunError::PeerTask(e))),
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "peer failed");
            if first_error.is_none() {
                first_error = Some(Failure {
                    task: task_of.get(&id).cloned(),
                    error: e,
                });
                handles.abort_all();
            }
        }
    }
    first_error
}

/// Advances an input peer's committed positions as its batches complete, and hands each new
/// value to the position writer (if the job has a state log; with the records committed so
/// far, which it counts in [`Progress::committed`] once written) and to the input peer (which
/// commits it to its source). Without a state log the records are counted here.
async fn commit_loop(
    mut done: mpsc::UnboundedReceiver<ack::Completion>,
    resume: Positions,
    writer: Option<tokio::sync::watch::Sender<(Positions, u64)>>,
    to_source: tokio::sync::watch::Sender<Positions>,
    progress: &Progress,
) -> Positions {
    let mut c = ack::Committer::new(resume);
    let mut counted = 0;
    while let Some(d) = done.recv().await {
        if let Some(ps) = c.complete(d) {
            tracing::trace!(positions = ?ps, "input positions committed");
            let ps = ps.clone();
            match &writer {
                Some(w) => {
                    let _ = w.send((ps.clone(), c.records()));
                }
                None => {
                    progress
                        .committed
                        .fetch_add(c.records() - counted, Ordering::Relaxed);
                    counted = c.records();
                }
            }
            let _ = to_source.send(ps);
        }
    }
    c.committed().clone()
}
