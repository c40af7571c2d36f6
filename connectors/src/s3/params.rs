//! The params of the `sardonyx/s3` input and output, and their checks (every problem at once,
//! as `(field, message)`).
//!
//! Both take `bucket`, `prefix` (a folder: a `/` is added when missing), `endpoint` (for an
//! S3-compatible server; `http://` allowed) and `region`, and `retry` (how the client retries
//! transient failures, [`crate::retry`]). Credentials are not params: they come from the
//! environment as the AWS tools read them (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN`, also `AWS_REGION`/`AWS_DEFAULT_REGION` and `AWS_ENDPOINT_URL` when
//! the params do not say).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::params::{kind, Fields, Problems};
use crate::RetryPolicy;

/// The default `max_object_bytes` of the output: 64 MiB.
pub const DEFAULT_MAX_OBJECT_BYTES: u64 = 64 << 20;
/// The default `max_object_age` of the output: one minute.
pub const DEFAULT_MAX_OBJECT_AGE: Duration = Duration::from_secs(60);
/// The default `part_bytes`: objects larger than this are uploaded in parts of this size.
pub const DEFAULT_PART_BYTES: u64 = 8 << 20;
/// The least `part_bytes`: S3 refuses smaller parts (except the last).
pub const MIN_PART_BYTES: u64 = 5 << 20;
/// The default `watch_interval` of the input: how often the prefix is listed for new objects.
pub const DEFAULT_WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Where the objects are, for the input and the output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    /// The bucket.
    pub bucket: String,
    /// The folder of the objects (empty: the whole bucket), ending in `/`.
    #[serde(default)]
    pub prefix: String,
    /// The endpoint of an S3-compatible server (`http://127.0.0.1:9000`); AWS by default.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The region (`AWS_REGION`/`AWS_DEFAULT_REGION` from the environment by default, else
    /// `us-east-1`).
    #[serde(default)]
    pub region: Option<String>,
    /// How transient failures are retried.
    #[serde(default)]
    pub retry: RetryPolicy,
}

impl Location {
    /// `s3://bucket/prefix`, for messages.
    pub fn url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }
}

/// Params of the `sardonyx/s3` input.
///
/// ```json
/// {"bucket": "votes", "prefix": "2026/12/", "endpoint": "http://127.0.0.1:9000",
///  "watch": true, "watch_interval": [5, "seconds"], "max_line_bytes": 1048576}
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3SourceParams {
    /// Where the objects are.
    pub location: Location,
    /// Keep listing the prefix for new objects (never finish); by default the input finishes
    /// once the objects listed at its start are read.
    pub watch: bool,
    /// How often the prefix is listed when `watch` is on.
    pub watch_interval: Duration,
    /// The longest line handed over (longer ones go to the error output), DESIGN §10.
    pub max_line_bytes: usize,
}

/// Params of the `sardonyx/s3` output.
///
/// ```json
/// {"bucket": "tallies", "prefix": "per-minute/", "endpoint": "http://127.0.0.1:9000",
///  "max_object_bytes": 67108864, "max_object_age": [1, "minute"], "part_bytes": 8388608}
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3SinkParams {
    /// Where the objects go.
    pub location: Location,
    /// An object is rolled (written whole, and a new one begun) once it holds this many bytes.
    pub max_object_bytes: u64,
    /// An object is rolled once its first record is this old (checked as batches arrive).
    pub max_object_age: Duration,
    /// Objects larger than this are uploaded in parts of this size (at least 5 MiB).
    pub part_bytes: u64,
}

/// A legal bucket name (S3's rules: 3–63 lowercase letters, digits, `.` and `-`, starting and
/// ending with a letter or digit).
fn legal_bucket(name: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    (3..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        && edge(name.chars().next())
        && edge(name.chars().last())
}

fn check_location(f: &mut Fields<'_>) -> Option<Location> {
    let bucket = f.string("bucket", true);
    if let Some(b) = bucket.filter(|b| !legal_bucket(b)) {
        f.problem(
            "bucket",
            format!(
                "{b:?} is not a legal bucket name (3 to 63 lowercase letters, digits, '.' and '-')"
            ),
        );
    }
    let prefix = f.string("prefix", false);
    if prefix.is_some_and(|p| p.starts_with('/')) {
        f.problem(
            "prefix",
            "must not start with '/' (keys are relative to the bucket)",
        );
    }
    let endpoint = f.string("endpoint", false);
    if let Some(e) = endpoint.filter(|e| !e.starts_with("http://") && !e.starts_with("https://")) {
        f.problem(
            "endpoint",
            format!("{e:?} is not a URL starting with http:// or https://"),
        );
    }
    let region = f.string("region", false);
    crate::retry::check(f);
    let retry = f
        .value("retry", false)
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default();
    let mut prefix = prefix.unwrap_or_default().to_owned();
    if !prefix.is_empty() && !prefix.ends_with('/') {
        prefix.push('/');
    }
    Some(Location {
        bucket: bucket?.to_owned(),
        prefix,
        endpoint: endpoint.map(str::to_owned),
        region: region.map(str::to_owned),
        retry,
    })
}

/// A duration written `[n, "unit"]` (`milliseconds|seconds|minutes|hours`, singular or plural).
fn duration(f: &mut Fields<'_>, field: &'static str) -> Option<Duration> {
    let v = f.value(field, false)?;
    let parsed = match v {
        Value::Array(items) if items.len() == 2 => match (items[0].as_u64(), items[1].as_str()) {
            (Some(n), Some(unit)) => match unit.trim_end_matches('s') {
                "millisecond" => Some(Duration::from_millis(n)),
                "second" => Some(Duration::from_secs(n)),
                "minute" => Some(Duration::from_secs(n.saturating_mul(60))),
                "hour" => Some(Duration::from_secs(n.saturating_mul(3600))),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    };
    if parsed.is_none() {
        f.problem(
            field,
            format!(
                "must be a duration such as [30, \"seconds\"] (milliseconds, seconds, minutes, hours), got {}",
                if v.is_array() { v.to_string() } else { kind(v).to_owned() }
            ),
        );
    }
    parsed.filter(|d| {
        let zero = d.is_zero();
        if zero {
            f.problem(field, "must be longer than zero");
        }
        !zero
    })
}

fn fields(params: &Value) -> Result<Fields<'_>, Problems> {
    Fields::new(params)
}

/// Reads and checks the input's params: the params, or every problem.
pub fn source_params(params: &Value) -> Result<S3SourceParams, Problems> {
    let mut f = fields(params)?;
    let location = check_location(&mut f);
    let watch = f.boolean("watch").unwrap_or(false);
    let watch_interval = duration(&mut f, "watch_interval").unwrap_or(DEFAULT_WATCH_INTERVAL);
    let max_line_bytes = f.unsigned("max_line_bytes", false);
    if max_line_bytes == Some(0) {
        f.problem("max_line_bytes", "must be at least 1");
    }
    let problems = f.finish();
    match location {
        Some(location) if problems.is_empty() => Ok(S3SourceParams {
            location,
            watch,
            watch_interval,
            max_line_bytes: max_line_bytes.map_or(crate::jsonl::DEFAULT_MAX_LINE_BYTES, |n| {
                usize::try_from(n).unwrap_or(usize::MAX)
            }),
        }),
        _ => Err(problems),
    }
}

/// Reads and checks the output's params: the params, or every problem.
pub fn sink_params(params: &Value) -> Result<S3SinkParams, Problems> {
    let mut f = fields(params)?;
    let location = check_location(&mut f);
    let max_object_bytes = f.unsigned("max_object_bytes", false);
    if max_object_bytes == Some(0) {
        f.problem("max_object_bytes", "must be at least 1");
    }
    let max_object_age = duration(&mut f, "max_object_age").unwrap_or(DEFAULT_MAX_OBJECT_AGE);
    let part_bytes = f.unsigned("part_bytes", false);
    if part_bytes.is_some_and(|p| p < MIN_PART_BYTES) {
        f.problem(
            "part_bytes",
            format!("must be at least {MIN_PART_BYTES} (5 MiB, S3's least part size)"),
        );
    }
    let problems = f.finish();
    match location {
        Some(location) if problems.is_empty() => Ok(S3SinkParams {
            location,
            max_object_bytes: max_object_bytes.unwrap_or(DEFAULT_MAX_OBJECT_BYTES),
            max_object_age,
            part_bytes: part_bytes.unwrap_or(DEFAULT_PART_BYTES),
        }),
        _ => Err(problems),
    }
}

/// Checks the input's params without contacting anything; every problem.
pub fn validate_source(params: &Value) -> Problems {
    source_params(params).err().unwrap_or_default()
}

/// Checks the output's params without contacting anything; every problem.
pub fn validate_sink(params: &Value) -> Problems {
    sink_params(params).err().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(problems: &Problems) -> Vec<&str> {
        problems.iter().map(|(f, _)| f.as_str()).collect()
    }

    #[test]
    fn every_problem_is_named_by_its_field() {
        let problems = validate_source(&json!({
            "bucket": "Bad_Bucket", "prefix": "/x", "endpoint": "localhost:9000",
            "watch": "yes", "watch_interval": [1, "fortnight"], "max_line_bytes": 0,
            "retry": {"max_retries": -1}, "buckt": "x"
        }));
        assert_eq!(
            fields(&problems),
            [
                "bucket",
                "prefix",
                "endpoint",
                "retry.max_retries",
                "watch",
                "watch_interval",
                "max_line_bytes",
                "buckt"
            ],
            "{problems:?}"
        );
        assert_eq!(
            validate_sink(
                &json!({"max_object_bytes": 0, "part_bytes": 1024, "max_object_age": [0, "seconds"]})
            ),
            vec![
                ("bucket".to_owned(), "is required".to_owned()),
                (
                    "max_object_bytes".to_owned(),
                    "must be at least 1".to_owned()
                ),
                (
                    "max_object_age".to_owned(),
                    "must be longer than zero".to_owned()
                ),
                (
                    "part_bytes".to_owned(),
                    "must be at least 5242880 (5 MiB, S3's least part size)".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn good_params_are_read_with_their_defaults() {
        let p = source_params(&json!({"bucket": "votes", "prefix": "in", "watch": true,
                                      "watch_interval": [250, "milliseconds"]}))
        .unwrap();
        assert_eq!(p.location.prefix, "in/");
        assert_eq!(p.location.retry, RetryPolicy::default());
        assert_eq!(p.watch_interval, Duration::from_millis(250));
        assert_eq!(p.max_line_bytes, 1 << 20);
        let s = sink_params(
            &json!({"bucket": "out.bucket-1", "max_object_age": [2, "minutes"],
                                    "endpoint": "http://127.0.0.1:9000"}),
        )
        .unwrap();
        assert_eq!(s.location.prefix, "");
        assert_eq!(s.max_object_age, Duration::from_secs(120));
        assert_eq!(s.max_object_bytes, DEFAULT_MAX_OBJECT_BYTES);
        assert_eq!(s.part_bytes, DEFAULT_PART_BYTES);
    }
}
