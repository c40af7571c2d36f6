//! The registry: everything a job names, by name.
//!
//! Job files refer to code by name — functions, predicates, group functions, aggregations, sync
//! functions, lifecycles, plugins. A [`Registry`] maps those names to Rust values. The built-ins
//! are registered by [`Registry::new`]; validation rejects a job that names anything missing,
//! so nothing unregistered is discovered at run time.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use sardonyx_connectors::jsonl::{JsonLinesSink, JsonLinesSource};
use sardonyx_connectors::{ConnectorError, Position, Positions, RetryPolicy, Sink, Source};
use sardonyx_windowing::aggregation::Aggregation;
use tokio::sync::mpsc;

use crate::job::TaskSpec;
use crate::segment::{Map, Segment, Value};

/// A function task's code: one segment in, zero or more out; an `Err` sends the segment to the
/// error path with the message. The second argument is the task's `params`.
pub type FunctionFn = Arc<dyn Fn(Segment, &Map) -> Result<Vec<Segment>, String> + Send + Sync>;
/// A predicate for flow conditions and punctuation triggers: the segment and the parameters
/// given in the job (`Value::Null` if none).
pub type PredicateFn = Arc<dyn Fn(&Segment, &Value) -> bool + Send + Sync>;
/// Computes the grouping key of a segment (`group_by_fn`).
pub type GroupFn = Arc<dyn Fn(&Segment) -> Value + Send + Sync>;
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

/// What a lifecycle's `handle_exception` decides for a failed segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExceptionAction {
    /// Send the segment to the error path and go on (the default).
    Defer,
    /// Restart the task peer (its `before_task_start` runs again), then go on.
    Restart,
    /// Stop the whole job with the error.
    Kill,
}

/// Where a lifecycle hook is called from.
#[derive(Debug, Clone)]
pub struct TaskEvent<'a> {
    /// The task.
    pub task: &'a str,
    /// The peer's index.
    pub peer: usize,
}

type Hook = Arc<dyn Fn(&TaskEvent<'_>) + Send + Sync>;
type BatchHook = Arc<dyn Fn(&TaskEvent<'_>, usize) + Send + Sync>;
type ExceptionHook = Arc<dyn Fn(&TaskEvent<'_>, &Segment, &str) -> ExceptionAction + Send + Sync>;

/// Hooks around a task's life; every hook is optional.
#[derive(Clone, Default)]
pub struct Lifecycle {
    /// Before the peer takes its first batch (and after a restart).
    pub before_task_start: Option<Hook>,
    /// Before each batch, with its size.
    pub before_batch: Option<BatchHook>,
    /// After each batch, with its size.
    pub after_batch: Option<BatchHook>,
    /// After the peer has finished (or before a restart).
    pub after_task_stop: Option<Hook>,
    /// Decides what a failed segment does: defer (error path), restart or kill.
    pub handle_exception: Option<ExceptionHook>,
}

/// Named code for jobs: functions, predicates, group functions, aggregations, sync functions,
/// lifecycles and plugins.
#[derive(Clone)]
pub struct Registry {
    functions: HashMap<String, FunctionFn>,
    predicates: HashMap<String, PredicateFn>,
    group_fns: HashMap<String, GroupFn>,
    aggregations: HashMap<String, Arc<dyn Aggregation>>,
    syncs: HashMap<String, SyncPlugin>,
    lifecycles: HashMap<String, Lifecycle>,
    inputs: HashMap<String, InputPlugin>,
    outputs: HashMap<String, OutputPlugin>,
    channels: Arc<Mutex<Channels>>,
    /// The built-in `sardonyx/identity` (the runtime skips calling it).
    identity: FunctionFn,
}

#[derive(Default)]
struct Channels {
    inputs: HashMap<String, mpsc::Receiver<Segment>>,
    outputs: HashMap<String, mpsc::Sender<Segment>>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

impl Registry {
    /// A registry holding the built-ins: the function `sardonyx/identity`, the predicates
    /// `sardonyx/always` and `sardonyx/never`, the plugins `sardonyx/jsonl` (input and output),
    /// `sardonyx/channel` (input and output) and `sardonyx/null` (output), and the sync
    /// function `sardonyx/jsonl`.
    pub fn new() -> Self {
        let mut r = Registry {
            functions: HashMap::new(),
            predicates: HashMap::new(),
            group_fns: HashMap::new(),
            aggregations: HashMap::new(),
            syncs: HashMap::new(),
            lifecycles: HashMap::new(),
            inputs: HashMap::new(),
            outputs: HashMap::new(),
            channels: Arc::default(),
            identity: Arc::new(|s, _| Ok(vec![s])),
        };
        r.functions
            .insert("sardonyx/identity".to_owned(), r.identity.clone());
        r.register_predicate("sardonyx/always", |_, _| true);
        r.register_predicate("sardonyx/never", |_, _| false);
        r.register_input(
            "sardonyx/jsonl",
            InputPlugin {
                check: Arc::new(|p| {
                    let mut problems = require_string(p, "path");
                    problems.extend(sardonyx_connectors::jsonl::validate_source(&to_json(p)));
                    problems
                }),
                open: Arc::new(|ctx| {
                    if ctx.peer > 0 {
                        return Ok(InputReader::Nothing);
                    }
                    let path = param_path(ctx.task)?;
                    let limit =
                        sardonyx_connectors::jsonl::max_line_bytes(&to_json(&ctx.task.params))
                            .map_err(|e| e.to_string())?;
                    let mut source = JsonLinesSource::open(&path)
                        .map_err(|e| e.to_string())?
                        .with_max_line_bytes(limit);
                    // One partition: resume just after the committed byte offset.
                    if let Some(offset) = ctx.positions.get(0) {
                        source
                            .seek(Position {
                                partition: 0,
                                offset,
                            })
                            .map_err(|e| format!("resuming at offset {offset}: {e}"))?;
                    }
                    Ok(InputReader::Records(Box::new(source)))
                }),
            },
        );
        r.register_output(
            "sardonyx/jsonl",
            OutputPlugin {
                check: Arc::new(|p| {
                    let mut problems = require_string(p, "path");
                    problems.extend(sardonyx_connectors::retry::check_params(&to_json(p)));
                    problems
                }),
                open: Arc::new(|ctx| {
                    let path = peer_path(param_path(ctx.task)?, ctx.peer, ctx.n_peers);
                    let sink = if ctx.resuming {
                        JsonLinesSink::resume(&path)
                    } else {
                        JsonLinesSink::create(&path)
                    };
                    let sink = sink.map_err(|e| e.to_string())?;
                    Ok(Box::new(JsonLinesOutput(sink)) as Box<dyn SegmentSink>)
                }),
            },
        );
        r.register_output(
            "sardonyx/null",
            OutputPlugin {
                check: Arc::new(|_| Vec::new()),
                open: Arc::new(|_| Ok(Box::new(NullOutput) as Box<dyn SegmentSink>)),
            },
        );
        let channels = r.channels.clone();
        r.register_input(
            "sardonyx/channel",
            InputPlugin {
                check: Arc::new(|p| require_string(p, "channel")),
                open: Arc::new(move |ctx| {
                    let name = ctx
                        .task
                        .params
                        .get("channel")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    let mut ch = channels.lock().expect("channel registry poisoned");
                    if ctx.peer > 0 {
                        return Ok(InputReader::Nothing);
                    }
                    ch.inputs
                        .remove(name)
                        .map(InputReader::Segments)
                        .ok_or_else(|| {
                            format!(
                                "no input channel \"{name}\" was opened (Registry::input_channel)"
                            )
                        })
                }),
            },
        );
        let channels = r.channels.clone();
        r.register_output("sardonyx/channel", OutputPlugin {
            check: Arc::new(|p| require_string(p, "channel")),
            open: Arc::new(move |ctx| {
                let name = ctx.task.params.get("channel").and_then(Value::as_str).unwrap_or_default();
                let ch = channels.lock().expect("channel registry poisoned");
                ch.outputs
                    .get(name)
                    .map(|tx| Box::new(ChannelOutput(tx.clone())) as Box<dyn SegmentSink>)
                    .ok_or_else(|| format!("no output channel \"{name}\" was opened (Registry::output_channel)"))
            }),
        });
        r.register_connectors();
        r.register_sync(
            "sardonyx/jsonl",
            SyncPlugin {
                check: Arc::new(|p| require_string(p, "path")),
                open: Arc::new(|ctx| {
                    let path = ctx
                        .params
                        .get("path")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    JsonLinesSync::open(path, ctx.resuming)
                        .map(|s| Box::new(s) as Box<dyn SyncSink>)
                        .map_err(|e| format!("{path}: {e}"))
                }),
            },
        );
        r
    }

    /// Registers the connectors of `sardonyx-connectors`: inputs `kafka` and `http`, outputs
    /// `kafka` and `postgres`, and the sync function `postgres` (firings upserted into a table).
    fn register_connectors(&mut self) {
        use sardonyx_connectors::plugins;
        for name in [plugins::KAFKA, plugins::HTTP] {
            self.register_input(
                name,
                InputPlugin {
                    check: Arc::new(move |p| {
                        plugins::validate_input(name, &to_json(p)).unwrap_or_default()
                    }),
                    open: Arc::new(move |ctx| {
                        let params = to_json(&ctx.task.params);
                        let (peer, n_peers, positions) = (ctx.peer, ctx.n_peers, ctx.positions);
                        match off_runtime(|| {
                            plugins::open_input(name, &params, peer, n_peers, positions)
                        }) {
                            Ok(Some(source)) => Ok(InputReader::Records(source)),
                            Ok(None) => Ok(InputReader::Nothing),
                            Err(e) => Err(e.to_string()),
                        }
                    }),
                },
            );
        }
        for name in [plugins::KAFKA, plugins::POSTGRES] {
            self.register_output(
                name,
                OutputPlugin {
                    check: Arc::new(move |p| {
                        plugins::validate_output(name, &to_json(p)).unwrap_or_default()
                    }),
                    open: Arc::new(move |ctx| {
                        let params = to_json(&ctx.task.params);
                        off_runtime(|| plugins::open_output(name, &params))
                            .map(|sink| {
                                Box::new(JsonOutput(OffRuntime(Some(sink)))) as Box<dyn SegmentSink>
                            })
                            .map_err(|e| e.to_string())
                    }),
                },
            );
        }
        self.register_sync(
            plugins::POSTGRES,
            SyncPlugin {
                check: Arc::new(|p| {
                    plugins::validate_output(plugins::POSTGRES, &to_json(p)).unwrap_or_default()
                }),
                open: Arc::new(|ctx| {
                    let params = to_json(ctx.params);
                    let retry = RetryPolicy::from_params(&params).map_err(|e| e.to_string())?;
                    off_runtime(|| plugins::open_output(plugins::POSTGRES, &params))
                        .map(|sink| {
                            Box::new(BufferedSync {
                                sink: OffRuntime(Some(sink)),
                                pending: Vec::new(),
                                retry,
                            }) as Box<dyn SyncSink>
                        })
                        .map_err(|e| e.to_string())
                }),
            },
        );
    }

    /// Registers a function task's code under `name`.
    pub fn register_function<F>(&mut self, name: &str, f: F) -> &mut Self
    where
        F: Fn(Segment, &Map) -> Result<Vec<Segment>, String> + Send + Sync + 'static,
    {
        self.functions.insert(name.to_owned(), Arc::new(f));
        self
    }

    /// Registers a predicate under `name`.
    pub fn register_predicate<F>(&mut self, name: &str, f: F) -> &mut Self
    where
        F: Fn(&Segment, &Value) -> bool + Send + Sync + 'static,
    {
        self.predicates.insert(name.to_owned(), Arc::new(f));
        self
    }

    /// Registers a grouping function under `name`.
    pub fn register_group_fn<F>(&mut self, name: &str, f: F) -> &mut Self
    where
        F: Fn(&Segment) -> Value + Send + Sync + 'static,
    {
        self.group_fns.insert(name.to_owned(), Arc::new(f));
        self
    }

    /// Registers a user aggregation under `name`.
    pub fn register_aggregation(&mut self, name: &str, a: Arc<dyn Aggregation>) -> &mut Self {
        self.aggregations.insert(name.to_owned(), a);
        self
    }

    /// Registers a sync function under `name`.
    pub fn register_sync(&mut self, name: &str, s: SyncPlugin) -> &mut Self {
        self.syncs.insert(name.to_owned(), s);
        self
    }

    /// Registers a lifecycle under `name`.
    pub fn register_lifecycle(&mut self, name: &str, l: Lifecycle) -> &mut Self {
        self.lifecycles.insert(name.to_owned(), l);
        self
    }

    /// Registers an input plugin under `name`.
    pub fn register_input(&mut self, name: &str, p: InputPlugin) -> &mut Self {
        self.inputs.insert(name.to_owned(), p);
        self
    }

    /// Registers an output plugin under `name`.
    pub fn register_output(&mut self, name: &str, p: OutputPlugin) -> &mut Self {
        self.outputs.insert(name.to_owned(), p);
        self
    }

    /// Opens the in-memory input channel `name` (for `sardonyx/channel` inputs with
    /// `params.channel = name`): segments sent here enter the job; dropping every sender ends
    /// the input. `capacity` bounds it, so a full job pushes back on the sender.
    pub fn input_channel(&self, name: &str, capacity: usize) -> mpsc::Sender<Segment> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        self.channels
            .lock()
            .expect("channel registry poisoned")
            .inputs
            .insert(name.to_owned(), rx);
        tx
    }

    /// Opens the in-memory output channel `name` (for `sardonyx/channel` outputs): the job's
    /// segments arrive here; the channel closes when the job ends.
    pub fn output_channel(&self, name: &str, capacity: usize) -> mpsc::Receiver<Segment> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        self.channels
            .lock()
            .expect("channel registry poisoned")
            .outputs
            .insert(name.to_owned(), tx);
        rx
    }

    pub(crate) fn drop_output_channels(&self) {
        self.channels
            .lock()
            .expect("channel registry poisoned")
            .outputs
            .clear();
    }

    /// True if a function is registered under `name`.
    pub fn has_function(&self, name: &str) -> bool {
        self.functions.contains_key(name)
    }
    /// True if a predicate is registered under `name`.
    pub fn has_predicate(&self, name: &str) -> bool {
        self.predicates.contains_key(name)
    }
    /// True if a group function is registered under `name`.
    pub fn has_group_fn(&self, name: &str) -> bool {
        self.group_fns.contains_key(name)
    }
    /// True if a user aggregation is registered under `name`.
    pub fn has_aggregation(&self, name: &str) -> bool {
        self.aggregations.contains_key(name)
    }
    /// True if a lifecycle is registered under `name`.
    pub fn has_lifecycle(&self, name: &str) -> bool {
        self.lifecycles.contains_key(name)
    }

    /// The function `name`.
    pub fn function(&self, name: &str) -> Option<&FunctionFn> {
        self.functions.get(name)
    }
    /// True if `f` is the built-in `sardonyx/identity` (each segment out unchanged; it cannot
    /// fail), not a function registered in its place.
    pub fn is_identity(&self, f: &FunctionFn) -> bool {
        Arc::ptr_eq(f, &self.identity)
    }
    /// The predicate `name`.
    pub fn predicate(&self, name: &str) -> Option<&PredicateFn> {
        self.predicates.get(name)
    }
    /// The group function `name`.
    pub fn group_fn(&self, name: &str) -> Option<&GroupFn> {
        self.group_fns.get(name)
    }
    /// The user aggregation `name`.
    pub fn aggregation(&self, name: &str) -> Option<&Arc<dyn Aggregation>> {
        self.aggregations.get(name)
    }
    /// The sync function `name`.
    pub fn sync(&self, name: &str) -> Option<&SyncPlugin> {
        self.syncs.get(name)
    }
    /// The lifecycle `name`.
    pub fn lifecycle(&self, name: &str) -> Option<&Lifecycle> {
        self.lifecycles.get(name)
    }
    /// The input plugin `name`.
    pub fn input(&self, name: &str) -> Option<&InputPlugin> {
        self.inputs.get(name)
    }
    /// The output plugin `name`.
    pub fn output(&self, name: &str) -> Option<&OutputPlugin> {
        self.outputs.get(name)
    }

    /// Problems with a plugin's params, or `None` if no such plugin is registered.
    pub fn plugin_params_problems(
        &self,
        name: &str,
        kind: PluginKind,
        params: &Map,
    ) -> Option<Vec<(String, String)>> {
        match kind {
            PluginKind::Input => self.inputs.get(name).map(|p| (p.check)(params)),
            PluginKind::Output => self.outputs.get(name).map(|p| (p.check)(params)),
        }
    }

    /// Problems with a sync function's params, or `None` if it is not registered.
    pub fn sync_params_problems(&self, name: &str, params: &Map) -> Option<Vec<(String, String)>> {
        self.syncs.get(name).map(|s| (s.check)(params))
    }
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

fn param_path(task: &TaskSpec) -> Result<PathBuf, String> {
    task.params
        .get("path")
        .and_then(Value::as_str)
        .map(PathBuf::from)
        .ok_or_else(|| format!("task \"{}\": params.path is missing", task.name))
}

/// With several peers, each output peer writes its own file: `out.jsonl` → `out.1.jsonl` …
/// (peer 0 keeps the plain name).
fn peer_path(path: PathBuf, peer: usize, n_peers: usize) -> PathBuf {
    if n_peers <= 1 || peer == 0 {
        return path;
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match path.extension() {
        Some(ext) => format!("{stem}.{peer}.{}", ext.to_string_lossy()),
        None => format!("{stem}.{peer}"),
    };
    path.with_file_name(name)
}

struct JsonLinesOutput(JsonLinesSink);

impl SegmentSink for JsonLinesOutput {
    fn write(&mut self, segments: &[Segment]) -> Result<(), ConnectorError> {
        let lines: Vec<Vec<u8>> = segments
            .iter()
            .map(|s| crate::segment::to_json_string(s).into_bytes())
            .collect();
        self.0.write_batch(&lines)
    }
    fn flush(&mut self) -> Result<(), ConnectorError> {
        self.0.flush()
    }
}

struct NullOutput;

impl SegmentSink for NullOutput {
    fn write(&mut self, _: &[Segment]) -> Result<(), ConnectorError> {
        Ok(())
    }
    fn flush(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }
}

struct ChannelOutput(mpsc::Sender<Segment>);

impl SegmentSink for ChannelOutput {
    fn write(&mut self, segments: &[Segment]) -> Result<(), ConnectorError> {
        for s in segments {
            self.0
                .blocking_send(s.clone())
                .map_err(|_| ConnectorError::fatal("output channel", "the receiver was dropped"))?;
        }
        Ok(())
    }
    fn flush(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }
}

/// The built-in `sardonyx/jsonl` sync. Several triggers may write one file: each sink appends
/// (O_APPEND) a batch's whole lines in one write at each flush, so lines never interleave.
struct JsonLinesSync {
    file: std::fs::File,
    pending: String,
}

impl JsonLinesSync {
    /// Opens `path` for appending; a fresh job empties it first, a resuming job cuts a torn last
    /// line. (All syncs are opened before any writes, so emptying never loses a firing.)
    fn open(path: &str, resuming: bool) -> std::io::Result<Self> {
        let path = std::path::Path::new(path);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        if resuming {
            sardonyx_connectors::jsonl::cut_torn_line(path)?;
        } else {
            std::fs::File::create(path)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(JsonLinesSync {
            file,
            pending: String::new(),
        })
    }
}

impl SyncSink for JsonLinesSync {
    fn sync(&mut self, firing: &Map) -> Result<(), String> {
        firing.write_json(&mut self.pending);
        self.pending.push('\n');
        Ok(())
    }
    fn flush(&mut self) -> Result<(), String> {
        use std::io::Write;
        if self.pending.is_empty() {
            return Ok(());
        }
        self.file
            .write_all(self.pending.as_bytes())
            .map_err(|e| e.to_string())?;
        self.pending.clear();
        Ok(())
    }
}

/// Runs `f` on a thread of its own: connectors block, some on a runtime of their own, which
/// must not happen on a thread that drives the job's runtime.
fn off_runtime<T: Send>(
    f: impl FnOnce() -> Result<T, ConnectorError> + Send,
) -> Result<T, ConnectorError> {
    std::thread::scope(|s| {
        s.spawn(f).join().unwrap_or_else(|_| {
            Err(ConnectorError::fatal(
                "connector",
                "a connector panicked while opening",
            ))
        })
    })
}

/// A plugin's params as JSON, for the connectors crate (which knows nothing of segments).
fn to_json(params: &Map) -> serde_json::Value {
    serde_json::to_value(params).expect("a map always converts to JSON")
}

/// Writes segments as JSON documents to a connector sink.
struct JsonOutput(OffRuntime);

/// Owns a connector sink and drops it on a thread of its own: a connector sink may own a tokio
/// runtime (PostgreSQL), and dropping one on a thread that drives the job's runtime panics (as
/// when a job fails and its peers end).
struct OffRuntime(Option<Box<dyn Sink>>);

impl std::ops::Deref for OffRuntime {
    type Target = Box<dyn Sink>;
    fn deref(&self) -> &Self::Target {
        self.0.as_ref().expect("present until dropped")
    }
}

impl std::ops::DerefMut for OffRuntime {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.0.as_mut().expect("present until dropped")
    }
}

impl Drop for OffRuntime {
    fn drop(&mut self) {
        if let Some(sink) = self.0.take() {
            let _ = std::thread::spawn(move || drop(sink)).join();
        }
    }
}

impl SegmentSink for JsonOutput {
    fn write(&mut self, segments: &[Segment]) -> Result<(), ConnectorError> {
        let records: Vec<Vec<u8>> = segments
            .iter()
            .map(|s| crate::segment::to_json_string(s).into_bytes())
            .collect();
        self.0.write_batch(&records)
    }
    fn flush(&mut self) -> Result<(), ConnectorError> {
        self.0.flush()
    }
}

/// A sync function over a connector sink: firings are gathered and written at each flush (the
/// end of every batch), one write per batch, on a thread of their own since connector sinks
/// block (and may run their own runtime). A retryable failure is retried with backoff (the
/// trigger's `params.retry`); the firings stay pending until written.
struct BufferedSync {
    sink: OffRuntime,
    pending: Vec<Vec<u8>>,
    retry: RetryPolicy,
}

impl SyncSink for BufferedSync {
    fn sync(&mut self, firing: &Map) -> Result<(), String> {
        self.pending
            .push(crate::segment::to_json_string(firing).into_bytes());
        Ok(())
    }

    fn flush(&mut self) -> Result<(), String> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let (records, sink, retry) = (&self.pending, &mut self.sink, &self.retry);
        std::thread::scope(|s| {
            s.spawn(move || {
                retry.run("syncing firings", || {
                    sink.write_batch(records)?;
                    sink.flush()
                })
            })
            .join()
            .unwrap_or_else(|_| Err(ConnectorError::fatal("sync", "the writer thread panicked")))
        })
        .map_err(|e| e.to_string())?;
        self.pending.clear();
        Ok(())
    }
}
