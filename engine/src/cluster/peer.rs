//! One peer process in the cluster: join, play the coordination log, react, watch the next
//! process in the ring, run the slots the replica gives it (DESIGN §6).
//!
//! The loop waits on four things: the next entry of the coordination log (played into the
//! replica with [`Replica::apply`]; the [`reactions`] asked of this process are appended, and
//! its runs of jobs brought in line with the replica, [`super::jobs`]), the failure detector's
//! next deadline (a heartbeat to send, or a `leave_cluster` to append for the watched
//! process), the answers to heartbeats, the ends of its runs (`complete_slot`, `restart_job`
//! or `kill_job` to append), and its runs' batches whose ack trees expired (`restart_job`, to
//! replay them). Every decision is the pure
//! coordination code's; this module only carries it out.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sardonyx_state_log::{
    ClientOptions, ClusterSecret, CoordinationLog, Error as LogError, LogClient, RequestId,
};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::coordination::{
    diff, joining_watched_by, reactions, watched_by, DetectorAction, DetectorConfig, Entry,
    FailureDetector, LogLease, ProcessId, ProcessInfo, Replica, RestartReason,
};
use crate::messaging::{self, MessagingError, Messenger, MessengerConfig};

use super::jobs::{entries_after, JobContext, JobRunner};
use super::view::ClusterView;

/// The pause before asking the coordination log again after an error.
const LOG_RETRY: Duration = Duration::from_millis(100);

/// How a peer process runs.
#[derive(Clone)]
pub struct PeerConfig {
    /// Addresses of log servers (any subset of the log cluster).
    pub log: Vec<String>,
    /// Where to listen for other processes (messages and heartbeats); port 0 picks one.
    pub listen: SocketAddr,
    /// The address other processes dial (default: the address listened on).
    pub advertise: Option<String>,
    /// Virtual peers this process offers (its capacity in slots).
    pub slots: u32,
    /// The cluster secret (log servers and peer processes), if any.
    pub secret: Option<ClusterSecret>,
    /// Heartbeat interval and failure timeout.
    pub detector: DetectorConfig,
    /// Age at which a batch sent to another process and not acknowledged is replayed (its
    /// job's runs restart).
    pub pending_timeout: Duration,
    /// Writes the replica after every entry played, as one JSON line (`{"position", "replica"}`),
    /// to this file (for tests of the time machine and for debugging).
    pub trace_replicas: Option<PathBuf>,
    /// Where the process shows what it has seen of the cluster (its metrics endpoint reads it).
    pub view: Arc<ClusterView>,
    /// The named code of the jobs it runs, and a local directory for their derived state
    /// (dedup filters) and error files; the state log is the log cluster above.
    pub registry: crate::registry::Registry,
    /// The local directory (see `registry`).
    pub data: PathBuf,
    /// Compact a windowed slot's ledger once this many bytes were logged since its snapshot.
    pub compact_after_bytes: u64,
    /// The counters of the runs of jobs in this process.
    pub progress: Arc<crate::runtime::Progress>,
}

impl std::fmt::Debug for PeerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerConfig")
            .field("log", &self.log)
            .field("listen", &self.listen)
            .field("advertise", &self.advertise)
            .field("slots", &self.slots)
            .field("detector", &self.detector)
            .field("data", &self.data)
            .finish_non_exhaustive()
    }
}

/// Why a peer process stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerExit {
    /// It was asked to stop, and left the cluster.
    Stopped,
    /// Another process appended `leave_cluster` for it (it was declared gone) at this position.
    Removed {
        /// The position of the entry.
        position: u64,
    },
    /// It could not reach the log for the failure timeout while it ran slots, stopped them,
    /// and left the cluster once the log answered again (its slots move to the others, and
    /// every process starts a new run): `sardonyx peer` then joins again as a new process.
    CutOff,
}

/// What stops a peer process with an error.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The log cluster refused or could not take a request.
    #[error("coordination log: {0}")]
    Log(#[from] LogError),
    /// The messaging listener could not start.
    #[error("messaging: {0}")]
    Messaging(#[from] MessagingError),
    /// The threads that run jobs could not be started.
    #[error("cannot start the threads that run jobs: {0}")]
    Runtime(#[source] std::io::Error),
    /// The replica trace file could not be written.
    #[error("replica trace {path}: {source}")]
    Trace {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Appends this process's entries, each under its own request id (a retry is applied once).
struct Appender {
    log: Arc<dyn CoordinationLog>,
    client: u64,
    seq: u64,
}

impl Appender {
    async fn append(&mut self, entry: &Entry) -> Result<u64, LogError> {
        self.seq += 1;
        let request = RequestId::new(self.client, self.seq);
        let position = self.log.append_entry(request, entry.encode()).await?;
        tracing::info!(
            entry = entry.name(),
            position,
            "appended to the coordination log"
        );
        Ok(position)
    }
}

/// Runs a peer process until `stop` is cancelled (it then leaves the cluster) or it is removed
/// from the cluster by another process. Prints nothing; logs through `tracing` (`joined the
/// cluster` once in the ring, `watching` on each change of the watched process).
pub async fn run_peer(config: PeerConfig, stop: CancellationToken) -> Result<PeerExit, PeerError> {
    let me = ProcessId(messaging::random_id());
    config.view.set_me(me);
    let mut messaging = MessengerConfig::new(me, config.listen);
    messaging.secret = config.secret.clone();
    messaging.pending_timeout = config.pending_timeout;
    let messenger = Messenger::bind(messaging).await?;
    let address = config
        .advertise
        .clone()
        .unwrap_or_else(|| messenger.local_addr().to_string());
    let client = || {
        LogClient::with_options(
            config.log.clone(),
            ClientOptions {
                secret: config.secret.clone(),
                ..ClientOptions::default()
            },
        )
    };
    // Two clients, so two sets of connections: the coordination log's small requests (entries,
    // the lease's probes) never wait behind the runs' ledger traffic (a slot's recovery reads
    // megabytes), which made a busy process miss its lease.
    let log: Arc<dyn CoordinationLog> = Arc::new(client()?);
    let ledgers = Arc::new(client()?);
    let (ended_tx, mut ended) = mpsc::unbounded_channel();
    let (expired_tx, mut expired) = mpsc::unbounded_channel::<String>();
    let mut runner = JobRunner::new(
        JobContext {
            registry: config.registry.clone(),
            store: ledgers,
            data: config.data.clone(),
            compact_after_bytes: config.compact_after_bytes,
            progress: config.progress.clone(),
        },
        messenger.clone(),
        ended_tx,
        expired_tx,
    )
    .map_err(PeerError::Runtime)?;
    // The runs this process asked to restart for an expired ack tree (once each).
    let mut replays_asked: std::collections::BTreeSet<(crate::coordination::JobId, u64)> =
        Default::default();
    let mut appender = Appender {
        log: log.clone(),
        client: me.0,
        seq: 0,
    };
    let mut trace = match &config.trace_replicas {
        Some(path) => Some((
            path.clone(),
            // Appended to: a process that joins again (after being cut off) goes on writing.
            tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .await
                .map_err(|source| PeerError::Trace {
                    path: path.clone(),
                    source,
                })?,
        )),
        None => None,
    };
    tracing::info!(process = %me, %address, slots = config.slots, "joining the cluster");
    appender
        .append(&Entry::PrepareJoin {
            process: ProcessInfo {
                id: me,
                address,
                slots: config.slots,
            },
        })
        .await?;

    let start = Instant::now();
    let now = || start.elapsed();
    let mut subscription = log.subscribe_entries(1)?;
    let mut replica = Replica::new();
    let mut detector = FailureDetector::new(config.detector);
    let mut log_lost = false;
    let mut in_ring = false;
    let (answered_tx, mut answered) = mpsc::channel::<ProcessId>(16);
    // The lease on the log (DESIGN §6): a process that has not reached the log for the failure
    // timeout stops its runs — its watcher may have declared it gone by then, and the slots
    // may be running elsewhere (whose fences would refuse its writes anyway).
    let mut lease = LogLease::new(config.detector.failure_timeout, now());
    let mut cut_off = false;
    let (reached_tx, mut reached) = mpsc::channel::<Duration>(4);
    let prober = tokio::spawn(probe_log(log.clone(), config.detector, start, reached_tx));
    let mut lease_check = tokio::time::interval(config.detector.heartbeat_interval);
    lease_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let exit = loop {
        let deadline = detector
            .next_deadline()
            .map_or(start + Duration::from_secs(3600), |d| start + d);
        tokio::select! {
            _ = stop.cancelled() => break PeerExit::Stopped,
            next = subscription.next() => {
                let (position, bytes) = match next {
                    Ok(entry) => entry,
                    Err(e) => {
                        // The client retries for its whole retry period before it reports an
                        // error, which is longer than the failure timeout: by now this
                        // process may have been declared gone.
                        if !log_lost {
                            log_lost = true;
                            tracing::error!(
                                error = %e,
                                "cut off from the coordination log: no log server answered for \
                                 longer than the failure timeout, so this process may have been \
                                 declared gone"
                            );
                        }
                        // The subscription resumes where it stopped; do not spin on a
                        // log that answers every request with an error at once.
                        tokio::time::sleep(LOG_RETRY).await;
                        continue;
                    }
                };
                if log_lost {
                    log_lost = false;
                    tracing::info!(position, "the coordination log answers again");
                }
                lease.log_reached(now());
                let entry = match Entry::decode(&bytes) {
                    Ok(entry) => entry,
                    Err(e) => {
                        tracing::warn!(position, error = %e, "skipped an entry that does not decode");
                        continue;
                    }
                };
                let next = replica.apply(&entry, position);
                if let Some(ignored) = next.last_ignored.as_ref().filter(|_| next.ignored > replica.ignored) {
                    tracing::debug!(position, ?ignored, "entry did not apply");
                }
                config.view.played(position, entry.clone(), &next);
                let changes = diff(&replica, &next);
                introduce(&messenger, &next).await;
                for gone in replica.processes.keys().filter(|p| !next.processes.contains_key(p)) {
                    messenger.forget(*gone);
                }
                if let Some((path, file)) = &mut trace {
                    let line = serde_json::json!({"position": position, "replica": &next});
                    let line = format!("{line}\n");
                    file.write_all(line.as_bytes()).await.map_err(|source| PeerError::Trace {
                        path: path.clone(),
                        source,
                    })?;
                }
                let was_in = in_ring;
                in_ring = next.ring.contains(&me);
                if in_ring && !was_in {
                    tracing::info!(process = %me, position, ring = next.ring.len(), "joined the cluster");
                }
                if next.departed.contains(&me) {
                    tracing::error!(process = %me, position, "removed from the cluster by another process");
                    break PeerExit::Removed { position };
                }
                let watched = watched_by(&next, me).or_else(|| joining_watched_by(&next, me));
                if watched != detector.watched() {
                    tracing::info!(process = %me, watched = ?watched.map(|p| p.to_string()), "watching");
                }
                detector.watch(watched, now());
                let to_append = reactions(&changes, &replica, &next, me);
                replica = next;
                for entry in to_append {
                    appender.append(&entry).await?;
                }
                if !cut_off {
                    runner.sync(&replica);
                }
            }
            Some(at) = reached.recv() => {
                lease.log_reached(at);
                if cut_off {
                    // Its runs were stopped mid-way and may not be started again under the
                    // same names (what the others' stopped runs sent could reach them): it
                    // leaves, so that its slots move and every process starts a new run.
                    tracing::error!(
                        "the log answers again after this process was cut off: it leaves the \
                         cluster (its slots move to the others)"
                    );
                    appender.append(&Entry::LeaveCluster { process: me }).await?;
                    break PeerExit::CutOff;
                }
            }
            _ = lease_check.tick() => {
                // Only a process running slots has anything to stop (and a reason to leave).
                if !cut_off && lease.expired(now()) && runner.has_live_runs() {
                    cut_off = true;
                    runner.stop_all();
                    tracing::error!(
                        timeout_ms = config.detector.failure_timeout.as_millis() as u64,
                        "cut off from the log for the failure timeout: this process stops its \
                         slots until it reaches the log again"
                    );
                }
            }
            Some(end) = ended.recv() => {
                let Some(slots) = runner.ended(&end.job, end.version) else {
                    continue; // a superseded run
                };
                let sent = messenger.stats();
                match &end.result {
                    Ok(report) => tracing::info!(
                        job = %end.job, version = end.version, read = report.read,
                        written = report.written, fired = report.fired,
                        duplicates = report.duplicates,
                        messaging_bytes_written = sent.bytes_written,
                        messaging_bytes_read = sent.bytes_read,
                        "this process's run ended: its slots completed"
                    ),
                    Err(e) => tracing::error!(
                        job = %end.job, version = end.version, error = %e,
                        "this process's run failed"
                    ),
                }
                for entry in entries_after(&end, &slots, replica.job(&end.job)) {
                    appender.append(&entry).await?;
                }
            }
            Some(run) = expired.recv() => {
                let Some((job, version)) = runner.run_named(&run) else {
                    continue; // a run that has been stopped since
                };
                if replays_asked.insert((job.clone(), version)) {
                    let entry = Entry::RestartJob {
                        job,
                        version,
                        reason: RestartReason::Expired { process: me },
                    };
                    appender.append(&entry).await?;
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                match detector.tick(now()) {
                    Some(DetectorAction::Heartbeat(target)) => {
                        let messenger = messenger.clone();
                        let answered = answered_tx.clone();
                        let wait = config.detector.failure_timeout;
                        tokio::spawn(async move {
                            let ping = messenger.ping(target);
                            if let Ok(Ok(_)) = tokio::time::timeout(wait, ping).await {
                                let _ = answered.send(target).await;
                            }
                        });
                    }
                    Some(DetectorAction::AppendLeave(target)) => {
                        tracing::warn!(
                            process = %target,
                            timeout_ms = config.detector.failure_timeout.as_millis() as u64,
                            "no answer from the watched process: it leaves the cluster"
                        );
                        appender.append(&Entry::LeaveCluster { process: target }).await?;
                        config.view.leave_appended();
                    }
                    None => {}
                }
            }
            Some(from) = answered.recv() => {
                detector.heartbeat_answered(from, now());
                config.view.heartbeat_answered();
            }
        }
    };
    runner.stop_all();
    prober.abort();
    if exit == PeerExit::Stopped {
        // Leave at once rather than after the watcher's timeout (best effort: the watcher
        // appends the leave anyway if this does not get through).
        let leave = Entry::LeaveCluster { process: me };
        let appended =
            tokio::time::timeout(config.detector.failure_timeout, appender.append(&leave));
        match appended.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not append this process's leave"),
            Err(_) => tracing::warn!("the log did not take this process's leave in time"),
        }
    }
    messenger.shutdown();
    // Its listening port is free again when this returns (a process joining again may bind it).
    let _ = tokio::time::timeout(config.detector.failure_timeout, messenger.stopped()).await;
    Ok(exit)
}

/// Reads the log's last position every heartbeat interval (each read bounded by the failure
/// timeout) and reports when it answered, for the lease.
async fn probe_log(
    log: Arc<dyn CoordinationLog>,
    detector: DetectorConfig,
    start: Instant,
    reached: mpsc::Sender<Duration>,
) {
    let mut tick = tokio::time::interval(detector.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let read = tokio::time::timeout(detector.failure_timeout, log.last_entry_position());
        if let Ok(Ok(_)) = read.await {
            if reached.send(start.elapsed()).await.is_err() {
                return;
            }
        }
    }
}

/// Tells the messenger where every process in (or joining) the cluster listens.
async fn introduce(messenger: &Messenger, replica: &Replica) {
    let infos = replica
        .processes
        .values()
        .map(|p| &p.info)
        .chain(replica.joins.iter().map(|j| &j.process));
    for info in infos {
        if info.id == messenger.process() {
            continue;
        }
        match resolve(&info.address).await {
            Some(addr) => messenger.set_address(info.id, addr),
            None => tracing::warn!(process = %info.id, address = %info.address, "cannot resolve"),
        }
    }
}

/// A `host:port` as a socket address (resolving a host name).
async fn resolve(address: &str) -> Option<SocketAddr> {
    if let Ok(addr) = address.parse() {
        return Some(addr);
    }
    tokio::net::lookup_host(address).await.ok()?.next()
}
