//! The error type of the state log.

use serde::{Deserialize, Serialize};

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the state log.
///
/// Variants are split by what a caller should do about them: [`Error::is_retryable`] is true for
/// [`Error::NotLeader`] and [`Error::Unavailable`] (retry, with the same `RequestId` for appends);
/// every other variant is permanent for the request (corrupt data, bad arguments, a write refused
/// by a ledger's fence) or for the node ([`Error::Fatal`]).
#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize, PartialEq, Eq)]
pub enum Error {
    /// Local I/O failed (RocksDB, files, sockets on the serving side).
    #[error("I/O error: {0}")]
    Io(String),

    /// A stored record or snapshot failed its checksum or could not be decoded. It is reported,
    /// never replayed.
    #[error("corrupt record in ledger {ledger:?} at position {position}: {detail}")]
    Corrupt {
        /// The ledger holding the bad record.
        ledger: String,
        /// Its position (for a snapshot: the position it covers).
        position: u64,
        /// What was wrong.
        detail: String,
    },

    /// The contacted server is not the Raft leader. Retryable: the client follows `leader_addr`.
    #[error("not the leader (leader: {leader_id:?} at {leader_addr:?})")]
    NotLeader {
        /// The leader this server knows of, if any.
        leader_id: Option<u64>,
        /// Its address, if known.
        leader_addr: Option<String>,
    },

    /// Temporarily unavailable: no quorum, election in progress, server unreachable, timeout.
    /// Retryable.
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),

    /// The request is invalid (e.g. a snapshot covering a position past the ledger's end).
    #[error("invalid request: {0}")]
    InvalidRequest(String),

    /// The node cannot continue (Raft core stopped, storage failed, protocol violation).
    #[error("fatal: {0}")]
    Fatal(String),

    /// A fenced write ([`Ledgers::append_fenced`](crate::Ledgers::append_fenced),
    /// [`Ledgers::snapshot_fenced`](crate::Ledgers::snapshot_fenced)) was refused because the
    /// ledger's fence is higher: a newer owner has written to it. Not retryable: the writer is
    /// stale and must stop writing to the ledger.
    #[error(
        "ledger {ledger:?} is fenced at epoch {current}: a write with epoch {fence} was refused \
         (a newer owner took over)"
    )]
    Fenced {
        /// The ledger.
        ledger: String,
        /// The fence of the refused write.
        fence: u64,
        /// The ledger's fence (the highest of every accepted fenced write).
        current: u64,
    },
}

impl Error {
    /// True for errors worth retrying (with the same `RequestId` for appends).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::NotLeader { .. } | Error::Unavailable(_))
    }

    /// True for errors that mean the node (or its storage) cannot go on.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Error::Fatal(_))
    }
}

impl From<rocksdb::Error> for Error {
    fn from(e: rocksdb::Error) -> Self {
        Error::Io(format!("rocksdb: {e}"))
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e.to_string())
    }
}
