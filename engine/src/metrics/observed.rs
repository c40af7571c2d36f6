//! What a metrics endpoint observes ([`Observed`]): the job this process runs (its graph and its
//! live counters), the state log it writes to (append timing, Raft metrics), and the cluster as
//! a peer process sees it.

use std::sync::Arc;
use std::time::SystemTime;

use sardonyx_state_log::NodeObserver;

use super::ledger_timing::LedgerTiming;
use crate::job::{Job, TaskKind};
use crate::runtime::Progress;

/// What one metrics endpoint shows: a job, a state log, the cluster as a peer process sees it,
/// or some of them (the process itself always).
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// The job this process runs.
    pub job: Option<ObservedJob>,
    /// The state log this process writes to or serves.
    pub log: Option<ObservedLog>,
    /// The cluster, as this peer process has played its coordination log.
    pub cluster: Option<Arc<crate::cluster::ClusterView>>,
}

/// A running job: its name (the `job` label), its graph and its live counters.
#[derive(Clone, Debug)]
pub struct ObservedJob {
    /// The job's id, or the name it was started by.
    pub name: String,
    /// Its tasks and edges.
    pub graph: JobGraph,
    /// Its live counters.
    pub progress: Arc<Progress>,
    /// When it started (wall clock).
    pub started: SystemTime,
}

impl ObservedJob {
    /// The job `job`, named by its id or else `fallback_name`, counting into `progress`.
    pub fn new(job: &Job, fallback_name: &str, progress: Arc<Progress>) -> Self {
        ObservedJob {
            name: job.id.clone().unwrap_or_else(|| fallback_name.to_owned()),
            graph: JobGraph::of(job),
            progress,
            started: SystemTime::now(),
        }
    }
}

/// A job's tasks (name and kind, in catalog order) and the edges between them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobGraph {
    /// `(name, kind)`: kind is `input`, `function` or `output`.
    pub tasks: Vec<(String, &'static str)>,
    /// `(from, to)` in workflow order.
    pub edges: Vec<(String, String)>,
}

impl JobGraph {
    /// The graph of `job`.
    pub fn of(job: &Job) -> Self {
        JobGraph {
            tasks: job
                .catalog
                .iter()
                .map(|t| {
                    let kind = match t.kind {
                        TaskKind::Input => "input",
                        TaskKind::Function => "function",
                        TaskKind::Output => "output",
                    };
                    (t.name.clone(), kind)
                })
                .collect(),
            edges: job.workflow.clone(),
        }
    }

    /// Each task's depth: 0 for inputs, else one more than its deepest upstream task (the
    /// workflow is a DAG, checked by validation; a cycle would stop at the task count).
    pub fn depths(&self) -> Vec<usize> {
        let index = |name: &str| self.tasks.iter().position(|(n, _)| n == name);
        let mut depth = vec![0_usize; self.tasks.len()];
        for _ in 0..self.tasks.len() {
            let mut changed = false;
            for (from, to) in &self.edges {
                if let (Some(f), Some(t)) = (index(from), index(to)) {
                    if depth[t] < depth[f] + 1 {
                        depth[t] = depth[f] + 1;
                        changed = true;
                    }
                }
            }
            if !changed {
                break;
            }
        }
        depth
    }
}

/// A state log: its name (the `log` label), how long appends take, and its Raft node's
/// metrics when it runs in this process.
#[derive(Clone, Debug)]
pub struct ObservedLog {
    /// `embedded`, `cluster` (a client of log servers) or `server-N`.
    pub name: String,
    /// Appends timed by this process ([`super::TimedLedgers`]).
    pub timing: Option<Arc<LedgerTiming>>,
    /// The Raft node in this process (the embedded log's, or a log server's).
    pub node: Option<NodeObserver>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Depth is the longest path from an input.
    #[test]
    fn depths_follow_the_longest_path_from_an_input() {
        let job = Job::from_json_str(
            r#"{"workflow": [["in", "a"], ["a", "b"], ["in", "b"], ["b", "out"]],
                "catalog": [
                  {"name": "out", "type": "output", "plugin": "sardonyx/null"},
                  {"name": "b", "type": "function", "fn": "sardonyx/identity"},
                  {"name": "a", "type": "function", "fn": "sardonyx/identity"},
                  {"name": "in", "type": "input", "plugin": "sardonyx/jsonl"}]}"#,
        )
        .unwrap();
        let g = JobGraph::of(&job);
        assert_eq!(
            g.tasks,
            vec![
                ("out".to_owned(), "output"),
                ("b".to_owned(), "function"),
                ("a".to_owned(), "function"),
                ("in".to_owned(), "input")
            ]
        );
        assert_eq!(g.depths(), vec![3, 2, 1, 0]);
    }
}
