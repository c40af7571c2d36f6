//! Placement: from the slot counts the [`scheduler`](super::scheduler) decided to owners, with
//! as few moves as possible.
//!
//! - A job that is not admitted holds no process: its slots lose their owners (a running job
//!   that lost the peers it needs goes back to pending, its slots and key groups kept).
//! - A task whose count changed (or a job that starts) gets its new slots at the end, or loses
//!   its last ones; a keyed task's key groups are divided contiguously at the start and
//!   re-divided with [`reassign`] (as few key groups moved as possible) when the count changes.
//! - **Every slot keeps its owner** if that owner is still in: only slots without one are
//!   placed, so a process joining moves no slot, and a process leaving moves only its own.
//! - A slot without an owner goes back to its last owner if that one is in and has room (a job
//!   that waited for peers resumes where it ran), else to the process with the most free slots
//!   (then the one running the fewest slots of that task, then the lowest id). A colocated
//!   job's slot `i` of every task goes to one process that runs no other slot of the job and
//!   has room for all of them. A job that cannot be placed (only a colocated one can fail)
//!   goes back to pending.
//! - A slot that gets an owner gets the entry's position as its owner epoch.

use std::collections::BTreeMap;

use super::entry::ProcessId;
use super::state::{JobStatus, KeyGroupRange, PastLayout, Replica, Slot, TaskAllocation};
use crate::job::TaskScheduler;
use crate::key_groups::{contiguous, reassign};

/// The owner table (one slot index per key group) of a task's slots.
pub fn key_group_table(slots: &[Slot], key_groups: usize) -> Vec<usize> {
    owner_table(slots.iter().map(|s| s.key_groups.as_slice()), key_groups)
}

/// The owner table (one slot index per key group) of each slot's key group ranges, by slot
/// index (a key group no range holds is given to slot 0).
pub fn owner_table<'a>(
    slots: impl IntoIterator<Item = &'a [KeyGroupRange]>,
    key_groups: usize,
) -> Vec<usize> {
    let mut table = vec![0; key_groups];
    for (i, ranges) in slots.into_iter().enumerate() {
        for r in ranges {
            let end = (r.end as usize).min(key_groups);
            let start = (r.start as usize).min(end);
            table[start..end].fill(i);
        }
    }
    table
}

/// The key groups of slot `slot` in an owner table, as ranges in order.
fn ranges_of(table: &[usize], slot: usize) -> Vec<KeyGroupRange> {
    let mut out: Vec<KeyGroupRange> = Vec::new();
    for (kg, &owner) in table.iter().enumerate() {
        if owner != slot {
            continue;
        }
        let kg = kg as u32;
        match out.last_mut() {
            Some(r) if r.end == kg => r.end = kg + 1,
            _ => out.push(KeyGroupRange {
                start: kg,
                end: kg + 1,
            }),
        }
    }
    out
}

fn empty_slot() -> Slot {
    Slot {
        owner: None,
        last_owner: None,
        epoch: 0,
        key_groups: Vec::new(),
        completed: false,
    }
}

/// Sets a task's slot count to `count`, re-dividing its key groups if keyed.
fn resize(alloc: &mut TaskAllocation, count: usize, keyed: bool, key_groups: usize, at: u64) {
    let old = alloc.slots.len();
    if old == count {
        return;
    }
    let table = if old == 0 {
        contiguous(count, key_groups)
    } else {
        reassign(&key_group_table(&alloc.slots, key_groups), count)
    };
    if keyed && old > 0 {
        alloc.past.push(PastLayout {
            layout: alloc.layout,
            key_groups: alloc.slots.iter().map(|s| s.key_groups.clone()).collect(),
        });
    }
    alloc.slots.truncate(count);
    alloc.slots.resize_with(count, empty_slot);
    if keyed {
        for (i, slot) in alloc.slots.iter_mut().enumerate() {
            slot.key_groups = ranges_of(&table, i);
        }
    }
    alloc.layout = at;
}

pub(super) fn place(replica: &mut Replica, counts: &[(usize, Option<Vec<usize>>)], at: u64) {
    // Counts first, for every job: what shrinks frees its processes before anything is placed.
    for (i, counts) in counts {
        let job = &mut replica.jobs[*i];
        match counts {
            None => {
                job.status = JobStatus::Pending;
                for slot in job.tasks.iter_mut().flat_map(|t| &mut t.slots) {
                    slot.owner = None;
                }
            }
            Some(counts) => {
                let key_groups = job.spec.key_groups as usize;
                if job.tasks.is_empty() {
                    job.tasks = counts
                        .iter()
                        .map(|_| TaskAllocation {
                            layout: at,
                            slots: Vec::new(),
                            past: Vec::new(),
                        })
                        .collect();
                }
                for (t, &count) in counts.iter().enumerate() {
                    let keyed = job.spec.tasks[t].keyed;
                    resize(&mut job.tasks[t], count, keyed, key_groups, at);
                }
            }
        }
    }
    let mut free: BTreeMap<ProcessId, usize> = replica
        .processes
        .values()
        .map(|p| (p.info.id, p.info.slots as usize))
        .collect();
    for owner in replica
        .jobs
        .iter()
        .flat_map(|j| j.slots().filter_map(|(_, _, s)| s.owner))
    {
        if let Some(left) = free.get_mut(&owner) {
            *left = left.saturating_sub(1);
        }
    }
    for (i, counts) in counts {
        if counts.is_none() {
            continue;
        }
        let job = &mut replica.jobs[*i];
        let (free_before, tasks_before) = (free.clone(), job.tasks.clone());
        let placed = if job.spec.task_scheduler == TaskScheduler::Colocated {
            place_colocated(job, &mut free, at)
        } else {
            place_spread(job, &mut free, at)
        };
        if placed {
            job.status = JobStatus::Running;
        } else {
            // A job that cannot be placed holds nothing at all: undo what was placed, then
            // release what it held.
            free = free_before;
            job.tasks = tasks_before;
            for slot in job.tasks.iter_mut().flat_map(|t| &mut t.slots) {
                if let Some(p) = slot.owner.take() {
                    if let Some(n) = free.get_mut(&p) {
                        *n += 1;
                    }
                }
            }
            job.status = JobStatus::Pending;
        }
    }
}

/// Gives every slot of `job` without an owner a process: first its last owner if that one is in
/// and has room (a job that waited resumes where it ran), then the process with the most free
/// slots.
fn place_spread(
    job: &mut super::state::JobState,
    free: &mut BTreeMap<ProcessId, usize>,
    at: u64,
) -> bool {
    for alloc in &mut job.tasks {
        // How many of this task's slots each process runs, kept as slots are placed.
        let mut of_task: BTreeMap<ProcessId, usize> = BTreeMap::new();
        for p in alloc.slots.iter().filter_map(|s| s.owner) {
            *of_task.entry(p).or_default() += 1;
        }
        for back_home in [true, false] {
            for slot in alloc.slots.iter_mut() {
                if slot.owner.is_some() || slot.completed {
                    continue;
                }
                let home = slot
                    .last_owner
                    .filter(|p| free.get(p).is_some_and(|&n| n > 0));
                let p = if back_home {
                    match home {
                        Some(p) => p,
                        None => continue,
                    }
                } else {
                    let most_free = free
                        .iter()
                        .filter(|(_, &n)| n > 0)
                        .map(|(&p, &n)| {
                            let mine = of_task.get(&p).copied().unwrap_or(0);
                            (std::cmp::Reverse(n), mine, p)
                        })
                        .min();
                    match most_free {
                        Some((_, _, p)) => p,
                        None => return false,
                    }
                };
                *free.get_mut(&p).expect("a candidate is in") -= 1;
                *of_task.entry(p).or_default() += 1;
                slot.owner = Some(p);
                slot.last_owner = Some(p);
                slot.epoch = at;
            }
        }
    }
    true
}

/// Gives each slot index of a colocated job whose slots have no owner one process for all of
/// them, one that runs no other slot of the job: first the last owner of those slots if it is
/// in and has room, then the process with the most free slots.
fn place_colocated(
    job: &mut super::state::JobState,
    free: &mut BTreeMap<ProcessId, usize>,
    at: u64,
) -> bool {
    let width = job.tasks.iter().map(|t| t.slots.len()).max().unwrap_or(0);
    for back_home in [true, false] {
        for i in 0..width {
            let open: Vec<usize> = (0..job.tasks.len())
                .filter(|&t| {
                    job.tasks[t]
                        .slots
                        .get(i)
                        .is_some_and(|s| s.owner.is_none() && !s.completed)
                })
                .collect();
            let Some(&first) = open.first() else {
                continue;
            };
            let hosts: Vec<ProcessId> = job.slots().filter_map(|(_, _, s)| s.owner).collect();
            let fits = |p: &ProcessId, n: usize| n >= open.len() && !hosts.contains(p);
            let home = job.tasks[first].slots[i]
                .last_owner
                .filter(|p| free.get(p).is_some_and(|&n| fits(p, n)));
            let p = if back_home {
                match home {
                    Some(p) => p,
                    None => continue,
                }
            } else {
                let most_free = free
                    .iter()
                    .filter(|(p, &n)| fits(p, n))
                    .map(|(&p, &n)| (std::cmp::Reverse(n), p))
                    .min();
                match most_free {
                    Some((_, p)) => p,
                    None => return false,
                }
            };
            *free.get_mut(&p).expect("a candidate is in") -= open.len();
            for t in open {
                let slot = &mut job.tasks[t].slots[i];
                slot.owner = Some(p);
                slot.last_owner = Some(p);
                slot.epoch = at;
            }
        }
    }
    true
}
