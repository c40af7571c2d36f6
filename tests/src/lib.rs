//! End-to-end tests of Sardonyx: the golden-job harness and the code the golden jobs name.
//!
//! A golden case is a folder under `tests/golden/<case>/` holding a job file (`job.json` or
//! `job.toml`), its input files, and `expected/` with the files the job must write (paths
//! relative to the case folder). [`run_case`] copies the case into a scratch folder, runs the job
//! through the real runtime with a given number of peers per task, and compares every expected
//! file with what was written: as a multiset of JSON lines (order is free, since peers run
//! concurrently), merging the per-peer files (`out.jsonl`, `out.1.jsonl` …) of an output.
//! An optional `checks.json` adds checks such as "each key was written by one peer only".

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use sardonyx::job::Job;
use sardonyx::segment::Value;
use sardonyx::{Registry, RunOptions};

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

/// Runs one case with `peers` peers per task and returns every difference found (empty when
/// the case passes).
pub async fn run_case(case: &Path, peers: usize) -> Vec<String> {
    let name = format!(
        "{} (peers={peers})",
        case.file_name().unwrap_or_default().to_string_lossy()
    );
    let fail = |m: String| vec![format!("{name}: {m}")];
    let scratch = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => return fail(e.to_string()),
    };
    if let Err(e) = copy_dir(case, scratch.path()) {
        return fail(format!("copying the case: {e}"));
    }
    let mut job = match job_file(case).and_then(|f| Job::load(f).map_err(|e| e.to_string())) {
        Ok(j) => j,
        Err(e) => return fail(e),
    };
    anchor_paths(&mut job, scratch.path());
    let options = RunOptions {
        peers_override: Some(peers),
        errors_path: scratch.path().join("sardonyx-errors.jsonl"),
        ..RunOptions::default()
    };
    if let Err(e) = sardonyx::run_job(&job, &golden_registry(), options).await {
        return fail(format!("the job failed: {e}"));
    }
    let mut problems = Vec::new();
    let expected_dir = case.join("expected");
    for rel in files_under(&expected_dir) {
        let want = read_lines(&expected_dir.join(&rel));
        let got = read_lines(&scratch.path().join(&rel));
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
    problems.extend(
        run_checks(case, scratch.path())
            .into_iter()
            .map(|p| format!("{name}: {p}")),
    );
    problems
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
