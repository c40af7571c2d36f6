//! Rescaling with state (key groups): the vote job (totals per candidate, per-minute counts,
//! per-voter sessions; duplicates at the source) run by real `sardonyx` processes killed with
//! SIGKILL, resumed each time with another number of peers per windowed task, ends with every
//! final extent exact and every vote counted once; so does a run killed in the middle of the
//! rescale itself. A change the state cannot follow is refused with a clear error.

mod common;

use std::time::Duration;

use common::*;

/// Not a test: the entry point of the `sardonyx` processes the tests start.
#[test]
fn child_process() {
    child_main();
}

fn run_args<'a>(job: &'a str, data: &'a str) -> Vec<&'a str> {
    // Compact past 100 kB: the old slots have snapshots and tails when they are re-divided.
    vec![
        "run",
        job,
        "--data",
        data,
        "--progress-ms",
        "20",
        "--compact-bytes",
        "100000",
    ]
}

#[test]
fn two_then_three_then_one_peers_with_kills_between_ends_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let input = dir.join("votes.jsonl");
    let votes = write_votes(&input, 60_000, 600);
    let data = dir.join("data").display().to_string();
    let seed = test_seed("two_then_three_then_one_peers");
    let thresholds = draws(seed, &[5_000..25_000, 5_000..25_000]);
    eprintln!("kill points (records read by each run): {thresholds:?}");
    for (peers, threshold) in [(2, thresholds[0]), (3, thresholds[1])] {
        let job = vote_job_with_peers(dir, &input, peers)
            .display()
            .to_string();
        let mut p = Proc::start(&run_args(&job, &data), dir);
        p.wait_until_read(threshold, Duration::from_secs(120));
        p.kill9();
    }
    let job = vote_job_with_peers(dir, &input, 1).display().to_string();
    let (status, lines) = Proc::start(&run_args(&job, &data), dir).finish(Duration::from_secs(180));
    let out = lines.join("\n");
    assert!(status.success(), "final run failed:\n{out}");
    let recs = recoveries(&lines);
    assert_eq!(recs.len(), 2, "one slot per windowed task now:\n{out}");
    for (ledger, snapshot, _) in &recs {
        assert!(
            ledger.contains("/L2/"),
            "{ledger}: the slot of the second rescale\n{out}"
        );
        assert!(
            snapshot.is_some(),
            "{ledger} starts from its gathered snapshot:\n{out}"
        );
    }
    assert_finals_equal(&oracle(&votes), &reported(dir));
    assert_every_vote_output(dir, &votes);
}

#[test]
fn a_kill_in_the_middle_of_a_rescale_then_a_run_again_is_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let input = dir.join("votes.jsonl");
    let votes = write_votes(&input, 30_000, 300);
    let data = dir.join("data").display().to_string();
    let job = vote_job_with_peers(dir, &input, 2).display().to_string();
    let mut p = Proc::start(&run_args(&job, &data), dir);
    p.wait_until_read(12_000, Duration::from_secs(120));
    p.kill9();

    // Three new slots per windowed task: the process kills itself once two of the six have
    // written their first snapshot, before the old ledgers are retired.
    let job = vote_job_with_peers(dir, &input, 3).display().to_string();
    let crash = [(sardonyx::runtime::CRASH_AFTER_RESCALED_SLOTS, "2")];
    let (status, lines) =
        Proc::start_with_env(&run_args(&job, &data), dir, &crash).finish(Duration::from_secs(120));
    assert!(
        !status.success(),
        "the run was to die in the rescale:\n{}",
        lines.join("\n")
    );

    // Run again with the same count: the slots without a snapshot gather theirs the same way.
    let (status, lines) = Proc::start(&run_args(&job, &data), dir).finish(Duration::from_secs(180));
    let out = lines.join("\n");
    assert!(status.success(), "final run failed:\n{out}");
    assert_eq!(recoveries(&lines).len(), 6, "{out}");
    assert_finals_equal(&oracle(&votes), &reported(dir));
    assert_every_vote_output(dir, &votes);
    assert_each_candidate_on_its_own_slot(&dir.join("data"), &votes, 3);

    // Another count before that rescale had finished would have been refused; now it is not.
    let job = vote_job_with_peers(dir, &input, 1).display().to_string();
    let (status, lines) = Proc::start(&run_args(&job, &data), dir).finish(Duration::from_secs(120));
    assert!(status.success(), "{}", lines.join("\n"));
    assert_finals_equal(&oracle(&votes), &reported(dir));
}

#[test]
fn a_change_of_the_inputs_peers_is_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let input = dir.join("votes.jsonl");
    write_votes(&input, 2_000, 0);
    let data = dir.join("data").display().to_string();
    let job = vote_job_with_peers(dir, &input, 2);
    let (status, lines) = Proc::start(&run_args(&job.display().to_string(), &data), dir)
        .finish(Duration::from_secs(120));
    assert!(status.success(), "{}", lines.join("\n"));
    let mut spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&job).unwrap()).unwrap();
    spec["catalog"][0]["n_peers"] = 2.into();
    std::fs::write(&job, spec.to_string()).unwrap();
    let (status, lines) = Proc::start(&run_args(&job.display().to_string(), &data), dir)
        .finish(Duration::from_secs(120));
    let out = lines.join("\n");
    assert!(!status.success(), "{out}");
    assert!(
        out.contains(
            "state log: job \"eo-votes\": task \"read-votes\" cannot go from 1 to 2 peers: an \
             input's committed positions are kept per peer; run it with 1 peers, or start over \
             with --fresh"
        ),
        "{out}"
    );
}

#[test]
fn validate_checks_a_job_against_its_state() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let input = dir.join("votes.jsonl");
    write_votes(&input, 2_000, 0);
    let data = dir.join("data").display().to_string();
    let job = vote_job_with_peers(dir, &input, 2).display().to_string();
    let validate = |dir: &std::path::Path| {
        let (status, lines) =
            Proc::start(&["validate", &job, "--data", &data], dir).finish(Duration::from_secs(60));
        (status.success(), lines.join("\n"))
    };
    let (ok, out) = validate(dir);
    assert!(
        ok && out.ends_with(&format!("{job}: valid")),
        "no state yet:\n{out}"
    );
    let (status, lines) = Proc::start(&run_args(&job, &data), dir).finish(Duration::from_secs(120));
    assert!(status.success(), "{}", lines.join("\n"));

    vote_job_with_peers(dir, &input, 3);
    let (ok, out) = validate(dir);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(
            "{job}: valid; resumes the state of job \"eo-votes\" (generation 0), rescaling task \
             \"count-votes\" from 2 to 3 peers, rescaling task \"voter-sessions\" from 2 to 3 peers"
        )),
        "{out}"
    );

    let mut spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&job).unwrap()).unwrap();
    spec["key_groups"] = 512.into();
    std::fs::write(&job, spec.to_string()).unwrap();
    let (ok, out) = validate(dir);
    assert!(!ok, "{out}");
    assert!(
        out.contains("was run with keys placed on slots another way"),
        "a changed key_groups is refused:\n{out}"
    );
    assert!(out.contains("/256; now ") && out.contains("/512)"), "{out}");
}

/// Every candidate's totals are in the state of exactly one slot of `count-votes` (layout 1,
/// `slots` slots), the one that owns the candidate's key group: a rescale moved each group to
/// one new slot, not to several. So is every vote's dedup id (in the slot's snapshot export or
/// its replayed records), labelled with its candidate's key group: a new slot took from the old
/// slots exactly the ids of its own key groups.
fn assert_each_candidate_on_its_own_slot(
    data: &std::path::Path,
    votes: &[serde_json::Value],
    slots: usize,
) {
    use sardonyx::key_groups::{key_group_of, slot_of, DEFAULT_KEY_GROUPS};
    use sardonyx::runtime::routing::key_hash;
    use sardonyx_windowing::trigger::TriggerSpec;
    use sardonyx_windowing::{aggregation, Value, WindowOperator, WindowSpec};
    let operator = || {
        WindowOperator::new(
            vec![
                WindowSpec::global("totals", aggregation::count()),
                WindowSpec::fixed("per-minute", "event_time", 60_000, aggregation::count()),
            ],
            vec![
                TriggerSpec::timer("totals", "standings", 200),
                TriggerSpec::watermark("per-minute", "closed", 0),
            ],
        )
        .unwrap()
    };
    let candidates: std::collections::BTreeSet<String> = votes
        .iter()
        .map(|v| v["candidate"].as_str().unwrap().to_owned())
        .collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    /// A slot's dedup ids with their key groups.
    type LabelledIds = Vec<(Option<u16>, Vec<u8>)>;
    let (ops, ids): (Vec<WindowOperator>, Vec<LabelledIds>) = runtime.block_on(async {
        let log = sardonyx_state_log::EmbeddedLog::open(data.join("log"))
            .await
            .unwrap();
        let (mut ops, mut ids) = (Vec::new(), Vec::new());
        for slot in 0..slots {
            let ledger = format!("eo-votes/g0/count-votes/L1/{slot}");
            let read = log.read(&ledger, 0).await.unwrap();
            let mut op = operator();
            let snapshot = read.snapshot.as_ref().map(|(p, b)| (*p, b.as_slice()));
            let recovered =
                sardonyx::slot::recover(&ledger, &mut op, snapshot, &read.entries).unwrap();
            let mut held = Vec::new();
            if let Some(export) = &recovered.filter_export {
                sardonyx_state_log::export_ids(export, |kg, id| held.push((kg, id.to_vec())))
                    .unwrap();
            }
            for (_, batch) in &recovered.batch_ids {
                held.extend(
                    batch
                        .labelled()
                        .into_iter()
                        .map(|(kg, k)| (kg, k.as_ref().to_vec())),
                );
            }
            ops.push(op);
            ids.push(held);
        }
        log.close().await.unwrap();
        (ops, ids)
    });
    let owner_of = |key: &Value| {
        let kg = key_group_of(key_hash(key), DEFAULT_KEY_GROUPS);
        (kg, slot_of(kg, slots, DEFAULT_KEY_GROUPS))
    };
    let mut want: Vec<LabelledIds> = vec![Vec::new(); slots];
    let mut distinct = std::collections::BTreeSet::new();
    for v in votes {
        let id = v["vote_id"].as_i64().unwrap();
        if distinct.insert(id) {
            let (kg, slot) = owner_of(&Value::from(v["candidate"].as_str().unwrap()));
            want[slot].push((Some(kg as u16), sardonyx::slot::id_key(&Value::Int(id))));
        }
    }
    for (slot, (mut held, mut want)) in ids.into_iter().zip(want).enumerate() {
        held.sort();
        want.sort();
        assert_eq!(
            held.len(),
            want.len(),
            "slot {slot} holds the ids of exactly its key groups' votes, each once"
        );
        assert!(held == want, "slot {slot}'s labelled ids");
    }
    for c in &candidates {
        let key = Value::from(c.as_str());
        let holders: Vec<usize> = (0..slots)
            .filter(|&s| !ops[s].extents("totals", &key).is_empty())
            .collect();
        let owner = owner_of(&key).1;
        assert_eq!(
            holders,
            vec![owner],
            "the slots holding candidate {c}'s totals"
        );
    }
}
