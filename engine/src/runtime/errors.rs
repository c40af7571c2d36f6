//! The job's error output: where rejected segments go, with their cause.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sardonyx_connectors::jsonl::JsonLinesSink;
use sardonyx_connectors::Sink;

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

/// A JSON-lines file of rejections shared by every peer, with a count.
#[derive(Clone)]
pub struct ErrorFile {
    sink: Arc<Mutex<Option<JsonLinesSink>>>,
    path: std::path::PathBuf,
    count: Arc<AtomicU64>,
}

impl ErrorFile {
    /// An error file at `path`, created (truncated) on the first rejection.
    pub fn new(path: impl Into<std::path::PathBuf>, count: Arc<AtomicU64>) -> Self {
        ErrorFile {
            sink: Arc::new(Mutex::new(None)),
            path: path.into(),
            count,
        }
    }

    /// The file's path.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Appends one rejection. A failure to write the error file itself is fatal for the job,
    /// since the rejection would otherwise be lost.
    pub fn write(&self, rejection: &Rejection) -> Result<(), String> {
        self.count.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(task = %rejection.task, reason = %rejection.reason, "segment rejected");
        let mut guard = self.sink.lock().expect("error file lock poisoned");
        if guard.is_none() {
            *guard = Some(JsonLinesSink::create(&self.path).map_err(|e| e.to_string())?);
        }
        let sink = guard.as_mut().expect("just opened");
        sink.write_batch(&[rejection.to_segment().to_string().into_bytes()])
            .map_err(|e| e.to_string())
    }

    /// Counts a rejection that went to the error task instead of the file.
    pub fn count_only(&self) {
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Flushes the file.
    pub fn flush(&self) -> Result<(), String> {
        match self.sink.lock().expect("error file lock poisoned").as_mut() {
            Some(s) => s.flush().map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }
}
