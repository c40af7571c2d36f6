//! The jobs a peer process runs: after every entry of the coordination log, the slots the
//! replica gives this process are compared with what runs here, and runs are started and
//! stopped to match (DESIGN §6 "slots that move").
//!
//! A job runs in **runs**. A run is named by the job's **version**: the greatest owner epoch
//! of its slots (the position of the entry that last moved one) or layout position. Every
//! process with slots of the job runs its own slots of the same run ([`run_placed`]): the same
//! topology everywhere, bridged over messaging under the slot addresses `job@version`. When a
//! slot moves (a process left, or joined and took slots), the version changes, and every
//! process stops its run of the old version at once (its peers are aborted: nothing is
//! committed past what was acknowledged) and starts the new one, which recovers each windowed
//! slot from its ledger and resumes each input from its committed positions; the dedup
//! filters drop what is read again. A run's version is also its **epoch** in the job's
//! state: every process of the run fences the ledgers it takes with it, so no run of an older
//! version can write there afterwards (a cut-off process that kept running cannot write after
//! its slots moved), while the processes of one run may fence the same past ledgers side by
//! side when a re-divided task gathers its state.
//!
//! A keyed task's key groups are divided among its slots as the replica says: contiguously
//! until the task is re-divided while running (a process joined or left and the task's slot
//! count changed within its `min_peers`..`max_peers`), then by [`Division`] tables that
//! routing looks up; the task's new slots gather their state from the slots of the
//! divisions before ([`crate::division::sources`]).
//!
//! A run that ends without error in this process — its inputs exhausted, every peer here
//! finished, everything it sent elsewhere acknowledged — completes its slots: the process
//! appends `complete_slot` for each (with the owner epoch it held), and the sealer seals the
//! job once every slot completed. A run that fails with a cause the job recovers from (a peer
//! of a task with `flux_policy: recover` lost to its plugin's error, a lifecycle's `restart`)
//! asks the cluster to restart the job (`restart_job` at the run's version: every process then
//! starts a new run, as after a move, and the cluster kills the job once its failures exceed
//! the restarts allowed); any other failure (the state log refusing, a plugin error without
//! `recover`) kills the job (`kill_job`): another run would meet the same error. So does a run
//! with a batch whose ack tree expired ([`RemoteAcks::run`]): the process asks for a restart,
//! which replays the batch from its input. A run fenced by a newer one ends quietly.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use sardonyx_state_log::Ledgers;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::coordination::placement::owner_table;
use crate::coordination::{
    Entry, JobId, JobState, JobStatus, KeyGroupRange, ProcessId, Replica, RestartReason,
    TaskAllocation,
};
use crate::division::Division;
use crate::messaging::Messenger;
use crate::registry::Registry;
use crate::runtime::remote::{Placement, RemoteAcks, SlotHome};
use crate::runtime::{
    run_placed, JobReport, Progress, RunError, RunOptions, StateOptions, TaskLedgers,
};

/// What a peer process needs to run jobs.
#[derive(Clone)]
pub struct JobContext {
    /// The named code jobs refer to.
    pub registry: Registry,
    /// The state log (the log cluster the process coordinates through).
    pub store: Arc<dyn Ledgers>,
    /// A local directory for the dedup filters and the error files (`<dir>/<job>/…`).
    pub data: PathBuf,
    /// Compact a windowed slot's ledger once this many bytes were logged since its snapshot.
    pub compact_after_bytes: u64,
    /// The counters every run of this process adds to (what it read, wrote, logged…, across
    /// jobs and runs: a run after a move counts what it reads again).
    pub progress: Arc<Progress>,
}

impl std::fmt::Debug for JobContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobContext")
            .field("data", &self.data)
            .finish_non_exhaustive()
    }
}

/// The end of a run in this process.
#[derive(Debug)]
pub(super) struct RunEnd {
    /// The job.
    pub job: JobId,
    /// The run's version.
    pub version: u64,
    /// How it ended ([`RunError::Aborted`]: stopped because the job's slots moved).
    pub result: Result<JobReport, RunError>,
}

/// One slot this process holds in a run: `(task index, slot index, owner epoch)`.
type HeldSlot = (u32, u32, u64);

struct Running {
    version: u64,
    slots: Vec<HeldSlot>,
    /// Cancelled to abort the run ([`RunOptions::abort`]).
    abort: CancellationToken,
    handle: JoinHandle<()>,
}

/// The runs of this process, one per job at most.
pub(super) struct JobRunner {
    /// The runs' own threads: a run's busy peers (parsing, recovering a slot, RocksDB) never
    /// hold up the process's coordination and heartbeats, which stay on the caller's runtime.
    runtime: Option<tokio::runtime::Runtime>,
    context: JobContext,
    messenger: Messenger,
    acks: Arc<RemoteAcks>,
    me: ProcessId,
    runs: BTreeMap<JobId, Running>,
    ended: mpsc::UnboundedSender<RunEnd>,
}

/// The version of a job's current run ([`JobState::version`]: the greatest owner epoch of its
/// slots and layout position of its tasks; a `restart_job` sets it).
pub(crate) fn version(job: &JobState) -> u64 {
    job.version()
}

impl JobRunner {
    /// A runner whose runs report their ends on `ended`.
    /// The names (`job@version`) of runs with a batch whose ack tree expired are sent on
    /// `expired` ([`RemoteAcks::run`]; [`JobRunner::run_named`] tells which run it is).
    pub(super) fn new(
        context: JobContext,
        messenger: Messenger,
        ended: mpsc::UnboundedSender<RunEnd>,
        expired: mpsc::UnboundedSender<String>,
    ) -> std::io::Result<JobRunner> {
        let acks = RemoteAcks::new();
        tokio::spawn(acks.clone().run(messenger.clone(), expired));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name("sardonyx-run")
            .enable_all()
            .build()?;
        Ok(JobRunner {
            runtime: Some(runtime),
            context,
            me: messenger.process(),
            messenger,
            acks,
            runs: BTreeMap::new(),
            ended,
        })
    }

    /// Starts and stops runs so that this process runs exactly its slots of every running job
    /// of `replica`.
    pub(super) fn sync(&mut self, replica: &Replica) {
        let mut wanted: BTreeMap<JobId, (u64, Vec<HeldSlot>)> = BTreeMap::new();
        for job in &replica.jobs {
            let id = &job.spec.id;
            if job.status != JobStatus::Running {
                continue;
            }
            let mine: Vec<HeldSlot> = job
                .slots()
                .filter(|(_, _, s)| s.owner == Some(self.me) && !s.completed)
                .map(|(t, i, s)| (t as u32, i as u32, s.epoch))
                .collect();
            if !mine.is_empty() {
                wanted.insert(id.clone(), (version(job), mine));
            }
        }
        // A run stops when its job stops running or moves to another version — not when its
        // slots complete under it: the other processes' runs of this version wait for its
        // slots' `Done`s (a completion appended by its previous run can land after this run
        // started), and a finished run stays listed until then.
        let stale: Vec<JobId> = self
            .runs
            .iter()
            .filter(|(id, run)| {
                replica
                    .job(id)
                    .is_none_or(|j| j.status != JobStatus::Running || version(j) != run.version)
            })
            .map(|(id, _)| id.clone())
            .collect();
        let mut stopped = BTreeMap::new();
        for id in stale {
            let run = self.runs.remove(&id).expect("listed");
            tracing::info!(job = %id, version = run.version, "stopping this process's run");
            run.abort.cancel();
            stopped.insert(id, run.handle);
        }
        for (id, (version, slots)) in wanted {
            if self.runs.contains_key(&id) {
                continue;
            }
            let job = replica.job(&id).expect("listed");
            let previous = stopped.remove(&id);
            let abort = CancellationToken::new();
            match self.start(&id, job, version, slots.clone(), previous, abort.clone()) {
                Ok(handle) => {
                    self.runs.insert(
                        id,
                        Running {
                            version,
                            slots,
                            abort,
                            handle,
                        },
                    );
                }
                Err(reason) => {
                    tracing::error!(job = %id, %reason, "cannot run the job's slots here");
                    let _ = self.ended.send(RunEnd {
                        job: id,
                        version,
                        result: Err(RunError::NotRunnable(reason)),
                    });
                }
            }
        }
    }

    /// The slots this process held in run `version` of `job`, if that is its current run.
    /// The run stays listed (ended) until the replica moves on — its slots completed, the job
    /// killed, or a new version — so that it is not started again in the meantime.
    pub(super) fn ended(&mut self, job: &JobId, version: u64) -> Option<Vec<HeldSlot>> {
        match self.runs.get(job) {
            Some(run) if run.version == version => Some(run.slots.clone()),
            _ => None,
        }
    }

    /// The job and version of the run named `name` (`job@version`, as in slot addresses), if it
    /// is a current run of this process.
    pub(super) fn run_named(&self, name: &str) -> Option<(JobId, u64)> {
        self.runs
            .iter()
            .find(|(id, run)| format!("{id}@{}", run.version) == name)
            .map(|(id, run)| (id.clone(), run.version))
    }

    /// Whether a run of this process is still going (not ended).
    pub(super) fn has_live_runs(&self) -> bool {
        self.runs.values().any(|r| !r.handle.is_finished())
    }

    /// Stops every run (the process is leaving).
    pub(super) fn stop_all(&mut self) {
        for (_, run) in std::mem::take(&mut self.runs) {
            run.abort.cancel();
        }
    }

    fn start(
        &self,
        id: &JobId,
        state: &JobState,
        version: u64,
        slots: Vec<HeldSlot>,
        previous: Option<JoinHandle<()>>,
        abort: CancellationToken,
    ) -> Result<JoinHandle<()>, String> {
        let job = state.spec.job().map_err(|e| e.to_string())?;
        let mut homes = BTreeMap::new();
        let (mut divisions, mut ledgers) = (BTreeMap::new(), BTreeMap::new());
        for (t, alloc) in state.tasks.iter().enumerate() {
            let task = &state.spec.tasks[t];
            let (current, past) = divisions_of(alloc, task.keyed, job.key_groups());
            if !current.1.is_contiguous() {
                divisions.insert(task.name.clone(), current.1.clone());
            }
            if job.windows_of(&task.name).next().is_some() {
                ledgers.insert(task.name.clone(), TaskLedgers { current, past });
            }
            let home = alloc
                .slots
                .iter()
                .map(|s| match s.owner {
                    _ if s.completed => SlotHome::Completed,
                    Some(p) if p == self.me => SlotHome::Here,
                    Some(p) => SlotHome::There(p),
                    // A running job has an owner for every slot that has not completed.
                    None => SlotHome::Completed,
                })
                .collect();
            homes.insert(task.name.clone(), home);
        }
        let placement = Placement {
            messenger: self.messenger.clone(),
            run: format!("{id}@{version}"),
            version,
            homes,
            divisions,
            ledgers,
            acks: self.acks.clone(),
        };
        let dir = self.context.data.join(&id.0);
        let mut state_options = StateOptions::new(self.context.store.clone(), &dir);
        state_options.fresh = false;
        state_options.compact_after_bytes = self.context.compact_after_bytes;
        let options = RunOptions {
            errors_path: dir.join("errors.jsonl"),
            state: Some(state_options),
            abort,
            ..RunOptions::default()
        };
        let registry = self.context.registry.clone();
        let progress = self.context.progress.clone();
        let ended = self.ended.clone();
        let messenger = self.messenger.clone();
        let id = id.clone();
        let prefix = format!("{id}@");
        tracing::info!(job = %id, version, slots = ?slots, "starting this process's run");
        let runtime = self.runtime.as_ref().expect("until dropped");
        Ok(runtime.spawn(async move {
            if let Some(previous) = previous {
                // The superseded run's peers end before this one opens its slots.
                let _ = previous.await;
                tracing::info!(job = %id, version, "the superseded run ended");
            }
            messenger.discard_slots(|a| {
                a.job
                    .strip_prefix(&prefix)
                    .and_then(|v| v.parse::<u64>().ok())
                    .is_some_and(|v| v < version)
            });
            if let Err(e) = std::fs::create_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot create the job's directory");
            }
            let result = run_placed(&job, &registry, options, &placement, progress).await;
            let _ = ended.send(RunEnd {
                job: id,
                version,
                result,
            });
        }))
    }
}

impl Drop for JobRunner {
    fn drop(&mut self) {
        // Dropped inside the caller's runtime, which a blocking shutdown would stall.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A task's current division of key groups and its past layouts with theirs, as its ledgers
/// name them: the task's first layout is layout 0 (`g<gen>/<task>/<peer>`), a later one the
/// position of the entry that re-divided it. A task that is not keyed has the contiguous
/// division of its slots.
fn divisions_of(
    alloc: &TaskAllocation,
    keyed: bool,
    key_groups: usize,
) -> ((u64, Division), Vec<(u64, Division)>) {
    let n = alloc.slots.len();
    let first = alloc.past.first().map_or(alloc.layout, |p| p.layout);
    let id = |layout: u64| if layout == first { 0 } else { layout };
    let division = |slots: usize, ranges: Vec<&[KeyGroupRange]>| {
        Division::from_owners(slots, &owner_table(ranges, key_groups))
    };
    let current = if keyed && n > 0 {
        division(
            n,
            alloc
                .slots
                .iter()
                .map(|s| s.key_groups.as_slice())
                .collect(),
        )
    } else {
        Division::contiguous(n, key_groups)
    };
    let past = alloc
        .past
        .iter()
        .map(|p| {
            let ranges = p.key_groups.iter().map(Vec::as_slice).collect();
            (id(p.layout), division(p.key_groups.len(), ranges))
        })
        .collect();
    ((id(alloc.layout), current), past)
}

/// What this process appends when its run of a job ended: `complete_slot` for each of its
/// slots when the run finished; when it failed, `restart_job` at the run's version if the job
/// (`job`, as the replica holds it) recovers from the failure, else `kill_job`; nothing when it
/// was aborted or a newer run fenced it.
pub(super) fn entries_after(
    end: &RunEnd,
    slots: &[HeldSlot],
    job: Option<&JobState>,
) -> Vec<Entry> {
    match &end.result {
        Ok(report) if !report.stopped => slots
            .iter()
            .map(|&(task, slot, epoch)| Entry::CompleteSlot {
                job: end.job.clone(),
                task,
                slot,
                epoch,
            })
            .collect(),
        Ok(_) => Vec::new(),
        Err(RunError::Fenced { .. } | RunError::Aborted) => Vec::new(),
        Err(error) => {
            let parsed = job.and_then(|j| j.spec.job().ok());
            match parsed.as_ref().and_then(|j| error.recoverable_task(j)) {
                Some(task) => vec![Entry::RestartJob {
                    job: end.job.clone(),
                    version: end.version,
                    reason: RestartReason::failed(task, &error.to_string()),
                }],
                None => vec![Entry::KillJob {
                    job: end.job.clone(),
                }],
            }
        }
    }
}
