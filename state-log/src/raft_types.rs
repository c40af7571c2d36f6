//! The openraft type configuration and the commands replicated through the Raft log.

use std::io::Cursor;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::types::RequestId;

openraft::declare_raft_types!(
    /// Raft types of the state log: a log entry carries a [`CommandBatch`].
    pub TypeConfig:
        D = CommandBatch,
        R = BatchOutcome,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The Raft handle type of a state-log node.
pub(crate) type LogRaft = openraft::Raft<TypeConfig>;

/// One operation of the state machine: a ledger write, or an append to the coordination log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    /// Append `record` (whose crc32 is `crc`) to `ledger` unless `request` was applied before.
    Append {
        /// Target ledger.
        ledger: String,
        /// Idempotency key.
        request: RequestId,
        /// Opaque payload (shared: a retried command is not copied).
        record: Bytes,
        /// crc32 of `record`, computed where the append was made.
        crc: u32,
    },
    /// Store a snapshot covering positions `<= covers` and drop those entries.
    Snapshot {
        /// Target ledger.
        ledger: String,
        /// Last position the snapshot reflects.
        covers: u64,
        /// Opaque snapshot payload (shared: a retried command is not copied).
        bytes: Bytes,
        /// crc32 of `bytes`.
        crc: u32,
    },
    /// Apply `command` only if `fence` is not below the fence of its ledger; once it is applied
    /// (not rejected), raise the ledger's fence to `fence`. A write fenced below the ledger's
    /// fence is rejected with [`Error::Fenced`] and changes nothing. (Appended last: Raft logs
    /// written before it existed still decode.)
    Fenced {
        /// The writer's fence (the engine uses its run's epoch).
        fence: u64,
        /// The guarded command (an `Append` or a `Snapshot`).
        command: Box<Command>,
    },
    /// Append `entry` (whose crc32 is `crc`) to the coordination log, at the position after its
    /// last, unless `request` was applied to it before. (Last, so earlier Raft logs decode.)
    AppendEntry {
        /// Idempotency key (remembered apart from the ledgers' request ids).
        request: RequestId,
        /// Opaque entry (shared: a retried command is not copied).
        entry: Bytes,
        /// crc32 of `entry`, computed where the append was made.
        crc: u32,
    },
}

impl Command {
    /// Approximate payload size, for batch limits.
    pub(crate) fn size(&self) -> usize {
        match self {
            Command::Append { record, ledger, .. } => record.len() + ledger.len() + 32,
            Command::Snapshot { bytes, ledger, .. } => bytes.len() + ledger.len() + 32,
            Command::Fenced { command, .. } => command.size() + 8,
            Command::AppendEntry { entry, .. } => entry.len() + 32,
        }
    }

    /// The ledger the command writes to (`None` for the coordination log, which is no ledger).
    pub(crate) fn ledger(&self) -> Option<&str> {
        match self {
            Command::Append { ledger, .. } | Command::Snapshot { ledger, .. } => Some(ledger),
            Command::Fenced { command, .. } => command.ledger(),
            Command::AppendEntry { .. } => None,
        }
    }

    /// `self`, guarded by `fence` if one is given.
    pub(crate) fn fenced(self, fence: Option<u64>) -> Command {
        match fence {
            Some(fence) => Command::Fenced {
                fence,
                command: Box::new(self),
            },
            None => self,
        }
    }
}

/// The application data of one Raft entry: commands group-committed together.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommandBatch {
    /// The commands, applied in order.
    pub commands: Vec<Command>,
}

/// Result of one command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Appended (or found already appended, for a repeated request id) at this position (of
    /// the ledger, or of the coordination log for [`Command::AppendEntry`]).
    Appended(u64),
    /// Snapshot stored (or an equal or newer one was already there).
    Snapshotted,
    /// Rejected deterministically by the state machine.
    Rejected(Error),
}

/// The response of one Raft entry: one outcome per command (empty for blank/membership entries).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchOutcome {
    /// Outcomes in command order.
    pub outcomes: Vec<Outcome>,
}
