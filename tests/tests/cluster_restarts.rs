//! Restarts of a job's runs in a cluster of real processes (issue 20 items 2 and 6): a log
//! server and two `sardonyx peer`s on loopback run the vote job submitted with `sardonyx submit
//! --wait`.
//!
//! - A task with `flux_policy: recover` whose sink fails (the test-only output
//!   `sardonyx-test/failing-jsonl`, failing as often as `SARDONYX_TEST_FAILING_WRITES` says in
//!   each process): the failing process appends `restart_job`, every process starts a new run
//!   from the committed positions and the ledgers, and the job completes with every extent
//!   exactly the oracle's. Failing more often than `MAX_RESTARTS` (3) kills the job, and
//!   `submit --wait` exits 1 naming the cause.
//! - A batch lost between two live processes (`SARDONYX_TEST_DROP_INCOMING_BATCH`: a receiving
//!   process drops one incoming batch without acknowledging it): its ack tree expires after the
//!   peers' short `--pending-timeout-ms`, the sender appends `restart_job`, and the next run
//!   replays the batch from the input: the job completes with the exact answer.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Not a test: the entry point of the `sardonyx` processes the tests start.
#[test]
fn child_process() {
    child_main();
}

/// Upper bound on any one wait (each is awaited on an event; this only ends a broken run).
const WAIT: Duration = Duration::from_secs(60);

/// Votes in each test's input.
const VOTES: u64 = 20_000;

/// Starts a peer process with three slots in its own working directory `dir/name`, with
/// `env` and `extra` arguments, and waits until it is in the ring.
fn start_peer(dir: &Path, log: &str, name: &str, env: &[(&str, &str)], extra: &[&str]) -> Proc {
    let cwd = dir.join(name);
    std::fs::create_dir_all(&cwd).unwrap();
    let mut args = vec![
        "peer",
        "--log",
        log,
        "--listen",
        "127.0.0.1:0",
        "--slots",
        "3",
        "--data",
        "data",
        "--progress-ms",
        "500",
    ];
    args.extend_from_slice(extra);
    let mut env = env.to_vec();
    env.push(("SARDONYX_LOG", "info"));
    start_joined(&args, &cwd, &env, name, WAIT)
}

/// The cluster as `cluster-status --json` prints it.
fn status(dir: &Path, log: &str) -> Value {
    cluster_status(dir, log, WAIT)
}

/// The job `id` in `status`.
fn job<'a>(status: &'a Value, id: &str) -> &'a Value {
    status["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["spec"]["id"] == id)
        .unwrap_or_else(|| panic!("no job {id} in {status:#}"))
}

/// The vote job of [`relative_vote_job`] with id `id`, its output `done` written by the
/// test-only failing output with `flux_policy: recover`.
fn failing_vote_job(dir: &Path, input: &Path, id: &str) -> PathBuf {
    let path = relative_vote_job(dir, input, id);
    let mut job: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let done = job["catalog"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|t| t["name"] == "done")
        .unwrap();
    done["plugin"] = Value::from("sardonyx-test/failing-jsonl");
    done["flux_policy"] = Value::from("recover");
    std::fs::write(&path, serde_json::to_string_pretty(&job).unwrap()).unwrap();
    path
}

/// Runs `sardonyx submit JOB --wait` to its end: (success, every line it printed). Fails the
/// test with what the peers printed if it does not end within [`WAIT`].
fn submit_and_wait(
    dir: &Path,
    log: &str,
    job: &Path,
    env: &[(&str, &str)],
    peers: &mut [(&str, Proc)],
) -> (bool, String) {
    let job = job.display().to_string();
    let mut p = Proc::start_with_env(&["submit", &job, "--log", log, "--wait"], dir, env);
    let ended = p.wait_line(WAIT, |l| {
        l.contains("completed (entry") || l.contains("was killed")
    });
    if ended.is_none() {
        let status = status(dir, log);
        panic!(
            "the job neither completed nor was killed:\n{}\n{}\n{status:#}",
            p.seen.join("\n"),
            logs(peers)
        );
    }
    let (ok, lines) = p.finish(WAIT);
    (ok.success(), lines.join("\n"))
}

/// Every line the peers printed so far, each prefixed with its peer's name.
fn logs(peers: &mut [(&str, Proc)]) -> String {
    peers
        .iter_mut()
        .flat_map(|(name, p)| {
            let name = name.to_owned();
            p.drain()
                .iter()
                .map(move |l| format!("{name}: {l}"))
                .collect::<Vec<_>>()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// How many `restart_job` entries the peers appended (their `appended to the coordination
/// log` lines).
fn restarts_appended(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("appended to the coordination log") && l.contains("restart_job"))
        .count()
}

/// The output fails twice in the process that runs it: each failure restarts the job (two
/// `restart_job` entries apply), and the job completes with the exact answer.
#[test]
fn flux_policy_recover_restarts_the_job_on_every_process_and_counts_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let input = dir.join("votes.jsonl");
    let votes = write_votes(&input, VOTES, VOTES / 200);
    let (_servers, log) = start_log_servers(dir, 1);
    // Whichever process runs the output fails twice.
    let env = [("SARDONYX_TEST_FAILING_WRITES", "2")];
    let mut peers = vec![
        ("a", start_peer(dir, &log, "a", &env, &[])),
        ("b", start_peer(dir, &log, "b", &env, &[])),
    ];
    let dirs: Vec<PathBuf> = ["a", "b"].iter().map(|p| dir.join(p)).collect();
    // `submit` validates the job with the same registry (no writes of its own).
    let submit_env = [("SARDONYX_TEST_FAILING_WRITES", "0")];

    let job_path = failing_vote_job(dir, &input, "recovering");
    let (ok, out) = submit_and_wait(dir, &log, &job_path, &submit_env, &mut peers);
    if !ok {
        panic!("{out}\n{}", logs(&mut peers));
    }
    assert!(out.contains("job \"recovering\" completed"), "{out}");
    assert_finals_equal(&oracle(&votes), &reported_across(&dirs));
    assert_every_vote_output_across(&dirs, &votes);
    let st = status(dir, &log);
    let restarts = &job(&st, "recovering")["restarts"];
    assert_eq!(restarts["count"], 2, "{st:#}");
    assert_eq!(restarts["failures"], 2, "{st:#}");
    let reason = &restarts["last"][1]["failed"];
    assert_eq!(reason["task"], "done", "{st:#}");
    assert_eq!(
        reason["error"], "task \"done\": writing: the test sink fails",
        "{st:#}"
    );
    let peer_logs = logs(&mut peers);
    assert_eq!(restarts_appended(&peer_logs), 2, "{peer_logs}");
    assert_eq!(
        peer_logs
            .lines()
            .filter(|l| l.contains("test hook: a write of sardonyx-test/failing-jsonl fails"))
            .count(),
        2,
        "{peer_logs}"
    );
    // Both processes started a run of each version (the first and two restarts).
    for name in ["a", "b"] {
        let starts = peer_logs
            .lines()
            .filter(|l| l.starts_with(&format!("{name}: ")))
            .filter(|l| l.contains("starting this process's run"))
            .count();
        assert_eq!(starts, 3, "{name}:\n{peer_logs}");
    }
}

/// A job whose output fails more often than `MAX_RESTARTS` (3) is killed by the fourth
/// failure's `restart_job`, and `submit --wait` exits 1 naming the cause.
#[test]
fn failures_past_max_restarts_kill_the_job_with_the_cause() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let input = dir.join("votes.jsonl");
    write_votes(&input, VOTES, 0);
    let (_servers, log) = start_log_servers(dir, 1);
    let env = [("SARDONYX_TEST_FAILING_WRITES", "10")];
    let mut peers = vec![
        ("a", start_peer(dir, &log, "a", &env, &[])),
        ("b", start_peer(dir, &log, "b", &env, &[])),
    ];
    let submit_env = [("SARDONYX_TEST_FAILING_WRITES", "0")];
    let job_path = failing_vote_job(dir, &input, "failing");
    let (ok, out) = submit_and_wait(dir, &log, &job_path, &submit_env, &mut peers);
    assert!(!ok, "submit --wait of a killed job exits non-zero:\n{out}");
    assert!(
        out.contains("was killed (entry ",)
            && out.contains(
                "): task \"done\" failed again after 3 restarts: task \"done\": writing: the test \
             sink fails"
            ),
        "{out}"
    );
    let st = status(dir, &log);
    let failing = job(&st, "failing");
    assert_eq!(failing["status"], "killed", "{st:#}");
    assert_eq!(failing["restarts"]["failures"], 3, "{st:#}");
    assert_eq!(failing["restarts"]["count"], 3, "{st:#}");
    let peer_logs = logs(&mut peers);
    assert_eq!(restarts_appended(&peer_logs), 4, "{peer_logs}");
    let text = {
        let (ok, lines) = Proc::start(&["cluster-status", "--log", &log], dir).finish(WAIT);
        assert!(ok.success());
        lines.join("\n")
    };
    assert!(
        text.contains("killed: task \"done\" failed again after 3 restarts"),
        "{text}"
    );
}

/// One batch between the two processes is dropped by the receiver and never acknowledged: the
/// sender's ack tree expires after `pending_timeout`, the sender appends `restart_job`, and
/// the next run replays the batch from the input's committed position: the job completes with
/// the exact answer. (Without the replay the job never completes: the slot that lost the
/// batch waits for it.)
#[test]
fn a_batch_lost_between_live_processes_is_replayed_after_pending_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let input = dir.join("votes.jsonl");
    let votes = write_votes(&input, VOTES, VOTES / 200);
    let (_servers, log) = start_log_servers(dir, 1);
    let env = [("SARDONYX_TEST_DROP_INCOMING_BATCH", "3")];
    let extra = ["--pending-timeout-ms", "8000"];
    let mut peers = vec![
        ("a", start_peer(dir, &log, "a", &env, &extra)),
        ("b", start_peer(dir, &log, "b", &env, &extra)),
    ];
    let dirs: Vec<PathBuf> = ["a", "b"].iter().map(|p| dir.join(p)).collect();

    let job_path = relative_vote_job(dir, &input, "replayed");
    let (ok, out) = submit_and_wait(dir, &log, &job_path, &[], &mut peers);
    if !ok {
        panic!("{out}\n{}", logs(&mut peers));
    }
    assert!(out.contains("job \"replayed\" completed"), "{out}");
    assert_finals_equal(&oracle(&votes), &reported_across(&dirs));
    assert_every_vote_output_across(&dirs, &votes);

    let peer_logs = logs(&mut peers);
    let dropped = peer_logs
        .lines()
        .filter(|l| l.contains("test hook: an incoming batch was dropped"))
        .count();
    assert!(
        (1..=2).contains(&dropped),
        "{dropped} dropped:\n{peer_logs}"
    );
    assert!(
        peer_logs.contains("was not acknowledged within pending_timeout"),
        "{peer_logs}"
    );
    let st = status(dir, &log);
    let restarts = &job(&st, "replayed")["restarts"];
    let count = restarts["count"].as_u64().unwrap();
    assert!(
        (1..=dropped as u64).contains(&count),
        "{count} restarts for {dropped} lost batches: {st:#}"
    );
    assert_eq!(restarts["failures"], 0, "{st:#}");
    assert!(
        restarts["last"][1]["expired"]["process"].is_string(),
        "{st:#}"
    );
    assert!(restarts_appended(&peer_logs) >= 1, "{peer_logs}");
}
