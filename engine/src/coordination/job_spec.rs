//! What the coordination replica knows of a job: the part of a [`Job`] scheduling reads (its
//! id, schedulers, percentage, key groups, and per task its kind, peer bounds and whether its
//! key groups can be re-divided), plus the job itself as JSON text for the processes that will
//! run it. Built from a real job by [`JobSpec::from_job`], carried by `submit_job`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::job::{Job, JobScheduler, TaskKind, TaskScheduler};
use crate::key_groups::MAX_KEY_GROUPS;

/// The most tasks a job spec may have.
pub const MAX_TASKS: usize = 1024;

/// The most peers a task may ask for (`n_peers`, `min_peers`, `max_peers`).
pub const MAX_TASK_PEERS: u32 = 65_536;

/// The longest job id or task name, in bytes.
pub const MAX_NAME_BYTES: usize = 256;

/// A job's id in the cluster (the job's `id`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub String);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How many peers a task runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerBounds {
    /// Exactly this many (`n_peers`, or 1 when nothing is given).
    Exact(u32),
    /// Between `min` and `max` (`min_peers`/`max_peers`; no `max` is no upper bound).
    Range {
        /// The least.
        min: u32,
        /// The greatest, if any.
        max: Option<u32>,
    },
}

impl PeerBounds {
    /// The least number of peers.
    pub fn min(self) -> u32 {
        match self {
            PeerBounds::Exact(n) | PeerBounds::Range { min: n, .. } => n,
        }
    }

    /// The greatest number of peers (`None`: no bound).
    pub fn max(self) -> Option<u32> {
        match self {
            PeerBounds::Exact(n) => Some(n),
            PeerBounds::Range { max, .. } => max,
        }
    }
}

/// What scheduling knows of one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskDemand {
    /// The task's name.
    pub name: String,
    /// Input, function or output.
    pub kind: TaskKind,
    /// How many peers it runs on.
    pub peers: PeerBounds,
    /// Whether its segments are placed by key group (grouped, or windowed: an ungrouped
    /// windowed task is placed by its uniqueness id): its slots own key groups.
    pub keyed: bool,
    /// Whether its slot count may change while the job runs, its key groups re-divided
    /// ([`crate::key_groups::reassign`]): windowed and grouped tasks only.
    pub rescalable: bool,
    /// Its share of the job's peers in percent (the percentage task scheduler).
    pub percentage: Option<u32>,
}

/// What the replica knows of a job: what scheduling needs, and the job itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The job's id.
    pub id: JobId,
    /// How the cluster's peers are divided between this job and the others.
    pub job_scheduler: JobScheduler,
    /// How the job's peers are divided among its tasks.
    pub task_scheduler: TaskScheduler,
    /// The job's percentage of the peers (the percentage job scheduler).
    pub percentage: Option<u32>,
    /// The number of key groups of the job's keyed tasks.
    pub key_groups: u32,
    /// The tasks, in catalog order.
    pub tasks: Vec<TaskDemand>,
    /// The job, as JSON text, for the processes that run it.
    pub job_json: String,
}

/// A job that cannot become a spec.
#[derive(Debug, thiserror::Error)]
pub enum JobSpecError {
    /// A cluster knows jobs by id.
    #[error("a job submitted to a cluster needs an id")]
    MissingId,
    /// The spec would not be accepted by the replica.
    #[error("the job cannot be scheduled: {0}")]
    Invalid(#[source] SpecProblem),
}

/// Why a spec (from [`JobSpec::from_job`] or from the log) is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum SpecProblem {
    /// No tasks, or more than [`MAX_TASKS`].
    #[error("{count} tasks (1 to {MAX_TASKS})")]
    TaskCount {
        /// How many.
        count: usize,
    },
    /// An empty or too long job id or task name.
    #[error("a name of {len} bytes (1 to {MAX_NAME_BYTES})")]
    Name {
        /// Its length.
        len: usize,
    },
    /// Two tasks of one name.
    #[error("task \"{0}\" appears twice")]
    DuplicateTask(String),
    /// Peer bounds that no count satisfies, or past [`MAX_TASK_PEERS`].
    #[error(
        "task \"{task}\": peer bounds {bounds:?} (at least 1, at most {MAX_TASK_PEERS}, min ≤ max)"
    )]
    Peers {
        /// The task.
        task: String,
        /// Its bounds.
        bounds: PeerBounds,
    },
    /// Key groups out of 1..=[`MAX_KEY_GROUPS`].
    #[error("{0} key groups (1 to {MAX_KEY_GROUPS})")]
    KeyGroups(u32),
    /// A percentage scheduler without its percentages, or percentages that do not add up.
    #[error("percentages: {0}")]
    Percentages(String),
}

/// `n_peers` or `min_peers`/`max_peers` of a catalog entry as bounds (1 when nothing is given).
fn bounds_of(n: Option<usize>, min: Option<usize>, max: Option<usize>) -> PeerBounds {
    let clip = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    match (n, min, max) {
        (Some(n), ..) => PeerBounds::Exact(clip(n)),
        (None, None, None) => PeerBounds::Exact(1),
        (None, min, max) => PeerBounds::Range {
            min: min.map_or(1, clip),
            max: max.map(clip),
        },
    }
}

impl JobSpec {
    /// The spec of `job` (which should have passed [`Job::validate`]): its id is required.
    pub fn from_job(job: &Job) -> Result<JobSpec, JobSpecError> {
        let id = job.id.clone().ok_or(JobSpecError::MissingId)?;
        let tasks = job
            .catalog
            .iter()
            .map(|t| {
                let windowed = job.windows_of(&t.name).next().is_some();
                let grouped = t.group_by_key.is_some() || t.group_by_fn.is_some();
                TaskDemand {
                    name: t.name.clone(),
                    kind: t.kind,
                    peers: bounds_of(t.n_peers, t.min_peers, t.max_peers),
                    keyed: grouped || windowed,
                    rescalable: grouped && windowed,
                    percentage: t.percentage,
                }
            })
            .collect();
        let spec = JobSpec {
            id: JobId(id),
            job_scheduler: job.job_scheduler.unwrap_or_default(),
            task_scheduler: job.task_scheduler.unwrap_or_default(),
            percentage: job.percentage,
            key_groups: u32::try_from(job.key_groups()).unwrap_or(u32::MAX),
            tasks,
            job_json: serde_json::to_string(job).expect("a job always serializes"),
        };
        spec.check().map_err(JobSpecError::Invalid)?;
        Ok(spec)
    }

    /// Whether the spec is within the limits and its scheduling keys are consistent (what
    /// validation checks of a job, checked again of an entry read from the log).
    pub fn check(&self) -> Result<(), SpecProblem> {
        let name_ok = |s: &str| !s.is_empty() && s.len() <= MAX_NAME_BYTES;
        if !name_ok(&self.id.0) {
            return Err(SpecProblem::Name {
                len: self.id.0.len(),
            });
        }
        if self.tasks.is_empty() || self.tasks.len() > MAX_TASKS {
            return Err(SpecProblem::TaskCount {
                count: self.tasks.len(),
            });
        }
        if self.key_groups == 0 || self.key_groups as usize > MAX_KEY_GROUPS {
            return Err(SpecProblem::KeyGroups(self.key_groups));
        }
        let mut names = std::collections::BTreeSet::new();
        for t in &self.tasks {
            if !name_ok(&t.name) {
                return Err(SpecProblem::Name { len: t.name.len() });
            }
            if !names.insert(t.name.as_str()) {
                return Err(SpecProblem::DuplicateTask(t.name.clone()));
            }
            let (min, max) = (t.peers.min(), t.peers.max());
            if min == 0
                || min > MAX_TASK_PEERS
                || max.is_some_and(|m| m < min || m > MAX_TASK_PEERS)
            {
                return Err(SpecProblem::Peers {
                    task: t.name.clone(),
                    bounds: t.peers,
                });
            }
        }
        let in_range = |p: Option<u32>| p.is_some_and(|p| (1..=100).contains(&p));
        if self.job_scheduler == JobScheduler::Percentage && !in_range(self.percentage) {
            return Err(SpecProblem::Percentages(
                "the percentage job scheduler needs a job percentage of 1 to 100".into(),
            ));
        }
        if self.task_scheduler == TaskScheduler::Percentage {
            if !self.tasks.iter().all(|t| in_range(t.percentage)) {
                return Err(SpecProblem::Percentages(
                    "the percentage task scheduler needs every task's percentage (1 to 100)".into(),
                ));
            }
            let sum: u32 = self.tasks.iter().filter_map(|t| t.percentage).sum();
            if sum != 100 {
                return Err(SpecProblem::Percentages(format!(
                    "the tasks' percentages add up to {sum}, not 100"
                )));
            }
        }
        Ok(())
    }

    /// The index of task `name`.
    pub fn task_index(&self, name: &str) -> Option<usize> {
        self.tasks.iter().position(|t| t.name == name)
    }

    /// The job, read back from its JSON text.
    pub fn job(&self) -> Result<Job, crate::job::JobFileError> {
        Job::from_json_str(&self.job_json)
    }
}
