//! Limits on what comes in (DESIGN §10), end to end through `run_job`.

use sardonyx::job::builder::JobBuilder;
use sardonyx::job::TaskSpec;
use sardonyx::{run_job, Registry, RunOptions};

/// A jsonl input line over `max_line_bytes` goes to the error output with its line number, its
/// length and only its start; the lines around it reach the output.
#[tokio::test]
async fn a_line_over_max_line_bytes_goes_to_the_error_output_and_the_job_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let output = dir.path().join("out.jsonl");
    let long = format!("{{\"n\":2,\"pad\":\"{}\"}}", "x".repeat(300_000));
    std::fs::write(&input, format!("{{\"n\":1}}\n{long}\n{{\"n\":3}}\n")).unwrap();
    let job = JobBuilder::new()
        .edge("in", "out")
        .task(
            TaskSpec::input("in", "sardonyx/jsonl")
                .param("path", input.display().to_string())
                .param("max_line_bytes", 64_i64),
        )
        .task(TaskSpec::output("out", "sardonyx/jsonl").param("path", output.display().to_string()))
        .build();
    job.validate(&Registry::new()).unwrap();
    let options = RunOptions {
        errors_path: dir.path().join("errors.jsonl"),
        ..RunOptions::default()
    };
    let report = run_job(&job, &Registry::new(), options).await.unwrap();
    assert_eq!((report.read, report.written, report.rejected), (3, 2, 1));
    assert_eq!(
        std::fs::read_to_string(&output).unwrap(),
        "{\"n\":1}\n{\"n\":3}\n"
    );
    let errors = std::fs::read_to_string(dir.path().join("errors.jsonl")).unwrap();
    let error: serde_json::Value = serde_json::from_str(errors.trim_end()).unwrap();
    assert_eq!(
        error,
        serde_json::json!({
            "task": "in",
            "reason": format!(
                "the line is {} bytes long, more than max_line_bytes (64); it was skipped",
                long.len()
            ),
            "line": 2,
            "input": &long[..256],
        })
    );
}
