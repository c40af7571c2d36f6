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
