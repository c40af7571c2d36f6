//! Who and where: [`ProcessId`] names a peer process of the cluster, [`SlotAddress`] a task slot
//! of a job (the destination of a batch) and [`Sender`] the slot a batch comes from.
//!
//! They are plain data, as the coordination replica assigns them: the messaging layer routes
//! by them and checks nothing else about them.

use serde::{Deserialize, Serialize};

/// A peer process of the cluster: the coordination replica's [`crate::coordination::ProcessId`]
/// (the same `u64` on the wire).
pub use crate::coordination::ProcessId;

/// A task slot of a job: where a batch goes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SlotAddress {
    /// The job's id.
    pub job: String,
    /// The task's name.
    pub task: String,
    /// The slot's number within the task.
    pub slot: u32,
}

impl SlotAddress {
    /// The address of slot `slot` of task `task` of job `job`.
    pub fn new(job: impl Into<String>, task: impl Into<String>, slot: u32) -> Self {
        SlotAddress {
            job: job.into(),
            task: task.into(),
            slot,
        }
    }
}

impl std::fmt::Display for SlotAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.job, self.task, self.slot)
    }
}

/// The task slot a batch comes from (of the same job as its destination): the key of the
/// receiver's per-sender watermark and of its per-sender order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Sender {
    /// The sending task's name.
    pub task: String,
    /// The sending slot's number.
    pub slot: u32,
}

impl Sender {
    /// Slot `slot` of task `task`.
    pub fn new(task: impl Into<String>, slot: u32) -> Self {
        Sender {
            task: task.into(),
            slot,
        }
    }
}
