//! What every peer shares: its place in the job ([`PeerContext`]), the lifecycle hooks it
//! calls, and the process clock for idleness and timers.

use std::sync::Arc;

use sardonyx_connectors::Positions;
use tokio::time::Instant;

use super::job_log::JobState;
use super::rejections::ErrorFile;
use super::window_stage::Syncs;
use super::{Progress, RunError, Topology};
use crate::job::{Job, TaskSpec};
use crate::plugin::{Lifecycle, PluginContext, TaskEvent};
use crate::registry::Registry;

/// The resume positions of peers that have none (outputs, fresh inputs).
pub(crate) static NO_POSITIONS: Positions = Positions::new();

/// Everything a peer needs to know about its place in the job.
pub(crate) struct PeerContext {
    pub job: Arc<Job>,
    pub registry: Registry,
    pub task: TaskSpec,
    pub peer: usize,
    pub n_peers: usize,
    pub topology: Arc<Topology>,
    pub targets: Vec<String>,
    pub error_task: Option<String>,
    pub error_file: ErrorFile,
    pub progress: Arc<Progress>,
    pub syncs: Arc<Syncs>,
    /// The job's exactly-once state, if it has a state log.
    pub state: Option<Arc<JobState>>,
}

impl PeerContext {
    pub(crate) fn lifecycles(&self) -> Vec<Lifecycle> {
        self.job
            .lifecycles
            .iter()
            .filter(|l| l.task == self.task.name || l.task == "all")
            .filter_map(|l| self.registry.lifecycle(&l.calls).cloned())
            .collect()
    }

    pub(crate) fn event(&self) -> TaskEvent<'_> {
        TaskEvent {
            task: &self.task.name,
            peer: self.peer,
        }
    }

    pub(crate) fn plugin_ctx(&self) -> PluginContext<'_> {
        PluginContext {
            task: &self.task,
            peer: self.peer,
            n_peers: self.n_peers,
            resuming: self.state.as_ref().is_some_and(|s| s.resumed),
            positions: &NO_POSITIONS,
        }
    }

    pub(crate) fn id(&self) -> usize {
        self.topology.first_peer[&self.task.name] + self.peer
    }

    pub(crate) fn plugin_error(&self, message: impl Into<String>) -> RunError {
        RunError::Plugin {
            task: self.task.name.clone(),
            message: message.into(),
        }
    }
}

pub(crate) fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with no message".to_owned())
}

pub(crate) fn call_hooks(lifecycles: &[Lifecycle], f: impl Fn(&Lifecycle) -> Option<()>) {
    for l in lifecycles {
        let _ = f(l);
    }
}

/// Processing time for idleness and timers: milliseconds since this process first asked, on a
/// monotonic clock, so that neither jumps when the wall clock is set. (It restarts with the
/// process: a recovered slot restarts its timers, [`sardonyx_windowing::WindowOperator::restart_timers`].)
pub(crate) fn now_ms() -> i64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    i64::try_from(start.elapsed().as_millis()).unwrap_or(i64::MAX)
}
