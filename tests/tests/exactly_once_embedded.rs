//! Exactly-once state on the embedded default: `sardonyx run` processes killed with SIGKILL at
//! random points (seeded: [`test_seed`]) and restarted give exactly the final state of the votes
//! (none lost, none doubled) and write every vote to the JSON-lines output at least once;
//! duplicates at the source count once; compaction bounds what recovery reads; a
//! flipped byte in the ledger is reported with its ledger and position.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

/// Not a test: the entry point of the `sardonyx` processes the tests start.
#[test]
fn child_process() {
    child_main();
}

fn run_args<'a>(job: &'a str, data: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["run", job, "--data", data, "--progress-ms", "20"];
    a.extend_from_slice(extra);
    a
}

#[test]
fn killed_three_times_and_compacted_the_final_state_is_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let input = dir.join("votes.jsonl");
    let votes = write_votes(&input, 100_000, 1_000);
    let job = vote_job(dir, &input).display().to_string();
    let data = dir.join("data").display().to_string();
    // Compact past 40 kB (records are ~5-70 kB): every slot snapshots many times, even when
    // the kills come early (at 100 kB, kills after 3,065, 10,004 and 7,983 records left the
    // count slots with 62 kB logged and no snapshot: seed 1796561400647876648).
    let args = run_args(&job, &data, &["--compact-bytes", "40000"]);

    // Each run reads from its resume point; kill it once it has committed this many more
    // records (random, from the seed printed above): what it logged is then known to be there,
    // however far its reads ran ahead.
    let seed = test_seed("killed_three_times_and_compacted");
    let thresholds = draws(seed, &[2_000..28_000, 2_000..28_000, 2_000..28_000]);
    eprintln!("kill points (records committed by each run): {thresholds:?}");
    for threshold in thresholds {
        let mut p = Proc::start(&args, dir);
        p.wait_until_count("committed", threshold, Duration::from_secs(120));
        p.kill9();
    }
    let (status, lines) = Proc::start(&args, dir).finish(Duration::from_secs(180));
    let out = lines.join("\n");
    assert!(status.success(), "final run failed:\n{out}");

    // Recovery read a snapshot and only the tail after it.
    let recs = recoveries(&lines);
    assert_eq!(recs.len(), 4, "one recovery per windowed slot:\n{out}");
    for (ledger, snapshot, scanned) in &recs {
        assert!(
            snapshot.is_some(),
            "{ledger} recovered without a snapshot:\n{out}"
        );
        assert!(
            *scanned <= 20,
            "{ledger}: recovery scanned {scanned} records, expected the tail only:\n{out}"
        );
    }
    // Figures for the record (visible with --nocapture).
    for l in lines
        .iter()
        .filter(|l| l.contains("recovered ") || l.contains("state log:"))
    {
        eprintln!("{l}");
    }
    assert_finals_equal(&oracle(&votes), &reported(dir));
    assert_every_vote_output(dir, &votes);
}

#[test]
fn duplicates_at_the_source_count_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let input = dir.join("votes.jsonl");
    let votes = write_votes(&input, 6_000, 300);
    let job = vote_job(dir, &input).display().to_string();
    let data = dir.join("data").display().to_string();
    let (status, lines) =
        Proc::start(&run_args(&job, &data, &[]), dir).finish(Duration::from_secs(120));
    let out = lines.join("\n");
    assert!(status.success(), "{out}");
    // Each duplicate reaches both windowed tasks, and each skips it.
    assert!(
        out.contains("600 duplicates skipped"),
        "expected 600 duplicates skipped:\n{out}"
    );
    assert_finals_equal(&oracle(&votes), &reported(dir));
    // Uninterrupted: each vote (and each duplicate) exactly once per windowed task.
    assert_eq!(assert_every_vote_output(dir, &votes), 2 * 6_300);

    // Running the same job again resumes it: nothing new is read, nothing changes.
    let (status, lines) =
        Proc::start(&run_args(&job, &data, &[]), dir).finish(Duration::from_secs(120));
    assert!(status.success(), "{}", lines.join("\n"));
    assert!(
        lines.iter().any(|l| l.contains("read 0 records")),
        "{}",
        lines.join("\n")
    );
    assert_finals_equal(&oracle(&votes), &reported(dir));
}

/// Flips one payload byte of `ledger`'s record at `position` in the embedded log's RocksDB.
fn flip_record_byte(log_dir: &Path, ledger: &str, position: u64) {
    let mut key = (ledger.len() as u16).to_be_bytes().to_vec();
    key.extend_from_slice(ledger.as_bytes());
    key.extend_from_slice(&position.to_be_bytes());
    let names = rocksdb::DB::list_cf(&rocksdb::Options::default(), log_dir).unwrap();
    let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), log_dir, &names).unwrap();
    let cf = db.cf_handle("ledger_records").unwrap();
    let mut value = db.get_cf(cf, &key).unwrap().expect("the record exists");
    value[6] ^= 0x40; // past the 4-byte checksum: inside the payload
    db.put_cf(cf, &key, value).unwrap();
}

#[test]
fn a_flipped_byte_in_the_ledger_is_reported_with_its_location() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let input = dir.join("votes.jsonl");
    write_votes(&input, 3_000, 0);
    let job = vote_job(dir, &input).display().to_string();
    let data = dir.join("data");
    let data_s = data.display().to_string();
    let (status, lines) =
        Proc::start(&run_args(&job, &data_s, &[]), dir).finish(Duration::from_secs(120));
    assert!(status.success(), "{}", lines.join("\n"));

    flip_record_byte(&data.join("log"), "eo-votes/g0/count-votes/0", 2);
    let (status, lines) =
        Proc::start(&run_args(&job, &data_s, &[]), dir).finish(Duration::from_secs(120));
    let out = lines.join("\n");
    assert!(
        !status.success(),
        "a corrupt ledger must not be replayed:\n{out}"
    );
    assert!(
        out.contains("corrupt record in ledger \"eo-votes/g0/count-votes/0\" at position 2"),
        "the error must name the ledger and position:\n{out}"
    );
}

/// Appends `n` of the first lines of `path` to it again: redeliveries of old votes.
fn redeliver_first_lines(path: &Path, n: usize) {
    let text = std::fs::read_to_string(path).unwrap();
    let again: String = text.lines().take(n).map(|l| format!("{l}\n")).collect();
    std::fs::write(path, text + &again).unwrap();
}

/// A restarted job keeps the dedup filter it finds on disk when the filter holds a prefix of the
/// slot's ledger (inserting only what it lacks), and rebuilds it from the log when it is gone
/// (as on another machine); either way redeliveries of old votes are skipped.
#[test]
fn a_restart_keeps_the_dedup_filter_on_disk_or_rebuilds_it_from_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let input = dir.join("votes.jsonl");
    let votes = write_votes(&input, 6_000, 0);
    let job = vote_job(dir, &input).display().to_string();
    let data = dir.join("data");
    let data_s = data.display().to_string();
    let run = |expect_filter: &str| {
        // Compacting every ~100 kB: the filters are also exported into snapshots.
        let args = run_args(&job, &data_s, &["--compact-bytes", "100000"]);
        let (status, lines) = Proc::start(&args, dir).finish(Duration::from_secs(120));
        let out = lines.join("\n");
        assert!(status.success(), "{out}");
        // (A progress line may precede a report line on the same line.)
        let recovered: Vec<&String> = lines
            .iter()
            .filter(|l| l.contains("recovered eo-votes/"))
            .collect();
        assert_eq!(recovered.len(), 4, "one recovery per windowed slot:\n{out}");
        for l in recovered {
            assert!(
                l.contains(expect_filter),
                "expected {expect_filter:?}:\n{out}"
            );
        }
        out
    };
    run("dedup filter rebuilt, ");
    assert_finals_equal(&oracle(&votes), &reported(dir));

    // The filter on disk holds every batch: kept, nothing inserted; the redeliveries skipped.
    redeliver_first_lines(&input, 500);
    let out = run(" 0 ids, dedup filter reused, ");
    assert!(out.contains("read 500 records"), "{out}");
    assert!(
        out.contains("1000 duplicates skipped"),
        "each redelivery reaches both windowed tasks:\n{out}"
    );
    assert_finals_equal(&oracle(&votes), &reported(dir));

    // The filters are lost: rebuilt from the log, and the redeliveries are still skipped.
    std::fs::remove_dir_all(data.join("filters")).unwrap();
    redeliver_first_lines(&input, 300);
    let out = run("dedup filter rebuilt, ");
    assert!(out.contains("read 300 records"), "{out}");
    assert!(out.contains("600 duplicates skipped"), "{out}");
    assert_finals_equal(&oracle(&votes), &reported(dir));
}
