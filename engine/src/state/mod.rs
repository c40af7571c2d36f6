//! Exactly-once state of windowed tasks: the ledger protocol, sans-I/O (DESIGN §5).
//!
//! Every windowed task slot (task + peer index) owns one **ledger** in the state log. This module
//! defines what goes into it and how a slot is rebuilt from it; the runtime does the I/O.
//!
//! **Records.** Per batch a peer appends one [`SlotRecord::Batch`] (batches that queued while
//! the previous record committed are merged into one): the uniqueness ids of the
//! batch's new segments, the operator [`Transition`]s of the whole batch in the order they were
//! made (segments, watermark, timer, firings and their refinement resets), and the greatest input
//! offset of every input the batch covers. The append is one atomic ledger entry and returns
//! only once committed on a quorum; only then are firings synced and the batch acknowledged.
//!
//! **Owners and fencing.** A process taking over a slot first appends
//! [`SlotRecord::Owner`] with its epoch (greater than every earlier epoch of the job), then reads
//! the ledger. Fencing works on both sides:
//! - *Write side* (the runtime): the `Owner` record, every batch record and every compaction
//!   snapshot are fenced writes of the state log (`Ledgers::append_fenced`/`snapshot_fenced`)
//!   with the run's epoch. The `Owner` record raises the ledger's fence to that epoch, and the
//!   log refuses, atomically in its replicated state machine, every later write of an older
//!   epoch: a stale process still running after a newer run took over (a "zombie") can neither
//!   append to the slot nor replace its prefix with a snapshot of its own state; the refusal
//!   stops that process's run with an error naming the ledger and both epochs.
//! - *Read side* ([`recover`]): replay skips batch records of an epoch lower than the greatest
//!   owner seen before them. It covers ledgers written before the log had fences and is a
//!   second line of defence: such a record is fenced off now and in every later recovery.
//!
//! **Pending firings.** A peer syncs a batch's firings before it appends its next record, so
//! only the firings of the *last* batch record of a ledger can be unsynced after a crash.
//! [`recover`] re-derives them (window, trigger, group, bounds, the state before refinement) so
//! the runtime syncs them again with event `recovered`: sync side effects are at-least-once.
//!
//! **Snapshots.** [`SlotSnapshot`] holds the operator's snapshot, the group table, the dedup
//! filter's export and the greatest epoch; it covers the ledger up to a position and lets the
//! log drop the entries before it (a fenced write too: only the current owner compacts).

use std::collections::HashMap;
use std::io::{BufWriter, Read, Write};

use sardonyx_state_log::decode_bounded;
use sardonyx_windowing::trigger::{FireEvent, Firing};
use sardonyx_windowing::{Snapshot, Transition, Value, WindowKind, WindowOperator};
use serde::{Deserialize, Serialize};

/// Why a slot could not be recovered.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum StateError {
    /// A ledger entry or snapshot could not be decoded or does not fit the operator.
    #[error("corrupt record in ledger {ledger:?} at position {position}: {detail}")]
    Corrupt {
        /// The ledger.
        ledger: String,
        /// The entry's position (for a snapshot: the position it covers).
        position: u64,
        /// What is wrong.
        detail: String,
    },
}

/// The uniqueness ids of a batch's new segments, compactly: integer ids are delta-encoded
/// (bincode varints make consecutive ids one byte each), anything else as canonical bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ids {
    /// Integer ids, each stored as the difference from the previous one (the first from 0).
    Ints(Vec<i64>),
    /// Canonical id bytes ([`id_key`]).
    Keys(Vec<Vec<u8>>),
}

impl Default for Ids {
    fn default() -> Self {
        Ids::Ints(Vec::new())
    }
}

/// The canonical bytes of a uniqueness id value, as stored in the dedup filter.
pub fn id_key(v: &Value) -> Vec<u8> {
    let mut k = Vec::new();
    id_key_into(v, &mut k);
    k
}

/// Writes [`id_key`]`(v)` into `out` (cleared first), reusing its allocation.
pub fn id_key_into(v: &Value, out: &mut Vec<u8>) {
    out.clear();
    match v {
        Value::Int(i) => out.extend_from_slice(&int_key(*i)),
        Value::UInt(u) => {
            out.push(b'u');
            out.extend_from_slice(&u.to_be_bytes());
        }
        Value::Str(s) => {
            out.reserve(s.len() + 1);
            out.push(b's');
            out.extend_from_slice(s.as_bytes());
        }
        other => {
            use std::io::Write;
            out.push(b'j');
            write!(out, "{other}").expect("writing into memory cannot fail");
        }
    }
}

fn int_key(i: i64) -> [u8; 9] {
    let mut k = [b'i'; 9];
    k[1..].copy_from_slice(&i.to_be_bytes());
    k
}

/// One id's canonical bytes ([`id_key`]), as [`Ids::iter_keys`] gives them: inline for
/// integer ids, borrowed otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKey<'a> {
    /// An integer id's key.
    Int([u8; 9]),
    /// Any other id's key.
    Bytes(&'a [u8]),
}

impl AsRef<[u8]> for IdKey<'_> {
    fn as_ref(&self) -> &[u8] {
        match self {
            IdKey::Int(k) => k,
            IdKey::Bytes(b) => b,
        }
    }
}

impl Ids {
    /// Builds the id list of a batch from its id values.
    pub fn from_values<'a>(values: impl IntoIterator<Item = &'a Value>) -> Ids {
        let values: Vec<&Value> = values.into_iter().collect();
        if values.iter().all(|v| matches!(v, Value::Int(_))) {
            let mut prev = 0_i64;
            let deltas = values
                .iter()
                .map(|v| {
                    let Value::Int(i) = v else { unreachable!() };
                    let d = i.wrapping_sub(prev);
                    prev = *i;
                    d
                })
                .collect();
            Ids::Ints(deltas)
        } else {
            Ids::Keys(values.into_iter().map(id_key).collect())
        }
    }

    /// The canonical keys of the ids, in batch order.
    pub fn keys(&self) -> Vec<Vec<u8>> {
        self.iter_keys().map(|k| k.as_ref().to_vec()).collect()
    }

    /// The canonical keys of the ids, in batch order, without allocating.
    pub fn iter_keys(&self) -> impl ExactSizeIterator<Item = IdKey<'_>> + '_ {
        let (deltas, keys): (&[i64], &[Vec<u8>]) = match self {
            Ids::Ints(d) => (d, &[]),
            Ids::Keys(k) => (&[], k),
        };
        let mut prev = 0_i64;
        let ints = deltas.iter().map(move |d| {
            prev = prev.wrapping_add(*d);
            IdKey::Int(int_key(prev))
        });
        let bytes = keys.iter().map(|k| IdKey::Bytes(k));
        ExactChain(ints, bytes)
    }

    /// Number of ids.
    pub fn len(&self) -> usize {
        match self {
            Ids::Ints(d) => d.len(),
            Ids::Keys(k) => k.len(),
        }
    }

    /// True if there are no ids.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Chains two exact-size iterators (std's `Chain` is not `ExactSizeIterator`).
struct ExactChain<A, B>(A, B);

impl<T, A: Iterator<Item = T>, B: Iterator<Item = T>> Iterator for ExactChain<A, B> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        self.0.next().or_else(|| self.1.next())
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        let (a, b) = (self.0.size_hint(), self.1.size_hint());
        (a.0 + b.0, a.1.zip(b.1).map(|(x, y)| x + y))
    }
}

impl<T, A: ExactSizeIterator<Item = T>, B: ExactSizeIterator<Item = T>> ExactSizeIterator
    for ExactChain<A, B>
{
}

/// One batch of a windowed slot, as logged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchRecord {
    /// The epoch of the process that wrote it.
    pub epoch: u64,
    /// Ids of the segments newly applied.
    pub ids: Ids,
    /// Every operator transition of the batch, in order.
    pub transitions: Vec<Transition>,
    /// `(input slot, greatest offset)` of the input batches this batch derives from
    /// (informational: inputs resume from their own position ledgers).
    pub inputs: Vec<(u32, u64)>,
}

impl BatchRecord {
    /// True when the record would change nothing (no need to log it).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty() && self.transitions.is_empty()
    }
}

/// An entry of a windowed slot's ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SlotRecord {
    /// A process with this epoch took over the slot.
    Owner {
        /// The new owner's epoch.
        epoch: u64,
    },
    /// One batch.
    Batch(BatchRecord),
}

/// A compaction snapshot of a windowed slot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotSnapshot {
    /// The greatest owner epoch seen up to the covered position.
    pub epoch: u64,
    /// The operator's complete state.
    pub operator: Snapshot,
    /// The group table (group id → key), for re-deriving firings.
    pub groups: Vec<(u32, Value)>,
    /// The dedup filter's export (empty without deduplication).
    pub filter: Vec<u8>,
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes a ledger entry.
pub fn encode_record(r: &SlotRecord) -> Vec<u8> {
    bincode::serde::encode_to_vec(r, config()).expect("encoding into memory cannot fail")
}

/// [`SlotRecord`] by reference, for encoding without a copy (same variants, same bytes).
#[derive(Serialize)]
enum SlotRecordRef<'a> {
    #[allow(dead_code)]
    Owner {
        epoch: u64,
    },
    Batch(&'a BatchRecord),
}

/// Encodes `SlotRecord::Batch(record)` without copying the record.
pub fn encode_batch_record(record: &BatchRecord) -> Vec<u8> {
    bincode::serde::encode_to_vec(SlotRecordRef::Batch(record), config())
        .expect("encoding into memory cannot fail")
}

/// Decodes a ledger entry.
pub fn decode_record(bytes: &[u8]) -> Result<SlotRecord, String> {
    match decode_bounded::<SlotRecord>(bytes) {
        Ok((r, n)) if n == bytes.len() => Ok(r),
        Ok((_, n)) => Err(format!("{} trailing bytes", bytes.len() - n)),
        Err(e) => Err(e.to_string()),
    }
}

/// [`SlotSnapshot`] by reference (same fields, same bytes), so that a compaction encodes the
/// operator state and the group table without copying them first.
#[derive(Serialize)]
pub struct SlotSnapshotRef<'a> {
    /// The greatest owner epoch seen up to the covered position.
    pub epoch: u64,
    /// The operator's complete state.
    pub operator: &'a Snapshot,
    /// The group table (group id → key), sorted by id.
    pub groups: &'a [(u32, &'a Value)],
    /// The dedup filter's export (empty without deduplication).
    pub filter: &'a [u8],
}

/// Encodes a snapshot.
pub fn encode_snapshot(s: &SlotSnapshot) -> Vec<u8> {
    let groups: Vec<(u32, &Value)> = s.groups.iter().map(|(g, k)| (*g, k)).collect();
    encode_snapshot_ref(&SlotSnapshotRef {
        epoch: s.epoch,
        operator: &s.operator,
        groups: &groups,
        filter: &s.filter,
    })
}

/// First byte of a snapshot compressed with zstd (the rest is one zstd frame of the bincode
/// encoding). An uncompressed snapshot (written before compression) starts with the epoch as a
/// bincode varint, whose first byte is at most 254, so the two never mix up.
const ZSTD_SNAPSHOT: u8 = 0xFF;

/// zstd level of snapshots. Level 1 packs a session window's snapshot (Q4 of the vote benchmark:
/// 3.0 MB) 2.5× at about 250 MB/s; every copy of it on its way through Raft and RocksDB shrinks
/// with it, and those copies were the peak of such a job's resident memory.
const SNAPSHOT_ZSTD_LEVEL: i32 = 1;

/// Buffer between the bincode encoder (many small writes) and the zstd stream.
const SNAPSHOT_BUFFER_BYTES: usize = 64 << 10;

/// Encodes a snapshot given by reference: the bytes of [`encode_snapshot`]. The bincode
/// encoding is streamed through zstd, so the uncompressed bytes are never held whole.
pub fn encode_snapshot_ref(s: &SlotSnapshotRef<'_>) -> Vec<u8> {
    const FAILED: &str = "compressing into memory cannot fail";
    let mut z = zstd::stream::Encoder::new(vec![ZSTD_SNAPSHOT], SNAPSHOT_ZSTD_LEVEL).expect(FAILED);
    {
        let mut w = BufWriter::with_capacity(SNAPSHOT_BUFFER_BYTES, &mut z);
        bincode::serde::encode_into_std_write(s, &mut w, config()).expect(FAILED);
        w.flush().expect(FAILED);
    }
    z.finish().expect(FAILED)
}

/// Most bytes a snapshot may decompress to. A zstd frame of a few bytes can claim gigabytes;
/// the decompressed bytes are read into a buffer that grows with what actually comes out, up to
/// this. (A snapshot travels in one frame of at most 127 MiB compressed; window state and dedup
/// filters compress about 2.5×.)
pub const MAX_SNAPSHOT_DECOMPRESSED_BYTES: u64 = 4 << 30;

/// Decodes a snapshot (compressed, or uncompressed as written before compression). Safe on any
/// bytes: an error, never a panic, and no allocation sized by a length the bytes declare before
/// it is checked ([`decode_bounded`]).
pub fn decode_snapshot(bytes: &[u8]) -> Result<SlotSnapshot, String> {
    let Some(frame) = bytes.strip_prefix(&[ZSTD_SNAPSHOT]) else {
        return decode_bounded::<SlotSnapshot>(bytes)
            .map(|(s, _)| s)
            .map_err(|e| e.to_string());
    };
    let z = zstd::stream::Decoder::new(frame).map_err(|e| format!("zstd: {e}"))?;
    let mut plain = Vec::new();
    z.take(MAX_SNAPSHOT_DECOMPRESSED_BYTES + 1)
        .read_to_end(&mut plain)
        .map_err(|e| format!("zstd: {e}"))?;
    if plain.len() as u64 > MAX_SNAPSHOT_DECOMPRESSED_BYTES {
        return Err(format!(
            "the snapshot decompresses to more than {MAX_SNAPSHOT_DECOMPRESSED_BYTES} bytes"
        ));
    }
    match decode_bounded::<SlotSnapshot>(&plain) {
        Ok((snapshot, n)) if n == plain.len() => Ok(snapshot),
        Ok(_) => Err("trailing bytes after the snapshot".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// The group table of an operator (id → key), kept beside it by watching
/// [`Transition::Group`]s, so a firing can be re-derived from a logged [`Transition::Fired`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupTable(HashMap<u32, Value>);

impl GroupTable {
    /// Notes the group ids interned by `transitions`.
    pub fn observe<'a>(&mut self, transitions: impl IntoIterator<Item = &'a Transition>) {
        for t in transitions {
            if let Transition::Group { id, key } = t {
                self.0.insert(*id, key.clone());
            }
        }
    }

    /// The table as a sorted list (for snapshots).
    pub fn to_vec(&self) -> Vec<(u32, Value)> {
        self.sorted()
            .into_iter()
            .map(|(g, k)| (g, k.clone()))
            .collect()
    }

    /// The table as a list sorted by id, by reference ([`SlotSnapshotRef::groups`]).
    pub fn sorted(&self) -> Vec<(u32, &Value)> {
        let mut v: Vec<(u32, &Value)> = self.0.iter().map(|(g, k)| (*g, k)).collect();
        v.sort_unstable_by_key(|(g, _)| *g);
        v
    }

    /// Keeps only the groups for which `keep(id, key)` is true (in place: a compaction drops
    /// the groups no window holds any more without building a second table).
    pub fn retain(&mut self, mut keep: impl FnMut(u32, &Value) -> bool) {
        self.0.retain(|g, k| keep(*g, k));
    }

    /// A table from a snapshot's list.
    pub fn from_vec(v: Vec<(u32, Value)>) -> Self {
        GroupTable(v.into_iter().collect())
    }

    /// The key of group `g`.
    pub fn key(&self, g: u32) -> Option<&Value> {
        self.0.get(&g)
    }
}

/// The firing that trigger `tr` of window `w` made of extent `e` of group `g`, computed from the
/// operator's current state (so call it *before* applying the `Fired` transition: the state
/// before refinement). `None` if the extent does not exist.
pub fn firing_of(
    op: &WindowOperator,
    groups: &GroupTable,
    w: u16,
    tr: u16,
    g: u32,
    e: i64,
    event: FireEvent,
) -> Option<Firing> {
    let spec = op.windows().get(usize::from(w))?;
    let trigger = op.triggers(usize::from(w)).get(usize::from(tr))?;
    let group = groups.key(g)?.clone();
    let views = op.extents(&spec.id, &group);
    let view = match spec.kind {
        WindowKind::Global => views.into_iter().next()?,
        WindowKind::Session { .. } => views.into_iter().find(|v| v.lower == Some(e))?,
        WindowKind::Fixed { .. } | WindowKind::Sliding { .. } => {
            let upper = spec.extents()?.upper(e);
            views.into_iter().find(|v| v.upper == Some(upper))?
        }
    };
    Some(Firing {
        window: spec.id.as_str().into(),
        trigger: trigger.id.as_str().into(),
        event,
        group,
        lower: view.lower,
        upper: view.upper,
        state: view.state,
    })
}

/// What [`recover`] rebuilt besides the operator state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recovered {
    /// The snapshot's dedup filter export, if a snapshot was read.
    pub filter_export: Option<Vec<u8>>,
    /// `(position, ids)` of every replayed (not fenced) batch record, in ledger order: what the
    /// dedup filter must hold after the export.
    pub batch_ids: Vec<(u64, Ids)>,
    /// The firings of the last batch record (possibly never synced), event `recovered`.
    pub pending: Vec<Firing>,
    /// The greatest owner epoch seen.
    pub epoch: u64,
    /// The position of the last entry read (or the snapshot's), if any.
    pub last_position: Option<u64>,
    /// Batch records replayed.
    pub batches: u64,
    /// Batch records skipped because a newer owner had taken over before them.
    pub fenced: u64,
    /// Payload bytes of the entries read (excluding the snapshot).
    pub entry_bytes: u64,
}

/// Rebuilds a slot from its ledger: restores `snapshot` (position covered, bytes) if any, then
/// replays `entries` (position, bytes) in order into `op` and `groups` (which must be fresh),
/// fencing batches of stale owners, and re-derives the firings of the last batch.
pub fn recover(
    ledger: &str,
    op: &mut WindowOperator,
    groups: &mut GroupTable,
    snapshot: Option<(u64, &[u8])>,
    entries: &[(u64, Vec<u8>)],
) -> Result<Recovered, StateError> {
    let corrupt = |position: u64, detail: String| StateError::Corrupt {
        ledger: ledger.to_owned(),
        position,
        detail,
    };
    let mut out = Recovered::default();
    if let Some((pos, bytes)) = snapshot {
        let snap = decode_snapshot(bytes).map_err(|d| corrupt(pos, format!("snapshot: {d}")))?;
        op.restore(snap.operator)
            .map_err(|e| corrupt(pos, format!("snapshot: {e}")))?;
        *groups = GroupTable::from_vec(snap.groups);
        out.epoch = snap.epoch;
        out.filter_export = Some(snap.filter);
        out.last_position = Some(pos);
    }
    // First the kind and epoch of every entry (fencing, and which batch is the last one kept);
    // then each kept batch is decoded and applied in turn, so only one is in memory at a time.
    let mut keep = Vec::with_capacity(entries.len());
    let mut epoch = out.epoch;
    for (pos, bytes) in entries {
        out.entry_bytes += bytes.len() as u64;
        let kept = match record_head(bytes).map_err(|d| corrupt(*pos, d))? {
            RecordHead::Owner { epoch: e } => {
                epoch = epoch.max(e);
                false
            }
            RecordHead::Batch { epoch: e } if e >= epoch => true,
            RecordHead::Batch { .. } => {
                out.fenced += 1;
                false
            }
        };
        keep.push(kept);
        out.last_position = Some(*pos);
    }
    out.epoch = epoch;
    let last_batch = keep.iter().rposition(|k| *k);
    for (i, (pos, bytes)) in entries.iter().enumerate() {
        if !keep[i] {
            continue;
        }
        let pos = *pos;
        let SlotRecord::Batch(b) = decode_record(bytes).map_err(|d| corrupt(pos, d))? else {
            return Err(corrupt(
                pos,
                "an owner record where its head said batch".into(),
            ));
        };
        out.batches += 1;
        let last = Some(i) == last_batch;
        for t in &b.transitions {
            if last {
                if let Transition::Fired {
                    window: w,
                    trigger: tr,
                    group: g,
                    extent: e,
                } = t
                {
                    if let Some(f) = firing_of(op, groups, *w, *tr, *g, *e, FireEvent::Recovered) {
                        out.pending.push(f);
                    }
                }
            }
            op.apply(t)
                .map_err(|e| corrupt(pos, format!("transition {t:?}: {e}")))?;
            groups.observe(std::iter::once(t));
        }
        out.batch_ids.push((pos, b.ids));
    }
    Ok(out)
}

/// The kind and epoch of a ledger entry, from its first bytes (bincode writes the variant, then
/// the first field, which is the epoch for both kinds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RecordHead {
    Owner { epoch: u64 },
    Batch { epoch: u64 },
}

fn record_head(bytes: &[u8]) -> Result<RecordHead, String> {
    let ((variant, epoch), _): ((u32, u64), usize) =
        decode_bounded(bytes).map_err(|e| e.to_string())?;
    match variant {
        0 => Ok(RecordHead::Owner { epoch }),
        1 => Ok(RecordHead::Batch { epoch }),
        v => Err(format!("unknown record kind {v}")),
    }
}

impl Recovered {
    /// Ids of the replayed batch records.
    pub fn id_count(&self) -> usize {
        self.batch_ids.iter().map(|(_, ids)| ids.len()).sum()
    }
}

/// What a slot's dedup filter holds, stored with its ids as the filter's mark
/// (`DedupFilter::insert_batch_marked`): the ids of every batch record of `ledger` up to
/// `position` (within the horizon), where `crc` is the CRC-32 of the batch record at `position`
/// or, once a compaction snapshot covers `position`, of that snapshot. The checksum tells a
/// ledger recreated under the same name from the one the filter was built for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterMark {
    /// The slot's ledger.
    pub ledger: String,
    /// The position of the last batch record whose ids the filter holds.
    pub position: u64,
    /// CRC-32 of that entry's bytes, or of the snapshot covering it.
    pub crc: u32,
}

impl FilterMark {
    /// The mark of the batch record `bytes` committed at `position` of `ledger`, or of the
    /// snapshot `bytes` covering `position`.
    pub fn of_entry(ledger: &str, position: u64, bytes: &[u8]) -> Self {
        FilterMark {
            ledger: ledger.to_owned(),
            position,
            crc: crc32fast::hash(bytes),
        }
    }

    /// The mark's bytes.
    pub fn encode(&self) -> Vec<u8> {
        bincode::serde::encode_to_vec(self, config()).expect("encoding into memory cannot fail")
    }

    /// A mark from its bytes; `None` for anything else (an unknown mark is no mark).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        match decode_bounded(bytes) {
            Ok((m, n)) if n == bytes.len() => Some(m),
            _ => None,
        }
    }
}

/// How to bring a slot's dedup filter up to date after [`recover`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterPlan {
    /// The filter already holds the ids of everything the snapshot covers and of
    /// `recovered.batch_ids[..from]`: insert the rest.
    Reuse {
        /// Index of the first batch of `batch_ids` to insert.
        from: usize,
    },
    /// Clear it, import the snapshot's export and insert the ids of every replayed batch.
    Rebuild,
}

/// Decides whether the filter found on disk, whose mark is `mark`, can be kept (`snapshot`,
/// `batch_ids` and `entries` as [`recover`] read and replayed them): only if the mark names
/// this ledger and either a replayed (not fenced) batch record of the tail `entries` with the
/// same checksum, or the snapshot read with the same checksum. A mark inside the compacted
/// prefix, past the ledger's end, on a fenced batch (written by a stale owner after the slot was
/// taken over) or on a different ledger of the same name means the filter may hold what the
/// state does not, or lack what it does: rebuild.
pub fn filter_plan(
    ledger: &str,
    mark: Option<&FilterMark>,
    snapshot: Option<(u64, &[u8])>,
    batch_ids: &[(u64, Ids)],
    entries: &[(u64, Vec<u8>)],
) -> FilterPlan {
    let Some(mark) = mark.filter(|m| m.ledger == ledger) else {
        return FilterPlan::Rebuild;
    };
    if let Some((covers, bytes)) = snapshot {
        if covers == mark.position && crc32fast::hash(bytes) == mark.crc {
            return FilterPlan::Reuse { from: 0 };
        }
    }
    let Ok(i) = batch_ids.binary_search_by_key(&mark.position, |(p, _)| *p) else {
        return FilterPlan::Rebuild;
    };
    let Ok(e) = entries.binary_search_by_key(&mark.position, |(p, _)| *p) else {
        return FilterPlan::Rebuild;
    };
    if crc32fast::hash(&entries[e].1) != mark.crc {
        return FilterPlan::Rebuild;
    }
    FilterPlan::Reuse { from: i + 1 }
}

#[cfg(test)]
mod tests;
