//! The join ring (DESIGN §6): who watches whom, and how a process joins and leaves it.
//!
//! The processes that are in form one cycle, [`Replica::ring`]: each watches the next (sends
//! it heartbeats and appends `leave_cluster` when they go unanswered), the last watches the
//! first. A joining process is spliced in through three entries, as in Onyx:
//!
//! 1. `prepare_join` (the joiner): the joiner queues; the first process of an empty cluster is
//!    in at once. Each waiting joiner, in the order they asked, is given a **watcher**: a
//!    process that is in and not splicing another joiner, chosen by the joiner's id among them
//!    (so joins spread over the ring).
//! 2. `notify_join` (the watcher): it is ready to watch the joiner.
//! 3. `accept_join` (the joiner): the joiner enters the ring right after its watcher, which now
//!    watches the joiner, while the joiner watches whom the watcher watched. The ring stays one
//!    cycle at every entry, since it only changes whole.
//!
//! `abort_join` (the joiner) or `leave_cluster` of a joiner drops its join; `leave_cluster` of
//! a watcher sends its joiner back to waiting (it gets another watcher). `leave_cluster` of a
//! process that is in removes it from the ring (its watcher now watches its successor) and its
//! slots move ([`scheduler`](super::scheduler)).

use super::entry::{ProcessId, ProcessInfo};
use super::state::{Ignored, Join, JoinStage, Process, Replica};

/// The process `me` watches (sends heartbeats to): its successor in the ring. `None` if `me`
/// is not in the ring or is alone in it.
pub fn watched_by(replica: &Replica, me: ProcessId) -> Option<ProcessId> {
    let ring = &replica.ring;
    let at = ring.iter().position(|&p| p == me)?;
    let next = ring[(at + 1) % ring.len()];
    (next != me).then_some(next)
}

/// The process that watches `process`: its predecessor in the ring (`None` as for
/// [`watched_by`]).
pub fn watcher_of(replica: &Replica, process: ProcessId) -> Option<ProcessId> {
    let ring = &replica.ring;
    let at = ring.iter().position(|&p| p == process)?;
    let prev = ring[(at + ring.len() - 1) % ring.len()];
    (prev != process).then_some(prev)
}

/// The joiner `me` is splicing in as its watcher, if any: the runtime connects to it (and
/// appends `leave_cluster` for it if it cannot be reached).
pub fn joining_watched_by(replica: &Replica, me: ProcessId) -> Option<ProcessId> {
    replica
        .joins
        .iter()
        .find(|j| j.stage.watcher() == Some(me))
        .map(|j| j.process.id)
}

pub(super) fn prepare_join(
    replica: &mut Replica,
    process: &ProcessInfo,
    position: u64,
) -> Result<(), Ignored> {
    let id = process.id;
    if replica.processes.contains_key(&id) || replica.join_of(id).is_some() {
        return Err(Ignored::AlreadyIn { process: id });
    }
    if replica.departed.contains(&id) {
        return Err(Ignored::Departed { process: id });
    }
    replica.joins.push(Join {
        process: process.clone(),
        requested_at: position,
        stage: JoinStage::Waiting,
    });
    Ok(())
}

pub(super) fn notify_join(
    replica: &mut Replica,
    joiner: ProcessId,
    watcher: ProcessId,
) -> Result<(), Ignored> {
    let join = replica
        .joins
        .iter_mut()
        .find(|j| j.process.id == joiner)
        .filter(|j| j.stage == JoinStage::Prepared { watcher })
        .ok_or(Ignored::StaleJoinStep { joiner })?;
    join.stage = JoinStage::Notified { watcher };
    Ok(())
}

pub(super) fn accept_join(
    replica: &mut Replica,
    joiner: ProcessId,
    watcher: ProcessId,
    position: u64,
) -> Result<(), Ignored> {
    let at = replica
        .joins
        .iter()
        .position(|j| j.process.id == joiner && j.stage == JoinStage::Notified { watcher })
        .ok_or(Ignored::StaleJoinStep { joiner })?;
    // A notified join's watcher is in the ring (a leaving watcher resets its joins).
    let after = replica
        .ring
        .iter()
        .position(|&p| p == watcher)
        .ok_or(Ignored::StaleJoinStep { joiner })?;
    let join = replica.joins.remove(at);
    replica.ring.insert(after + 1, joiner);
    admit(replica, join.process, position);
    Ok(())
}

pub(super) fn abort_join(replica: &mut Replica, joiner: ProcessId) -> Result<(), Ignored> {
    let at = replica
        .joins
        .iter()
        .position(|j| j.process.id == joiner)
        .ok_or(Ignored::StaleJoinStep { joiner })?;
    replica.joins.remove(at);
    replica.departed.insert(joiner);
    Ok(())
}

pub(super) fn leave(replica: &mut Replica, process: ProcessId) -> Result<(), Ignored> {
    if let Some(at) = replica.joins.iter().position(|j| j.process.id == process) {
        replica.joins.remove(at);
    } else if replica.processes.remove(&process).is_some() {
        replica.ring.retain(|&p| p != process);
        // Its joiners wait for another watcher.
        for join in &mut replica.joins {
            if join.stage.watcher() == Some(process) {
                join.stage = JoinStage::Waiting;
            }
        }
        // Its slots lose their owner; `schedule` gives them another.
        for slot in replica
            .jobs
            .iter_mut()
            .flat_map(|j| &mut j.tasks)
            .flat_map(|t| &mut t.slots)
        {
            if slot.owner == Some(process) {
                slot.owner = None;
            }
        }
    } else {
        return Err(Ignored::UnknownProcess { process });
    }
    replica.departed.insert(process);
    Ok(())
}

fn admit(replica: &mut Replica, info: ProcessInfo, position: u64) {
    replica.processes.insert(
        info.id,
        Process {
            info,
            joined_at: position,
        },
    );
}

/// Gives each waiting joiner, in the order they asked, a watcher among the processes in that
/// are not splicing another; with nobody in, the first waiting joiner is in at once (the ring
/// of one). Run after every entry that applied.
pub(super) fn assign_watchers(replica: &mut Replica, position: u64) {
    if replica.ring.is_empty() {
        if let Some(at) = replica
            .joins
            .iter()
            .position(|j| j.stage == JoinStage::Waiting)
        {
            let join = replica.joins.remove(at);
            replica.ring.push(join.process.id);
            admit(replica, join.process, position);
        }
    }
    for i in 0..replica.joins.len() {
        if replica.joins[i].stage != JoinStage::Waiting {
            continue;
        }
        let busy: Vec<ProcessId> = replica
            .joins
            .iter()
            .filter_map(|j| j.stage.watcher())
            .collect();
        let free: Vec<ProcessId> = replica
            .ring
            .iter()
            .copied()
            .filter(|p| !busy.contains(p))
            .collect();
        if free.is_empty() {
            return;
        }
        let pick = free[(replica.joins[i].process.id.0 % free.len() as u64) as usize];
        replica.joins[i].stage = JoinStage::Prepared { watcher: pick };
    }
}
