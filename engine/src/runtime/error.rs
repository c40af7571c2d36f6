//! Why a job could not run to completion ([`RunError`]): one variant per cause, each naming
//! the task or ledger at fault and keeping the underlying error as its typed source.

use crate::job::ValidationError;
use crate::slot::StateError;

/// Why a job could not run to completion.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The job is not valid.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// A plugin could not be opened or failed, with the plugin's own message (plugins report
    /// their errors as strings by API).
    #[error("task \"{task}\": {message}")]
    Plugin {
        /// The task.
        task: String,
        /// The cause.
        message: String,
    },
    /// A lifecycle's `handle_exception` chose to kill the job.
    #[error("task \"{task}\" killed the job: {reason}")]
    Killed {
        /// The task.
        task: String,
        /// The error that led to it.
        reason: String,
    },
    /// A lifecycle's `handle_exception` chose to restart the task's peer (the job's peers
    /// restart from the committed positions; this is the error once restarts are exhausted).
    #[error("task \"{task}\": a lifecycle restarted the peer after: {reason}")]
    RestartRequested {
        /// The task.
        task: String,
        /// The error that led to it.
        reason: String,
    },
    /// A lifecycle's `handle_exception` chose to restart the task's peer, and the run keeps no
    /// state log to restart from.
    #[error(
        "task \"{task}\": a lifecycle asked to restart the peer after: {reason}; restarting \
         needs a state log, and this run keeps state in memory"
    )]
    CannotRestart {
        /// The task.
        task: String,
        /// The error that led to it.
        reason: String,
    },
    /// The job's peers were restarted as often as allowed and a peer failed again.
    #[error("task \"{task}\" failed again after {restarts} restarts: {cause}")]
    RestartsExhausted {
        /// The task whose peer failed.
        task: String,
        /// Restarts done.
        restarts: u32,
        /// The last failure.
        #[source]
        cause: Box<RunError>,
    },
    /// The state log failed on an operation on one ledger (its message includes the cause).
    #[error("state log: {source}")]
    Log {
        /// The ledger.
        ledger: String,
        /// The log's error.
        #[source]
        source: sardonyx_state_log::Error,
    },
    /// A record or snapshot in the state log cannot be decoded or does not fit the job.
    #[error("state log: {0}")]
    Corrupt(#[from] StateError),
    /// A newer run took the windowed slot over: this run's write was refused (it is a stale
    /// run, a "zombie") and it stops.
    #[error(
        "state log: windowed slot {ledger:?} was taken over by a newer run (epoch {current}): \
         the write of this run (epoch {fence}) was refused, and this run stops"
    )]
    Fenced {
        /// The slot's ledger.
        ledger: String,
        /// This run's epoch.
        fence: u64,
        /// The epoch of the run that took the slot over.
        current: u64,
    },
    /// The job's state was written with other peer counts than this run's.
    #[error(
        "state log: job {job:?} was run with other peer counts ({was}) than now ({now}); its \
         state cannot be split differently: run it with the same counts, or start over with \
         --fresh"
    )]
    PeersChanged {
        /// The job's name in the log.
        job: String,
        /// The peer counts of the run that wrote the state, `task=n, …`.
        was: String,
        /// This run's peer counts.
        now: String,
    },
    /// A task's peer count changed in a way its state cannot follow.
    #[error(
        "state log: job {job:?}: task {task:?} cannot go from {was} to {now} peers: {reason}; \
         run it with {was} peers, or start over with --fresh"
    )]
    CannotRescale {
        /// The job's name in the log.
        job: String,
        /// The task.
        task: String,
        /// Its peer count in the run that wrote the state.
        was: u64,
        /// Its peer count now.
        now: u64,
        /// Why not.
        reason: String,
    },
    /// The job's state was placed on slots another way than this run places keys (another
    /// hash, or another `key_groups`).
    #[error(
        "state log: job {job:?} was run with keys placed on slots another way ({was}; now \
         {now}), and its state is split by key ({split}): resumed, keys would be looked up on \
         other slots than their state and dedup ids. Run it with the key_groups it was run \
         with, finish it with the version that wrote it, or start over with --fresh"
    )]
    PlacementChanged {
        /// The job's name in the log.
        job: String,
        /// The routing the state was placed by.
        was: String,
        /// This version's routing.
        now: String,
        /// The tasks whose state is split by key.
        split: String,
    },
    /// A windowed slot's dedup filter (its local RocksDB) failed.
    #[error("state log: dedup filter of {ledger}: {source}")]
    DedupFilter {
        /// The slot's ledger.
        ledger: String,
        /// The filter's error.
        #[source]
        source: sardonyx_state_log::Error,
    },
    /// An output's sink failed (past its retries, for a retryable failure).
    #[error("task \"{task}\": {source}")]
    Sink {
        /// The output task.
        task: String,
        /// The cause.
        #[source]
        source: sardonyx_connectors::ConnectorError,
    },
    /// An input's source failed to read (past its own retries).
    #[error("task \"{task}\": {source}")]
    Source {
        /// The input task.
        task: String,
        /// The source's error.
        #[source]
        source: sardonyx_connectors::ConnectorError,
    },
    /// The error output itself failed (its file could not be created, written or flushed).
    #[error("cannot write the error output: {0}")]
    ErrorOutput(#[source] sardonyx_connectors::ConnectorError),
    /// A run's slot could not be opened for messages from other processes (it is open
    /// already: two runs of one job at once in this process).
    #[error("messaging: {0}")]
    Messaging(#[source] crate::messaging::MessagingError),
    /// A cluster cannot run the job's slots in this process (its spec does not give back a
    /// job).
    #[error("cannot run the job here: {0}")]
    NotRunnable(String),
    /// The run was aborted ([`super::RunOptions::abort`]): its peers were stopped where they
    /// were, and nothing was committed past what they had finished.
    #[error("the run was aborted")]
    Aborted,
    /// A bug: a peer's task panicked outside the per-segment path or was cancelled.
    #[error("internal error: a peer's task failed: {0}")]
    PeerTask(#[from] tokio::task::JoinError),
}

impl RunError {
    /// The task to restart the job's peers for, if this error is one the job recovers from: a
    /// lifecycle asked for a restart, or a peer of a task with `flux_policy: recover` failed
    /// with its plugin's, source's or sink's error. (A cluster's process decides with this
    /// whether its failed run asks the cluster for a restart or kills the job; `sardonyx run`
    /// also restarts for a panicked peer of such a task, which the error alone does not name.)
    pub fn recoverable_task(&self, job: &crate::job::Job) -> Option<&str> {
        let task = match self {
            RunError::RestartRequested { task, .. } => return Some(task),
            RunError::Plugin { task, .. }
            | RunError::Source { task, .. }
            | RunError::Sink { task, .. } => task,
            _ => return None,
        };
        (job.task(task)?.flux_policy == Some(crate::job::FluxPolicy::Recover)).then_some(task)
    }
}
