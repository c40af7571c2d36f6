//! Nexmark through the engine: on a small deterministic bids file, every query's answer equals
//! its exact reference in memory mode and exactly-once on the embedded log; the generator gives
//! the same bytes for the same count; and the `nexmark-bench` command line does the same end to
//! end.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sardonyx::runtime::Progress;
use sardonyx_benches::nexmark::{
    run_once, write_bids, write_csv, GeneratorSettings, JobOptions, Mode, NexmarkQuery,
    OnceFigures, OnceSpec, Reference, BASE_TIME_MS,
};

/// Bids in the test file.
const BIDS: u64 = 20_000;
/// 500 events/s: the 20 000 bids span ~43 s of event time, so every window kind has several
/// extents and bidders both continue and close sessions.
const RATE: usize = 500;

fn settings() -> GeneratorSettings {
    GeneratorSettings {
        rate: RATE,
        base_time_ms: BASE_TIME_MS,
    }
}

fn bids_bytes(n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut last = 0;
    write_bids(n, settings(), &mut out, |k| last = k).unwrap();
    assert_eq!(last, n, "the last progress call reports every bid");
    out
}

/// Writes the test file into `dir`.
fn bids_file(dir: &Path) -> PathBuf {
    let path = dir.join("bids.jsonl");
    std::fs::write(&path, bids_bytes(BIDS)).unwrap();
    path
}

#[test]
fn the_generator_is_deterministic() {
    let a = bids_bytes(BIDS);
    assert_eq!(a, bids_bytes(BIDS), "same count, same bytes");
    let shorter = bids_bytes(5_000);
    assert!(a.starts_with(&shorter), "a shorter file is a prefix");
    let lines: Vec<serde_json::Value> = a
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(lines.len() as u64, BIDS);
    // Event ids: 46 bids in every 50 events, after one person and three auctions.
    let ids: Vec<u64> = lines
        .iter()
        .map(|l| l["event_id"].as_u64().unwrap())
        .collect();
    for (k, id) in ids.iter().enumerate() {
        let k = k as u64;
        assert_eq!(*id, k / 46 * 50 + 4 + k % 46);
    }
    // In event-time order, 2 ms per event at 500 events/s.
    let times: Vec<i64> = lines
        .iter()
        .map(|l| l["date_time"].as_i64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(times[0], BASE_TIME_MS as i64 + 4 * 2);
    assert_eq!(
        *times.last().unwrap(),
        BASE_TIME_MS as i64 + ids[ids.len() - 1] as i64 * 2
    );
    // The first line, pinned: a change of the generator (or of its random number generator)
    // changes every file, and figures taken on the old files no longer compare.
    let first = a.split(|b| *b == b'\n').next().unwrap();
    assert_eq!(
        std::str::from_utf8(first).unwrap(),
        concat!(
            r#"{"auction":1000,"bidder":1001,"price":73134520,"channel":"channel-7568","#,
            r#""url":"https://www.nexmark.com/rswp/bsu/_gzj/item.htm?query=1&channel_id=163053568","#,
            r#""date_time":1767225600008,"#,
            r#""extra":"tjegpemlelrhcglaovelrtxwcwcintpbwbhwemkngirkduwbqfbwmnrtegvmrittzvxgswwdln","#,
            r#""event_id":4}"#
        )
    );
}

#[test]
fn the_references_have_something_to_check() {
    let dir = tempfile::tempdir().unwrap();
    let input = bids_file(dir.path());
    let r = |q| Reference::from_file(q, &input).unwrap();
    let q5 = r(NexmarkQuery::Q5);
    assert_eq!((q5.events, q5.out_of_order), (BIDS, 0));
    // Each bid is in 5 sliding windows.
    assert_eq!(q5.rows.values().sum::<i64>(), 5 * BIDS as i64);
    // Last event ~43.5 s after the base time: windows starting at 0, 10, 20, 30, 40 s.
    let q7 = r(NexmarkQuery::Q7);
    let starts: Vec<i64> = q7.rows.keys().map(|k| k.parse().unwrap()).collect();
    let base = BASE_TIME_MS as i64;
    assert_eq!(starts, [0, 1, 2, 3, 4].map(|k| base + k * 10_000));
    let q11 = r(NexmarkQuery::Q11);
    assert_eq!(q11.rows.values().sum::<i64>(), BIDS as i64);
    let q12 = r(NexmarkQuery::Q12);
    assert_eq!(q12.rows.values().sum::<i64>(), BIDS as i64);
    // Some bidders have more than one session.
    assert!(q11.rows.len() > q12.rows.len());
}

/// Runs `query` in `mode` on the test file and checks its answer against the reference.
fn check_query(query: NexmarkQuery, mode: Mode) -> OnceFigures {
    check_query_on(query, mode, 1)
}

/// [`check_query`] with the windowed task on `peers` peers.
fn check_query_on(query: NexmarkQuery, mode: Mode, peers: usize) -> OnceFigures {
    let dir = tempfile::tempdir().unwrap();
    let input = bids_file(dir.path());
    let spec = OnceSpec {
        input: input.clone(),
        query,
        mode,
        job: JobOptions {
            // The timer fires during the run, not only at job completion.
            q12_period_ms: 50,
            peers,
            ..JobOptions::default()
        },
        out: dir.path().join("out"),
        work: dir.path().join("work"),
        check: true,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let figures = rt
        .block_on(run_once(&spec, Arc::new(Progress::default())))
        .unwrap();
    assert_eq!(figures.difference, None);
    assert_eq!(figures.correct, Some(true));
    assert_eq!(figures.query, query.name());
    // The job's CPU time is measured (it parsed 20,000 lines): there is a per-core figure.
    assert!(figures.cpu_secs > 0.0, "cpu_secs {}", figures.cpu_secs);
    assert_eq!(
        (
            figures.events,
            figures.late,
            figures.rejected,
            figures.duplicates
        ),
        (BIDS, 0, 0, 0)
    );
    // The CSV written holds the reference's lines, the header first and the rows in any order
    // (a job writing its CSV writes rows as extents fire), each once.
    let reference = Reference::from_file(query, &input).unwrap();
    assert_eq!(figures.rows, reference.rows.len());
    let expected = write_csv(query, &reference.rows, &dir.path().join("expected")).unwrap();
    let got = dir.path().join("out").join(format!("{}.csv", query.name()));
    let lines = |path: &std::path::Path| {
        let text = std::fs::read_to_string(path).unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        let header = lines.remove(0);
        lines.sort();
        (header, lines)
    };
    assert_eq!(lines(&got), lines(&expected));
    match mode {
        Mode::Memory => assert_eq!((figures.logged_records, figures.logged_bytes), (0, 0)),
        Mode::Embedded => assert!(figures.logged_records > 0 && figures.logged_bytes > 0),
    }
    figures
}

#[test]
fn q5_in_memory() {
    check_query(NexmarkQuery::Q5, Mode::Memory);
}

#[test]
fn q5_exactly_once() {
    check_query(NexmarkQuery::Q5, Mode::Embedded);
}

#[test]
fn q7_in_memory() {
    check_query(NexmarkQuery::Q7, Mode::Memory);
}

#[test]
fn q7_exactly_once() {
    check_query(NexmarkQuery::Q7, Mode::Embedded);
}

#[test]
fn q11_in_memory() {
    check_query(NexmarkQuery::Q11, Mode::Memory);
}

#[test]
fn q11_exactly_once() {
    check_query(NexmarkQuery::Q11, Mode::Embedded);
}

#[test]
fn q12_in_memory() {
    check_query(NexmarkQuery::Q12, Mode::Memory);
}

#[test]
fn q12_exactly_once() {
    check_query(NexmarkQuery::Q12, Mode::Embedded);
}

// The answers do not depend on the peer count (every key on one peer).

#[test]
fn q5_exactly_once_on_two_peers() {
    check_query_on(NexmarkQuery::Q5, Mode::Embedded, 2);
}

#[test]
fn q11_exactly_once_on_two_peers() {
    check_query_on(NexmarkQuery::Q11, Mode::Embedded, 2);
}

#[test]
fn q12_in_memory_on_two_peers() {
    check_query_on(NexmarkQuery::Q12, Mode::Memory, 2);
}

#[test]
fn q7_refuses_several_peers() {
    let dir = tempfile::tempdir().unwrap();
    let spec = OnceSpec {
        input: dir.path().join("bids.jsonl"),
        query: NexmarkQuery::Q7,
        mode: Mode::Memory,
        job: JobOptions {
            peers: 2,
            ..JobOptions::default()
        },
        out: dir.path().join("out"),
        work: dir.path().join("work"),
        check: true,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let e = rt
        .block_on(run_once(&spec, Arc::new(Progress::default())))
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("q7 has no grouping"), "{e}");
}

/// The command line end to end: `generate` writes the library's bytes, `once` prints one JSON
/// line saying the answer is right and writes the same CSV as `reference`; `once --no-check`
/// writes that CSV too and says nothing was checked.
#[test]
fn the_command_line() {
    let exe = env!("CARGO_BIN_EXE_nexmark-bench");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bids.jsonl");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(exe).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let p = |p: &Path| p.display().to_string();
    run(&[
        "generate",
        "--events",
        "5000",
        "--rate",
        "500",
        "--out",
        &p(&input),
    ]);
    assert_eq!(std::fs::read(&input).unwrap(), bids_bytes(5_000));
    let out = dir.path().join("out");
    let line = run(&[
        "once",
        "--input",
        &p(&input),
        "--query",
        "q11",
        "--mode",
        "embedded",
        "--out",
        &p(&out),
        "--work",
        &p(&dir.path().join("work")),
    ]);
    let figures: OnceFigures = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(figures.correct, Some(true), "{line}");
    assert_eq!((figures.events, figures.mode), (5_000, Mode::Embedded));
    let reference = dir.path().join("reference");
    run(&[
        "reference",
        "--input",
        &p(&input),
        "--query",
        "q11",
        "--out",
        &p(&reference),
    ]);
    assert_eq!(
        std::fs::read_to_string(out.join("q11.csv")).unwrap(),
        std::fs::read_to_string(reference.join("q11.csv")).unwrap()
    );
    // `--no-check` (the peers' harness checks the CSV itself): the same CSV, nothing checked.
    let unchecked = dir.path().join("unchecked");
    let line = run(&[
        "once",
        "--input",
        &p(&input),
        "--query",
        "q11",
        "--mode",
        "memory",
        "--no-check",
        "--out",
        &p(&unchecked),
        "--work",
        &p(&dir.path().join("work")),
    ]);
    let figures: OnceFigures = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(
        (figures.correct, figures.difference),
        (None, None),
        "{line}"
    );
    assert_eq!(figures.events, 5_000);
    assert_eq!(
        std::fs::read_to_string(unchecked.join("q11.csv")).unwrap(),
        std::fs::read_to_string(reference.join("q11.csv")).unwrap()
    );
}
