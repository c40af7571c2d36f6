//! Validation of a job against a registry, reporting every problem at once.
//!
//! It stands outside `job` because it needs the registry (every name a job uses must be
//! registered, every plugin's params must pass the plugin's check), and the registry's plugin
//! contexts need the job's types: kept here, the job model stays plain data below both.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use crate::job::{
    AggregationDef, ErrorsTarget, FlowTo, Job, JobScheduler, Problem, TaskKind, TaskScheduler,
    TriggerDef, TriggerOn, ValidationError, WindowDef, WindowKind,
};
use crate::plugin::PluginKind;
use crate::registry::Registry;

impl Job {
    /// Checks the job against `registry` for `sardonyx run` (one process); every problem is
    /// reported, not only the first.
    pub fn validate(&self, registry: &Registry) -> Result<(), ValidationError> {
        self.validate_where(registry, false)
    }

    /// Checks the job against `registry` for a cluster of peer processes (`sardonyx submit`):
    /// as [`Job::validate`], but `max_peers` is accepted (processes that join add slots up to
    /// it).
    pub fn validate_for_cluster(&self, registry: &Registry) -> Result<(), ValidationError> {
        self.validate_where(registry, true)
    }

    fn validate_where(&self, registry: &Registry, cluster: bool) -> Result<(), ValidationError> {
        let mut v = Validator {
            job: self,
            registry,
            cluster,
            problems: Vec::new(),
        };
        v.catalog();
        v.workflow();
        v.windows();
        v.triggers();
        v.flow_conditions();
        v.lifecycles();
        v.errors();
        v.key_groups();
        v.scheduling();
        if v.problems.is_empty() {
            Ok(())
        } else {
            Err(ValidationError {
                problems: v.problems,
            })
        }
    }
}

struct Validator<'a> {
    job: &'a Job,
    registry: &'a Registry,
    /// The job is for a cluster of peer processes (`max_peers` acts there).
    cluster: bool,
    problems: Vec<Problem>,
}

/// The most extents one segment may fall into (DESIGN §10): a sliding window puts each segment
/// into ⌈range / slide⌉ extents, so a 1-day window sliding by 1 ms would update 86.4 million
/// states per segment.
pub const MAX_EXTENTS_PER_SEGMENT: i64 = 10_000;

/// The most extents one segment of a sliding window falls into: ⌈range / slide⌉ (DESIGN §4:
/// the ids ⌊(v−m)/s⌋ to ⌊(v−m+r)/s⌋ − 1), `None` unless both are positive.
fn extents_per_segment(range: i64, slide: i64) -> Option<i64> {
    (range > 0 && slide > 0).then(|| range / slide + i64::from(range % slide != 0))
}

fn task_loc(name: &str) -> String {
    format!("task \"{name}\"")
}

fn window_loc(id: &str) -> String {
    format!("window \"{id}\"")
}

fn trigger_loc(t: &TriggerDef) -> String {
    format!("trigger \"{}\" of window \"{}\"", t.id, t.window)
}

impl<'a> Validator<'a> {
    fn problem(&mut self, location: String, field: Option<&str>, message: impl Into<String>) {
        self.problems.push(Problem::new(location, field, message));
    }

    fn task_names(&self) -> BTreeSet<&'a str> {
        self.job.catalog.iter().map(|t| t.name.as_str()).collect()
    }

    fn catalog(&mut self) {
        let mut seen = HashSet::new();
        for t in &self.job.catalog {
            let loc = task_loc(&t.name);
            if !seen.insert(t.name.as_str()) {
                self.problem(loc.clone(), Some("name"), "duplicate task name");
            }
            match t.kind {
                TaskKind::Function => {
                    match &t.function {
                        None => self.problem(
                            loc.clone(),
                            Some("fn"),
                            "a function task needs a registered function name",
                        ),
                        Some(f) if !self.registry.has_function(f) => self.problem(
                            loc.clone(),
                            Some("fn"),
                            format!("function \"{f}\" is not registered"),
                        ),
                        Some(_) => {}
                    }
                    if let Some(p) = &t.plugin {
                        self.problem(
                            loc.clone(),
                            Some("plugin"),
                            format!("a function task takes no plugin (found \"{p}\")"),
                        );
                    }
                }
                TaskKind::Input | TaskKind::Output => {
                    let kind = if t.kind == TaskKind::Input {
                        PluginKind::Input
                    } else {
                        PluginKind::Output
                    };
                    match &t.plugin {
                        None => self.problem(
                            loc.clone(),
                            Some("plugin"),
                            format!("an {} task needs a plugin", t.kind.name()),
                        ),
                        Some(p) => match self.registry.plugin_params_problems(p, kind, &t.params) {
                            None => self.problem(
                                loc.clone(),
                                Some("plugin"),
                                format!("{} plugin \"{p}\" is not registered", t.kind.name()),
                            ),
                            Some(problems) => {
                                for (field, msg) in problems {
                                    self.problem(
                                        loc.clone(),
                                        Some(&format!("params.{field}")),
                                        msg,
                                    );
                                }
                            }
                        },
                    }
                    if let Some(f) = &t.function {
                        self.problem(
                            loc.clone(),
                            Some("fn"),
                            format!(
                                "an {} task takes no function (found \"{f}\")",
                                t.kind.name()
                            ),
                        );
                    }
                }
            }
            if t.batch_size == Some(0) {
                self.problem(loc.clone(), Some("batch_size"), "must be at least 1");
            }
            if let Some(span) = t.batch_timeout {
                if !span.is_time() {
                    self.problem(
                        loc.clone(),
                        Some("batch_timeout"),
                        format!("{span} is not a time (use milliseconds … days)"),
                    );
                }
            }
            if t.n_peers.is_some() && (t.min_peers.is_some() || t.max_peers.is_some()) {
                self.problem(
                    loc.clone(),
                    Some("n_peers"),
                    "give either n_peers or min_peers/max_peers, not both",
                );
            }
            if t.n_peers == Some(0) || t.min_peers == Some(0) {
                self.problem(
                    loc.clone(),
                    Some(if t.n_peers == Some(0) {
                        "n_peers"
                    } else {
                        "min_peers"
                    }),
                    "must be at least 1",
                );
            }
            if let (Some(min), Some(max)) = (t.min_peers, t.max_peers) {
                if min > max {
                    self.problem(
                        loc.clone(),
                        Some("max_peers"),
                        format!("max_peers {max} is below min_peers {min}"),
                    );
                }
            }
            // `max_peers` lets joining processes add slots (DESIGN §6), and `continue` lets
            // the peers left take over a lost peer's keys: both need the cluster runtime, and
            // a key that is accepted must act.
            if let Some(max) = t.max_peers.filter(|_| !self.cluster) {
                self.problem(
                    loc.clone(),
                    Some("max_peers"),
                    format!(
                        "max_peers ({max}) acts only in a cluster: peers are added up to it by \
                         processes joining one (`sardonyx submit`), which `sardonyx run` does \
                         not do; give n_peers or min_peers"
                    ),
                );
            }
            if t.flux_policy == Some(crate::job::FluxPolicy::Continue) {
                self.problem(
                    loc.clone(),
                    Some("flux_policy"),
                    "\"continue\" is not supported yet: it needs other processes to take over \
                     a lost peer's keys (the cluster runtime); in one process use \"recover\" \
                     (restart the job's peers from the state log) or \"kill\"",
                );
            }
            if t.group_by_key.is_some() && t.group_by_fn.is_some() {
                self.problem(
                    loc.clone(),
                    Some("group_by_key"),
                    "give either group_by_key or group_by_fn, not both",
                );
            }
            if let Some(f) = &t.group_by_fn {
                if !self.registry.has_group_fn(f) {
                    self.problem(
                        loc.clone(),
                        Some("group_by_fn"),
                        format!("group function \"{f}\" is not registered"),
                    );
                }
            }
            if let Some(crate::job::GroupKey::Many(fields)) = &t.group_by_key {
                if fields.is_empty() {
                    self.problem(loc.clone(), Some("group_by_key"), "an empty list of fields");
                }
            }
            if (t.group_by_key.is_some() || t.group_by_fn.is_some()) && t.kind == TaskKind::Input {
                self.problem(
                    loc.clone(),
                    Some("group_by_key"),
                    "an input task cannot be grouped (group its downstream task)",
                );
            }
            if let Some(w) = &t.watermark {
                if t.kind != TaskKind::Input {
                    self.problem(
                        loc.clone(),
                        Some("watermark"),
                        "only input tasks derive watermarks",
                    );
                }
                for (field, span) in [
                    ("watermark.max_out_of_order", w.max_out_of_order),
                    ("watermark.idle_timeout", w.idle_timeout),
                ] {
                    if let Some(span) = span {
                        if !span.is_time() {
                            self.problem(
                                loc.clone(),
                                Some(field),
                                format!("{span} is not a time (use milliseconds … days)"),
                            );
                        }
                    }
                }
            }
        }
    }

    fn workflow(&mut self) {
        let names = self.task_names();
        let mut used = BTreeSet::new();
        for (from, to) in &self.job.workflow {
            let loc = format!("workflow edge [\"{from}\", \"{to}\"]");
            for end in [from, to] {
                if !names.contains(end.as_str()) {
                    self.problem(loc.clone(), None, format!("unknown task \"{end}\""));
                }
                used.insert(end.as_str());
            }
            if from == to {
                self.problem(loc.clone(), None, "a task cannot feed itself");
            }
        }
        // The error task and late tasks may be fed only by those routes.
        let side_fed: BTreeSet<&str> = self
            .job
            .windows
            .iter()
            .filter_map(|w| w.late.as_deref())
            .chain(match &self.job.errors {
                Some(ErrorsTarget::Task(t)) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        for t in &self.job.catalog {
            let loc = task_loc(&t.name);
            if !used.contains(t.name.as_str()) {
                if !side_fed.contains(t.name.as_str()) {
                    self.problem(loc.clone(), None, "not in the workflow");
                }
                continue;
            }
            let ups = self.job.upstream(&t.name);
            let downs = self.job.downstream(&t.name);
            match t.kind {
                TaskKind::Input if !ups.is_empty() => self.problem(
                    loc,
                    None,
                    format!("an input task has an incoming edge (from \"{}\")", ups[0]),
                ),
                TaskKind::Output if !downs.is_empty() => self.problem(
                    loc,
                    None,
                    format!("an output task has an outgoing edge (to \"{}\")", downs[0]),
                ),
                TaskKind::Function if ups.is_empty() => {
                    self.problem(loc, None, "a function task has no incoming edge")
                }
                TaskKind::Function if downs.is_empty() => self.problem(
                    loc,
                    None,
                    "a function task has no outgoing edge (end the flow in an output task)",
                ),
                _ => {}
            }
        }
        if let Some(cycle) = find_cycle(&self.job.workflow) {
            self.problem(
                "workflow".into(),
                None,
                format!("cycle {}", cycle.join(" → ")),
            );
        }
    }

    fn windows(&mut self) {
        let names = self.task_names();
        let mut seen = HashSet::new();
        for w in &self.job.windows {
            let loc = window_loc(&w.id);
            if !seen.insert(w.id.as_str()) {
                self.problem(loc.clone(), Some("id"), "duplicate window id");
            }
            match self.job.task(&w.task) {
                None => self.problem(
                    loc.clone(),
                    Some("task"),
                    format!("unknown task \"{}\"", w.task),
                ),
                Some(t) => {
                    if t.kind == TaskKind::Input {
                        self.problem(
                            loc.clone(),
                            Some("task"),
                            format!(
                                "task \"{}\" is an input; windows go on function or output tasks",
                                t.name
                            ),
                        );
                    }
                    if t.deduplicates() && t.uniqueness_key.is_none() {
                        // Reported once per task, at its first window.
                        if self
                            .job
                            .windows_of(&t.name)
                            .next()
                            .is_some_and(|first| first.id == w.id)
                        {
                            self.problem(task_loc(&t.name), Some("uniqueness_key"), "a task with windows needs a uniqueness_key (or \"deduplicate\": false)");
                        }
                    }
                }
            }
            self.aggregation(&loc, w);
            self.extent_fields(&loc, w);
            if let Some(late) = &w.late {
                if !names.contains(late.as_str()) {
                    self.problem(
                        loc.clone(),
                        Some("late"),
                        format!("unknown task \"{late}\""),
                    );
                }
            }
            if let Some(span) = w.allowed_lateness {
                if w.range.is_some_and(|r| r.is_time() != span.is_time()) {
                    self.problem(
                        loc.clone(),
                        Some("allowed_lateness"),
                        format!("{span} is not in the same units as range"),
                    );
                }
            }
        }
    }

    fn aggregation(&mut self, loc: &str, w: &WindowDef) {
        let name = w.aggregation.name();
        let needs_field = matches!(name, "sum" | "min" | "max" | "average" | "collect_by_key");
        let builtin = needs_field || matches!(name, "count" | "collect");
        if !builtin && !self.registry.has_aggregation(name) {
            self.problem(
                loc.to_owned(),
                Some("aggregation"),
                format!("aggregation \"{name}\" is not registered"),
            );
            return;
        }
        match (&w.aggregation, needs_field) {
            (AggregationDef::Name(_), true) => self.problem(
                loc.to_owned(),
                Some("aggregation"),
                format!("\"{name}\" needs a field: [\"{name}\", \"field\"]"),
            ),
            (AggregationDef::WithField(_, f), false) if builtin => self.problem(
                loc.to_owned(),
                Some("aggregation"),
                format!("\"{name}\" takes no field (found \"{f}\")"),
            ),
            _ => {}
        }
    }

    fn extent_fields(&mut self, loc: &str, w: &WindowDef) {
        let loc = loc.to_owned();
        if w.kind != WindowKind::Global && w.window_key.is_none() {
            self.problem(
                loc.clone(),
                Some("window_key"),
                format!("a {} window needs a window_key", w.kind.name()),
            );
        }
        match w.kind {
            WindowKind::Fixed | WindowKind::Sliding => match w.range {
                None => self.problem(
                    loc.clone(),
                    Some("range"),
                    format!("a {} window needs a range", w.kind.name()),
                ),
                Some(r) if r.n == 0 => {
                    self.problem(loc.clone(), Some("range"), "must be greater than 0")
                }
                Some(_) => {}
            },
            _ => {
                if let Some(r) = w.range {
                    self.problem(
                        loc.clone(),
                        Some("range"),
                        format!("a {} window takes no range (found {r})", w.kind.name()),
                    );
                }
            }
        }
        match (w.kind, w.slide) {
            (WindowKind::Sliding, None) => {
                self.problem(loc.clone(), Some("slide"), "a sliding window needs a slide")
            }
            (WindowKind::Sliding, Some(s)) => {
                if s.n == 0 {
                    self.problem(loc.clone(), Some("slide"), "must be greater than 0");
                }
                if let Some(r) = w.range {
                    if r.is_time() != s.is_time() {
                        self.problem(
                            loc.clone(),
                            Some("slide"),
                            format!("{s} is not in the same units as range {r}"),
                        );
                    } else if s.base_amount() > r.base_amount() {
                        self.problem(
                            loc.clone(),
                            Some("slide"),
                            format!("{s} is longer than range {r}"),
                        );
                    } else if let Some(n) = extents_per_segment(r.base_amount(), s.base_amount())
                        .filter(|&n| n > MAX_EXTENTS_PER_SEGMENT)
                    {
                        self.problem(
                            loc.clone(),
                            Some("range/slide"),
                            format!(
                                "range {r} / slide {s} puts up to {n} extents on each segment, \
                                 more than the limit of {MAX_EXTENTS_PER_SEGMENT}: use a longer \
                                 slide or a shorter range"
                            ),
                        );
                    }
                }
            }
            (_, Some(s)) => self.problem(
                loc.clone(),
                Some("slide"),
                format!("a {} window takes no slide (found {s})", w.kind.name()),
            ),
            _ => {}
        }
        match (w.kind, w.timeout_gap) {
            (WindowKind::Session, None) => self.problem(
                loc.clone(),
                Some("timeout_gap"),
                "a session window needs a timeout_gap",
            ),
            (WindowKind::Session, Some(_)) | (_, None) => {}
            (_, Some(g)) => self.problem(
                loc.clone(),
                Some("timeout_gap"),
                format!(
                    "a {} window takes no timeout_gap (found {g})",
                    w.kind.name()
                ),
            ),
        }
    }

    fn triggers(&mut self) {
        let mut seen = HashSet::new();
        let window_ids: BTreeSet<&str> = self.job.windows.iter().map(|w| w.id.as_str()).collect();
        for t in &self.job.triggers {
            let loc = trigger_loc(t);
            if !window_ids.contains(t.window.as_str()) {
                self.problem(
                    loc.clone(),
                    Some("window"),
                    format!("unknown window \"{}\"", t.window),
                );
            }
            if !seen.insert((t.window.as_str(), t.id.as_str())) {
                self.problem(
                    loc.clone(),
                    Some("id"),
                    "duplicate trigger id in this window",
                );
            }
            let unexpected = |field: &str, present: bool| present.then(|| field.to_owned());
            let mut stray = Vec::new();
            match t.on {
                TriggerOn::Segment => match t.threshold {
                    None => self.problem(loc.clone(), Some("threshold"), "a segment trigger needs a threshold such as [10, \"elements\"]"),
                    Some(s) if s.is_time() => self.problem(loc.clone(), Some("threshold"), format!("{s} is a time; a segment trigger counts [n, \"elements\"]")),
                    Some(s) if s.n == 0 => self.problem(loc.clone(), Some("threshold"), "must be at least 1"),
                    Some(_) => {}
                },
                TriggerOn::Timer => match t.period {
                    None => self.problem(loc.clone(), Some("period"), "a timer trigger needs a period such as [5, \"seconds\"]"),
                    Some(s) if !s.is_time() => self.problem(loc.clone(), Some("period"), format!("{s} is not a time; a timer needs milliseconds … days")),
                    Some(s) if s.n == 0 => self.problem(loc.clone(), Some("period"), "must be greater than 0"),
                    Some(_) => {}
                },
                TriggerOn::Punctuation => match &t.pred {
                    None => self.problem(loc.clone(), Some("pred"), "a punctuation trigger needs a registered predicate"),
                    Some(p) if !self.registry.has_predicate(p) => self.problem(loc.clone(), Some("pred"), format!("predicate \"{p}\" is not registered")),
                    Some(_) => {}
                },
                TriggerOn::Watermark => {
                    if let Some(d) = t.delay {
                        if !d.is_time() && self.window_is_time(&t.window) {
                            self.problem(loc.clone(), Some("delay"), format!("{d} is not a time"));
                        }
                    }
                }
                TriggerOn::PercentileWatermark => match t.watermark_percentage {
                    None => self.problem(loc.clone(), Some("watermark_percentage"), "a percentile_watermark trigger needs a watermark_percentage between 0 and 1"),
                    Some(p) if !(0.0..=1.0).contains(&p) => self.problem(loc.clone(), Some("watermark_percentage"), format!("{p} is not between 0 and 1")),
                    Some(_) => {}
                },
            }
            stray.extend(unexpected(
                "threshold",
                t.threshold.is_some() && t.on != TriggerOn::Segment,
            ));
            stray.extend(unexpected(
                "period",
                t.period.is_some() && t.on != TriggerOn::Timer,
            ));
            stray.extend(unexpected(
                "pred",
                t.pred.is_some() && t.on != TriggerOn::Punctuation,
            ));
            stray.extend(unexpected(
                "delay",
                t.delay.is_some() && t.on != TriggerOn::Watermark,
            ));
            stray.extend(unexpected(
                "watermark_percentage",
                t.watermark_percentage.is_some() && t.on != TriggerOn::PercentileWatermark,
            ));
            for field in stray {
                self.problem(
                    loc.clone(),
                    Some(&field),
                    format!("not used by a {} trigger", t.on.name()),
                );
            }
            match &t.sync {
                None if t.emit != Some(true) => self.problem(
                    loc.clone(),
                    Some("sync"),
                    "a trigger needs a sync function or \"emit\": true",
                ),
                None => {}
                Some(s) => match self.registry.sync_params_problems(s, &t.params) {
                    None => self.problem(
                        loc.clone(),
                        Some("sync"),
                        format!("sync function \"{s}\" is not registered"),
                    ),
                    Some(problems) => {
                        for (field, msg) in problems {
                            self.problem(loc.clone(), Some(&format!("params.{field}")), msg);
                        }
                    }
                },
            }
        }
    }

    fn window_is_time(&self, id: &str) -> bool {
        self.job
            .windows
            .iter()
            .find(|w| w.id == id)
            .and_then(|w| w.range.or(w.timeout_gap))
            .is_none_or(|s| s.is_time())
    }

    fn flow_conditions(&mut self) {
        let names = self.task_names();
        let mut after_plain: BTreeMap<&str, bool> = BTreeMap::new();
        for (i, fc) in self.job.flow_conditions.iter().enumerate() {
            let loc = format!("flow_conditions[{i}] (from \"{}\")", fc.from);
            if fc.from != "all" && !names.contains(fc.from.as_str()) {
                self.problem(
                    loc.clone(),
                    Some("from"),
                    format!("unknown task \"{}\"", fc.from),
                );
            }
            if let FlowTo::Tasks(tasks) = &fc.to {
                for to in tasks {
                    if !names.contains(to.as_str()) {
                        self.problem(loc.clone(), Some("to"), format!("unknown task \"{to}\""));
                    } else if fc.from != "all"
                        && names.contains(fc.from.as_str())
                        && !self.job.downstream(&fc.from).contains(&to.as_str())
                    {
                        self.problem(
                            loc.clone(),
                            Some("to"),
                            format!("\"{to}\" is not downstream of \"{}\"", fc.from),
                        );
                    }
                }
            }
            for name in fc.predicate.names() {
                if !self.registry.has_predicate(name) {
                    self.problem(
                        loc.clone(),
                        Some("predicate"),
                        format!("predicate \"{name}\" is not registered"),
                    );
                }
            }
            let short = fc.short_circuit == Some(true);
            if fc.thrown_exception == Some(true) && !short {
                self.problem(
                    loc.clone(),
                    Some("thrown_exception"),
                    "a thrown_exception condition must also be short_circuit",
                );
            }
            let seen_plain = after_plain.entry(fc.from.as_str()).or_insert(false);
            if short && *seen_plain {
                self.problem(loc.clone(), Some("short_circuit"), "short_circuit conditions must come before the other conditions of the same task");
            }
            if !short {
                *seen_plain = true;
            }
        }
    }

    fn lifecycles(&mut self) {
        let names = self.task_names();
        for (i, l) in self.job.lifecycles.iter().enumerate() {
            let loc = format!("lifecycles[{i}]");
            if l.task != "all" && !names.contains(l.task.as_str()) {
                self.problem(
                    loc.clone(),
                    Some("task"),
                    format!("unknown task \"{}\"", l.task),
                );
            }
            if !self.registry.has_lifecycle(&l.calls) {
                self.problem(
                    loc,
                    Some("calls"),
                    format!("lifecycle \"{}\" is not registered", l.calls),
                );
            }
        }
    }

    fn errors(&mut self) {
        if let Some(ErrorsTarget::Task(t)) = &self.job.errors {
            match self.job.task(t) {
                None => self.problem(
                    "job".into(),
                    Some("errors"),
                    format!("unknown task \"{t}\""),
                ),
                Some(spec) if spec.kind == TaskKind::Input => self.problem(
                    "job".into(),
                    Some("errors"),
                    format!("\"{t}\" is an input task"),
                ),
                Some(_) => {}
            }
        }
    }
}

impl Validator<'_> {
    /// `key_groups`: between 1 and [`MAX_KEY_GROUPS`](crate::key_groups::MAX_KEY_GROUPS), and
    /// at least the most peers (`n_peers`, `min_peers` or `max_peers`) of a task whose segments
    /// are placed by key (grouped, or windowed: an ungrouped windowed task is placed by its
    /// uniqueness id), so that each of its peers owns at least one key group.
    fn key_groups(&mut self) {
        use crate::key_groups::MAX_KEY_GROUPS;
        let Some(n) = self.job.key_groups else {
            return;
        };
        if n == 0 || n > MAX_KEY_GROUPS {
            let message = format!("must be between 1 and {MAX_KEY_GROUPS} (found {n})");
            self.problem("job".into(), Some("key_groups"), message);
            return;
        }
        let placed_by_key = |t: &&crate::job::TaskSpec| {
            t.group_by_key.is_some()
                || t.group_by_fn.is_some()
                || self.job.windows_of(&t.name).next().is_some()
        };
        let most = self
            .job
            .catalog
            .iter()
            .filter(placed_by_key)
            .filter_map(|t| {
                let peers = [t.n_peers, t.min_peers, t.max_peers].into_iter().flatten();
                peers.max().map(|p| (p, &t.name))
            })
            .rev() // the first of the tasks with the most peers
            .max_by_key(|(p, _)| *p);
        if let Some((peers, task)) = most.filter(|(p, _)| *p > n) {
            let message = format!(
                "{n} key groups cannot be divided among the {peers} peers of task \"{task}\" \
                 (each peer of a grouped or windowed task owns at least one key group): give \
                 key_groups of at least {peers}"
            );
            self.problem("job".into(), Some("key_groups"), message);
        }
    }
}

impl Validator<'_> {
    /// The cluster's scheduling keys (DESIGN §6): percentages between 1 and 100, a percentage
    /// for each percentage scheduler and none where no scheduler reads it, task percentages
    /// that add up to 100, and, for the colocated task scheduler, a peer count every task
    /// accepts. `sardonyx run` ignores the keys, but a job is one file for both.
    fn scheduling(&mut self) {
        let job = self.job;
        let job_scheduler = job.job_scheduler.unwrap_or_default();
        let task_scheduler = job.task_scheduler.unwrap_or_default();
        let out_of_range = |p: u32| !(1..=100).contains(&p);
        match job.percentage {
            Some(p) if out_of_range(p) => self.problem(
                "job".into(),
                Some("percentage"),
                format!("must be between 1 and 100 (found {p})"),
            ),
            Some(_) if job_scheduler != JobScheduler::Percentage => self.problem(
                "job".into(),
                Some("percentage"),
                format!(
                    "not used by the {} job scheduler (set job_scheduler to \"percentage\")",
                    job_scheduler.name()
                ),
            ),
            None if job_scheduler == JobScheduler::Percentage => self.problem(
                "job".into(),
                Some("percentage"),
                "the percentage job scheduler needs the job's percentage of the peers (1 to 100)",
            ),
            _ => {}
        }
        let percentage_tasks = task_scheduler == TaskScheduler::Percentage;
        for t in &job.catalog {
            match t.percentage {
                Some(p) if out_of_range(p) => self.problem(
                    task_loc(&t.name),
                    Some("percentage"),
                    format!("must be between 1 and 100 (found {p})"),
                ),
                Some(_) if !percentage_tasks => self.problem(
                    task_loc(&t.name),
                    Some("percentage"),
                    format!(
                        "not used by the {} task scheduler (set the job's task_scheduler to \
                         \"percentage\")",
                        task_scheduler.name()
                    ),
                ),
                None if percentage_tasks => self.problem(
                    task_loc(&t.name),
                    Some("percentage"),
                    "the percentage task scheduler needs every task's percentage of the job's peers",
                ),
                _ => {}
            }
        }
        if percentage_tasks && job.catalog.iter().all(|t| t.percentage.is_some()) {
            let sum: u64 = job
                .catalog
                .iter()
                .filter_map(|t| t.percentage)
                .map(u64::from)
                .sum();
            if sum != 100 {
                self.problem(
                    "job".into(),
                    Some("task_scheduler"),
                    format!("the tasks' percentages add up to {sum}, not 100"),
                );
            }
        }
        if task_scheduler == TaskScheduler::Colocated && !job.catalog.is_empty() {
            // Each process running the job runs one slot of every task, so every task runs on
            // the same number of peers.
            let bounds = |t: &crate::job::TaskSpec| match (t.n_peers, t.min_peers, t.max_peers) {
                (Some(n), ..) => (n, n),
                (None, None, None) => (1, 1),
                (None, min, max) => (min.unwrap_or(1), max.unwrap_or(usize::MAX)),
            };
            let lo = job.catalog.iter().map(|t| bounds(t).0).max().unwrap_or(1);
            let hi = job.catalog.iter().map(|t| bounds(t).1).min().unwrap_or(1);
            if lo > hi {
                self.problem(
                    "job".into(),
                    Some("task_scheduler"),
                    format!(
                        "the colocated task scheduler runs one slot of every task on each of \
                         the job's processes, but no number of peers suits every task (one \
                         needs at least {lo}, one takes at most {hi})"
                    ),
                );
            }
        }
    }
}

/// A cycle in the workflow, as the task names along it (first repeated at the end).
fn find_cycle(edges: &[(String, String)]) -> Option<Vec<String>> {
    let mut adj: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (a, b) in edges {
        adj.entry(a).or_default().push(b);
    }
    // 0 = unseen, 1 = on the stack, 2 = done.
    let mut state: BTreeMap<&str, u8> = BTreeMap::new();
    let mut stack: Vec<&str> = Vec::new();
    fn visit<'a>(
        n: &'a str,
        adj: &BTreeMap<&'a str, Vec<&'a str>>,
        state: &mut BTreeMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        state.insert(n, 1);
        stack.push(n);
        for &m in adj.get(n).map(Vec::as_slice).unwrap_or(&[]) {
            match state.get(m).copied().unwrap_or(0) {
                1 => {
                    let start = stack.iter().position(|&x| x == m).expect("on stack");
                    let mut c: Vec<String> =
                        stack[start..].iter().map(|s| (*s).to_owned()).collect();
                    c.push(m.to_owned());
                    return Some(c);
                }
                0 => {
                    if let Some(c) = visit(m, adj, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n, 2);
        None
    }
    let nodes: Vec<&str> = adj.keys().copied().collect();
    for n in nodes {
        if state.get(n).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(n, &adj, &mut state, &mut stack) {
                return Some(c);
            }
        }
    }
    None
}
