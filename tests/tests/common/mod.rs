//! Helpers of the exactly-once tests: real `sardonyx` processes (this test executable re-run as
//! the command line, see [`child_main`]), a vote workload, and the oracle of its final state.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

const CHILD_ARGS: &str = "SARDONYX_TEST_CHILD_ARGS";

/// Call from a `#[test] fn child_process()`: when this executable was started by [`Proc`], it
/// runs the `sardonyx` command line with the given arguments and exits; otherwise it does
/// nothing.
pub fn child_main() {
    let Ok(args) = std::env::var(CHILD_ARGS) else {
        return;
    };
    let args: Vec<String> = serde_json::from_str(&args).expect("child args");
    let code = sardonyx::cli::main_from(std::iter::once("sardonyx".to_owned()).chain(args));
    std::io::stdout().flush().ok();
    // ExitCode has no accessor: map success/failure by re-encoding through the process exit.
    std::process::exit(if code == std::process::ExitCode::SUCCESS {
        0
    } else {
        1
    });
}

/// A running `sardonyx` process whose stdout and stderr lines are collected.
pub struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Every line read so far.
    pub seen: Vec<String>,
}

impl Proc {
    /// Starts `sardonyx ARGS…` in `cwd`.
    pub fn start(args: &[&str], cwd: &Path) -> Proc {
        Proc::start_with_env(args, cwd, &[])
    }

    /// Starts `sardonyx ARGS…` in `cwd` with these environment variables set.
    pub fn start_with_env(args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> Proc {
        let exe = std::env::current_exe().expect("test executable");
        let mut child = Command::new(exe)
            .args([
                "child_process",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ARGS, serde_json::to_string(args).unwrap())
            .env("SARDONYX_LOG", "warn")
            .envs(env.iter().copied())
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning a sardonyx process");
        let (tx, rx) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Proc {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Waits (at most `timeout`) for a line satisfying `pred`; returns it.
    pub fn wait_line(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return Some(line);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// Waits (at most `timeout`) until the run's progress says it has read `n` records and
    /// returns that progress line; fails the test with the output seen if it never does.
    pub fn wait_until_read(&mut self, n: u64, timeout: Duration) -> String {
        self.wait_until_count("read", n, timeout)
    }

    /// Waits (at most `timeout`) until the run's progress line counts at least `n` under `key`
    /// (`read`, `committed`, `written` …) and returns that line; fails the test with the
    /// output seen if it never does.
    pub fn wait_until_count(&mut self, key: &str, n: u64, timeout: Duration) -> String {
        let hit = self.wait_line(timeout, |l| progress_count(l, key).is_some_and(|r| r >= n));
        hit.unwrap_or_else(|| {
            panic!(
                "the run's {key} never reached {n}:\n{}",
                self.seen.join("\n")
            )
        })
    }

    /// Takes in every line printed so far (without waiting) and returns them all.
    pub fn drain(&mut self) -> &[String] {
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
        &self.seen
    }

    /// The process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends the process a signal by name (`TERM`, `INT`), with `kill(1)`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.pid().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -{name} {} failed", self.pid());
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to end (at most `timeout`), collecting the rest of its output.
    pub fn finish(mut self, timeout: Duration) -> (ExitStatus, Vec<String>) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Drain what the reader threads still hold.
                while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(500)) {
                    self.seen.push(l);
                }
                return (status, std::mem::take(&mut self.seen));
            }
            if Instant::now() > deadline {
                self.kill9();
                panic!(
                    "process did not finish in {timeout:?}; output:\n{}",
                    self.seen.join("\n")
                );
            }
            if let Ok(l) = self.lines.recv_timeout(Duration::from_millis(50)) {
                self.seen.push(l);
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill9();
        }
    }
}

/// The number after `key ` in a progress line (`progress: read 1200 · …`).
pub fn progress_count(line: &str, key: &str) -> Option<u64> {
    let rest = line.strip_prefix("progress: ")?;
    rest.split(" · ").find_map(|part| {
        let (k, v) = part.split_once(' ')?;
        (k == key).then(|| v.parse().ok())?
    })
}

/// Writes `n` votes (ids 0..n) to `path` with `dups` extra copies of earlier lines scattered
/// through the file (some right after their original, some far later). Returns the unique votes.
pub fn write_votes(path: &Path, n: u64, dups: u64) -> Vec<Value> {
    sardonyx::demo::generate_votes(path, n, 7).unwrap();
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let votes: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    if dups > 0 {
        let mut out = String::with_capacity(text.len() + dups as usize * 80);
        let every = (n / dups).max(1) as usize;
        for (i, l) in lines.iter().enumerate() {
            out.push_str(l);
            out.push('\n');
            if i % every == every - 1 {
                // Alternate near (the previous line) and far (a line 5000 back) duplicates.
                let j = if (i / every).is_multiple_of(2) {
                    i
                } else {
                    i.saturating_sub(5000)
                };
                out.push_str(lines[j]);
                out.push('\n');
            }
        }
        std::fs::write(path, out).unwrap();
    }
    votes
}

/// The vote job: totals per candidate (global, timer), per-minute counts per candidate (fixed,
/// watermark) and per-voter sessions (5-minute gap, watermark), all accumulating, each synced to
/// a JSON-lines file in `dir`; two peers per windowed task. Both windowed tasks send every vote
/// on to the output `done`, a JSON-lines file `dir/out.jsonl` (so each vote reaches it twice in
/// an uninterrupted run, and at least twice after crashes: [`assert_every_vote_output`]).
pub fn vote_job(dir: &Path, input: &Path) -> PathBuf {
    vote_job_with_peers(dir, input, 2)
}

/// [`vote_job`] with `peers` peers per windowed task (the job file is rewritten: a run after
/// a change of `peers` rescales the tasks).
pub fn vote_job_with_peers(dir: &Path, input: &Path, peers: u64) -> PathBuf {
    let p = |f: &str| dir.join(f).display().to_string();
    let job = serde_json::json!({
        "id": "eo-votes",
        "workflow": [["read-votes","count-votes"],["read-votes","voter-sessions"],
                     ["count-votes","done"],["voter-sessions","done"]],
        "catalog": [
            {"name":"read-votes","type":"input","plugin":"sardonyx/jsonl",
             "params":{"path": input.display().to_string()}, "batch_size": 500,
             "watermark":{"key":"event_time","max_out_of_order":[6,"minutes"]}},
            {"name":"count-votes","type":"function","fn":"sardonyx/identity",
             "group_by_key":"candidate","uniqueness_key":"vote_id","n_peers":peers},
            {"name":"voter-sessions","type":"function","fn":"sardonyx/identity",
             "group_by_key":"voter_id","uniqueness_key":"vote_id","n_peers":peers},
            {"name":"done","type":"output","plugin":"sardonyx/jsonl",
             "params":{"path": p("out.jsonl")}}
        ],
        "windows": [
            {"id":"totals","task":"count-votes","type":"global","aggregation":"count"},
            {"id":"per-minute","task":"count-votes","type":"fixed","window_key":"event_time",
             "range":[1,"minute"],"aggregation":"count"},
            {"id":"sessions","task":"voter-sessions","type":"session","window_key":"event_time",
             "timeout_gap":[5,"minutes"],"aggregation":"count"}
        ],
        "triggers": [
            {"window":"totals","id":"standings","on":"timer","period":[200,"milliseconds"],
             "refinement":"accumulating","sync":"sardonyx/jsonl","params":{"path": p("totals.jsonl")}},
            {"window":"per-minute","id":"closed","on":"watermark","refinement":"accumulating",
             "sync":"sardonyx/jsonl","params":{"path": p("per-minute.jsonl")}},
            {"window":"sessions","id":"closed","on":"watermark","refinement":"accumulating",
             "sync":"sardonyx/jsonl","params":{"path": p("sessions.jsonl")}}
        ]
    });
    let path = dir.join("job.json");
    std::fs::write(&path, serde_json::to_string_pretty(&job).unwrap()).unwrap();
    path
}

/// Final states: window → key → state. Keys are `group` (totals), `group@lower` (per-minute)
/// and `group@lower..upper` (sessions).
pub type Finals = BTreeMap<String, BTreeMap<String, i64>>;

fn group_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The exact final state of the vote job over `votes` (unique ids), computed directly.
pub fn oracle(votes: &[Value]) -> Finals {
    let mut totals = BTreeMap::new();
    let mut minutes = BTreeMap::new();
    let mut times: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut ids = HashSet::new();
    for v in votes {
        assert!(ids.insert(v["vote_id"].as_i64().unwrap()), "unique ids");
        let c = group_str(&v["candidate"]);
        let t = v["event_time"].as_i64().unwrap();
        *totals.entry(c.clone()).or_insert(0) += 1;
        let lower = t.div_euclid(60_000) * 60_000;
        *minutes.entry(format!("{c}@{lower}")).or_insert(0) += 1;
        times.entry(group_str(&v["voter_id"])).or_default().push(t);
    }
    let mut sessions = BTreeMap::new();
    for (voter, mut ts) in times {
        ts.sort_unstable();
        let (mut lo, mut hi, mut n) = (ts[0], ts[0], 0);
        for t in ts {
            if t - hi > 300_000 {
                sessions.insert(format!("{voter}@{lo}..{hi}"), n);
                lo = t;
                n = 0;
            }
            hi = t;
            n += 1;
        }
        sessions.insert(format!("{voter}@{lo}..{hi}"), n);
    }
    BTreeMap::from([
        ("totals".to_owned(), totals),
        ("per-minute".to_owned(), minutes),
        ("sessions".to_owned(), sessions),
    ])
}

/// The final states the job's syncs reported: the last firing of each extent and group across
/// every run (sync files are appended to). Sessions that a later firing shows merged into a
/// larger one are dropped.
pub fn reported(dir: &Path) -> Finals {
    let mut out = Finals::new();
    for (window, file) in [
        ("totals", "totals.jsonl"),
        ("per-minute", "per-minute.jsonl"),
        ("sessions", "sessions.jsonl"),
    ] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        let mut last: BTreeMap<String, (i64, Option<i64>, i64)> = BTreeMap::new();
        for line in text.lines() {
            let f: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{file}: bad line {line:?}: {e}"));
            let g = group_str(&f["group"]);
            let state = f["state"].as_i64().unwrap();
            let (lower, upper) = (f["lower"].as_i64(), f["upper"].as_i64());
            let key = match window {
                "totals" => g,
                _ => format!("{g}@{}", lower.unwrap()),
            };
            last.insert(key, (lower.unwrap_or(0), upper, state));
        }
        let m = out.entry(window.to_owned()).or_default();
        if window == "sessions" {
            // Per voter, keep only sessions not inside another reported session.
            let mut by_group: BTreeMap<String, Vec<(i64, i64, i64)>> = BTreeMap::new();
            for (k, (lo, hi, n)) in &last {
                let g = k.split('@').next().unwrap().to_owned();
                by_group.entry(g).or_default().push((*lo, hi.unwrap(), *n));
            }
            for (g, ss) in by_group {
                for &(lo, hi, n) in &ss {
                    let inside = ss
                        .iter()
                        .any(|&(l2, h2, _)| (l2, h2) != (lo, hi) && l2 <= lo && hi <= h2);
                    if !inside {
                        m.insert(format!("{g}@{lo}..{hi}"), n);
                    }
                }
            }
        } else {
            for (k, (_, _, n)) in last {
                m.insert(k, n);
            }
        }
    }
    out
}

/// Asserts the reported final state equals the oracle, naming the first differences.
pub fn assert_finals_equal(expected: &Finals, got: &Finals) {
    let mut problems = Vec::new();
    for (w, exp) in expected {
        let empty = BTreeMap::new();
        let g = got.get(w).unwrap_or(&empty);
        let keys: BTreeSet<&String> = exp.keys().chain(g.keys()).collect();
        for k in keys {
            if exp.get(k) != g.get(k) {
                problems.push(format!(
                    "{w} {k}: expected {:?}, reported {:?}",
                    exp.get(k),
                    g.get(k)
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} differences, e.g.:\n{}",
        problems.len(),
        problems[..problems.len().min(15)].join("\n")
    );
}

/// A free TCP port on localhost.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Parsed `recovered …` lines of a run's output: (ledger, snapshot position, records scanned).
pub fn recoveries(lines: &[String]) -> Vec<(String, Option<u64>, u64)> {
    lines
        .iter()
        .filter_map(|l| {
            let rest = &l[l.find("recovered ")? + "recovered ".len()..];
            let (ledger, rest) = rest.split_once(": snapshot ")?;
            let (snap, rest) = rest.split_once(", ")?;
            let snap = snap.strip_prefix("at ").and_then(|p| p.parse().ok());
            let scanned = rest.split(' ').next()?.parse().ok()?;
            Some((ledger.to_owned(), snap, scanned))
        })
        .collect()
}

/// The seed of a test's random choices: `SARDONYX_TEST_SEED` if set, else taken from the clock.
/// Printed (visible with `--nocapture`, and in the failure output of nextest) so that a failing
/// run can be repeated exactly.
pub fn test_seed(test: &str) -> u64 {
    let seed = std::env::var("SARDONYX_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("{test}: seed {seed} (repeat with SARDONYX_TEST_SEED={seed})");
    seed
}

/// One number from each of `ranges`, drawn from `seed` (splitmix64: the same seed gives the
/// same numbers on every machine).
pub fn draws(seed: u64, ranges: &[std::ops::Range<u64>]) -> Vec<u64> {
    let mut state = seed;
    ranges
        .iter()
        .map(|r| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            r.start + z % (r.end - r.start)
        })
        .collect()
}

/// Asserts that the vote job's output `dir/out.jsonl` (appended to by every run) is whole JSON
/// lines holding every vote id of `votes` at least once and no id that is not among them.
/// Returns the number of lines (at least twice the votes: both windowed tasks send each on).
pub fn assert_every_vote_output(dir: &Path, votes: &[Value]) -> usize {
    let text = std::fs::read_to_string(dir.join("out.jsonl")).expect("the output file exists");
    let expected: BTreeSet<i64> = votes
        .iter()
        .map(|v| v["vote_id"].as_i64().unwrap())
        .collect();
    let mut seen = BTreeSet::new();
    let mut lines = 0;
    for (n, line) in text.lines().enumerate() {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("out.jsonl line {}: {e}: {line:?}", n + 1));
        let id = v["vote_id"]
            .as_i64()
            .unwrap_or_else(|| panic!("out.jsonl line {}: no vote_id: {line:?}", n + 1));
        assert!(
            expected.contains(&id),
            "out.jsonl line {}: vote {id} is not in the input",
            n + 1
        );
        seen.insert(id);
        lines += 1;
    }
    let missing: Vec<&i64> = expected.difference(&seen).collect();
    assert!(
        missing.is_empty(),
        "{} of {} votes never reached out.jsonl, e.g. {:?}",
        missing.len(),
        expected.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(
        lines >= 2 * expected.len(),
        "{lines} lines for {} votes",
        expected.len()
    );
    lines
}

/// The vote job of [`vote_job`] with id `id`, its syncs and output written to paths relative
/// to the working directory of the process that runs each slot (in a cluster, each peer
/// process writes its own files): `totals.jsonl`, `per-minute.jsonl`, `sessions.jsonl`,
/// `out.jsonl`. Written to `dir/<id>.json`.
pub fn relative_vote_job(dir: &Path, input: &Path, id: &str) -> PathBuf {
    let path = vote_job(dir, input);
    let text = std::fs::read_to_string(&path).unwrap();
    let mut text = text;
    for file in [
        "totals.jsonl",
        "per-minute.jsonl",
        "sessions.jsonl",
        "out.jsonl",
    ] {
        text = text.replace(&dir.join(file).display().to_string(), file);
    }
    let mut job: Value = serde_json::from_str(&text).unwrap();
    job["id"] = Value::from(id);
    let path = dir.join(format!("{id}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(&job).unwrap()).unwrap();
    path
}

/// The final states the syncs reported across the working directories of several processes
/// (see [`reported`]): per extent and group, the greatest state any firing reported (counts
/// only grow, and the last firing of each is the whole count).
pub fn reported_across(dirs: &[PathBuf]) -> Finals {
    let mut merged = Finals::new();
    for dir in dirs {
        for (window, states) in reported(dir) {
            let m = merged.entry(window).or_default();
            for (k, n) in states {
                let e = m.entry(k).or_insert(n);
                *e = (*e).max(n);
            }
        }
    }
    // A session reported in one directory may have been merged into a larger one later, in
    // another: drop those inside another reported session, as `reported` does per file.
    if let Some(sessions) = merged.get_mut("sessions") {
        let mut by_voter: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
        for k in sessions.keys() {
            let (g, lo, hi) = session_key(k);
            by_voter.entry(g.to_owned()).or_default().push((lo, hi));
        }
        sessions.retain(|k, _| {
            let (g, lo, hi) = session_key(k);
            !by_voter[g]
                .iter()
                .any(|&(l2, h2)| (l2, h2) != (lo, hi) && l2 <= lo && hi <= h2)
        });
    }
    merged
}

/// A session's key `voter@lower..upper` in its parts.
fn session_key(k: &str) -> (&str, i64, i64) {
    let (g, span) = k.rsplit_once('@').unwrap();
    let (lo, hi) = span.split_once("..").unwrap();
    (g, lo.parse().unwrap(), hi.parse().unwrap())
}

/// Lines of `out.jsonl` in each of `dirs` (0 where there is none).
pub fn output_lines(dirs: &[PathBuf]) -> usize {
    dirs.iter()
        .map(|d| {
            std::fs::read(d.join("out.jsonl"))
                .map(|b| b.iter().filter(|&&c| c == b'\n').count())
                .unwrap_or(0)
        })
        .sum()
}

/// [`assert_every_vote_output`] over the `out.jsonl` files of several working directories
/// (each process writes its own while it owns the output's slot).
pub fn assert_every_vote_output_across(dirs: &[PathBuf], votes: &[Value]) -> usize {
    let merged = tempfile::tempdir().unwrap();
    let mut all = Vec::new();
    for d in dirs {
        if let Ok(b) = std::fs::read(d.join("out.jsonl")) {
            all.extend_from_slice(&b);
        }
    }
    std::fs::write(merged.path().join("out.jsonl"), all).unwrap();
    assert_every_vote_output(merged.path(), votes)
}

/// Starts `n` `sardonyx log-server` processes forming one log cluster (data under `dir`), and
/// waits until each listens. Returns them and the `--log` argument naming them all.
pub fn start_log_servers(dir: &Path, n: usize) -> (Vec<Proc>, String) {
    let addrs: Vec<String> = (0..n)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let spec = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let servers = (0..n)
        .map(|i| {
            let data = dir.join(format!("log{i}")).display().to_string();
            let id = (i + 1).to_string();
            let mut p = Proc::start(
                &[
                    "log-server",
                    "--id",
                    &id,
                    "--listen",
                    &addrs[i],
                    "--data",
                    &data,
                    "--cluster",
                    &spec,
                ],
                dir,
            );
            let up = p.wait_line(Duration::from_secs(60), |l| l.contains("listening on"));
            assert!(up.is_some(), "log server {id}:\n{}", p.seen.join("\n"));
            p
        })
        .collect();
    (servers, addrs.join(","))
}

/// The process id a peer printed when it joined: the line's only run of 16 hex digits
/// (`process=<id>`, among the log's colour codes).
pub fn id_of(p: &Proc) -> String {
    let line = p
        .seen
        .iter()
        .find(|l| l.contains("joined the cluster"))
        .expect("the join line");
    line.split(|c: char| !c.is_ascii_hexdigit())
        .find(|run| run.len() == 16)
        .unwrap_or_else(|| panic!("no process id in {line:?}"))
        .to_owned()
}

/// The cluster as `sardonyx cluster-status --json` prints it (run in `dir`, against the log
/// servers `log`, waiting at most `wait`).
pub fn cluster_status(dir: &Path, log: &str, wait: Duration) -> Value {
    let (ok, lines) = Proc::start(&["cluster-status", "--log", log, "--json"], dir).finish(wait);
    assert!(ok.success(), "{}", lines.join("\n"));
    let line = lines
        .iter()
        .find_map(|l| l.find('{').map(|at| &l[at..]))
        .unwrap_or_else(|| panic!("no JSON in:\n{}", lines.join("\n")));
    serde_json::from_str(line).unwrap()
}

/// Starts a `sardonyx peer` process (`args`, in `cwd`, with `env`) and waits at most `wait`
/// until it says it joined the cluster (failing with what it printed, naming it `name`).
pub fn start_joined(
    args: &[&str],
    cwd: &Path,
    env: &[(&str, &str)],
    name: &str,
    wait: Duration,
) -> Proc {
    let mut p = Proc::start_with_env(args, cwd, env);
    let joined = p.wait_line(wait, |l| l.contains("joined the cluster"));
    assert!(
        joined.is_some(),
        "{name} did not join:\n{}",
        p.seen.join("\n")
    );
    p
}
