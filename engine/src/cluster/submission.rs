//! Submitting and killing jobs from outside the cluster (`sardonyx submit`, `sardonyx
//! kill-job`): an entry appended to the coordination log, and for `submit --wait`, the log
//! followed until the job completes or is killed.

use sardonyx_state_log::{CoordinationLog, Error as LogError, RequestId};

use crate::coordination::{Entry, JobId, JobSpec, JobStatus, Replica};
use crate::messaging::random_id;

/// How a job that was waited for ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    /// Every slot completed and the job was sealed, at this position.
    Completed {
        /// The position of the entry that sealed it.
        position: u64,
    },
    /// The job was killed (by `kill-job`, by a process whose run of it failed, or by a
    /// `restart_job` after its restarts were used up).
    Killed {
        /// The position of the entry that killed it.
        position: u64,
        /// Why, when the replica knows (restarts used up: the last failure).
        reason: Option<String>,
    },
}

/// What became of a submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    /// The job was taken at this position.
    Accepted {
        /// The position of its `submit_job`.
        position: u64,
    },
    /// The entry was appended but did not apply (the reason: e.g. a job with this id is
    /// already pending or running).
    Refused {
        /// The entry's position.
        position: u64,
        /// Why it did not apply.
        reason: String,
    },
}

/// Appends a `submit_job` for `spec` and tells whether the replica took it.
pub async fn submit(log: &dyn CoordinationLog, spec: JobSpec) -> Result<Submitted, LogError> {
    let entry = Entry::SubmitJob {
        job: Box::new(spec),
    };
    let position = log
        .append_entry(RequestId::new(random_id(), 1), entry.encode())
        .await?;
    let replica = replica_to(log, position).await?;
    match replica.last_ignored.filter(|i| i.position == position) {
        Some(ignored) => Ok(Submitted::Refused {
            position,
            reason: ignored.reason.to_string(),
        }),
        None => Ok(Submitted::Accepted { position }),
    }
}

/// Appends a `kill_job` for `job` if it is pending or running; `Ok(None)` (nothing appended)
/// if it is not known or has ended, with the reason.
pub async fn kill(log: &dyn CoordinationLog, job: &JobId) -> Result<Result<u64, String>, LogError> {
    let last = log.last_entry_position().await?;
    let replica = replica_to(log, last).await?;
    match replica.job(job).map(|j| j.status) {
        None => return Ok(Err(format!("no job \"{job}\" in the cluster"))),
        Some(status) if !status.is_active() => {
            return Ok(Err(format!("job \"{job}\" is {}", status.name())))
        }
        Some(_) => {}
    }
    let entry = Entry::KillJob { job: job.clone() };
    let position = log
        .append_entry(RequestId::new(random_id(), 1), entry.encode())
        .await?;
    Ok(Ok(position))
}

/// Follows the log from the start until `job` (submitted at `submitted`) completes or is
/// killed.
pub async fn wait_for(
    log: &dyn CoordinationLog,
    job: &JobId,
    submitted: u64,
) -> Result<JobOutcome, LogError> {
    let mut subscription = log.subscribe_entries(1)?;
    let mut replica = Replica::new();
    loop {
        let (position, bytes) = subscription.next().await?;
        if let Ok(entry) = Entry::decode(&bytes) {
            replica = replica.apply(&entry, position);
        }
        if position < submitted {
            continue;
        }
        match replica.job(job) {
            Some(j) if j.status == JobStatus::Completed => {
                return Ok(JobOutcome::Completed { position })
            }
            Some(j) if j.status == JobStatus::Killed => {
                return Ok(JobOutcome::Killed {
                    position,
                    reason: j.restarts.killed_because.clone(),
                })
            }
            _ => {}
        }
    }
}

/// The replica after the entry at `to`.
async fn replica_to(log: &dyn CoordinationLog, to: u64) -> Result<Replica, LogError> {
    let view = super::read_entries(log).await?;
    Ok(view.replica_at(Some(to.min(view.last))))
}
