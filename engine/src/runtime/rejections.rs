//! The job's error output: a rejected segment or input line with its cause ([`Rejection`]),
//! and the JSON-lines error file every peer shares ([`ErrorFile`]), whose failures are typed
//! ([`sardonyx_connectors::ConnectorError`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sardonyx_connectors::jsonl::JsonLinesSink;
use sardonyx_connectors::{ConnectorError, Sink};

use crate::segment::{Map, Segment, Value};

/// A rejected segment (or input line) and why.
#[derive(Debug, Clone)]
pub struct Rejection {
    /// The task that rejected it.
    pub task: String,
    /// Why.
    pub reason: String,
    /// The input line number, for records that never became segments.
    pub line: Option<u64>,
    /// The raw input, for records that never became segments.
    pub input: Option<String>,
    /// The segment, when there is one.
    pub segment: Option<Segment>,
}

impl Rejection {
    /// A segment that `task` rejected.
    pub fn segment(task: &str, reason: impl Into<String>, segment: Segment) -> Self {
        Rejection {
            task: task.to_owned(),
            reason: reason.into(),
            line: None,
            input: None,
            segment: Some(segment),
        }
    }

    /// An input record that could not be read as a segment.
    pub fn input(task: &str, reason: impl Into<String>, line: u64, input: String) -> Self {
        Rejection {
            task: task.to_owned(),
            reason: reason.into(),
            line: Some(line),
            input: Some(input),
            segment: None,
        }
    }

    /// The rejection as one error-output record: `{"task","reason","line","input"}` or
    /// `{"task","reason","segment"}`.
    pub fn to_segment(&self) -> Segment {
        let mut m = Map::with_capacity(4);
        m.insert("task", self.task.as_str());
        m.insert("reason", self.reason.as_str());
        if let Some(line) = self.line {
            m.insert("line", Value::from(line));
        }
        if let Some(input) = &self.input {
            m.insert("input", input.as_str());
        }
        if let Some(s) = &self.segment {
            m.insert("segment", Value::Map(s.clone()));
        }
        m
    }
}

/// A JSON-lines file of rejections shared by every peer, with a count. Rejections are buffered
/// and made durable (written to the OS) by [`ErrorFile::flush`], which every peer calls before
/// it releases the acks of the batch a rejection came from.
#[derive(Clone)]
pub struct ErrorFile {
    sink: Arc<Mutex<ErrorSink>>,
    path: std::path::PathBuf,
    count: Arc<AtomicU64>,
}

/// The file, opened on the first rejection.
#[derive(Default)]
struct ErrorSink {
    file: Option<JsonLinesSink>,
    /// Append to what an earlier run wrote (cutting a torn last line) instead of truncating.
    resuming: bool,
}

impl ErrorFile {
    /// An error file at `path`, created (truncated, unless [`ErrorFile::set_resuming`]) on the
    /// first rejection.
    pub fn new(path: impl Into<std::path::PathBuf>, count: Arc<AtomicU64>) -> Self {
        ErrorFile {
            sink: Arc::default(),
            path: path.into(),
            count,
        }
    }

    /// Tells the file that the job resumes an earlier run: it is then appended to (its torn last
    /// line cut, as a process killed mid-write leaves it), never truncated.
    pub fn set_resuming(&self, resuming: bool) {
        self.sink.lock().expect("error file lock poisoned").resuming = resuming;
    }

    /// The file's path.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Appends one rejection (buffered: see [`ErrorFile::flush`]). A failure to write the error
    /// file itself is fatal for the job, since the rejection would otherwise be lost.
    pub fn write(&self, rejection: &Rejection) -> Result<(), ConnectorError> {
        self.count.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(task = %rejection.task, reason = %rejection.reason, "segment rejected");
        let mut guard = self.sink.lock().expect("error file lock poisoned");
        let ErrorSink { file, resuming } = &mut *guard;
        let sink = match file {
            Some(f) => f,
            None => {
                let opened = if *resuming {
                    JsonLinesSink::resume(&self.path)
                } else {
                    JsonLinesSink::create(&self.path)
                };
                file.insert(opened?)
            }
        };
        sink.write_batch(&[rejection.to_segment().to_string().into_bytes()])
    }

    /// Counts a rejection that went to the error task instead of the file.
    pub fn count_only(&self) {
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Writes every buffered rejection (of every peer) to the OS, so that a `kill -9` cannot lose
    /// it (the file is not fsynced: a power loss can).
    pub fn flush(&self) -> Result<(), ConnectorError> {
        match &mut self.sink.lock().expect("error file lock poisoned").file {
            Some(s) => s.flush(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejection(n: i64) -> Rejection {
        let mut s = Segment::with_capacity(1);
        s.insert("n", Value::from(n));
        Rejection::segment("t", "bad", s)
    }

    /// A fresh job truncates the file; a resumed one appends after cutting a torn last line.
    #[test]
    fn a_resumed_job_appends_to_the_error_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("errors.jsonl");
        std::fs::write(&path, "old\n").unwrap();
        let fresh = ErrorFile::new(&path, Arc::default());
        fresh.write(&rejection(1)).unwrap();
        fresh.flush().unwrap();
        let first = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            first,
            "{\"task\":\"t\",\"reason\":\"bad\",\"segment\":{\"n\":1}}\n"
        );

        std::fs::write(&path, format!("{first}{{\"task\":\"t\",\"rea")).unwrap();
        let count = Arc::new(AtomicU64::new(0));
        let resumed = ErrorFile::new(&path, count.clone());
        resumed.set_resuming(true);
        resumed.write(&rejection(2)).unwrap();
        resumed.flush().unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{first}{{\"task\":\"t\",\"reason\":\"bad\",\"segment\":{{\"n\":2}}}}\n")
        );
        assert_eq!(count.load(Ordering::Relaxed), 1);
    }

    /// An error file that cannot be created fails with the connector's typed error, which the
    /// job reports as [`crate::RunError::ErrorOutput`] with that cause as its source.
    #[test]
    fn an_error_file_that_cannot_be_created_fails_with_a_typed_cause() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("a-file");
        std::fs::write(&blocker, "").unwrap();
        let file = ErrorFile::new(blocker.join("errors.jsonl"), Arc::default());
        let cause = file.write(&rejection(1)).unwrap_err();
        assert!(!cause.is_retryable());
        let message = cause.to_string();
        let error = crate::RunError::ErrorOutput(cause);
        assert_eq!(
            error.to_string(),
            format!("cannot write the error output: {message}")
        );
        let source = std::error::Error::source(&error).expect("the cause is kept");
        assert_eq!(source.to_string(), message);
    }
}
