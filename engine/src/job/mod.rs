//! The job model: jobs are data (DESIGN §3).
//!
//! A [`Job`] is a workflow (edges between named tasks), a catalog (one [`TaskSpec`] per task),
//! windows, triggers, flow conditions and lifecycles. It loads from JSON or TOML
//! ([`Job::from_json_str`], [`Job::from_toml_str`], [`Job::load`]), is built in Rust with the
//! builders of [`builder`], and round-trips through serde. [`Job::validate`] checks it against a
//! [`Registry`](crate::Registry) and reports every problem at once.

pub mod builder;
mod load;
mod problem;
pub mod span;

use serde::{Deserialize, Serialize};

pub use load::JobFileError;
pub use problem::{Problem, ValidationError};
pub use span::{Span, Unit};

use crate::segment::{Map, Value};

/// A whole job: everything needed to run it, as data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    /// The job's id: running a job with the same id again resumes its state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Edges between task names: `[["read", "count"], ["count", "write"]]`.
    pub workflow: Vec<(String, String)>,
    /// One entry per task.
    pub catalog: Vec<TaskSpec>,
    /// Window definitions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<WindowDef>,
    /// Trigger definitions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub triggers: Vec<TriggerDef>,
    /// Flow conditions, evaluated in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flow_conditions: Vec<FlowCondition>,
    /// Lifecycle hooks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lifecycles: Vec<LifecycleDef>,
    /// Where rejected segments go (default: `sardonyx-errors.jsonl`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<ErrorsTarget>,
    /// What happens to a segment that matches none of its task's flow conditions (default
    /// `drop`; either way it is counted in the run report).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unmatched: Option<Unmatched>,
    /// The number of key groups grouped keys hash into (default 256, at most 32768, fixed for
    /// the life of the job's state): each peer of a grouped task owns a range of them (DESIGN
    /// §4, [`crate::key_groups`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_groups: Option<usize>,
    /// How a cluster divides its peers between this job and the others (default `greedy`;
    /// DESIGN §6, [`crate::coordination`]). Ignored by `sardonyx run` (one process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_scheduler: Option<JobScheduler>,
    /// How a cluster divides the job's peers among its tasks (default `balanced`). Ignored by
    /// `sardonyx run`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_scheduler: Option<TaskScheduler>,
    /// The job's share of the cluster's peers, in percent (1–100), for the `percentage` job
    /// scheduler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<u32>,
}

/// How a cluster divides its peers among jobs (the job key `job_scheduler`, DESIGN §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobScheduler {
    /// Jobs in submission order take all the peers they can use.
    #[default]
    Greedy,
    /// The peers are divided evenly among the running jobs.
    Balanced,
    /// Each job gets its `percentage` of the peers.
    Percentage,
}

impl JobScheduler {
    /// The name as written in job files.
    pub fn name(self) -> &'static str {
        match self {
            JobScheduler::Greedy => "greedy",
            JobScheduler::Balanced => "balanced",
            JobScheduler::Percentage => "percentage",
        }
    }
}

/// How a cluster divides a job's peers among its tasks (the job key `task_scheduler`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskScheduler {
    /// The job's peers are divided evenly among its tasks (within each task's bounds).
    #[default]
    Balanced,
    /// Each task gets its catalog `percentage` of the job's peers.
    Percentage,
    /// Every process that runs the job runs one slot of every task.
    Colocated,
}

impl TaskScheduler {
    /// The name as written in job files.
    pub fn name(self) -> &'static str {
        match self {
            TaskScheduler::Balanced => "balanced",
            TaskScheduler::Percentage => "percentage",
            TaskScheduler::Colocated => "colocated",
        }
    }
}

/// What happens to a segment that matches none of its task's flow conditions (a condition with
/// `to: "none"` that matches is a choice, not this).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unmatched {
    /// It goes nowhere, as in Onyx (counted in the run report).
    Drop,
    /// It goes to the error output with the reason (and is counted as rejected too).
    Error,
}

impl Job {
    /// The catalog entry of task `name`.
    pub fn task(&self, name: &str) -> Option<&TaskSpec> {
        self.catalog.iter().find(|t| t.name == name)
    }

    /// The names of the tasks downstream of `name`, in workflow order.
    pub fn downstream(&self, name: &str) -> Vec<&str> {
        self.workflow
            .iter()
            .filter(|(from, _)| from == name)
            .map(|(_, to)| to.as_str())
            .collect()
    }

    /// The names of the tasks upstream of `name`, in workflow order.
    pub fn upstream(&self, name: &str) -> Vec<&str> {
        self.workflow
            .iter()
            .filter(|(_, to)| to == name)
            .map(|(from, _)| from.as_str())
            .collect()
    }

    /// The windows defined on task `name`.
    pub fn windows_of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a WindowDef> + 'a {
        self.windows.iter().filter(move |w| w.task == name)
    }

    /// The triggers defined on window `id`.
    pub fn triggers_of<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a TriggerDef> + 'a {
        self.triggers.iter().filter(move |t| t.window == id)
    }

    /// The number of key groups, with the default applied ([`Job::key_groups`] field, else
    /// [`DEFAULT_KEY_GROUPS`](crate::key_groups::DEFAULT_KEY_GROUPS)).
    pub fn key_groups(&self) -> usize {
        self.key_groups
            .unwrap_or(crate::key_groups::DEFAULT_KEY_GROUPS)
    }

    /// The job as pretty JSON.
    pub fn to_json_string(&self) -> String {
        serde_json::to_string_pretty(self).expect("a job always serializes")
    }
}

/// What a task does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// Reads segments from a plugin.
    Input,
    /// Turns each segment into zero or more segments with a registered function.
    Function,
    /// Writes segments to a plugin.
    Output,
}

impl TaskKind {
    /// The kind's name as written in job files.
    pub fn name(self) -> &'static str {
        match self {
            TaskKind::Input => "input",
            TaskKind::Function => "function",
            TaskKind::Output => "output",
        }
    }
}

/// What a task does when it loses a peer (in one process: the peer failed, with a plugin error
/// or a panic outside the per-segment path).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FluxPolicy {
    /// Fail the job with the cause (also what happens without a policy).
    Kill,
    /// Keep running with fewer peers, others taking over the lost peer's keys. Refused by
    /// validation until the cluster runtime: one process has no other peer to take over.
    Continue,
    /// Restart the job's peers from the committed input positions and the state log (a bounded
    /// number of times, then fail with the cause). Needs a state log.
    Recover,
}

/// One field name or several (a compound key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum GroupKey {
    /// One field.
    One(String),
    /// Several fields; the key is the list of their values.
    Many(Vec<String>),
}

impl GroupKey {
    /// The field names.
    pub fn fields(&self) -> Vec<&str> {
        match self {
            GroupKey::One(f) => vec![f.as_str()],
            GroupKey::Many(fs) => fs.iter().map(String::as_str).collect(),
        }
    }
}

/// How an input derives its watermark from the segments it reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatermarkSpec {
    /// The field holding event time (epoch ms or RFC 3339).
    pub key: String,
    /// How far behind the greatest event time seen the watermark stays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_out_of_order: Option<Span>,
    /// After this much processing time without input, the input stops holding the watermark back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Span>,
}

/// One catalog entry: a task and how it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// The task's name, as used in the workflow.
    pub name: String,
    /// Input, function or output.
    #[serde(rename = "type")]
    pub kind: TaskKind,
    /// The registered function (function tasks).
    #[serde(rename = "fn", default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// The registered plugin (inputs and outputs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// Free-form parameters for the plugin or function.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub params: Map,
    /// Segments per batch (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// How long to wait to fill a batch (default 50 ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_timeout: Option<Span>,
    /// The number of peers (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_peers: Option<usize>,
    /// The least number of peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_peers: Option<usize>,
    /// The greatest number of peers (joining processes add peers up to it; refused by
    /// validation until the cluster runtime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_peers: Option<usize>,
    /// Route segments by these fields so each key lands on one peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_by_key: Option<GroupKey>,
    /// Route segments by the key a registered function computes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_by_fn: Option<String>,
    /// What to do when peers are lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flux_policy: Option<FluxPolicy>,
    /// The field that identifies a segment for deduplication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uniqueness_key: Option<String>,
    /// Whether windowed state deduplicates on `uniqueness_key` (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deduplicate: Option<bool>,
    /// How an input derives its watermark.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<WatermarkSpec>,
    /// The task's share of its job's peers, in percent (1–100), for the `percentage` task
    /// scheduler; the shares of a job's tasks add up to 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<u32>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub doc: Option<String>,
}

impl TaskSpec {
    /// Segments per batch, with the default applied.
    pub fn effective_batch_size(&self) -> usize {
        self.batch_size.unwrap_or(1000).max(1)
    }

    /// The batch timeout, with the default applied.
    pub fn effective_batch_timeout(&self) -> std::time::Duration {
        self.batch_timeout
            .map_or(std::time::Duration::from_millis(50), |s| s.as_duration())
    }

    /// The number of peers to run, with defaults applied (`n_peers`, else `min_peers`, else 1).
    pub fn peers(&self) -> usize {
        self.n_peers.or(self.min_peers).unwrap_or(1).max(1)
    }

    /// Whether deduplication is on (default true).
    pub fn deduplicates(&self) -> bool {
        self.deduplicate.unwrap_or(true)
    }
}

/// The kind of a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowKind {
    /// Non-overlapping windows of `range`.
    Fixed,
    /// Windows of `range` starting every `slide`.
    Sliding,
    /// One window over everything.
    Global,
    /// Per-key sessions closed by `timeout_gap` of inactivity.
    Session,
}

impl WindowKind {
    /// The kind's name as written in job files.
    pub fn name(self) -> &'static str {
        match self {
            WindowKind::Fixed => "fixed",
            WindowKind::Sliding => "sliding",
            WindowKind::Global => "global",
            WindowKind::Session => "session",
        }
    }
}

/// A window's aggregation: `"count"`, `["sum", "age"]`, or a registered name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AggregationDef {
    /// An aggregation without a field (`count`, `collect`, or a registered user aggregation).
    Name(String),
    /// An aggregation over a field: `["sum", "age"]`.
    WithField(String, String),
}

impl AggregationDef {
    /// The aggregation's name.
    pub fn name(&self) -> &str {
        match self {
            AggregationDef::Name(n) | AggregationDef::WithField(n, _) => n,
        }
    }

    /// The field, if any.
    pub fn field(&self) -> Option<&str> {
        match self {
            AggregationDef::Name(_) => None,
            AggregationDef::WithField(_, f) => Some(f),
        }
    }
}

/// A window definition on a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowDef {
    /// The window's id (unique in the job).
    pub id: String,
    /// The task the window is on.
    pub task: String,
    /// Fixed, sliding, global or session.
    #[serde(rename = "type")]
    pub kind: WindowKind,
    /// The aggregation.
    pub aggregation: AggregationDef,
    /// The field holding event time (epoch ms or RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_key: Option<String>,
    /// The window's length (fixed and sliding).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<Span>,
    /// How often a window starts (sliding).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slide: Option<Span>,
    /// The inactivity that closes a session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_gap: Option<Span>,
    /// The least window-key value (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_value: Option<i64>,
    /// The initial state of min/max aggregations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<Value>,
    /// How far behind the watermark a segment may still be counted (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_lateness: Option<Span>,
    /// A task to send late segments to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late: Option<String>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub doc: Option<String>,
}

/// What a trigger reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerOn {
    /// Every `threshold` segments.
    Segment,
    /// Every `period` of processing time.
    Timer,
    /// When the predicate `pred` holds.
    Punctuation,
    /// When the watermark passes an extent's upper bound plus `delay`.
    Watermark,
    /// When the watermark reaches `watermark_percentage` of an extent.
    PercentileWatermark,
}

impl TriggerOn {
    /// The name as written in job files.
    pub fn name(self) -> &'static str {
        match self {
            TriggerOn::Segment => "segment",
            TriggerOn::Timer => "timer",
            TriggerOn::Punctuation => "punctuation",
            TriggerOn::Watermark => "watermark",
            TriggerOn::PercentileWatermark => "percentile_watermark",
        }
    }
}

/// What happens to a window's state after a trigger fires it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refinement {
    /// Keep the state.
    #[default]
    Accumulating,
    /// Reset the state to the aggregation's initial value.
    Discarding,
}

/// A trigger on a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerDef {
    /// The window's id.
    pub window: String,
    /// The trigger's id (unique within the window).
    pub id: String,
    /// What the trigger reacts to.
    pub on: TriggerOn,
    /// Segments per firing (`segment` triggers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<Span>,
    /// Processing time between firings (`timer` triggers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<Span>,
    /// The registered predicate (`punctuation` triggers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pred: Option<String>,
    /// The fraction of an extent the watermark must reach (`percentile_watermark`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark_percentage: Option<f64>,
    /// Extra wait past the upper bound (`watermark` triggers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Span>,
    /// Accumulating (default) or discarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refinement: Option<Refinement>,
    /// Fire every extent, not only the new segment's (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fire_all_extents: Option<bool>,
    /// The registered sync function that receives each firing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<String>,
    /// Also send each firing downstream as a segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emit: Option<bool>,
    /// Parameters for the sync function (`path` for `sardonyx/jsonl`).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub params: Map,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub doc: Option<String>,
}

/// Which tasks a flow condition sends to: a list, `"all"` or `"none"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowTo {
    /// Every downstream task.
    All,
    /// No task.
    None,
    /// These tasks.
    Tasks(Vec<String>),
}

impl Serialize for FlowTo {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            FlowTo::All => s.serialize_str("all"),
            FlowTo::None => s.serialize_str("none"),
            FlowTo::Tasks(t) => t.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for FlowTo {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Word(String),
            List(Vec<String>),
        }
        match Raw::deserialize(d)? {
            Raw::Word(w) if w == "all" => Ok(FlowTo::All),
            Raw::Word(w) if w == "none" => Ok(FlowTo::None),
            Raw::Word(w) => Err(serde::de::Error::custom(format!(
                "expected a list of task names, \"all\" or \"none\", found \"{w}\""
            ))),
            Raw::List(l) => Ok(FlowTo::Tasks(l)),
        }
    }
}

/// A flow condition's predicate: a registered name, `{"name", "params"}`, or a combination
/// `["and", p, q, …]`, `["or", p, q, …]`, `["not", p]`.
#[derive(Debug, Clone, PartialEq)]
pub enum PredicateExpr {
    /// A registered predicate.
    Named {
        /// The registered name.
        name: String,
        /// Parameters passed to it.
        params: Value,
    },
    /// All must hold.
    And(Vec<PredicateExpr>),
    /// Any must hold.
    Or(Vec<PredicateExpr>),
    /// Must not hold.
    Not(Box<PredicateExpr>),
}

impl PredicateExpr {
    /// A registered predicate without parameters.
    pub fn named(name: impl Into<String>) -> Self {
        PredicateExpr::Named {
            name: name.into(),
            params: Value::Null,
        }
    }

    /// Every registered name the expression uses.
    pub fn names(&self) -> Vec<&str> {
        match self {
            PredicateExpr::Named { name, .. } => vec![name.as_str()],
            PredicateExpr::And(ps) | PredicateExpr::Or(ps) => {
                ps.iter().flat_map(|p| p.names()).collect()
            }
            PredicateExpr::Not(p) => p.names(),
        }
    }

    fn to_value(&self) -> Value {
        match self {
            PredicateExpr::Named { name, params } if params.is_null() => Value::from(name.as_str()),
            PredicateExpr::Named { name, params } => {
                let mut m = Map::new();
                m.insert("name", name.as_str());
                m.insert("params", params.clone());
                Value::Map(m)
            }
            PredicateExpr::And(ps) | PredicateExpr::Or(ps) => {
                let op = if matches!(self, PredicateExpr::And(_)) {
                    "and"
                } else {
                    "or"
                };
                let mut l = vec![Value::from(op)];
                l.extend(ps.iter().map(PredicateExpr::to_value));
                Value::List(l)
            }
            PredicateExpr::Not(p) => Value::List(vec![Value::from("not"), p.to_value()]),
        }
    }

    fn from_value(v: &Value) -> Result<Self, String> {
        match v {
            Value::Str(name) => Ok(PredicateExpr::named(name.as_str())),
            Value::Map(m) => {
                let name = m
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or("a predicate map needs a string \"name\"")?;
                if let Some(k) = m.keys().find(|k| *k != "name" && *k != "params") {
                    return Err(format!("unknown key \"{k}\" in a predicate map"));
                }
                Ok(PredicateExpr::Named {
                    name: name.to_owned(),
                    params: m.get("params").cloned().unwrap_or(Value::Null),
                })
            }
            Value::List(l) => {
                let op = l
                    .first()
                    .and_then(Value::as_str)
                    .ok_or("a predicate list starts with \"and\", \"or\" or \"not\"")?;
                let args = l[1..]
                    .iter()
                    .map(PredicateExpr::from_value)
                    .collect::<Result<Vec<_>, _>>()?;
                match op {
                    "and" if !args.is_empty() => Ok(PredicateExpr::And(args)),
                    "or" if !args.is_empty() => Ok(PredicateExpr::Or(args)),
                    "not" if args.len() == 1 => {
                        Ok(PredicateExpr::Not(Box::new(args.into_iter().next().expect("one"))))
                    }
                    "and" | "or" => Err(format!("\"{op}\" needs at least one predicate")),
                    "not" => Err("\"not\" takes exactly one predicate".to_owned()),
                    other => Err(format!(
                        "unknown predicate operator \"{other}\", expected \"and\", \"or\" or \"not\""
                    )),
                }
            }
            other => Err(format!(
                "a predicate is a name, a map or a list, not a {}",
                other.type_name()
            )),
        }
    }
}

impl Serialize for PredicateExpr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_value().serialize(s)
    }
}

impl<'de> Deserialize<'de> for PredicateExpr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        PredicateExpr::from_value(&v).map_err(serde::de::Error::custom)
    }
}

/// Where a task's segments go next, per segment (Onyx's flow conditions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowCondition {
    /// The task whose output this applies to, or `"all"`.
    pub from: String,
    /// The destinations when the predicate holds.
    pub to: FlowTo,
    /// The predicate.
    pub predicate: PredicateExpr,
    /// Stop evaluating further conditions when this one matches (must come first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub short_circuit: Option<bool>,
    /// Fields removed from the segment before it is sent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_keys: Vec<String>,
    /// This condition routes segments whose function failed (the segment carries the error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thrown_exception: Option<bool>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub doc: Option<String>,
}

/// A lifecycle: a registered set of hooks applied to a task (or `"all"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LifecycleDef {
    /// The task name, or `"all"`.
    pub task: String,
    /// The registered lifecycle name.
    pub calls: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub doc: Option<String>,
}

/// Where rejected segments go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorsTarget {
    /// A JSON-lines file.
    Path(String),
    /// A task of the job (receives one segment per rejection).
    Task(String),
}

impl Serialize for ErrorsTarget {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ErrorsTarget::Path(p) => s.serialize_str(p),
            ErrorsTarget::Task(t) => {
                let mut m = Map::new();
                m.insert("task", t.as_str());
                m.serialize(s)
            }
        }
    }
}

impl<'de> Deserialize<'de> for ErrorsTarget {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Path(String),
            Map {
                #[serde(default)]
                path: Option<String>,
                #[serde(default)]
                task: Option<String>,
            },
        }
        match Raw::deserialize(d)? {
            Raw::Path(p)
            | Raw::Map {
                path: Some(p),
                task: None,
            } => Ok(ErrorsTarget::Path(p)),
            Raw::Map {
                path: None,
                task: Some(t),
            } => Ok(ErrorsTarget::Task(t)),
            Raw::Map { .. } => Err(serde::de::Error::custom(
                "errors is a path, {\"path\": …} or {\"task\": …}",
            )),
        }
    }
}
