//! Runs every job under `tests/golden/` with 1 and with 3 peers per task; both must write
//! exactly the expected files. Every case with windows also runs the golden matrix (see the
//! `sardonyx_tests` crate docs): in real processes with exactly-once state on the embedded log,
//! straight through, and killed with `kill -9` in the middle then recovered.

use std::path::Path;

use sardonyx_tests::{
    cases, golden_child_main, has_windows, run_case, run_case_durable, run_case_killed,
    run_case_rescaled,
};

/// Not a test: the entry of the child processes the golden matrix starts (a no-op otherwise).
#[test]
fn golden_child() {
    golden_child_main();
}

fn golden_cases() -> Vec<std::path::PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("golden");
    let cases = cases(&root);
    assert!(
        cases.len() >= 3,
        "expected golden cases under {}",
        root.display()
    );
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_jobs_give_the_expected_outputs_with_any_peer_count() {
    let mut problems = Vec::new();
    for case in &golden_cases() {
        for peers in [1, 3] {
            problems.extend(run_case(case, peers).await);
        }
    }
    assert!(
        problems.is_empty(),
        "{} golden problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// Straight, killed and recovered: each case with windows, with 1 and with 3 peers, runs with
/// its state on the embedded log (exactly the expected files), then again killed with SIGKILL
/// after half of the straight run's batch records and run to the end on the same data directory
/// (the expected firings, at least once each, nothing else).
#[test]
fn golden_jobs_with_windows_give_the_same_states_on_the_log_and_after_kill_9() {
    let cases: Vec<_> = golden_cases()
        .into_iter()
        .filter(|c| has_windows(c))
        .collect();
    assert!(
        cases.len() >= 8,
        "expected the windowed golden cases, got {cases:?}"
    );
    let problems: Vec<String> = std::thread::scope(|s| {
        let runs: Vec<_> = [1, 3]
            .map(|peers| {
                let cases = &cases;
                s.spawn(move || {
                    let mut problems = Vec::new();
                    for case in cases {
                        let (durable, records) = run_case_durable(case, peers);
                        let ran = durable.is_empty();
                        problems.extend(durable);
                        if ran {
                            problems.extend(run_case_killed(case, peers, (records / 2).max(1)));
                        }
                    }
                    problems
                })
            })
            .into_iter()
            .collect();
        runs.into_iter()
            .flat_map(|r| r.join().expect("a matrix thread panicked"))
            .collect()
    });
    assert!(
        problems.is_empty(),
        "{} golden matrix problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// Restored at a different peer count: each case with windows, killed with SIGKILL after a few
/// batch records with 2 peers per windowed task, then run to the end with 3 (and another copy
/// from 3 to 1): the expected firings at least once each, the final states exact, nothing else.
#[test]
fn golden_jobs_with_windows_give_the_same_states_after_a_rescale() {
    let cases: Vec<_> = golden_cases()
        .into_iter()
        .filter(|c| has_windows(c))
        .collect();
    let problems: Vec<String> = std::thread::scope(|s| {
        let runs: Vec<_> = [(2, 3), (3, 1)]
            .map(|(from, to)| {
                let cases = &cases;
                s.spawn(move || {
                    cases
                        .iter()
                        .flat_map(|case| run_case_rescaled(case, from, to, 2))
                        .collect::<Vec<_>>()
                })
            })
            .into_iter()
            .collect();
        runs.into_iter()
            .flat_map(|r| r.join().expect("a rescale thread panicked"))
            .collect()
    });
    assert!(
        problems.is_empty(),
        "{} golden rescale problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}
