//! The error type of the state log.

use std::path::PathBuf;

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

    /// A message is larger than a network frame may be ([`MAX_FRAME_BYTES`](crate::MAX_FRAME_BYTES)
    /// for a frame, [`MAX_PAYLOAD_BYTES`](crate::MAX_PAYLOAD_BYTES) for a record or snapshot).
    /// Not retryable: the same message would be refused again.
    #[error("{what} of {bytes} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// What was too large (e.g. "snapshot of ledger \"j/t/0\"").
        what: String,
        /// Its size.
        bytes: u64,
        /// The limit it exceeds.
        limit: u64,
    },

    /// The connection to `addr` was refused at its start: one side could not prove knowledge
    /// of the cluster secret to the other (see [`ClusterSecret`](crate::ClusterSecret)). Not
    /// retryable: the configuration is wrong.
    #[error("authentication with the log server at {addr} failed: {failure}")]
    Unauthenticated {
        /// The server's address.
        addr: String,
        /// What failed.
        failure: AuthFailure,
    },

    /// The cluster secret file cannot be used.
    #[error("cluster secret file {}: {problem}", path.display())]
    Secret {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: SecretProblem,
    },

    /// A stored entry of the coordination log failed its checksum, is missing (a gap in the
    /// positions) or could not be decoded. Reported, never yielded. (Apart from
    /// [`Error::Corrupt`], which names a ledger: the coordination log is not one. Last, so the
    /// encoding of the other variants is unchanged.)
    #[error("corrupt entry in the coordination log at position {position}: {detail}")]
    CorruptEntry {
        /// The position of the bad (or missing) entry.
        position: u64,
        /// What was wrong.
        detail: String,
    },
}

/// Why an authentication at connection start failed.
#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize, PartialEq, Eq)]
pub enum AuthFailure {
    /// The server requires the cluster secret and this client has none.
    #[error(
        "the server requires the cluster secret and this client has none (give --secret-file)"
    )]
    SecretRequired,
    /// This client has a secret but the server was started without one, so it cannot prove
    /// that it is a member of the cluster.
    #[error(
        "the server has no cluster secret (it was started without --secret-file), so it cannot \
         prove it belongs to the cluster"
    )]
    ServerHasNoSecret,
    /// The server refused this client's proof: the two hold different secrets.
    #[error("the server refused our proof: the client and the server hold different secrets")]
    WrongSecret,
    /// The server's proof did not verify: it holds another secret (or is not who it claims).
    #[error("the server's proof is wrong: it holds a different secret or is an impostor")]
    BadServerProof,
    /// The other side broke the handshake protocol (or is not a Sardonyx log server).
    #[error("handshake protocol error: {0}")]
    Protocol(String),
}

/// What is wrong with a cluster secret file.
#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize, PartialEq, Eq)]
pub enum SecretProblem {
    /// It could not be read.
    #[error("cannot be read: {0}")]
    Unreadable(String),
    /// It holds fewer than [`MIN_SECRET_BYTES`](crate::MIN_SECRET_BYTES) bytes (after trimming
    /// surrounding whitespace); an empty file is the commonest case.
    #[error(
        "holds {0} bytes after trimming whitespace; a cluster secret needs at least {min} \
         (e.g. `head -c 32 /dev/urandom | base64 > FILE; chmod 600 FILE`)",
        min = crate::MIN_SECRET_BYTES
    )]
    TooShort(usize),
    /// Other users may read it (Unix mode bits `o+r`, `o+w` or `o+x` set).
    #[error("is accessible to every user (mode {0:o}); make it private with `chmod 600`")]
    WorldAccessible(u32),
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
