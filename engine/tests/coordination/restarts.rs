//! `restart_job` entry by entry: a restart at the job's version gives every owned slot a new
//! epoch (the entry's position, the job's new version) and counts; copies of it for the same
//! version, and restarts of a job that is not running, do not apply; a job whose failures
//! exceed `MAX_RESTARTS` is killed with the reason, while replays of expired ack trees never
//! kill it; a completion from the run before the restart is stale.

use sardonyx::coordination::{
    diff, Entry, Ignored, JobId, JobSpec, JobStatus, ProcessId, RestartReason, MAX_RESTARTS,
};

use super::schedulers::{spec, three_tasks};
use super::sim::Sim;

fn job() -> JobSpec {
    spec(three_tasks("a", 2, 2))
}

/// Two processes of three slots running job "a" (four slots), settled.
fn running() -> Sim {
    let mut sim = Sim::new();
    sim.start(1, 3);
    sim.settle_agreeing();
    sim.start(2, 3);
    sim.settle_agreeing();
    sim.submit(job());
    sim.settle_agreeing();
    assert_eq!(sim.now().job(&id()).unwrap().status, JobStatus::Running);
    sim
}

fn id() -> JobId {
    JobId("a".into())
}

fn failed() -> RestartReason {
    RestartReason::failed("write", "the sink is down")
}

fn restart(sim: &Sim, reason: RestartReason) -> Entry {
    Entry::RestartJob {
        job: id(),
        version: sim.now().job(&id()).unwrap().version(),
        reason,
    }
}

#[test]
fn a_restart_gives_every_owned_slot_a_new_epoch_and_copies_are_stale() {
    let mut sim = running();
    let before = sim.now().clone();
    let old = before.job(&id()).unwrap().version();
    let entry = restart(
        &sim,
        RestartReason::Expired {
            process: ProcessId(2),
        },
    );
    // Two processes append it for the same expiry.
    sim.append(entry.clone());
    sim.append(entry);
    sim.settle_agreeing();
    let at = before.position + 1;
    let after = sim.reference[at as usize].clone();
    let job = after.job(&id()).unwrap();
    assert_eq!(job.version(), at);
    assert!(job
        .slots()
        .all(|(_, _, s)| s.epoch == at && s.owner.is_some()));
    // The same owners: only the epochs changed.
    let owners = |r: &sardonyx::coordination::Replica| {
        r.job(&id())
            .unwrap()
            .slots()
            .map(|(_, _, s)| s.owner)
            .collect::<Vec<_>>()
    };
    assert_eq!(owners(&before), owners(&after));
    assert_eq!(
        (job.restarts.count, job.restarts.failures),
        (1, 0),
        "{:?}",
        job.restarts
    );
    // Every owner is told to stop and start its slots (same owner, new epoch).
    let d = diff(&before, &after);
    assert_eq!(d.owners.len(), 4);
    assert!(d.owners.iter().all(|c| c.from == c.to && c.epoch == at));
    // The copy for the old version did not apply.
    let end = sim.now();
    assert_eq!(end.ignored, before.ignored + 1);
    assert_eq!(
        end.last_ignored.as_ref().unwrap().reason,
        Ignored::StaleRestart {
            job: id(),
            version: old,
            current: at,
        }
    );
    assert_eq!(end.job(&id()).unwrap().restarts.count, 1);
    // A completion from the run before the restart is stale; one at the new epoch applies.
    let stale = Entry::CompleteSlot {
        job: id(),
        task: 0,
        slot: 0,
        epoch: old,
    };
    sim.append(stale);
    assert!(matches!(
        sim.now().last_ignored.as_ref().unwrap().reason,
        Ignored::StaleSlot { .. }
    ));
    sim.append(Entry::CompleteSlot {
        job: id(),
        task: 0,
        slot: 0,
        epoch: at,
    });
    assert!(sim.now().job(&id()).unwrap().tasks[0].slots[0].completed);
}

#[test]
fn failures_past_max_restarts_kill_the_job_with_the_reason_replays_never_do() {
    let mut sim = running();
    for _ in 0..2 * MAX_RESTARTS {
        let e = restart(
            &sim,
            RestartReason::Expired {
                process: ProcessId(1),
            },
        );
        sim.append(e);
    }
    for n in 1..=MAX_RESTARTS {
        let e = restart(&sim, failed());
        sim.append(e);
        let job = sim.now().job(&id()).unwrap();
        assert_eq!(job.status, JobStatus::Running);
        assert_eq!(job.restarts.failures, n);
        assert_eq!(job.restarts.count, 2 * MAX_RESTARTS + n);
    }
    let e = restart(&sim, failed());
    sim.append(e);
    sim.settle_agreeing();
    let job = sim.now().job(&id()).unwrap();
    assert_eq!(job.status, JobStatus::Killed);
    assert!(job.slots().all(|(_, _, s)| s.owner.is_none()));
    assert_eq!(
        job.restarts.killed_because.as_deref(),
        Some("task \"write\" failed again after 3 restarts: the sink is down")
    );
    let text = sim.now().to_string();
    assert!(
        text.contains("restarts: 9 (3 after failures, version "),
        "{text}"
    );
    assert!(
        text.contains("killed: task \"write\" failed again after 3 restarts: the sink is down"),
        "{text}"
    );
    // A killed job is not restarted.
    let e = Entry::RestartJob {
        job: id(),
        version: job.version(),
        reason: failed(),
    };
    sim.append(e);
    assert_eq!(
        sim.now().last_ignored.as_ref().unwrap().reason,
        Ignored::JobState {
            job: id(),
            status: JobStatus::Killed,
        }
    );
}

#[test]
fn restarts_of_unknown_or_pending_jobs_and_overlong_reasons_do_not_apply() {
    let mut sim = Sim::new();
    sim.append(Entry::RestartJob {
        job: id(),
        version: 0,
        reason: failed(),
    });
    assert_eq!(
        sim.now().last_ignored.as_ref().unwrap().reason,
        Ignored::UnknownJob { job: id() }
    );
    // Submitted with no process to run it: pending.
    sim.submit(job());
    sim.append(Entry::RestartJob {
        job: id(),
        version: 0,
        reason: failed(),
    });
    assert_eq!(
        sim.now().last_ignored.as_ref().unwrap().reason,
        Ignored::JobState {
            job: id(),
            status: JobStatus::Pending,
        }
    );
    let mut sim = running();
    let version = sim.now().job(&id()).unwrap().version();
    sim.append(Entry::RestartJob {
        job: id(),
        version,
        reason: RestartReason::Failed {
            task: "write".into(),
            error: "x".repeat(sardonyx::coordination::MAX_REASON_BYTES + 1),
        },
    });
    assert!(matches!(
        sim.now().last_ignored.as_ref().unwrap().reason,
        Ignored::Invalid { .. }
    ));
    assert_eq!(sim.now().job(&id()).unwrap().restarts.count, 0);
}

#[test]
fn the_cluster_allows_as_many_restarts_as_sardonyx_run() {
    assert_eq!(MAX_RESTARTS, sardonyx::runtime::MAX_RESTARTS);
}
