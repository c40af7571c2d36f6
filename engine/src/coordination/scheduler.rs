//! The schedulers (DESIGN §6): how many slots each job and each of its tasks gets, a pure
//! function of the replica, run by [`Replica::apply`] after every entry that applied so that
//! every process computes the same allocation. [`placement`](super::placement) then gives the
//! slots their owners.
//!
//! **Peers.** The cluster's peers are the slots of the processes that are in (each process
//! offers `slots` virtual peers); a slot that completed holds none.
//!
//! **Demand.** Each job that may run (pending or running) has a *floor* (the peers it needs to
//! run at all: every task covered with `n_peers`, or `min_peers`) and a *ceiling* (the most it
//! can use: `n_peers`, `max_peers`, or every peer when a range has no maximum; a keyed task
//! never more than its key groups). Once a job has started, a task's slot count is fixed — but
//! for a grouped windowed task that has no completed slot, which keeps its range and is
//! re-divided by key groups when its count changes.
//!
//! **Admission and priority.** Jobs are considered running ones first, then pending ones, each
//! in submission order: a job is never stopped to make room for one after it, and a job starts
//! only when its floor fits in what is left (until then it is pending and holds nothing).
//!
//! **Job schedulers** (each job names its own, `job_scheduler`):
//! - `percentage`: a job gets at most ⌊P·percentage/100⌋ of the P peers, and starts only if
//!   its floor fits in that; pending ones are considered right after the running jobs, so a
//!   share does not depend on greedy or balanced jobs;
//! - `greedy`: then jobs in priority order take all they can of what is left;
//! - `balanced`: what is left then is divided evenly: one peer at a time to the balanced job
//!   that has the fewest (earlier jobs first on ties), each up to its ceiling.
//!
//! A task scheduler may leave part of a budget unused; pending jobs whose floor fits in what
//! is unused then start with their floor ([`allocate_counts`]).
//!
//! **Task schedulers** (`task_scheduler`), dividing a job's budget among its tasks from their
//! floors up: `balanced` one slot at a time to the task with the fewest, `percentage` towards
//! each task's ⌊budget·percentage/100⌋, `colocated` the same count k for every task, on k
//! distinct processes each running one slot of every task (k fixed once the job started).

use super::job_spec::{JobSpec, PeerBounds, MAX_TASK_PEERS};
use super::state::{JobState, JobStatus, Replica};
use crate::job::{JobScheduler, TaskScheduler};

/// A job's demand in peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Demand {
    /// The peers it needs to run (`usize::MAX`: it can never run).
    pub floor: usize,
    /// The most peers it can use.
    pub ceiling: usize,
    /// The unit its budget grows by (a colocated job grows by whole processes).
    pub step: usize,
}

/// What the job scheduler needs to know of one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobAsk {
    /// Its job scheduler.
    pub scheduler: JobScheduler,
    /// Its percentage (the percentage scheduler).
    pub percentage: Option<u32>,
    /// Its demand.
    pub demand: Demand,
    /// Whether it is running (its floor is kept before any other job is considered).
    pub running: bool,
}

/// The bounds of one task for the task scheduler: its count may be anything in `lo..=hi`
/// (`lo == hi` once fixed), and `completed` of its slots need no peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskRange {
    /// The least slot count.
    pub lo: usize,
    /// The greatest slot count.
    pub hi: usize,
    /// Slots that completed (only fixed tasks have them).
    pub completed: usize,
    /// The task's percentage (the percentage task scheduler).
    pub percentage: Option<u32>,
}

/// The share of `peers` a `percentage` job may have: ⌊peers·percentage/100⌋.
pub fn percentage_share(peers: usize, percentage: u32) -> usize {
    peers * percentage.min(100) as usize / 100
}

/// The budget of each job (in peers, 0: not admitted), jobs given in priority order (running
/// ones first, then pending ones, each in submission order), among `peers` peers:
///
/// 1. the running jobs: a percentage job up to its share, any other its floor (so that no job
///    is stopped for a later one);
/// 2. the pending percentage jobs, each admitted if its floor fits in its share, up to it;
/// 3. greedy jobs, each admitted if its floor fits, then taking all it can;
/// 4. balanced jobs, each admitted if its floor fits, then sharing what is left evenly.
pub fn job_budgets(asks: &[JobAsk], peers: usize) -> Vec<usize> {
    let mut budget = vec![0; asks.len()];
    let mut admitted = vec![false; asks.len()];
    let mut left = peers;
    let within = |d: &Demand, most: usize| {
        // The largest multiple of `step` above the floor that is at most `most`.
        let step = d.step.max(1);
        d.floor + (most.min(d.ceiling).saturating_sub(d.floor)) / step * step
    };
    let mut admit = |i: usize, most: usize, left: &mut usize, budget: &mut Vec<usize>| {
        let d = asks[i].demand;
        if !admitted[i] && d.floor <= most.min(*left) {
            admitted[i] = true;
            budget[i] = within(&d, most.min(*left));
            *left -= budget[i];
        }
    };
    // A job is admitted once its budget covers its floor (a floor of 0 is a running job whose
    // slots all completed).
    let admitted_now = |i: usize, budget: &[usize]| asks[i].demand.floor <= budget[i];
    let share = |ask: &JobAsk| percentage_share(peers, ask.percentage.unwrap_or(0));
    for (i, ask) in asks.iter().enumerate() {
        match (ask.running, ask.scheduler) {
            (true, JobScheduler::Percentage) => admit(i, share(ask), &mut left, &mut budget),
            (true, _) => admit(i, ask.demand.floor, &mut left, &mut budget),
            (false, _) => {}
        }
    }
    for (i, ask) in asks.iter().enumerate() {
        if ask.scheduler == JobScheduler::Percentage {
            admit(i, share(ask), &mut left, &mut budget);
        }
    }
    for (i, ask) in asks.iter().enumerate() {
        if ask.scheduler == JobScheduler::Greedy {
            admit(i, ask.demand.floor, &mut left, &mut budget);
            if admitted_now(i, &budget) {
                let grown = within(&ask.demand, budget[i] + left);
                left -= grown - budget[i];
                budget[i] = grown;
            }
        }
    }
    for (i, ask) in asks.iter().enumerate() {
        if ask.scheduler == JobScheduler::Balanced {
            admit(i, ask.demand.floor, &mut left, &mut budget);
        }
    }
    loop {
        let next = asks
            .iter()
            .enumerate()
            .filter(|(i, a)| {
                let step = a.demand.step.max(1);
                a.scheduler == JobScheduler::Balanced
                    && admitted_now(*i, &budget)
                    && step <= left
                    && budget[*i] + step <= a.demand.ceiling
            })
            .min_by_key(|(i, _)| budget[*i]);
        let Some((i, a)) = next else { break };
        let step = a.demand.step.max(1);
        budget[i] += step;
        left -= step;
    }
    budget
}

/// The slot count of each task for a job budget of `budget` peers (at least the floor):
/// each task from its `lo` up, the rest shared by `scheduler` (colocated is not handled here:
/// see [`colocated_range`]).
pub fn task_counts(scheduler: TaskScheduler, tasks: &[TaskRange], budget: usize) -> Vec<usize> {
    let mut count: Vec<usize> = tasks.iter().map(|t| t.lo).collect();
    let used: usize = tasks.iter().map(|t| t.lo - t.completed.min(t.lo)).sum();
    let mut left = budget.saturating_sub(used);
    let targets: Vec<usize> = tasks
        .iter()
        .map(|t| percentage_share(budget, t.percentage.unwrap_or(0)))
        .collect();
    while left > 0 {
        let open = (0..tasks.len()).filter(|&t| count[t] < tasks[t].hi);
        let pick = match scheduler {
            TaskScheduler::Percentage => open
                .filter(|&t| count[t] < targets[t])
                .max_by_key(|&t| (targets[t] - count[t], std::cmp::Reverse(t))),
            TaskScheduler::Balanced | TaskScheduler::Colocated => {
                open.min_by_key(|&t| (count[t], t))
            }
        };
        let Some(t) = pick else { break };
        count[t] += 1;
        left -= 1;
    }
    count
}

/// The range of the per-task count k of a colocated job that has not started: every task
/// accepts k, on at most `processes` distinct processes. `None` if no k suits every task.
pub fn colocated_range(spec: &JobSpec, processes: usize) -> Option<(usize, usize)> {
    let lo = spec.tasks.iter().map(|t| t.peers.min() as usize).max()?;
    let hi = spec
        .tasks
        .iter()
        .map(|t| upper(spec, t.peers, t.keyed, usize::MAX))
        .min()?
        .min(processes);
    (lo <= hi).then_some((lo, hi))
}

/// A task's greatest count: its bound, its key groups if keyed, `peers`, and
/// [`MAX_TASK_PEERS`] (so that no log can make a task allocate without bound).
fn upper(spec: &JobSpec, bounds: PeerBounds, keyed: bool, peers: usize) -> usize {
    let mut hi = bounds
        .max()
        .map_or(peers, |m| m as usize)
        .min(peers)
        .min(MAX_TASK_PEERS as usize);
    if keyed {
        hi = hi.min(spec.key_groups as usize);
    }
    hi
}

/// The bounds of each task of `job` among `peers` peers (`None`: the job can never be
/// covered), for a job that is not colocated or has started.
pub fn task_ranges(job: &JobState, peers: usize) -> Option<Vec<TaskRange>> {
    let spec = &job.spec;
    spec.tasks
        .iter()
        .enumerate()
        .map(|(t, demand)| {
            let percentage = demand.percentage;
            match job.tasks.get(t) {
                Some(alloc) if !is_flexible(job, t) => {
                    let n = alloc.slots.len();
                    let completed = alloc.slots.iter().filter(|s| s.completed).count();
                    Some(TaskRange {
                        lo: n,
                        hi: n,
                        completed,
                        percentage,
                    })
                }
                _ => {
                    let lo = demand.peers.min() as usize;
                    let hi = upper(spec, demand.peers, demand.keyed, peers).max(lo);
                    let keyed_too_many = demand.keyed && lo > spec.key_groups as usize;
                    (!keyed_too_many).then_some(TaskRange {
                        lo,
                        hi,
                        completed: 0,
                        percentage,
                    })
                }
            }
        })
        .collect()
}

/// Whether task `t` of a started job may still change its slot count: grouped and windowed,
/// not colocated, and no slot of the job completed (a job whose slots are completing is
/// finishing: a task re-divided then would only gather its state again to fire it once more).
pub fn is_flexible(job: &JobState, t: usize) -> bool {
    job.spec.task_scheduler != TaskScheduler::Colocated
        && job.spec.tasks[t].rescalable
        && job.slots().all(|(_, _, s)| !s.completed)
}

/// The demand of `job` among `peers` peers offered by `processes` processes.
pub fn demand(job: &JobState, peers: usize, processes: usize) -> Demand {
    let never = Demand {
        floor: usize::MAX,
        ceiling: 0,
        step: 1,
    };
    if job.tasks.is_empty() && job.spec.task_scheduler == TaskScheduler::Colocated {
        let n = job.spec.tasks.len();
        return match colocated_range(&job.spec, processes) {
            Some((lo, hi)) => Demand {
                floor: lo * n,
                ceiling: hi * n,
                step: n,
            },
            None => never,
        };
    }
    match task_ranges(job, peers) {
        Some(ranges) => {
            let need = |r: &TaskRange, c: usize| c - r.completed.min(c);
            Demand {
                floor: ranges.iter().map(|r| need(r, r.lo)).sum(),
                ceiling: ranges.iter().map(|r| need(r, r.hi)).sum(),
                step: 1,
            }
        }
        None => never,
    }
}

/// The jobs that may run, in priority order: running ones, then pending ones, each in
/// submission order (their indices in [`Replica::jobs`]).
pub fn priority_order(replica: &Replica) -> Vec<usize> {
    let of = |status| {
        replica
            .jobs
            .iter()
            .enumerate()
            .filter(move |(_, j)| j.status == status)
            .map(|(i, _)| i)
    };
    of(JobStatus::Running)
        .chain(of(JobStatus::Pending))
        .collect()
}

/// The slot counts every job that may run gets: per job index, its task counts, or `None`
/// when it is not admitted.
pub fn allocate_counts(replica: &Replica) -> Vec<(usize, Option<Vec<usize>>)> {
    let peers: usize = replica
        .processes
        .values()
        .map(|p| p.info.slots as usize)
        .sum();
    let processes = replica.processes.len();
    let order = priority_order(replica);
    let asks: Vec<JobAsk> = order
        .iter()
        .map(|&i| {
            let job = &replica.jobs[i];
            JobAsk {
                scheduler: job.spec.job_scheduler,
                percentage: job.spec.percentage,
                demand: demand(job, peers, processes),
                running: job.status == JobStatus::Running,
            }
        })
        .collect();
    let budgets = job_budgets(&asks, peers);
    let counts_for = |job: &JobState, budget: usize| {
        if job.tasks.is_empty() && job.spec.task_scheduler == TaskScheduler::Colocated {
            vec![budget / job.spec.tasks.len(); job.spec.tasks.len()]
        } else {
            let ranges = task_ranges(job, peers).expect("an admitted job has ranges");
            task_counts(job.spec.task_scheduler, &ranges, budget)
        }
    };
    let mut out: Vec<(usize, Option<Vec<usize>>)> = order
        .iter()
        .zip(asks.iter().zip(budgets))
        .map(|(&i, (ask, budget))| {
            let job = &replica.jobs[i];
            (
                i,
                (ask.demand.floor <= budget).then(|| counts_for(job, budget)),
            )
        })
        .collect();
    // A task scheduler may leave part of a budget unused (percentage shares, whole colocated
    // processes): pending jobs whose floor fits in what is unused start with their floor.
    let used: usize = out
        .iter()
        .filter_map(|(i, c)| c.as_ref().map(|c| peers_used(&replica.jobs[*i], c)))
        .sum();
    let mut unused = peers.saturating_sub(used);
    for ((i, counts), ask) in out.iter_mut().zip(&asks) {
        let within_share = ask.scheduler != JobScheduler::Percentage
            || ask.demand.floor <= percentage_share(peers, ask.percentage.unwrap_or(0));
        if counts.is_none() && ask.demand.floor <= unused && within_share {
            let job = &replica.jobs[*i];
            let c = counts_for(job, ask.demand.floor);
            unused -= peers_used(job, &c).min(unused);
            *counts = Some(c);
        }
    }
    out
}

/// The peers `job` uses with these task counts (its completed slots use none).
pub fn peers_used(job: &JobState, counts: &[usize]) -> usize {
    counts
        .iter()
        .enumerate()
        .map(|(t, &c)| {
            let done = job.tasks.get(t).map_or(0, |a| {
                a.slots.iter().take(c).filter(|s| s.completed).count()
            });
            c - done
        })
        .sum()
}

pub(super) fn schedule(replica: &mut Replica, position: u64) {
    let counts = allocate_counts(replica);
    super::placement::place(replica, &counts, position);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ask(
        scheduler: JobScheduler,
        percentage: Option<u32>,
        floor: usize,
        ceiling: usize,
    ) -> JobAsk {
        JobAsk {
            scheduler,
            percentage,
            demand: Demand {
                floor,
                ceiling,
                step: 1,
            },
            running: false,
        }
    }

    #[test]
    fn greedy_balanced_and_percentage_budgets() {
        use JobScheduler::*;
        assert_eq!(
            job_budgets(&[ask(Greedy, None, 3, 100), ask(Greedy, None, 3, 100)], 10),
            [10, 0]
        );
        assert_eq!(
            job_budgets(&[ask(Greedy, None, 3, 7), ask(Greedy, None, 3, 100)], 10),
            [7, 3]
        );
        assert_eq!(
            job_budgets(
                &[ask(Balanced, None, 3, 100), ask(Balanced, None, 3, 100)],
                10
            ),
            [5, 5]
        );
        assert_eq!(
            job_budgets(
                &[ask(Balanced, None, 1, 2), ask(Balanced, None, 1, 100)],
                10
            ),
            [2, 8]
        );
        assert_eq!(
            job_budgets(
                &[
                    ask(Percentage, Some(70), 3, 100),
                    ask(Percentage, Some(30), 3, 100)
                ],
                10
            ),
            [7, 3]
        );
        // A floor that does not fit: not admitted, and the next job is.
        assert_eq!(
            job_budgets(&[ask(Greedy, None, 11, 11), ask(Greedy, None, 2, 2)], 10),
            [0, 2]
        );
        // A running job keeps its floor whatever comes after it.
        let running = |a: JobAsk| JobAsk { running: true, ..a };
        assert_eq!(
            job_budgets(
                &[
                    running(ask(Greedy, None, 8, 8)),
                    ask(Percentage, Some(50), 3, 10)
                ],
                10
            ),
            [8, 0]
        );
        assert_eq!(
            job_budgets(
                &[
                    running(ask(Balanced, None, 4, 10)),
                    ask(Greedy, None, 3, 10)
                ],
                10
            ),
            [4, 6]
        );
        // A colocated job grows by whole processes.
        let colocated = JobAsk {
            demand: Demand {
                floor: 3,
                ceiling: 12,
                step: 3,
            },
            ..ask(Balanced, None, 0, 0)
        };
        assert_eq!(
            job_budgets(&[colocated, ask(Balanced, None, 1, 1)], 8),
            [6, 1]
        );
    }

    #[test]
    fn task_counts_of_each_scheduler() {
        let r = |lo, hi, percentage| TaskRange {
            lo,
            hi,
            completed: 0,
            percentage,
        };
        let tasks = [r(1, 1, Some(10)), r(1, 10, Some(60)), r(1, 10, Some(30))];
        assert_eq!(task_counts(TaskScheduler::Balanced, &tasks, 7), [1, 3, 3]);
        assert_eq!(
            task_counts(TaskScheduler::Percentage, &tasks, 10),
            [1, 6, 3]
        );
        // Completed slots need no peer.
        let done = [TaskRange {
            completed: 2,
            ..r(3, 3, None)
        }];
        assert_eq!(task_counts(TaskScheduler::Balanced, &done, 1), [3]);
    }

    proptest! {
        /// Budgets never exceed the peers, admitted jobs get their floor and at most their
        /// ceiling, and a percentage job at most its share.
        #[test]
        fn budgets_are_within_bounds(
            jobs in prop::collection::vec((0_u8..3, 1_u32..=100, 0_usize..8, 0_usize..8), 0..6),
            peers in 0_usize..40,
        ) {
            let asks: Vec<JobAsk> = jobs.iter().map(|&(s, p, floor, extra)| {
                let scheduler = [JobScheduler::Greedy, JobScheduler::Balanced, JobScheduler::Percentage][s as usize];
                ask(scheduler, Some(p), floor, floor + extra)
            }).collect();
            let budgets = job_budgets(&asks, peers);
            prop_assert!(budgets.iter().sum::<usize>() <= peers);
            for (a, &b) in asks.iter().zip(&budgets) {
                prop_assert!(b == 0 || (a.demand.floor <= b && b <= a.demand.ceiling));
                if a.scheduler == JobScheduler::Percentage {
                    prop_assert!(b <= percentage_share(peers, a.percentage.unwrap()));
                }
            }
        }
    }
}
