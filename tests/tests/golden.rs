//! Runs every job under `tests/golden/` with 1 and with 3 peers per task; both must write
//! exactly the expected files.

use std::path::Path;

use sardonyx_tests::{cases, run_case};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_jobs_give_the_expected_outputs_with_any_peer_count() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("golden");
    let cases = cases(&root);
    assert!(
        cases.len() >= 3,
        "expected golden cases under {}",
        root.display()
    );
    let mut problems = Vec::new();
    for case in &cases {
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
