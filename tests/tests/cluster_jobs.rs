//! Jobs on a cluster of real processes (DESIGN §6, issue 20): `sardonyx log-server`s and
//! `sardonyx peer`s on loopback run the vote job submitted with `sardonyx submit --wait`. Peer
//! processes are killed with SIGKILL mid-run, one after the other, and one is started again:
//! the killed processes' slots move to the others, which recover them from their ledgers, and
//! the job completes with every extent exactly as an uninterrupted run computes it and every
//! vote in the output at least once. The same job on one process and on three gives the same
//! answer as `sardonyx run`.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Not a test: the entry point of the `sardonyx` processes the tests start.
#[test]
fn child_process() {
    child_main();
}

/// Upper bound on any one wait (each is awaited on an event; this only ends a broken run).
const WAIT: Duration = Duration::from_secs(120);

/// Starts a peer process in its own working directory `dir/name` (`slots` slots, the default
/// heartbeats and failure timeout) and waits until it is in the ring.
fn start_peer(dir: &Path, log: &str, name: &str, slots: u32) -> Proc {
    let cwd = dir.join(name);
    std::fs::create_dir_all(&cwd).unwrap();
    let trace = dir
        .join(format!("{name}.trace.jsonl"))
        .display()
        .to_string();
    let slots = slots.to_string();
    let args = [
        "peer",
        "--log",
        log,
        "--listen",
        "127.0.0.1:0",
        "--slots",
        &slots,
        "--data",
        "data",
        "--progress-ms",
        "50",
        "--trace-replicas",
        &trace,
    ];
    start_joined(&args, &cwd, &[("SARDONYX_LOG", "info")], name, WAIT)
}

/// The cluster as `cluster-status --json` prints it.
fn status(dir: &Path, log: &str) -> Value {
    cluster_status(dir, log, WAIT)
}

/// Per task, the owner of each slot of the cluster's only job (`None`: completed or none).
fn owners(status: &Value) -> Vec<Vec<Option<String>>> {
    status["jobs"][0]["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            t["slots"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["owner"].as_str().map(str::to_owned))
                .collect()
        })
        .collect()
}

/// Waits until the processes' outputs hold at least `n` lines in all (printing what the
/// peers said if they never do).
fn wait_for_output(dirs: &[PathBuf], n: usize, peers: &mut [Proc]) {
    let deadline = Instant::now() + WAIT;
    while output_lines(dirs) < n {
        if Instant::now() > deadline {
            for p in peers.iter_mut() {
                eprintln!("=== a peer:\n{}", p.drain().join("\n"));
            }
            panic!(
                "the output never reached {n} lines ({} so far)",
                output_lines(dirs)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Submits `job` with `--wait` (in the background).
fn submit(dir: &Path, log: &str, job: &Path) -> Proc {
    let job = job.display().to_string();
    let mut p = Proc::start(&["submit", &job, "--log", log, "--wait"], dir);
    let taken = p.wait_line(WAIT, |l| l.contains("submitted job"));
    assert!(taken.is_some(), "not submitted:\n{}", p.seen.join("\n"));
    p
}

fn votes_in_test() -> u64 {
    std::env::var("SARDONYX_CLUSTER_VOTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

#[test]
fn peer_processes_killed_mid_run_lose_no_vote_and_count_none_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let n = votes_in_test();
    let input = dir.join("votes.jsonl");
    let votes = write_votes(&input, n, n / 200);
    let job = relative_vote_job(dir, &input, "cluster-votes");
    let (_servers, log) = start_log_servers(dir, 3);
    // Six slots each: after two of the three processes are gone, the last holds the job's six.
    let mut peers = vec![
        start_peer(dir, &log, "a", 6),
        start_peer(dir, &log, "b", 6),
        start_peer(dir, &log, "c", 6),
    ];
    let dirs: Vec<PathBuf> = ["a", "b", "c"].iter().map(|p| dir.join(p)).collect();
    let submitted = submit(dir, &log, &job);

    // The job's slots are spread over the three processes.
    let first = owners(&status(dir, &log));
    let ids: Vec<String> = peers.iter().map(id_of).collect();
    for id in &ids {
        assert!(
            first.iter().flatten().any(|o| o.as_deref() == Some(id)),
            "process {id} holds no slot: {first:?}"
        );
    }

    // Kill the process reading the input mid-run: the input moves, with the windowed slots
    // that were there, and resumes from its committed position.
    wait_for_output(&dirs, n as usize / 4, &mut peers);
    let reader = first[0][0].clone().expect("the input has an owner");
    let k1 = ids.iter().position(|id| *id == reader).unwrap();
    peers[k1].kill9();
    let killed_at = Instant::now();
    let k2 = (k1 + 1) % 3;
    let survivor = (k1 + 2) % 3;
    // Its watcher declares it gone, and the slots move.
    let moved = |s: &Value| {
        owners(s)
            .iter()
            .flatten()
            .all(|o| o.as_deref() != Some(ids[k1].as_str()))
    };
    let deadline = Instant::now() + WAIT;
    while !moved(&status(dir, &log)) {
        assert!(
            Instant::now() < deadline,
            "the killed process's slots never moved"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let failover = killed_at.elapsed();
    eprintln!("slots moved {failover:?} after the kill");

    // Later, another.
    let before = output_lines(&dirs);
    wait_for_output(&dirs, before + n as usize / 4, &mut peers);
    peers[k2].kill9();
    // And the first one comes back (a new process in the same directory).
    let name = ["a", "b", "c"][k1];
    peers[k1] = start_peer(dir, &log, name, 6);

    let mut submitted = submitted;
    let ended = submitted.wait_line(WAIT, |l| l.contains("completed") || l.contains("killed"));
    if !ended.as_deref().is_some_and(|l| l.contains("completed")) {
        for (p, name) in peers.iter_mut().zip(["a", "b", "c"]) {
            eprintln!("=== peer {name}:\n{}", p.drain().join("\n"));
        }
        let status = status(dir, &log);
        panic!("the job did not complete: {ended:?}; the cluster: {status:#}");
    }
    let (ok, lines) = submitted.finish(WAIT);
    let out = lines.join("\n");
    assert!(ok.success(), "the job did not complete:\n{out}");
    assert!(out.contains("job \"cluster-votes\" completed"), "{out}");

    assert_finals_equal(&oracle(&votes), &reported_across(&dirs));
    assert_every_vote_output_across(&dirs, &votes);
    let survivor_log = peers[survivor].drain().join("\n");
    assert!(
        survivor_log.contains("windowed slot recovered"),
        "the survivor recovered no slot:\n{survivor_log}"
    );

    // The time machine: every replica a live process held equals `replay --to` its position.
    let trace =
        std::fs::read_to_string(dir.join(format!("{}.trace.jsonl", ["a", "b", "c"][survivor])))
            .unwrap();
    let mut checked = 0;
    for line in trace.lines() {
        let held: Value = serde_json::from_str(line).unwrap();
        let at = held["position"].as_u64().unwrap().to_string();
        let (ok, lines) =
            Proc::start(&["replay", "--log", &log, "--to", &at, "--json"], dir).finish(WAIT);
        assert!(ok.success(), "{}", lines.join("\n"));
        let replayed: Value = lines
            .iter()
            .find_map(|l| l.find('{').map(|i| serde_json::from_str(&l[i..]).unwrap()))
            .unwrap();
        assert_eq!(replayed["replica"], held["replica"], "at entry {at}");
        checked += 1;
    }
    assert!(checked > 3, "{checked} replicas checked");
}

/// The same job on one peer process and on three gives the answer `sardonyx run` gives, which
/// is the oracle's.
#[test]
fn one_process_or_three_give_the_same_answer_as_a_local_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let input = dir.join("votes.jsonl");
    let votes = write_votes(&input, 50_000, 300);
    let expected = oracle(&votes);
    let (_servers, log) = start_log_servers(dir, 1);

    // One process with every slot.
    let solo = start_peer(dir, &log, "solo", 6);
    let job = relative_vote_job(dir, &input, "votes-on-one");
    let (ok, lines) = submit(dir, &log, &job).finish(WAIT);
    assert!(ok.success(), "{}", lines.join("\n"));
    let on_one = reported_across(&[dir.join("solo")]);
    assert_finals_equal(&expected, &on_one);
    // It leaves the cluster (the next processes join a ring without it).
    solo.signal("TERM");
    let (ok, lines) = solo.finish(WAIT);
    assert!(ok.success(), "{}", lines.join("\n"));

    // Three processes (two slots each: the job needs them all).
    let _peers: Vec<Proc> = ["x", "y", "z"]
        .iter()
        .map(|p| start_peer(dir, &log, p, 2))
        .collect();
    let job = relative_vote_job(dir, &input, "votes-on-three");
    let (ok, lines) = submit(dir, &log, &job).finish(WAIT);
    assert!(ok.success(), "{}", lines.join("\n"));
    let dirs: Vec<PathBuf> = ["x", "y", "z"].iter().map(|p| dir.join(p)).collect();
    let on_three = reported_across(&dirs);
    assert_eq!(on_one, on_three);
    assert_every_vote_output_across(&dirs, &votes);

    // `sardonyx run` in one process, embedded log.
    let local = dir.join("local");
    std::fs::create_dir_all(&local).unwrap();
    let job = job.display().to_string();
    let (ok, lines) = Proc::start(&["run", &job, "--data", "data"], &local).finish(WAIT);
    assert!(ok.success(), "{}", lines.join("\n"));
    assert_eq!(reported_across(&[local]), on_three);
}

/// The last `read` count in a peer's progress lines seen so far.
fn last_read(p: &mut Proc) -> u64 {
    p.drain()
        .iter()
        .rev()
        .find_map(|l| progress_count(l, "read"))
        .unwrap_or(0)
}

/// Backpressure crosses processes: the job's output, in one process, writes to a pipe nobody
/// reads; the input, in the other, stops reading after a bounded number of batches — what the
/// channels, the messaging credit and the pipe hold — instead of reading its whole file. Once
/// the pipe is read, the job completes with every line.
#[test]
fn a_stalled_output_in_one_process_holds_the_input_in_another() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let input = dir.join("lines.jsonl");
    let lines = 100_000;
    // About 100 bytes a line: the pipe's 64 KiB hold some 650 of them.
    let pad = "x".repeat(80);
    let text: String = (0..lines)
        .map(|i| format!("{{\"n\":{i},\"pad\":\"{pad}\"}}\n"))
        .collect();
    std::fs::write(&input, text).unwrap();
    let job = serde_json::json!({
        "id": "held-back",
        "workflow": [["read", "write"]],
        "catalog": [
            {"name": "read", "type": "input", "plugin": "sardonyx/jsonl",
             "params": {"path": input.display().to_string()}, "batch_size": 100},
            {"name": "write", "type": "output", "plugin": "sardonyx/jsonl",
             "params": {"path": "out.fifo"}, "batch_size": 100}
        ]
    });
    let job_path = dir.join("held-back.json");
    std::fs::write(&job_path, job.to_string()).unwrap();
    let (_servers, log) = start_log_servers(dir, 1);
    // One slot each: the input runs in one process, the output in the other.
    let mut peers = [start_peer(dir, &log, "p", 1), start_peer(dir, &log, "q", 1)];
    // The output's file is a pipe in each process's directory; each is opened for reading
    // (which waits for its writer) and read only when the test says so.
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let go_rx = std::sync::Arc::new(std::sync::Mutex::new(go_rx));
    let (count_tx, count_rx) = std::sync::mpsc::channel::<usize>();
    for name in ["p", "q"] {
        let fifo = dir.join(name).join("out.fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let (go, count) = (go_rx.clone(), count_tx.clone());
        std::thread::spawn(move || {
            use std::io::Read;
            let mut f = std::fs::File::open(&fifo).unwrap();
            let _ = go.lock().unwrap().recv();
            let mut all = Vec::new();
            f.read_to_end(&mut all).unwrap();
            let _ = count.send(all.iter().filter(|&&b| b == b'\n').count());
        });
    }
    let submitted = submit(dir, &log, &job_path);

    // Wait until the reading process's count stops moving for 20 progress lines (a second).
    let deadline = Instant::now() + WAIT;
    let (mut held, mut same) = (0, 0);
    while same < 20 {
        assert!(Instant::now() < deadline, "the input never stopped");
        let mut moved = false;
        for p in peers.iter_mut() {
            p.wait_line(Duration::from_millis(200), |l| l.starts_with("progress: "));
            let read = last_read(p);
            if read > held {
                held = read;
                moved = true;
            }
        }
        same = if moved { 0 } else { same + 1 };
    }
    eprintln!("the input stopped at {held} of {lines} lines");
    // What can be in flight, in batches of 100: the input's own, its channel to the forwarder
    // (8), the messaging credit (4), the receiver's hand and the output's channel (8), what the
    // output gathered and holds (2), and the pipe's 64 KiB (under 7 batches of these lines):
    // about 30 batches (40 allowed), against the 1,000 of the file.
    assert!(held > 0, "the input read nothing");
    assert!(
        held <= 4_000,
        "the input read {held} lines while the output could take none: no backpressure"
    );

    // Read the pipes: the job completes with every line.
    go_tx.send(()).unwrap();
    go_tx.send(()).unwrap();
    let (ok, out) = submitted.finish(WAIT);
    assert!(ok.success(), "{}", out.join("\n"));
    let written = count_rx.recv_timeout(WAIT).unwrap();
    assert_eq!(written, lines);
}

/// A process cut off from the log stops its slots (DESIGN §6): with the only log server frozen
/// (SIGSTOP), both peer processes stop their runs within the failure timeout, and the outputs
/// stop growing; when the server runs again, each leaves the cluster (its slots move) and joins
/// again as a new process, and the job completes on them with every extent exact.
#[test]
fn peers_cut_off_from_the_log_stop_their_slots_and_join_again() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let input = dir.join("votes.jsonl");
    let votes = write_votes(&input, 200_000, 500);
    let job = relative_vote_job(dir, &input, "cut-off-votes");
    let (servers, log) = start_log_servers(dir, 1);
    let mut peers = vec![start_peer(dir, &log, "a", 3), start_peer(dir, &log, "b", 3)];
    let dirs: Vec<PathBuf> = ["a", "b"].iter().map(|p| dir.join(p)).collect();
    let first_ids: Vec<String> = peers.iter().map(id_of).collect();
    let mut submitted = submit(dir, &log, &job);
    wait_for_output(&dirs, 40_000, &mut peers);

    servers[0].signal("STOP");
    for p in peers.iter_mut() {
        let cut = p.wait_line(WAIT, |l| {
            l.contains("cut off from the log for the failure timeout")
        });
        assert!(cut.is_some(), "not cut off:\n{}", p.drain().join("\n"));
    }
    // Stopped: twenty progress lines later (a second), the outputs have not grown.
    let stopped_at = output_lines(&dirs);
    for _ in 0..20 {
        peers[0].wait_line(WAIT, |l| l.starts_with("progress: "));
    }
    assert_eq!(
        output_lines(&dirs),
        stopped_at,
        "a cut-off process kept writing"
    );

    servers[0].signal("CONT");
    for (p, id) in peers.iter_mut().zip(&first_ids) {
        let left = p.wait_line(WAIT, |l| l.contains("joining again as a new process"));
        assert!(left.is_some(), "{}", p.drain().join("\n"));
        let joined = p.wait_line(WAIT, |l| l.contains("joined the cluster"));
        assert!(
            joined.as_deref().is_some_and(|l| !l.contains(id.as_str())),
            "did not join again with a new id: {joined:?}\n{}",
            p.drain().join("\n")
        );
    }
    let ended = submitted.wait_line(WAIT, |l| l.contains("completed") || l.contains("killed"));
    assert!(
        ended.as_deref().is_some_and(|l| l.contains("completed")),
        "{ended:?}"
    );
    assert_finals_equal(&oracle(&votes), &reported_across(&dirs));
    assert_every_vote_output_across(&dirs, &votes);
}

/// `kill-job` kills a running job (`submit --wait` then exits non-zero, and the job's slots
/// stop); a job whose run fails in a process (its input file does not exist) is killed by that
/// process; `kill-job` of a job that is not running appends nothing and says why.
#[test]
fn killed_and_failing_jobs_end_submit_wait_with_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let input = dir.join("votes.jsonl");
    write_votes(&input, 300_000, 0);
    let (_servers, log) = start_log_servers(dir, 1);
    let mut peers = vec![start_peer(dir, &log, "a", 6)];
    let dirs = vec![dir.join("a")];

    let job = relative_vote_job(dir, &input, "to-kill");
    let mut submitted = submit(dir, &log, &job);
    wait_for_output(&dirs, 1_000, &mut peers);
    let (ok, lines) = Proc::start(&["kill-job", "to-kill", "--log", &log], dir).finish(WAIT);
    assert!(ok.success(), "{}", lines.join("\n"));
    assert!(lines.iter().any(|l| l.contains("killed job \"to-kill\"")));
    let ended = submitted.wait_line(WAIT, |l| {
        l.contains("was killed") || l.contains("completed")
    });
    assert!(
        ended
            .as_deref()
            .is_some_and(|l| l.contains("job \"to-kill\" was killed")),
        "{ended:?}"
    );
    let (ok, _) = submitted.finish(WAIT);
    assert!(
        !ok.success(),
        "submit --wait of a killed job exits non-zero"
    );
    let stopped = peers[0].wait_line(WAIT, |l| l.contains("stopping this process's run"));
    assert!(stopped.is_some(), "{}", peers[0].drain().join("\n"));
    let st = status(dir, &log);
    assert_eq!(st["jobs"][0]["status"], "killed", "{st:#}");

    // Killing it again: nothing to kill.
    let (ok, lines) = Proc::start(&["kill-job", "to-kill", "--log", &log], dir).finish(WAIT);
    assert!(!ok.success());
    assert!(
        lines
            .iter()
            .any(|l| l.contains("job \"to-kill\" is killed: nothing to kill")),
        "{}",
        lines.join("\n")
    );

    // A run that fails kills its job, with the cause in the process's log.
    let broken = relative_vote_job(dir, &dir.join("no-such-file.jsonl"), "broken");
    let (ok, lines) = submit(dir, &log, &broken).finish(WAIT);
    assert!(!ok.success());
    assert!(
        lines
            .iter()
            .any(|l| l.contains("job \"broken\" was killed")),
        "{}",
        lines.join("\n")
    );
    let failed = peers[0].wait_line(WAIT, |l| l.contains("this process's run failed"));
    assert!(
        failed
            .as_deref()
            .is_some_and(|l| l.contains("no-such-file.jsonl")),
        "{failed:?}"
    );
}

/// The slot counts of the cluster's only job's tasks, and whether a slot of one owns key groups
/// that are not one range (a division `reassign` made that is not contiguous).
fn shape(status: &Value) -> (Vec<usize>, bool) {
    let tasks = status["jobs"][0]["tasks"].as_array().unwrap();
    let counts = tasks
        .iter()
        .map(|t| t["slots"].as_array().unwrap().len())
        .collect();
    let uneven = tasks
        .iter()
        .flat_map(|t| t["slots"].as_array().unwrap())
        .any(|s| {
            s["key_groups"]
                .as_array()
                .is_some_and(|ranges| ranges.len() > 1)
        });
    (counts, uneven)
}

/// Waits until `pred` holds of the cluster's status, and returns that status.
fn wait_for_status(dir: &Path, log: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = status(dir, log);
        if pred(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "never {what}: {s:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Tasks with `min_peers`/`max_peers` grow while the job runs as processes join (their key
/// groups re-divided with as few moves as possible, which leaves a slot with more than one
/// range), and shrink when a process is killed; each new slot gathers its key groups' state
/// from the slots of the divisions before it, and the job still counts every vote exactly
/// once.
#[test]
fn tasks_grown_and_shrunk_while_running_count_every_vote_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let n = votes_in_test() * 3 / 10;
    let input = dir.join("votes.jsonl");
    let votes = write_votes(&input, n, n / 200);
    let job = relative_vote_job(dir, &input, "growing-votes");
    let mut spec: Value = serde_json::from_str(&std::fs::read_to_string(&job).unwrap()).unwrap();
    for t in spec["catalog"].as_array_mut().unwrap() {
        if t["name"] == "count-votes" || t["name"] == "voter-sessions" {
            let t = t.as_object_mut().unwrap();
            t.remove("n_peers");
            t.insert("min_peers".into(), 1.into());
            t.insert("max_peers".into(), 3.into());
        }
    }
    std::fs::write(&job, serde_json::to_string_pretty(&spec).unwrap()).unwrap();
    let (_servers, log) = start_log_servers(dir, 3);
    let names = ["a", "b", "c"];
    let dirs: Vec<PathBuf> = names.iter().map(|p| dir.join(p)).collect();
    // The floor: one slot per task.
    let mut peers = vec![start_peer(dir, &log, "a", 4)];
    let submitted = submit(dir, &log, &job);
    let windowed = |s: &Value| shape(s).0[1..3].iter().sum::<usize>();
    assert_eq!(shape(&status(dir, &log)).0, vec![1, 1, 1, 1]);

    // A second process joins: the windowed tasks grow.
    wait_for_output(&dirs, 2 * n as usize / 10, &mut peers);
    peers.push(start_peer(dir, &log, "b", 3));
    wait_for_status(dir, &log, "grown to 5 windowed slots", |s| windowed(s) == 5);
    // A third: both at their max_peers, one of them re-divided unevenly.
    let before = output_lines(&dirs);
    wait_for_output(&dirs, before + 2 * n as usize / 10, &mut peers);
    peers.push(start_peer(dir, &log, "c", 3));
    let grown = wait_for_status(dir, &log, "grown to 3 + 3", |s| windowed(s) == 6);
    let (_, uneven) = shape(&grown);
    assert!(uneven, "no slot owns more than one range: {grown:#}");

    // The second process is killed: its slots go, the tasks shrink to what is left.
    let before = output_lines(&dirs);
    wait_for_output(&dirs, before + 2 * n as usize / 10, &mut peers);
    let b = id_of(&peers[1]);
    peers[1].kill9();
    wait_for_status(dir, &log, "shrunk after the kill", |s| {
        owners(s)
            .iter()
            .flatten()
            .all(|o| o.as_deref() != Some(b.as_str()))
    });

    let mut submitted = submitted;
    let ended = submitted.wait_line(WAIT, |l| l.contains("completed") || l.contains("killed"));
    let logs: Vec<String> = peers.iter_mut().map(|p| p.drain().join("\n")).collect();
    if !ended.as_deref().is_some_and(|l| l.contains("completed")) {
        for (l, name) in logs.iter().zip(names) {
            eprintln!("=== peer {name}:\n{l}");
        }
        panic!("the job did not complete: {ended:?}");
    }
    let (ok, lines) = submitted.finish(WAIT);
    assert!(ok.success(), "{}", lines.join("\n"));
    assert_finals_equal(&oracle(&votes), &reported_across(&dirs));
    assert_every_vote_output_across(&dirs, &votes);
    let gathered = logs
        .iter()
        .map(|l| l.matches("gathered a rescaled slot's first state").count())
        .sum::<usize>();
    assert!(gathered >= 4, "{gathered} slots gathered a first state");
}
