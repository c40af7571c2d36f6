//! Rebuilding a slot from its ledger: the snapshot restored, the batch records after it
//! replayed with read-side fencing, and the firings of the last record re-derived.

use sardonyx_state_log::decode_bounded;
use sardonyx_windowing::trigger::{FireEvent, Firing};
use sardonyx_windowing::{Transition, WindowKind, WindowOperator};

use super::record::{decode_record, decode_snapshot, Ids, SlotRecord, StateError};

/// The firing that trigger `tr` of window `w` made of extent `e` of group `g`, computed from the
/// operator's current state (so call it *before* applying the `Fired` transition: the state
/// before refinement). `None` if the extent does not exist.
pub fn firing_of(
    op: &WindowOperator,
    w: u16,
    tr: u16,
    g: u32,
    e: i64,
    event: FireEvent,
) -> Option<Firing> {
    let spec = op.windows().get(usize::from(w))?;
    let trigger = op.triggers(usize::from(w)).get(usize::from(tr))?;
    let group = op.group_key(g)?.clone();
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
/// replays `entries` (position, bytes) in order into `op` (which must be fresh),
/// fencing batches of stale owners, and re-derives the firings of the last batch.
pub fn recover(
    ledger: &str,
    op: &mut WindowOperator,
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
                    if let Some(f) = firing_of(op, *w, *tr, *g, *e, FireEvent::Recovered) {
                        out.pending.push(f);
                    }
                }
            }
            op.apply(t)
                .map_err(|e| corrupt(pos, format!("transition {t:?}: {e}")))?;
        }
        out.batch_ids.push((pos, b.ids));
    }
    Ok(out)
}

/// The kind and epoch of a ledger entry, from its first bytes (bincode writes the variant, then
/// the first field, which is the epoch for both kinds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RecordHead {
    Owner { epoch: u64 },
    Batch { epoch: u64 },
}

pub(super) fn record_head(bytes: &[u8]) -> Result<RecordHead, String> {
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
