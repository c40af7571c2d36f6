//! The durable, Raft-replicated state log of Sardonyx.
//!
//! A **ledger** is an append-only sequence of opaque records (one ledger per task slot; this
//! crate knows nothing of windows). The [`Ledgers`] API appends a record atomically and returns
//! its position only once Raft has committed it on a quorum, with the log fsynced; reads return
//! the latest snapshot and the entries after it; snapshots compact a ledger's prefix.
//!
//! Two implementations share all their code:
//! - [`EmbeddedLog`]: a single-member Raft cluster in this process, on a local directory (the
//!   default of `sardonyx run`).
//! - [`LogServer`] + [`LogClient`]: a cluster of log servers (3 for fault tolerance) speaking
//!   the crate's own TCP protocol (length-delimited bincode frames); the client follows the
//!   leader and retries retryable errors.
//!
//! Under the hood each node runs openraft 0.9 with its Raft log, its vote and the ledger state
//! machine (and its Raft snapshots) in column families of one RocksDB. Concurrent appends are
//! **group-committed**: a node packs every command queued while earlier ones are in flight into
//! one Raft entry, and the log store coalesces the fsyncs of entries appended together. Each
//! record carries a crc32 computed where it was appended; a mismatch on read is
//! [`Error::Corrupt`] naming the ledger and position, never a silent replay. Appends carry a
//! [`RequestId`]; the state machine remembers the position of each (the last
//! [`REQUEST_ID_WINDOW`] per client), so a retry after a leader change is applied once.
//!
//! **Fencing.** Each ledger has a *fence* (a `u64`, initially 0). A writer that owns a ledger for
//! an epoch writes with [`Ledgers::append_fenced`] and [`Ledgers::snapshot_fenced`]: the state
//! machine applies such a write only if its fence is not below the ledger's, and then raises the
//! ledger's fence to it, in the same atomic step; a write from an older epoch is refused with
//! [`Error::Fenced`] and changes nothing. So once a new owner has written, a stale one (a
//! "zombie" still running somewhere) can neither append to the ledger nor replace its prefix
//! with a snapshot of its own. The fence is stored beside the ledger's metadata, survives
//! restarts and is carried by Raft snapshots. Plain appends and snapshots ignore fences.
//!
//! **The coordination log.** Beside the ledgers, the state machine holds a second keyspace: the
//! coordination log, one totally ordered list of opaque entries at positions 1, 2, 3, …
//! without gaps, that the engine's peer processes append to and play into their replicas
//! (DESIGN §6). The [`CoordinationLog`] trait (implemented by [`EmbeddedLog`] and
//! [`LogClient`], like [`Ledgers`]) appends an entry and returns its position once it is
//! committed on a quorum (group-committed with the ledgers' writes, applied once per
//! [`RequestId`], at most [`MAX_ENTRY_BYTES`]), reads entries from a position, and subscribes:
//! an [`EntrySubscription`] yields every entry from a position in order, without gaps or
//! repeats, then each new one as it commits — on the embedded node woken by the state
//! machine's apply, over the network by long polls of the leader that follow it through
//! leader changes and server restarts. Entries live in column families of their own (no
//! ledger name or ledger request id can reach them), each with its crc32 (a mismatch, or a
//! missing position, is [`Error::CorruptEntry`]); they are never compacted (the time machine
//! replays the log from position 1), and Raft snapshots carry them. `docs/cluster.md` has the
//! exact semantics.
//!
//! The [`DedupFilter`] is a separate, local component: a peer's set of recently applied segment
//! ids in rotating RocksDB buckets with bloom filters in front.
//!
//! # Embedded
//! ```no_run
//! # async fn demo() -> sardonyx_state_log::Result<()> {
//! use sardonyx_state_log::{EmbeddedLog, Ledgers, RequestId};
//! let log = EmbeddedLog::open("/var/lib/sardonyx/state").await?;
//! let pos = log.append("job/task/0", RequestId::new(1, 0), b"batch".to_vec()).await?;
//! log.snapshot("job/task/0", pos, b"state".to_vec()).await?; // compacts up to `pos`
//! let recovered = log.read("job/task/0", 0).await?; // snapshot + entries after it
//!
//! // The coordination log (see `CoordinationLog`): positions from 1, a subscription.
//! let first = log.append_entry(RequestId::new(1, 1), b"prepare_join".to_vec()).await?;
//! let mut entries = log.subscribe_entries(first)?;
//! let (position, bytes) = entries.next().await?; // (first, b"prepare_join"), then the next
//! # let _ = (position, bytes);
//! # Ok(()) }
//! ```
//!
//! # Cluster
//! Start one [`LogServer`] per member with the same `cluster` map (the lowest id initializes
//! the cluster on its first start), then talk to it through a [`LogClient`]:
//! ```no_run
//! # async fn demo() -> sardonyx_state_log::Result<()> {
//! use std::collections::BTreeMap;
//! use sardonyx_state_log::{LogClient, LogServer, RequestId, ServerConfig};
//! let cluster: BTreeMap<u64, String> =
//!     [(1, "10.0.0.1:7100"), (2, "10.0.0.2:7100"), (3, "10.0.0.3:7100")]
//!         .into_iter().map(|(id, a)| (id, a.to_string())).collect();
//! // On host 1 (likewise 2 and 3):
//! let server = LogServer::start(ServerConfig::new(1, "0.0.0.0:7100", "/data/log", cluster.clone())).await?;
//! // Anywhere:
//! let client = LogClient::connect(cluster.values().cloned())?;
//! client.append("job/task/0", RequestId::new(7, 0), b"batch".to_vec()).await?;
//! println!("{:#?}", sardonyx_state_log::status(&cluster.values().cloned().collect::<Vec<_>>()).await);
//! # Ok(()) }
//! ```
//!
//! # Limitations
//! - Membership is fixed by the `cluster` map given at first start; there is no API yet to
//!   add or remove servers.
//! - A Raft snapshot (used to purge Raft's log and to catch up far-behind servers) serializes
//!   the whole state machine in memory; fine for ledgers that are compacted regularly and a
//!   coordination log of small entries, not for very large state.
//!
//! # Security of the transport
//! - **Authentication**: with a [`ClusterSecret`] (`--secret-file`), every connection starts
//!   with a mutual HMAC-SHA256 challenge–response over fresh nonces from both sides; a server
//!   refuses a client (or a Raft peer) that cannot prove the secret before reading any request,
//!   and a client refuses a server that cannot, each with an [`Error::Unauthenticated`] /
//!   logged reason. Without a secret on either side, connections are open; the CLI allows that
//!   only on loopback addresses. Frames are **not encrypted** and not signed one by one: an
//!   attacker who can read or rewrite the traffic between hosts is out of scope (use a private
//!   network or a tunnel).
//! - **Limits**: a frame's length is checked against [`MAX_FRAME_BYTES`] before anything is
//!   allocated (handshake frames: 256 bytes); records and snapshots are at most
//!   [`MAX_PAYLOAD_BYTES`]; a connection has at most [`MAX_INFLIGHT_PER_CONNECTION`] requests
//!   and [`MAX_INFLIGHT_BYTES_PER_CONNECTION`] request bytes in flight (the server stops reading
//!   it until one is answered) and a server at most [`MAX_CONNECTIONS`] connections. Every
//!   bincode decode of outside bytes goes through [`decode_bounded`].

mod auth;
mod client;
mod codec;
mod coordination;
mod dedup;
mod embedded;
mod error;
mod net;
mod node;
mod observer;
mod raft_net;
mod raft_types;
mod server;
mod store;
mod types;

use std::future::Future;
use std::pin::Pin;

pub use auth::{nonce, ClusterSecret, Nonce, MIN_SECRET_BYTES};
pub use client::{ClientOptions, LogClient};
pub use codec::decode_bounded;
pub use coordination::{CoordinationEntry, CoordinationLog, EntrySubscription, MAX_ENTRY_BYTES};
pub use dedup::{export_ids, DedupConfig, DedupFilter};
pub use embedded::EmbeddedLog;
pub use error::{AuthFailure, Error, Result, SecretProblem};
pub use net::{
    MAX_CONNECTIONS, MAX_FRAME_BYTES, MAX_INFLIGHT_BYTES_PER_CONNECTION,
    MAX_INFLIGHT_PER_CONNECTION, MAX_PAYLOAD_BYTES,
};
pub use node::Tuning;
pub use observer::NodeObserver;
pub use server::{status, status_with, LogServer, ServerConfig};
pub use types::{
    CommitStats, LedgerInfo, LedgerRead, ReadStats, RequestId, Role, ServerStatus,
    REQUEST_ID_WINDOW,
};

/// A boxed, sendable future (keeps [`Ledgers`] usable as `dyn Ledgers`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The ledger API the engine uses, implemented by [`EmbeddedLog`] and [`LogClient`].
pub trait Ledgers: Send + Sync {
    /// Appends `record` to `ledger` as one atomic entry and returns its position (0, 1, 2, …
    /// per ledger) once it is committed on a quorum and fsynced. Appending again with a
    /// `request` id that was already applied returns the original position and appends nothing.
    fn append<'a>(
        &'a self,
        ledger: &'a str,
        request: RequestId,
        record: Vec<u8>,
    ) -> BoxFuture<'a, Result<u64>>;

    /// Reads `ledger` from `from_position`: the latest snapshot if it covers `from_position` or
    /// later, then every stored entry after it (or from `from_position` if there is no such
    /// snapshot). Recovery calls `read(ledger, 0)`. Linearizable: sees every completed append.
    fn read<'a>(&'a self, ledger: &'a str, from_position: u64)
        -> BoxFuture<'a, Result<LedgerRead>>;

    /// Stores `bytes` as the ledger's snapshot reflecting every entry at positions
    /// `<= covers_position`, and drops those entries. `covers_position` must be an appended
    /// position; a snapshot not newer than the stored one is ignored (so retries are safe).
    fn snapshot<'a>(
        &'a self,
        ledger: &'a str,
        covers_position: u64,
        bytes: Vec<u8>,
    ) -> BoxFuture<'a, Result<()>>;

    /// Like [`Ledgers::append`], as a write of an owner whose epoch is `fence`: refused with
    /// [`Error::Fenced`] (nothing appended) if the ledger's fence is higher than `fence`, i.e. a
    /// newer owner has written to it; otherwise appended, and the ledger's fence raised to
    /// `fence`. The check and the append are one atomic step of the replicated state machine.
    /// A ledger's fence starts at 0 and only fenced writes that are applied raise it; plain
    /// [`Ledgers::append`] and [`Ledgers::snapshot`] ignore it. A repeated `request` id is still
    /// answered with its original position, if the fence admits the repetition.
    fn append_fenced<'a>(
        &'a self,
        ledger: &'a str,
        fence: u64,
        request: RequestId,
        record: Vec<u8>,
    ) -> BoxFuture<'a, Result<u64>>;

    /// Like [`Ledgers::snapshot`], fenced as [`Ledgers::append_fenced`]: refused with
    /// [`Error::Fenced`] (nothing stored, nothing dropped) if the ledger's fence is higher than
    /// `fence`; otherwise stored (or ignored as not newer), and the ledger's fence raised to
    /// `fence`. A stale owner can thus never replace the prefix of a ledger a newer owner wrote.
    fn snapshot_fenced<'a>(
        &'a self,
        ledger: &'a str,
        fence: u64,
        covers_position: u64,
        bytes: Vec<u8>,
    ) -> BoxFuture<'a, Result<()>>;

    /// Size of `ledger` (entries and bytes since the last snapshot), to decide when to compact.
    fn info<'a>(&'a self, ledger: &'a str) -> BoxFuture<'a, Result<LedgerInfo>>;
}
