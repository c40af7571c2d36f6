//! One state-log node: an openraft instance over the RocksDB stores, with the group committer
//! that packs concurrent commands (ledger writes and coordination-log appends) into Raft
//! entries. Shared by [`crate::LogServer`] and [`crate::EmbeddedLog`].

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use openraft::error::{CheckIsLeaderError, ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, Config, ServerState, SnapshotPolicy};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use crate::auth::ClusterSecret;
use crate::coordination::{check_entry_size, CoordinationEntry};
use crate::error::{Error, Result};
use crate::raft_net::Network;
use crate::raft_types::{Command, CommandBatch, LogRaft, Outcome};
use crate::store::{open_db, Flusher, LogStore, StateMachineStore};
use crate::types::{CommitStats, LedgerInfo, LedgerRead, RequestId, Role, ServerStatus};

/// Raft and group-commit tuning of a node. The defaults suit a LAN cluster or an embedded node.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Leader heartbeat interval.
    pub heartbeat_interval: Duration,
    /// A follower campaigns after a random timeout in `[min, max)` without heartbeats.
    pub election_timeout: (Duration, Duration),
    /// Build a Raft snapshot (of all ledgers) after this many Raft entries since the last one;
    /// it lets Raft purge its log and bring far-behind nodes up to date.
    pub raft_snapshot_every: u64,
    /// Raft entries kept in the log below the latest Raft snapshot.
    pub raft_logs_to_keep: u64,
    /// Most ledger commands packed into one Raft entry.
    pub max_batch_commands: usize,
    /// Most payload bytes packed into one Raft entry (a single larger command still goes alone).
    pub max_batch_bytes: usize,
    /// Raft entries a node's group committer keeps in flight at once. 1 (the default) batches
    /// the most: every command queued while an entry commits goes into the next one (measured
    /// best on a 2-core machine both embedded and in a 3-node cluster).
    pub max_inflight_batches: usize,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_millis(100),
            election_timeout: (Duration::from_millis(500), Duration::from_millis(1000)),
            raft_snapshot_every: 20_000,
            raft_logs_to_keep: 1_000,
            max_batch_commands: 4096,
            max_batch_bytes: 8 * 1024 * 1024,
            max_inflight_batches: 1,
        }
    }
}

impl Tuning {
    fn raft_config(&self) -> Result<Config> {
        let c = Config {
            cluster_name: "sardonyx-state-log".into(),
            heartbeat_interval: self.heartbeat_interval.as_millis() as u64,
            election_timeout_min: self.election_timeout.0.as_millis() as u64,
            election_timeout_max: self.election_timeout.1.as_millis() as u64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.raft_snapshot_every),
            max_in_snapshot_log_to_keep: self.raft_logs_to_keep,
            ..Default::default()
        };
        c.validate()
            .map_err(|e| Error::InvalidRequest(format!("raft config: {e}")))
    }
}

struct Submission {
    cmd: Command,
    reply: oneshot::Sender<Result<Outcome>>,
}

#[derive(Default)]
struct Counters {
    commands: AtomicU64,
    raft_writes: AtomicU64,
}

/// A running node.
pub(crate) struct Node {
    pub(crate) id: u64,
    pub(crate) raft: LogRaft,
    sm: StateMachineStore,
    submit: Mutex<Option<mpsc::Sender<Submission>>>,
    committer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    flusher: Mutex<Flusher>,
    counters: Arc<Counters>,
    addr: String,
}

impl Node {
    /// Opens the node's storage under `dir` and starts Raft (not yet initialized if new).
    /// Raft connections to other nodes prove `secret` if given.
    pub(crate) async fn open(
        id: u64,
        addr: String,
        dir: &Path,
        tuning: &Tuning,
        secret: Option<ClusterSecret>,
    ) -> Result<Self> {
        let config = Arc::new(tuning.raft_config()?);
        let db = open_db(dir)?;
        let flusher = Flusher::start(db.clone());
        let log_store = LogStore::new(db.clone(), &flusher);
        let sm = StateMachineStore::new(db)?;
        let raft = LogRaft::new(id, config, Network::new(secret), log_store, sm.clone())
            .await
            .map_err(|e| Error::Fatal(format!("starting raft: {e}")))?;
        let (tx, rx) = mpsc::channel(tuning.max_batch_commands.max(1) * 4);
        let counters = Arc::new(Counters::default());
        let committer = tokio::spawn(run_committer(
            raft.clone(),
            rx,
            tuning.clone(),
            counters.clone(),
        ));
        Ok(Self {
            id,
            raft,
            sm,
            submit: Mutex::new(Some(tx)),
            committer: Mutex::new(Some(committer)),
            flusher: Mutex::new(flusher),
            counters,
            addr,
        })
    }

    /// Initializes a pristine cluster with these members; a no-op if already initialized.
    pub(crate) async fn initialize(&self, members: BTreeMap<u64, BasicNode>) -> Result<()> {
        if self.raft.is_initialized().await.map_err(fatal)? {
            return Ok(());
        }
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(Error::Fatal(format!("initialize: {e}"))),
        }
    }

    async fn submit(&self, cmd: Command) -> Result<Outcome> {
        let tx = self
            .submit
            .lock()
            .expect("submit lock")
            .clone()
            .ok_or_else(|| Error::Fatal("node is shut down".into()))?;
        let (reply, rx) = oneshot::channel();
        tx.send(Submission { cmd, reply })
            .await
            .map_err(|_| Error::Fatal("node is shut down".into()))?;
        rx.await
            .map_err(|_| Error::Unavailable("commit abandoned (node shutting down)".into()))?
    }

    /// Appends a record whose checksum was computed by the remote caller; with a `fence`, only
    /// if the ledger's fence is not higher (else [`Error::Fenced`]), raising it to `fence`.
    pub(crate) async fn append_checked(
        &self,
        ledger: String,
        request: RequestId,
        record: Bytes,
        crc: u32,
        fence: Option<u64>,
    ) -> Result<u64> {
        let cmd = Command::Append {
            ledger,
            request,
            record,
            crc,
        };
        match self.submit(cmd.fenced(fence)).await? {
            Outcome::Appended(p) => Ok(p),
            Outcome::Rejected(e) => Err(e),
            Outcome::Snapshotted => Err(Error::Fatal("append answered as snapshot".into())),
        }
    }

    /// Stores a snapshot covering positions `<= covers` and compacts the ledger; with a
    /// `fence`, only if the ledger's fence is not higher (else [`Error::Fenced`]), raising it.
    pub(crate) async fn snapshot_checked(
        &self,
        ledger: String,
        covers: u64,
        bytes: Bytes,
        crc: u32,
        fence: Option<u64>,
    ) -> Result<()> {
        let cmd = Command::Snapshot {
            ledger,
            covers,
            bytes,
            crc,
        };
        match self.submit(cmd.fenced(fence)).await? {
            Outcome::Snapshotted => Ok(()),
            Outcome::Rejected(e) => Err(e),
            Outcome::Appended(_) => Err(Error::Fatal("snapshot answered as append".into())),
        }
    }

    /// Appends an entry to the coordination log (its checksum computed by the caller) and
    /// returns its position once committed. An entry over
    /// [`MAX_ENTRY_BYTES`](crate::MAX_ENTRY_BYTES) is refused here,
    /// before it reaches Raft.
    pub(crate) async fn append_entry_checked(
        &self,
        request: RequestId,
        entry: Bytes,
        crc: u32,
    ) -> Result<u64> {
        check_entry_size(entry.len())?;
        let cmd = Command::AppendEntry {
            request,
            entry,
            crc,
        };
        match self.submit(cmd).await? {
            Outcome::Appended(p) => Ok(p),
            Outcome::Rejected(e) => Err(e),
            Outcome::Snapshotted => Err(Error::Fatal("append answered as snapshot".into())),
        }
    }

    /// Linearizable read of one page of the coordination log (leader only): see
    /// `EntryStore::read_entries`.
    pub(crate) async fn read_entries(
        &self,
        from: u64,
        max: usize,
        budget: usize,
    ) -> Result<Vec<CoordinationEntry>> {
        self.linearize().await?;
        self.read_applied_entries(from, max, budget).await
    }

    /// Linearizable read of `max` entries of the coordination log from `from`, fewer only if it
    /// ends first (leader only): see `EntryStore::read_all_entries`.
    pub(crate) async fn read_all_entries(
        &self,
        from: u64,
        max: usize,
    ) -> Result<Vec<CoordinationEntry>> {
        self.linearize().await?;
        let sm = self.sm.clone();
        tokio::task::spawn_blocking(move || sm.read_all_entries(from, max, usize::MAX))
            .await
            .map_err(|e| Error::Fatal(format!("read task: {e}")))?
    }

    /// Reads the coordination log as applied on this node, without asking a quorum. Safe for
    /// subscriptions: a node applies only committed entries, so this is a prefix of the log.
    pub(crate) async fn read_applied_entries(
        &self,
        from: u64,
        max: usize,
        budget: usize,
    ) -> Result<Vec<CoordinationEntry>> {
        let sm = self.sm.clone();
        tokio::task::spawn_blocking(move || sm.read_entries(from, max, budget))
            .await
            .map_err(|e| Error::Fatal(format!("read task: {e}")))?
    }

    /// Linearizable position of the coordination log's last entry (0: empty; leader only).
    pub(crate) async fn last_entry_position(&self) -> Result<u64> {
        self.linearize().await?;
        Ok(self.sm.last_entry_position())
    }

    /// The coordination log's last position as applied on this node (not linearized).
    pub(crate) fn applied_entry_position(&self) -> u64 {
        self.sm.last_entry_position()
    }

    /// A receiver of the last applied coordination-log position on this node.
    pub(crate) fn watch_last_entry(&self) -> watch::Receiver<u64> {
        self.sm.watch_last_entry()
    }

    /// The long poll of subscriptions: once this node is confirmed leader (so a partitioned
    /// former leader sends its caller elsewhere instead of holding it), waits at most `wait`
    /// until an entry at or after `from` is applied, then reads as
    /// `EntryStore::read_entries`; empty if none came in time.
    pub(crate) async fn wait_entries(
        &self,
        from: u64,
        max: usize,
        budget: usize,
        wait: Duration,
    ) -> Result<Vec<CoordinationEntry>> {
        if from == 0 {
            return Err(Error::InvalidRequest(
                "coordination log positions start at 1".into(),
            ));
        }
        self.linearize().await?;
        let mut last = self.watch_last_entry();
        match tokio::time::timeout(wait, last.wait_for(|last| *last >= from)).await {
            Err(_) => return Ok(Vec::new()),
            Ok(Err(_)) => return Err(Error::Unavailable("the node is shutting down".into())),
            Ok(Ok(_)) => {}
        }
        self.read_applied_entries(from, max, budget).await
    }

    /// Confirms leadership with a quorum and waits until everything committed so far is applied.
    async fn linearize(&self) -> Result<()> {
        match self.raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(Error::NotLeader {
                    leader_id: f.leader_id,
                    leader_addr: f.leader_node.map(|n| n.addr),
                })
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q))) => {
                Err(Error::Unavailable(q.to_string()))
            }
            Err(RaftError::Fatal(f)) => Err(fatal(f)),
        }
    }

    /// Linearizable read of a ledger (leader only).
    pub(crate) async fn read(&self, ledger: &str, from: u64) -> Result<LedgerRead> {
        self.linearize().await?;
        let sm = self.sm.clone();
        let ledger = ledger.to_string();
        tokio::task::spawn_blocking(move || sm.read_ledger(&ledger, from))
            .await
            .map_err(|e| Error::Fatal(format!("read task: {e}")))?
    }

    /// Linearizable read of one page of a ledger (leader only): see
    /// [`StateMachineStore::read_ledger_page`].
    pub(crate) async fn read_page(
        &self,
        ledger: &str,
        from: u64,
        budget: usize,
    ) -> Result<(LedgerRead, bool)> {
        self.linearize().await?;
        let sm = self.sm.clone();
        let ledger = ledger.to_string();
        tokio::task::spawn_blocking(move || sm.read_ledger_page(&ledger, from, budget))
            .await
            .map_err(|e| Error::Fatal(format!("read task: {e}")))?
    }

    /// Linearizable size information of a ledger (leader only).
    pub(crate) async fn info(&self, ledger: &str) -> Result<LedgerInfo> {
        self.linearize().await?;
        self.sm.ledger_info(ledger)
    }

    /// This node's status line and the membership it knows.
    pub(crate) fn status(&self) -> (ServerStatus, Vec<(u64, String)>) {
        let m = self.raft.metrics().borrow().clone();
        let role = match m.state {
            ServerState::Leader => Role::Leader,
            ServerState::Follower => Role::Follower,
            ServerState::Candidate => Role::Candidate,
            ServerState::Learner => Role::Learner,
            ServerState::Shutdown => Role::Unreachable,
        };
        let members = m
            .membership_config
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect();
        (
            ServerStatus {
                id: Some(self.id),
                addr: self.addr.clone(),
                role,
                current_leader: m.current_leader,
                current_term: m.current_term,
                last_log_index: m.last_log_index,
                last_applied: m.last_applied.map(|l| l.index),
                refused: None,
                last_entry_position: Some(self.applied_entry_position()),
            },
            members,
        )
    }

    /// Group-commit counters.
    pub(crate) fn commit_stats(&self) -> CommitStats {
        CommitStats {
            commands: self.counters.commands.load(Ordering::Relaxed),
            raft_writes: self.counters.raft_writes.load(Ordering::Relaxed),
        }
    }

    /// WAL syncs made by this node's log store.
    pub(crate) fn wal_syncs(&self) -> u64 {
        self.flusher
            .lock()
            .expect("flusher lock")
            .syncs
            .load(Ordering::Relaxed)
    }

    /// Waits until this node is the leader (bounded).
    pub(crate) async fn wait_leader(&self, timeout: Duration) -> Result<()> {
        self.raft
            .wait(Some(timeout))
            .state(ServerState::Leader, "wait for leadership")
            .await
            .map(|_| ())
            .map_err(|e| Error::Unavailable(format!("node {} did not become leader: {e}", self.id)))
    }

    /// Stops Raft, the committer and the fsync thread.
    pub(crate) async fn shutdown(&self) -> Result<()> {
        let res = self
            .raft
            .shutdown()
            .await
            .map_err(|e| Error::Fatal(format!("raft shutdown: {e}")));
        self.submit.lock().expect("submit lock").take();
        let committer = self.committer.lock().expect("committer lock").take();
        if let Some(c) = committer {
            let _ = c.await;
        }
        let fsync_thread = self.flusher.lock().expect("flusher lock").begin_stop();
        if let Some(h) = fsync_thread {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
        res
    }

    /// Shuts down and waits (bounded) until every task holding this node or its database has
    /// let go, then drops it, closing RocksDB so the directory can be reopened at once.
    pub(crate) async fn close(self: Arc<Self>) -> Result<()> {
        let res = self.shutdown().await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&self) > 1 || Arc::strong_count(self.sm.db()) > 1 {
            if Instant::now() > deadline {
                return Err(Error::Fatal(
                    "state-log node still referenced 10 s after shutdown".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(self);
        res
    }
}

fn fatal(e: impl std::fmt::Display) -> Error {
    Error::Fatal(e.to_string())
}

/// Maps a failed client write to the crate's error.
fn write_error(e: ClientWriteError<u64, BasicNode>) -> Error {
    match e {
        ClientWriteError::ForwardToLeader(f) => Error::NotLeader {
            leader_id: f.leader_id,
            leader_addr: f.leader_node.map(|n| n.addr),
        },
        ClientWriteError::ChangeMembershipError(e) => Error::Fatal(e.to_string()),
    }
}

/// The group committer: takes every command queued while earlier entries are in flight and
/// submits them as one Raft entry, keeping at most `max_inflight_batches` entries in flight.
async fn run_committer(
    raft: LogRaft,
    mut rx: mpsc::Receiver<Submission>,
    tuning: Tuning,
    counters: Arc<Counters>,
) {
    let slots = Arc::new(Semaphore::new(tuning.max_inflight_batches.max(1)));
    // A command that would have taken a batch past `max_batch_bytes` starts the next one, so an
    // entry is never larger than that or than its single command (and so it always fits in an
    // `AppendEntries` frame).
    let mut carried: Option<Submission> = None;
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let first = match carried.take() {
            Some(s) => s,
            None => match rx.recv().await {
                Some(s) => s,
                None => break,
            },
        };
        let mut bytes = first.cmd.size();
        let mut batch = vec![first];
        while batch.len() < tuning.max_batch_commands && bytes < tuning.max_batch_bytes {
            match rx.try_recv() {
                Ok(s) if bytes + s.cmd.size() > tuning.max_batch_bytes => {
                    carried = Some(s);
                    break;
                }
                Ok(s) => {
                    bytes += s.cmd.size();
                    batch.push(s);
                }
                Err(_) => break,
            }
        }
        let (commands, replies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|s| (s.cmd, s.reply)).unzip();
        counters
            .commands
            .fetch_add(commands.len() as u64, Ordering::Relaxed);
        counters.raft_writes.fetch_add(1, Ordering::Relaxed);
        match raft.client_write_ff(CommandBatch { commands }).await {
            Err(e) => {
                for r in replies {
                    let _ = r.send(Err(fatal(&e)));
                }
            }
            Ok(pending) => {
                tokio::spawn(async move {
                    let _permit = permit;
                    let result = match pending.await {
                        Err(_) => Err(Error::Unavailable(
                            "raft dropped the write (leadership change or shutdown)".into(),
                        )),
                        Ok(Err(e)) => Err(write_error(e)),
                        Ok(Ok(resp)) => Ok(resp.data.outcomes),
                    };
                    match result {
                        Ok(outcomes) if outcomes.len() == replies.len() => {
                            for (r, o) in replies.into_iter().zip(outcomes) {
                                let _ = r.send(Ok(o));
                            }
                        }
                        Ok(outcomes) => {
                            let e = Error::Fatal(format!(
                                "{} outcomes for {} commands",
                                outcomes.len(),
                                replies.len()
                            ));
                            for r in replies {
                                let _ = r.send(Err(e.clone()));
                            }
                        }
                        Err(e) => {
                            for r in replies {
                                let _ = r.send(Err(e.clone()));
                            }
                        }
                    }
                });
            }
        }
    }
}
