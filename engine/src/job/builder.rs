//! Typed builders: jobs written in Rust, equal to the same job read from a file.
//!
//! ```
//! use sardonyx::job::builder::JobBuilder;
//! use sardonyx::job::{AggregationDef, Span, TaskSpec, TriggerDef, WindowDef};
//!
//! let job = JobBuilder::new()
//!     .edge("read", "count")
//!     .edge("count", "done")
//!     .task(TaskSpec::input("read", "sardonyx/jsonl").param("path", "votes.jsonl"))
//!     .task(TaskSpec::function("count", "sardonyx/identity").group_by_key("candidate").uniqueness_key("vote_id"))
//!     .task(TaskSpec::output("done", "sardonyx/null"))
//!     .window(WindowDef::global("totals", "count", AggregationDef::count()))
//!     .trigger(TriggerDef::timer("totals", "every-second", Span::seconds(1)).sync_jsonl("totals.jsonl"))
//!     .build();
//! assert_eq!(job.catalog.len(), 3);
//! ```

use super::{
    AggregationDef, ErrorsTarget, FlowCondition, FlowTo, GroupKey, Job, JobScheduler, LifecycleDef,
    PredicateExpr, Refinement, Span, TaskKind, TaskScheduler, TaskSpec, TriggerDef, TriggerOn,
    Unmatched, WatermarkSpec, WindowDef, WindowKind,
};
use crate::segment::{Map, Value};

/// Builds a [`Job`] step by step.
#[derive(Debug, Clone)]
pub struct JobBuilder {
    job: Job,
}

impl Default for JobBuilder {
    fn default() -> Self {
        JobBuilder::new()
    }
}

impl JobBuilder {
    /// An empty job.
    pub fn new() -> Self {
        JobBuilder {
            job: Job {
                id: None,
                workflow: Vec::new(),
                catalog: Vec::new(),
                windows: Vec::new(),
                triggers: Vec::new(),
                flow_conditions: Vec::new(),
                lifecycles: Vec::new(),
                errors: None,
                unmatched: None,
                key_groups: None,
                job_scheduler: None,
                task_scheduler: None,
                percentage: None,
            },
        }
    }

    /// Sets the job id.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.job.id = Some(id.into());
        self
    }

    /// Adds a workflow edge.
    pub fn edge(mut self, from: impl Into<String>, to: impl Into<String>) -> Self {
        self.job.workflow.push((from.into(), to.into()));
        self
    }

    /// Adds a catalog entry.
    pub fn task(mut self, task: TaskSpec) -> Self {
        self.job.catalog.push(task);
        self
    }

    /// Adds a window.
    pub fn window(mut self, window: WindowDef) -> Self {
        self.job.windows.push(window);
        self
    }

    /// Adds a trigger.
    pub fn trigger(mut self, trigger: TriggerDef) -> Self {
        self.job.triggers.push(trigger);
        self
    }

    /// Adds a flow condition.
    pub fn flow(mut self, condition: FlowCondition) -> Self {
        self.job.flow_conditions.push(condition);
        self
    }

    /// Applies the registered lifecycle `calls` to `task` (or `"all"`).
    pub fn lifecycle(mut self, task: impl Into<String>, calls: impl Into<String>) -> Self {
        self.job.lifecycles.push(LifecycleDef {
            task: task.into(),
            calls: calls.into(),
            doc: None,
        });
        self
    }

    /// Sends rejected segments to a JSON-lines file.
    pub fn errors_to_path(mut self, path: impl Into<String>) -> Self {
        self.job.errors = Some(ErrorsTarget::Path(path.into()));
        self
    }

    /// Sends rejected segments to a task of the job.
    pub fn errors_to_task(mut self, task: impl Into<String>) -> Self {
        self.job.errors = Some(ErrorsTarget::Task(task.into()));
        self
    }

    /// Says what happens to segments that match none of their task's flow conditions.
    pub fn unmatched(mut self, unmatched: Unmatched) -> Self {
        self.job.unmatched = Some(unmatched);
        self
    }

    /// Sets the number of key groups grouped keys hash into (default 256; DESIGN §4).
    pub fn key_groups(mut self, key_groups: usize) -> Self {
        self.job.key_groups = Some(key_groups);
        self
    }

    /// Sets how a cluster divides its peers between this job and the others (DESIGN §6).
    pub fn job_scheduler(mut self, scheduler: JobScheduler) -> Self {
        self.job.job_scheduler = Some(scheduler);
        self
    }

    /// Sets how a cluster divides the job's peers among its tasks.
    pub fn task_scheduler(mut self, scheduler: TaskScheduler) -> Self {
        self.job.task_scheduler = Some(scheduler);
        self
    }

    /// Sets the job's share of the cluster's peers in percent (the `percentage` job scheduler).
    pub fn percentage(mut self, percent: u32) -> Self {
        self.job.percentage = Some(percent);
        self
    }

    /// The finished job.
    pub fn build(self) -> Job {
        self.job
    }
}

impl TaskSpec {
    fn bare(name: impl Into<String>, kind: TaskKind) -> Self {
        TaskSpec {
            name: name.into(),
            kind,
            function: None,
            plugin: None,
            params: Map::new(),
            batch_size: None,
            batch_timeout: None,
            n_peers: None,
            min_peers: None,
            max_peers: None,
            group_by_key: None,
            group_by_fn: None,
            flux_policy: None,
            uniqueness_key: None,
            deduplicate: None,
            watermark: None,
            percentage: None,
            doc: None,
        }
    }

    /// An input task reading from `plugin`.
    pub fn input(name: impl Into<String>, plugin: impl Into<String>) -> Self {
        TaskSpec {
            plugin: Some(plugin.into()),
            ..TaskSpec::bare(name, TaskKind::Input)
        }
    }

    /// A function task running the registered function `function`.
    pub fn function(name: impl Into<String>, function: impl Into<String>) -> Self {
        TaskSpec {
            function: Some(function.into()),
            ..TaskSpec::bare(name, TaskKind::Function)
        }
    }

    /// An output task writing to `plugin`.
    pub fn output(name: impl Into<String>, plugin: impl Into<String>) -> Self {
        TaskSpec {
            plugin: Some(plugin.into()),
            ..TaskSpec::bare(name, TaskKind::Output)
        }
    }

    /// Sets one parameter.
    pub fn param(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.params.insert(key, value);
        self
    }

    /// Sets the batch size.
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = Some(n);
        self
    }

    /// Sets the batch timeout.
    pub fn batch_timeout(mut self, span: Span) -> Self {
        self.batch_timeout = Some(span);
        self
    }

    /// Sets the number of peers.
    pub fn n_peers(mut self, n: usize) -> Self {
        self.n_peers = Some(n);
        self
    }

    /// Groups by one field.
    pub fn group_by_key(mut self, field: impl Into<String>) -> Self {
        self.group_by_key = Some(GroupKey::One(field.into()));
        self
    }

    /// Groups by several fields.
    pub fn group_by_keys<S: Into<String>>(mut self, fields: impl IntoIterator<Item = S>) -> Self {
        self.group_by_key = Some(GroupKey::Many(fields.into_iter().map(Into::into).collect()));
        self
    }

    /// Groups by a registered function.
    pub fn group_by_fn(mut self, name: impl Into<String>) -> Self {
        self.group_by_fn = Some(name.into());
        self
    }

    /// Sets the uniqueness key.
    pub fn uniqueness_key(mut self, field: impl Into<String>) -> Self {
        self.uniqueness_key = Some(field.into());
        self
    }

    /// Turns deduplication on or off.
    pub fn deduplicate(mut self, on: bool) -> Self {
        self.deduplicate = Some(on);
        self
    }

    /// Derives the watermark from `key`, `max_out_of_order` behind the greatest time seen.
    pub fn watermark(mut self, key: impl Into<String>, max_out_of_order: Span) -> Self {
        self.watermark = Some(WatermarkSpec {
            key: key.into(),
            max_out_of_order: Some(max_out_of_order),
            idle_timeout: None,
        });
        self
    }

    /// Sets the least and the greatest number of peers (a cluster adds peers up to `max` to a
    /// grouped windowed task as processes join).
    pub fn peers_between(mut self, min: usize, max: usize) -> Self {
        self.min_peers = Some(min);
        self.max_peers = Some(max);
        self
    }

    /// Sets the task's share of its job's peers in percent (the `percentage` task scheduler).
    pub fn percentage(mut self, percent: u32) -> Self {
        self.percentage = Some(percent);
        self
    }

    /// Sets the doc string.
    pub fn doc(mut self, doc: impl Into<String>) -> Self {
        self.doc = Some(doc.into());
        self
    }
}

impl AggregationDef {
    /// `"count"`.
    pub fn count() -> Self {
        AggregationDef::Name("count".into())
    }
    /// `"collect"`.
    pub fn collect() -> Self {
        AggregationDef::Name("collect".into())
    }
    /// `["sum", field]`.
    pub fn sum(field: impl Into<String>) -> Self {
        AggregationDef::WithField("sum".into(), field.into())
    }
    /// `["min", field]`.
    pub fn min(field: impl Into<String>) -> Self {
        AggregationDef::WithField("min".into(), field.into())
    }
    /// `["max", field]`.
    pub fn max(field: impl Into<String>) -> Self {
        AggregationDef::WithField("max".into(), field.into())
    }
    /// `["average", field]`.
    pub fn average(field: impl Into<String>) -> Self {
        AggregationDef::WithField("average".into(), field.into())
    }
    /// `["collect_by_key", field]`.
    pub fn collect_by_key(field: impl Into<String>) -> Self {
        AggregationDef::WithField("collect_by_key".into(), field.into())
    }
    /// A registered user aggregation.
    pub fn named(name: impl Into<String>) -> Self {
        AggregationDef::Name(name.into())
    }
}

impl WindowDef {
    fn bare(
        id: impl Into<String>,
        task: impl Into<String>,
        kind: WindowKind,
        aggregation: AggregationDef,
    ) -> Self {
        WindowDef {
            id: id.into(),
            task: task.into(),
            kind,
            aggregation,
            window_key: None,
            range: None,
            slide: None,
            timeout_gap: None,
            min_value: None,
            init: None,
            allowed_lateness: None,
            late: None,
            doc: None,
        }
    }

    /// A fixed window of `range` over event time in `window_key`.
    pub fn fixed(
        id: impl Into<String>,
        task: impl Into<String>,
        window_key: impl Into<String>,
        range: Span,
        aggregation: AggregationDef,
    ) -> Self {
        WindowDef {
            window_key: Some(window_key.into()),
            range: Some(range),
            ..WindowDef::bare(id, task, WindowKind::Fixed, aggregation)
        }
    }

    /// A sliding window of `range` starting every `slide`.
    pub fn sliding(
        id: impl Into<String>,
        task: impl Into<String>,
        window_key: impl Into<String>,
        range: Span,
        slide: Span,
        aggregation: AggregationDef,
    ) -> Self {
        WindowDef {
            window_key: Some(window_key.into()),
            range: Some(range),
            slide: Some(slide),
            ..WindowDef::bare(id, task, WindowKind::Sliding, aggregation)
        }
    }

    /// A global window.
    pub fn global(
        id: impl Into<String>,
        task: impl Into<String>,
        aggregation: AggregationDef,
    ) -> Self {
        WindowDef::bare(id, task, WindowKind::Global, aggregation)
    }

    /// Session windows closed by `timeout_gap` of inactivity.
    pub fn session(
        id: impl Into<String>,
        task: impl Into<String>,
        window_key: impl Into<String>,
        timeout_gap: Span,
        aggregation: AggregationDef,
    ) -> Self {
        WindowDef {
            window_key: Some(window_key.into()),
            timeout_gap: Some(timeout_gap),
            ..WindowDef::bare(id, task, WindowKind::Session, aggregation)
        }
    }

    /// Sets `min_value`.
    pub fn min_value(mut self, v: i64) -> Self {
        self.min_value = Some(v);
        self
    }

    /// Sets the initial value of min/max.
    pub fn init(mut self, v: impl Into<Value>) -> Self {
        self.init = Some(v.into());
        self
    }

    /// Sets `allowed_lateness`.
    pub fn allowed_lateness(mut self, span: Span) -> Self {
        self.allowed_lateness = Some(span);
        self
    }

    /// Sends late segments to `task`.
    pub fn late(mut self, task: impl Into<String>) -> Self {
        self.late = Some(task.into());
        self
    }
}

impl TriggerDef {
    fn bare(window: impl Into<String>, id: impl Into<String>, on: TriggerOn) -> Self {
        TriggerDef {
            window: window.into(),
            id: id.into(),
            on,
            threshold: None,
            period: None,
            pred: None,
            watermark_percentage: None,
            delay: None,
            refinement: None,
            fire_all_extents: None,
            sync: None,
            emit: None,
            params: Map::new(),
            doc: None,
        }
    }

    /// Fires every `n` segments.
    pub fn segment(window: impl Into<String>, id: impl Into<String>, n: i64) -> Self {
        TriggerDef {
            threshold: Some(Span::elements(n)),
            ..TriggerDef::bare(window, id, TriggerOn::Segment)
        }
    }

    /// Fires every `period` of processing time.
    pub fn timer(window: impl Into<String>, id: impl Into<String>, period: Span) -> Self {
        TriggerDef {
            period: Some(period),
            ..TriggerDef::bare(window, id, TriggerOn::Timer)
        }
    }

    /// Fires when the registered predicate `pred` holds.
    pub fn punctuation(
        window: impl Into<String>,
        id: impl Into<String>,
        pred: impl Into<String>,
    ) -> Self {
        TriggerDef {
            pred: Some(pred.into()),
            ..TriggerDef::bare(window, id, TriggerOn::Punctuation)
        }
    }

    /// Fires an extent when the watermark passes its upper bound.
    pub fn watermark(window: impl Into<String>, id: impl Into<String>) -> Self {
        TriggerDef::bare(window, id, TriggerOn::Watermark)
    }

    /// Fires when the watermark reaches `percentage` (0..1) of an extent.
    pub fn percentile_watermark(
        window: impl Into<String>,
        id: impl Into<String>,
        percentage: f64,
    ) -> Self {
        TriggerDef {
            watermark_percentage: Some(percentage),
            ..TriggerDef::bare(window, id, TriggerOn::PercentileWatermark)
        }
    }

    /// Waits `delay` past the upper bound (watermark triggers).
    pub fn delay(mut self, delay: Span) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Resets the state after each firing.
    pub fn discarding(mut self) -> Self {
        self.refinement = Some(Refinement::Discarding);
        self
    }

    /// Keeps the state after each firing (the default).
    pub fn accumulating(mut self) -> Self {
        self.refinement = Some(Refinement::Accumulating);
        self
    }

    /// Fires every extent, not only the new segment's.
    pub fn fire_all_extents(mut self) -> Self {
        self.fire_all_extents = Some(true);
        self
    }

    /// Hands firings to the registered sync function `name`.
    pub fn sync(mut self, name: impl Into<String>) -> Self {
        self.sync = Some(name.into());
        self
    }

    /// Writes firings to a JSON-lines file with the built-in `sardonyx/jsonl` sync.
    pub fn sync_jsonl(mut self, path: impl Into<String>) -> Self {
        self.sync = Some("sardonyx/jsonl".into());
        self.params.insert("path", path.into());
        self
    }

    /// Also sends each firing downstream as a segment.
    pub fn emit(mut self) -> Self {
        self.emit = Some(true);
        self
    }

    /// Sets one parameter.
    pub fn param(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.params.insert(key, value);
        self
    }
}

impl FlowCondition {
    /// Routes segments from `from` to `to` when `predicate` holds.
    pub fn new(from: impl Into<String>, to: FlowTo, predicate: PredicateExpr) -> Self {
        FlowCondition {
            from: from.into(),
            to,
            predicate,
            short_circuit: None,
            exclude_keys: Vec::new(),
            thrown_exception: None,
            doc: None,
        }
    }

    /// Stops evaluating later conditions when this one matches.
    pub fn short_circuit(mut self) -> Self {
        self.short_circuit = Some(true);
        self
    }

    /// Removes these fields before sending.
    pub fn exclude_keys<S: Into<String>>(mut self, keys: impl IntoIterator<Item = S>) -> Self {
        self.exclude_keys = keys.into_iter().map(Into::into).collect();
        self
    }

    /// Routes failed segments (implies short-circuit).
    pub fn thrown_exception(mut self) -> Self {
        self.thrown_exception = Some(true);
        self.short_circuit = Some(true);
        self
    }
}

impl FlowTo {
    /// A list of task names.
    pub fn tasks<S: Into<String>>(names: impl IntoIterator<Item = S>) -> Self {
        FlowTo::Tasks(names.into_iter().map(Into::into).collect())
    }
}
