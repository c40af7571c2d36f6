//! The `sardonyx/jsonl` input on several peers (issue 21): each peer reads the lines that start
//! in its blocks of the file's bytes, dealt out in turn. The vote job
//! (`sardonyx::demo::votes_job`) with its input on 2 peers gives exactly the final window
//! states it gives on 1, in memory and with exactly-once state, also when stopped and resumed;
//! a malformed line read by a later peer is rejected with its line number in the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sardonyx::job::builder::JobBuilder;
use sardonyx::job::TaskSpec;
use sardonyx::plugin::{SyncPlugin, SyncSink};
use sardonyx::runtime::StateOptions;
use sardonyx::{run_job, JobReport, Map, Registry, RunOptions, Value};

/// Votes in the generated vote file (~470 KB: some 30 blocks).
const VOTES: u64 = 6_000;

/// The input's `stripe_block_bytes`.
const BLOCK: u64 = 16 * 1024;

/// Final window states: (window, `group lower upper`) → the state of its last firing.
type Finals = Arc<Mutex<BTreeMap<(String, String), i64>>>;

/// Keeps the state of each extent and group's last firing.
struct LastFiring(Finals);

impl SyncSink for LastFiring {
    fn sync(&mut self, firing: &Map) -> Result<(), String> {
        let field = |k: &str| firing.get(k).map_or("-".to_owned(), |v| format!("{v:?}"));
        let window = firing
            .get("window")
            .and_then(Value::as_str)
            .ok_or("no window")?;
        let extent = [field("group"), field("lower"), field("upper")].join(" ");
        let key = (window.to_owned(), extent);
        let state = firing
            .get("state")
            .and_then(Value::as_i64)
            .ok_or("no count")?;
        self.0.lock().unwrap().insert(key, state);
        Ok(())
    }
}

/// A registry with the sync `test/finals` (into the returned map) and the function
/// `test/stop-at` (the identity; it stops the job at vote `stop_at`, if given).
fn registry(stop: &RunOptions, stop_at: Option<i64>) -> (Registry, Finals) {
    let finals = Finals::default();
    let mut r = Registry::new();
    let f = finals.clone();
    r.register_sync(
        "test/finals",
        SyncPlugin {
            check: Arc::new(|_| Vec::new()),
            open: Arc::new(move |_| Ok(Box::new(LastFiring(f.clone())) as Box<dyn SyncSink>)),
        },
    );
    let stop = stop.stop.clone();
    r.register_function("test/stop-at", move |s, _| {
        if stop_at.is_some() && s.get("vote_id").and_then(Value::as_i64) == stop_at {
            stop.cancel();
        }
        Ok(vec![s])
    });
    (r, finals)
}

/// The demo's vote job over `input`, its input on `input_peers` peers in batches of 100, its
/// counting task through `test/stop-at`, every trigger syncing to `test/finals`.
fn vote_job(input: &Path, input_peers: usize) -> sardonyx::Job {
    let mut job =
        sardonyx::demo::votes_job(&input.display().to_string(), |t, _| t.sync("test/finals"));
    for t in &mut job.catalog {
        match t.name.as_str() {
            "read-votes" => {
                t.n_peers = Some(input_peers);
                t.batch_size = Some(100);
                t.params.insert("stripe_block_bytes", BLOCK as i64);
            }
            "count-votes" => t.function = Some("test/stop-at".to_owned()),
            _ => {}
        }
    }
    job
}

/// `VOTES` generated votes in `dir/votes.jsonl`.
fn vote_file(dir: &Path) -> PathBuf {
    let path = dir.join("votes.jsonl");
    sardonyx::demo::generate_votes(&path, VOTES, 7).unwrap();
    path
}

fn memory_options(dir: &Path) -> RunOptions {
    RunOptions {
        errors_path: dir.join("errors.jsonl"),
        ..RunOptions::default()
    }
}

fn state_options(log: &sardonyx_state_log::EmbeddedLog, dir: &Path) -> RunOptions {
    RunOptions {
        // Little read-ahead: a stop reaches the inputs long before the end of the file.
        channel_capacity: 1,
        state: Some(StateOptions::new(Arc::new(log.clone()), dir.join("data"))),
        ..memory_options(dir)
    }
}

/// Runs the vote job to its end; its final window states and report.
async fn run(
    input: &Path,
    input_peers: usize,
    options: RunOptions,
) -> (BTreeMap<(String, String), i64>, JobReport) {
    let (r, finals) = registry(&options, None);
    let report = run_job(&vote_job(input, input_peers), &r, options)
        .await
        .unwrap();
    assert_eq!((report.read, report.rejected), (VOTES, 0), "{report:?}");
    let finals = finals.lock().unwrap().clone();
    (finals, report)
}

/// The end of the last line of `path` that starts in a block of peer `peer` of `peers`.
fn end_of_last_line_of(path: &Path, peer: u64, peers: u64) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    let mut start = 0;
    let mut last = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\n' {
            if (start / BLOCK) % peers == peer {
                last = i as u64 + 1;
            }
            start = i as u64 + 1;
        }
    }
    last
}

/// Each input peer's committed offset in `report`.
fn committed(report: &JobReport, peers: usize) -> Vec<Option<u64>> {
    (0..peers)
        .map(|p| {
            report
                .committed
                .get(&("read-votes".to_owned(), p))
                .and_then(|ps| ps.get(0))
        })
        .collect()
}

/// The reference: one input peer, in memory. The totals add up to every vote, and every
/// window fired.
async fn one_peer_finals(dir: &Path, input: &Path) -> BTreeMap<(String, String), i64> {
    let (finals, _) = run(input, 1, memory_options(dir)).await;
    let window = |w: &'static str| finals.iter().filter(move |((k, _), _)| k == w);
    let total: i64 = window("totals").map(|(_, n)| n).sum();
    assert_eq!(total, VOTES as i64);
    for w in ["per-minute", "hourly", "sessions"] {
        assert!(window(w).count() > 1, "{w}");
    }
    finals
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_input_peers_give_the_final_states_of_one_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let input = vote_file(dir.path());
    let expected = one_peer_finals(dir.path(), &input).await;
    let (finals, report) = run(&input, 2, memory_options(dir.path())).await;
    assert_eq!(finals, expected);
    assert_each_stripe_committed(&report, &input);
}

/// Each of two peers committed the end of its last line: the last that starts in one of its
/// blocks.
fn assert_each_stripe_committed(report: &JobReport, input: &Path) {
    let len = std::fs::metadata(input).unwrap().len();
    let ends = [0, 1].map(|p| Some(end_of_last_line_of(input, p, 2)));
    assert!(ends.contains(&Some(len)), "{ends:?}");
    assert_eq!(committed(report, 2), ends);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_input_peers_give_the_final_states_of_one_with_exactly_once_state() {
    let dir = tempfile::tempdir().unwrap();
    let input = vote_file(dir.path());
    let expected = one_peer_finals(dir.path(), &input).await;
    let log = sardonyx_state_log::EmbeddedLog::open(dir.path().join("log"))
        .await
        .unwrap();
    let (finals, report) = run(&input, 2, state_options(&log, dir.path())).await;
    assert_eq!(finals, expected);
    assert_each_stripe_committed(&report, &input);
    log.close().await.unwrap();
}

/// Stopped part way and run again, the two input peers each resume from their own committed
/// offset: nothing is read twice, nothing is lost, and the final states are those of one peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_input_peers_stopped_and_resumed_give_the_final_states_of_one() {
    let dir = tempfile::tempdir().unwrap();
    let input = vote_file(dir.path());
    let expected = one_peer_finals(dir.path(), &input).await;
    let log = sardonyx_state_log::EmbeddedLog::open(dir.path().join("log"))
        .await
        .unwrap();
    let job = vote_job(&input, 2);

    let options = state_options(&log, dir.path());
    // Vote 1000 is a sixth of the way into the file.
    let (r, first_finals) = registry(&options, Some(1_000));
    let first = run_job(&job, &r, options).await.unwrap();
    assert!(first.stopped, "{first:?}");
    // Something is left to resume. (How far each peer got depends on timing: the peers are
    // coupled only through the windowed task's channels.)
    assert!(first.read < VOTES, "{first:?}");

    let options = state_options(&log, dir.path());
    let (r, finals) = registry(&options, None);
    let second = run_job(&job, &r, options).await.unwrap();
    assert!(!second.stopped);
    // Nothing late either: the stop did not let one peer's watermark stand for the other's,
    // whose rest would then be late after the resume.
    assert_eq!(
        (
            first.read + second.read,
            second.duplicates,
            first.rejected + second.rejected
        ),
        (VOTES, 0, 0)
    );
    assert_each_stripe_committed(&second, &input);
    // Both runs' firings: the second run's are the later ones.
    let mut all = first_finals.lock().unwrap().clone();
    all.extend(finals.lock().unwrap().clone());
    assert_eq!(all, expected);
    log.close().await.unwrap();
}

/// Malformed lines go to the error output with their line numbers in the file, whichever peer
/// read them: the same rejections with 1, 2 and 3 input peers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_line_read_by_a_later_peer_is_rejected_with_its_line_number() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let bad = [3_usize, 250, 251, 499];
    let text: String = (1..=500)
        .map(|i| match i {
            _ if bad.contains(&i) => format!("{{\"n\":{i},\n"),
            _ => format!("{{\"n\":{i}}}\n"),
        })
        .collect();
    std::fs::write(&input, text).unwrap();
    let mut rejections = Vec::new();
    for peers in [1, 2, 3] {
        let errors = dir.path().join(format!("errors-{peers}.jsonl"));
        let job = JobBuilder::new()
            .edge("in", "out")
            .task(
                TaskSpec::input("in", "sardonyx/jsonl")
                    .param("path", input.display().to_string())
                    .param("stripe_block_bytes", 1024)
                    .batch_size(16)
                    .n_peers(peers),
            )
            .task(TaskSpec::output("out", "sardonyx/null"))
            .build();
        let options = RunOptions {
            errors_path: errors.clone(),
            ..RunOptions::default()
        };
        let report = run_job(&job, &Registry::new(), options).await.unwrap();
        assert_eq!((report.read, report.rejected), (500, 4));
        let mut lines: Vec<(u64, String)> = std::fs::read_to_string(&errors)
            .unwrap()
            .lines()
            .map(|l| {
                let e: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    e["line"].as_u64().unwrap(),
                    e["input"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        lines.sort();
        rejections.push(lines);
    }
    let expected: Vec<(u64, String)> = bad
        .iter()
        .map(|&i| (i as u64, format!("{{\"n\":{i},")))
        .collect();
    assert_eq!(rejections, [expected.clone(), expected.clone(), expected]);
}
