//! Coordination without a master (DESIGN §6), the pure half: the entries of the coordination
//! log, the replica every process plays them into, the join ring and failure detection, and
//! the schedulers that decide which process runs which slot.
//!
//! Every decision is a pure function of the replica, so every process that plays the same log
//! reaches the same answer; nothing here does I/O, reads a clock or needs a runtime. A process
//! runs this loop (the runtime is the caller's):
//!
//! ```
//! use sardonyx::coordination::{diff, reactions, Entry, ProcessId, ProcessInfo, Replica};
//!
//! let me = ProcessId(1);
//! let log = vec![Entry::PrepareJoin {
//!     process: ProcessInfo { id: me, address: "127.0.0.1:7001".into(), slots: 4 },
//! }];
//! let mut replica = Replica::new();
//! for (i, entry) in log.iter().enumerate() {
//!     let next = replica.apply(entry, i as u64 + 1);
//!     let changes = diff(&replica, &next);
//!     // Start and stop slots from `changes`, then append what this process must:
//!     let to_append = reactions(&changes, &replica, &next, me);
//!     assert!(to_append.is_empty());
//!     replica = next;
//! }
//! assert_eq!(replica.ring, vec![me]);
//! ```

pub mod diff;
pub mod entry;
pub mod failure_detector;
pub mod job_spec;
pub mod placement;
mod render;
pub mod replica;
pub mod ring;
pub mod scheduler;
pub mod state;
pub mod time_machine;

pub use diff::{diff, reactions, sealer, Diff, LayoutChange, OwnerChange, SlotRef, StatusChange};
pub use entry::{
    Entry, EntryError, EntryProblem, ProcessId, ProcessInfo, RestartReason, MAX_REASON_BYTES,
    MAX_RESTARTS,
};
pub use failure_detector::{
    DetectorAction, DetectorConfig, FailureDetector, LogLease, DEFAULT_FAILURE_TIMEOUT,
    DEFAULT_HEARTBEAT_INTERVAL,
};
pub use job_spec::{JobId, JobSpec, JobSpecError, PeerBounds, SpecProblem, TaskDemand};
pub use replica::apply;
pub use ring::{joining_watched_by, watched_by, watcher_of};
pub use state::{
    Ignored, IgnoredEntry, JobState, JobStatus, Join, JoinStage, KeyGroupRange, Process, Replica,
    Restarts, Slot, TaskAllocation,
};
pub use time_machine::replay;
