//! Windowed tasks: the job's windows and triggers turned into a [`WindowOperator`] per peer, and
//! the delivery of what it decides (syncs, emitted firings, late segments).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use sardonyx_windowing::aggregation::{self, Aggregation};
use sardonyx_windowing::operator::{Step, WindowOperator};
use sardonyx_windowing::trigger::{
    Refinement as OpRefinement, TriggerOn as OpTriggerOn, TriggerSpec,
};
use sardonyx_windowing::window::{Units, WindowSpec};

use crate::job::{Job, Refinement, TaskSpec, TriggerDef, TriggerOn, WindowDef, WindowKind};
use crate::plugin::{SyncContext, SyncSink};
use crate::registry::Registry;
use crate::segment::{Segment, Value};

/// A sync sink shared by every peer of a task (one per trigger and job).
pub(crate) type SharedSync = Arc<Mutex<Box<dyn SyncSink>>>;

/// The sync sinks of a job, by (window id, trigger id).
pub(crate) type Syncs = BTreeMap<(String, String), SharedSync>;

/// Opens one sync sink per trigger that names one (`resuming`: the job resumes earlier state,
/// so syncs append to what earlier runs wrote).
pub(crate) fn open_syncs(
    job: &Job,
    registry: &Registry,
    resuming: bool,
) -> Result<Syncs, (String, String)> {
    let mut syncs = Syncs::new();
    for t in &job.triggers {
        if let Some(name) = &t.sync {
            let plugin = registry.sync(name).expect("validated");
            let ctx = SyncContext {
                params: &t.params,
                resuming,
            };
            let sink = (plugin.open)(&ctx).map_err(|e| {
                (
                    format!("trigger \"{}\" of window \"{}\"", t.id, t.window),
                    e,
                )
            })?;
            syncs.insert((t.window.clone(), t.id.clone()), Arc::new(Mutex::new(sink)));
        }
    }
    Ok(syncs)
}

/// The resolved aggregation of a window definition.
pub(crate) fn aggregation_of(w: &WindowDef, registry: &Registry) -> Arc<dyn Aggregation> {
    let name = w.aggregation.name();
    let field = w.aggregation.field();
    match (name, &w.init, field) {
        ("min", Some(init), Some(f)) => aggregation::min_with_init(f, init.clone()),
        ("max", Some(init), Some(f)) => aggregation::max_with_init(f, init.clone()),
        _ => aggregation::builtin(name, field)
            .or_else(|| registry.aggregation(name).cloned())
            .expect("validated"),
    }
}

/// The operator-level spec of a window definition.
pub(crate) fn window_spec(w: &WindowDef, registry: &Registry) -> WindowSpec {
    let agg = aggregation_of(w, registry);
    let key = w.window_key.as_deref().unwrap_or_default();
    let amount = |s: Option<crate::job::Span>| s.map_or(0, |s| s.base_amount());
    let units = match w.range.or(w.timeout_gap) {
        Some(s) if !s.is_time() => Units::Elements,
        _ => Units::Millis,
    };
    let spec = match w.kind {
        WindowKind::Fixed => WindowSpec::fixed(&w.id, key, amount(w.range), agg),
        WindowKind::Sliding => {
            WindowSpec::sliding(&w.id, key, amount(w.range), amount(w.slide), agg)
        }
        WindowKind::Global => WindowSpec::global(&w.id, agg),
        WindowKind::Session => WindowSpec::session(&w.id, key, amount(w.timeout_gap), agg),
    };
    spec.units(units)
        .min_value(w.min_value.unwrap_or(0))
        .allowed_lateness(amount(w.allowed_lateness))
}

/// The operator-level spec of a trigger definition.
pub(crate) fn trigger_spec(t: &TriggerDef, registry: &Registry) -> TriggerSpec {
    let amount = |s: Option<crate::job::Span>| s.map_or(0, |s| s.base_amount());
    let spec = match t.on {
        TriggerOn::Segment => {
            TriggerSpec::segment(&t.window, &t.id, amount(t.threshold).max(1) as u64)
        }
        TriggerOn::Timer => TriggerSpec::timer(&t.window, &t.id, amount(t.period).max(1)),
        TriggerOn::Punctuation => {
            let pred = registry
                .predicate(t.pred.as_deref().unwrap_or_default())
                .expect("validated")
                .clone();
            let params = Value::Map(t.params.clone());
            TriggerSpec::new(
                &t.window,
                &t.id,
                OpTriggerOn::Punctuation(Arc::new(move |_, segment| pred(segment, &params))),
            )
        }
        TriggerOn::Watermark => TriggerSpec::watermark(&t.window, &t.id, amount(t.delay)),
        TriggerOn::PercentileWatermark => TriggerSpec::percentile_watermark(
            &t.window,
            &t.id,
            t.watermark_percentage.unwrap_or(1.0),
        ),
    };
    spec.refinement(match t.refinement.unwrap_or_default() {
        Refinement::Accumulating => OpRefinement::Accumulating,
        Refinement::Discarding => OpRefinement::Discarding,
    })
    .fire_all_extents(t.fire_all_extents.unwrap_or(false))
}

/// Where the decisions of one task peer's windows go (the operator itself is the slot's).
pub(crate) struct WindowStage {
    /// Where each trigger's firings go, one entry per trigger (a few: found by a scan).
    routes: Vec<FiringRoute>,
    /// Per window id, the task late segments go to (if any).
    pub late_tasks: BTreeMap<String, String>,
    /// The shortest timer period, if any trigger is a timer.
    pub timer_period_ms: Option<i64>,
}

/// Where the firings of one trigger go.
struct FiringRoute {
    window: String,
    trigger: String,
    /// The trigger's sync, if it has one.
    sync: Option<SharedSync>,
    /// Whether its firings travel on as segments (`emit: true`).
    emit: bool,
}

/// What a step asks of the peer around it.
#[derive(Default)]
pub(crate) struct Delivery {
    /// Firings to send downstream as segments (`emit: true`).
    pub emitted: Vec<Segment>,
    /// Late segments with their window's late task (or `None`: the error output) and reason.
    pub late: Vec<(Option<String>, Segment, String)>,
}

impl WindowStage {
    /// The stage of `task` and its window operator, or `None` if the task has no windows.
    pub fn new(
        job: &Job,
        task: &TaskSpec,
        registry: &Registry,
        syncs: &Syncs,
    ) -> Result<Option<(Self, WindowOperator)>, String> {
        let defs: Vec<&WindowDef> = job.windows_of(&task.name).collect();
        if defs.is_empty() {
            return Ok(None);
        }
        let windows = defs.iter().map(|w| window_spec(w, registry)).collect();
        let mut triggers = Vec::new();
        let mut routes = Vec::new();
        let mut timer_period_ms: Option<i64> = None;
        for w in &defs {
            for t in job.triggers_of(&w.id) {
                triggers.push(trigger_spec(t, registry));
                let key = (t.window.clone(), t.id.clone());
                let sync = syncs.get(&key).cloned();
                routes.push(FiringRoute {
                    window: key.0,
                    trigger: key.1,
                    sync,
                    emit: t.emit.unwrap_or(false),
                });
                if t.on == TriggerOn::Timer {
                    let p = t.period.map_or(1000, |s| s.base_amount()).max(1);
                    timer_period_ms = Some(timer_period_ms.map_or(p, |q| q.min(p)));
                }
            }
        }
        let operator = WindowOperator::new(windows, triggers).map_err(|e| e.to_string())?;
        let late_tasks = defs
            .iter()
            .filter_map(|w| w.late.clone().map(|l| (w.id.clone(), l)))
            .collect();
        let stage = WindowStage {
            routes,
            late_tasks,
            timer_period_ms,
        };
        Ok(Some((stage, operator)))
    }

    /// Hands a step's firings to their syncs (the state before refinement) and collects what
    /// must travel on: emitted firings and late segments.
    pub fn deliver(&self, step: Step, delivery: &mut Delivery) -> Result<(), String> {
        for f in step.firings {
            let route = self
                .routes
                .iter()
                .find(|r| r.window == f.window && r.trigger == f.trigger);
            let map = f.into_sync_map();
            if let Some((r, sync)) = route.and_then(|r| Some((r, r.sync.as_ref()?))) {
                sync.lock()
                    .expect("sync lock poisoned")
                    .sync(&map)
                    .map_err(|e| {
                        let (trigger, window) = (&r.trigger, &r.window);
                        format!("sync of trigger \"{trigger}\" of window \"{window}\": {e}")
                    })?;
            }
            if route.is_some_and(|r| r.emit) {
                delivery.emitted.push(map);
            }
        }
        for l in step.late {
            let task = self.late_tasks.get(&l.window).cloned();
            delivery.late.push((task, l.segment, l.reason));
        }
        Ok(())
    }

    /// Flushes every sync this stage uses.
    pub fn flush_syncs(&self) -> Result<(), String> {
        for s in self.routes.iter().filter_map(|r| r.sync.as_ref()) {
            s.lock().expect("sync lock poisoned").flush()?;
        }
        Ok(())
    }
}
