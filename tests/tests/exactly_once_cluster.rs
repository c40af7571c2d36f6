//! Exactly-once state on a 3-node log cluster of `sardonyx log-server` processes: the job
//! process is killed with SIGKILL three times, a follower log server is killed during one run
//! and the Raft leader during another; the final state of every extent and group is exact, and
//! the restarted servers catch up; every vote reaches the JSON-lines output at least once. The
//! kill points are random, from a printed seed.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use sardonyx_state_log::{Role, ServerStatus};

/// Not a test: the entry point of the `sardonyx` processes the tests start.
#[test]
fn child_process() {
    child_main();
}

struct Cluster {
    addrs: Vec<String>,
    spec: String,
    servers: Vec<Option<Proc>>,
    rt: tokio::runtime::Runtime,
}

impl Cluster {
    fn start(dir: &Path) -> Cluster {
        let addrs: Vec<String> = (0..3)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let spec = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = Cluster {
            addrs,
            spec,
            servers: vec![None, None, None],
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        };
        for id in 1..=3 {
            c.start_server(id, dir);
        }
        c
    }

    fn start_server(&mut self, id: u64, dir: &Path) {
        let data = dir.join(format!("server-{id}")).display().to_string();
        let addr = self.addrs[id as usize - 1].clone();
        let id_s = id.to_string();
        let mut p = Proc::start(
            &[
                "log-server",
                "--id",
                &id_s,
                "--listen",
                &addr,
                "--data",
                &data,
                "--cluster",
                &self.spec,
            ],
            dir,
        );
        assert!(
            p.wait_line(Duration::from_secs(30), |l| l.contains("listening on"))
                .is_some(),
            "log server {id} did not start:\n{}",
            p.seen.join("\n")
        );
        self.servers[id as usize - 1] = Some(p);
    }

    fn kill(&mut self, id: u64) {
        if let Some(mut p) = self.servers[id as usize - 1].take() {
            p.kill9();
        }
    }

    fn status(&self) -> Vec<ServerStatus> {
        self.rt.block_on(sardonyx_state_log::status(&self.addrs))
    }

    /// Polls the servers' status until `ok` holds (Raft state has no event to wait on from
    /// outside the cluster).
    fn wait_status(&self, what: &str, ok: impl Fn(&[ServerStatus]) -> bool) -> Vec<ServerStatus> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = self.status();
            if ok(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {s:#?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn leader(&self) -> u64 {
        let s = self.wait_status("a leader", |s| s.iter().any(|x| x.role == Role::Leader));
        s.iter()
            .find(|x| x.role == Role::Leader)
            .and_then(|x| x.id)
            .unwrap()
    }
}

/// Starts a run and waits until it has read `n` records.
fn run_until(args: &[&str], dir: &Path, n: u64) -> Proc {
    let mut p = Proc::start(args, dir);
    read_at_least(&mut p, n);
    p
}

fn read_at_least(p: &mut Proc, n: u64) {
    p.wait_until_read(n, Duration::from_secs(120));
}

#[test]
fn killed_job_and_log_servers_the_final_state_is_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let input = dir.join("votes.jsonl");
    let votes = write_votes(&input, 60_000, 500);
    let job = vote_job(dir, &input).display().to_string();
    let data = dir.join("job-data").display().to_string();
    let mut cluster = Cluster::start(dir);
    let first_leader = cluster.leader();
    let log = cluster.addrs.join(",");
    let args = [
        "run",
        &job,
        "--log",
        &log,
        "--data",
        &data,
        "--progress-ms",
        "20",
    ];

    // The job is killed at random points (from the seed printed here), each run after reading
    // this many records.
    let seed = test_seed("killed_job_and_log_servers");
    let kills = draws(seed, &[7_000..16_000, 6_000..14_000, 1_000..10_000]);
    eprintln!("kill points (records read by each run): {kills:?}");

    // Run 1: a follower dies mid-run; the job goes on with two of three; then the job dies.
    let follower = (1..=3).find(|i| *i != first_leader).unwrap();
    let mut p = run_until(&args, dir, 5_000);
    cluster.kill(follower);
    read_at_least(&mut p, kills[0]);
    p.kill9();
    cluster.start_server(follower, dir);

    // Run 2: the leader dies mid-run; after re-election the job goes on; then the job dies.
    let mut p = run_until(&args, dir, 4_000);
    let leader = cluster.leader();
    cluster.kill(leader);
    read_at_least(&mut p, kills[1]);
    p.kill9();
    cluster.start_server(leader, dir);

    // Run 3: killed once more; run 4 completes.
    run_until(&args, dir, kills[2]).kill9();
    let (status, lines) = Proc::start(&args, dir).finish(Duration::from_secs(180));
    let out = lines.join("\n");
    assert!(status.success(), "final run failed:\n{out}");
    assert_eq!(recoveries(&lines).len(), 4, "{out}");
    // Figures for the record (visible with --nocapture).
    for l in lines
        .iter()
        .filter(|l| l.contains("recovered ") || l.contains("state log:"))
    {
        eprintln!("{l}");
    }
    assert_finals_equal(&oracle(&votes), &reported(dir));
    assert_every_vote_output(dir, &votes);

    // The restarted servers caught up: every server applied the same last index.
    cluster.wait_status("all servers caught up", |s| {
        s.len() == 3
            && s.iter().filter(|x| x.role == Role::Leader).count() == 1
            && s.iter().all(|x| x.role != Role::Unreachable)
            && s.iter()
                .all(|x| x.last_applied.is_some() && x.last_applied == s[0].last_applied)
    });

    // What an operator sees.
    let (status, lines) =
        Proc::start(&["log-status", "--log", &log], dir).finish(Duration::from_secs(30));
    assert!(status.success(), "{}", lines.join("\n"));
    let rows: Vec<&String> = lines.iter().filter(|l| l.contains("127.0.0.1:")).collect();
    assert_eq!(rows.len(), 3, "{}", lines.join("\n"));
    assert_eq!(rows.iter().filter(|l| l.contains(" leader ")).count(), 1);
    assert_eq!(rows.iter().filter(|l| l.contains(" follower ")).count(), 2);
}
