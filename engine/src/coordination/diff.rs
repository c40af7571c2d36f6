//! What changed between two replicas ([`diff`]), and what a process must append in response
//! ([`reactions`]) — the two halves of Onyx's `(reactions (diff old new) old new me)`.
//!
//! The runtime plays each entry, takes the diff to start and stop slots and open or close
//! connections (side effects at the edge: [`Diff::started_on`], [`Diff::stopped_on`]), and
//! appends the reactions. Reactions are chosen so that exactly one process appends each: the
//! join handshake's next step by the watcher or the joiner it names, `seal_job` by the
//! [`sealer`] (the process with the lowest id). Should one be appended twice (say a sealer that
//! left is replaced), the second does not apply.

use serde::{Deserialize, Serialize};

use super::entry::{Entry, ProcessId};
use super::job_spec::JobId;
use super::state::{JobStatus, JoinStage, Replica};

/// One slot, by job, task index and slot index.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SlotRef {
    /// The job.
    pub job: JobId,
    /// The task's index in the job spec.
    pub task: usize,
    /// The slot's index in the task.
    pub slot: usize,
}

/// A slot whose owner changed (or that appeared or went away with a change of slot count).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerChange {
    /// The slot.
    pub slot: SlotRef,
    /// Its owner before (none: it had none, or did not exist).
    pub from: Option<ProcessId>,
    /// Its owner now (none: it has none, completed, or no longer exists).
    pub to: Option<ProcessId>,
    /// Its owner epoch now (0 if it no longer exists).
    pub epoch: u64,
}

/// A job whose status changed (or that appeared).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusChange {
    /// The job.
    pub job: JobId,
    /// Its status before, if it was known.
    pub from: Option<JobStatus>,
    /// Its status now.
    pub to: JobStatus,
}

/// A task whose slot count (and so key-group division) changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayoutChange {
    /// The job.
    pub job: JobId,
    /// The task index.
    pub task: usize,
    /// Its slot count before.
    pub from: usize,
    /// Its slot count now.
    pub to: usize,
}

/// What changed from one replica to the next.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diff {
    /// Processes that came in.
    pub joined: Vec<ProcessId>,
    /// Processes that went out (a process that finds itself here must stop all its slots).
    pub left: Vec<ProcessId>,
    /// Whether the ring changed (watchers re-read [`watched_by`](super::ring::watched_by)).
    pub ring_changed: bool,
    /// Whether the joins in progress changed.
    pub joins_changed: bool,
    /// Slots whose owner changed.
    pub owners: Vec<OwnerChange>,
    /// Tasks whose slot count changed.
    pub layouts: Vec<LayoutChange>,
    /// Slots that completed.
    pub completed: Vec<SlotRef>,
    /// Jobs whose status changed.
    pub statuses: Vec<StatusChange>,
}

impl Diff {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self == &Diff::default()
    }

    /// The slots `me` must start (it is their new owner), with their owner epochs.
    pub fn started_on(&self, me: ProcessId) -> impl Iterator<Item = &OwnerChange> + '_ {
        self.owners.iter().filter(move |c| c.to == Some(me))
    }

    /// The slots `me` must stop (it owned them and no longer does).
    pub fn stopped_on(&self, me: ProcessId) -> impl Iterator<Item = &OwnerChange> + '_ {
        self.owners.iter().filter(move |c| c.from == Some(me))
    }
}

/// What changed from `old` to `new`.
pub fn diff(old: &Replica, new: &Replica) -> Diff {
    let joined = new
        .processes
        .keys()
        .filter(|p| !old.processes.contains_key(p))
        .copied()
        .collect();
    let left = old
        .processes
        .keys()
        .filter(|p| !new.processes.contains_key(p))
        .copied()
        .collect();
    let mut d = Diff {
        joined,
        left,
        ring_changed: old.ring != new.ring,
        joins_changed: old.joins != new.joins,
        ..Diff::default()
    };
    for job in &new.jobs {
        let id = &job.spec.id;
        let before = old.job(id).filter(|o| o.submitted_at == job.submitted_at);
        let from = before.map(|o| o.status);
        if from != Some(job.status) {
            d.statuses.push(StatusChange {
                job: id.clone(),
                from,
                to: job.status,
            });
        }
        let tasks = job.spec.tasks.len();
        for t in 0..tasks {
            let old_slots = before
                .and_then(|o| o.tasks.get(t))
                .map_or(&[][..], |a| &a.slots[..]);
            let new_slots = job.tasks.get(t).map_or(&[][..], |a| &a.slots[..]);
            if old_slots.len() != new_slots.len() && !new_slots.is_empty() {
                d.layouts.push(LayoutChange {
                    job: id.clone(),
                    task: t,
                    from: old_slots.len(),
                    to: new_slots.len(),
                });
            }
            for i in 0..old_slots.len().max(new_slots.len()) {
                let (o, n) = (old_slots.get(i), new_slots.get(i));
                let slot = || SlotRef {
                    job: id.clone(),
                    task: t,
                    slot: i,
                };
                let (from, to) = (o.and_then(|s| s.owner), n.and_then(|s| s.owner));
                let epoch = n.map_or(0, |s| s.epoch);
                if from != to || (to.is_some() && o.map(|s| s.epoch) != Some(epoch)) {
                    d.owners.push(OwnerChange {
                        slot: slot(),
                        from,
                        to,
                        epoch,
                    });
                }
                if n.is_some_and(|s| s.completed) && !o.is_some_and(|s| s.completed) {
                    d.completed.push(slot());
                }
            }
        }
    }
    // A job dropped from the list (a finished job submitted again) lost its slots.
    for job in &old.jobs {
        if new
            .job(&job.spec.id)
            .is_some_and(|n| n.submitted_at == job.submitted_at)
        {
            continue;
        }
        for (t, i, s) in job.slots() {
            if s.owner.is_some() {
                d.owners.push(OwnerChange {
                    slot: SlotRef {
                        job: job.spec.id.clone(),
                        task: t,
                        slot: i,
                    },
                    from: s.owner,
                    to: None,
                    epoch: 0,
                });
            }
        }
    }
    d
}

/// The process that seals completed jobs: the one in with the lowest id.
pub fn sealer(replica: &Replica) -> Option<ProcessId> {
    replica.processes.keys().next().copied()
}

/// The jobs every slot of which completed, not yet sealed.
fn awaiting_seal(replica: &Replica) -> impl Iterator<Item = &JobId> + '_ {
    replica
        .jobs
        .iter()
        .filter(|j| j.status == JobStatus::Running && j.all_completed())
        .map(|j| &j.spec.id)
}

/// The entries process `me` must append after the change `diff` from `old` to `new`:
/// `notify_join` for a joiner it was just chosen to watch, `accept_join` once its own join was
/// notified, `seal_job` for a job whose last slot completed if it is the [`sealer`].
pub fn reactions(diff: &Diff, old: &Replica, new: &Replica, me: ProcessId) -> Vec<Entry> {
    let mut out = Vec::new();
    if diff.is_empty() {
        return out;
    }
    for join in &new.joins {
        let was = old.join_of(join.process.id).map(|j| j.stage);
        if was == Some(join.stage) {
            continue;
        }
        match join.stage {
            JoinStage::Prepared { watcher } if watcher == me => out.push(Entry::NotifyJoin {
                joiner: join.process.id,
                watcher,
            }),
            JoinStage::Notified { watcher } if join.process.id == me => {
                out.push(Entry::AcceptJoin {
                    joiner: me,
                    watcher,
                })
            }
            _ => {}
        }
    }
    if sealer(new) == Some(me) {
        let newly_mine = sealer(old) != Some(me);
        let waiting_before: Vec<&JobId> = awaiting_seal(old).collect();
        for job in awaiting_seal(new) {
            if newly_mine || !waiting_before.contains(&job) {
                out.push(Entry::SealJob { job: job.clone() });
            }
        }
    }
    out
}
