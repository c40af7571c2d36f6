//! Rescaling a windowed task (DESIGN §4 "Grouping"): when a grouped windowed task's peer count
//! changed since its state was written (`sardonyx run` restarted with another count, or a
//! cluster re-divided the task while it ran), each new slot gathers its first state from the
//! slots of the past layouts that hold its key groups ([`crate::division::sources`]: the newest
//! whose owner of a group gathered, else the oldest) — their window state for its key groups
//! ([`sardonyx_windowing::Snapshot::retain_groups`], joined with
//! [`sardonyx_windowing::Snapshot::join`]) and their dedup ids — and writes it as its first
//! snapshot. Once every new slot has one, the old ledgers are retired
//! ([`JobLog::slot_rescaled`]); until then they are left as they were (only fenced), so a run
//! killed in the middle of a rescale gathers the missing slots' state again the same way.
//!
//! The new slots of a run gather one at a time (each replay holds a whole old slot's state).
//!
//! The dedup ids of a grouped task are labelled with their key groups, in the ledgers' records
//! ([`slot::Ids::Grouped`]) and in the filter exports of their snapshots, so a new slot takes
//! exactly the ids of its own key groups. Ids without a label (written by versions before the
//! labels) are all taken: a superset, harmless, since an id only ever arrives at the slot that
//! owns its segment's key group, so the extra ids are never asked about; they only take room in
//! the filter until they pass its horizon.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use sardonyx_state_log::{export_ids, RequestId};
use sardonyx_windowing::trigger::Firing;
use sardonyx_windowing::WindowOperator;

use super::context::PeerContext;
use super::crash_point::CrashPoint;
use super::error::RunError;
use super::job_log::{corrupt, log_error, slot_write_error, JobLog};
use super::slot_log::SlotLog;
use crate::key_groups::{key_group_of, key_hash};
use crate::slot::{self, SlotRecord};

/// The environment variable of the test-only crash point of a rescale: `N` makes the process
/// kill itself with SIGKILL right after the `N`-th new slot wrote its first snapshot (before the
/// old ledgers are retired).
pub const CRASH_AFTER_RESCALED_SLOTS: &str = "SARDONYX_TEST_CRASH_AFTER_RESCALED_SLOTS";

/// A new slot's first state, gathered from the old slots.
pub(super) struct FirstState {
    log: SlotLog,
    /// The position of the slot's `Owner` record, which the first snapshot covers.
    position: u64,
    operator: WindowOperator,
    /// The dedup ids of the old slots gathered from that belong to this slot's key groups
    /// (and every id without a label), with their key groups.
    ids: Vec<(Option<u16>, Vec<u8>)>,
    /// The firings of the old slots' last records for this slot's groups (possibly never
    /// synced before the old run stopped), to deliver again before the first snapshot.
    pub pending: Vec<Firing>,
}

/// Gathers the first state of slot `ctx.peer` of a task being rescaled from the slots of its
/// past layouts ([`JobLog::past`]) that hold the state of its key groups
/// ([`crate::division::sources`]); `None` if the slot already has a snapshot (an earlier run
/// gathered it; the slot then counts as rescaled). `fresh` makes an empty operator of the task.
///
/// Every past slot that may hold one of its key groups is fenced with this run's epoch before
/// it is asked whether it gathered (has a snapshot), so a run of an older version still going
/// elsewhere cannot make it gather after the question was answered.
pub(super) async fn gather(
    ctx: &PeerContext,
    js: &Arc<JobLog>,
    dedup: bool,
    fresh: &(dyn Fn() -> WindowOperator + Sync),
) -> Result<Option<FirstState>, RunError> {
    let task = &ctx.task.name;
    let (log, taken) = SlotLog::take_over(js.clone(), task, ctx.peer, ctx.progress.clone()).await?;
    if taken.read.snapshot.is_some() {
        js.slot_rescaled(task).await?;
        return Ok(None);
    }
    let position = taken
        .read
        .entries
        .last()
        .map(|(p, _)| *p)
        .expect("the slot's Owner record was just read");
    let g = js.key_groups;
    let mine = js.division(task).groups_of(ctx.peer);
    let past = js
        .past(task)
        .expect("gathered only while the task is rescaled");
    let store = js.options.store.clone();
    let (mut parts, mut ids, mut pending) = (Vec::new(), Vec::new(), Vec::new());
    let mut from = Vec::new();
    let _one_at_a_time = js
        .gather_permit
        .acquire()
        .await
        .expect("the permit is never closed");
    // Fenced first, then asked: a run before this one still going can no longer write there.
    let mut gathered = BTreeMap::new();
    for (i, (layout, division)) in past.iter().enumerate() {
        let owners: BTreeSet<usize> = mine.iter().map(|&kg| division.owner(kg)).collect();
        for slot in owners {
            let ledger = js.old_slot_ledger(task, *layout, slot as u64);
            let owner = slot::encode_record(&SlotRecord::Owner { epoch: js.epoch });
            store
                .append_fenced(
                    &ledger,
                    js.epoch,
                    RequestId::new(js.client(&ledger), 0),
                    owner,
                )
                .await
                .map_err(slot_write_error(&ledger))?;
            if i > 0 {
                let info = store.info(&ledger).await.map_err(log_error(&ledger))?;
                gathered.insert((i, slot), info.snapshot_position.is_some());
            }
        }
    }
    let divisions: Vec<_> = past.iter().map(|(_, d)| d.clone()).collect();
    let sources = crate::division::sources(&mine, &divisions, |i, s| gathered[&(i, s)]);
    for ((i, slot), groups) in sources {
        let ledger = js.old_slot_ledger(task, past[i].0, slot as u64);
        let mut here = vec![false; g];
        for kg in groups {
            here[kg] = true;
        }
        let owns = |key: &sardonyx_windowing::Value| here[key_group_of(key_hash(key), g)];
        let keeps =
            |label: Option<u16>| label.is_none_or(|kg| here.get(kg as usize) == Some(&true));
        let read = store.read(&ledger, 0).await.map_err(log_error(&ledger))?;
        let mut op = fresh();
        let snapshot = read.snapshot.as_ref().map(|(p, b)| (*p, b.as_slice()));
        let recovered = slot::recover(&ledger, &mut op, snapshot, &read.entries)?;
        let mut state = op.snapshot();
        state.retain_groups(owns);
        parts.push(state);
        pending.extend(recovered.pending.into_iter().filter(|f| owns(&f.group)));
        if dedup {
            if let Some(export) = recovered.filter_export.as_deref().filter(|e| !e.is_empty()) {
                let at = read.snapshot.as_ref().map_or(0, |(p, _)| *p);
                export_ids(export, |kg, id| {
                    if keeps(kg) {
                        ids.push((kg, id.to_vec()))
                    }
                })
                .map_err(|e| corrupt(&ledger, at, format!("snapshot's dedup ids: {e}")))?;
            }
            for (_, batch) in &recovered.batch_ids {
                let labelled = batch.labelled().into_iter().filter(|(kg, _)| keeps(*kg));
                ids.extend(labelled.map(|(kg, id)| (kg, id.as_ref().to_vec())));
            }
        }
        from.push(ledger);
    }
    let mut operator = fresh();
    let joined = operator.snapshot().join(parts).map_err(|e| {
        corrupt(
            log.ledger(),
            position,
            format!("joining the old slots: {e}"),
        )
    })?;
    operator.restore(joined).map_err(|e| {
        corrupt(
            log.ledger(),
            position,
            format!("joining the old slots: {e}"),
        )
    })?;
    tracing::info!(
        ledger = log.ledger(),
        key_groups = ?js.division(task).ranges_of(ctx.peer),
        from = ?from,
        ids = ids.len(),
        "gathered a rescaled slot's first state"
    );
    Ok(Some(FirstState {
        log,
        position,
        operator,
        ids,
        pending,
    }))
}

impl FirstState {
    /// Writes the gathered state as the slot's first snapshot (with its dedup filter filled with
    /// the gathered ids), then counts the slot as rescaled. Call once its pending firings are
    /// delivered.
    pub(super) async fn write(self, js: &JobLog, task: &str, dedup: bool) -> Result<(), RunError> {
        let FirstState {
            mut log,
            position,
            operator,
            ids,
            ..
        } = self;
        if dedup {
            log.fill_filter(ids).await?;
        }
        log.compact(position, js.epoch, &operator).await?;
        AFTER_RESCALED_SLOT.pass();
        js.slot_rescaled(task).await
    }
}

/// The crash point of [`CRASH_AFTER_RESCALED_SLOTS`].
static AFTER_RESCALED_SLOT: CrashPoint = CrashPoint::new(CRASH_AFTER_RESCALED_SLOTS);
