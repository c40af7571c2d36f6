//! Reading job files (JSON or TOML) with every structural problem reported at once.
//!
//! The document is first read as a tree; then each catalog entry, window, trigger, flow
//! condition and lifecycle is decoded on its own, so one bad entry does not hide the others,
//! and each problem names its entry and the field at fault.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde_json::Value as Doc;

use super::problem::Problem;
use super::Job;

/// A job file that could not be read: the file itself, or one problem per bad entry.
#[derive(Debug, thiserror::Error)]
pub enum JobFileError {
    /// The file could not be read.
    #[error("cannot read job file {path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        message: String,
    },
    /// The file is not valid JSON/TOML.
    #[error("job file is not valid {format}: {message}")]
    Syntax {
        /// `JSON` or `TOML`.
        format: &'static str,
        /// The parser's message (with line and column).
        message: String,
    },
    /// Entries that do not fit the job schema, all of them.
    #[error("{}", super::problem::render(.0))]
    Schema(Vec<Problem>),
}

impl JobFileError {
    /// The schema problems (empty for I/O and syntax errors).
    pub fn problems(&self) -> &[Problem] {
        match self {
            JobFileError::Schema(p) => p,
            _ => &[],
        }
    }
}

impl Job {
    /// Reads a job from a `.json` or `.toml` file (by extension; JSON otherwise).
    pub fn load(path: impl AsRef<Path>) -> Result<Job, JobFileError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| JobFileError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("toml"))
        {
            Job::from_toml_str(&text)
        } else {
            Job::from_json_str(&text)
        }
    }

    /// Reads a job from JSON text.
    pub fn from_json_str(text: &str) -> Result<Job, JobFileError> {
        let doc: Doc = serde_json::from_str(text).map_err(|e| JobFileError::Syntax {
            format: "JSON",
            message: e.to_string(),
        })?;
        from_document(doc)
    }

    /// Reads a job from TOML text (the same schema as JSON).
    pub fn from_toml_str(text: &str) -> Result<Job, JobFileError> {
        let doc: Doc = toml::from_str(text).map_err(|e| JobFileError::Syntax {
            format: "TOML",
            message: e.to_string().trim_end().to_owned(),
        })?;
        from_document(doc)
    }
}

const TOP_KEYS: [&str; 13] = [
    "id",
    "workflow",
    "catalog",
    "windows",
    "triggers",
    "flow_conditions",
    "lifecycles",
    "errors",
    "unmatched",
    "key_groups",
    "job_scheduler",
    "task_scheduler",
    "percentage",
];

fn from_document(doc: Doc) -> Result<Job, JobFileError> {
    let mut problems = Vec::new();
    let Doc::Object(mut top) = doc else {
        return Err(JobFileError::Schema(vec![Problem::new(
            "job",
            None,
            "a job is a map with workflow and catalog",
        )]));
    };
    for key in top.keys() {
        if !TOP_KEYS.contains(&key.as_str()) {
            problems.push(Problem::new(
                "job",
                Some(key),
                format!("unknown field, expected one of {}", TOP_KEYS.join(", ")),
            ));
        }
    }
    let id = decode_field::<Option<String>>(&mut top, "id", &mut problems).flatten();
    let workflow = match top.remove("workflow") {
        None => {
            problems.push(Problem::new("job", Some("workflow"), "missing"));
            Vec::new()
        }
        Some(w) => decode(w, "job", Some("workflow"), &mut problems).unwrap_or_default(),
    };
    let catalog = match top.remove("catalog") {
        None => {
            problems.push(Problem::new("job", Some("catalog"), "missing"));
            Vec::new()
        }
        Some(c) => decode_entries(c, "catalog", &mut problems, |e, i| {
            named(e, "name", "task", || format!("catalog[{i}]"))
        }),
    };
    let windows = top.remove("windows").map_or_else(Vec::new, |w| {
        decode_entries(w, "windows", &mut problems, |e, i| {
            named(e, "id", "window", || format!("windows[{i}]"))
        })
    });
    let triggers = top.remove("triggers").map_or_else(Vec::new, |t| {
        decode_entries(t, "triggers", &mut problems, |e, i| {
            match (
                e.get("id").and_then(Doc::as_str),
                e.get("window").and_then(Doc::as_str),
            ) {
                (Some(id), Some(w)) => format!("trigger \"{id}\" of window \"{w}\""),
                (Some(id), None) => format!("trigger \"{id}\""),
                _ => format!("triggers[{i}]"),
            }
        })
    });
    let flow_conditions = top.remove("flow_conditions").map_or_else(Vec::new, |f| {
        decode_entries(f, "flow_conditions", &mut problems, |e, i| {
            match e.get("from").and_then(Doc::as_str) {
                Some(from) => format!("flow_conditions[{i}] (from \"{from}\")"),
                None => format!("flow_conditions[{i}]"),
            }
        })
    });
    let lifecycles = top.remove("lifecycles").map_or_else(Vec::new, |l| {
        decode_entries(l, "lifecycles", &mut problems, |_, i| {
            format!("lifecycles[{i}]")
        })
    });
    let errors = decode_field(&mut top, "errors", &mut problems).flatten();
    let unmatched = decode_field(&mut top, "unmatched", &mut problems).flatten();
    let key_groups = decode_field(&mut top, "key_groups", &mut problems).flatten();
    let job_scheduler = decode_field(&mut top, "job_scheduler", &mut problems).flatten();
    let task_scheduler = decode_field(&mut top, "task_scheduler", &mut problems).flatten();
    let percentage = decode_field(&mut top, "percentage", &mut problems).flatten();
    if problems.is_empty() {
        Ok(Job {
            id,
            workflow,
            catalog,
            windows,
            triggers,
            flow_conditions,
            lifecycles,
            errors,
            unmatched,
            key_groups,
            job_scheduler,
            task_scheduler,
            percentage,
        })
    } else {
        Err(JobFileError::Schema(problems))
    }
}

fn named(entry: &Doc, key: &str, kind: &str, fallback: impl FnOnce() -> String) -> String {
    match entry.get(key).and_then(Doc::as_str) {
        Some(name) => format!("{kind} \"{name}\""),
        None => fallback(),
    }
}

fn decode_field<T: DeserializeOwned>(
    top: &mut serde_json::Map<String, Doc>,
    key: &str,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    top.remove(key)
        .and_then(|v| decode(v, "job", Some(key), problems))
}

fn decode_entries<T: DeserializeOwned>(
    list: Doc,
    section: &str,
    problems: &mut Vec<Problem>,
    locate: impl Fn(&Doc, usize) -> String,
) -> Vec<T> {
    let Doc::Array(entries) = list else {
        problems.push(Problem::new("job", Some(section), "expected a list"));
        return Vec::new();
    };
    let mut out = Vec::with_capacity(entries.len());
    for (i, entry) in entries.into_iter().enumerate() {
        let location = locate(&entry, i);
        if let Some(v) = decode(entry, &location, None, problems) {
            out.push(v);
        }
    }
    out
}

/// Decodes `value`, recording a problem that names the field (from serde's path) on failure.
fn decode<T: DeserializeOwned>(
    value: Doc,
    location: &str,
    field: Option<&str>,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => Some(v),
        Err(e) => {
            let path = e.path().to_string();
            let message = e.into_inner().to_string();
            let inner = (path != ".").then_some(path);
            let field = match (field, inner) {
                (Some(f), Some(p)) => Some(format!(
                    "{f}{}",
                    if p.starts_with('[') {
                        p
                    } else {
                        format!(".{p}")
                    }
                )),
                (Some(f), None) => Some(f.to_owned()),
                (None, Some(p)) => Some(p),
                (None, None) => missing_field(&message),
            };
            problems.push(Problem::new(location, field.as_deref(), message));
            None
        }
    }
}

/// serde reports a missing field at the parent's path; pull the name out of its message.
fn missing_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `")?;
    Some(rest[..rest.find('`')?].to_owned())
}

/// Job files come from outside: whatever their bytes, reading one gives a job or an error,
/// never a panic, and nesting is bounded (serde_json's recursion limit, toml's own).
#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const VOTES_JSON: &str = include_str!("../../../examples/votes.json");
    const VOTES_TOML: &str = include_str!("../../../examples/votes.toml");

    /// One random change to a text: drop a range, insert a character, or repeat a range (at
    /// character boundaries, since job files are read as text).
    fn mutate(text: &str, kind: u8, at: usize, len: usize, c: char) -> String {
        let mut chars: Vec<char> = text.chars().collect();
        let n = chars.len();
        let at = if n == 0 { 0 } else { at % n };
        let end = (at + len).min(n);
        match kind % 3 {
            0 => {
                chars.drain(at..end);
            }
            1 => chars.insert(at, c),
            _ => {
                let copy = chars[at..end].to_vec();
                chars.splice(at..at, copy);
            }
        }
        chars.into_iter().collect()
    }

    fn edits() -> impl Strategy<Value = Vec<(u8, usize, usize, char)>> {
        let c = prop_oneof![
            Just('"'),
            Just('{'),
            Just('}'),
            Just('['),
            Just(']'),
            Just(','),
            Just(':'),
            Just('='),
            Just('\n'),
            Just('\\'),
            any::<char>(),
        ];
        prop::collection::vec((any::<u8>(), any::<usize>(), 0_usize..12, c), 1..5)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_text_gives_a_job_or_an_error(text in "\\PC{0,200}") {
            let _ = Job::from_json_str(&text);
            let _ = Job::from_toml_str(&text);
        }

        #[test]
        fn mutated_job_files_give_a_job_or_an_error(edits in edits()) {
            let (mut json, mut toml) = (VOTES_JSON.to_owned(), VOTES_TOML.to_owned());
            for (kind, at, len, c) in edits {
                json = mutate(&json, kind, at, len, c);
                toml = mutate(&toml, kind, at, len, c);
            }
            let _ = Job::from_json_str(&json);
            let _ = Job::from_toml_str(&toml);
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let deep = format!(
            "{{\"workflow\": {}{}}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(
            Job::from_json_str(&deep).unwrap_err().to_string(),
            "job file is not valid JSON: recursion limit exceeded at line 1 column 140"
        );
        let deep = format!("workflow = {}{}", "[".repeat(100_000), "]".repeat(100_000));
        let err = Job::from_toml_str(&deep).unwrap_err().to_string();
        assert!(err.starts_with("job file is not valid TOML"), "{err}");
        let deep = format!("x = {}1{}", "{a = ".repeat(100_000), "}".repeat(100_000));
        let err = Job::from_toml_str(&deep).unwrap_err().to_string();
        assert!(err.starts_with("job file is not valid TOML"), "{err}");
        // Deep in a free-form place (a task's params) is refused as well.
        let deep = format!(
            r#"{{"workflow": [], "catalog": [{{"name": "a", "type": "input", "params": {{"p": {}1{}}}}}]}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        assert!(Job::from_json_str(&deep)
            .unwrap_err()
            .to_string()
            .starts_with("job file is not valid JSON: recursion limit exceeded"));
    }

    #[test]
    fn huge_numbers_are_errors_or_values() {
        let job = |n: &str| {
            format!(
                r#"{{"workflow": [["a","b"]], "catalog": [{{"name": "a", "type": "input", "batch_size": {n}}}]}}"#
            )
        };
        let err = Job::from_json_str(&job("1e999999"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("job file is not valid JSON: number out of range"),
            "{err}"
        );
        let err = Job::from_json_str(&job(&"9".repeat(100_000)))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("job file is not valid JSON: number out of range"),
            "{err}"
        );
        // Past u64 but finite: a float, which batch_size refuses.
        let err = Job::from_json_str(&job(&"9".repeat(20))).unwrap_err();
        assert_eq!(err.problems().len(), 1, "{err}");
        assert_eq!(err.problems()[0].field.as_deref(), Some("batch_size"));
    }
}
