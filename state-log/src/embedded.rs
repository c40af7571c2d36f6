//! The embedded default: the same Raft node, storage and group commit as a log server, as a
//! single-member cluster in this process with no network, on a local data directory; its
//! coordination-log subscriptions wake on the state machine's apply.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use openraft::BasicNode;
use tokio::sync::watch;

use crate::codec::crc;
use crate::coordination::{
    check_entry_size, CoordinationEntry, CoordinationLog, EntrySource, EntrySubscription,
    MAX_ENTRIES_PER_PAGE,
};
use crate::error::{Error, Result};
use crate::net::READ_PAGE_BYTES;
use crate::node::{Node, Tuning};
use crate::types::{CommitStats, LedgerInfo, LedgerRead, RequestId};
use crate::{BoxFuture, Ledgers};

/// The node id of the single embedded member.
const EMBEDDED_ID: u64 = 1;

/// How long an embedded call waits out a transient state (the election right after open).
const RETRY_FOR: Duration = Duration::from_secs(10);

/// A single-node state log in this process. Cheap to clone (clones share the node).
///
/// Every append is fsynced before it returns; after a crash, [`EmbeddedLog::open`] on the same
/// directory finds every acknowledged record.
#[derive(Clone)]
pub struct EmbeddedLog {
    node: Arc<Node>,
}

impl EmbeddedLog {
    /// Opens (or creates) the log in `dir` and waits until it accepts appends.
    pub async fn open(dir: impl AsRef<Path>) -> Result<EmbeddedLog> {
        Self::open_with(dir, Tuning::default()).await
    }

    /// Like [`EmbeddedLog::open`] with explicit tuning (election and heartbeat timing are
    /// replaced by short ones: a single member has no one to wait for).
    pub async fn open_with(dir: impl AsRef<Path>, tuning: Tuning) -> Result<EmbeddedLog> {
        let tuning = Tuning {
            // Alone, there is no one to wait for: campaign right away after a restart.
            election_timeout: (Duration::from_millis(20), Duration::from_millis(40)),
            heartbeat_interval: Duration::from_millis(10),
            ..tuning
        };
        let node = match Node::open(EMBEDDED_ID, String::new(), dir.as_ref(), &tuning, None).await {
            Ok(node) => Arc::new(node),
            // RocksDB's own words ("While lock file: …/LOCK: Resource temporarily unavailable",
            // or "lock hold by current process" within one process) do not say that the
            // directory is in use.
            Err(crate::Error::Io(detail))
                if detail.contains("While lock file") || detail.contains("lock hold by") =>
            {
                return Err(crate::Error::Io(format!(
                    "the state log in {} is in use by another process ({detail})",
                    dir.as_ref().display()
                )))
            }
            Err(e) => return Err(e),
        };
        let mut members = BTreeMap::new();
        members.insert(EMBEDDED_ID, BasicNode::new(""));
        let ready = async {
            node.initialize(members).await?;
            node.wait_leader(RETRY_FOR).await
        };
        if let Err(e) = ready.await {
            let _ = node.close().await;
            return Err(e);
        }
        Ok(EmbeddedLog { node })
    }

    async fn retry<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let deadline = Instant::now() + RETRY_FOR;
        loop {
            match f().await {
                Err(e) if e.is_retryable() && Instant::now() < deadline => {
                    let _ = self.node.wait_leader(Duration::from_millis(500)).await;
                }
                other => return other,
            }
        }
    }

    /// Appends one record (see [`Ledgers::append`]).
    pub async fn append(&self, ledger: &str, request: RequestId, record: Vec<u8>) -> Result<u64> {
        self.append_with(ledger, None, request, record).await
    }

    /// Appends one record unless the ledger is fenced above `fence` (see
    /// [`Ledgers::append_fenced`]).
    pub async fn append_fenced(
        &self,
        ledger: &str,
        fence: u64,
        request: RequestId,
        record: Vec<u8>,
    ) -> Result<u64> {
        self.append_with(ledger, Some(fence), request, record).await
    }

    async fn append_with(
        &self,
        ledger: &str,
        fence: Option<u64>,
        request: RequestId,
        record: Vec<u8>,
    ) -> Result<u64> {
        let sum = crc(&record);
        let record = Bytes::from(record);
        self.retry(|| {
            self.node
                .append_checked(ledger.to_string(), request, record.clone(), sum, fence)
        })
        .await
    }

    /// Reads a ledger (see [`Ledgers::read`]).
    pub async fn read(&self, ledger: &str, from_position: u64) -> Result<LedgerRead> {
        self.retry(|| self.node.read(ledger, from_position)).await
    }

    /// Stores a snapshot and compacts (see [`Ledgers::snapshot`]).
    pub async fn snapshot(&self, ledger: &str, covers_position: u64, bytes: Vec<u8>) -> Result<()> {
        self.snapshot_with(ledger, None, covers_position, bytes)
            .await
    }

    /// Stores a snapshot and compacts unless the ledger is fenced above `fence` (see
    /// [`Ledgers::snapshot_fenced`]).
    pub async fn snapshot_fenced(
        &self,
        ledger: &str,
        fence: u64,
        covers_position: u64,
        bytes: Vec<u8>,
    ) -> Result<()> {
        self.snapshot_with(ledger, Some(fence), covers_position, bytes)
            .await
    }

    async fn snapshot_with(
        &self,
        ledger: &str,
        fence: Option<u64>,
        covers_position: u64,
        bytes: Vec<u8>,
    ) -> Result<()> {
        let sum = crc(&bytes);
        let bytes = Bytes::from(bytes);
        self.retry(|| {
            self.node.snapshot_checked(
                ledger.to_string(),
                covers_position,
                bytes.clone(),
                sum,
                fence,
            )
        })
        .await
    }

    /// Ledger size (see [`Ledgers::info`]).
    pub async fn info(&self, ledger: &str) -> Result<LedgerInfo> {
        self.retry(|| self.node.info(ledger)).await
    }

    /// Appends an entry to the coordination log (see [`CoordinationLog::append_entry`]).
    pub async fn append_entry(&self, request: RequestId, entry: Vec<u8>) -> Result<u64> {
        check_entry_size(entry.len())?;
        let sum = crc(&entry);
        let entry = Bytes::from(entry);
        self.retry(|| self.node.append_entry_checked(request, entry.clone(), sum))
            .await
    }

    /// Reads the coordination log (see [`CoordinationLog::read_entries`]).
    pub async fn read_entries(&self, from: u64, max: usize) -> Result<Vec<CoordinationEntry>> {
        self.retry(|| self.node.read_all_entries(from, max)).await
    }

    /// The coordination log's last position (see [`CoordinationLog::last_entry_position`]).
    pub async fn last_entry_position(&self) -> Result<u64> {
        self.retry(|| self.node.last_entry_position()).await
    }

    /// Subscribes to the coordination log from `from` (see
    /// [`CoordinationLog::subscribe_entries`]). The subscription does not keep the node open:
    /// once it is closed, [`EntrySubscription::next`] fails with [`Error::Fatal`].
    pub fn subscribe_entries(&self, from: u64) -> Result<EntrySubscription> {
        let source = AppliedEntries {
            node: Arc::downgrade(&self.node),
            last: self.node.watch_last_entry(),
        };
        EntrySubscription::new(from, Box::new(source))
    }

    /// Group-commit counters: ledger commands submitted and the Raft entries they became.
    pub fn commit_stats(&self) -> CommitStats {
        self.node.commit_stats()
    }

    /// Index of the last Raft log entry (every entry, including Raft's own).
    pub fn raft_last_log_index(&self) -> Option<u64> {
        self.node.raft.metrics().borrow().last_log_index
    }

    /// A view of the node's Raft metrics that does not keep it open.
    pub fn observer(&self) -> crate::NodeObserver {
        crate::NodeObserver::new(Arc::downgrade(&self.node))
    }

    /// WAL syncs (fsyncs) made so far.
    pub fn wal_syncs(&self) -> u64 {
        self.node.wal_syncs()
    }

    /// Stops the node and closes its database. Fails if other clones of this handle are still
    /// alive after a bounded wait.
    pub async fn close(self) -> Result<()> {
        self.node.close().await
    }
}

impl std::fmt::Debug for EmbeddedLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedLog").finish_non_exhaustive()
    }
}

impl Ledgers for EmbeddedLog {
    fn append<'a>(
        &'a self,
        ledger: &'a str,
        request: RequestId,
        record: Vec<u8>,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(EmbeddedLog::append(self, ledger, request, record))
    }

    fn read<'a>(
        &'a self,
        ledger: &'a str,
        from_position: u64,
    ) -> BoxFuture<'a, Result<LedgerRead>> {
        Box::pin(EmbeddedLog::read(self, ledger, from_position))
    }

    fn snapshot<'a>(
        &'a self,
        ledger: &'a str,
        covers_position: u64,
        bytes: Vec<u8>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(EmbeddedLog::snapshot(self, ledger, covers_position, bytes))
    }

    fn append_fenced<'a>(
        &'a self,
        ledger: &'a str,
        fence: u64,
        request: RequestId,
        record: Vec<u8>,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(EmbeddedLog::append_fenced(
            self, ledger, fence, request, record,
        ))
    }

    fn snapshot_fenced<'a>(
        &'a self,
        ledger: &'a str,
        fence: u64,
        covers_position: u64,
        bytes: Vec<u8>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(EmbeddedLog::snapshot_fenced(
            self,
            ledger,
            fence,
            covers_position,
            bytes,
        ))
    }

    fn info<'a>(&'a self, ledger: &'a str) -> BoxFuture<'a, Result<LedgerInfo>> {
        Box::pin(EmbeddedLog::info(self, ledger))
    }
}

impl CoordinationLog for EmbeddedLog {
    fn append_entry<'a>(
        &'a self,
        request: RequestId,
        entry: Vec<u8>,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(EmbeddedLog::append_entry(self, request, entry))
    }

    fn read_entries<'a>(
        &'a self,
        from: u64,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<CoordinationEntry>>> {
        Box::pin(EmbeddedLog::read_entries(self, from, max))
    }

    fn last_entry_position(&self) -> BoxFuture<'_, Result<u64>> {
        Box::pin(EmbeddedLog::last_entry_position(self))
    }

    fn subscribe_entries(&self, from: u64) -> Result<EntrySubscription> {
        EmbeddedLog::subscribe_entries(self, from)
    }
}

/// The embedded node's subscription source: waits on the state machine's notification of its
/// last applied position (a single member applies only what it committed), then reads.
struct AppliedEntries {
    node: Weak<Node>,
    last: watch::Receiver<u64>,
}

impl EntrySource for AppliedEntries {
    fn fetch(&self, from: u64) -> BoxFuture<'static, Result<Vec<CoordinationEntry>>> {
        // A clone sees the current value first: nothing sent before it is missed.
        let (mut last, node) = (self.last.clone(), self.node.clone());
        Box::pin(async move {
            let closed = || Error::Fatal("the embedded state log was closed".into());
            // The sender goes with the node's state machine: closing the node ends the wait.
            last.wait_for(|last| *last >= from)
                .await
                .map_err(|_| closed())?;
            let node = node.upgrade().ok_or_else(closed)?;
            node.read_applied_entries(from, MAX_ENTRIES_PER_PAGE, READ_PAGE_BYTES)
                .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_open_of_the_same_directory_says_it_is_in_use() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("log");
        let first = EmbeddedLog::open(&dir).await.unwrap();
        let err = match EmbeddedLog::open(&dir).await {
            Ok(_) => panic!("a second open of {} was not refused", dir.display()),
            Err(e) => e.to_string(),
        };
        let expected = format!(
            "I/O error: the state log in {} is in use by another process (",
            dir.display()
        );
        assert!(err.starts_with(&expected), "{err}");
        first.close().await.unwrap();
    }
}
