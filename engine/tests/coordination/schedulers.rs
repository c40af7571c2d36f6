//! Scheduler tables on small clusters, the join ring step by step, slots that move, entries that
//! do not apply, and the replica's JSON and text. Jobs are built with the real job builders and
//! turned into specs with `JobSpec::from_job`.

use sardonyx::coordination::placement::key_group_table;
use sardonyx::coordination::{
    diff, watched_by, Entry, Ignored, JobId, JobSpec, JobStatus, ProcessId, ProcessInfo, Replica,
};
use sardonyx::job::builder::JobBuilder;
use sardonyx::job::{AggregationDef, JobScheduler, TaskScheduler, TaskSpec, WindowDef};
use sardonyx::key_groups::moves;

use super::sim::Sim;

/// A vote-count-like job of three tasks: an input on one peer, a grouped windowed count
/// (between `min` and `max` peers), an output on one peer.
pub(super) fn three_tasks(id: &str, min: usize, max: usize) -> JobBuilder {
    JobBuilder::new()
        .id(id)
        .edge("read", "count")
        .edge("count", "write")
        .task(TaskSpec::input("read", "sardonyx/jsonl").param("path", "votes.jsonl"))
        .task(
            TaskSpec::function("count", "sardonyx/identity")
                .group_by_key("candidate")
                .uniqueness_key("vote_id")
                .peers_between(min, max),
        )
        .task(TaskSpec::output("write", "sardonyx/null"))
        .window(WindowDef::global(
            "totals",
            "count",
            AggregationDef::count(),
        ))
}

/// The spec of a built job.
pub(super) fn spec(job: JobBuilder) -> JobSpec {
    JobSpec::from_job(&job.build()).unwrap()
}

/// A cluster of processes with these slots, settled (every join done).
fn cluster(slots: &[u32]) -> (Sim, Vec<ProcessId>) {
    let mut sim = Sim::new();
    let ids = slots
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            let id = sim.start(i as u64 + 1, s);
            sim.settle_agreeing();
            id
        })
        .collect();
    (sim, ids)
}

/// Each task's slot count, or `None` when the job holds nothing.
fn counts(r: &Replica, job: &str) -> Option<Vec<usize>> {
    let j = r.job(&JobId(job.into())).unwrap();
    (j.status == JobStatus::Running).then(|| j.tasks.iter().map(|t| t.slots.len()).collect())
}

fn settle(sim: &mut Sim) {
    sim.settle_agreeing();
}

#[test]
fn two_jobs_of_three_tasks_balanced_greedy_and_percentage() {
    type Row = (
        JobScheduler,
        u32,
        &'static [u32],
        Option<[usize; 3]>,
        Option<[usize; 3]>,
    );
    let table: &[Row] = &[
        // Greedy: the first job takes all it can, the second waits.
        (JobScheduler::Greedy, 0, &[7], Some([1, 5, 1]), None),
        (JobScheduler::Greedy, 0, &[10], Some([1, 8, 1]), None),
        // Balanced: the first job gives back what the second needs to have an even share.
        (
            JobScheduler::Balanced,
            0,
            &[7],
            Some([1, 2, 1]),
            Some([1, 1, 1]),
        ),
        (
            JobScheduler::Balanced,
            0,
            &[10],
            Some([1, 3, 1]),
            Some([1, 3, 1]),
        ),
        // Percentage 70/30: ⌊7·0.7⌋ = 4 and ⌊7·0.3⌋ = 2, too few for the second's 3 tasks.
        (JobScheduler::Percentage, 70, &[7], Some([1, 2, 1]), None),
        (
            JobScheduler::Percentage,
            70,
            &[10],
            Some([1, 5, 1]),
            Some([1, 1, 1]),
        ),
    ];
    for &(scheduler, first_percentage, peers, first, second) in table {
        // The peers as processes of one slot each, then the jobs one after the other.
        let slots = vec![1; peers[0] as usize];
        let (mut sim, _) = cluster(&slots);
        let with = |job: JobBuilder, p: u32| {
            let job = job.job_scheduler(scheduler);
            if scheduler == JobScheduler::Percentage {
                job.percentage(p)
            } else {
                job
            }
        };
        sim.submit(spec(with(three_tasks("a", 1, 10), first_percentage)));
        settle(&mut sim);
        sim.submit(spec(with(three_tasks("b", 1, 10), 100 - first_percentage)));
        settle(&mut sim);
        let r = sim.now();
        let row = format!("{scheduler:?} on {peers:?}");
        assert_eq!(counts(r, "a"), first.map(Vec::from), "{row}\n{r}");
        assert_eq!(counts(r, "b"), second.map(Vec::from), "{row}\n{r}");
    }
}

#[test]
fn greedy_gives_the_second_job_everything_once_the_first_is_killed() {
    let (mut sim, _) = cluster(&[4, 3, 3]);
    sim.submit(spec(three_tasks("a", 1, 10)));
    sim.submit(spec(three_tasks("b", 1, 10)));
    settle(&mut sim);
    assert_eq!(counts(sim.now(), "a"), Some(vec![1, 8, 1]));
    assert_eq!(counts(sim.now(), "b"), None);
    sim.append(Entry::KillJob {
        job: JobId("a".into()),
    });
    settle(&mut sim);
    assert_eq!(counts(sim.now(), "b"), Some(vec![1, 8, 1]));
    let a = sim.now().job(&JobId("a".into())).unwrap();
    assert_eq!(a.status, JobStatus::Killed);
    assert!(a.slots().all(|(_, _, s)| s.owner.is_none()));
}

#[test]
fn the_percentage_task_scheduler_gives_each_task_its_share() {
    let (mut sim, _) = cluster(&[5, 5]);
    let job = JobBuilder::new()
        .id("p")
        .edge("read", "parse")
        .edge("parse", "write")
        .task(TaskSpec::input("read", "sardonyx/jsonl").percentage(20))
        .task(TaskSpec::function("parse", "f").percentage(50))
        .task(TaskSpec::output("write", "sardonyx/null").percentage(30))
        .task_scheduler(TaskScheduler::Percentage)
        .build();
    let mut job = job;
    for t in &mut job.catalog {
        t.min_peers = Some(1);
    }
    sim.submit(JobSpec::from_job(&job).unwrap());
    settle(&mut sim);
    assert_eq!(counts(sim.now(), "p"), Some(vec![2, 5, 3]));
}

#[test]
fn a_job_that_cannot_be_covered_stays_pending_until_a_process_joins() {
    let (mut sim, _) = cluster(&[2]);
    sim.submit(spec(three_tasks("a", 1, 1)));
    settle(&mut sim);
    let a = sim.now().job(&JobId("a".into())).unwrap();
    assert_eq!(a.status, JobStatus::Pending);
    assert!(a.tasks.is_empty(), "a pending job holds no slots");
    let late = sim.start(99, 1);
    settle(&mut sim);
    let r = sim.now();
    assert_eq!(counts(r, "a"), Some(vec![1, 1, 1]));
    assert_eq!(r.load(late), 1);
    assert_eq!(r.load(ProcessId(1)), 2);
}

#[test]
fn max_peers_grows_a_grouped_task_as_processes_join_moving_few_key_groups() {
    let (mut sim, _) = cluster(&[1, 1, 1, 1]);
    sim.submit(spec(three_tasks("a", 2, 4).key_groups(12)));
    settle(&mut sim);
    /// Per slot of the count task, its key groups as `(start, end)` ranges.
    type Division = Vec<Vec<(u32, u32)>>;
    let ranges = |r: &Replica| -> Division {
        r.job(&JobId("a".into())).unwrap().tasks[1]
            .slots
            .iter()
            .map(|s| s.key_groups.iter().map(|k| (k.start, k.end)).collect())
            .collect()
    };
    let table =
        |r: &Replica| key_group_table(&r.job(&JobId("a".into())).unwrap().tasks[1].slots, 12);
    assert_eq!(ranges(sim.now()), [vec![(0, 6)], vec![(6, 12)]]);
    let mut before = table(sim.now());
    // Each process that joins adds a slot to the count task, up to max_peers 4.
    let expected: [(Division, usize); 3] = [
        (vec![vec![(0, 4)], vec![(6, 10)], vec![(4, 6), (10, 12)]], 4),
        (
            vec![
                vec![(0, 3)],
                vec![(6, 9)],
                vec![(4, 6), (10, 11)],
                vec![(3, 4), (9, 10), (11, 12)],
            ],
            3,
        ),
        (
            vec![
                vec![(0, 3)],
                vec![(6, 9)],
                vec![(4, 6), (10, 11)],
                vec![(3, 4), (9, 10), (11, 12)],
            ],
            0,
        ),
    ];
    for (i, (want, moved)) in expected.into_iter().enumerate() {
        let replica_before = sim.now().clone();
        let joined = sim.start(100 + i as u64, 1);
        settle(&mut sim);
        let r = sim.now();
        // The diff names the re-divided task and the one new slot, on the process that joined.
        let changes = diff(&replica_before, r);
        let grown: Vec<_> = changes
            .layouts
            .iter()
            .map(|l| (l.task, l.from, l.to))
            .collect();
        let started: Vec<_> = changes
            .started_on(joined)
            .map(|c| (c.slot.task, c.slot.slot))
            .collect();
        if i < 2 {
            assert_eq!(grown, [(1, 2 + i, 3 + i)]);
            assert_eq!(started, [(1, 2 + i)]);
        } else {
            assert!(grown.is_empty() && started.is_empty());
        }
        assert_eq!(changes.owners.len(), started.len(), "no other slot moved");
        assert_eq!(ranges(r), want, "after join {i}\n{r}");
        let after = table(r);
        // The fewest moves a balanced division allows: the key groups above each old slot's
        // new share.
        assert_eq!(moves(&before, &after).len(), moved, "after join {i}");
        before = after;
        let a = r.job(&JobId("a".into())).unwrap();
        if i < 2 {
            assert_eq!(a.tasks[1].slots.last().unwrap().owner, Some(joined));
            assert_eq!(
                a.tasks[1].layout, r.position,
                "the accept_join set the layout"
            );
        }
    }
}

#[test]
fn a_process_leaving_moves_only_its_own_slots() {
    let (mut sim, ids) = cluster(&[3, 3, 3]);
    let mut job = three_tasks("a", 1, 1).build();
    for t in &mut job.catalog {
        t.min_peers = None;
        t.max_peers = None;
        t.n_peers = Some(2);
    }
    sim.submit(JobSpec::from_job(&job).unwrap());
    settle(&mut sim);
    let before = sim.now().clone();
    let gone = ids[1];
    assert_eq!(before.load(gone), 2);
    sim.kill(gone);
    let leave_at = sim.log.len() as u64;
    settle(&mut sim);
    let after = sim.now();
    let (old, new) = (
        before.job(&JobId("a".into())).unwrap(),
        after.job(&JobId("a".into())).unwrap(),
    );
    assert_eq!(new.status, JobStatus::Running);
    let mut moved = 0;
    for ((_, _, o), (_, _, n)) in old.slots().zip(new.slots()) {
        if o.owner == Some(gone) {
            moved += 1;
            assert_ne!(n.owner, Some(gone));
            assert!(n.owner.is_some());
            assert_eq!(n.epoch, leave_at, "a new owner gets a new epoch");
        } else {
            assert_eq!((n.owner, n.epoch), (o.owner, o.epoch), "others stay");
        }
    }
    assert_eq!(moved, 2);
    // The diff tells each process what to stop and start, with the epoch to fence with.
    let changes = diff(&before, after);
    assert_eq!(changes.left, [gone]);
    assert_eq!(changes.stopped_on(gone).count(), 2);
    let started: Vec<_> = ids
        .iter()
        .flat_map(|&p| changes.started_on(p))
        .map(|c| (c.from, c.epoch))
        .collect();
    assert_eq!(started, [(Some(gone), leave_at), (Some(gone), leave_at)]);
    assert!(changes.layouts.is_empty());
    assert_eq!(after.ring.len(), 2);
    assert_eq!(watched_by(after, ids[0]), Some(ids[2]));
    assert_eq!(watched_by(after, ids[2]), Some(ids[0]));
}

#[test]
fn colocated_runs_one_slot_of_every_task_per_process_and_waits_for_a_whole_process() {
    let (mut sim, ids) = cluster(&[3, 3, 3]);
    let mut job = three_tasks("c", 1, 3)
        .task_scheduler(TaskScheduler::Colocated)
        .build();
    for t in &mut job.catalog {
        t.min_peers = Some(1);
        t.max_peers = Some(3);
    }
    sim.submit(JobSpec::from_job(&job).unwrap());
    settle(&mut sim);
    let r = sim.now();
    assert_eq!(counts(r, "c"), Some(vec![3, 3, 3]));
    for &p in &ids {
        assert_eq!(r.load(p), 3, "{r}");
    }
    // A process goes: its three slots need a process with room for three; none has.
    sim.kill(ids[0]);
    settle(&mut sim);
    let r = sim.now();
    assert_eq!(counts(r, "c"), None, "{r}");
    let c = r.job(&JobId("c".into())).unwrap();
    assert_eq!(
        c.tasks.iter().map(|t| t.slots.len()).collect::<Vec<_>>(),
        [3, 3, 3]
    );
    // One joins: the job runs again, the new process running slot i of every task.
    let new = sim.start(50, 3);
    settle(&mut sim);
    let r = sim.now();
    assert_eq!(counts(r, "c"), Some(vec![3, 3, 3]));
    assert_eq!(r.load(new), 3);
    // The slots of the processes that stayed went back to them; the gone one's to the new one.
    let c = r.job(&JobId("c".into())).unwrap();
    for t in 0..3 {
        let owners: Vec<_> = c.tasks[t].slots.iter().map(|s| s.owner).collect();
        assert_eq!(owners, [Some(new), Some(ids[1]), Some(ids[2])]);
    }
}

#[test]
fn the_join_handshake_splices_each_joiner_after_its_watcher() {
    let mut sim = Sim::new();
    let (a, b) = (sim.start(10, 1), sim.start(11, 1));
    settle(&mut sim);
    let names: Vec<&str> = sim.log.iter().map(Entry::name).collect();
    assert_eq!(
        names,
        ["prepare_join", "prepare_join", "notify_join", "accept_join"]
    );
    assert_eq!(
        sim.log[2],
        Entry::NotifyJoin {
            joiner: b,
            watcher: a
        }
    );
    assert_eq!(sim.now().ring, [a, b]);
    // Two joins at once, each with its own watcher.
    let (c, d) = (sim.start(12, 1), sim.start(13, 1));
    settle(&mut sim);
    let r = sim.now();
    assert_eq!(r.ring.len(), 4);
    for p in [a, b, c, d] {
        assert!(watched_by(r, p).is_some());
    }
    // The watcher of a join leaves before notifying: the joiner gets another.
    let e = sim.start(14, 1);
    let watcher = sim.now().join_of(e).unwrap().stage.watcher().unwrap();
    sim.kill(watcher);
    settle(&mut sim);
    let r = sim.now();
    assert!(r.processes.contains_key(&e));
    assert!(!r.ring.contains(&watcher));
    assert_eq!(r.ring.len(), 4);
}

#[test]
fn entries_that_do_not_apply_change_nothing_but_the_count() {
    let (mut sim, ids) = cluster(&[2, 2]);
    sim.submit(spec(three_tasks("a", 1, 1)));
    settle(&mut sim);
    let base = sim.now().clone();
    let slot = base.job(&JobId("a".into())).unwrap().tasks[0].slots[0].clone();
    let bad = [
        (
            Entry::PrepareJoin {
                process: ProcessInfo {
                    id: ids[0],
                    address: "x:1".into(),
                    slots: 1,
                },
            },
            Ignored::AlreadyIn { process: ids[0] },
        ),
        (
            Entry::LeaveCluster {
                process: ProcessId(404),
            },
            Ignored::UnknownProcess {
                process: ProcessId(404),
            },
        ),
        (
            Entry::CompleteSlot {
                job: JobId("a".into()),
                task: 0,
                slot: 0,
                epoch: slot.epoch - 1,
            },
            Ignored::StaleSlot {
                job: JobId("a".into()),
                task: 0,
                slot: 0,
                epoch: slot.epoch - 1,
            },
        ),
        (
            Entry::SealJob {
                job: JobId("a".into()),
            },
            Ignored::JobState {
                job: JobId("a".into()),
                status: JobStatus::Running,
            },
        ),
        (
            Entry::SubmitJob {
                job: Box::new(spec(three_tasks("a", 1, 1))),
            },
            Ignored::DuplicateJob {
                job: JobId("a".into()),
            },
        ),
        (
            Entry::NotifyJoin {
                joiner: ids[1],
                watcher: ids[0],
            },
            Ignored::StaleJoinStep { joiner: ids[1] },
        ),
    ];
    let mut r = base.clone();
    for (i, (entry, why)) in bad.into_iter().enumerate() {
        let at = base.position + 1 + i as u64;
        assert_eq!(r.apply_in_place(&entry, at), Err(why.clone()));
        assert_eq!(r.last_ignored.as_ref().unwrap().reason, why);
        assert_eq!(r.ignored, base.ignored + 1 + i as u64);
        let mut same = r.clone();
        same.ignored = base.ignored;
        same.last_ignored = base.last_ignored.clone();
        same.position = base.position;
        assert_eq!(same, base, "{entry:?} changed the replica");
    }
    // A position not after the last one.
    let before = r.clone();
    assert_eq!(
        r.apply_in_place(
            &Entry::KillJob {
                job: JobId("a".into())
            },
            3
        ),
        Err(Ignored::OutOfOrder {
            position: 3,
            last: before.position
        })
    );
    assert_eq!(
        r.job(&JobId("a".into())).unwrap().status,
        JobStatus::Running
    );
}

#[test]
fn the_last_completion_is_sealed_once() {
    let (mut sim, _) = cluster(&[2, 2]);
    sim.submit(spec(three_tasks("a", 1, 1)));
    settle(&mut sim);
    let job = sim.now().job(&JobId("a".into())).unwrap().clone();
    for (t, i, s) in job.slots() {
        sim.append(Entry::CompleteSlot {
            job: JobId("a".into()),
            task: t as u32,
            slot: i as u32,
            epoch: s.epoch,
        });
    }
    settle(&mut sim);
    let seals = sim
        .log
        .iter()
        .filter(|e| matches!(e, Entry::SealJob { .. }))
        .count();
    assert_eq!(seals, 1);
    let r = sim.now();
    assert_eq!(
        r.job(&JobId("a".into())).unwrap().status,
        JobStatus::Completed
    );
    assert_eq!(r.ignored, 0);
    assert!(r.processes.keys().all(|&p| r.load(p) == 0));
}

#[test]
fn the_replica_as_json_and_as_text() {
    let (mut sim, _) = cluster(&[2]);
    sim.submit(spec(three_tasks("a", 1, 1).key_groups(4)));
    settle(&mut sim);
    let r = sim.now();
    let json = r.to_json_string();
    assert_eq!(serde_json::from_str::<Replica>(&json).unwrap(), *r);
    assert!(json.contains("\"0000000000000001\": {"), "{json}");
    assert_eq!(
        r.to_string(),
        "at entry 2: 1 processes, 0 joining, 1 jobs, 0 entries ignored\n\
         processes (in ring order):\n  \
           0000000000000001  127.0.0.1:7001  slots 0/2  watches nobody\n\
         job a: pending (submitted at entry 2, greedy / balanced)\n  \
           read: not started\n  count: not started\n  write: not started\n"
    );
    let (mut sim, _) = cluster(&[2, 2]);
    sim.submit(spec(three_tasks("a", 1, 1).key_groups(4)));
    settle(&mut sim);
    let text = sim.now().to_string();
    assert!(
        text.contains(
            "  count (layout 5):\n    slot 0: 0000000000000002 epoch 5 key groups 0..4\n"
        ),
        "{text}"
    );
}

#[test]
fn a_spec_from_the_example_job() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/votes.json");
    let job = sardonyx::Job::load(path).unwrap();
    let spec = JobSpec::from_job(&job).unwrap();
    assert_eq!(spec.id, JobId("vote-count".into()));
    assert_eq!(
        (spec.job_scheduler, spec.task_scheduler, spec.key_groups),
        (JobScheduler::Greedy, TaskScheduler::Balanced, 256)
    );
    let tasks: Vec<_> = spec
        .tasks
        .iter()
        .map(|t| (t.name.as_str(), t.peers, t.keyed, t.rescalable))
        .collect();
    use sardonyx::coordination::PeerBounds::Exact;
    assert_eq!(
        tasks,
        [
            ("read-votes", Exact(1), false, false),
            ("count-votes", Exact(2), true, true),
            ("voter-sessions", Exact(2), true, true),
            ("done", Exact(1), false, false),
        ]
    );
    assert_eq!(spec.job().unwrap(), job, "the job travels whole");
    // A cluster knows jobs by id.
    let mut anonymous = job.clone();
    anonymous.id = None;
    assert!(matches!(
        JobSpec::from_job(&anonymous),
        Err(sardonyx::coordination::JobSpecError::MissingId)
    ));
    // The spec travels in the log.
    let entry = Entry::SubmitJob {
        job: Box::new(spec.clone()),
    };
    assert_eq!(Entry::decode(&entry.encode()).unwrap(), entry);
}
