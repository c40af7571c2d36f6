//! Stopping `sardonyx run` with a signal: SIGTERM or SIGINT stops the inputs, lets what was
//! read finish, commits, flushes, prints the report and exits 0, and the job resumes exactly
//! where it stopped; a second process on the same data directory is refused by name.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

/// Not a test: the entry point of the `sardonyx` processes the tests start.
#[test]
fn child_process() {
    child_main();
}

/// The number N in a run's `…: read N records, …` report line.
fn reported_reads(lines: &[String]) -> u64 {
    lines
        .iter()
        .filter(|l| l.contains(" records, wrote "))
        .find_map(|l| {
            let rest = l.split(": read ").nth(1)?;
            rest.split(' ').next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no report line:\n{}", lines.join("\n")))
}

fn sync_events(dir: &Path) -> Vec<String> {
    ["totals.jsonl", "per-minute.jsonl", "sessions.jsonl"]
        .iter()
        .flat_map(|f| {
            let text = std::fs::read_to_string(dir.join(f)).unwrap_or_default();
            text.lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"].to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The vote job (three windows on two peers each) is stopped with SIGTERM part-way: it exits 0
/// with its report, has not fired as at job completion, and a second run reads exactly the rest
/// and ends with the exact final state.
#[test]
fn sigterm_stops_a_job_which_resumes_exactly_where_it_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let input = dir.join("votes.jsonl");
    let votes = write_votes(&input, 100_000, 0);
    let job = vote_job(dir, &input).display().to_string();
    let data = dir.join("data").display().to_string();
    let args = ["run", &job, "--data", &data, "--progress-ms", "20"];

    let mut p = Proc::start(&args, dir);
    p.wait_until_read(9_000, Duration::from_secs(120));
    p.signal("TERM");
    let (status, lines) = p.finish(Duration::from_secs(120));
    let out = lines.join("\n");
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(
        out.contains("SIGTERM: stopping: the inputs stop reading"),
        "{out}"
    );
    assert!(
        out.contains("stopped before the inputs were exhausted: positions committed"),
        "{out}"
    );
    let first = reported_reads(&lines);
    assert!((9_000..100_000).contains(&first), "{out}");
    let events = sync_events(dir);
    assert!(!events.is_empty(), "the timer trigger fired while it ran");
    assert!(
        !events.iter().any(|e| e == "\"job_completed\""),
        "a stopped job fired as at completion"
    );

    let (status, lines) = Proc::start(&args, dir).finish(Duration::from_secs(180));
    let out = lines.join("\n");
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(!out.contains("stopped before"), "{out}");
    assert_eq!(first + reported_reads(&lines), 100_000, "{out}");
    assert!(sync_events(dir).iter().any(|e| e == "\"job_completed\""));
    assert_finals_equal(&oracle(&votes), &reported(dir));
}

/// Posts `body` to `/ingest` on `port`; returns the status line and the body.
fn post(port: u16, body: &str) -> (String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "POST /ingest HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let status = answer.lines().next().unwrap_or_default().to_owned();
    let body = answer
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (status, body)
}

/// Posts until the endpoint answers (it opens after the process starts).
fn post_when_up(port: u16, body: &str, timeout: Duration) -> (String, String) {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return post(port, body);
        }
        assert!(Instant::now() < deadline, "the HTTP input never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn votes_json(ids: std::ops::Range<u64>) -> String {
    let votes: Vec<String> = ids
        .map(|i| format!("{{\"vote_id\":{i},\"candidate\":\"c{}\"}}", i % 3))
        .collect();
    format!("[{}]", votes.join(","))
}

fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// An HTTP job (unbounded: a signal is the only way to stop it) holds its data directory: a
/// second process is refused by name; SIGINT stops the first with everything accepted written
/// and flushed; run again, it appends.
#[test]
fn sigint_stops_an_http_job_and_a_second_process_on_its_data_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let port = free_port();
    let output = dir.join("out.jsonl");
    let job = serde_json::json!({
        "id": "http-votes",
        "workflow": [["ingest", "write"]],
        "catalog": [
            {"name": "ingest", "type": "input", "plugin": "http",
             "params": {"listen": format!("127.0.0.1:{port}")}},
            {"name": "write", "type": "output", "plugin": "sardonyx/jsonl",
             "params": {"path": output.display().to_string()}}
        ]
    });
    let job_path = dir.join("job.json");
    std::fs::write(&job_path, job.to_string()).unwrap();
    let job = job_path.display().to_string();
    let data = dir.join("data").display().to_string();
    let args = ["run", &job, "--data", &data, "--progress-ms", "20"];

    let mut p = Proc::start(&args, dir);
    let (status, body) = post_when_up(port, &votes_json(0..500), Duration::from_secs(60));
    assert!(status.contains(" 200 "), "{status} {body}");
    assert!(body.contains("\"accepted\":500"), "{body}");

    let (status, lines) = Proc::start(&args, dir).finish(Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "{}", lines.join("\n"));
    assert!(
        lines.contains(&format!(
            "error: the data directory {data} is in use by another sardonyx process (pid {}); \
             stop it, or give this run another --data directory",
            p.pid()
        )),
        "{}",
        lines.join("\n")
    );

    // The 500 accepted votes were handed to the job; the stop lets them all through.
    p.wait_until_read(500, Duration::from_secs(60));
    p.signal("INT");
    let (status, lines) = p.finish(Duration::from_secs(60));
    let out = lines.join("\n");
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(out.contains("SIGINT: stopping"), "{out}");
    assert!(
        out.contains("read 500 records, wrote 500 segments, rejected 0"),
        "{out}"
    );
    assert!(
        out.contains("stopped before the inputs were exhausted"),
        "{out}"
    );
    assert_eq!(lines_of(&output).len(), 500);

    // Run again: the output is appended to.
    let mut p = Proc::start(&args, dir);
    let (status, _) = post_when_up(port, &votes_json(500..800), Duration::from_secs(60));
    assert!(status.contains(" 200 "), "{status}");
    p.wait_until_read(300, Duration::from_secs(60));
    p.signal("TERM");
    let (status, lines) = p.finish(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{}", lines.join("\n"));
    let written = lines_of(&output);
    assert_eq!(written.len(), 800);
    let ids: std::collections::BTreeSet<u64> = written
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["vote_id"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(ids, (0..800).collect());
}
