//! The plugin interface: what the runtime asks of the code a job names by plugin, sync or
//! lifecycle. Input plugins hand over an [`InputReader`], output plugins a [`SegmentSink`], sync
//! functions a [`SyncSink`]; each is opened with a context ([`PluginContext`], [`SyncContext`])
//! and checks its `params` first, so a job is refused before it runs (a task's hooks are
//! [`crate::lifecycle`]). The built-in plugins (`crate::plugins`) and the connectors are
//! written against this interface alone, and a [`PluginFamily`] is how each is registered.

use std::sync::Arc;

use sardonyx_connectors::{ConnectorError, Positions, RetryPolicy, Source};
use tokio::sync::mpsc;

use crate::job::TaskSpec;
use crate::segment::{Map, Segment, Value};

/// Checks a plugin's or sync's `params`, returning `(field, message)` for each problem.
pub type ParamsCheck = Arc<dyn Fn(&Map) -> Vec<(String, String)> + Send + Sync>;

/// Receives trigger firings. Each firing is the map `{"window","trigger","group","lower",
/// "upper","state","event"}` (the state before refinement).
pub trait SyncSink: Send {
    /// Handles one firing.
    fn sync(&mut self, firing: &Map) -> Result<(), String>;
    /// Makes handled firings durable (called after each step's firings were handled: before
    /// the slot logs anything more).
    fn flush(&mut self) -> Result<(), String> {
        Ok(())
    }
}

/// Opens a sync sink for a trigger.
pub type SyncOpen =
    Arc<dyn Fn(&SyncContext<'_>) -> Result<Box<dyn SyncSink>, String> + Send + Sync>;

/// What a sync function is told when it is opened.
pub struct SyncContext<'a> {
    /// The trigger's `params`.
    pub params: &'a Map,
    /// True when the job resumes earlier state: keep (append to) what earlier runs wrote.
    pub resuming: bool,
}

/// A registered sync function: a parameter check and a constructor (one sink per trigger and
/// job, shared by the task's peers).
#[derive(Clone)]
pub struct SyncPlugin {
    /// Checks the trigger's `params`.
    pub check: ParamsCheck,
    /// Opens a sink.
    pub open: SyncOpen,
}

/// Where an input peer reads from.
pub enum InputReader {
    /// Raw records (each one JSON document) from a connector source.
    Records(Box<dyn Source>),
    /// Segments handed over in memory.
    Segments(mpsc::Receiver<Segment>),
    /// This peer has nothing to read (e.g. the extra peers of a one-partition source).
    Nothing,
}

/// Writes segments out of the job. The runtime calls `write` then `flush` for every batch and
/// acknowledges the batch only once both succeed; on a retryable error it calls them again with
/// the whole batch (so a sink must take a batch twice: at least once).
pub trait SegmentSink: Send {
    /// Writes a batch.
    fn write(&mut self, segments: &[Segment]) -> Result<(), ConnectorError>;
    /// Makes what was written durable: once it returns, a `kill -9` of the process cannot lose
    /// it (a file written to the OS, a Kafka delivery confirmed, a transaction committed).
    fn flush(&mut self) -> Result<(), ConnectorError>;
}

/// What a plugin is told when one of its peers starts.
pub struct PluginContext<'a> {
    /// The task's catalog entry.
    pub task: &'a TaskSpec,
    /// This peer's index among the task's peers.
    pub peer: usize,
    /// The number of peers of the task.
    pub n_peers: usize,
    /// True when the job resumes earlier state: outputs keep (append to) what earlier runs
    /// wrote instead of starting afresh.
    pub resuming: bool,
    /// For an input peer, the positions to resume from (what an earlier run of the job
    /// committed, per partition; empty when starting afresh, and for outputs). The input's
    /// `open` must hand back a reader positioned just after them.
    pub positions: &'a Positions,
}

/// Which side of a job a plugin serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginKind {
    /// Reads into the job.
    Input,
    /// Writes out of the job.
    Output,
}

type InputOpen = Arc<dyn Fn(&PluginContext<'_>) -> Result<InputReader, String> + Send + Sync>;
type OutputOpen =
    Arc<dyn Fn(&PluginContext<'_>) -> Result<Box<dyn SegmentSink>, String> + Send + Sync>;

/// A registered input plugin.
#[derive(Clone)]
pub struct InputPlugin {
    /// Checks the task's `params`.
    pub check: ParamsCheck,
    /// Opens one peer's reader.
    pub open: InputOpen,
}

/// A registered output plugin.
#[derive(Clone)]
pub struct OutputPlugin {
    /// Checks the task's `params`.
    pub check: ParamsCheck,
    /// Opens one peer's sink.
    pub open: OutputOpen,
}

/// The plugins of one family — a built-in such as `sardonyx/jsonl`, or a connector — by name:
/// what a registry registers for it (`Registry::register_family`).
#[derive(Clone, Default)]
pub struct PluginFamily {
    /// Input plugins.
    pub inputs: Vec<(&'static str, InputPlugin)>,
    /// Output plugins.
    pub outputs: Vec<(&'static str, OutputPlugin)>,
    /// Sync functions.
    pub syncs: Vec<(&'static str, SyncPlugin)>,
}

/// A check that `params[field]` is a string.
pub fn require_string(params: &Map, field: &str) -> Vec<(String, String)> {
    match params.get(field) {
        None => vec![(field.to_owned(), "missing".to_owned())],
        Some(Value::Str(s)) if !s.is_empty() => Vec::new(),
        Some(Value::Str(_)) => vec![(field.to_owned(), "is empty".to_owned())],
        Some(other) => vec![(
            field.to_owned(),
            format!("expected a string, found {}", other.type_name()),
        )],
    }
}

/// The retry policy of a plugin's `params.retry` ([`sardonyx_connectors::retry`]).
pub(crate) fn retry_policy(params: &Map) -> Result<RetryPolicy, String> {
    RetryPolicy::from_params(&to_json(params)).map_err(|e| e.to_string())
}

/// A plugin's params as JSON, for the connectors crate (which knows nothing of segments).
pub(crate) fn to_json(params: &Map) -> serde_json::Value {
    serde_json::to_value(params).expect("a map always converts to JSON")
}
