//! Named invariants of the replica, checked after every entry of a generated run (as
//! openraft's simulation names its invariant checkers). Each returns what broke.

use std::collections::BTreeSet;

use sardonyx::coordination::scheduler::{demand, is_flexible, task_ranges};
use sardonyx::coordination::{watched_by, JobStatus, PeerBounds, Replica, MAX_RESTARTS};
use sardonyx::job::{JobScheduler, TaskScheduler};

type Check = Result<(), String>;

/// The ring is one cycle over exactly the processes that are in.
pub fn ring_is_one_cycle_over_live_processes(r: &Replica) -> Check {
    let in_ring: BTreeSet<_> = r.ring.iter().copied().collect();
    let live: BTreeSet<_> = r.processes.keys().copied().collect();
    if in_ring.len() != r.ring.len() || in_ring != live {
        return Err(format!(
            "ring {:?} is not the live processes {live:?}",
            r.ring
        ));
    }
    let Some(&first) = r.ring.first() else {
        return Ok(());
    };
    let (mut at, mut seen) = (first, BTreeSet::from([first]));
    while let Some(next) = watched_by(r, at) {
        if next == first {
            break;
        }
        if !seen.insert(next) {
            return Err(format!("the watch relation loops before {first}"));
        }
        at = next;
    }
    if seen != live {
        return Err(format!(
            "the cycle from {first} misses {:?}",
            live.difference(&seen)
        ));
    }
    Ok(())
}

/// Every slot has at most one owner, and that owner is in; a completed slot has none.
pub fn slot_owner_is_live(r: &Replica) -> Check {
    for job in &r.jobs {
        for (t, i, s) in job.slots() {
            match s.owner {
                Some(p) if !r.processes.contains_key(&p) => {
                    return Err(format!(
                        "{} task {t} slot {i}: owner {p} is not in",
                        job.spec.id
                    ))
                }
                Some(_) if s.completed => {
                    return Err(format!(
                        "{} task {t} slot {i}: completed yet owned",
                        job.spec.id
                    ))
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// No process runs more slots than it offers.
pub fn no_process_over_its_slots(r: &Replica) -> Check {
    for p in r.processes.values() {
        let load = r.load(p.info.id);
        if load > p.info.slots as usize {
            return Err(format!(
                "{} runs {load} slots of {}",
                p.info.id, p.info.slots
            ));
        }
    }
    Ok(())
}

/// A running job has every task covered: every slot that has not completed has an owner, and
/// each task's count is within its bounds (a colocated job: slot i of every task on one
/// process, a different one per i). A job that is not running holds no process.
pub fn running_jobs_are_covered_and_others_hold_nothing(r: &Replica) -> Check {
    for job in &r.jobs {
        let id = &job.spec.id;
        if job.status != JobStatus::Running {
            if job.slots().any(|(_, _, s)| s.owner.is_some()) {
                return Err(format!("{id} is {} yet holds a process", job.status.name()));
            }
            continue;
        }
        if job.tasks.len() != job.spec.tasks.len() {
            return Err(format!("{id} runs without every task"));
        }
        for (t, (spec, alloc)) in job.spec.tasks.iter().zip(&job.tasks).enumerate() {
            let n = alloc.slots.len();
            let ok = match spec.peers {
                PeerBounds::Exact(e) => n == e as usize,
                PeerBounds::Range { min, max } => {
                    n >= min as usize && max.is_none_or(|m| n <= m as usize)
                }
            };
            if !ok {
                return Err(format!(
                    "{id} task {t} has {n} slots, bounds {:?}",
                    spec.peers
                ));
            }
            if let Some(i) = alloc
                .slots
                .iter()
                .position(|s| !s.completed && s.owner.is_none())
            {
                return Err(format!("{id} task {t} slot {i} has no owner"));
            }
        }
        if job.spec.task_scheduler == TaskScheduler::Colocated {
            let width = job.tasks[0].slots.len();
            if job.tasks.iter().any(|a| a.slots.len() != width) {
                return Err(format!("colocated {id} has tasks of different counts"));
            }
            let mut hosts = BTreeSet::new();
            for i in 0..width {
                let owners: BTreeSet<_> =
                    job.tasks.iter().filter_map(|a| a.slots[i].owner).collect();
                if owners.len() > 1 || owners.iter().any(|p| !hosts.insert(*p)) {
                    return Err(format!("colocated {id} slot {i} is spread: {owners:?}"));
                }
            }
        }
    }
    Ok(())
}

/// The slots of a keyed task own every key group exactly once.
pub fn key_groups_are_divided_exactly(r: &Replica) -> Check {
    for job in &r.jobs {
        let g = job.spec.key_groups as usize;
        for (t, (spec, alloc)) in job.spec.tasks.iter().zip(&job.tasks).enumerate() {
            if !spec.keyed || alloc.slots.is_empty() {
                continue;
            }
            let mut owned = vec![0_u32; g];
            for s in &alloc.slots {
                for range in &s.key_groups {
                    for kg in range.start..range.end {
                        owned[kg as usize] += 1;
                    }
                }
            }
            if owned.iter().any(|&c| c != 1) {
                return Err(format!(
                    "{} task {t}: key groups owned {owned:?}",
                    job.spec.id
                ));
            }
        }
    }
    Ok(())
}

/// A keyed task whose division changed keeps the division it had as its newest past layout
/// (its new slots gather their state from there), and past layouts only grow, oldest first,
/// each dividing every key group exactly once.
pub fn re_divisions_keep_the_past(before: &Replica, after: &Replica) -> Check {
    for job in &after.jobs {
        let g = job.spec.key_groups as usize;
        let old = before
            .job(&job.spec.id)
            .filter(|o| o.submitted_at == job.submitted_at);
        for (t, alloc) in job.tasks.iter().enumerate() {
            let name = format!("{} task {t}", job.spec.id);
            if alloc.past.windows(2).any(|w| w[0].layout >= w[1].layout)
                || alloc.past.last().is_some_and(|p| p.layout >= alloc.layout)
            {
                return Err(format!("{name}: past layouts out of order: {alloc:?}"));
            }
            for p in &alloc.past {
                let mut owned = vec![0_u32; g];
                for r in p.key_groups.iter().flatten() {
                    for kg in r.start..r.end {
                        owned[kg as usize] += 1;
                    }
                }
                if owned.iter().any(|&c| c != 1) {
                    return Err(format!("{name}: past layout {} owns {owned:?}", p.layout));
                }
            }
            let Some(was) = old.and_then(|o| o.tasks.get(t)) else {
                continue;
            };
            if !alloc.past.starts_with(&was.past) {
                return Err(format!("{name}: a past layout was lost"));
            }
            let divided = |a: &sardonyx::coordination::TaskAllocation| -> Vec<_> {
                a.slots.iter().map(|s| s.key_groups.clone()).collect()
            };
            if job.spec.tasks[t].keyed && !was.slots.is_empty() && divided(was) != divided(alloc) {
                let kept = alloc.past.last().filter(|p| p.layout == was.layout);
                if kept.is_none_or(|p| p.key_groups != divided(was)) {
                    return Err(format!("{name}: re-divided without keeping its division"));
                }
            }
        }
    }
    Ok(())
}

/// Owner epochs only grow: a slot that gets an owner gets the entry's position, every owned
/// slot of a job that was restarted gets it too, and a slot keeps its epoch otherwise.
pub fn owner_epochs_only_grow(before: &Replica, after: &Replica, at: u64) -> Check {
    for job in &after.jobs {
        let Some(old) = before
            .job(&job.spec.id)
            .filter(|o| o.submitted_at == job.submitted_at)
        else {
            continue;
        };
        for (t, i, s) in job.slots() {
            let Some(o) = old.tasks.get(t).and_then(|a| a.slots.get(i)) else {
                continue;
            };
            let restarted = job.restarts.count > old.restarts.count;
            let got_owner = s.owner.is_some() && (s.owner != o.owner || restarted);
            if s.epoch < o.epoch
                || (got_owner && s.epoch != at)
                || (!got_owner && s.epoch != o.epoch)
            {
                return Err(format!(
                    "{} task {t} slot {i}: epoch {} → {} at {at} (owner {:?} → {:?})",
                    job.spec.id, o.epoch, s.epoch, o.owner, s.owner
                ));
            }
        }
    }
    Ok(())
}

/// Stability: a slot keeps its owner while that owner is in and the job runs.
pub fn slots_keep_live_owners(before: &Replica, after: &Replica) -> Check {
    for job in after.jobs.iter().filter(|j| j.status == JobStatus::Running) {
        let Some(old) = before
            .job(&job.spec.id)
            .filter(|o| o.submitted_at == job.submitted_at)
        else {
            continue;
        };
        for (t, i, s) in old.slots() {
            let Some(owner) = s.owner else { continue };
            let Some(now) = job.tasks.get(t).and_then(|a| a.slots.get(i)) else {
                continue; // the task shrank
            };
            if after.processes.contains_key(&owner) && !now.completed && now.owner != Some(owner) {
                return Err(format!(
                    "{} task {t} slot {i} moved from live {owner} to {:?}",
                    job.spec.id, now.owner
                ));
            }
        }
    }
    Ok(())
}

/// A running percentage job never holds more than its share ⌊P·percentage/100⌋ of the P peers,
/// and (balanced task scheduler, only percentage jobs running, at most 100 % asked in all) no
/// less than its share − 1 unless its tasks cannot grow.
pub fn percentage_jobs_within_their_share(r: &Replica) -> Check {
    let peers: usize = r.processes.values().map(|p| p.info.slots as usize).sum();
    let running = |j: &&sardonyx::coordination::JobState| {
        j.status == JobStatus::Running && j.spec.job_scheduler == JobScheduler::Percentage
    };
    // With more than 100 % asked for in all, the later jobs get what the earlier leave; and
    // the floors of running jobs of other schedulers ahead of a job come before its share.
    let only_percentage = r.jobs.iter().all(|j| {
        j.status != JobStatus::Running || j.spec.job_scheduler == JobScheduler::Percentage
    });
    let asked: u32 = r
        .jobs
        .iter()
        .filter(running)
        .filter_map(|j| j.spec.percentage)
        .sum();
    for job in r.jobs.iter().filter(running) {
        // ⌊P·percentage/100⌋, computed here rather than by the code under test.
        let share = peers * job.spec.percentage.unwrap_or(0) as usize / 100;
        let used = job.slots().filter(|(_, _, s)| !s.completed).count();
        if used > share {
            return Err(format!(
                "{} holds {used} peers, its share is {share}",
                job.spec.id
            ));
        }
        let ranges = task_ranges(job, peers).unwrap_or_default();
        let can_grow = (0..job.tasks.len()).any(|t| {
            is_flexible(job, t)
                && ranges
                    .get(t)
                    .is_some_and(|rg| job.tasks[t].slots.len() < rg.hi)
        });
        if asked <= 100
            && only_percentage
            && job.spec.task_scheduler == TaskScheduler::Balanced
            && can_grow
            && used + 1 < share
        {
            return Err(format!(
                "{} holds {used} peers, below its share {share}",
                job.spec.id
            ));
        }
    }
    Ok(())
}

/// A pending job waits only when it cannot start: its floor does not fit in the peers that no
/// running job uses (nor, for a percentage job, in its share). Replicas with a colocated job
/// pending are left out: its placement needs whole processes, and a failed one leaves its
/// budget idle.
pub fn pending_jobs_cannot_start(r: &Replica) -> Check {
    let waiting_colocated = r.jobs.iter().any(|j| {
        j.status == JobStatus::Pending && j.spec.task_scheduler == TaskScheduler::Colocated
    });
    if waiting_colocated {
        return Ok(());
    }
    let peers: usize = r.processes.values().map(|p| p.info.slots as usize).sum();
    let used: usize = r
        .jobs
        .iter()
        .filter(|j| j.status == JobStatus::Running)
        .flat_map(|j| j.slots())
        .filter(|(_, _, s)| !s.completed)
        .count();
    let free = peers - used;
    for job in r.jobs.iter().filter(|j| j.status == JobStatus::Pending) {
        let floor = demand(job, peers, r.processes.len()).floor;
        let share = match job.spec.job_scheduler {
            JobScheduler::Percentage => peers * job.spec.percentage.unwrap_or(0) as usize / 100,
            _ => usize::MAX,
        };
        if floor <= free.min(share) {
            return Err(format!(
                "{} waits with a floor of {floor} while {free} of {peers} peers are free",
                job.spec.id
            ));
        }
    }
    Ok(())
}

/// An entry that does not apply changes nothing but the count, the last reason and the
/// position.
pub fn ignored_entries_change_nothing(before: &Replica, after: &Replica) -> Check {
    if after.ignored == before.ignored {
        return Ok(());
    }
    let mut same = after.clone();
    same.position = before.position;
    same.ignored = before.ignored;
    same.last_ignored = before.last_ignored.clone();
    if &same != before {
        return Err(format!(
            "an ignored entry changed the replica: {:?}",
            after.last_ignored
        ));
    }
    Ok(())
}

/// A restart gives its job a new version, the entry's position, and counts once; a job is
/// killed for failures only past `MAX_RESTARTS`, and a running job has never failed more
/// often than that.
pub fn restarts_give_a_new_version(before: &Replica, after: &Replica, at: u64) -> Check {
    for job in &after.jobs {
        let r = &job.restarts;
        if job.status == JobStatus::Running && r.failures > MAX_RESTARTS {
            return Err(format!(
                "{} runs after {} failures (at most {MAX_RESTARTS})",
                job.spec.id, r.failures
            ));
        }
        let Some(old) = before
            .job(&job.spec.id)
            .filter(|o| o.submitted_at == job.submitted_at)
        else {
            continue;
        };
        let grew = r.count - old.restarts.count;
        if grew > 1
            || (grew == 1 && (job.version() != at || r.last.as_ref().map(|l| l.0) != Some(at)))
        {
            return Err(format!(
                "{}: restarts {} → {} at {at}, version {}",
                job.spec.id,
                old.restarts.count,
                r.count,
                job.version()
            ));
        }
        if r.killed_because.is_some() != old.restarts.killed_because.is_some()
            && (job.status != JobStatus::Killed || old.restarts.failures != MAX_RESTARTS)
        {
            return Err(format!(
                "{}: killed for failures after {} of them",
                job.spec.id, old.restarts.failures
            ));
        }
    }
    Ok(())
}

/// Every invariant of one replica, then those of the step from `before`.
pub fn check_all(before: &Replica, after: &Replica, at: u64) -> Check {
    ring_is_one_cycle_over_live_processes(after)?;
    slot_owner_is_live(after)?;
    no_process_over_its_slots(after)?;
    running_jobs_are_covered_and_others_hold_nothing(after)?;
    key_groups_are_divided_exactly(after)?;
    percentage_jobs_within_their_share(after)?;
    pending_jobs_cannot_start(after)?;
    owner_epochs_only_grow(before, after, at)?;
    re_divisions_keep_the_past(before, after)?;
    restarts_give_a_new_version(before, after, at)?;
    slots_keep_live_owners(before, after)?;
    ignored_entries_change_nothing(before, after)?;
    Ok(())
}
