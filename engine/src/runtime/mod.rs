//! The local runtime: every task of a job runs on its peers (tokio tasks) in one process.
//!
//! Peers exchange batches over bounded channels, so a slow task pushes back on everything
//! upstream of it. Segments are routed per segment: flow conditions pick the downstream tasks,
//! and a grouped task gets each key on one peer (jump consistent hashing). Finite inputs end
//! the job: each peer, once all its upstream peers are done, finishes its work and tells its
//! own downstream peers. A segment a function fails (or panics) on goes to the error output
//! with the cause, unless a lifecycle decides to restart or kill.
//!
//! **Stopping** ([`RunOptions::stop`], a signal for `sardonyx run`): inputs stop reading and
//! finish as if exhausted, every batch already read is processed, positions are committed and
//! outputs flushed, but the job is **not complete**: a stop is not the end of the inputs (the
//! job resumes from where it stopped), so windows do not fire as at job completion (DESIGN §4
//! fires them when finite inputs are *exhausted*). [`JobReport::stopped`] says so.
//!
//! **Restarts**: when a peer of a task with `flux_policy: recover` fails (a plugin error, a
//! panic outside the per-segment path), or a lifecycle's `handle_exception` answers `restart`,
//! every peer of the job is stopped and started again from the committed input positions and
//! the state log (the dedup filter drops what is read again), at most
//! [`RunOptions::max_restarts`] times; then the job fails with the cause. Restarts need a state
//! log: without one, window state would be lost and counted again.

pub mod ack;
mod context;
mod error;
mod inbox;
mod input_log;
mod input_peer;
mod input_watermark;
mod job_log;
mod launch;
mod message;
mod progress;
pub mod rejections;
mod router;
pub mod routing;
mod slot_log;
mod window_stage;
mod worker_peer;

pub use error::RunError;
pub use job_log::StateOptions;
pub use launch::{run_job, run_job_with_progress, JobReport, RunOptions, MAX_RESTARTS};
pub use progress::Progress;
pub use rejections::Rejection;
pub use slot_log::{FilterOpened, SlotRecovery, CRASH_AFTER_RECORDS};

pub(crate) use launch::Topology;
pub(crate) use message::{Mark, Msg};

/// Most firings of one job-completion record (whole groups, so a little more at times): when
/// every input has finished, a windowed peer fires, logs and syncs its open windows in records
/// of about this size, so a job with many open windows (a session per user) never holds all
/// their final firings at once.
pub const COMPLETION_FIRINGS: usize = 4096;
