//! The slot's ledger format: batch and owner records, compaction snapshots, the uniqueness
//! ids' canonical bytes and their compact encoding (bincode; snapshots through zstd).

use std::io::{BufWriter, Read, Write};

use sardonyx_state_log::decode_bounded;
use sardonyx_windowing::{Snapshot, Transition, Value};
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
/// (bincode varints make consecutive ids one byte each), anything else as canonical bytes. The
/// ids of a grouped task are labelled with their key groups ([`Ids::Grouped`]), so that a
/// rescale takes out of any slot's ledger exactly the ids of the key groups it keeps; the ids
/// of a task without grouping have no label ([`Ids::Ints`], [`Ids::Keys`]; also every record
/// written before labels).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ids {
    /// Integer ids, each stored as the difference from the previous one (the first from 0).
    Ints(Vec<i64>),
    /// Canonical id bytes ([`id_key`]).
    Keys(Vec<Vec<u8>>),
    /// Ids labelled with their key groups.
    Grouped(GroupedIds),
}

/// Ids labelled with their key groups, in runs of one key group in increasing key group order
/// (a batch's ids keep their batch order within a run), as one buffer: a kind byte (0: every
/// id an integer, 1: canonical bytes), then per run the key group's difference from the
/// previous run's (the first from 0) and the run's number of ids, then its ids — integers as
/// the zigzag difference from the previous id (across runs; the first from 0), anything else
/// as its canonical bytes' length and the bytes; every number LEB128. Sequential integer ids
/// spread over key groups cost one or two bytes each and two bytes per run.
///
/// Decoded only through its check ([`GroupedIds::try_from`]), so every buffer held decodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "GroupedIdsWire")]
pub struct GroupedIds {
    /// The number of ids.
    count: u32,
    /// The coded runs.
    #[serde(with = "serde_bytes")]
    bytes: Vec<u8>,
}

/// [`GroupedIds`] as read, before its check.
#[derive(Deserialize)]
struct GroupedIdsWire {
    count: u32,
    #[serde(with = "serde_bytes")]
    bytes: Vec<u8>,
}

impl TryFrom<GroupedIdsWire> for GroupedIds {
    type Error = String;

    fn try_from(w: GroupedIdsWire) -> Result<GroupedIds, String> {
        let ids = GroupedIds {
            count: w.count,
            bytes: w.bytes,
        };
        let mut n = 0u64;
        ids.walk(|_, _| n += 1)
            .ok_or_else(|| "labelled ids do not decode".to_string())?;
        if n != u64::from(ids.count) {
            return Err(format!("labelled ids: {n} ids, {} announced", ids.count));
        }
        Ok(ids)
    }
}

/// The kind byte of [`GroupedIds`] whose ids are all integers.
const GROUPED_INTS: u8 = 0;
/// The kind byte of [`GroupedIds`] whose ids are canonical bytes.
const GROUPED_KEYS: u8 = 1;

fn put_leb(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn take_leb(bytes: &mut &[u8]) -> Option<u64> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = bytes.split_first()?;
        *bytes = rest;
        n |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(n);
        }
    }
    None
}

/// The positions `0..labels.len()` grouped by their label, smaller labels first, each group in
/// position order. A counting sort when the labels span little beside the ids (the usual case:
/// a batch's ids fall in one slot's key groups), else a sort.
fn by_label(labels: &[u16]) -> Vec<u32> {
    let top = labels.iter().copied().max().map_or(0, usize::from);
    if top > 4 * labels.len() + 64 {
        let mut order: Vec<u64> = (0..)
            .zip(labels)
            .map(|(i, &kg)| u64::from(kg) << 32 | i)
            .collect();
        order.sort_unstable();
        return order.into_iter().map(|o| o as u32).collect();
    }
    // `next[kg]`: where the next position labelled `kg` goes (counts first, then summed).
    let mut next = vec![0u32; top + 2];
    for &kg in labels {
        next[usize::from(kg) + 1] += 1;
    }
    for kg in 0..=top {
        next[kg + 1] += next[kg];
    }
    let mut order = vec![0u32; labels.len()];
    for (i, &kg) in (0..).zip(labels) {
        let at = &mut next[usize::from(kg)];
        order[*at as usize] = i;
        *at += 1;
    }
    order
}

impl GroupedIds {
    /// Labels `values` (a batch's ids, in order) with `labels` (each id's key group), grouping
    /// them in runs of one key group.
    ///
    /// # Panics
    /// If there are not as many labels as ids.
    pub fn new(values: &[Value], labels: &[u16]) -> GroupedIds {
        assert_eq!(values.len(), labels.len(), "one label per id");
        let order = by_label(labels);
        let ints = values.iter().all(|v| matches!(v, Value::Int(_)));
        let mut bytes = Vec::with_capacity(values.len() + 8);
        bytes.push(if ints { GROUPED_INTS } else { GROUPED_KEYS });
        let (mut prev_kg, mut prev_id, mut key) = (0u64, 0i64, Vec::new());
        let mut runs = order.chunk_by(|&a, &b| labels[a as usize] == labels[b as usize]);
        for run in &mut runs {
            let kg = u64::from(labels[run[0] as usize]);
            put_leb(&mut bytes, kg - prev_kg);
            put_leb(&mut bytes, run.len() as u64);
            prev_kg = kg;
            for &at in run {
                let v = &values[at as usize];
                match v {
                    Value::Int(i) if ints => {
                        let d = i.wrapping_sub(prev_id);
                        put_leb(&mut bytes, ((d << 1) ^ (d >> 63)) as u64);
                        prev_id = *i;
                    }
                    _ => {
                        id_key_into(v, &mut key);
                        put_leb(&mut bytes, key.len() as u64);
                        bytes.extend_from_slice(&key);
                    }
                }
            }
        }
        GroupedIds {
            count: values.len() as u32,
            bytes,
        }
    }

    /// Calls `f` with each id's key group and key, in order; `None` if the buffer does not
    /// decode (never for one that passed the check).
    fn walk<'a>(&'a self, mut f: impl FnMut(u16, IdKey<'a>)) -> Option<()> {
        let (&kind, mut rest) = self.bytes.split_first()?;
        let (mut kg, mut prev) = (0u64, 0i64);
        while !rest.is_empty() {
            kg = kg.checked_add(take_leb(&mut rest)?)?;
            let label = u16::try_from(kg).ok()?;
            let n = take_leb(&mut rest).filter(|n| (1..=rest.len() as u64).contains(n))?;
            for _ in 0..n {
                match kind {
                    GROUPED_INTS => {
                        let z = take_leb(&mut rest)?;
                        let d = ((z >> 1) as i64) ^ -((z & 1) as i64);
                        prev = prev.wrapping_add(d);
                        f(label, IdKey::Int(int_key(prev)));
                    }
                    GROUPED_KEYS => {
                        let len = take_leb(&mut rest).filter(|l| *l <= rest.len() as u64)?;
                        let (key, tail) = rest.split_at(len as usize);
                        rest = tail;
                        f(label, IdKey::Bytes(key));
                    }
                    _ => return None,
                }
            }
        }
        Some(())
    }

    /// Each id's key group and key, in order (runs of one key group, increasing).
    pub fn labelled(&self) -> Vec<(u16, IdKey<'_>)> {
        let mut out = Vec::with_capacity(self.count as usize);
        self.walk(|kg, key| out.push((kg, key)))
            .expect("checked when decoded or built");
        out
    }

    /// The number of ids.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// True if there are no ids.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
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

    /// Builds the id list of a batch from its id values and, for a grouped task, each id's
    /// key group (`labels` empty: no labels).
    pub fn from_labelled(values: &[Value], labels: &[u16]) -> Ids {
        if labels.is_empty() {
            Ids::from_values(values)
        } else {
            Ids::Grouped(GroupedIds::new(values, labels))
        }
    }

    /// The canonical keys of the ids (in batch order; for [`Ids::Grouped`], in runs of one key
    /// group).
    pub fn keys(&self) -> Vec<Vec<u8>> {
        self.labelled()
            .into_iter()
            .map(|(_, k)| k.as_ref().to_vec())
            .collect()
    }

    /// Each id's key group (`None` without labels) and canonical key, in the order of
    /// [`Ids::keys`].
    pub fn labelled(&self) -> Vec<(Option<u16>, IdKey<'_>)> {
        match self {
            Ids::Grouped(g) => g
                .labelled()
                .into_iter()
                .map(|(kg, k)| (Some(kg), k))
                .collect(),
            _ => self.iter_keys().map(|k| (None, k)).collect(),
        }
    }

    /// The canonical keys of the ids without their labels, in the order of [`Ids::keys`],
    /// without allocating (for [`Ids::Grouped`], one allocation).
    pub fn iter_keys(&self) -> impl ExactSizeIterator<Item = IdKey<'_>> + '_ {
        let (deltas, keys, grouped): (&[i64], &[Vec<u8>], Vec<IdKey<'_>>) = match self {
            Ids::Ints(d) => (d, &[], Vec::new()),
            Ids::Keys(k) => (&[], k, Vec::new()),
            Ids::Grouped(g) => (&[], &[], g.labelled().into_iter().map(|(_, k)| k).collect()),
        };
        let mut prev = 0_i64;
        let ints = deltas.iter().map(move |d| {
            prev = prev.wrapping_add(*d);
            IdKey::Int(int_key(prev))
        });
        let bytes = keys.iter().map(|k| IdKey::Bytes(k));
        ExactChain(ExactChain(ints, bytes), grouped.into_iter())
    }

    /// Number of ids.
    pub fn len(&self) -> usize {
        match self {
            Ids::Ints(d) => d.len(),
            Ids::Keys(k) => k.len(),
            Ids::Grouped(g) => g.len(),
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
    /// A group table (group id → key) written by versions that kept one beside the operator;
    /// read and ignored (the operator's snapshot holds the same keys:
    /// [`sardonyx_windowing::WindowOperator::group_key`]). Written empty, so the layout, and
    /// every snapshot written before, stay readable.
    pub legacy_groups: Vec<(u32, Value)>,
    /// The dedup filter's export (empty without deduplication).
    pub filter: Vec<u8>,
}

pub(super) fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes a ledger entry.
pub fn encode_record(r: &SlotRecord) -> Vec<u8> {
    bincode::serde::encode_to_vec(r, config()).expect("encoding into memory cannot fail")
}

/// Encodes `SlotRecord::Batch(record)` without copying the record: the bytes of
/// [`encode_record`], written mostly by hand (`batch_codec`).
pub fn encode_batch_record(record: &BatchRecord) -> Vec<u8> {
    super::batch_codec::encode_batch_record(record)
}

/// Decodes a ledger entry.
pub fn decode_record(bytes: &[u8]) -> Result<SlotRecord, String> {
    match decode_bounded::<SlotRecord>(bytes) {
        Ok((r, n)) if n == bytes.len() => Ok(r),
        Ok((_, n)) => Err(format!("{} trailing bytes", bytes.len() - n)),
        Err(e) => Err(e.to_string()),
    }
}

/// [`SlotSnapshot`] by reference, as a compaction writes it (with an empty
/// [`SlotSnapshot::legacy_groups`]), so that the operator state is encoded without a copy.
pub struct SlotSnapshotRef<'a> {
    /// The greatest owner epoch seen up to the covered position.
    pub epoch: u64,
    /// The operator's complete state.
    pub operator: &'a Snapshot,
    /// The dedup filter's export (empty without deduplication).
    pub filter: &'a [u8],
}

/// The bytes of a [`SlotSnapshot`], field by field, by reference.
#[derive(Serialize)]
struct SnapshotLayout<'a> {
    epoch: u64,
    operator: &'a Snapshot,
    legacy_groups: &'a [(u32, Value)],
    filter: &'a [u8],
}

/// Encodes a snapshot, its [`SlotSnapshot::legacy_groups`] included (as versions that kept a
/// group table wrote it: tests build such snapshots with it).
pub fn encode_snapshot(s: &SlotSnapshot) -> Vec<u8> {
    encode_layout(&SnapshotLayout {
        epoch: s.epoch,
        operator: &s.operator,
        legacy_groups: &s.legacy_groups,
        filter: &s.filter,
    })
}

/// First byte of a snapshot compressed with zstd (the rest is one zstd frame of the bincode
/// encoding). An uncompressed snapshot (written before compression) starts with the epoch as a
/// bincode varint, whose first byte is at most 254, so the two never mix up.
pub(super) const ZSTD_SNAPSHOT: u8 = 0xFF;

/// zstd level of snapshots. Level 1 packs a session window's snapshot (Q4 of the vote benchmark:
/// 3.0 MB) 2.5× at about 250 MB/s; every copy of it on its way through Raft and RocksDB shrinks
/// with it, and those copies were the peak of such a job's resident memory.
const SNAPSHOT_ZSTD_LEVEL: i32 = 1;

/// Buffer between the bincode encoder (many small writes) and the zstd stream.
const SNAPSHOT_BUFFER_BYTES: usize = 64 << 10;

/// Encodes a snapshot given by reference: the bytes of [`encode_snapshot`] with no legacy
/// group table.
pub fn encode_snapshot_ref(s: &SlotSnapshotRef<'_>) -> Vec<u8> {
    encode_layout(&SnapshotLayout {
        epoch: s.epoch,
        operator: s.operator,
        legacy_groups: &[],
        filter: s.filter,
    })
}

/// Encodes a snapshot's fields: the bincode encoding is streamed through zstd, so the
/// uncompressed bytes are never held whole.
fn encode_layout(s: &SnapshotLayout<'_>) -> Vec<u8> {
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
