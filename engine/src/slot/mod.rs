//! The exactly-once slot (DESIGN §5): what a windowed task slot writes to its ledger, how it
//! is rebuilt from it, and the order of the steps between, in one place. Read this page first;
//! `docs/exactly-once.md` says what the guarantee covers and how to run the state log.
//!
//! **Words.** A slot (task + peer index) owns one **ledger** in the state log. To *apply* is to
//! change the in-memory window state (the [`WindowOperator`](sardonyx_windowing::WindowOperator) takes a segment, a watermark, a
//! tick, a logged [`Transition`](sardonyx_windowing::Transition)). To *commit* is only the log's: an append returns once Raft has
//! committed the entry on a quorum (fsynced). To *deliver* is to sync a step's firings (and flush
//! the syncs), send emitted firings and late segments on. To *release* is to let a batch's
//! acknowledgements go upstream, so its input may commit its position.
//!
//! **One batch, in order.** (1) *Look up*: the dedup filter answers "seen?" for every id of the
//! batch at once (`seen_ids::BatchKeys`); ids applied by this batch or the one before it,
//! which the filter may not hold yet, are in `seen_ids::SeenPair`. Seen segments skip the
//! window state (they still travel on). (2) *Apply* the others: the operator applies them ahead
//! and records every transition (updates, group interning, watermark, timer, firings and
//! their refinement resets, evictions). (3) *Append* one [`SlotRecord::Batch`] ([`BatchRecord`]:
//! epoch, new ids, transitions, input offsets) and wait for its commit. (4) Only then *insert*
//! its ids into the filter (marked with the record, [`FilterMark`]), *deliver* its firings and
//! flush the syncs, and *release* the batch. Nothing leaves the slot before its record is
//! committed; a record's syncs are flushed before the next record is appended.
//!
//! **Pipelining.** While record N commits, the slot inserts the ids of record N-1 and applies
//! whatever batches are queued or arrive before the commit ([`Want::CommitOrBatch`]); they
//! become record N+1 together (up to
//! `max_merged_batches`). Nothing of them is delivered, released or appended before N is
//! committed and delivered. Not with lifecycle hooks (their calls would interleave across
//! batches), nor when a compaction is due (the snapshot must be the state of exactly the
//! committed records).
//!
//! **Compaction.** When the bytes appended since the last snapshot pass `compact_after_bytes`,
//! the slot (its last record delivered, its ids inserted) writes a [`SlotSnapshot`] — the
//! operator's snapshot (group keys included), the filter's export, the epoch — covering its last
//! record, and the log drops the entries before it.
//!
//! **Completion.** When every input is finished, the operator fires every changed extent once,
//! in records of about [`COMPLETION_FIRINGS`] firings (whole groups), each committed then
//! delivered, so a job with many open windows never holds all its final firings.
//!
//! **Recovery** ([`recover`]): a process taking a slot over appends [`SlotRecord::Owner`] with
//! its epoch, reads the latest snapshot and the records after it, applies them, and brings the
//! filter up to date ([`filter_plan`]: keep the filter on disk if its mark names a replayed
//! record or the snapshot, else rebuild it). Only the *last* record can have firings never
//! synced: recovery re-derives them ([`firing_of`], the state before refinement) and the slot
//! delivers them again with event `recovered` — side effects are at-least-once, state is
//! exactly-once.
//!
//! **Owners and fencing.** Fencing works on both sides:
//! - *Write side* (the runtime): the `Owner` record, every batch record and every compaction
//!   snapshot are fenced writes of the state log (`Ledgers::append_fenced`/`snapshot_fenced`)
//!   with the run's epoch. The `Owner` record raises the ledger's fence to that epoch, and the
//!   log refuses, atomically in its replicated state machine, every later write of an older
//!   epoch: a stale process still running after a newer run took over (a "zombie") can neither
//!   append to the slot nor replace its prefix with a snapshot of its own state; the refusal
//!   stops that process's run with an error naming the ledger and both epochs.
//! - *Read side* ([`recover`]): replay skips batch records of an epoch lower than the greatest
//!   owner seen before them. It covers ledgers written before the log had fences and is a
//!   second line of defence: such a record is fenced off now and in every later recovery.
//!
//! **Where it lives.** Everything above is decided by [`Slot`] ([`machine`]): events in (a
//! batch, the filter's answers, a commit, the end of the inputs, a recovery), [`Command`]s out,
//! no I/O, no clock, no runtime; [`Want`] tells its driver what it waits for. Beside it, the
//! pure parts it uses: [`record`] formats (bincode records, zstd snapshots, id keys),
//! [`recovery`], [`filter_mark`], `seen_ids`, and [`schedule`] (when to compact, when to
//! prepare ahead). The runtime drives it: `runtime/worker_peer.rs` gathers batches, runs the
//! task's function and carries the commands out; `runtime/slot_log.rs` does the ledger and
//! filter I/O.

mod batch_codec;
pub mod filter_mark;
pub mod machine;
pub mod record;
pub mod recovery;
pub mod schedule;
pub(crate) mod seen_ids;

pub use filter_mark::*;
pub use machine::{Batch, Command, GroupOf, LogConfig, Slot, SlotConfig, Want, COMPLETION_FIRINGS};
pub use record::*;
pub use recovery::*;
pub use schedule::RecordSchedule;

#[cfg(test)]
mod machine_tests;
#[cfg(test)]
mod tests;
