//! Job files: JSON and TOML read to the same job, the builders build it too, serde round-trips
//! it, and a broken file gets every problem reported at once, each with its place and field.

use sardonyx::job::{Job, JobFileError};
use sardonyx::Registry;

fn root(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

/// The example job, built in Rust by the demo (which uses the typed builders).
fn example_by_builder() -> Job {
    sardonyx::demo::votes_job("examples/votes.jsonl", |t, file| {
        t.sync_jsonl(format!("sardonyx-out/{file}"))
    })
}

#[test]
fn json_toml_and_builders_give_the_same_job() {
    let json = Job::load(root("examples/votes.json")).unwrap();
    let toml = Job::load(root("examples/votes.toml")).unwrap();
    assert_eq!(json, toml);
    assert_eq!(json, example_by_builder());
    json.validate(&Registry::new()).unwrap();
    // serde round trip through JSON text and through TOML text.
    assert_eq!(Job::from_json_str(&json.to_json_string()).unwrap(), json);
    assert_eq!(
        Job::from_toml_str(&toml::to_string(&json).unwrap()).unwrap(),
        json
    );
}

#[test]
fn validation_reports_every_problem_with_its_place_and_field() {
    let job = Job::load(root("engine/tests/data/broken-job.json")).unwrap();
    let err = job.validate(&Registry::new()).unwrap_err();
    let expected = [
        r#"task "read", field params.path: missing"#,
        r#"task "read", field group_by_key: an input task cannot be grouped (group its downstream task)"#,
        r#"task "count", field fn: function "no/such-fn" is not registered"#,
        r#"task "count", field n_peers: give either n_peers or min_peers/max_peers, not both"#,
        r#"task "count", field group_by_key: give either group_by_key or group_by_fn, not both"#,
        r#"task "count", field group_by_fn: group function "no/such-group" is not registered"#,
        r#"task "write", field plugin: output plugin "no/such-plugin" is not registered"#,
        r#"task "orphan", field name: duplicate task name"#,
        r#"workflow edge ["count", "ghost"]: unknown task "ghost""#,
        r#"workflow edge ["count", "count"]: a task cannot feed itself"#,
        r#"task "read": an input task has an incoming edge (from "write")"#,
        r#"task "write": an output task has an outgoing edge (to "read")"#,
        r#"task "orphan": not in the workflow"#,
        r#"task "orphan": not in the workflow"#,
        r#"workflow: cycle count → write → read → count"#,
        r#"task "count", field uniqueness_key: a task with windows needs a uniqueness_key (or "deduplicate": false)"#,
        r#"window "w1", field aggregation: "sum" needs a field: ["sum", "field"]"#,
        r#"window "w1", field range: a fixed window needs a range"#,
        r#"window "w1", field id: duplicate window id"#,
        r#"window "w1", field task: unknown task "nowhere""#,
        r#"window "w1", field aggregation: "count" takes no field (found "x")"#,
        r#"window "w1", field window_key: a sliding window needs a window_key"#,
        r#"window "w1", field slide: [2, "hours"] is longer than range [1, "hours"]"#,
        r#"window "w3", field aggregation: aggregation "no/such-agg" is not registered"#,
        r#"window "w3", field timeout_gap: a session window needs a timeout_gap"#,
        r#"trigger "t1" of window "w1", field period: [10, "elements"] is not a time; a timer needs milliseconds … days"#,
        r#"trigger "t1" of window "w1", field params.path: missing"#,
        r#"trigger "t1" of window "w1", field id: duplicate trigger id in this window"#,
        r#"trigger "t1" of window "w1", field threshold: a segment trigger needs a threshold such as [10, "elements"]"#,
        r#"trigger "t1" of window "w1", field sync: sync function "no/such-sync" is not registered"#,
        r#"trigger "t3" of window "nope", field window: unknown window "nope""#,
        r#"trigger "t3" of window "nope", field pred: predicate "no/such-pred" is not registered"#,
        r#"trigger "t4" of window "w3", field watermark_percentage: 1.5 is not between 0 and 1"#,
        r#"trigger "t4" of window "w3", field period: not used by a percentile_watermark trigger"#,
        r#"flow_conditions[1] (from "count"), field to: "read" is not downstream of "count""#,
        r#"flow_conditions[1] (from "count"), field predicate: predicate "no/such-pred" is not registered"#,
        r#"flow_conditions[1] (from "count"), field short_circuit: short_circuit conditions must come before the other conditions of the same task"#,
        r#"flow_conditions[2] (from "unknown"), field from: unknown task "unknown""#,
        r#"flow_conditions[2] (from "unknown"), field thrown_exception: a thrown_exception condition must also be short_circuit"#,
        r#"lifecycles[0], field task: unknown task "ghost""#,
        r#"lifecycles[0], field calls: lifecycle "no/such-lifecycle" is not registered"#,
        r#"job, field errors: unknown task "missing-task""#,
    ];
    assert_eq!(err.messages(), expected);
    assert!(err
        .to_string()
        .starts_with("42 problems in the job:\n  - task \"read\", field params.path: missing\n"));
}

#[test]
fn schema_errors_are_all_reported_with_the_entry_and_field() {
    let err = Job::load(root("engine/tests/data/schema-errors.toml")).unwrap_err();
    let JobFileError::Schema(problems) = &err else {
        panic!("expected schema problems, got {err}");
    };
    let messages: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        messages,
        [
            "job, field surprise: unknown field, expected one of id, workflow, catalog, windows, triggers, flow_conditions, lifecycles, errors, unmatched, key_groups, job_scheduler, task_scheduler, percentage",
            r#"task "read", field batch_size: invalid type: string "ten", expected usize"#,
            r#"task "write", field type: unknown variant `sink`, expected one of `input`, `function`, `output`"#,
            "task \"third\", field batchsize: unknown field `batchsize`, expected one of `name`, `type`, `fn`, `plugin`, `params`, `batch_size`, `batch_timeout`, `n_peers`, `min_peers`, `max_peers`, `group_by_key`, `group_by_fn`, `flux_policy`, `uniqueness_key`, `deduplicate`, `watermark`, `percentage`, `doc`",
            r#"window "w", field range: unknown unit "minuts", expected one of milliseconds, seconds, minutes, hours, days, elements"#,
            "triggers[0], field id: missing field `id`",
        ]
    );
}

#[test]
fn syntax_errors_say_where() {
    let err = Job::from_json_str("{\"workflow\": [}").unwrap_err();
    assert_eq!(
        err.to_string(),
        "job file is not valid JSON: expected value at line 1 column 15"
    );
    let err = Job::from_toml_str("workflow = [").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("job file is not valid TOML: TOML parse error at line 1, column 13"),
        "{err}"
    );
}

#[test]
fn connector_params_are_checked_at_validation() {
    let job = Job::from_json_str(
        r#"{"workflow": [["in","out"]], "catalog": [
            {"name":"in","type":"input","plugin":"kafka","params":{"bootstrap_servers":"nohost","topic":""}},
            {"name":"out","type":"output","plugin":"postgres","params":{"url":"http://x","table":"t"}}]}"#,
    )
    .unwrap();
    let err = job.validate(&Registry::new()).unwrap_err();
    assert_eq!(
        err.messages(),
        [
            r#"task "in", field params.bootstrap_servers: "nohost" is not host:port (e.g. "localhost:9092")"#,
            r#"task "in", field params.topic: must not be empty"#,
            r#"task "out", field params.url: is not a PostgreSQL connection string: invalid connection string: unexpected EOF"#,
            r#"task "out", field params.key: is required"#,
        ]
    );
}

/// DESIGN §10: a sliding window that would put more than 10,000 extents on one segment is
/// refused, naming the window, its range and slide, the count and the limit; a jsonl input's
/// `max_line_bytes` must be a positive integer.
#[test]
fn limits_are_checked_at_validation() {
    let job = Job::from_json_str(
        r#"{"workflow": [["in","count"], ["count","out"]], "catalog": [
            {"name":"in","type":"input","plugin":"sardonyx/jsonl","params":{"path":"in.jsonl","max_line_bytes":0}},
            {"name":"count","type":"function","fn":"sardonyx/identity","uniqueness_key":"id"},
            {"name":"out","type":"output","plugin":"sardonyx/null"}],
          "windows": [
            {"id":"day-by-ms","task":"count","type":"sliding","aggregation":"count","window_key":"t","range":[1,"days"],"slide":[1,"milliseconds"]},
            {"id":"at-limit","task":"count","type":"sliding","aggregation":"count","window_key":"t","range":[10000,"seconds"],"slide":[1,"second"]},
            {"id":"one-over","task":"count","type":"sliding","aggregation":"count","window_key":"t","range":[20001,"milliseconds"],"slide":[2,"milliseconds"]},
            {"id":"elements","task":"count","type":"sliding","aggregation":"count","window_key":"n","range":[10001,"elements"],"slide":[1,"elements"]},
            {"id":"fixed","task":"count","type":"fixed","aggregation":"count","window_key":"t","range":[1,"milliseconds"]}]}"#,
    )
    .unwrap();
    let err = job.validate(&Registry::new()).unwrap_err();
    assert_eq!(
        err.messages(),
        [
            r#"task "in", field params.max_line_bytes: must be at least 1"#,
            r#"window "day-by-ms", field range/slide: range [1, "days"] / slide [1, "milliseconds"] puts up to 86400000 extents on each segment, more than the limit of 10000: use a longer slide or a shorter range"#,
            r#"window "one-over", field range/slide: range [20001, "milliseconds"] / slide [2, "milliseconds"] puts up to 10001 extents on each segment, more than the limit of 10000: use a longer slide or a shorter range"#,
            r#"window "elements", field range/slide: range [10001, "elements"] / slide [1, "elements"] puts up to 10001 extents on each segment, more than the limit of 10000: use a longer slide or a shorter range"#,
        ]
    );
}

/// DESIGN §4: `key_groups` is read from JSON and TOML and set by the builder (default 256); it
/// must be between 1 and 32768 and at least the peers of every grouped or windowed task, so
/// that each of their peers owns a key group.
#[test]
fn key_groups_are_read_built_and_checked() {
    let grouped = |key_groups: &str, peers: &str| {
        format!(
            r#"{{"workflow": [["in","count"], ["count","out"]],{key_groups} "catalog": [
                {{"name":"in","type":"input","plugin":"sardonyx/jsonl","params":{{"path":"in.jsonl"}},"n_peers":40}},
                {{"name":"count","type":"function","fn":"sardonyx/identity","group_by_key":"k",{peers}}},
                {{"name":"out","type":"output","plugin":"sardonyx/null"}}]}}"#
        )
    };
    let json = Job::from_json_str(&grouped(r#""key_groups": 512,"#, r#""n_peers":8"#)).unwrap();
    assert_eq!((json.key_groups, json.key_groups()), (Some(512), 512));
    let toml = Job::from_toml_str(&toml::to_string(&json).unwrap()).unwrap();
    assert_eq!(toml, json);
    assert!(toml::to_string(&json)
        .unwrap()
        .starts_with("workflow = [[\"in\", \"count\"], [\"count\", \"out\"]]\nkey_groups = 512\n"));
    let built = sardonyx::job::builder::JobBuilder::new()
        .key_groups(512)
        .build();
    assert_eq!(built.key_groups(), 512);
    json.validate(&Registry::new()).unwrap();
    // The default; the input's 40 peers do not count (it is not placed by key).
    let default = Job::from_json_str(&grouped("", r#""n_peers":8"#)).unwrap();
    assert_eq!((default.key_groups, default.key_groups()), (None, 256));
    default.validate(&Registry::new()).unwrap();
    // Exactly as many key groups as peers is enough.
    let tight = Job::from_json_str(&grouped(r#""key_groups": 8,"#, r#""n_peers":8"#)).unwrap();
    tight.validate(&Registry::new()).unwrap();

    let problems = |key_groups: &str, peers: &str| {
        Job::from_json_str(&grouped(key_groups, peers))
            .unwrap()
            .validate(&Registry::new())
            .unwrap_err()
            .messages()
    };
    assert_eq!(
        problems(r#""key_groups": 0,"#, r#""n_peers":1"#),
        ["job, field key_groups: must be between 1 and 32768 (found 0)"]
    );
    assert_eq!(
        problems(r#""key_groups": 32769,"#, r#""n_peers":1"#),
        ["job, field key_groups: must be between 1 and 32768 (found 32769)"]
    );
    assert_eq!(
        problems(r#""key_groups": 4,"#, r#""n_peers":8"#),
        [
            r#"job, field key_groups: 4 key groups cannot be divided among the 8 peers of task "count" (each peer of a grouped or windowed task owns at least one key group): give key_groups of at least 8"#
        ]
    );
    assert_eq!(
        problems(r#""key_groups": 4,"#, r#""min_peers":6"#),
        [
            r#"job, field key_groups: 4 key groups cannot be divided among the 6 peers of task "count" (each peer of a grouped or windowed task owns at least one key group): give key_groups of at least 6"#
        ]
    );
    // An ungrouped windowed task is placed by its uniqueness id: its peers count too.
    let windowed = Job::from_json_str(
        r#"{"workflow": [["in","count"], ["count","out"]], "key_groups": 2, "catalog": [
            {"name":"in","type":"input","plugin":"sardonyx/jsonl","params":{"path":"in.jsonl"}},
            {"name":"count","type":"function","fn":"sardonyx/identity","uniqueness_key":"id","n_peers":3},
            {"name":"out","type":"output","plugin":"sardonyx/null"}],
          "windows": [{"id":"all","task":"count","type":"global","aggregation":"count"}]}"#,
    )
    .unwrap();
    assert_eq!(
        windowed.validate(&Registry::new()).unwrap_err().messages(),
        [
            r#"job, field key_groups: 2 key groups cannot be divided among the 3 peers of task "count" (each peer of a grouped or windowed task owns at least one key group): give key_groups of at least 3"#
        ]
    );
    // Not an integer: a schema problem naming the key.
    let err = Job::from_json_str(&grouped(r#""key_groups": -1,"#, r#""n_peers":1"#)).unwrap_err();
    assert_eq!(
        err.problems()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["job, field key_groups: invalid value: integer `-1`, expected usize"]
    );
}

/// DESIGN §6: the scheduling keys `job_scheduler`, `task_scheduler`, the job's `percentage` and
/// each task's `percentage` are read from JSON and TOML and set by the builders; validation
/// reports a percentage scheduler without its percentages, percentages out of range or read by
/// no scheduler, task percentages that do not add up to 100, and colocated tasks that cannot
/// run on the same number of peers — all at once; a bad value is a schema problem naming the
/// field.
#[test]
fn scheduling_keys_are_read_built_and_checked() {
    use sardonyx::job::builder::JobBuilder;
    use sardonyx::job::{JobScheduler, TaskScheduler, TaskSpec};
    let job = |top: &str, percentages: [&str; 2]| {
        format!(
            r#"{{"workflow": [["in","out"]], {top}
                "catalog": [
                {{"name":"in","type":"input","plugin":"sardonyx/jsonl","params":{{"path":"in.jsonl"}}{}}},
                {{"name":"out","type":"output","plugin":"sardonyx/null"{}}}]}}"#,
            percentages[0], percentages[1]
        )
    };
    let good = job(
        r#""job_scheduler": "percentage", "percentage": 70, "task_scheduler": "percentage","#,
        [r#", "percentage": 40"#, r#", "percentage": 60"#],
    );
    let json = Job::from_json_str(&good).unwrap();
    json.validate(&Registry::new()).unwrap();
    assert_eq!(json.job_scheduler, Some(JobScheduler::Percentage));
    assert_eq!(json.task_scheduler, Some(TaskScheduler::Percentage));
    assert_eq!(
        (json.percentage, json.catalog[1].percentage),
        (Some(70), Some(60))
    );
    let toml = Job::from_toml_str(&toml::to_string(&json).unwrap()).unwrap();
    assert_eq!(toml, json);
    let built = JobBuilder::new()
        .edge("in", "out")
        .task(
            TaskSpec::input("in", "sardonyx/jsonl")
                .param("path", "in.jsonl")
                .percentage(40),
        )
        .task(TaskSpec::output("out", "sardonyx/null").percentage(60))
        .job_scheduler(JobScheduler::Percentage)
        .percentage(70)
        .task_scheduler(TaskScheduler::Percentage)
        .build();
    assert_eq!(built, json);
    // The defaults: greedy and balanced, no percentages.
    let plain = Job::from_json_str(&job("", ["", ""])).unwrap();
    assert_eq!((plain.job_scheduler, plain.task_scheduler), (None, None));
    plain.validate(&Registry::new()).unwrap();

    let problems = |text: String| {
        Job::from_json_str(&text)
            .unwrap()
            .validate(&Registry::new())
            .unwrap_err()
            .messages()
    };
    assert_eq!(
        problems(job(
            r#""job_scheduler": "percentage", "task_scheduler": "percentage","#,
            [r#", "percentage": 40"#, ""]
        )),
        [
            "job, field percentage: the percentage job scheduler needs the job's percentage of the peers (1 to 100)",
            r#"task "out", field percentage: the percentage task scheduler needs every task's percentage of the job's peers"#,
        ]
    );
    assert_eq!(
        problems(job(
            r#""percentage": 0, "task_scheduler": "percentage","#,
            [r#", "percentage": 40"#, r#", "percentage": 50"#]
        )),
        [
            "job, field percentage: must be between 1 and 100 (found 0)",
            "job, field task_scheduler: the tasks' percentages add up to 90, not 100",
        ]
    );
    assert_eq!(
        problems(job(r#""percentage": 50,"#, [r#", "percentage": 101"#, ""])),
        [
            r#"job, field percentage: not used by the greedy job scheduler (set job_scheduler to "percentage")"#,
            r#"task "in", field percentage: must be between 1 and 100 (found 101)"#,
        ]
    );
    assert_eq!(
        problems(job(r#""task_scheduler": "colocated","#, [r#", "n_peers": 2"#, r#", "percentage": 10"#])),
        [
            r#"task "out", field percentage: not used by the colocated task scheduler (set the job's task_scheduler to "percentage")"#,
            "job, field task_scheduler: the colocated task scheduler runs one slot of every task on each of the job's processes, but no number of peers suits every task (one needs at least 2, one takes at most 1)",
        ]
    );
    // A bad value names the field.
    let err = Job::from_json_str(&job(r#""job_scheduler": "fair","#, ["", ""])).unwrap_err();
    assert_eq!(
        err.problems().iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["job, field job_scheduler: unknown variant `fair`, expected one of `greedy`, `balanced`, `percentage`"]
    );
    let err = Job::from_toml_str(
        "workflow = [[\"in\", \"out\"]]\ntask_scheduler = \"random\"\n[[catalog]]\nname = \"in\"\ntype = \"input\"\n",
    )
    .unwrap_err();
    assert_eq!(
        err.problems().iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["job, field task_scheduler: unknown variant `random`, expected one of `balanced`, `percentage`, `colocated`"]
    );
}
