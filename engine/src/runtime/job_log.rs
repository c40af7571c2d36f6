//! The I/O side of exactly-once state: the job's ledgers in the state log, windowed slots'
//! ledgers and dedup filters, and the inputs' committed positions (DESIGN §5; the record
//! protocol itself is [`crate::slot`]).
//!
//! Ledgers of a job with id `J` (a job without `id` is named by a hash of its definition):
//! - `J/meta`: one record per run: the generation and every task's peer count. Its position
//!   (+1) is the run's **epoch**, greater than every earlier run's.
//! - `J/g<gen>/<task>/<peer>`: a windowed slot (see [`crate::slot`]).
//! - `J/g<gen>/<task>/<peer>/input`: an input peer's committed positions. A position is
//!   appended only once every segment read before it is fully processed downstream — in
//!   particular once every windowed slot has committed the records of those segments — so
//!   resuming there loses nothing; what is read again is deduplicated by the slots' filters.
//!
//! `--fresh` starts a new generation (new ledger names) and compacts the old one away.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;

use sardonyx_state_log::{DedupConfig, Ledgers, RequestId};
use serde::{Deserialize, Serialize};

use super::error::RunError;
use super::routing;
use crate::division::Division;
use crate::job::Job;
use crate::slot::{self};

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

/// The error of an operation of the state log on `ledger`.
pub(super) fn log_error(ledger: &str) -> impl FnOnce(sardonyx_state_log::Error) -> RunError + '_ {
    move |source| RunError::Log {
        ledger: ledger.to_owned(),
        source,
    }
}

/// The error of a write to a windowed slot's ledger. A write the log refused because a newer
/// run took the slot over says so: this run is stale (a "zombie") and stops.
pub(super) fn slot_write_error(
    ledger: &str,
) -> impl FnOnce(sardonyx_state_log::Error) -> RunError + '_ {
    move |e| match e {
        sardonyx_state_log::Error::Fenced {
            ledger,
            fence,
            current,
        } => RunError::Fenced {
            ledger,
            fence,
            current,
        },
        e => log_error(ledger)(e),
    }
}

/// A record of `ledger` at `position` that does not decode.
pub(super) fn corrupt(ledger: &str, position: u64, detail: impl std::fmt::Display) -> RunError {
    RunError::Corrupt(slot::StateError::Corrupt {
        ledger: ledger.to_owned(),
        position,
        detail: detail.to_string(),
    })
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(super) struct Meta {
    generation: u64,
    peers: Vec<(String, u64)>,
    windowed: Vec<String>,
    /// How grouped keys were placed on slots ([`routing::placement`]).
    routing: String,
    /// Per windowed task, `(task, layout, slots)`: the slots' ledgers are those of the layout
    /// (0: `g<gen>/<task>/<peer>`; each rescale the next, `g<gen>/<task>/L<layout>/<peer>`).
    layouts: Vec<(String, u64, u64)>,
    /// Rescales not finished: `(task, old layout, old slots)`, whose ledgers the new slots
    /// recover from until each has written its first snapshot; then they are retired.
    retiring: Vec<(String, u64, u64)>,
}

/// A meta record written before rescaling (no layouts: every windowed task in layout 0).
#[derive(Deserialize)]
pub(super) struct MetaWithoutLayouts {
    generation: u64,
    peers: Vec<(String, u64)>,
    windowed: Vec<String>,
    routing: String,
}

/// A meta record written before the key placement was recorded: its keys were placed with
/// std's `DefaultHasher` ([`LEGACY_ROUTING`]).
#[derive(Deserialize)]
pub(super) struct MetaWithoutRouting {
    generation: u64,
    peers: Vec<(String, u64)>,
    windowed: Vec<String>,
}

/// The placement of meta records that name none.
pub(super) const LEGACY_ROUTING: &str = "std DefaultHasher";

impl Meta {
    /// Decodes a meta record of this version or of one of the two before it.
    pub(super) fn decode(bytes: &[u8]) -> Result<Meta, String> {
        let first_layouts = |peers: &[(String, u64)], windowed: &[String]| {
            peers
                .iter()
                .filter(|(t, _)| windowed.contains(t))
                .map(|(t, n)| (t.clone(), 0, *n))
                .collect()
        };
        decode::<Meta>(bytes).or_else(|e| {
            decode::<MetaWithoutLayouts>(bytes)
                .map(|m| Meta {
                    layouts: first_layouts(&m.peers, &m.windowed),
                    generation: m.generation,
                    peers: m.peers,
                    windowed: m.windowed,
                    routing: m.routing,
                    retiring: Vec::new(),
                })
                .or_else(|_| {
                    decode::<MetaWithoutRouting>(bytes).map(|m| Meta {
                        layouts: first_layouts(&m.peers, &m.windowed),
                        generation: m.generation,
                        peers: m.peers,
                        windowed: m.windowed,
                        routing: LEGACY_ROUTING.to_owned(),
                        retiring: Vec::new(),
                    })
                })
                .map_err(|_| e)
        })
    }

    /// The layout and slot count of windowed task `task`.
    fn layout(&self, task: &str) -> Option<(u64, u64)> {
        self.layouts
            .iter()
            .find(|(t, ..)| t == task)
            .map(|(_, l, n)| (*l, *n))
    }
}

/// The windowed tasks of `meta` with more than one peer: their state and dedup ids are split
/// among slots by key placement (the group key, or the uniqueness id of an ungrouped task).
pub(super) fn placed_by_key(meta: &Meta) -> Vec<String> {
    meta.peers
        .iter()
        .filter(|(t, n)| *n > 1 && meta.windowed.contains(t))
        .map(|(t, n)| format!("{t}={n}"))
        .collect()
}

pub(super) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(v, bincode::config::standard()).expect("in-memory encoding")
}

pub(super) fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    bincode::serde::decode_from_slice(b, bincode::config::standard())
        .map(|(v, _)| v)
        .map_err(|e| e.to_string())
}

/// A stable name for a job without an `id`: a hash of its JSON form.
pub(super) fn job_name(job: &Job) -> String {
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

pub(super) fn process_nonce() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (t, std::process::id()).hash(&mut h);
    h.finish()
}

/// A job's place in the state log for this run: its generation, this run's epoch, and where
/// its ledgers live.
pub(super) struct JobLog {
    pub options: StateOptions,
    /// True when this run continues an earlier run's state (same generation).
    pub resumed: bool,
    /// `J/g<gen>`.
    pub prefix: String,
    /// This run's epoch (greater than every earlier run's).
    pub epoch: u64,
    /// This process's client id for the meta ledger's request ids.
    pub(super) nonce: u64,
    /// The job's number of key groups.
    pub key_groups: usize,
    /// The meta record of this run, and per task being rescaled, the new slots that have not
    /// yet written their first snapshot.
    rescales: tokio::sync::Mutex<Rescales>,
    /// The job's meta ledger.
    meta_ledger: String,
    /// One rescaled slot at a time replays old ledgers ([`super::rescale::gather`]): each
    /// replay holds a whole old slot's state, and side by side they would add up.
    pub(super) gather_permit: tokio::sync::Semaphore,
    /// Per windowed task, its ledgers' layouts (current and past) and key-group divisions.
    ledgers: BTreeMap<String, TaskLedgers>,
    /// Whether a cluster placed this run ([`JobLog::open_placed`]): its layouts come from the
    /// cluster's replica, and a finished rescale retires the past layouts' ledgers without a
    /// new meta record.
    placed: bool,
}

/// Where a windowed task's state is: its current layout (the number in its ledgers' names,
/// `g<gen>/<task>/<peer>` for 0, else `g<gen>/<task>/L<layout>/<peer>`) with the division of
/// its key groups among those slots, and the layouts before it whose ledgers may still hold
/// state its slots gather (oldest first; empty unless the task was re-divided).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskLedgers {
    /// The current layout and its division.
    pub current: (u64, Division),
    /// The past layouts and their divisions, oldest first.
    pub past: Vec<(u64, Division)>,
}

/// The rescales of a run still waiting for new slots' first snapshots.
struct Rescales {
    meta: Meta,
    pending: BTreeMap<String, usize>,
    /// The next request id of this process's meta appends.
    seq: u64,
}

/// Why a resumed job may run with its peer counts as they are now, or the error that refuses
/// it. A windowed task with grouped windows is rescaled; a task without state may change
/// freely; an input (its positions are per peer) or a windowed task whose state is not split
/// by group key may not.
fn check_peer_change(
    job: &Job,
    name: &str,
    last: &Meta,
    peers_now: &[(String, u64)],
) -> Result<Vec<(String, u64, u64)>, RunError> {
    let refused = || RunError::PeersChanged {
        job: name.to_owned(),
        was: fmt_peers(&last.peers),
        now: fmt_peers(peers_now),
    };
    let was: BTreeMap<&str, u64> = last.peers.iter().map(|(t, n)| (t.as_str(), *n)).collect();
    let now: BTreeMap<&str, u64> = peers_now.iter().map(|(t, n)| (t.as_str(), *n)).collect();
    if !was.keys().eq(now.keys()) {
        return Err(refused());
    }
    let mut rescaled = Vec::new();
    for (task, &n) in &now {
        let old = was[task];
        if old == n {
            continue;
        }
        let spec = job.task(task).ok_or_else(refused)?;
        let cannot = |reason: String| RunError::CannotRescale {
            job: name.to_owned(),
            task: (*task).to_owned(),
            was: old,
            now: n,
            reason,
        };
        if spec.kind == crate::job::TaskKind::Input {
            return Err(cannot(
                "an input's committed positions are kept per peer".to_owned(),
            ));
        }
        let Some((layout, _)) = last.layout(task) else {
            continue; // no state: nothing to re-divide
        };
        if spec.group_by_key.is_none() && spec.group_by_fn.is_none() {
            return Err(cannot(
                "its windows are not grouped (group_by_key or group_by_fn), so each slot's \
                 state is an aggregate of whatever ids hashed to it and cannot be re-divided"
                    .to_owned(),
            ));
        }
        if let Some((_, _, from)) = last.retiring.iter().find(|(t, ..)| t == task) {
            return Err(cannot(format!(
                "its rescale from {from} peers to {old} has not finished (a run stopped before \
                 every new slot wrote its first snapshot): run it with {old} peers first"
            )));
        }
        rescaled.push(((*task).to_owned(), layout, old));
    }
    Ok(rescaled)
}

/// The checks of a resumed job against the meta record of its last run: the same placement of
/// keys (where its state is split by key), and peer counts its state can follow
/// ([`check_peer_change`]). Returns the tasks to rescale: `(task, old layout, old slots)`.
fn check_resume(
    job: &Job,
    name: &str,
    last: &Meta,
    peers_now: &[(String, u64)],
    placement: &str,
) -> Result<Vec<(String, u64, u64)>, RunError> {
    let split = placed_by_key(last);
    if last.routing != placement && !split.is_empty() {
        return Err(RunError::PlacementChanged {
            job: name.to_owned(),
            was: last.routing.clone(),
            now: placement.to_owned(),
            split: split.join(", "),
        });
    }
    check_peer_change(job, name, last, peers_now)
}

/// The meta record of a job's last run (its meta ledger's last entry, or its snapshot), if any.
async fn last_meta(store: &dyn Ledgers, meta_ledger: &str) -> Result<Option<Meta>, RunError> {
    let read = store
        .read(meta_ledger, 0)
        .await
        .map_err(log_error(meta_ledger))?;
    let last = read
        .entries
        .last()
        .map(|(p, b)| (*p, b))
        .or(read.snapshot.as_ref().map(|(p, b)| (*p, b)));
    last.map(|(pos, bytes)| Meta::decode(bytes).map_err(|d| corrupt(meta_ledger, pos, d)))
        .transpose()
}

/// What a run of `job` (with these peer counts) would do with the state in `store`, without
/// writing anything: `None` if the job has no state there, else a one-line summary (resumed,
/// and which tasks would be rescaled); the errors are those the run would stop with.
pub(super) async fn resume_check(
    job: &Job,
    store: &dyn Ledgers,
    peers: &BTreeMap<String, usize>,
) -> Result<Option<String>, RunError> {
    let name = job_name(job);
    let Some(last) = last_meta(store, &format!("{name}/meta")).await? else {
        return Ok(None);
    };
    let peers_now: Vec<(String, u64)> = peers.iter().map(|(t, n)| (t.clone(), *n as u64)).collect();
    let placement = routing::placement(job.key_groups());
    let rescaled = check_resume(job, &name, &last, &peers_now, &placement)?;
    let mut summary = format!(
        "resumes the state of job {name:?} (generation {})",
        last.generation
    );
    for (task, _, from) in rescaled {
        let to = peers.get(&task).copied().unwrap_or_default();
        summary.push_str(&format!(
            ", rescaling task {task:?} from {from} to {to} peers"
        ));
    }
    Ok(Some(summary))
}

impl JobLog {
    /// Reads the job's meta ledger, checks the peer counts of a resumed job (a changed count of
    /// a grouped windowed task starts its rescale), and records this run.
    pub async fn open(
        job: &Job,
        options: StateOptions,
        peers: &BTreeMap<String, usize>,
        windowed: Vec<String>,
    ) -> Result<JobLog, RunError> {
        let name = job_name(job);
        let meta_ledger = format!("{name}/meta");
        let store = &options.store;
        let last = last_meta(store.as_ref(), &meta_ledger).await?;
        let peers_now: Vec<(String, u64)> =
            peers.iter().map(|(t, n)| (t.clone(), *n as u64)).collect();
        let placement = routing::placement(job.key_groups());
        let mut layouts: Vec<(String, u64, u64)> = peers_now
            .iter()
            .filter(|(t, _)| windowed.contains(t))
            .map(|(t, n)| (t.clone(), 0, *n))
            .collect();
        let mut retiring = Vec::new();
        let generation = match &last {
            None => 0,
            Some(m) if options.fresh => m.generation + 1,
            Some(m) => {
                let rescaled = check_resume(job, &name, m, &peers_now, &placement)?;
                for (task, layout, _) in &mut layouts {
                    if let Some((l, _)) = m.layout(task) {
                        let moved = rescaled.iter().any(|(t, ..)| t == task);
                        *layout = if moved { l + 1 } else { l };
                    }
                }
                retiring = m.retiring.clone();
                retiring.extend(rescaled);
                m.generation
            }
        };
        let nonce = process_nonce();
        let meta = Meta {
            generation,
            peers: peers_now,
            windowed,
            routing: placement,
            layouts,
            retiring,
        };
        let bytes = encode(&meta);
        let pos = store
            .append(&meta_ledger, RequestId::new(nonce, 0), bytes.clone())
            .await
            .map_err(log_error(&meta_ledger))?;
        store
            .snapshot(&meta_ledger, pos, bytes)
            .await
            .map_err(log_error(&meta_ledger))?;
        let resumed = last.as_ref().is_some_and(|m| m.generation == generation);
        if let Some(old) = last.filter(|m| m.generation != generation) {
            drop_generation(store.as_ref(), &name, &old).await?;
        }
        let pending = meta
            .retiring
            .iter()
            .map(|(t, ..)| (t.clone(), meta.layout(t).map_or(0, |(_, n)| n as usize)))
            .collect();
        for (task, layout, from) in &meta.retiring {
            let to = meta.layout(task).map_or(0, |(_, n)| n);
            tracing::info!(%task, from, to, old_layout = layout, "rescaling a windowed task");
        }
        Ok(JobLog {
            resumed,
            prefix: format!("{name}/g{generation}"),
            epoch: pos + 1,
            nonce,
            key_groups: job.key_groups(),
            ledgers: ledgers_of(&meta, job.key_groups()),
            placed: false,
            rescales: tokio::sync::Mutex::new(Rescales {
                meta,
                pending,
                seq: 1,
            }),
            meta_ledger,
            gather_permit: tokio::sync::Semaphore::new(1),
            options,
        })
    }

    /// Opens a run a cluster placed: the layouts of its windowed tasks are the replica's
    /// (`ledgers`), not derived from the meta ledger, and nothing is refused (the replica
    /// decided the slot counts). The run's **epoch is its `version`** (the position of the
    /// coordination entry that started it), the same in every process of the run: they fence
    /// the past layouts' ledgers they gather from side by side, and a run of an older version
    /// (a smaller epoch) can no longer write where a newer one fenced. The meta record is
    /// appended fenced with the version too, so a process that opens an older version after a
    /// newer one opened gets [`RunError::Fenced`]. (A job's ledgers written by `sardonyx run`,
    /// whose epochs are meta positions, are not meant to be continued by a cluster.)
    pub async fn open_placed(
        job: &Job,
        options: StateOptions,
        peers: &BTreeMap<String, usize>,
        ledgers: BTreeMap<String, TaskLedgers>,
        version: u64,
    ) -> Result<JobLog, RunError> {
        let name = job_name(job);
        let meta_ledger = format!("{name}/meta");
        let store = &options.store;
        let last = last_meta(store.as_ref(), &meta_ledger).await?;
        let generation = last.as_ref().map_or(0, |m| m.generation);
        let meta = Meta {
            generation,
            peers: peers.iter().map(|(t, n)| (t.clone(), *n as u64)).collect(),
            windowed: ledgers.keys().cloned().collect(),
            routing: routing::placement(job.key_groups()),
            layouts: ledgers
                .iter()
                .map(|(t, l)| (t.clone(), l.current.0, l.current.1.slots() as u64))
                .collect(),
            retiring: ledgers
                .iter()
                .flat_map(|(t, l)| {
                    l.past
                        .iter()
                        .map(|(id, d)| (t.clone(), *id, d.slots() as u64))
                })
                .collect(),
        };
        let nonce = process_nonce();
        let bytes = encode(&meta);
        let at = store
            .append_fenced(
                &meta_ledger,
                version,
                RequestId::new(nonce, 0),
                bytes.clone(),
            )
            .await
            .map_err(slot_write_error(&meta_ledger))?;
        store
            .snapshot_fenced(&meta_ledger, version, at, bytes)
            .await
            .map_err(slot_write_error(&meta_ledger))?;
        for (task, l) in ledgers.iter().filter(|(_, l)| !l.past.is_empty()) {
            tracing::info!(
                %task,
                layout = l.current.0,
                slots = l.current.1.slots(),
                past_layouts = ?l.past.iter().map(|(id, _)| id).collect::<Vec<_>>(),
                "a re-divided windowed task: its new slots gather their first state"
            );
        }
        Ok(JobLog {
            resumed: last.is_some(),
            prefix: format!("{name}/g{generation}"),
            epoch: version,
            nonce,
            key_groups: job.key_groups(),
            ledgers,
            placed: true,
            rescales: tokio::sync::Mutex::new(Rescales {
                meta,
                pending: BTreeMap::new(),
                seq: 1,
            }),
            meta_ledger,
            gather_permit: tokio::sync::Semaphore::new(1),
            options,
        })
    }

    /// A run of job `name` (generation 0, one layout) with this epoch, without reading or
    /// writing its meta ledger: for tests of what a stale run may still write.
    #[cfg(test)]
    pub(super) fn stale(options: StateOptions, name: &str, epoch: u64, nonce: u64) -> JobLog {
        let meta = Meta {
            generation: 0,
            peers: Vec::new(),
            windowed: Vec::new(),
            routing: routing::placement(crate::key_groups::DEFAULT_KEY_GROUPS),
            layouts: Vec::new(),
            retiring: Vec::new(),
        };
        JobLog {
            options,
            resumed: true,
            prefix: format!("{name}/g0"),
            epoch,
            nonce,
            key_groups: crate::key_groups::DEFAULT_KEY_GROUPS,
            rescales: tokio::sync::Mutex::new(Rescales {
                meta,
                pending: BTreeMap::new(),
                seq: 1,
            }),
            meta_ledger: format!("{name}/meta"),
            gather_permit: tokio::sync::Semaphore::new(1),
            ledgers: BTreeMap::new(),
            placed: false,
        }
    }

    /// The request ids of one ledger's appends: a client id unique to this process and ledger.
    pub(super) fn client(&self, ledger: &str) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        ledger.hash(&mut h);
        self.nonce ^ h.finish()
    }

    /// The ledger of slot `peer` of `task` (an input peer's positions are under it).
    pub(super) fn slot_ledger(&self, task: &str, peer: usize) -> String {
        let layout = self.ledgers.get(task).map_or(0, |l| l.current.0);
        layout_ledger(&self.prefix, task, layout, peer as u64)
    }

    /// The division of windowed task `task`'s key groups among its current slots.
    pub(super) fn division(&self, task: &str) -> Division {
        self.ledgers.get(task).map_or_else(
            || Division::contiguous(1, self.key_groups),
            |l| l.current.1.clone(),
        )
    }

    /// The past layouts of `task` its slots gather their first state from, if it is being
    /// rescaled (oldest first, never empty).
    pub(super) fn past(&self, task: &str) -> Option<&[(u64, Division)]> {
        self.ledgers
            .get(task)
            .map(|l| l.past.as_slice())
            .filter(|p| !p.is_empty())
    }

    /// The ledger of slot `peer` of `task` in layout `layout`.
    pub(super) fn old_slot_ledger(&self, task: &str, layout: u64, peer: u64) -> String {
        layout_ledger(&self.prefix, task, layout, peer)
    }

    /// A new slot of `task` (being rescaled) has written its first snapshot: once every new slot
    /// has, the rescale is finished and the past layouts' ledgers are retired. A run of
    /// `sardonyx run` counts its own slots and records the end in a new meta record; a placed
    /// run has only some of the slots, so it reads whether every slot's ledger has a snapshot
    /// (the last of the processes to write one sees them all), and the cluster's replica keeps
    /// the past layouts, which are never read again once a newer one has gathered everywhere
    /// ([`crate::division::sources`]).
    pub(super) async fn slot_rescaled(&self, task: &str) -> Result<(), RunError> {
        if self.placed {
            return self.retire_if_gathered(task).await;
        }
        let mut r = self.rescales.lock().await;
        let Some(left) = r.pending.get_mut(task) else {
            return Ok(());
        };
        *left = left.saturating_sub(1);
        if *left > 0 {
            return Ok(());
        }
        r.pending.remove(task);
        let Some(i) = r.meta.retiring.iter().position(|(t, ..)| t == task) else {
            return Ok(());
        };
        let (_, layout, slots) = r.meta.retiring.remove(i);
        let bytes = encode(&r.meta);
        let store = &self.options.store;
        let request = RequestId::new(self.nonce, r.seq);
        r.seq += 1;
        let pos = store
            .append(&self.meta_ledger, request, bytes.clone())
            .await
            .map_err(log_error(&self.meta_ledger))?;
        store
            .snapshot(&self.meta_ledger, pos, bytes)
            .await
            .map_err(log_error(&self.meta_ledger))?;
        let old: Vec<String> = (0..slots)
            .map(|p| self.old_slot_ledger(task, layout, p))
            .collect();
        drop_ledgers(store.as_ref(), &old).await?;
        tracing::info!(%task, old_slots = slots, "rescale finished: the old slots' ledgers are retired");
        Ok(())
    }

    /// A placed run's end of a rescale: if every current slot of `task` has a snapshot, the
    /// past layouts' ledgers are dropped (again, harmlessly, if another process did).
    async fn retire_if_gathered(&self, task: &str) -> Result<(), RunError> {
        let Some(ledgers) = self.ledgers.get(task).filter(|l| !l.past.is_empty()) else {
            return Ok(());
        };
        let store = &self.options.store;
        for peer in 0..ledgers.current.1.slots() {
            let ledger = self.slot_ledger(task, peer);
            let info = store.info(&ledger).await.map_err(log_error(&ledger))?;
            if info.snapshot_position.is_none() {
                return Ok(());
            }
        }
        let old: Vec<String> = ledgers
            .past
            .iter()
            .flat_map(|(layout, d)| {
                (0..d.slots() as u64).map(|p| self.old_slot_ledger(task, *layout, p))
            })
            .collect();
        drop_ledgers(store.as_ref(), &old).await?;
        tracing::info!(%task, past_layouts = ledgers.past.len(), "rescale finished: the past layouts' ledgers are retired");
        Ok(())
    }
}

/// The ledgers of each windowed task of `meta` (a run of `sardonyx run`: contiguous divisions,
/// at most one past layout).
fn ledgers_of(meta: &Meta, key_groups: usize) -> BTreeMap<String, TaskLedgers> {
    meta.layouts
        .iter()
        .map(|(task, layout, slots)| {
            let past = meta
                .retiring
                .iter()
                .filter(|(t, ..)| t == task)
                .map(|(_, l, n)| (*l, Division::contiguous(*n as usize, key_groups)))
                .collect();
            let current = (*layout, Division::contiguous(*slots as usize, key_groups));
            (task.clone(), TaskLedgers { current, past })
        })
        .collect()
}

/// `J/g<gen>/<task>/<peer>` in layout 0, `J/g<gen>/<task>/L<layout>/<peer>` after.
fn layout_ledger(prefix: &str, task: &str, layout: u64, peer: u64) -> String {
    match layout {
        0 => format!("{prefix}/{task}/{peer}"),
        l => format!("{prefix}/{task}/L{l}/{peer}"),
    }
}

pub(super) fn fmt_peers(p: &[(String, u64)]) -> String {
    p.iter()
        .map(|(t, n)| format!("{t}={n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Compacts away every ledger of an old generation (an empty snapshot over its last entry).
pub(super) async fn drop_generation(
    store: &dyn Ledgers,
    name: &str,
    old: &Meta,
) -> Result<(), RunError> {
    let prefix = format!("{name}/g{}", old.generation);
    let mut ledgers = Vec::new();
    for (task, n) in &old.peers {
        for p in 0..*n {
            ledgers.push(format!("{}/input", layout_ledger(&prefix, task, 0, p)));
        }
        if let Some((layout, n)) = old.layout(task) {
            ledgers.extend((0..n).map(|p| layout_ledger(&prefix, task, layout, p)));
        }
    }
    for (task, layout, n) in &old.retiring {
        ledgers.extend((0..*n).map(|p| layout_ledger(&prefix, task, *layout, p)));
    }
    drop_ledgers(store, &ledgers).await
}

/// Empties `ledgers` (a snapshot of nothing over their last entry).
async fn drop_ledgers(store: &dyn Ledgers, ledgers: &[String]) -> Result<(), RunError> {
    for l in ledgers {
        let info = store.info(l).await.map_err(log_error(l))?;
        if info.entries > 0 {
            store
                .snapshot(l, info.next_position - 1, Vec::new())
                .await
                .map_err(log_error(l))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::builder::JobBuilder;
    use sardonyx_state_log::EmbeddedLog;

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
                JobLog::open(&job(id), options, &peers, vec!["count".into()]).await
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
            "state log: job \"split\" was run with keys placed on slots another way (std \
             DefaultHasher; now xxh3-64/seed-0/canonical-v1/key-groups/contiguous/256), and its \
             state is split by key (count=3): resumed, keys would be looked up on other slots \
             than their state and dedup ids. Run it with the key_groups it was run with, finish \
             it with the version that wrote it, or start over with --fresh"
        );
        let whole = open("whole", 1).await.unwrap();
        assert!(whole.resumed);
        let read = store.read("whole/meta", 0).await.unwrap();
        let (_, last) = read.snapshot.expect("each run snapshots its meta record");
        assert_eq!(
            Meta::decode(&last).unwrap().routing,
            routing::placement(256)
        );
        // --fresh starts a new generation under the new placement.
        let peers = BTreeMap::from([("count".to_owned(), 3), ("read".to_owned(), 1)]);
        let mut options = StateOptions::new(store.clone(), dir.path().join("split"));
        options.fresh = true;
        let fresh = JobLog::open(&job("split"), options, &peers, vec!["count".into()])
            .await
            .unwrap();
        assert_eq!((fresh.resumed, fresh.prefix.as_str()), (false, "split/g1"));
    }

    /// The number of key groups is part of the placement: state split by key under 256 key
    /// groups is not resumed under 512 (some keys would move to other slots), and is resumed
    /// under 256 again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn state_placed_with_other_key_groups_is_not_resumed_where_keys_are_split() {
        use crate::job::TaskSpec;
        let dir = tempfile::tempdir().unwrap();
        let log = EmbeddedLog::open(dir.path().join("log")).await.unwrap();
        let store: Arc<dyn Ledgers> = Arc::new(log.clone());
        let open = |key_groups: usize| {
            let job = JobBuilder::new()
                .id("votes")
                .key_groups(key_groups)
                .edge("read", "count")
                .task(TaskSpec::input("read", "sardonyx/jsonl"))
                .task(TaskSpec::function("count", "sardonyx/identity").group_by_key("candidate"))
                .build();
            let peers = BTreeMap::from([("count".to_owned(), 2), ("read".to_owned(), 1)]);
            let options = StateOptions::new(store.clone(), dir.path().join("votes"));
            async move { JobLog::open(&job, options, &peers, vec!["count".into()]).await }
        };
        assert!(!open(256).await.unwrap().resumed);
        let err = open(512).await.err().expect("a resume across key groups");
        assert_eq!(
            err.to_string(),
            "state log: job \"votes\" was run with keys placed on slots another way \
             (xxh3-64/seed-0/canonical-v1/key-groups/contiguous/256; now \
             xxh3-64/seed-0/canonical-v1/key-groups/contiguous/512), and its state is split by \
             key (count=2): resumed, keys would be looked up on other slots than their state \
             and dedup ids. Run it with the key_groups it was run with, finish it with the \
             version that wrote it, or start over with --fresh"
        );
        assert!(open(256).await.unwrap().resumed);
    }

    /// A placed run's epoch is its version, the same in every process of it; a process that
    /// opens an older version after a newer one opened is fenced.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn placed_runs_take_their_version_as_epoch_and_older_versions_are_fenced() {
        use crate::job::TaskSpec;
        let dir = tempfile::tempdir().unwrap();
        let log = EmbeddedLog::open(dir.path().join("log")).await.unwrap();
        let store: Arc<dyn Ledgers> = Arc::new(log.clone());
        let job = JobBuilder::new()
            .id("placed")
            .edge("read", "count")
            .task(TaskSpec::input("read", "sardonyx/jsonl"))
            .task(TaskSpec::function("count", "sardonyx/identity").group_by_key("candidate"))
            .build();
        let open = |version: u64| {
            let (job, store) = (job.clone(), store.clone());
            let options = StateOptions::new(store, dir.path().join("placed"));
            let peers = BTreeMap::from([("count".to_owned(), 3), ("read".to_owned(), 1)]);
            let grown = crate::key_groups::reassign(&crate::key_groups::contiguous(2, 256), 3);
            let ledgers = BTreeMap::from([(
                "count".to_owned(),
                TaskLedgers {
                    current: (version, Division::from_owners(3, &grown)),
                    past: vec![(0, Division::contiguous(2, 256))],
                },
            )]);
            async move { JobLog::open_placed(&job, options, &peers, ledgers, version).await }
        };
        let first = open(7).await.unwrap();
        let second = open(7).await.unwrap();
        assert_eq!((first.epoch, second.epoch), (7, 7));
        assert!(second.resumed);
        assert_eq!(first.slot_ledger("count", 2), "placed/g0/count/L7/2");
        assert_eq!(
            first.division("count").ranges_of(2),
            vec![86..128, 213..256]
        );
        assert_eq!(first.past("count").map(<[_]>::len), Some(1));
        assert!(first.past("read").is_none());
        match open(5).await {
            Err(RunError::Fenced { fence, current, .. }) => assert_eq!((fence, current), (5, 7)),
            other => panic!("an older version opened: {:?}", other.map(|l| l.epoch)),
        }
    }
}
