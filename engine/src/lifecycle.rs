//! Lifecycles: hooks a job names (by `lifecycles` in its catalog) around a task's life — before
//! the peer starts, before and after each batch, after it stops — and the decision for a segment
//! its function failed on ([`ExceptionAction`]: defer to the error path, restart, kill).

use std::sync::Arc;

use crate::segment::Segment;

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
