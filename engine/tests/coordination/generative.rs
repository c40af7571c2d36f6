//! Generative tests (DESIGN §6): random runs of joins (random slots), leaves (of processes in,
//! of joiners, of the watcher of a joining process), aborted joins, submissions (small random
//! jobs, random schedulers), kills and slot completions, played by 3 to 7 simulated processes
//! with their reactions, delivery interleaved at random, then settled. After every entry every
//! replica equals the reference and the named invariants hold; once settled, joins are done
//! and completed jobs sealed.

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;

use sardonyx::coordination::{
    replay, Entry, JobId, JobSpec, JobStatus, PeerBounds, ProcessId, RestartReason, TaskDemand,
};
use sardonyx::job::{JobScheduler, TaskKind, TaskScheduler};

use super::invariants::check_all;
use super::sim::Sim;

/// A random small job.
#[derive(Debug, Clone)]
pub struct JobGen {
    id: u8,
    job_scheduler: u8,
    task_scheduler: u8,
    percentage: u32,
    key_groups: u32,
    tasks: Vec<(u8, u32, u32, bool, bool)>,
}

impl JobGen {
    fn spec(&self) -> JobSpec {
        let n = self.tasks.len() as u32;
        let tasks = self
            .tasks
            .iter()
            .enumerate()
            .map(|(i, &(kind, a, b, keyed, rescalable))| TaskDemand {
                name: format!("t{i}"),
                kind: [TaskKind::Input, TaskKind::Function, TaskKind::Output][i.min(2)],
                peers: match kind {
                    0 => PeerBounds::Exact(a),
                    1 => PeerBounds::Range {
                        min: a,
                        max: Some(a + b),
                    },
                    _ => PeerBounds::Range { min: a, max: None },
                },
                keyed: keyed || rescalable,
                rescalable,
                percentage: Some(100 / n + if i == 0 { 100 % n } else { 0 }),
            })
            .collect();
        JobSpec {
            id: JobId(format!("job{}", self.id)),
            job_scheduler: [
                JobScheduler::Greedy,
                JobScheduler::Balanced,
                JobScheduler::Percentage,
            ][self.job_scheduler as usize],
            task_scheduler: [
                TaskScheduler::Balanced,
                TaskScheduler::Percentage,
                TaskScheduler::Colocated,
            ][self.task_scheduler as usize],
            percentage: Some(self.percentage),
            key_groups: self.key_groups,
            tasks,
            job_json: "{}".into(),
        }
    }
}

fn job_gen() -> impl Strategy<Value = JobGen> {
    (
        0_u8..6,
        0_u8..3,
        prop_oneof![3 => Just(0_u8), 1 => Just(1_u8), 1 => Just(2_u8)],
        prop_oneof![Just(30_u32), Just(50), Just(70), 10_u32..=100],
        4_u32..=16,
        prop::collection::vec(
            (0_u8..3, 1_u32..=2, 0_u32..=3, any::<bool>(), any::<bool>()),
            1..=3,
        ),
    )
        .prop_map(
            |(id, job_scheduler, task_scheduler, percentage, key_groups, tasks)| JobGen {
                id,
                job_scheduler,
                task_scheduler,
                percentage,
                key_groups,
                tasks,
            },
        )
}

/// One step of a generated run.
#[derive(Debug, Clone)]
pub enum Op {
    /// A new process starts (if fewer than the run's processes are alive) and asks to join.
    Start { slots: u32 },
    /// A process dies; its watcher appends `leave_cluster` for it.
    Kill { pick: Index },
    /// The watcher of a join in progress dies, if there is one.
    KillWatcher,
    /// A joining process gives up its join and stops.
    Abort { pick: Index },
    /// A job is submitted.
    Submit(JobGen),
    /// A job is killed.
    KillJob { pick: Index },
    /// A slot's owner completes it (with an old epoch if `stale`).
    Complete { pick: Index, stale: bool },
    /// Every slot of a running job completes.
    CompleteJob { pick: Index },
    /// A process asks to restart a running job (a failure if `failed`, else an expired ack
    /// tree), `copies` times at the same version (several processes seeing one failure), or
    /// at an old version if `stale`; then `again` more times, each at the version the last
    /// one gave (a job that keeps failing).
    Restart {
        pick: Index,
        failed: bool,
        stale: bool,
        copies: u8,
        again: u8,
    },
    /// One process reads up to `n` entries.
    Step { pick: Index, n: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1_u32..=4).prop_map(|slots| Op::Start { slots }),
        2 => any::<Index>().prop_map(|pick| Op::Kill { pick }),
        1 => Just(Op::KillWatcher),
        1 => any::<Index>().prop_map(|pick| Op::Abort { pick }),
        3 => job_gen().prop_map(Op::Submit),
        1 => any::<Index>().prop_map(|pick| Op::KillJob { pick }),
        2 => (any::<Index>(), prop::bool::weighted(0.2)).prop_map(|(pick, stale)| Op::Complete { pick, stale }),
        1 => any::<Index>().prop_map(|pick| Op::CompleteJob { pick }),
        2 => (any::<Index>(), any::<bool>(), prop::bool::weighted(0.2), 1_u8..=3, prop_oneof![3 => Just(0_u8), 1 => 1_u8..=4])
            .prop_map(|(pick, failed, stale, copies, again)| Op::Restart { pick, failed, stale, copies, again }),
        6 => (any::<Index>(), 1_u8..6).prop_map(|(pick, n)| Op::Step { pick, n }),
    ]
}

/// What a run exercised, to check that the generator reaches every path.
#[derive(Debug, Default)]
pub struct Coverage {
    seals: usize,
    rescales: usize,
    leaves_of_watchers: usize,
    joins_interleaved: usize,
    ignored: u64,
    pending_then_running: usize,
    colocated_running: usize,
    restarts: usize,
    killed_by_failures: usize,
}

/// Plays `ops` with at most `processes` alive at once; panics naming the invariant that broke.
pub fn run(processes: usize, ops: &[Op], coverage: &mut Coverage, keep_history: bool) -> Sim {
    let mut sim = Sim::new();
    sim.keep_history = keep_history;
    let mut next_id = 0x1000_u64;
    let mut agree = |mine: &sardonyx::coordination::Replica,
                     reference: &sardonyx::coordination::Replica,
                     at: usize| {
        assert_eq!(
            mine, reference,
            "replicas_agree: a replica differs at entry {at}"
        );
    };
    for op in ops {
        let alive: Vec<ProcessId> = sim
            .processes
            .iter()
            .filter(|p| p.alive)
            .map(|p| p.id)
            .collect();
        let now = sim.now().clone();
        let running: Vec<_> = now
            .jobs
            .iter()
            .filter(|j| j.status == JobStatus::Running)
            .collect();
        match op {
            Op::Start { slots } if alive.len() < processes => {
                // Ids spread over the range, so the choice of watchers varies.
                next_id = next_id
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                sim.start(next_id, *slots);
            }
            Op::Start { .. } => {}
            Op::Kill { pick } if !alive.is_empty() => sim.kill(alive[pick.index(alive.len())]),
            Op::Kill { .. } => {}
            Op::KillWatcher => {
                let watcher = now
                    .joins
                    .iter()
                    .filter_map(|j| j.stage.watcher())
                    .find(|w| alive.contains(w));
                if let Some(w) = watcher {
                    coverage.leaves_of_watchers += 1;
                    sim.kill(w);
                }
            }
            Op::Abort { pick } => {
                let joiners: Vec<ProcessId> = now
                    .joins
                    .iter()
                    .map(|j| j.process.id)
                    .filter(|p| alive.contains(p))
                    .collect();
                if !joiners.is_empty() {
                    let p = joiners[pick.index(joiners.len())];
                    sim.processes
                        .iter_mut()
                        .find(|q| q.id == p)
                        .expect("alive")
                        .alive = false;
                    sim.append(Entry::AbortJoin { joiner: p });
                }
            }
            Op::Submit(job) => sim.submit(job.spec()),
            Op::KillJob { pick } if !now.jobs.is_empty() => {
                let job = &now.jobs[pick.index(now.jobs.len())];
                sim.append(Entry::KillJob {
                    job: job.spec.id.clone(),
                });
            }
            Op::KillJob { .. } => {}
            Op::Complete { pick, stale } => {
                let owned: Vec<Entry> = running
                    .iter()
                    .flat_map(|j| {
                        j.slots()
                            .filter(|(_, _, s)| s.owner.is_some())
                            .map(|(t, i, s)| Entry::CompleteSlot {
                                job: j.spec.id.clone(),
                                task: t as u32,
                                slot: i as u32,
                                epoch: if *stale { s.epoch - 1 } else { s.epoch },
                            })
                    })
                    .collect();
                if !owned.is_empty() {
                    sim.append(owned[pick.index(owned.len())].clone());
                }
            }
            Op::CompleteJob { pick } => {
                if !running.is_empty() {
                    let j = running[pick.index(running.len())];
                    for (t, i, s) in j.slots().filter(|(_, _, s)| s.owner.is_some()) {
                        sim.append(Entry::CompleteSlot {
                            job: j.spec.id.clone(),
                            task: t as u32,
                            slot: i as u32,
                            epoch: s.epoch,
                        });
                    }
                }
            }
            Op::Restart {
                pick,
                failed,
                stale,
                copies,
                again,
            } => {
                if !running.is_empty() {
                    let j = running[pick.index(running.len())];
                    let reason = if *failed {
                        RestartReason::failed("t0", "the sink is down")
                    } else {
                        RestartReason::Expired {
                            process: j
                                .slots()
                                .find_map(|(_, _, s)| s.owner)
                                .unwrap_or(ProcessId(1)),
                        }
                    };
                    let job = j.spec.id.clone();
                    for _ in 0..*copies {
                        sim.append(Entry::RestartJob {
                            job: job.clone(),
                            version: j.version() - u64::from(*stale),
                            reason: reason.clone(),
                        });
                    }
                    for _ in 0..*again {
                        let Some(version) = sim.now().job(&job).map(|j| j.version()) else {
                            break;
                        };
                        sim.append(Entry::RestartJob {
                            job: job.clone(),
                            version,
                            reason: reason.clone(),
                        });
                    }
                }
            }
            Op::Step { pick, n } if !sim.processes.is_empty() => {
                if now.joins.iter().any(|j| j.stage.watcher().is_some()) {
                    coverage.joins_interleaved += 1;
                }
                let i = pick.index(sim.processes.len());
                for _ in 0..*n {
                    sim.step(i, &mut agree);
                }
            }
            Op::Step { .. } => {}
        }
    }
    sim.settle(&mut agree);

    // After every entry, on the reference (which every replica equalled).
    for at in 1..sim.reference.len() {
        let (before, after) = (&sim.reference[at - 1], &sim.reference[at]);
        if let Err(broke) = check_all(before, after, at as u64) {
            panic!("after entry {at} ({:?}): {broke}\n{after}", sim.log[at - 1]);
        }
        if matches!(sim.log[at - 1], Entry::RestartJob { .. }) && after.ignored == before.ignored {
            coverage.restarts += 1;
            coverage.killed_by_failures += after
                .jobs
                .iter()
                .filter(|j| j.restarts.killed_because.is_some())
                .count()
                .saturating_sub(
                    before
                        .jobs
                        .iter()
                        .filter(|j| j.restarts.killed_because.is_some())
                        .count(),
                );
        }
        coverage.seals += usize::from(
            matches!(sim.log[at - 1], Entry::SealJob { .. }) && after.ignored == before.ignored,
        );
        for (job, old) in after.jobs.iter().zip(&before.jobs) {
            if job.spec.id == old.spec.id {
                coverage.rescales += job
                    .tasks
                    .iter()
                    .zip(&old.tasks)
                    .filter(|(a, b)| a.slots.len() != b.slots.len() && !b.slots.is_empty())
                    .count();
                coverage.pending_then_running += usize::from(
                    old.status == JobStatus::Pending
                        && !old.tasks.is_empty()
                        && job.status == JobStatus::Running,
                );
            }
        }
        coverage.colocated_running += after
            .jobs
            .iter()
            .filter(|j| {
                j.status == JobStatus::Running && j.spec.task_scheduler == TaskScheduler::Colocated
            })
            .count();
    }
    let end = sim.now();
    coverage.ignored += end.ignored;
    // Settled: every live joiner is in, every completed job sealed, every live process in.
    assert!(
        end.joins.is_empty(),
        "joins_settle: joins left {:?}",
        end.joins
    );
    // (With nobody in, nobody seals; the first process in will.)
    assert!(
        end.processes.is_empty()
            || !end
                .jobs
                .iter()
                .any(|j| j.status == JobStatus::Running && j.all_completed()),
        "completed_jobs_are_sealed:\n{end}"
    );
    let live: Vec<ProcessId> = sim
        .processes
        .iter()
        .filter(|p| p.alive)
        .map(|p| p.id)
        .collect();
    assert!(
        live.iter().all(|p| end.processes.contains_key(p)),
        "live_processes_are_in:\n{end}"
    );
    sim
}

fn runs() -> impl Strategy<Value = (usize, Vec<Op>)> {
    (3_usize..=7, prop::collection::vec(op(), 1..60))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn generated_runs_keep_every_invariant((processes, ops) in runs()) {
        run(processes, &ops, &mut Coverage::default(), false);
    }

    /// The time machine: the log replayed to any entry is the replica each simulated process
    /// held after playing that entry, for every entry of a recorded run.
    #[test]
    fn replay_to_any_entry_is_what_a_live_process_held((processes, ops) in runs()) {
        let played = run(processes, &ops, &mut Coverage::default(), true);
        let entries: Vec<(u64, &Entry)> =
            played.log.iter().enumerate().map(|(i, e)| (i as u64 + 1, e)).collect();
        for p in &played.processes {
            for (at, held) in &p.history {
                prop_assert_eq!(&replay(entries.iter().copied(), Some(*at)), held);
            }
        }
        prop_assert_eq!(&replay(entries.iter().copied(), None), played.now());
    }
}

/// The generator reaches every path: seals, rescales, a watcher leaving during a join, joins
/// interleaved with other entries, ignored entries, paused jobs resuming, colocated jobs.
#[test]
fn generated_runs_reach_every_path() {
    let mut runner = TestRunner::deterministic();
    let mut coverage = Coverage::default();
    for _ in 0..300 {
        let (processes, ops) = runs().new_tree(&mut runner).expect("a run").current();
        run(processes, &ops, &mut coverage, false);
    }
    assert!(coverage.seals > 0, "{coverage:?}");
    assert!(coverage.rescales > 0, "{coverage:?}");
    assert!(coverage.leaves_of_watchers > 0, "{coverage:?}");
    assert!(coverage.joins_interleaved > 0, "{coverage:?}");
    assert!(coverage.ignored > 0, "{coverage:?}");
    assert!(coverage.pending_then_running > 0, "{coverage:?}");
    assert!(coverage.colocated_running > 0, "{coverage:?}");
    assert!(coverage.restarts > 0, "{coverage:?}");
    assert!(coverage.killed_by_failures > 0, "{coverage:?}");
}
