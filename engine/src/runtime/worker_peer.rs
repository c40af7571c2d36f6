//! Worker peers (function, windowed and output tasks): gather a batch, apply the task's
//! function and windows, commit the batch's record to the slot's ledger, deliver, write to
//! the sink, route, release the acks.

use std::borrow::Cow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::ack::{AckToken, HeldAcks};
use super::context::{call_hooks, dedup_field, now_ms, panic_message, PeerContext};
use super::error::RunError;
use super::inbox::{Gathered, Inbox};
use super::message::{Mark, Msg};
use super::rejections::Rejection;
use super::router::Router;
use super::routing::group_key_ref;
use super::slot_log::{Committed, SlotLog};
use super::window_stage::{Delivery, WindowStage};
use crate::job::{GroupKey, TaskKind};
use crate::lifecycle::{ExceptionAction, Lifecycle};
use crate::plugin::SegmentSink;
use crate::registry::GroupFn;
use crate::segment::{Segment, Value};
use crate::slot::seen_ids::SeenPair;
use crate::slot::COMPLETION_FIRINGS;
use sardonyx_windowing::Completion;

/// Runs one function or output peer until every upstream peer is done.
pub(crate) async fn run_worker(ctx: PeerContext, rx: mpsc::Receiver<Msg>) -> Result<(), RunError> {
    let lifecycles = ctx.lifecycles();
    call_hooks(&lifecycles, |l| {
        l.before_task_start.as_ref().map(|h| h(&ctx.event()))
    });
    let mut router = Router::new(&ctx);
    let mut sink: Option<Box<dyn SegmentSink>> = match ctx.task.kind {
        TaskKind::Output => {
            let plugin = ctx
                .registry
                .output(ctx.task.plugin.as_deref().unwrap_or_default())
                .expect("validated")
                .clone();
            Some((plugin.open)(&ctx.plugin_ctx()).map_err(|e| ctx.plugin_error(e))?)
        }
        _ => None,
    };
    let retry = crate::plugin::retry_policy(&ctx.task.params).map_err(|e| ctx.plugin_error(e))?;
    // The built-in identity gives each segment back unchanged and cannot fail: not calling it
    // at all spares a copy of every segment (kept for the error path).
    let function = ctx
        .task
        .function
        .as_deref()
        .and_then(|f| ctx.registry.function(f))
        .filter(|f| !ctx.registry.is_identity(f))
        .cloned();
    let mut stage = WindowStage::new(&ctx.job, &ctx.task, &ctx.registry, &ctx.syncs)
        .map_err(|e| ctx.plugin_error(e))?;
    let grouping = Grouping::of(&ctx);
    let tick = stage
        .as_ref()
        .and_then(|s| s.timer_period_ms)
        .map(|p| std::time::Duration::from_millis(p.clamp(1, 1000) as u64));
    let dedup_key = dedup_field(&ctx.job, &ctx.task).map(str::to_owned);
    let mut slot: Option<SlotLog> = None;
    if let (Some(stage), Some(js)) = (&mut stage, &ctx.state) {
        // Exactly-once state: rebuild the slot from its ledger, sync again what the last batch
        // before a crash may not have synced, then fire what changed since it last fired.
        let (recovered, pending) = SlotLog::open(
            js.clone(),
            &ctx.task.name,
            ctx.peer,
            dedup_key.is_some(),
            &mut stage.operator,
            ctx.progress.clone(),
        )
        .await?;
        slot = Some(recovered);
        let pending = sardonyx_windowing::Step {
            firings: pending,
            ..Default::default()
        };
        deliver(&ctx, stage, pending, &mut router)?;
        let step = stage.operator.on_recovered();
        settle(&ctx, stage, &mut slot, step, &mut router).await?;
    }
    let mut inbox = Inbox::new(&ctx, rx);
    let mut seen = SeenPair::default();
    if let Some(stage) = &mut stage {
        // Starts the timers' clocks; a recovered slot's deadlines were on an earlier process's
        // clock and start afresh too.
        let step = stage.operator.restart_timers(now_ms());
        settle(&ctx, stage, &mut slot, step, &mut router).await?;
    }
    // An exactly-once slot overlaps each batch's commit with the next batch's work: while the
    // record of batch N is appended (Raft round and fsync), it inserts the ids of batch N-1 into
    // the dedup filter and, if batch N+1 is already queued, runs it through the function and the
    // windows. Nothing of N+1 is delivered, acknowledged or appended before N is committed and
    // delivered, so the ledger order, the sync-before-next-record rule and the acks are those
    // of the plain loop. Not with lifecycle hooks (their calls would interleave across batches)
    // nor when the next batch would find a compaction due (the snapshot must be the state of
    // exactly the committed records).
    let pipelined = slot.is_some() && lifecycles.is_empty();
    let dedup_field = dedup_key.as_deref().filter(|_| slot.is_some());
    let mut ahead: Option<Prepared> = None;
    let mut committed: Option<Committed> = None;
    loop {
        let mut batch = match ahead.take() {
            Some(b) => b,
            None => {
                let (segments, acks) = match inbox.gather(tick).await {
                    Gathered::Finished => break,
                    Gathered::Tick => (Vec::new(), HeldAcks::default()),
                    Gathered::Batch(s, a) => (s, a),
                };
                let mark = inbox.mark();
                let dedup = slot.as_ref().zip(dedup_field);
                prepare(
                    &ctx,
                    &lifecycles,
                    function.as_ref(),
                    stage.as_mut(),
                    &grouping,
                    dedup,
                    &mut seen,
                    (segments, acks, mark),
                    true,
                    &mut router,
                )?
            }
        };
        let inflight = match (&mut slot, &mut batch.step) {
            (Some(slot), Some(step)) => {
                let record = crate::slot::BatchRecord {
                    epoch: slot.epoch(),
                    ids: crate::slot::Ids::from_values(&batch.ids),
                    transitions: std::mem::take(&mut step.transitions),
                    inputs: std::mem::take(&mut batch.inputs),
                };
                (!record.is_empty()).then(|| slot.begin_commit(record))
            }
            _ => None,
        };
        if let (Some(slot), Some(c)) = (&mut slot, committed.take()) {
            slot.insert_committed(c)?;
        }
        let schedule = slot.as_ref().map(SlotLog::schedule);
        if let (Some(s), Some(f)) = (schedule, &inflight) {
            let ahead_ok = s.may_prepare_ahead(pipelined, true);
            // Whatever is queued while the record commits becomes the next record (up to
            // `max_merged_batches`): the slower the log, the larger the records.
            let mut merged = 0;
            while ahead_ok && s.may_merge_more(merged, f.is_finished()) {
                let Some((segments, acks)) = inbox.try_gather() else {
                    break;
                };
                let mark = inbox.mark();
                let dedup = slot.as_ref().zip(dedup_field);
                let next = prepare(
                    &ctx,
                    &lifecycles,
                    function.as_ref(),
                    stage.as_mut(),
                    &grouping,
                    dedup,
                    &mut seen,
                    (segments, acks, mark),
                    merged == 0,
                    &mut router,
                )?;
                match &mut ahead {
                    Some(a) => a.absorb(next),
                    None => ahead = Some(next),
                }
                merged += 1;
            }
        }
        if let (Some(slot), Some(f)) = (&mut slot, inflight) {
            committed = slot.end_commit(f).await?;
        }
        let Prepared {
            len,
            outputs,
            step,
            acks,
            mark,
            ..
        } = batch;
        if let (Some(stage), Some(step)) = (&stage, step) {
            deliver(&ctx, stage, step, &mut router)?;
        }
        let outputs = match sink.take() {
            Some(out) if !outputs.is_empty() => {
                // Durable at the sink (retried while retryable) before the acks go below.
                let (back, outputs, result) = write_out(out, outputs, retry).await?;
                sink = Some(back);
                result.map_err(|source| RunError::Sink {
                    task: ctx.task.name.clone(),
                    source,
                })?;
                ctx.progress
                    .written
                    .fetch_add(outputs.len() as u64, Ordering::Relaxed);
                // What an output task wrote does not travel further (outputs have no edges).
                Vec::new()
            }
            other => {
                sink = other;
                outputs
            }
        };
        for s in outputs {
            router.route(s)?;
        }
        // What is sent now may hold what the batch prepared ahead produced (its rejections, for
        // one): it holds that batch's acks too, so neither input commits before it is handled.
        match &ahead {
            Some(next) => {
                let mut both = acks.share();
                both.extend(next.acks.share());
                router.flush(mark, &both).await;
                both.release();
            }
            None => router.flush(mark, &acks).await,
        }
        router.errors_durable()?;
        if let (Some(stage), Some(slot), None) = (&stage, &mut slot, &ahead) {
            // (The batch's firings were flushed when they were delivered.) The snapshot holds
            // the filter's contents, so the last batch's ids go in first.
            if slot.schedule().compaction_due() {
                if let Some(c) = committed.take() {
                    slot.insert_committed(c)?;
                }
                slot.maybe_compact(&stage.operator).await?;
            }
        }
        acks.release();
        if len > 0 {
            call_hooks(&lifecycles, |l| {
                l.after_batch.as_ref().map(|h| h(&ctx.event(), len))
            });
        }
    }
    if let (Some(slot), Some(c)) = (&mut slot, committed.take()) {
        slot.insert_committed(c)?;
    }
    // An input stopped before it was exhausted ([`super::RunOptions::stop`]): the job is not
    // complete and will resume, so its windows must not fire as at job completion.
    let stopped = ctx.topology.stopped_early.load(Ordering::SeqCst);
    if let Some(stage) = stage.as_mut().filter(|_| !stopped) {
        // Job completion, one record of about `COMPLETION_FIRINGS` firings at a time: a job
        // with many open windows (a session per user) does not hold all their final firings.
        let mut completion = Completion::default();
        while !completion.is_done() {
            let mut step = sardonyx_windowing::Step::default();
            stage
                .operator
                .on_job_completed_into(&mut completion, &mut step, COMPLETION_FIRINGS);
            settle(&ctx, stage, &mut slot, step, &mut router).await?;
        }
        router.flush(inbox.mark(), &HeldAcks::default()).await;
    }
    if let Some(mut s) = sink.take() {
        tokio::task::spawn_blocking(move || s.flush())
            .await
            .map_err(RunError::PeerTask)?
            .map_err(|source| RunError::Sink {
                task: ctx.task.name.clone(),
                source,
            })?;
    }
    router.finish().await;
    call_hooks(&lifecycles, |l| {
        l.after_task_stop.as_ref().map(|h| h(&ctx.event()))
    });
    Ok(())
}

/// How a windowed task finds a segment's group (`Value::Null` without grouping).
enum Grouping {
    None,
    Key(GroupKey),
    Fn(GroupFn),
}

impl Grouping {
    fn of(ctx: &PeerContext) -> Self {
        match (&ctx.task.group_by_key, &ctx.task.group_by_fn) {
            (Some(k), _) => Grouping::Key(k.clone()),
            (None, Some(f)) => Grouping::Fn(ctx.registry.group_fn(f).expect("validated").clone()),
            (None, None) => Grouping::None,
        }
    }

    fn group<'s>(&self, s: &'s Segment) -> Result<Cow<'s, Value>, String> {
        match self {
            Grouping::None => Ok(Cow::Owned(Value::Null)),
            Grouping::Key(k) => group_key_ref(k, s),
            Grouping::Fn(f) => catch_unwind(AssertUnwindSafe(|| f(s)))
                .map(Cow::Owned)
                .map_err(|p| format!("group_by_fn panicked: {}", panic_message(&p))),
        }
    }
}

/// The greatest offset of each input the acknowledged batches cover.
fn covered_inputs(acks: &[Arc<AckToken>]) -> Vec<(u32, u64)> {
    let mut m = std::collections::BTreeMap::new();
    for a in acks {
        let o = m.entry(a.input()).or_insert(0);
        *o = a.positions().iter().map(|p| p.offset).fold(*o, u64::max);
    }
    m.into_iter().collect()
}

/// Feeds a batch to the task's windows, then the watermark and the timer. With a dedup filter
/// (`dedup`: the slot and the uniqueness field), segments already applied (by the filter, by
/// this batch or by the batch before it, `seen`) are skipped (they still travel on). Returns the segments that go on downstream (a segment the windows reject
/// goes to the error output instead), the batch's combined step, and the ids of the segments
/// it applied. Nothing is delivered yet: the step must be committed first ([`settle`]).
fn window_batch(
    ctx: &PeerContext,
    stage: &mut WindowStage,
    grouping: &Grouping,
    mut dedup: Option<(&SlotLog, &str, &mut SeenPair)>,
    segments: Vec<Segment>,
    watermark: Option<i64>,
    router: &mut Router,
) -> Result<(Vec<Segment>, sardonyx_windowing::Step, Vec<Value>), RunError> {
    let mut passed = Vec::with_capacity(segments.len());
    let mut batch = sardonyx_windowing::Step::default();
    // About one transition per segment and window: grown once, not by doubling.
    batch
        .transitions
        .reserve(segments.len() * stage.operator.windows().len());
    let mut ids = Vec::new();
    // The filter does not change within a batch: ask it about every id at once.
    let mut in_filter = Vec::new();
    if let Some((slot, field, seen)) = dedup.as_mut() {
        seen.batch_keys(&segments, field);
        slot.seen_each(seen.batch.iter(), &mut in_filter)?;
    }
    for (i, s) in segments.into_iter().enumerate() {
        let mut id = None;
        if let Some((_, field, seen)) = dedup.as_mut() {
            let Some(v) = s.get(field) else {
                let reason = format!("uniqueness_key field \"{field}\" is missing");
                router.reject(Rejection::segment(&ctx.task.name, reason, s))?;
                continue;
            };
            crate::slot::id_key_into(v, &mut seen.key);
            if seen.contains(v) || in_filter[i] {
                ctx.progress.duplicates.fetch_add(1, Ordering::Relaxed);
                passed.push(s);
                continue;
            }
            id = Some(v.clone());
        }
        // On error `batch` is left as it was.
        let applied = match grouping.group(&s) {
            Ok(g) => stage
                .operator
                .on_segment_into(&s, &g, &mut batch)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        match applied {
            Ok(()) => {
                if let (Some(v), Some((_, _, seen))) = (id, dedup.as_mut()) {
                    // `seen.key` is still this segment's id key.
                    seen.insert(&v);
                    ids.push(v);
                }
                passed.push(s);
            }
            Err(reason) => router.reject(Rejection::segment(&ctx.task.name, reason, s))?,
        }
    }
    // +∞ (every input finished) is job completion, which `run_worker` does after its last
    // batch, in bounded steps.
    if let Some(wm) = watermark.filter(|&wm| wm < i64::MAX) {
        stage.operator.on_watermark_into(wm, &mut batch);
    }
    if stage.timer_period_ms.is_some() {
        batch.extend(stage.operator.on_timer(now_ms()));
    }
    Ok((passed, batch, ids))
}

/// A batch taken through the task's function and windows: what it sends on, and the step it
/// must commit before anything of it is delivered.
struct Prepared {
    /// Segments gathered.
    len: usize,
    /// Segments going downstream (or to the task's output).
    outputs: Vec<Segment>,
    /// The windows' combined step (`None` without windows).
    step: Option<sardonyx_windowing::Step>,
    /// Ids of the segments the windows applied.
    ids: Vec<Value>,
    /// The greatest offset of each input the batch covers.
    inputs: Vec<(u32, u64)>,
    /// The batch's acknowledgements, released once it is handled.
    acks: HeldAcks,
    /// The task's mark (watermark and idleness) when the batch was gathered.
    mark: Mark,
}

impl Prepared {
    /// Merges the batch prepared after this one into it: one record, one delivery.
    fn absorb(&mut self, next: Prepared) {
        self.len += next.len;
        self.outputs.extend(next.outputs);
        match (&mut self.step, next.step) {
            (Some(step), Some(more)) => step.extend(more),
            (step, more) => *step = step.take().or(more),
        }
        self.ids.extend(next.ids);
        self.acks.extend(next.acks);
        self.inputs = covered_inputs(self.acks.tokens());
        self.mark = Mark {
            watermark: next.mark.watermark.or(self.mark.watermark),
            idle: next.mark.idle,
        };
    }
}

/// Takes a gathered batch (segments, acks, mark) through the lifecycle's `before_batch`,
/// the task's function and its windows ([`window_batch`]). Commits and delivers nothing.
/// `fresh`: the batch starts a record of its own (else it will be merged into the batch
/// prepared just before it, [`Prepared::absorb`], and shares its seen ids).
#[allow(clippy::too_many_arguments)]
fn prepare(
    ctx: &PeerContext,
    lifecycles: &[Lifecycle],
    function: Option<&crate::registry::FunctionFn>,
    stage: Option<&mut WindowStage>,
    grouping: &Grouping,
    dedup: Option<(&SlotLog, &str)>,
    seen: &mut SeenPair,
    (segments, acks, mark): (Vec<Segment>, HeldAcks, Mark),
    fresh: bool,
    router: &mut Router,
) -> Result<Prepared, RunError> {
    let len = segments.len();
    if len > 0 {
        call_hooks(lifecycles, |l| {
            l.before_batch.as_ref().map(|h| h(&ctx.event(), len))
        });
    }
    let outputs = match function {
        Some(f) => apply_function(ctx, lifecycles, f, segments, router)?,
        None => segments,
    };
    let Some(stage) = stage else {
        return Ok(Prepared {
            len,
            outputs,
            step: None,
            ids: Vec::new(),
            inputs: Vec::new(),
            acks,
            mark,
        });
    };
    if fresh {
        seen.next_batch();
    }
    let dedup = dedup.map(|(slot, field)| (slot, field, seen));
    let (outputs, step, ids) =
        window_batch(ctx, stage, grouping, dedup, outputs, mark.watermark, router)?;
    let inputs = covered_inputs(acks.tokens());
    Ok(Prepared {
        len,
        outputs,
        step: Some(step),
        ids,
        inputs,
        acks,
        mark,
    })
}

/// Commits a step that applied no segments (a restart's firings, a timer, job completion) to
/// the slot's ledger, if the job has a state log, and only then delivers its firings.
async fn settle(
    ctx: &PeerContext,
    stage: &WindowStage,
    slot: &mut Option<SlotLog>,
    mut step: sardonyx_windowing::Step,
    router: &mut Router,
) -> Result<(), RunError> {
    if let Some(slot) = slot {
        let record = crate::slot::BatchRecord {
            epoch: slot.epoch(),
            transitions: std::mem::take(&mut step.transitions),
            ..Default::default()
        };
        if !record.is_empty() {
            slot.commit(record).await?;
        }
    }
    deliver(ctx, stage, step, router)
}

/// Syncs a step's firings and flushes the syncs, sends emitted firings downstream and late
/// segments to their task or the error output. The flush comes before anything else is logged:
/// recovery re-derives only the firings of a slot's last record, so the firings of every
/// earlier record must already be durable (a step synced but not flushed when the next record
/// is appended is lost to a crash).
fn deliver(
    ctx: &PeerContext,
    stage: &WindowStage,
    step: sardonyx_windowing::Step,
    router: &mut Router,
) -> Result<(), RunError> {
    if step.firings.is_empty() && step.late.is_empty() {
        return Ok(());
    }
    let fired = step.firings.len();
    ctx.progress
        .fired
        .fetch_add(fired as u64, Ordering::Relaxed);
    let mut delivery = Delivery::default();
    stage
        .deliver(step, &mut delivery)
        .map_err(|e| ctx.plugin_error(e))?;
    if fired > 0 {
        stage.flush_syncs().map_err(|e| ctx.plugin_error(e))?;
    }
    for s in delivery.emitted {
        router.route(s)?;
    }
    for (task, segment, reason) in delivery.late {
        ctx.progress.late.fetch_add(1, Ordering::Relaxed);
        match task.and_then(|t| router.destination_of(&t)) {
            Some(d) => router.place(segment, vec![(d, Vec::new())])?,
            None => router.reject(Rejection::segment(&ctx.task.name, reason, segment))?,
        }
    }
    Ok(())
}

/// Applies the task's function to every segment of a batch. A failure or panic goes through
/// the lifecycles' `handle_exception` (default: defer to the error path; `restart` ends the peer
/// with [`RunError::RestartRequested`], and the job restarts its peers).
fn apply_function(
    ctx: &PeerContext,
    lifecycles: &[Lifecycle],
    f: &crate::registry::FunctionFn,
    segments: Vec<Segment>,
    router: &mut Router,
) -> Result<Vec<Segment>, RunError> {
    let mut out = Vec::with_capacity(segments.len());
    for s in segments {
        let kept = s.clone();
        let result = catch_unwind(AssertUnwindSafe(|| f(s, &ctx.task.params)))
            .unwrap_or_else(|p| Err(format!("function panicked: {}", panic_message(&p))));
        match result {
            Ok(produced) => out.extend(produced),
            Err(reason) => {
                let action = lifecycles
                    .iter()
                    .find_map(|l| l.handle_exception.as_ref())
                    .map_or(ExceptionAction::Defer, |h| h(&ctx.event(), &kept, &reason));
                match action {
                    ExceptionAction::Kill => {
                        return Err(RunError::Killed {
                            task: ctx.task.name.clone(),
                            reason,
                        })
                    }
                    ExceptionAction::Restart => {
                        // The job's peers restart from the committed positions (this segment's
                        // batch is not committed, so it is read again); the peer's hooks run
                        // as for any stop and start.
                        tracing::warn!(task = %ctx.task.name, peer = ctx.peer, %reason, "restarting task peer");
                        call_hooks(lifecycles, |l| {
                            l.after_task_stop.as_ref().map(|h| h(&ctx.event()))
                        });
                        return Err(RunError::RestartRequested {
                            task: ctx.task.name.clone(),
                            reason,
                        });
                    }
                    ExceptionAction::Defer => router.fail(kept, reason)?,
                }
            }
        }
    }
    Ok(out)
}

type WriteResult = (
    Box<dyn SegmentSink>,
    Vec<Segment>,
    Result<(), sardonyx_connectors::ConnectorError>,
);

/// Writes a batch and makes it durable at the sink ([`SegmentSink::flush`]: a file written to
/// the OS, a Kafka delivery confirmed, a PostgreSQL transaction committed), on a blocking thread
/// (sinks do blocking I/O), handing the sink back. A retryable failure is retried with backoff
/// by `retry` (the whole batch again: at least once, never lost); past its bound the result is
/// the error with its cause.
async fn write_out(
    mut sink: Box<dyn SegmentSink>,
    segments: Vec<Segment>,
    retry: sardonyx_connectors::RetryPolicy,
) -> Result<WriteResult, RunError> {
    tokio::task::spawn_blocking(move || {
        let r = retry.run("writing a batch", || {
            sink.write(&segments)?;
            sink.flush()
        });
        (sink, segments, r)
    })
    .await
    .map_err(RunError::PeerTask)
}
