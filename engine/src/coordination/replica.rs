//! The replica: the state of the cluster every process holds, played from the coordination log
//! one entry at a time with [`Replica::apply`] (DESIGN §6).
//!
//! It holds the processes that are in (with their address and slots), the join ring (who
//! watches whom) and the joins in progress, and the jobs with their status and allocation: for
//! each task its slots, each with its owner process, its **owner epoch** and, for keyed tasks,
//! its key groups. Applying an entry is a pure function of the entry, its log position and the
//! replica, so every process that plays the same log holds the same replica; the allocation is
//! decided inside `apply` ([`scheduler`]) from the replica alone.
//!
//! **Owner epochs.** A slot's epoch is the log position of the entry that gave it its current
//! owner, so it strictly grows each time the owner changes and a new owner can fence an old one
//! in the slot's ledger. A task's `layout` is the position of the entry that last changed its
//! slot count (and so its division of key groups).
//!
//! **Restarts.** `restart_job` applies only to a running job at the version it names
//! ([`JobState::version`]): every slot that has an owner gets the entry's position as its
//! owner epoch, so the job's version becomes that position and every process starts its runs
//! again (a later `restart_job` for the old version, appended by another process for the same
//! failure, is stale). A failure after [`MAX_RESTARTS`] restarts for failures kills the job,
//! with the reason kept in [`JobState::restarts`].
//!
//! An entry that does not apply — a join by a process already in, a leave of an unknown
//! process, a stale join step, a `complete_slot` with an old epoch, a position not after the
//! last — leaves the replica as it was but for the count of ignored entries and the last one's
//! reason ([`Replica::ignored`], [`Replica::last_ignored`]); nothing panics.

use super::entry::{Entry, RestartReason, MAX_RESTARTS};
use super::job_spec::{JobId, JobSpec};
use super::state::{Ignored, IgnoredEntry, JobState, JobStatus, Replica};
use super::{ring, scheduler};

/// The replica after `entry` at log position `position`: [`Replica::apply`] as a free
/// function, `apply(entry, replica) → replica` of DESIGN §6.
pub fn apply(entry: &Entry, position: u64, replica: &Replica) -> Replica {
    replica.apply(entry, position)
}

impl Replica {
    /// The replica after `entry` at log position `position`: a pure function. An entry that
    /// does not apply gives the replica with only its ignored count and reason changed.
    pub fn apply(&self, entry: &Entry, position: u64) -> Replica {
        let mut next = self.clone();
        let _ = next.apply_in_place(entry, position);
        next
    }

    /// [`Replica::apply`] in place, saying whether the entry applied.
    pub fn apply_in_place(&mut self, entry: &Entry, position: u64) -> Result<(), Ignored> {
        let outcome = if position <= self.position {
            Err(Ignored::OutOfOrder {
                position,
                last: self.position,
            })
        } else {
            // `play` decides whether the entry applies before it changes anything.
            self.play(entry, position).map(|()| {
                self.position = position;
                ring::assign_watchers(self, position);
                scheduler::schedule(self, position);
            })
        };
        if let Err(reason) = &outcome {
            tracing::debug!(position, entry = entry.name(), %reason, "coordination entry ignored");
            self.position = self.position.max(position);
            self.ignored += 1;
            self.last_ignored = Some(IgnoredEntry {
                position,
                reason: reason.clone(),
            });
        }
        outcome
    }

    /// Plays `entry`: each case checks everything that can refuse it before it changes the
    /// replica, so a refused entry leaves it untouched (the generated tests check it).
    fn play(&mut self, entry: &Entry, position: u64) -> Result<(), Ignored> {
        entry
            .check()
            .map_err(|problem| Ignored::Invalid { problem })?;
        match entry {
            Entry::PrepareJoin { process } => ring::prepare_join(self, process, position),
            Entry::NotifyJoin { joiner, watcher } => ring::notify_join(self, *joiner, *watcher),
            Entry::AcceptJoin { joiner, watcher } => {
                ring::accept_join(self, *joiner, *watcher, position)
            }
            Entry::AbortJoin { joiner } => ring::abort_join(self, *joiner),
            Entry::LeaveCluster { process } => ring::leave(self, *process),
            Entry::SubmitJob { job } => self.submit(job, position),
            Entry::KillJob { job } => {
                let state = self.job_mut(job)?;
                if !state.status.is_active() {
                    return Err(Ignored::JobState {
                        job: job.clone(),
                        status: state.status,
                    });
                }
                state.status = JobStatus::Killed;
                for slot in state.tasks.iter_mut().flat_map(|t| &mut t.slots) {
                    slot.owner = None;
                }
                Ok(())
            }
            Entry::CompleteSlot {
                job,
                task,
                slot,
                epoch,
            } => {
                let state = self.job_mut(job)?;
                if state.status != JobStatus::Running {
                    return Err(Ignored::JobState {
                        job: job.clone(),
                        status: state.status,
                    });
                }
                let stale = || Ignored::StaleSlot {
                    job: job.clone(),
                    task: *task,
                    slot: *slot,
                    epoch: *epoch,
                };
                let s = state
                    .tasks
                    .get_mut(*task as usize)
                    .and_then(|t| t.slots.get_mut(*slot as usize))
                    .filter(|s| !s.completed && s.owner.is_some() && s.epoch == *epoch)
                    .ok_or_else(stale)?;
                s.completed = true;
                s.owner = None;
                Ok(())
            }
            Entry::RestartJob {
                job,
                version,
                reason,
            } => restart(self.job_mut(job)?, *version, reason, position),
            Entry::SealJob { job } => {
                let state = self.job_mut(job)?;
                if state.status != JobStatus::Running || !state.all_completed() {
                    return Err(Ignored::JobState {
                        job: job.clone(),
                        status: state.status,
                    });
                }
                state.status = JobStatus::Completed;
                Ok(())
            }
        }
    }

    fn submit(&mut self, spec: &JobSpec, position: u64) -> Result<(), Ignored> {
        let fresh = JobState {
            spec: spec.clone(),
            submitted_at: position,
            status: JobStatus::Pending,
            tasks: Vec::new(),
            restarts: Default::default(),
        };
        match self.jobs.iter().position(|j| j.spec.id == spec.id) {
            Some(i) if self.jobs[i].status.is_active() => Err(Ignored::DuplicateJob {
                job: spec.id.clone(),
            }),
            // A finished job submitted again runs afresh, as a new submission.
            Some(i) => {
                self.jobs.remove(i);
                self.jobs.push(fresh);
                Ok(())
            }
            None => {
                self.jobs.push(fresh);
                Ok(())
            }
        }
    }

    fn job_mut(&mut self, id: &JobId) -> Result<&mut JobState, Ignored> {
        self.jobs
            .iter_mut()
            .find(|j| &j.spec.id == id)
            .ok_or_else(|| Ignored::UnknownJob { job: id.clone() })
    }
}

impl JobState {
    /// The job's version: the greatest owner epoch of its slots and layout position of its
    /// tasks — the position of the entry that last moved one of its slots, re-divided one of
    /// its tasks or restarted it. Every process runs the job's slots in runs named by it.
    pub fn version(&self) -> u64 {
        let epochs = self.slots().map(|(_, _, s)| s.epoch);
        let layouts = self.tasks.iter().map(|t| t.layout);
        epochs.chain(layouts).max().unwrap_or(0)
    }
}

/// `restart_job` for `state` at `version`, at `position`: a new version (every owned slot's
/// epoch set to `position`), or the job killed if the failure is one more than allowed.
fn restart(
    state: &mut JobState,
    version: u64,
    reason: &RestartReason,
    position: u64,
) -> Result<(), Ignored> {
    if state.status != JobStatus::Running {
        return Err(Ignored::JobState {
            job: state.spec.id.clone(),
            status: state.status,
        });
    }
    let current = state.version();
    if version != current {
        return Err(Ignored::StaleRestart {
            job: state.spec.id.clone(),
            version,
            current,
        });
    }
    if state.slots().all(|(_, _, s)| s.owner.is_none()) {
        return Err(Ignored::NothingToRestart {
            job: state.spec.id.clone(),
        });
    }
    let failed = matches!(reason, RestartReason::Failed { .. });
    if failed && state.restarts.failures >= MAX_RESTARTS {
        // As `sardonyx run`: the failure after the last allowed restart ends the job.
        let RestartReason::Failed { task, error } = reason else {
            unreachable!("matched above")
        };
        state.restarts.killed_because = Some(format!(
            "task \"{task}\" failed again after {} restarts: {error}",
            state.restarts.failures
        ));
        state.status = JobStatus::Killed;
        for slot in state.tasks.iter_mut().flat_map(|t| &mut t.slots) {
            slot.owner = None;
        }
        return Ok(());
    }
    for slot in state.tasks.iter_mut().flat_map(|t| &mut t.slots) {
        if slot.owner.is_some() {
            slot.epoch = position;
        }
    }
    state.restarts.count += 1;
    state.restarts.failures += u32::from(failed);
    state.restarts.last = Some((position, reason.clone()));
    Ok(())
}
