//! Plain data types of the ledger API, shared by the embedded node, the servers and the client.

use serde::{Deserialize, Serialize};

/// How many recent sequence numbers per client the state machine remembers for deduplication
/// (of ledger appends, and apart of coordination-log appends).
pub const REQUEST_ID_WINDOW: u64 = 1 << 16;

/// Identifies one logical append so a retry is applied at most once.
///
/// `client` names the appender (e.g. a peer's random 64-bit id) and `seq` numbers its requests.
/// The state machine remembers the position assigned to each request id (the most recent
/// [`REQUEST_ID_WINDOW`](crate::REQUEST_ID_WINDOW) sequence numbers of each client): appending
/// again with an id it remembers returns the original position instead of appending twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RequestId {
    /// The appending client.
    pub client: u64,
    /// The client's sequence number for this request.
    pub seq: u64,
}

impl RequestId {
    /// A request id from a client id and a sequence number.
    pub fn new(client: u64, seq: u64) -> Self {
        Self { client, seq }
    }
}

/// What [`Ledgers::read`](crate::Ledgers::read) returns: the latest snapshot (if it is at or past
/// the requested position) and the entries after it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerRead {
    /// The latest snapshot: `(position covered, bytes)`. It reflects every entry at positions
    /// `<= position covered`; `entries` then start after it.
    pub snapshot: Option<(u64, Vec<u8>)>,
    /// `(position, record)` in position order.
    pub entries: Vec<(u64, Vec<u8>)>,
    /// How much this read touched in storage.
    pub stats: ReadStats,
}

/// Accounting of one read, so recovery cost can be asserted (snapshot + tail only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadStats {
    /// Records visited in storage (each one checksummed).
    pub records_scanned: u64,
    /// Bytes of record payload plus snapshot payload read.
    pub bytes_read: u64,
}

/// The size of a ledger, so a peer can decide to compact it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerInfo {
    /// Position the next append will get (= number of appends ever made to the ledger).
    pub next_position: u64,
    /// Lowest position still stored as an entry (everything below is in the snapshot).
    pub first_position: u64,
    /// Entries stored (not compacted): `next_position - first_position`.
    pub entries: u64,
    /// Payload bytes of the stored entries.
    pub entry_bytes: u64,
    /// Position covered by the latest snapshot, if any.
    pub snapshot_position: Option<u64>,
    /// Payload bytes of the latest snapshot.
    pub snapshot_bytes: u64,
    /// The ledger's fence: the highest fence of the fenced writes it accepted (0 if none).
    pub fence: u64,
}

/// Raft role of a log server as seen by [`status`](crate::status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Accepts appends.
    Leader,
    /// Replicates from the leader.
    Follower,
    /// Campaigning for leadership.
    Candidate,
    /// Receives the log but does not vote.
    Learner,
    /// Did not answer.
    Unreachable,
}

/// One server's line in the operator's `log-status` view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStatus {
    /// Raft node id (`None` if unreachable and not named by any reachable server's membership).
    pub id: Option<u64>,
    /// Address asked.
    pub addr: String,
    /// Its role.
    pub role: Role,
    /// Leader it knows of.
    pub current_leader: Option<u64>,
    /// Raft term.
    pub current_term: u64,
    /// Index of its last Raft log entry.
    pub last_log_index: Option<u64>,
    /// Index of the last Raft log entry applied to its ledgers.
    pub last_applied: Option<u64>,
    /// Why the server refused the connection (an [`Error::Unauthenticated`](crate::Error)
    /// message: a wrong or missing cluster secret), if it did; its role is then
    /// [`Role::Unreachable`].
    #[serde(default)]
    pub refused: Option<String>,
    /// Position of the last coordination-log entry this server has applied (0: none yet;
    /// `None` if it did not answer). Not in the serialized form (a server sends it beside this
    /// line, so that the status reply of earlier versions keeps its layout).
    #[serde(skip)]
    pub last_entry_position: Option<u64>,
}

/// Counters of the group committer of one node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitStats {
    /// Commands (ledger appends and snapshots, coordination-log appends) submitted.
    pub commands: u64,
    /// Raft entries (client writes) they were packed into.
    pub raft_writes: u64,
}
