//! What every peer shares: its place in the job ([`PeerContext`]), the lifecycle hooks it
//! calls, the field a windowed task deduplicates on, and the process clock for idleness and
//! timers.

use std::sync::Arc;

use sardonyx_connectors::Positions;
use tokio::time::Instant;

use super::error::RunError;
use super::job_log::JobLog;
use super::progress::{Progress, SlotCounters};
use super::rejections::ErrorFile;
use super::topology::Topology;
use super::window_stage::Syncs;
use crate::job::{Job, TaskSpec};
use crate::lifecycle::{Lifecycle, TaskEvent};
use crate::plugin::PluginContext;
use crate::registry::Registry;

/// The resume positions of peers that have none (outputs, fresh inputs).
static NO_POSITIONS: Positions = Positions::new();

/// Everything a peer needs to know about its place in the job.
pub(super) struct PeerContext {
    pub(super) job: Arc<Job>,
    pub(super) registry: Registry,
    pub(super) task: TaskSpec,
    pub(super) peer: usize,
    pub(super) n_peers: usize,
    pub(super) topology: Arc<Topology>,
    pub(super) targets: Vec<String>,
    pub(super) error_task: Option<String>,
    pub(super) error_file: ErrorFile,
    pub(super) progress: Arc<Progress>,
    /// This peer's own counters (`progress.slot(task, peer)`).
    pub(super) counters: Arc<SlotCounters>,
    pub(super) syncs: Arc<Syncs>,
    /// The job's exactly-once state, if it has a state log.
    pub(super) state: Option<Arc<JobLog>>,
}

impl PeerContext {
    pub(super) fn lifecycles(&self) -> Vec<Lifecycle> {
        self.job
            .lifecycles
            .iter()
            .filter(|l| l.task == self.task.name || l.task == "all")
            .filter_map(|l| self.registry.lifecycle(&l.calls).cloned())
            .collect()
    }

    pub(super) fn event(&self) -> TaskEvent<'_> {
        TaskEvent {
            task: &self.task.name,
            peer: self.peer,
        }
    }

    pub(super) fn plugin_ctx(&self) -> PluginContext<'_> {
        PluginContext {
            task: &self.task,
            peer: self.peer,
            n_peers: self.n_peers,
            resuming: self.state.as_ref().is_some_and(|s| s.resumed),
            positions: &NO_POSITIONS,
        }
    }

    pub(super) fn id(&self) -> usize {
        self.topology.first_peer[&self.task.name] + self.peer
    }

    pub(super) fn plugin_error(&self, message: impl Into<String>) -> RunError {
        RunError::Plugin {
            task: self.task.name.clone(),
            message: message.into(),
        }
    }
}

/// The field a windowed task deduplicates on: its `uniqueness_key`, unless `deduplicate` is
/// false or the task has no windows.
pub(super) fn dedup_field<'a>(job: &Job, task: &'a TaskSpec) -> Option<&'a str> {
    if task.deduplicate == Some(false) || job.windows_of(&task.name).next().is_none() {
        return None;
    }
    task.uniqueness_key.as_deref()
}

pub(super) fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with no message".to_owned())
}

pub(super) fn call_hooks(lifecycles: &[Lifecycle], f: impl Fn(&Lifecycle) -> Option<()>) {
    for l in lifecycles {
        let _ = f(l);
    }
}

/// Processing time for idleness and timers: milliseconds since this process first asked, on a
/// monotonic clock, so that neither jumps when the wall clock is set. (It restarts with the
/// process: a recovered slot restarts its timers, [`sardonyx_windowing::WindowOperator::restart_timers`].)
pub(super) fn now_ms() -> i64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    i64::try_from(start.elapsed().as_millis()).unwrap_or(i64::MAX)
}
