//! The metrics endpoint and the dashboard of a running job (DESIGN §9): `/metrics` counts
//! exactly what the run reports, and the dashboard, opened in a real headless Chromium while a
//! `sardonyx run --metrics 127.0.0.1:0` process runs, shows what a person looks for — the
//! tasks, a live throughput, the watermark, and the reason of a rejected line.
//!
//! The browser test needs Debian's `chromium` (`.ci/run` installs it): without it the test is
//! skipped with a message, except under `CI=true`, where it fails.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use sardonyx::metrics::{
    LedgerTiming, MetricsServer, Observed, ObservedJob, ObservedLog, TimedLedgers,
};
use sardonyx::runtime::{run_job_with_progress, Progress, StateOptions};
use sardonyx::{Job, Registry, RunOptions};

/// Not a test: the entry point of the `sardonyx` processes the tests start.
#[test]
fn child_process() {
    child_main();
}

/// `GET path` on `addr`: the status code and the body.
fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connecting to the metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap();
    (status, body.to_owned())
}

/// One sample of the text exposition: name, labels, value.
type MetricSample = (String, BTreeMap<String, String>, f64);

/// Parses the Prometheus/OpenMetrics text format (the lines that are samples).
fn parse_metrics(text: &str) -> Vec<MetricSample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => {
                    let labels = rest
                        .trim_end_matches('}')
                        .split("\",")
                        .filter(|p| !p.is_empty())
                        .map(|p| {
                            let (k, v) = p.split_once("=\"").unwrap();
                            (k.to_owned(), v.trim_end_matches('"').to_owned())
                        })
                        .collect();
                    (n.to_owned(), labels)
                }
                None => (series.to_owned(), BTreeMap::new()),
            };
            (name, labels, value.parse().unwrap())
        })
        .collect()
}

/// The sum of the samples of `name` whose labels include `with`.
fn total(samples: &[MetricSample], name: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, labels, _)| {
            n == name
                && with
                    .iter()
                    .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

/// A windowed job whose input has a malformed line, a duplicate and a late segment.
fn late_and_malformed_job(dir: &Path) -> Job {
    let lines = [
        r#"{"id":1,"k":"a","t":1}"#,
        r#"{"id":2,"k":"b","t":12}"#,
        r#"{"id":3,"k":"a","t":25}"#,
        r#"{"id":4,"k":"a","t":3}"#,
        r#"{"id":2,"k":"b","t":12}"#,
        r#"{"id":5,"k":"b","t": oops}"#,
        r#"{"id":6,"k":"b","t":40}"#,
        r#"{"id":7,"k":"a","t":41}"#,
    ];
    std::fs::write(dir.join("in.jsonl"), lines.join("\n") + "\n").unwrap();
    let path = |f: &str| dir.join(f).display().to_string();
    Job::from_json_str(&format!(
        r#"{{
          "id": "late-and-malformed",
          "workflow": [["in", "win"], ["win", "out"]],
          "catalog": [
            {{"name": "in", "type": "input", "plugin": "sardonyx/jsonl", "batch_size": 1,
              "params": {{"path": "{input}"}},
              "watermark": {{"key": "t", "max_out_of_order": [0, "milliseconds"],
                             "idle_timeout": [0, "milliseconds"]}}}},
            {{"name": "win", "type": "function", "fn": "sardonyx/identity", "group_by_key": "k",
              "uniqueness_key": "id", "batch_size": 1, "batch_timeout": [10, "seconds"]}},
            {{"name": "out", "type": "output", "plugin": "sardonyx/jsonl",
              "params": {{"path": "{out}"}}}}
          ],
          "windows": [{{"id": "count", "task": "win", "type": "fixed", "aggregation": "count",
                        "window_key": "t", "range": [10, "milliseconds"]}}],
          "triggers": [{{"window": "count", "id": "closed", "on": "watermark",
                         "sync": "sardonyx/jsonl", "params": {{"path": "{fired}"}}}}]
        }}"#,
        input = path("in.jsonl"),
        out = path("out.jsonl"),
        fired = path("fired.jsonl"),
    ))
    .unwrap()
}

/// After a run (on the embedded state log), `/metrics` holds exactly the report's counts:
/// records read, segments written, rejected, late, duplicates dropped and firings, each
/// summed over the slots or triggers it is counted by; the state log's appends and its Raft
/// role are there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_exactly_what_the_run_reports() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let job = late_and_malformed_job(dir);
    let log = sardonyx_state_log::EmbeddedLog::open(dir.join("state/log"))
        .await
        .unwrap();
    let timing = Arc::new(LedgerTiming::default());
    let store = Arc::new(TimedLedgers::new(Arc::new(log.clone()), timing.clone()));
    let progress = Arc::new(Progress::default());
    let observed = Observed {
        job: Some(ObservedJob::new(&job, "unused", progress.clone())),
        log: Some(ObservedLog {
            name: "embedded".to_owned(),
            timing: Some(timing),
            node: Some(log.observer()),
        }),
        cluster: None,
    };
    let server = MetricsServer::start("127.0.0.1:0", observed).await.unwrap();
    let addr = server.local_addr().to_string();
    let options = RunOptions {
        errors_path: dir.join("errors.jsonl"),
        state: Some(StateOptions::new(store, dir.join("state"))),
        ..RunOptions::default()
    };
    let report = run_job_with_progress(&job, &Registry::new(), options, progress)
        .await
        .unwrap();
    // The job is not trivial: every count below is checked against something that happened.
    assert_eq!(report.read, 8);
    assert_eq!(report.duplicates, 1);
    assert!(report.late >= 1, "{report:?}");
    assert!(
        report.rejected >= 2,
        "the malformed line and a late segment: {report:?}"
    );
    assert!(report.fired >= 3, "{report:?}");

    let (status, text) = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || http_get(&addr, "/metrics")
    })
    .await
    .unwrap();
    assert_eq!(status, 200);
    let m = parse_metrics(&text);
    let job_label = ("job", "late-and-malformed");
    let count = |name: &str, with: &[(&str, &str)]| total(&m, name, with) as u64;
    assert_eq!(
        count("sardonyx_segments_in_total", &[job_label, ("task", "in")]),
        report.read
    );
    assert_eq!(
        count("sardonyx_rejected_segments_total", &[job_label]),
        report.rejected
    );
    assert_eq!(
        count("sardonyx_late_segments_total", &[job_label]),
        report.late
    );
    assert_eq!(count("sardonyx_firings_total", &[job_label]), report.fired);
    assert_eq!(
        count(
            "sardonyx_firings_total",
            &[("window", "count"), ("trigger", "closed"), ("task", "win")]
        ),
        report.fired
    );
    assert_eq!(
        count("sardonyx_segments_written_total", &[job_label]),
        report.written
    );
    assert_eq!(
        count("sardonyx_duplicates_dropped_total", &[job_label]),
        report.duplicates
    );
    // Every segment the input sent reached `win` (the malformed line never became one).
    assert_eq!(
        count("sardonyx_segments_out_total", &[("task", "in")]),
        report.read - 1
    );
    assert_eq!(
        count("sardonyx_segments_in_total", &[("task", "win")]),
        report.read - 1
    );
    assert_eq!(
        count("sardonyx_rejected_segments_total", &[("task", "in")]),
        1
    );
    // The input's last watermark is its greatest event time (41 ms after the epoch).
    assert_eq!(
        total(
            &m,
            "sardonyx_watermark_timestamp_seconds",
            &[("task", "in")]
        ),
        0.041
    );
    assert_eq!(
        count("sardonyx_batch_duration_seconds_count", &[("task", "in")]),
        count("sardonyx_batches_total", &[("task", "in")])
    );
    let appends = count("sardonyx_state_log_appends_total", &[("log", "embedded")]);
    assert!(
        appends >= report.logged.0,
        "{appends} < {:?}",
        report.logged
    );
    assert_eq!(
        count(
            "sardonyx_state_log_append_duration_seconds_count",
            &[("log", "embedded")]
        ),
        appends
    );
    assert_eq!(
        count(
            "sardonyx_raft_role",
            &[("log", "embedded"), ("role", "leader")]
        ),
        1
    );
    assert!(total(&m, "process_resident_memory_bytes", &[]) > 0.0);
    assert!(text.ends_with("# EOF\n"), "{text}");

    server.shutdown().await;
    log.close().await.unwrap();
}

/// Whether Debian's `chromium` runs here; without it the browser test is skipped, unless
/// `CI=true`, where its absence fails the test.
fn chromium_available() -> bool {
    let found = Command::new("chromium")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "chromium is missing under CI=true: .ci/run installs Debian's chromium"
        );
        eprintln!(
            "SKIPPED: chromium is not installed (apt-get install chromium); the dashboard's \
             browser test did not run"
        );
    }
    found
}

/// Runs headless Chromium on `url` with `args` (`--dump-dom` or `--screenshot=…`), letting the
/// page's script run for two seconds of virtual time (at most two minutes of real time);
/// returns its stdout.
fn chromium(profile: &Path, url: &str, args: &[&str]) -> String {
    // Bounded: a browser that hangs fails the test instead of holding it forever.
    let out = Command::new("timeout")
        .args([
            "120",
            "chromium",
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--hide-scrollbars",
            "--window-size=1300,2400",
            "--virtual-time-budget=2000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("running chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The attribute `name` in the first tag of `html` after `from`.
fn attribute_after<'h>(html: &'h str, from: &str, name: &str) -> Option<&'h str> {
    let rest = &html[html.find(from)?..];
    let rest = &rest[rest.find(&format!("{name}=\""))? + name.len() + 2..];
    Some(&rest[..rest.find('"')?])
}

/// Where the test keeps what a person would look at (the screenshot): `dashboard/` in the
/// integration tests' output folder under `target/` (`CARGO_TARGET_TMPDIR`).
fn output_folder() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A `sardonyx run --metrics 127.0.0.1:0` process reads votes from a named pipe that stays open
/// while the test looks (so the job keeps running without any timing guess); one malformed
/// line is fed among them. Headless Chromium opens the printed dashboard address: the page
/// shows every task, a non-zero throughput for the input, its watermark (within the event
/// times fed), and the malformed line's reason as the error file has it; a screenshot is saved.
/// Closing the pipe ends the input, and the job completes with its report.
#[test]
fn the_dashboard_shows_a_running_job_in_a_browser() {
    if !chromium_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let fifo = dir.join("votes.jsonl");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success(), "mkfifo");
    let job = dir.join("job.json");
    std::fs::write(
        &job,
        format!(
            r#"{{
              "id": "live-votes",
              "workflow": [["read-votes", "count-votes"], ["count-votes", "done"]],
              "catalog": [
                {{"name": "read-votes", "type": "input", "plugin": "sardonyx/jsonl",
                  "batch_size": 1, "params": {{"path": "{fifo}"}},
                  "watermark": {{"key": "event_time", "max_out_of_order": [0, "seconds"]}}}},
                {{"name": "count-votes", "type": "function", "fn": "sardonyx/identity",
                  "group_by_key": "candidate", "uniqueness_key": "vote_id",
                  "batch_timeout": [20, "milliseconds"]}},
                {{"name": "done", "type": "output", "plugin": "sardonyx/null"}}
              ],
              "windows": [{{"id": "per-second", "task": "count-votes", "type": "fixed",
                            "aggregation": "count", "window_key": "event_time",
                            "range": [1, "seconds"]}}],
              "triggers": [{{"window": "per-second", "id": "closed", "on": "watermark",
                             "sync": "sardonyx/jsonl", "params": {{"path": "{fired}"}}}}]
            }}"#,
            fifo = fifo.display(),
            fired = dir.join("fired.jsonl").display()
        ),
    )
    .unwrap();
    let job = job.display().to_string();
    let data = dir.join("data").display().to_string();
    let mut p = Proc::start(
        &[
            "run",
            &job,
            "--data",
            &data,
            "--metrics",
            "127.0.0.1:0",
            "--progress-ms",
            "600000",
        ],
        dir,
    );
    let line = p
        .wait_line(Duration::from_secs(60), |l| {
            l.starts_with("metrics: http://")
        })
        .unwrap_or_else(|| panic!("no metrics address printed:\n{}", p.seen.join("\n")));
    let addr = line["metrics: http://".len()..]
        .split('/')
        .next()
        .unwrap()
        .to_owned();

    // The feeder: votes one event-time second apart, a malformed line after the tenth, until
    // told to stop; then it closes the pipe (the input's end).
    let first_event = now_ms() - 600_000;
    let fed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let (fifo, fed, stop) = (fifo.clone(), fed.clone(), stop.clone());
        std::thread::spawn(move || {
            // Blocks until the job opens the pipe for reading.
            let mut pipe = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
            let mut n = 0_u64;
            while !stop.load(Ordering::SeqCst) {
                let t = first_event + n as i64 * 1000;
                let candidate = ["ada", "brook", "cyra"][n as usize % 3];
                writeln!(
                    pipe,
                    r#"{{"vote_id":{n},"voter_id":{},"candidate":"{candidate}","event_time":{t}}}"#,
                    n % 7
                )
                .unwrap();
                if n == 9 {
                    writeln!(pipe, r#"{{"vote_id":10,"candidate":"ada","event_time":}}"#).unwrap();
                }
                pipe.flush().unwrap();
                n += 1;
                fed.store(n, Ordering::SeqCst);
                // The producer's pace (about 200 votes a second): a live stream to look at.
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };

    // Wait until the malformed line was rejected and the windowed task has taken in votes.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, text) = http_get(&addr, "/metrics");
        let m = parse_metrics(&text);
        let rejected = total(
            &m,
            "sardonyx_rejected_segments_total",
            &[("task", "read-votes")],
        );
        let counted = total(&m, "sardonyx_segments_in_total", &[("task", "count-votes")]);
        if rejected == 1.0 && counted >= 20.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the job never got there:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let errors = std::fs::read_to_string(dir.join("sardonyx-errors.jsonl")).unwrap();
    let rejection: serde_json::Value =
        serde_json::from_str(errors.lines().next().unwrap()).unwrap();
    assert_eq!(rejection["line"], 11, "{rejection}");
    let reason = rejection["reason"].as_str().unwrap().to_owned();

    let url = format!("http://{addr}/");
    let profile = dir.join("chromium");
    let dom = chromium(&profile, &url, &["--dump-dom"]);
    let shot = output_folder().join("dashboard.png");
    chromium(
        &profile,
        &url,
        &[&format!("--screenshot={}", shot.display())],
    );
    let fed_then = fed.load(Ordering::SeqCst);
    eprintln!("dashboard screenshot: {}", shot.display());
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 10_000,
        "a real picture"
    );

    for task in ["read-votes", "count-votes", "done"] {
        assert!(
            dom.contains(&format!("<td class=\"task\">{task}</td>")),
            "{task} in {dom}"
        );
    }
    let rate: f64 = attribute_after(&dom, "<tr data-task=\"read-votes\">", "data-rate")
        .unwrap()
        .parse()
        .unwrap();
    assert!(rate > 0.0, "a live throughput: {dom}");
    let watermark: i64 = attribute_after(&dom, "<tr data-task=\"read-votes\">", "data-ms")
        .unwrap_or_else(|| panic!("a watermark: {dom}"))
        .parse()
        .unwrap();
    let last_event = first_event + (fed_then as i64 - 1) * 1000;
    assert!(
        (first_event..=last_event).contains(&watermark),
        "{first_event} ≤ {watermark} ≤ {last_event}"
    );
    let shown_reason = reason
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    assert!(
        dom.contains(&format!("<td class=\"reason\">{shown_reason}</td>")),
        "the rejected line's reason {reason:?} in {dom}"
    );
    assert!(dom.contains("per-second · closed"), "{dom}");

    stop.store(true, Ordering::SeqCst);
    feeder.join().unwrap();
    let (status, lines) = p.finish(Duration::from_secs(120));
    let out = lines.join("\n");
    assert_eq!(status.code(), Some(0), "{out}");
    let fed = fed.load(Ordering::SeqCst);
    assert!(
        out.contains(&format!(": read {} records, ", fed + 1)),
        "every line fed was read (the malformed one too):\n{out}"
    );
}

/// A one-member `sardonyx log-server --metrics 127.0.0.1:0` serves its Raft node's metrics:
/// once it has elected itself, `/metrics` says it is the leader of term ≥ 1 with an applied
/// index, and its page names the server and its role.
#[test]
fn a_log_server_serves_its_raft_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let listen = format!("127.0.0.1:{}", free_port());
    let data = dir.join("server-1").display().to_string();
    let cluster = format!("1={listen}");
    let mut p = Proc::start(
        &[
            "log-server",
            "--id",
            "1",
            "--listen",
            &listen,
            "--data",
            &data,
            "--cluster",
            &cluster,
            "--metrics",
            "127.0.0.1:0",
        ],
        dir,
    );
    let line = p
        .wait_line(Duration::from_secs(60), |l| {
            l.starts_with("metrics: http://")
        })
        .unwrap_or_else(|| panic!("no metrics address printed:\n{}", p.seen.join("\n")));
    let addr = line["metrics: http://".len()..]
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    // Raft state has no event to wait on from outside the process: poll until elected and
    // the leader's first entry of its term is applied (a leader is named a moment before it
    // applies that entry).
    let deadline = Instant::now() + Duration::from_secs(60);
    let m = loop {
        let (status, text) = http_get(&addr, "/metrics");
        assert_eq!(status, 200);
        let m = parse_metrics(&text);
        if total(
            &m,
            "sardonyx_raft_role",
            &[("log", "server-1"), ("role", "leader")],
        ) == 1.0
            && total(&m, "sardonyx_raft_applied_index", &[("log", "server-1")]) >= 1.0
        {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "never elected and applied:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(total(&m, "sardonyx_raft_term", &[("log", "server-1")]) >= 1.0);
    assert!(
        total(
            &m,
            "sardonyx_state_log_wal_syncs_total",
            &[("log", "server-1")]
        ) >= 1.0
    );
    let (status, page) = http_get(&addr, "/");
    assert_eq!(status, 200);
    assert!(page.contains("State log · server-1"), "{page}");
    assert!(page.contains("Raft leader · term "), "{page}");
    p.signal("INT");
    let (status, lines) = p.finish(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{}", lines.join("\n"));
}
