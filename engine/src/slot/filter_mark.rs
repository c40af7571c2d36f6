//! What a slot's dedup filter holds (its mark) and whether a filter found on disk can be kept
//! after recovery or must be rebuilt: pure decisions, the filter's I/O is the runtime's.

use sardonyx_state_log::decode_bounded;
use serde::{Deserialize, Serialize};

use super::record::{config, Ids};

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

/// How to bring a slot's dedup filter up to date after [`recover`](super::recover).
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
/// `batch_ids` and `entries` as [`recover`](super::recover) read and replayed them): only if the mark names
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
