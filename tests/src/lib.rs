//! End-to-end tests of Sardonyx: the golden-job harness and the code the golden jobs name.
//!
//! A golden case is a folder under `tests/golden/<case>/` holding a job file (`job.json` or
//! `job.toml`), its input files, and `expected/` with the files the job must write (paths
//! relative to the case folder). [`run_case`] copies the case into a scratch folder, runs the job
//! through the real runtime with a given number of peers per task (inputs keep the case's own
//! count: the expected files follow from the input's order), and compares every expected
//! file with what was written: as a multiset of JSON lines (order is free, since peers run
//! concurrently), merging the per-peer files (`out.jsonl`, `out.1.jsonl` …) of an output.
//! An optional `checks.json` adds checks such as "each key was written by one peer only".
//!
//! **The golden matrix** (Arroyo's "straight, killed and recovered"). A case with windows also
//! runs in real OS processes (this test executable started again, see [`golden_child_main`]),
//! with exactly-once state on the embedded log in a RocksDB data directory of its own:
//! - **durable** ([`run_case_durable`]): straight through; every expected file must be written
//!   exactly, as in memory.
//! - **killed and recovered** ([`run_case_killed`]): the process kills itself with SIGKILL right
//!   after its N-th batch record is committed (N = half the records of the durable run; the
//!   engine's `SARDONYX_TEST_CRASH_AFTER_RECORDS` crash point: a real `kill -9`, no cleanup),
//!   then runs again on the same data directory to the end. Syncs are at-least-once, so what is
//!   compared are the trigger sync files (`sardonyx/jsonl` syncs) of the expected files, with
//!   each firing keyed by everything but its `event` — window, trigger, group, lower, upper and
//!   state: the set of such firings written must be exactly the expected set (so every extent's
//!   every state, its final one included, is the straight run's, and nothing else was fired);
//!   lines may repeat; a line with another event than the expected one is allowed only when it
//!   says `recovered` (a firing of the last committed record synced again after the crash).
//!   Output and error files are not compared after a crash: their at-least-once delivery
//!   across a kill is checked by the exactly-once crash tests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sardonyx::job::Job;
use sardonyx::segment::Value;
use sardonyx::{Registry, RunOptions};

/// The environment variable that makes this test executable a golden child process
/// ([`golden_child_main`]): JSON `{"case": DIR, "dir": SCRATCH, "peers": N}`.
pub const GOLDEN_CHILD: &str = "SARDONYX_GOLDEN_CHILD";

/// The name of the test function that calls [`golden_child_main`].
pub const GOLDEN_CHILD_TEST: &str = "golden_child";

/// How long a golden child process may run before it is killed and the case fails.
const CHILD_TIMEOUT: Duration = Duration::from_secs(60);

/// The registry golden jobs run with: the built-ins plus a few test functions and predicates.
pub fn golden_registry() -> Registry {
    let mut r = Registry::new();
    r.register_predicate("test/adult", |s, _| {
        s.get("age")
            .and_then(Value::as_i64)
            .is_some_and(|a| a >= 18)
    });
    r.register_predicate("test/vip", |s, _| {
        s.get("vip").and_then(Value::as_bool).unwrap_or(false)
    });
    r.register_predicate("test/field-equals", |s, params| {
        let field = params
            .as_map()
            .and_then(|p| p.get("field"))
            .and_then(Value::as_str);
        let want = params.as_map().and_then(|p| p.get("value"));
        match (field, want) {
            (Some(f), Some(v)) => s.get(f) == Some(v),
            _ => false,
        }
    });
    // Every segment in one group whose key is null: a windowed task on several peers then keeps
    // all its state on one peer, and sync lines say `"group": null`, as without grouping.
    r.register_group_fn("test/one-null-group", |_| Value::Null);
    r.register_function("test/require-age", |s, _| match s.get("age") {
        Some(Value::Int(_)) => Ok(vec![s]),
        Some(other) => Err(format!(
            "age is a {}, expected an integer",
            other.type_name()
        )),
        None => Err("age is missing".to_owned()),
    });
    r.register_function("test/panic-on-boom", |s, _| {
        if s.get("boom").is_some() {
            panic!("boom field present");
        }
        Ok(vec![s])
    });
    r.register_function("test/split-words", |s, _| {
        let text = s
            .get("text")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        Ok(text
            .split_whitespace()
            .map(|w| {
                let mut out = sardonyx::Segment::new();
                out.insert("word", w);
                out
            })
            .collect())
    });
    r
}

/// Every case folder under `root`, sorted.
pub fn cases(root: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Puts every task but the inputs on `peers` peers. An input keeps the case's own count: its
/// peers read parts of the input at once (a `sardonyx/jsonl` input's peers each read a stripe
/// of the file), so the order segments arrive in, and with it what segment-count triggers see
/// and which segments are late, depends on that count, while a case's expected files follow
/// from the order of its input file. A case sets `n_peers` on its input to run it striped.
fn spread_peers(job: &mut Job, peers: usize) {
    for t in &mut job.catalog {
        if t.kind != sardonyx::job::TaskKind::Input {
            t.n_peers = Some(peers);
            t.min_peers = None;
            t.max_peers = None;
        }
    }
}

/// The case's job, with its relative paths anchored in `dir`.
fn load_job(case: &Path, dir: &Path) -> Result<Job, String> {
    let mut job = job_file(case).and_then(|f| Job::load(f).map_err(|e| e.to_string()))?;
    anchor_paths(&mut job, dir);
    Ok(job)
}

/// True when the case's job has windows (so it also runs with durable state and a crash).
pub fn has_windows(case: &Path) -> bool {
    job_file(case)
        .and_then(|f| Job::load(f).map_err(|e| e.to_string()))
        .is_ok_and(|j| !j.windows.is_empty())
}

fn job_file(case: &Path) -> Result<PathBuf, String> {
    ["job.json", "job.toml"]
        .iter()
        .map(|f| case.join(f))
        .find(|p| p.exists())
        .ok_or_else(|| format!("{}: no job.json or job.toml", case.display()))
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            if entry.file_name() != "expected" {
                copy_dir(&entry.path(), &target)?;
            }
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// Makes every relative `path` param (tasks and triggers) and the errors path absolute in `dir`.
fn anchor_paths(job: &mut Job, dir: &Path) {
    let anchor = |params: &mut sardonyx::Map| {
        if let Some(Value::Str(p)) = params.get_mut("path") {
            if Path::new(p.as_str()).is_relative() {
                *p = dir.join(p.as_str()).display().to_string().into();
            }
        }
    };
    for t in &mut job.catalog {
        anchor(&mut t.params);
    }
    for t in &mut job.triggers {
        anchor(&mut t.params);
    }
    if let Some(sardonyx::job::ErrorsTarget::Path(p)) = &mut job.errors {
        if Path::new(p.as_str()).is_relative() {
            *p = dir.join(p.as_str()).display().to_string();
        }
    }
}

/// The JSON lines of `path` and of its per-peer siblings (`out.1.jsonl` …), parsed.
fn read_lines(path: &Path) -> Result<Vec<serde_json::Value>, String> {
    let mut files = vec![path.to_path_buf()];
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = path.extension().map(|s| s.to_string_lossy().into_owned());
    for peer in 1.. {
        let name = match &ext {
            Some(e) => format!("{stem}.{peer}.{e}"),
            None => format!("{stem}.{peer}"),
        };
        let p = path.with_file_name(name);
        if !p.exists() {
            break;
        }
        files.push(p);
    }
    let mut out = Vec::new();
    for f in files {
        let text = match std::fs::read_to_string(&f) {
            Ok(t) => t,
            Err(_) if f == path => String::new(),
            Err(e) => return Err(format!("{}: {e}", f.display())),
        };
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            out.push(
                serde_json::from_str(line)
                    .map_err(|e| format!("{}:{}: {e}", f.display(), i + 1))?,
            );
        }
    }
    Ok(out)
}

fn multiset(lines: Vec<serde_json::Value>) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for l in lines {
        // serde_json's Value sorts object keys, so equal objects render equally.
        *m.entry(l.to_string()).or_insert(0) += 1;
    }
    m
}

/// Files under `dir`, relative to it.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(rel) = p.strip_prefix(dir) {
                out.push(rel.to_path_buf());
            }
        }
    }
    out.sort();
    out
}

/// A temporary directory holding a copy of `case`, for one run to write into.
fn scratch_copy(case: &Path) -> Result<tempfile::TempDir, String> {
    let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
    copy_dir(case, scratch.path()).map_err(|e| format!("copying the case: {e}"))?;
    Ok(scratch)
}

/// Runs one case with `peers` peers per task and returns every difference found (empty when
/// the case passes).
pub async fn run_case(case: &Path, peers: usize) -> Vec<String> {
    let name = format!(
        "{} (peers={peers})",
        case.file_name().unwrap_or_default().to_string_lossy()
    );
    let fail = |m: String| vec![format!("{name}: {m}")];
    let scratch = match scratch_copy(case) {
        Ok(d) => d,
        Err(e) => return fail(e),
    };
    let mut job = match load_job(case, scratch.path()) {
        Ok(j) => j,
        Err(e) => return fail(e),
    };
    spread_peers(&mut job, peers);
    let options = RunOptions {
        errors_path: scratch.path().join("sardonyx-errors.jsonl"),
        ..RunOptions::default()
    };
    if let Err(e) = sardonyx::run_job(&job, &golden_registry(), options).await {
        return fail(format!("the job failed: {e}"));
    }
    let mut problems = compare_exactly(case, scratch.path(), &name);
    problems.extend(
        run_checks(case, scratch.path())
            .into_iter()
            .map(|p| format!("{name}: {p}")),
    );
    problems
}

/// Compares every expected file of `case` with what was written under `scratch`, as multisets
/// of JSON lines; returns the differences.
fn compare_exactly(case: &Path, scratch: &Path, name: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let expected_dir = case.join("expected");
    for rel in files_under(&expected_dir) {
        let want = read_lines(&expected_dir.join(&rel));
        let got = read_lines(&scratch.join(&rel));
        match (want, got) {
            (Err(e), _) | (_, Err(e)) => problems.push(format!("{name}: {e}")),
            (Ok(want), Ok(got)) => {
                let (want, got) = (multiset(want), multiset(got));
                if want != got {
                    let missing: Vec<_> = want
                        .keys()
                        .filter(|k| got.get(*k) != want.get(*k))
                        .collect();
                    let extra: Vec<_> =
                        got.keys().filter(|k| got.get(*k) != want.get(*k)).collect();
                    problems.push(format!(
                        "{name}: {} differs\n    expected but not written (or with another count): {missing:?}\n    written but not expected (or with another count): {extra:?}",
                        rel.display()
                    ));
                }
            }
        }
    }
    problems
}

/// A sync line split into its firing (every field but `event`, rendered) and its event.
fn firing_and_event(line: &serde_json::Value) -> (String, String) {
    let mut firing = line.clone();
    let event = firing
        .as_object_mut()
        .and_then(|o| o.remove("event"))
        .map(|e| e.as_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    (firing.to_string(), event)
}

/// Compares the expected sync files of `case` with what a killed and recovered run wrote (see
/// the crate docs): the same set of firings (all but `event`), lines repeated at will, and an
/// event other than the expected one only as `recovered`.
fn compare_after_crash(case: &Path, scratch: &Path, name: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let expected_dir = case.join("expected");
    for rel in sync_files(case) {
        if !expected_dir.join(&rel).exists() {
            continue;
        }
        let (want, got) = match (
            read_lines(&expected_dir.join(&rel)),
            read_lines(&scratch.join(&rel)),
        ) {
            (Err(e), _) | (_, Err(e)) => {
                problems.push(format!("{name}: {e}"));
                continue;
            }
            (Ok(w), Ok(g)) => (w, g),
        };
        let want_lines: BTreeSet<String> = want.iter().map(|l| l.to_string()).collect();
        let want_firings: BTreeSet<String> = want.iter().map(|l| firing_and_event(l).0).collect();
        let mut got_firings = BTreeSet::new();
        let mut got_lines = BTreeSet::new();
        for line in &got {
            let (firing, event) = firing_and_event(line);
            let full = line.to_string();
            let expected = want_lines.contains(&full)
                || (event == "recovered" && want_firings.contains(&firing));
            if !expected {
                problems.push(format!(
                    "{name}: {}: written but not in the straight run: {full}",
                    rel.display()
                ));
            }
            got_firings.insert(firing);
            got_lines.insert(full);
        }
        for line in &want {
            let (firing, _) = firing_and_event(line);
            if !got_lines.contains(&line.to_string()) && !got_firings.contains(&firing) {
                problems.push(format!(
                    "{name}: {}: never written after the crash: {line}",
                    rel.display()
                ));
            }
        }
    }
    problems
}

/// The files (relative to the case) that the case's `sardonyx/jsonl` trigger syncs write.
fn sync_files(case: &Path) -> BTreeSet<PathBuf> {
    let Ok(job) = job_file(case).and_then(|f| Job::load(f).map_err(|e| e.to_string())) else {
        return BTreeSet::new();
    };
    job.triggers
        .iter()
        .filter(|t| t.sync.as_deref() == Some("sardonyx/jsonl"))
        .filter_map(|t| {
            t.params
                .get("path")
                .and_then(Value::as_str)
                .map(PathBuf::from)
        })
        .collect()
}

/// Call from a `#[test] fn golden_child()` (named [`GOLDEN_CHILD_TEST`]) of the test executable
/// that runs the golden matrix: when this process was started as a golden child (the
/// [`GOLDEN_CHILD`] variable), it runs the case as `sardonyx run JOB --data DIR` would (the
/// embedded state log under `DIR/log`, the dedup filters under `DIR`), with the golden registry,
/// prints `recovered slots N` and `records N` (batch records committed) and exits: 0 when the job succeeded, 1 when
/// it failed. Otherwise it does nothing.
pub fn golden_child_main() {
    let Ok(spec) = std::env::var(GOLDEN_CHILD) else {
        return;
    };
    let code = match golden_child(&spec) {
        Ok((records, recovered)) => {
            println!("recovered slots {recovered}");
            println!("records {records}");
            0
        }
        Err(e) => {
            eprintln!("golden child: {e}");
            1
        }
    };
    std::process::exit(code);
}

/// Runs the child's case; returns the batch records committed and the slots recovered.
fn golden_child(spec: &str) -> Result<(u64, usize), String> {
    let spec: serde_json::Value =
        serde_json::from_str(spec).map_err(|e| format!("{GOLDEN_CHILD}: {e}"))?;
    let case = PathBuf::from(spec["case"].as_str().unwrap_or_default());
    let dir = PathBuf::from(spec["dir"].as_str().unwrap_or_default());
    let peers = spec["peers"].as_u64().unwrap_or(1) as usize;
    let mut job = load_job(&case, &dir)?;
    // `windowed: true`: only the windowed tasks get `peers` (the others keep the case's own
    // counts), so that runs with different counts resume one another's state by rescaling.
    let windowed_only = spec["windowed"].as_bool().unwrap_or(false);
    if !windowed_only {
        spread_peers(&mut job, peers);
    } else {
        let windowed: Vec<String> = job
            .catalog
            .iter()
            .filter(|t| job.windows_of(&t.name).next().is_some())
            .map(|t| t.name.clone())
            .collect();
        for t in job
            .catalog
            .iter_mut()
            .filter(|t| windowed.contains(&t.name))
        {
            t.n_peers = Some(peers);
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the tokio runtime: {e}"))?;
    runtime.block_on(async {
        let data = dir.join("sardonyx-data");
        let log = sardonyx_state_log::EmbeddedLog::open(data.join("log"))
            .await
            .map_err(|e| format!("opening the embedded state log: {e}"))?;
        let mut state = sardonyx::runtime::StateOptions::new(Arc::new(log.clone()), &data);
        // One record per batch, so that the records of a run (and the crash point) depend on
        // the batches only, not on how fast the log commits.
        state.max_merged_batches = 1;
        let options = RunOptions {
            errors_path: dir.join("sardonyx-errors.jsonl"),
            state: Some(state),
            ..RunOptions::default()
        };
        let result = sardonyx::run_job(&job, &golden_registry(), options).await;
        log.close()
            .await
            .map_err(|e| format!("closing the embedded state log: {e}"))?;
        result
            .map(|report| (report.logged.0, report.recoveries.len()))
            .map_err(|e| format!("the job failed: {e}"))
    })
}

/// How many peers a golden child gives the tasks.
#[derive(Debug, Clone, Copy)]
enum Peers {
    /// Every task.
    All(usize),
    /// The windowed tasks; the others keep the case's counts.
    Windowed(usize),
}

/// Runs this test executable as a golden child for `case` in `dir` (its state under
/// `dir/sardonyx-data`), with the crash point at `crash_after` records if given; waits for it.
/// Returns its exit status and its output.
fn run_child(
    case: &Path,
    dir: &Path,
    peers: Peers,
    crash_after: Option<u64>,
) -> Result<(ExitStatus, String), String> {
    let exe = std::env::current_exe().map_err(|e| format!("the test executable: {e}"))?;
    let out_path = dir.join(format!("child-{}.out", crash_after.unwrap_or(0)));
    let out = std::fs::File::create(&out_path).map_err(|e| e.to_string())?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let spec = match peers {
        Peers::All(n) => serde_json::json!({"case": case, "dir": dir, "peers": n}),
        Peers::Windowed(n) => {
            serde_json::json!({"case": case, "dir": dir, "peers": n, "windowed": true})
        }
    };
    let mut command = Command::new(exe);
    command
        .args([
            GOLDEN_CHILD_TEST,
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(GOLDEN_CHILD, spec.to_string())
        .env_remove(sardonyx::runtime::CRASH_AFTER_RECORDS)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    if let Some(n) = crash_after {
        command.env(sardonyx::runtime::CRASH_AFTER_RECORDS, n.to_string());
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("starting a child: {e}"))?;
    let deadline = Instant::now() + CHILD_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("the child did not finish in {CHILD_TIMEOUT:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("waiting for the child: {e}")),
        }
    };
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    Ok((status, output))
}

/// The batch records a successful child reported (`records N`; the test harness of the child
/// may print its own words before it on the same line).
fn records_of(output: &str) -> Option<u64> {
    output.lines().find_map(|l| {
        let (_, n) = l.rsplit_once("records ")?;
        n.trim().parse().ok()
    })
}

/// Runs `case` with `peers` peers per task in a child process with exactly-once state on the
/// embedded log; every expected file must be written exactly. Returns the differences and the
/// batch records the run committed.
pub fn run_case_durable(case: &Path, peers: usize) -> (Vec<String>, u64) {
    let name = format!(
        "{} (peers={peers}, durable)",
        case.file_name().unwrap_or_default().to_string_lossy()
    );
    let fail = |m: String| (vec![format!("{name}: {m}")], 0);
    let scratch = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => return fail(e.to_string()),
    };
    if let Err(e) = copy_dir(case, scratch.path()) {
        return fail(format!("copying the case: {e}"));
    }
    let (status, output) = match run_child(case, scratch.path(), Peers::All(peers), None) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let records = match (status.success(), records_of(&output)) {
        (true, Some(r)) => r,
        _ => return fail(format!("the run ended with {status}:\n{output}")),
    };
    let mut problems = compare_exactly(case, scratch.path(), &name);
    problems.extend(
        run_checks(case, scratch.path())
            .into_iter()
            .map(|p| format!("{name}: {p}")),
    );
    (problems, records)
}

/// Runs `case` with `peers` peers per task in a child process with exactly-once state on the
/// embedded log, killed with SIGKILL right after its `crash_after`-th committed batch record,
/// then again on the same data directory to the end; compares the sync files as the crate docs
/// say. Returns the differences.
pub fn run_case_killed(case: &Path, peers: usize, crash_after: u64) -> Vec<String> {
    use std::os::unix::process::ExitStatusExt;
    let name = format!(
        "{} (peers={peers}, killed after record {crash_after})",
        case.file_name().unwrap_or_default().to_string_lossy()
    );
    let fail = |m: String| vec![format!("{name}: {m}")];
    let scratch = match scratch_copy(case) {
        Ok(d) => d,
        Err(e) => return fail(e),
    };
    match run_child(case, scratch.path(), Peers::All(peers), Some(crash_after)) {
        Ok((status, _)) if status.signal() == Some(9) => {}
        Ok((status, output)) => {
            return fail(format!(
                "expected the run to kill itself with SIGKILL, it ended with {status}:\n{output}"
            ))
        }
        Err(e) => return fail(e),
    }
    match run_child(case, scratch.path(), Peers::All(peers), None) {
        Ok((status, output)) if status.success() => {
            if !output.contains("recovered slots ") || output.contains("recovered slots 0") {
                return fail(format!(
                    "the second run recovered no slot from the first run's log:\n{output}"
                ));
            }
        }
        Ok((status, output)) => {
            return fail(format!("the recovered run ended with {status}:\n{output}"))
        }
        Err(e) => return fail(e),
    }
    compare_after_crash(case, scratch.path(), &name)
}

/// Runs `case` with `from` peers per windowed task (the other tasks as the case has them) in a
/// child process with exactly-once state, killed with SIGKILL after its `crash_after`-th batch
/// record, then on the same data directory with `to` peers per windowed task (a rescale) to
/// the end; compares the sync files as after a crash. A case with a windowed task that is not
/// grouped cannot be rescaled: the second run must refuse it, naming the task.
pub fn run_case_rescaled(case: &Path, from: usize, to: usize, crash_after: u64) -> Vec<String> {
    use std::os::unix::process::ExitStatusExt;
    let name = format!(
        "{} (peers {from} -> {to}, killed after record {crash_after})",
        case.file_name().unwrap_or_default().to_string_lossy()
    );
    let fail = |m: String| vec![format!("{name}: {m}")];
    let scratch = match scratch_copy(case) {
        Ok(d) => d,
        Err(e) => return fail(e),
    };
    let ungrouped = match load_job(case, scratch.path()) {
        Ok(job) => job
            .catalog
            .iter()
            .filter(|t| job.windows_of(&t.name).next().is_some())
            .any(|t| t.group_by_key.is_none() && t.group_by_fn.is_none()),
        Err(e) => return fail(e),
    };
    match run_child(
        case,
        scratch.path(),
        Peers::Windowed(from),
        Some(crash_after),
    ) {
        // A job of fewer records than the crash point finishes: its state is rescaled all the
        // same (nothing is read again; the firings are all there).
        Ok((status, _)) if status.signal() == Some(9) || status.success() => {}
        Ok((status, output)) => {
            return fail(format!("the first run ended with {status}:\n{output}"))
        }
        Err(e) => return fail(e),
    }
    match run_child(case, scratch.path(), Peers::Windowed(to), None) {
        Ok((status, output)) if ungrouped && from != to => {
            return if !status.success() && output.contains("cannot go from") {
                Vec::new()
            } else {
                fail(format!(
                    "an ungrouped windowed task was to be refused a rescale, the run ended with \
                     {status}:\n{output}"
                ))
            };
        }
        Ok((status, _)) if status.success() => {}
        Ok((status, output)) => {
            return fail(format!("the rescaled run ended with {status}:\n{output}"))
        }
        Err(e) => return fail(e),
    }
    compare_after_crash(case, scratch.path(), &name)
}

/// Extra checks from `checks.json`: `{"one_peer_per_key": [{"output": "out.jsonl", "key": "user"}]}`
/// asserts that every key value was written by exactly one output peer.
fn run_checks(case: &Path, scratch: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(case.join("checks.json")) else {
        return Vec::new();
    };
    let checks: serde_json::Value = match serde_json::from_str(&text) {
        Ok(c) => c,
        Err(e) => return vec![format!("checks.json: {e}")],
    };
    let mut problems = Vec::new();
    for c in checks["one_peer_per_key"].as_array().into_iter().flatten() {
        let output = scratch.join(c["output"].as_str().unwrap_or_default());
        let key = c["key"].as_str().unwrap_or_default();
        let mut owner: BTreeMap<String, BTreeSet<PathBuf>> = BTreeMap::new();
        let stem = output
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let dir = output.parent().map(Path::to_path_buf).unwrap_or_default();
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let file_name = entry.file_name().to_string_lossy().into_owned();
            if !(file_name.starts_with(&format!("{stem}.")) && file_name.ends_with(".jsonl")) {
                continue;
            }
            for line in std::fs::read_to_string(entry.path())
                .unwrap_or_default()
                .lines()
            {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                    owner
                        .entry(v[key].to_string())
                        .or_default()
                        .insert(entry.path());
                }
            }
        }
        if owner.is_empty() {
            problems.push(format!(
                "one_peer_per_key: nothing written to {}",
                output.display()
            ));
        }
        for (k, files) in owner {
            if files.len() > 1 {
                problems.push(format!(
                    "key {key}={k} was written by {} peers: {files:?}",
                    files.len()
                ));
            }
        }
    }
    problems
}
