//! Exactly-once state of windowed tasks: the ledger protocol, sans-I/O (DESIGN §5).
//!
//! Every windowed task slot (task + peer index) owns one **ledger** in the state log. This module
//! defines what goes into it and how a slot is rebuilt from it; the runtime does the I/O.
//!
//! **Records.** Per batch a peer appends one [`SlotRecord::Batch`] (batches that queued while
//! the previous record committed are merged into one): the uniqueness ids of the
//! batch's new segments, the operator [`Transition`]s of the whole batch in the order they were
//! made (segments, watermark, timer, firings and their refinement resets), and the greatest input
//! offset of every input the batch covers. The append is one atomic ledger entry and returns
//! only once committed on a quorum; only then are firings synced and the batch acknowledged.
//!
//! **Owners and fencing.** A process taking over a slot first appends
//! [`SlotRecord::Owner`] with its epoch (greater than every earlier epoch of the job), then reads
//! the ledger. Fencing works on both sides:
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
//! **Pending firings.** A peer syncs a batch's firings before it appends its next record, so
//! only the firings of the *last* batch record of a ledger can be unsynced after a crash.
//! [`recover`] re-derives them (window, trigger, group, bounds, the state before refinement) so
//! the runtime syncs them again with event `recovered`: sync side effects are at-least-once.
//!
//! **Snapshots.** [`SlotSnapshot`] holds the operator's snapshot (group keys included), the dedup
//! filter's export and the greatest epoch; it covers the ledger up to a position and lets the
//! log drop the entries before it (a fenced write too: only the current owner compacts).

mod filter_mark;
mod record;
mod recovery;
pub(crate) mod seen_ids;

pub use filter_mark::*;
pub use record::*;
pub use recovery::*;

#[cfg(test)]
mod tests;
