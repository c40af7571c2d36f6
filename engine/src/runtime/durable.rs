//! The I/O side of exactly-once state: the job's ledgers in the state log, windowed slots'
//! ledgers and dedup filters, and the inputs' committed positions (DESIGN §5; the record
//! protocol itself is [`crate::state`]).
//!
//! Ledgers of a job with id `J` (a job without `id` is named by a hash of its definition):
//! - `J/meta`: one record per run: the generation and every task's peer count. Its position
//!   (+1) is the run's **epoch**, greater than every earlier run's.
//! - `J/g<gen>/<task>/<peer>`: a windowed slot (see [`crate::state`]).
//! - `J/g<gen>/<task>/<peer>/input`: an input peer's committed positions. A position is
//!   appended only once every segment read before it is fully processed downstream — in
//!   particular once every windowed slot has committed the records of those segments — so
//!   resuming there loses nothing; what is read again is deduplicated by the slots' filters.
//!
//! `--fresh` starts a new generation (new ledger names) and compacts the old one away.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use sardonyx_connectors::Positions;
use sardonyx_state_log::{DedupConfig, DedupFilter, Ledgers, RequestId};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{routing, Progress, RunError};
use crate::job::Job;
use crate::state::{self, FilterMark, FilterPlan, GroupTable, SlotRecord};
use sardonyx_windowing::trigger::Firing;
use sardonyx_windowing::WindowOperator;

/// Where and how a job keeps its exactly-once state.
#[derive(Clone)]
pub struct StateOptions {
    /// The state log (an embedded log or a client of a log cluster).
    pub store: Arc<dyn Ledgers>,
    /// A local directory for the dedup filters (derived state: kept across restarts while it
    /// matches the log, rebuilt from it otherwise).
    pub dir: PathBuf,
    /// Start the job over instead of resuming it.
    pub fresh: bool,
    /// Compact a windowed slot's ledger (snapshot, drop the prefix) once the entries since its
    /// last snapshot exceed this many bytes.
    pub compact_after_bytes: u64,
    /// Shape of each windowed slot's dedup filter (its horizon).
    pub dedup: DedupConfig,
    /// Most gathered batches a windowed slot puts into one ledger record: the batches that
    /// queue up while the slot's previous record commits are merged into its next record (so
    /// the slower the log, the fewer and larger the records). 1: one record per batch.
    pub max_merged_batches: usize,
}

impl std::fmt::Debug for StateOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateOptions")
            .field("dir", &self.dir)
            .field("fresh", &self.fresh)
            .field("compact_after_bytes", &self.compact_after_bytes)
            .field("dedup", &self.dedup)
            .field("max_merged_batches", &self.max_merged_batches)
            .finish_non_exhaustive()
    }
}

impl StateOptions {
    /// State in `store`, filters under `dir`, compaction past 16 MiB, the default dedup horizon,
    /// up to 16 batches per record.
    pub fn new(store: Arc<dyn Ledgers>, dir: impl Into<PathBuf>) -> Self {
        StateOptions {
            store,
            dir: dir.into(),
            fresh: false,
            compact_after_bytes: 16 << 20,
            dedup: DedupConfig::default(),
            max_merged_batches: 16,
        }
    }
}

/// What recovering one windowed slot read and did (for reports and tests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotRecovery {
    /// The slot's ledger.
    pub ledger: String,
    /// Whether a snapshot was read, and the position it covers.
    pub snapshot_position: Option<u64>,
    /// Ledger records visited by the read (each checksummed).
    pub records_scanned: u64,
    /// Bytes read (snapshot + entries).
    pub bytes_read: u64,
    /// Batch records replayed.
    pub batches: u64,
    /// Batch records fenced off (written by a process after a newer one took over).
    pub fenced: u64,
    /// Firings of the last batch synced again.
    pub pending_firings: u64,
    /// How the dedup filter was brought up to date (`None` without deduplication).
    pub filter: Option<FilterOpened>,
    /// Wall time of the recovery, in milliseconds.
    pub millis: u64,
}

/// How a slot's dedup filter was brought up to date with its recovered ledger.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FilterOpened {
    /// The filter found on disk held a prefix of the ledger and was kept (else it was rebuilt
    /// from the snapshot's export and the replayed batches).
    pub reused: bool,
    /// Ids inserted (those of the batches the filter did not hold yet, or all of them).
    pub ids: u64,
}

/// Opens a slot's dedup filter under `dir` and brings it up to date with the ledger just
/// recovered ([`state::filter_plan`]): keeps what it holds if its mark names a replayed batch
/// or the snapshot, else clears it and imports the snapshot's `export`; then inserts the ids of
/// the replayed batches it lacks, marked with the last of them.
fn open_filter(
    dir: &std::path::Path,
    config: DedupConfig,
    ledger: &str,
    export: Option<Vec<u8>>,
    snapshot: Option<(u64, &[u8])>,
    batch_ids: &[(u64, state::Ids)],
    entries: &[(u64, Vec<u8>)],
) -> Result<(DedupFilter, FilterOpened), sardonyx_state_log::Error> {
    let mut f = DedupFilter::open(dir, config)?;
    let mark = f.mark()?.and_then(|m| FilterMark::decode(&m));
    let plan = state::filter_plan(ledger, mark.as_ref(), snapshot, batch_ids, entries);
    let from = match plan {
        FilterPlan::Reuse { from } => from,
        FilterPlan::Rebuild => {
            f.clear()?;
            if let Some(e) = export.filter(|e| !e.is_empty()) {
                f.import(&e)?;
            }
            0
        }
    };
    let rest = &batch_ids[from..];
    if let Some((pos, _)) = rest.last() {
        let i = entries
            .binary_search_by_key(pos, |(p, _)| *p)
            .expect("every replayed batch is an entry read");
        let mark = FilterMark::of_entry(ledger, *pos, &entries[i].1).encode();
        f.insert_batch_marked(
            rest.iter().flat_map(|(_, ids)| ids.iter_keys()),
            Some(&mark),
        )?;
    }
    let opened = FilterOpened {
        reused: matches!(plan, FilterPlan::Reuse { .. }),
        ids: rest.iter().map(|(_, ids)| ids.len() as u64).sum(),
    };
    Ok((f, opened))
}

fn state_error(e: impl std::fmt::Display) -> RunError {
    RunError::State(e.to_string())
}

/// The error of a write to a windowed slot's ledger. A write the log refused because a newer
/// run took the slot over says so: this run is stale (a "zombie") and stops.
fn slot_write_error(e: sardonyx_state_log::Error) -> RunError {
    match e {
        sardonyx_state_log::Error::Fenced {
            ledger,
            fence,
            current,
        } => RunError::State(format!(
            "windowed slot {ledger:?} was taken over by a newer run (epoch {current}): the \
             write of this run (epoch {fence}) was refused, and this run stops"
        )),
        e => state_error(e),
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Meta {
    generation: u64,
    peers: Vec<(String, u64)>,
    windowed: Vec<String>,
    /// How grouped keys were placed on slots ([`routing::ROUTING`]).
    routing: String,
}

/// A meta record written before the key placement was recorded: its keys were placed with
/// std's `DefaultHasher` ([`LEGACY_ROUTING`]).
#[derive(Deserialize)]
struct MetaWithoutRouting {
    generation: u64,
    peers: Vec<(String, u64)>,
    windowed: Vec<String>,
}

/// The placement of meta records that name none.
const LEGACY_ROUTING: &str = "std DefaultHasher";

impl Meta {
    /// Decodes a meta record of this version or of the one before it.
    fn decode(bytes: &[u8]) -> Result<Meta, String> {
        decode::<Meta>(bytes).or_else(|e| {
            decode::<MetaWithoutRouting>(bytes)
                .map(|m| Meta {
                    generation: m.generation,
                    peers: m.peers,
                    windowed: m.windowed,
                    routing: LEGACY_ROUTING.to_owned(),
                })
                .map_err(|_| e)
        })
    }
}

/// The windowed tasks of `meta` with more than one peer: their state and dedup ids are split
/// among slots by key placement (the group key, or the uniqueness id of an ungrouped task).
fn placed_by_key(meta: &Meta) -> Vec<String> {
    meta.peers
        .iter()
        .filter(|(t, n)| *n > 1 && meta.windowed.contains(t))
        .map(|(t, n)| format!("{t}={n}"))
        .collect()
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(v, bincode::config::standard()).expect("in-memory encoding")
}

fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    bincode::serde::decode_from_slice(b, bincode::config::standard())
        .map(|(v, _)| v)
        .map_err(|e| e.to_string())
}

/// A stable name for a job without an `id`: a hash of its JSON form.
fn job_name(job: &Job) -> String {
    match &job.id {
        Some(id) => id.clone(),
        None => {
            let json = serde_json::to_string(job).unwrap_or_default();
            let mut h = std::collections::hash_map::DefaultHasher::new();
            json.hash(&mut h);
            format!("job-{:016x}", h.finish())
        }
    }
}

fn process_nonce() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (t, std::process::id()).hash(&mut h);
    h.finish()
}

/// The job-wide part: which generation, which epoch, where ledgers live.
pub(crate) struct JobState {
    pub options: StateOptions,
    /// True when this run continues an earlier run's state (same generation).
    pub resumed: bool,
    /// `J/g<gen>`.
    pub prefix: String,
    /// This run's epoch (greater than every earlier run's).
    pub epoch: u64,
    nonce: u64,
}

impl JobState {
    /// Reads the job's meta ledger, checks the peer counts of a resumed job, and records this run.
    pub async fn open(
        job: &Job,
        options: StateOptions,
        peers: &BTreeMap<String, usize>,
        windowed: Vec<String>,
    ) -> Result<JobState, RunError> {
        let name = job_name(job);
        let meta_ledger = format!("{name}/meta");
        let store = &options.store;
        let read = store.read(&meta_ledger, 0).await.map_err(state_error)?;
        let last = match read
            .entries
            .last()
            .map(|(p, b)| (*p, b))
            .or(read.snapshot.as_ref().map(|(p, b)| (*p, b)))
        {
            Some((pos, bytes)) => Some(Meta::decode(bytes).map_err(|d| {
                state_error(format!(
                    "corrupt record in ledger {meta_ledger:?} at position {pos}: {d}"
                ))
            })?),
            None => None,
        };
        let peers_now: Vec<(String, u64)> =
            peers.iter().map(|(t, n)| (t.clone(), *n as u64)).collect();
        let generation = match &last {
            None => 0,
            Some(m) if options.fresh => m.generation + 1,
            Some(m) => {
                if m.peers != peers_now {
                    return Err(RunError::State(format!(
                        "job {name:?} was run with other peer counts ({}) than now ({}); its \
                         state cannot be split differently: run it with the same counts, or \
                         start over with --fresh",
                        fmt_peers(&m.peers),
                        fmt_peers(&peers_now)
                    )));
                }
                let split = placed_by_key(m);
                if m.routing != routing::ROUTING && !split.is_empty() {
                    return Err(RunError::State(format!(
                        "job {name:?} was run by a version that placed keys on slots \
                         with another hash ({}; now {}), and its state is split by key ({}): \
                         resumed, keys would be looked up on other slots than their state and \
                         dedup ids. Finish it with that version, or start over with --fresh",
                        m.routing,
                        routing::ROUTING,
                        split.join(", ")
                    )));
                }
                m.generation
            }
        };
        let nonce = process_nonce();
        let meta = Meta {
            generation,
            peers: peers_now,
            windowed,
            routing: routing::ROUTING.to_owned(),
        };
        let bytes = encode(&meta);
        let pos = store
            .append(&meta_ledger, RequestId::new(nonce, 0), bytes.clone())
            .await
            .map_err(state_error)?;
        store
            .snapshot(&meta_ledger, pos, bytes)
            .await
            .map_err(state_error)?;
        let resumed = last.as_ref().is_some_and(|m| m.generation == generation);
        if let Some(old) = last.filter(|m| m.generation != generation) {
            drop_generation(store.as_ref(), &name, &old).await?;
        }
        Ok(JobState {
            resumed,
            prefix: format!("{name}/g{generation}"),
            epoch: pos + 1,
            nonce,
            options,
        })
    }

    /// The request ids of one ledger's appends: a client id unique to this process and ledger.
    fn client(&self, ledger: &str) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        ledger.hash(&mut h);
        self.nonce ^ h.finish()
    }

    fn slot_ledger(&self, task: &str, peer: usize) -> String {
        format!("{}/{task}/{peer}", self.prefix)
    }
}

fn fmt_peers(p: &[(String, u64)]) -> String {
    p.iter()
        .map(|(t, n)| format!("{t}={n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Compacts away every ledger of an old generation (an empty snapshot over its last entry).
async fn drop_generation(store: &dyn Ledgers, name: &str, old: &Meta) -> Result<(), RunError> {
    let mut ledgers = Vec::new();
    for (task, n) in &old.peers {
        for p in 0..*n {
            ledgers.push(format!("{name}/g{}/{task}/{p}/input", old.generation));
            if old.windowed.contains(task) {
                ledgers.push(format!("{name}/g{}/{task}/{p}", old.generation));
            }
        }
    }
    for l in ledgers {
        let info = store.info(&l).await.map_err(state_error)?;
        if info.entries > 0 {
            store
                .snapshot(&l, info.next_position - 1, Vec::new())
                .await
                .map_err(state_error)?;
        }
    }
    Ok(())
}

/// The environment variable of the test-only crash point: `N` makes the process kill itself
/// with SIGKILL right after its `N`-th batch record is committed (before the record's ids reach
/// the dedup filter and its firings are synced), so crash tests can stop a tiny job in the
/// middle deterministically, with no cleanup.
pub const CRASH_AFTER_RECORDS: &str = "SARDONYX_TEST_CRASH_AFTER_RECORDS";

/// The crash point of [`CRASH_AFTER_RECORDS`]: counts committed batch records in this process.
fn crash_point_after_commit() {
    static AFTER: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    static COMMITTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let Some(after) = *AFTER.get_or_init(|| {
        std::env::var(CRASH_AFTER_RECORDS)
            .ok()
            .and_then(|v| v.parse().ok())
    }) else {
        return;
    };
    if COMMITTED.fetch_add(1, Ordering::SeqCst) + 1 == after {
        tracing::warn!(after, "test crash point: killing this process with SIGKILL");
        let sent = std::process::Command::new("kill")
            .args(["-9", &std::process::id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if !sent {
            // No `kill` to run: die at once all the same (SIGABRT, no cleanup either).
            std::process::abort();
        }
        // SIGKILL is on its way; this thread does nothing more.
        loop {
            std::thread::park();
        }
    }
}

/// A batch record being appended ([`SlotLog::begin_commit`]).
pub(crate) struct InFlight {
    append: tokio::task::JoinHandle<Result<u64, RunError>>,
    len: u64,
    crc: u32,
    ids: state::Ids,
}

impl InFlight {
    /// True once the append has finished (committed or failed): [`SlotLog::end_commit`] will
    /// not wait.
    pub fn is_finished(&self) -> bool {
        self.append.is_finished()
    }
}

/// The ids of a committed batch record, for the dedup filter ([`SlotLog::insert_committed`]).
pub(crate) struct Committed {
    ids: state::Ids,
    mark: FilterMark,
}

/// One windowed slot's ledger and dedup filter.
pub(crate) struct SlotLog {
    js: Arc<JobState>,
    ledger: String,
    client: u64,
    seq: u64,
    epoch: u64,
    /// The fence of every write to the ledger: this run's epoch, to which the `Owner` record
    /// raised the ledger's fence (the log refuses it once a newer run has written there).
    fence: u64,
    filter: Option<DedupFilter>,
    /// The group table beside the operator (for snapshots and re-derived firings).
    pub groups: GroupTable,
    last_position: Option<u64>,
    bytes_since_snapshot: u64,
    progress: Arc<Progress>,
}

impl SlotLog {
    /// Takes over a slot: announces this run as its owner (a write fenced with the run's epoch,
    /// which raises the ledger's fence to it, so that older runs can no longer write there),
    /// reads the snapshot and the tail, rebuilds `op` and the dedup filter. Returns the firings
    /// of the last batch to sync again.
    pub async fn open(
        js: Arc<JobState>,
        task: &str,
        peer: usize,
        dedup: bool,
        op: &mut WindowOperator,
        progress: Arc<Progress>,
    ) -> Result<(SlotLog, Vec<Firing>), RunError> {
        let started = Instant::now();
        let ledger = js.slot_ledger(task, peer);
        let store = js.options.store.clone();
        let client = js.client(&ledger);
        let owner = state::encode_record(&SlotRecord::Owner { epoch: js.epoch });
        store
            .append_fenced(&ledger, js.epoch, RequestId::new(client, 0), owner)
            .await
            .map_err(slot_write_error)?;
        let mut read = store.read(&ledger, 0).await.map_err(state_error)?;
        let mut groups = GroupTable::default();
        let snapshot = read.snapshot.as_ref().map(|(p, b)| (*p, b.as_slice()));
        let mut recovered = state::recover(&ledger, op, &mut groups, snapshot, &read.entries)
            .map_err(state_error)?;
        let snapshot = read.snapshot.take();
        let snapshot_position = snapshot.as_ref().map(|(p, _)| *p);
        let mut filter_opened = None;
        let filter = if dedup {
            let dir = js
                .options
                .dir
                .join("filters")
                .join(ledger.replace(['/', '\\', ':'], "_"));
            let config = js.options.dedup;
            let export = recovered.filter_export.take();
            let batch_ids = std::mem::take(&mut recovered.batch_ids);
            let entries = std::mem::take(&mut read.entries);
            let name = ledger.clone();
            let (filter, opened) = tokio::task::spawn_blocking(move || {
                let snapshot = snapshot.as_ref().map(|(p, b)| (*p, b.as_slice()));
                open_filter(&dir, config, &name, export, snapshot, &batch_ids, &entries)
            })
            .await
            .map_err(|e| RunError::Internal(e.to_string()))?
            .map_err(|e| state_error(format!("dedup filter of {ledger}: {e}")))?;
            filter_opened = Some(opened);
            Some(filter)
        } else {
            None
        };
        let report = SlotRecovery {
            ledger: ledger.clone(),
            snapshot_position,
            records_scanned: read.stats.records_scanned,
            bytes_read: read.stats.bytes_read,
            batches: recovered.batches,
            fenced: recovered.fenced,
            pending_firings: recovered.pending.len() as u64,
            filter: filter_opened,
            millis: started.elapsed().as_millis() as u64,
        };
        tracing::info!(?report, "windowed slot recovered");
        progress
            .recoveries
            .lock()
            .expect("recoveries lock")
            .push(report);
        Ok((
            SlotLog {
                ledger,
                client,
                seq: 1,
                epoch: js.epoch.max(recovered.epoch),
                fence: js.epoch,
                filter,
                groups,
                last_position: recovered.last_position,
                bytes_since_snapshot: recovered.entry_bytes,
                js,
                progress,
            },
            recovered.pending,
        ))
    }

    /// Whether the filter has seen each of `keys`, in order, into `answers` (cleared first;
    /// always false without deduplication): one pass over the filter for a whole batch, whose
    /// lookups overlap their cache misses.
    pub fn seen_each<'a, I>(&self, keys: I, answers: &mut Vec<bool>) -> Result<(), RunError>
    where
        I: IntoIterator<Item = &'a [u8]>,
        I::IntoIter: Clone,
    {
        match &self.filter {
            Some(f) => f.contains_each(keys, answers).map_err(state_error),
            None => {
                answers.clear();
                answers.extend(keys.into_iter().map(|_| false));
                Ok(())
            }
        }
    }

    /// The epoch to stamp on records.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Appends one batch record (fenced with this run's epoch) and waits for its commit; then
    /// inserts its ids into the filter.
    pub async fn commit(&mut self, record: state::BatchRecord) -> Result<(), RunError> {
        let inflight = self.begin_commit(record);
        if let Some(c) = self.end_commit(inflight).await? {
            self.insert_committed(c)?;
        }
        Ok(())
    }

    /// Starts appending one batch record (fenced with this run's epoch) on its own task, so the
    /// caller can work while Raft and the fsync run; [`SlotLog::end_commit`] waits for it.
    /// Records are appended in the order they are begun; begin the next one only after this
    /// one has ended (a record's firings are synced before the next record is appended).
    pub fn begin_commit(&mut self, record: state::BatchRecord) -> InFlight {
        self.groups.observe(&record.transitions);
        let bytes = state::encode_batch_record(&record);
        let len = bytes.len() as u64;
        let crc = crc32fast::hash(&bytes);
        let store = self.js.options.store.clone();
        let ledger = self.ledger.clone();
        let (fence, request) = (self.fence, RequestId::new(self.client, self.seq));
        self.seq += 1;
        self.bytes_since_snapshot += len;
        let append = tokio::spawn(async move {
            store
                .append_fenced(&ledger, fence, request, bytes)
                .await
                .map_err(slot_write_error)
        });
        InFlight {
            append,
            len,
            crc,
            ids: record.ids,
        }
    }

    /// Waits for a record begun by [`SlotLog::begin_commit`] to be committed. Returns its ids
    /// for the dedup filter (`None` without deduplication), to insert with
    /// [`SlotLog::insert_committed`] before the ids of any later record.
    pub async fn end_commit(&mut self, inflight: InFlight) -> Result<Option<Committed>, RunError> {
        let InFlight {
            append,
            len,
            crc,
            ids,
        } = inflight;
        let pos = append
            .await
            .map_err(|e| RunError::Internal(format!("append of {}: {e}", self.ledger)))??;
        self.last_position = Some(pos);
        crash_point_after_commit();
        let p = &self.progress;
        p.logged_records.fetch_add(1, Ordering::Relaxed);
        p.logged_bytes.fetch_add(len, Ordering::Relaxed);
        p.logged_segments
            .fetch_add(ids.len() as u64, Ordering::Relaxed);
        Ok(self.filter.is_some().then(|| Committed {
            ids,
            mark: FilterMark {
                ledger: self.ledger.clone(),
                position: pos,
                crc,
            },
        }))
    }

    /// Inserts a committed record's ids into the dedup filter, with the mark naming the record.
    pub fn insert_committed(&mut self, committed: Committed) -> Result<(), RunError> {
        if let Some(f) = &mut self.filter {
            f.insert_batch_marked(committed.ids.iter_keys(), Some(&committed.mark.encode()))
                .map_err(state_error)?;
        }
        Ok(())
    }

    /// Most gathered batches to merge into one record ([`StateOptions::max_merged_batches`]).
    pub fn max_merged_batches(&self) -> usize {
        self.js.options.max_merged_batches.max(1)
    }

    /// True if the entries since the last snapshot exceed the threshold, counting records
    /// begun but not yet ended: [`SlotLog::maybe_compact`] after they end would compact.
    pub fn compaction_due(&self) -> bool {
        self.bytes_since_snapshot > self.js.options.compact_after_bytes
    }

    /// Writes a snapshot (fenced with this run's epoch) and drops the ledger's prefix once the
    /// entries since the last snapshot exceed the threshold. Call only after the last batch's
    /// firings were synced.
    pub async fn maybe_compact(&mut self, op: &WindowOperator) -> Result<(), RunError> {
        let Some(pos) = self.last_position else {
            return Ok(());
        };
        if !self.compaction_due() {
            return Ok(());
        }
        let filter = match &self.filter {
            Some(f) => f.export().map_err(state_error)?,
            None => Vec::new(),
        };
        self.groups.retain(|_, key| {
            op.windows()
                .iter()
                .any(|w| !op.extents(&w.id, key).is_empty())
        });
        let bytes = state::encode_snapshot_ref(&state::SlotSnapshotRef {
            epoch: self.epoch,
            operator: op.snapshot_ref(),
            groups: &self.groups.sorted(),
            filter: &filter,
        });
        drop(filter);
        let len = bytes.len();
        let mark = FilterMark::of_entry(&self.ledger, pos, &bytes);
        self.js
            .options
            .store
            .snapshot_fenced(&self.ledger, self.fence, pos, bytes)
            .await
            .map_err(slot_write_error)?;
        if let Some(f) = &mut self.filter {
            // The filter holds what the snapshot covers: name the snapshot, so that a restart
            // before the next batch still keeps the filter.
            f.insert_batch_marked(std::iter::empty::<&[u8]>(), Some(&mark.encode()))
                .map_err(state_error)?;
        }
        tracing::info!(ledger = %self.ledger, covers = pos, bytes = len, "slot compacted");
        self.progress.snapshots.fetch_add(1, Ordering::Relaxed);
        self.bytes_since_snapshot = 0;
        Ok(())
    }
}

/// An input peer's committed positions in the state log: each record is the peer's whole
/// committed [`Positions`] (every partition it reads) at the time it was written.
pub(crate) struct InputLog {
    js: Arc<JobState>,
    ledger: String,
}

impl InputLog {
    /// The input peer's ledger.
    pub fn new(js: Arc<JobState>, task: &str, peer: usize) -> Self {
        let ledger = format!("{}/input", js.slot_ledger(task, peer));
        InputLog { js, ledger }
    }

    /// The positions to resume from: per partition, the greatest one recorded (each was
    /// committed when written, so the greatest is). Empty when nothing was recorded.
    pub async fn resume_positions(&self) -> Result<Positions, RunError> {
        let read = self
            .js
            .options
            .store
            .read(&self.ledger, 0)
            .await
            .map_err(state_error)?;
        let mut best = Positions::new();
        let snap = read.snapshot.iter().filter(|(_, b)| !b.is_empty());
        for (pos, bytes) in snap.chain(read.entries.iter()) {
            let ps: Positions = decode(bytes).map_err(|d| {
                state_error(format!(
                    "corrupt record in ledger {:?} at position {pos}: {d}",
                    self.ledger
                ))
            })?;
            ps.iter().for_each(|p| best.advance(p));
        }
        Ok(best)
    }

    /// Appends every committed positions it is told of (skipping superseded ones while an
    /// append is in flight) until the sender is dropped; compacts every 256 appends.
    pub async fn write_loop(self, mut rx: watch::Receiver<Positions>) -> Result<(), RunError> {
        let store = self.js.options.store.clone();
        let client = self.js.client(&self.ledger);
        let mut seq = 0_u64;
        let mut written = rx.borrow().clone();
        loop {
            let closed = rx.changed().await.is_err();
            let current = rx.borrow_and_update().clone();
            if current != written && !current.is_empty() {
                let bytes = encode(&current);
                let pos = store
                    .append(&self.ledger, RequestId::new(client, seq), bytes.clone())
                    .await
                    .map_err(state_error)?;
                seq += 1;
                written = current;
                if seq.is_multiple_of(256) {
                    store
                        .snapshot(&self.ledger, pos, bytes)
                        .await
                        .map_err(state_error)?;
                }
            }
            if closed {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::builder::JobBuilder;
    use sardonyx_state_log::EmbeddedLog;
    use sardonyx_windowing::{aggregation, Map, Value, WindowSpec};

    fn operator() -> WindowOperator {
        WindowOperator::new(
            vec![WindowSpec::global("all", aggregation::count())],
            vec![],
        )
        .unwrap()
    }

    fn count(op: &WindowOperator) -> Value {
        op.extents("all", &Value::Null)
            .first()
            .map_or(Value::Null, |v| v.state.clone())
    }

    /// A run of the job: its state (a new epoch) and the slot `count/0` taken over.
    async fn take_over(
        store: &Arc<dyn Ledgers>,
        dir: &std::path::Path,
    ) -> Result<(SlotLog, WindowOperator), RunError> {
        let job = JobBuilder::new().id("fencing").build();
        let mut options = StateOptions::new(store.clone(), dir);
        options.compact_after_bytes = 0;
        let peers = BTreeMap::from([("count".to_owned(), 1)]);
        let js = JobState::open(&job, options, &peers, vec!["count".into()]).await?;
        let mut op = operator();
        let (slot, _) = SlotLog::open(
            Arc::new(js),
            "count",
            0,
            true,
            &mut op,
            Arc::new(Progress::default()),
        )
        .await?;
        Ok((slot, op))
    }

    /// State written before key placement was specified (std's `DefaultHasher`) cannot be
    /// resumed where it is split by key: keys would be looked for on other slots. Where it is
    /// not split (one peer per windowed task), placement does not matter and the run goes on,
    /// recording the placement it uses.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn state_placed_with_the_old_hash_is_not_resumed_where_keys_are_split() {
        #[derive(Serialize)]
        struct OldMeta {
            generation: u64,
            peers: Vec<(String, u64)>,
            windowed: Vec<String>,
        }
        use crate::job::TaskSpec;
        let dir = tempfile::tempdir().unwrap();
        let log = EmbeddedLog::open(dir.path().join("log")).await.unwrap();
        let store: Arc<dyn Ledgers> = Arc::new(log.clone());
        let job = |id: &str| {
            JobBuilder::new()
                .id(id)
                .edge("read", "count")
                .task(TaskSpec::input("read", "sardonyx/jsonl"))
                .task(TaskSpec::function("count", "sardonyx/identity").group_by_key("candidate"))
                .build()
        };
        let open = |id: &'static str, n: usize| {
            let (store, dir) = (store.clone(), dir.path().join(id));
            async move {
                let peers = BTreeMap::from([("count".to_owned(), n), ("read".to_owned(), 1)]);
                let options = StateOptions::new(store, dir);
                JobState::open(&job(id), options, &peers, vec!["count".into()]).await
            }
        };
        for (i, (id, n)) in [("split", 3_u64), ("whole", 1)].into_iter().enumerate() {
            let old = OldMeta {
                generation: 0,
                peers: vec![("count".into(), n), ("read".into(), 1)],
                windowed: vec!["count".into()],
            };
            let ledger = format!("{id}/meta");
            store
                .append(&ledger, RequestId::new(7, i as u64), encode(&old))
                .await
                .unwrap();
        }
        let err = open("split", 3)
            .await
            .err()
            .expect("a resume across hashes");
        assert_eq!(
            err.to_string(),
            "state log: job \"split\" was run by a version that placed keys on slots \
             with another hash (std DefaultHasher; now xxh3-64/seed-0/canonical-v1/jump), and \
             its state is split by key (count=3): resumed, keys would be looked up on other \
             slots than their state and dedup ids. Finish it with that version, or start over \
             with --fresh"
        );
        let whole = open("whole", 1).await.unwrap();
        assert!(whole.resumed);
        let read = store.read("whole/meta", 0).await.unwrap();
        let (_, last) = read.snapshot.expect("each run snapshots its meta record");
        assert_eq!(Meta::decode(&last).unwrap().routing, routing::ROUTING);
        // --fresh starts a new generation under the new placement.
        let peers = BTreeMap::from([("count".to_owned(), 3), ("read".to_owned(), 1)]);
        let mut options = StateOptions::new(store.clone(), dir.path().join("split"));
        options.fresh = true;
        let fresh = JobState::open(&job("split"), options, &peers, vec!["count".into()])
            .await
            .unwrap();
        assert_eq!((fresh.resumed, fresh.prefix.as_str()), (false, "split/g1"));
    }

    /// One batch of new votes, through the operator and into the slot, as the runtime does.
    async fn batch(
        slot: &mut SlotLog,
        op: &mut WindowOperator,
        ids: std::ops::Range<i64>,
    ) -> Result<(), RunError> {
        let mut record = state::BatchRecord {
            epoch: slot.epoch(),
            ..Default::default()
        };
        let mut values = Vec::new();
        for id in ids {
            let mut s = Map::new();
            s.insert("vote_id", id);
            let step = op.on_segment(&s, &Value::Null).unwrap();
            record.transitions.extend(step.transitions);
            values.push(Value::Int(id));
        }
        record.ids = state::Ids::from_values(&values);
        slot.commit(record).await
    }

    fn assert_refused(result: Result<(), RunError>, ledger: &str) {
        let err = result.expect_err("a stale run's write was accepted");
        assert_eq!(
            err.to_string(),
            format!(
                "state log: windowed slot {ledger:?} was taken over by a newer run (epoch 2): \
                 the write of this run (epoch 1) was refused, and this run stops"
            )
        );
    }

    /// Run A owns the slot; run B takes it over; A, still running (a zombie), can neither
    /// append nor compact (a snapshot of A's state would replace B's `Owner` record and A's
    /// fenced batches); B's state, and a later recovery, count every vote once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stale_run_can_neither_append_nor_compact_after_a_takeover() {
        let dir = tempfile::tempdir().unwrap();
        let log = EmbeddedLog::open(dir.path().join("log")).await.unwrap();
        let store: Arc<dyn Ledgers> = Arc::new(log.clone());
        // Each run on its own machine: its own directory for dedup filters.
        let (mut a, mut op_a) = take_over(&store, &dir.path().join("a")).await.unwrap();
        assert_eq!((a.fence, a.epoch()), (1, 1));
        batch(&mut a, &mut op_a, 0..3).await.unwrap();
        batch(&mut a, &mut op_a, 3..5).await.unwrap();

        let (mut b, mut op_b) = take_over(&store, &dir.path().join("b")).await.unwrap();
        assert_eq!((b.fence, b.epoch()), (2, 2));
        assert_eq!(count(&op_b), Value::Int(5));
        let ledger = b.ledger.clone();

        // The zombie's next batch and its compaction are refused by the log itself.
        assert_refused(batch(&mut a, &mut op_a, 5..8).await, &ledger);
        assert_eq!(
            count(&op_a),
            Value::Int(8),
            "the zombie's own state went on"
        );
        assert_refused(a.maybe_compact(&op_a).await, &ledger);
        // So is a stale run taking the slot over again (its `Owner` record).
        drop(a);
        let stale = JobState {
            options: StateOptions::new(store.clone(), dir.path().join("a")),
            resumed: true,
            prefix: "fencing/g0".into(),
            epoch: 1,
            nonce: 77,
        };
        let reopened = SlotLog::open(
            Arc::new(stale),
            "count",
            0,
            true,
            &mut operator(),
            Arc::new(Progress::default()),
        )
        .await;
        assert_refused(reopened.map(|_| ()), &ledger);

        // The new owner goes on; nothing of the zombie's refused writes is in the ledger.
        batch(&mut b, &mut op_b, 100..102).await.unwrap();
        let read = store.read(&ledger, 0).await.unwrap();
        let mut op = operator();
        let snapshot = read.snapshot.as_ref().map(|(p, b)| (*p, b.as_slice()));
        let recovered = state::recover(
            &ledger,
            &mut op,
            &mut GroupTable::default(),
            snapshot,
            &read.entries,
        )
        .unwrap();
        assert_eq!((count(&op), recovered.fenced), (Value::Int(7), 0));
        // It compacts, and goes on.
        b.maybe_compact(&op_b).await.unwrap();
        batch(&mut b, &mut op_b, 102..103).await.unwrap();
        assert_eq!(count(&op_b), Value::Int(8));
        let info = store.info(&ledger).await.unwrap();
        assert_eq!(info.fence, 2);
        drop(b);

        // A later run recovers exactly B's state: 5 votes of A before the takeover, 3 of B.
        let (c, op_c) = take_over(&store, &dir.path().join("c")).await.unwrap();
        assert_eq!(count(&op_c), Value::Int(8));
        assert_eq!(c.fence, 3);
        drop(c);
        drop(store);
        log.close().await.unwrap();
    }
}
