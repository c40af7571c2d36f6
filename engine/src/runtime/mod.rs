//! The local runtime: every task of a job runs on its peers (tokio tasks) in one process.
//!
//! Peers exchange batches over bounded channels, so a slow task pushes back on everything
//! upstream of it. Segments are routed per segment: flow conditions pick the downstream tasks,
//! and a grouped task gets each key on one peer (key → key group → the peer owning that
//! key group's range, [`crate::key_groups`]). Finite inputs end
//! the job: each peer, once all its upstream peers are done, finishes its work and tells its
//! own downstream peers. A segment a function fails (or panics) on goes to the error output
//! with the cause, unless a lifecycle decides to restart or kill.
//!
//! # A map of the rooms
//!
//! Starting a job:
//! - `launch`: [`RunOptions`], [`JobReport`], [`run_job`], [`run_placed`]: validation, one attempt per
//!   (re)start of the job's peers, spawning them, joining them, the restart loop, and
//!   `commit_loop` (an input peer's committed positions as its batches complete).
//! - `topology`: who sends to whom (`Layout`, pure) and the channels peers share (`Topology`).
//! - `context`: `PeerContext`, what every peer knows of its place in the job; lifecycle hooks;
//!   the process clock.
//! - `progress`: [`Progress`], the live counters behind the report and the metrics endpoint
//!   ([`crate::metrics`]): job totals, per task slot ([`SlotCounters`]), per trigger, the latest
//!   rejections.
//! - `error`: [`RunError`], why a job did not complete.
//!
//! The input side:
//! - `input_peer`: `run_input`: open (at the resume positions), read-parse-route, stop, finish.
//! - `input_watermark`: `InputWatermark`, an input's per-partition watermark and idleness.
//!
//! Between peers:
//! - `message`: `Msg` (a batch with its sender's `Mark` and acks, or `Done`).
//! - `router`: `Router`, where a peer's segments go (flow conditions, key placement, the error
//!   output) and the sending of batches.
//! - [`routing`]: the pure rules the router applies (flow plans, key hashing).
//! - `inbox`: `Inbox`, the receiving side of a worker peer (batching, per-sender marks).
//! - [`ack`]: acknowledgement of input batches, so positions are committed only once done.
//! - [`rejections`]: [`Rejection`] and the error file.
//! - [`remote`]: a run spread over the processes of a cluster ([`run_placed`]): which peers
//!   are here, forwarders and receivers to the others over messaging, ack trees across
//!   processes, completed slots.
//!
//! The worker side and exactly-once state (DESIGN §5):
//! - `worker_peer`: function, windowed and output peers: the driver of a task slot (gather,
//!   run the function, feed the slot machine [`crate::slot::Slot`], carry out its commands).
//! - `window_stage`: a windowed task's window operator (handed to the slot) and the delivery
//!   of its decisions (syncs, emitted firings, late segments).
//! - `slot_log`: a windowed slot's ledger and dedup filter: the I/O of the machine's commands.
//! - `rescale`: a rescaled task's new slot gathering its first state from the old slots.
//! - `job_log`: the job's ledgers in the state log ([`StateOptions`]).
//! - `input_log`: an input peer's committed positions in the state log.
//!
//! # How a batch travels
//!
//! An input peer (`input_peer`) reads a batch from its source, parses it into segments and
//! issues it an ack token ([`ack`]); its `router` places each segment on the downstream peers
//! it goes to and sends them one batch per peer with the input's mark (`input_watermark`).
//! A worker peer's `inbox` gathers batches from its upstream peers; the `worker_peer` applies
//! the task's function and, for a windowed task, hands the batch to the slot machine
//! ([`crate::slot::Slot`]), which applies it to the windows and, with exactly-once state, asks
//! for the batch's record to be appended; `slot_log` appends it to the slot's ledger; once it is
//! committed, the `window_stage` delivers the firings (syncs, emitted segments) and an output
//! peer writes to its sink. Every downstream batch holds the input batch's ack;
//! when the last is dropped the batch is done, `commit_loop` (`launch`) advances the input's
//! committed positions, and `input_log` writes them to the state log (the input peer also
//! tells its source).
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
mod crash_point;
mod error;
mod inbox;
mod input_log;
mod input_peer;
mod input_watermark;
mod job_log;
mod launch;
mod message;
mod progress;
pub mod projection;
pub mod rejections;
pub mod remote;
mod rescale;
mod router;
pub mod routing;
mod slot_log;
mod topology;
mod window_stage;
mod worker_peer;

pub use crate::slot::COMPLETION_FIRINGS;
pub use error::RunError;
pub use job_log::{StateOptions, TaskLedgers};
pub use launch::{
    check_state, run_job, run_job_with_progress, run_placed, JobReport, RunOptions, MAX_RESTARTS,
};
pub use message::Mark;
pub use progress::{
    FilterOpened, Progress, RecentFiring, RecentRejection, SlotCounters, SlotRecovery,
    TriggerFirings, FIRING_SAMPLE_EVERY, RECENT_FIRINGS, RECENT_REJECTIONS,
};
pub use rejections::Rejection;
pub use rescale::CRASH_AFTER_RESCALED_SLOTS;
pub use slot_log::CRASH_AFTER_RECORDS;
