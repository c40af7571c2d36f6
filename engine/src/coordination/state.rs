//! The replica's state: the processes in the cluster, the join ring and the joins in progress,
//! the jobs with their status and allocation (slots, owners, owner epochs, key groups), and
//! the record of entries that did not apply; with the queries every part of the coordination
//! code reads it through. How an entry changes it is [`replica`](super::replica)'s.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::entry::{EntryProblem, ProcessId, ProcessInfo, RestartReason};
use super::job_spec::{JobId, JobSpec};

/// A process that is in the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    /// Its id, address and slots.
    pub info: ProcessInfo,
    /// The position of the entry that let it in.
    pub joined_at: u64,
}

/// Where a join stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "stage", rename_all = "snake_case")]
pub enum JoinStage {
    /// Waiting for a watcher (every process in is busy with another join).
    Waiting,
    /// A watcher is chosen; it is to append `notify_join`.
    Prepared {
        /// The watcher.
        watcher: ProcessId,
    },
    /// The watcher is ready; the joiner is to append `accept_join`.
    Notified {
        /// The watcher.
        watcher: ProcessId,
    },
}

impl JoinStage {
    /// The watcher chosen, if any.
    pub fn watcher(self) -> Option<ProcessId> {
        match self {
            JoinStage::Waiting => None,
            JoinStage::Prepared { watcher } | JoinStage::Notified { watcher } => Some(watcher),
        }
    }
}

/// A join in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Join {
    /// The joining process.
    pub process: ProcessInfo,
    /// The position of its `prepare_join`.
    pub requested_at: u64,
    /// Where it stands.
    #[serde(flatten)]
    pub stage: JoinStage,
}

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Waiting until every task can be covered; it holds no process (a job that ran and lost
    /// the processes it needed is back here, its slots kept without owners).
    Pending,
    /// Every slot that has not completed has an owner.
    Running,
    /// Killed: it never runs again.
    Killed,
    /// Every slot completed and the job was sealed.
    Completed,
}

impl JobStatus {
    /// The status's name.
    pub fn name(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Running => "running",
            JobStatus::Killed => "killed",
            JobStatus::Completed => "completed",
        }
    }

    /// Whether the job may still run (pending or running).
    pub fn is_active(self) -> bool {
        matches!(self, JobStatus::Pending | JobStatus::Running)
    }
}

/// A half-open range of key groups `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct KeyGroupRange {
    /// The first key group.
    pub start: u32,
    /// One past the last.
    pub end: u32,
}

/// One slot of a task: one virtual peer's worth of work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    /// The process that runs it (none while its job is pending, or once it completed).
    pub owner: Option<ProcessId>,
    /// The process that owned it last (kept while it has none): placement gives the slot back
    /// to it when it can.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_owner: Option<ProcessId>,
    /// The position of the entry that gave it its current (or last) owner; 0 before any.
    pub epoch: u64,
    /// The key groups it owns (keyed tasks; empty otherwise), as ranges in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_groups: Vec<KeyGroupRange>,
    /// Whether it finished its work.
    pub completed: bool,
}

/// The slots of one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskAllocation {
    /// The position of the entry that set the task's slot count (and its key groups'
    /// division).
    pub layout: u64,
    /// Its slots, by index.
    pub slots: Vec<Slot>,
    /// The divisions of a keyed task before its current one, oldest first: a slot of a
    /// re-divided task gathers its first state from their slots' ledgers
    /// ([`crate::division::sources`]). Kept for the life of the job (a few ranges per slot per
    /// re-division): which of them still hold state is read from their ledgers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub past: Vec<PastLayout>,
}

/// A division of a task's key groups that a later one replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PastLayout {
    /// Its position (the [`TaskAllocation::layout`] it had).
    pub layout: u64,
    /// The key groups of each of its slots, by slot index.
    pub key_groups: Vec<Vec<KeyGroupRange>>,
}

/// A job in the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobState {
    /// What scheduling needs, and the job itself.
    pub spec: JobSpec,
    /// The position of its `submit_job`.
    pub submitted_at: u64,
    /// Where it stands.
    pub status: JobStatus,
    /// One per task of the spec, in order, once the job first started (empty before).
    pub tasks: Vec<TaskAllocation>,
    /// How its runs were restarted (`restart_job`), and why the cluster killed it, if it did.
    #[serde(default, skip_serializing_if = "Restarts::is_none")]
    pub restarts: Restarts,
}

/// A job's restarts (`restart_job` entries that applied to it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restarts {
    /// How many, for any reason.
    pub count: u32,
    /// Of those, how many after a failure (counted against
    /// [`MAX_RESTARTS`](super::entry::MAX_RESTARTS); replays after an expired ack tree are not).
    pub failures: u32,
    /// The last one: the position of its entry and its reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<(u64, RestartReason)>,
    /// Why the cluster killed the job: a failure after its restarts were used up (none if it
    /// was not, or was killed with `kill_job`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub killed_because: Option<String>,
}

impl Restarts {
    /// Whether nothing was restarted (or killed for it).
    pub fn is_none(&self) -> bool {
        self == &Restarts::default()
    }
}

impl JobState {
    /// Whether every slot of the job has completed (and it has slots).
    pub fn all_completed(&self) -> bool {
        !self.tasks.is_empty() && self.slots().all(|(_, _, s)| s.completed)
    }

    /// Every slot as `(task index, slot index, slot)`.
    pub fn slots(&self) -> impl Iterator<Item = (usize, usize, &Slot)> + '_ {
        self.tasks
            .iter()
            .enumerate()
            .flat_map(|(t, a)| a.slots.iter().enumerate().map(move |(i, s)| (t, i, s)))
    }
}

/// Why an entry did not apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Ignored {
    /// The entry's position is not after the last applied one.
    #[error("position {position} is not after the last applied ({last})")]
    OutOfOrder {
        /// The entry's position.
        position: u64,
        /// The last applied.
        last: u64,
    },
    /// Values no honest process appends.
    #[error("invalid entry: {problem}")]
    Invalid {
        /// What is wrong.
        problem: EntryProblem,
    },
    /// A join by a process that is already in or joining.
    #[error("process {process} is already in the cluster or joining")]
    AlreadyIn {
        /// The process.
        process: ProcessId,
    },
    /// A join by a process that left (a restarted process joins with a new id).
    #[error("process {process} left the cluster and cannot join again")]
    Departed {
        /// The process.
        process: ProcessId,
    },
    /// A join step that does not match the join's stage (a stale watcher, a repeated step).
    #[error("stale join step for process {joiner}")]
    StaleJoinStep {
        /// The joiner.
        joiner: ProcessId,
    },
    /// A leave of a process that is neither in nor joining.
    #[error("unknown process {process}")]
    UnknownProcess {
        /// The process.
        process: ProcessId,
    },
    /// A job id that is already pending or running.
    #[error("job \"{job}\" is already submitted")]
    DuplicateJob {
        /// The job.
        job: JobId,
    },
    /// An entry about a job that is not known.
    #[error("unknown job \"{job}\"")]
    UnknownJob {
        /// The job.
        job: JobId,
    },
    /// An entry about a job that is not in a state it applies to (killing a completed job,
    /// completing a slot of a pending one, sealing one not every slot of which completed).
    #[error("job \"{job}\" is {status}: the entry does not apply", status = .status.name())]
    JobState {
        /// The job.
        job: JobId,
        /// Its status.
        status: JobStatus,
    },
    /// A `complete_slot` for a slot that does not exist, already completed, or with an epoch
    /// that is not the slot's current one.
    #[error("stale completion of job \"{job}\" task {task} slot {slot} at epoch {epoch}")]
    StaleSlot {
        /// The job.
        job: JobId,
        /// The task index.
        task: u32,
        /// The slot index.
        slot: u32,
        /// The epoch it carried.
        epoch: u64,
    },
    /// A `restart_job` for a version that is not the job's current one (another process's
    /// restart for the same failure applied first, or a slot moved since).
    #[error("stale restart of job \"{job}\" at version {version} (now {current})")]
    StaleRestart {
        /// The job.
        job: JobId,
        /// The version it carried.
        version: u64,
        /// The job's version.
        current: u64,
    },
    /// A `restart_job` for a running job every slot of which completed: nothing runs to
    /// restart (the job awaits its seal).
    #[error("job \"{job}\" has no slot left to restart")]
    NothingToRestart {
        /// The job.
        job: JobId,
    },
}

/// The last entry that did not apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IgnoredEntry {
    /// Its position.
    pub position: u64,
    /// Why.
    pub reason: Ignored,
}

/// The state of the cluster, as every process holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    /// The position of the last entry played (0: none).
    pub position: u64,
    /// The processes that are in, by id.
    pub processes: BTreeMap<ProcessId, Process>,
    /// The join ring: each process watches the next, the last watches the first.
    pub ring: Vec<ProcessId>,
    /// The joins in progress, in the order they were asked for.
    pub joins: Vec<Join>,
    /// The processes that left; they cannot join again under the same id.
    pub departed: BTreeSet<ProcessId>,
    /// The jobs, in submission order.
    pub jobs: Vec<JobState>,
    /// How many entries did not apply.
    pub ignored: u64,
    /// The last entry that did not apply.
    pub last_ignored: Option<IgnoredEntry>,
}

impl Replica {
    /// An empty cluster, before the first entry.
    pub fn new() -> Self {
        Replica::default()
    }

    /// The job `id`.
    pub fn job(&self, id: &JobId) -> Option<&JobState> {
        self.jobs.iter().find(|j| &j.spec.id == id)
    }

    /// The join in progress of `process`.
    pub fn join_of(&self, process: ProcessId) -> Option<&Join> {
        self.joins.iter().find(|j| j.process.id == process)
    }

    /// How many slots `process` runs (slots it owns that have not completed).
    pub fn load(&self, process: ProcessId) -> usize {
        self.jobs
            .iter()
            .flat_map(JobState::slots)
            .filter(|(_, _, s)| s.owner == Some(process))
            .count()
    }

    /// The slots `process` owns, as `(job, task index, slot index, slot)`.
    pub fn slots_of(
        &self,
        process: ProcessId,
    ) -> impl Iterator<Item = (&JobId, usize, usize, &Slot)> + '_ {
        self.jobs.iter().flat_map(move |j| {
            j.slots()
                .filter(move |(_, _, s)| s.owner == Some(process))
                .map(move |(t, i, s)| (&j.spec.id, t, i, s))
        })
    }

    /// The replica as pretty JSON (`cluster-status --json`).
    pub fn to_json_string(&self) -> String {
        serde_json::to_string_pretty(self).expect("a replica always serializes")
    }
}
