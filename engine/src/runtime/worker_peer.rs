//! Worker peers (function, windowed and output tasks): the driver of a task slot. It gathers
//! a batch, runs the task's function (and the lifecycles) on it, feeds it to the slot machine
//! ([`crate::slot::Slot`]) if the task has windows, and carries out the machine's commands in
//! order: the ledger and the dedup filter through [`SlotLog`], deliveries through
//! [`WindowStage`], the router, the sink, the acknowledgements. It decides nothing the
//! machine decides (order, pipelining, compaction, completion).

use std::borrow::Cow;
use std::collections::VecDeque;
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
use super::slot_log::{Appending, SlotLog};
use super::window_stage::{Delivery, WindowStage};
use crate::job::{GroupKey, TaskKind};
use crate::lifecycle::{ExceptionAction, Lifecycle};
use crate::plugin::SegmentSink;
use crate::registry::{FunctionFn, GroupFn};
use crate::segment::{Segment, Value};
use crate::slot::{Batch, Command, GroupOf, LogConfig, Slot, SlotConfig, Want};

/// Runs one function or output peer until every upstream peer is done.
pub(crate) async fn run_worker(ctx: PeerContext, rx: mpsc::Receiver<Msg>) -> Result<(), RunError> {
    let lifecycles = ctx.lifecycles();
    call_hooks(&lifecycles, |l| {
        l.before_task_start.as_ref().map(|h| h(&ctx.event()))
    });
    let sink: Option<Box<dyn SegmentSink>> = match ctx.task.kind {
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
    let windows = WindowStage::new(&ctx.job, &ctx.task, &ctx.registry, &ctx.syncs)
        .map_err(|e| ctx.plugin_error(e))?;
    let tick = windows
        .as_ref()
        .and_then(|(s, _)| s.timer_period_ms)
        .map(|p| std::time::Duration::from_millis(p.clamp(1, 1000) as u64));
    let mut driver = Driver {
        router: Router::new(&ctx),
        inbox: Inbox::new(&ctx, rx),
        ctx: &ctx,
        lifecycles: &lifecycles,
        function,
        sink,
        retry,
        grouping: Grouping::of(&ctx),
        stage: None,
        log: None,
        appending: None,
        held: VecDeque::new(),
        next_seq: 0,
        answers: Vec::new(),
        timer: tick.is_some(),
    };
    let mut slot = match windows {
        Some((stage, operator)) => {
            driver.stage = Some(stage);
            Some(driver.open_slot(operator).await?)
        }
        None => None,
    };
    loop {
        if let Some(slot) = &mut slot {
            driver.carry_out(slot).await?;
        }
        let commit_finished = driver
            .appending
            .as_ref()
            .is_some_and(Appending::is_finished);
        match slot
            .as_ref()
            .map_or(Want::Batch, |s| s.want(commit_finished))
        {
            Want::Done => break,
            Want::Commit => {
                let appending = driver.appending.take().expect("a record is in flight");
                let log = driver.log.as_mut().expect("a logged slot");
                let position = log.end_append(appending).await?;
                slot.as_mut().expect("a slot").on_committed(position);
            }
            Want::CommitOrBatch => {
                let appending = driver.appending.as_mut().expect("a record is in flight");
                let queued = tokio::select! {
                    biased;
                    () = appending.finished() => None,
                    queued = driver.inbox.next_queued() => queued,
                };
                if let Some((segments, acks)) = queued {
                    driver.take(segments, acks, slot.as_mut()).await?;
                }
            }
            Want::QueuedBatch => match driver.inbox.try_gather() {
                Some((segments, acks)) => driver.take(segments, acks, slot.as_mut()).await?,
                None => slot.as_mut().expect("a slot").on_queue_empty(),
            },
            Want::Batch => match driver.inbox.gather(tick).await {
                Gathered::Finished => match &mut slot {
                    // An input stopped before it was exhausted ([`super::RunOptions::stop`]):
                    // the job is not complete and will resume, so its windows must not fire as
                    // at job completion.
                    Some(slot) => {
                        slot.on_inputs_finished(ctx.topology.stopped_early.load(Ordering::SeqCst))
                    }
                    None => break,
                },
                Gathered::Tick => {
                    driver
                        .take(Vec::new(), HeldAcks::default(), slot.as_mut())
                        .await?
                }
                Gathered::Batch(segments, acks) => {
                    driver.take(segments, acks, slot.as_mut()).await?
                }
            },
        }
    }
    let Driver {
        mut router, sink, ..
    } = driver;
    if let Some(mut s) = sink {
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

/// A batch gathered and not yet released.
struct Held {
    seq: u64,
    acks: HeldAcks,
    mark: Mark,
    len: usize,
    /// When it was gathered (its duration, to release, goes to the slot's histogram).
    began: std::time::Instant,
}

/// What a worker peer carries out for its slot.
struct Driver<'a> {
    ctx: &'a PeerContext,
    lifecycles: &'a [Lifecycle],
    router: Router,
    inbox: Inbox,
    function: Option<FunctionFn>,
    sink: Option<Box<dyn SegmentSink>>,
    retry: sardonyx_connectors::RetryPolicy,
    grouping: Grouping,
    /// Where a windowed slot's firings and late segments go.
    stage: Option<WindowStage>,
    /// An exactly-once slot's ledger and filter.
    log: Option<SlotLog>,
    /// The record being appended.
    appending: Option<Appending>,
    /// Batches gathered and not yet released, in order.
    held: VecDeque<Held>,
    next_seq: u64,
    /// The filter's answers for a batch (kept for its allocation).
    answers: Vec<bool>,
    /// Whether a trigger is a timer (batches then carry the clock).
    timer: bool,
}

impl Driver<'_> {
    /// The slot of a windowed task over `operator`: with a state log, taken over (the `Owner`
    /// record), rebuilt from its ledger, its dedup filter brought up to date; then started
    /// (the timers' clocks).
    async fn open_slot(
        &mut self,
        operator: sardonyx_windowing::WindowOperator,
    ) -> Result<Slot, RunError> {
        let ctx = self.ctx;
        let dedup = dedup_field(&ctx.job, &ctx.task).map(str::to_owned);
        let mut config = SlotConfig {
            ledger: String::new(),
            uniqueness_key: None,
            timer: self.timer,
            pipelined: self.lifecycles.is_empty(),
            key_groups: None,
            log: None,
        };
        let mut slot = match &ctx.state {
            Some(js) => {
                if js.past(&ctx.task.name).is_some() {
                    self.gather_first_state(js, dedup.is_some()).await?;
                }
                let (mut log, taken) =
                    SlotLog::take_over(js.clone(), &ctx.task.name, ctx.peer, ctx.progress.clone())
                        .await?;
                config.ledger = log.ledger().to_owned();
                config.uniqueness_key = dedup;
                let grouped = ctx.task.group_by_key.is_some() || ctx.task.group_by_fn.is_some();
                config.key_groups = grouped.then(|| ctx.job.key_groups());
                config.log = Some(LogConfig {
                    epoch: js.epoch,
                    compact_after_bytes: js.options.compact_after_bytes,
                    max_merged_batches: js.options.max_merged_batches,
                });
                let dedup = config.uniqueness_key.is_some();
                let mut slot = Slot::new(operator, config);
                let read = &taken.read;
                let snapshot = read.snapshot.as_ref().map(|(p, b)| (*p, b.as_slice()));
                let recovered = slot.on_recovered(snapshot, &read.entries)?;
                log.recovered(dedup, recovered, taken).await?;
                self.log = Some(log);
                slot
            }
            None => Slot::new(operator, config),
        };
        slot.on_started(now_ms());
        Ok(slot)
    }

    /// A slot of a task being rescaled ([`super::rescale`]): its first state gathered from the
    /// old slots, their last records' firings for its groups delivered again, then written as
    /// its first snapshot.
    async fn gather_first_state(
        &mut self,
        js: &Arc<super::job_log::JobLog>,
        dedup: bool,
    ) -> Result<(), RunError> {
        let ctx = self.ctx;
        let fresh = || {
            WindowStage::new(&ctx.job, &ctx.task, &ctx.registry, &ctx.syncs)
                .ok()
                .flatten()
                .expect("the task's windows were built once already")
                .1
        };
        let Some(mut first) = super::rescale::gather(ctx, js, dedup, &fresh).await? else {
            return Ok(());
        };
        let pending = std::mem::take(&mut first.pending);
        if !pending.is_empty() {
            let stage = self.stage.as_ref().expect("a windowed slot");
            let step = sardonyx_windowing::Step {
                firings: pending,
                ..Default::default()
            };
            deliver(ctx, stage, step, &mut self.router)?;
        }
        first.write(js, &ctx.task.name, dedup).await
    }

    /// Takes a gathered batch through the lifecycles' `before_batch` and the task's function,
    /// then to the slot, or, without windows, straight on.
    async fn take(
        &mut self,
        segments: Vec<Segment>,
        acks: HeldAcks,
        slot: Option<&mut Slot>,
    ) -> Result<(), RunError> {
        let ctx = self.ctx;
        let began = std::time::Instant::now();
        let len = segments.len();
        if len > 0 {
            call_hooks(self.lifecycles, |l| {
                l.before_batch.as_ref().map(|h| h(&ctx.event(), len))
            });
        }
        let outputs = match &self.function {
            Some(f) => apply_function(ctx, self.lifecycles, f, segments, &mut self.router)?,
            None => segments,
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let mark = self.inbox.mark();
        let inputs = match (&slot, &self.log) {
            (Some(_), Some(_)) => covered_inputs(acks.tokens()),
            _ => Vec::new(),
        };
        self.held.push_back(Held {
            seq,
            acks,
            mark,
            len,
            began,
        });
        match slot {
            Some(slot) => {
                let batch = Batch {
                    seq,
                    segments: outputs,
                    inputs,
                    watermark: mark.watermark,
                    now_ms: if self.timer { now_ms() } else { 0 },
                };
                slot.on_batch(batch, &self.grouping);
            }
            None => {
                self.output(outputs, seq).await?;
                self.release(seq);
            }
        }
        Ok(())
    }

    /// Carries out the slot's commands, in order, until it has none.
    async fn carry_out(&mut self, slot: &mut Slot) -> Result<(), RunError> {
        let ctx = self.ctx;
        while let Some(command) = slot.next_command() {
            match command {
                Command::LookUpIds => {
                    let log = self.log.as_ref().expect("only a logged slot deduplicates");
                    log.seen_each(slot.lookup_keys(), &mut self.answers)?;
                    slot.on_ids_looked_up(&self.answers, &self.grouping);
                }
                Command::Reject { segment, reason } => {
                    self.router
                        .reject(Rejection::segment(&ctx.task.name, reason, segment))?
                }
                Command::CountDuplicates(n) => {
                    ctx.progress.duplicates.fetch_add(n, Ordering::Relaxed);
                    ctx.counters.duplicates.fetch_add(n, Ordering::Relaxed);
                }
                Command::Append { bytes, ids } => {
                    let log = self.log.as_mut().expect("only a logged slot appends");
                    self.appending = Some(log.begin_append(bytes, ids));
                }
                Command::InsertIds { ids, mark } => {
                    let log = self.log.as_mut().expect("only a logged slot inserts ids");
                    log.insert_ids(&ids, &mark)?;
                }
                Command::Deliver(step) => {
                    let stage = self.stage.as_ref().expect("a windowed slot");
                    deliver(ctx, stage, step, &mut self.router)?;
                }
                Command::Output { segments, through } => {
                    let emptied = self.output(segments, through).await?;
                    slot.recycle_outputs(emptied);
                }
                Command::Compact { position, epoch } => {
                    slot.drop_spare();
                    let log = self.log.as_mut().expect("only a logged slot compacts");
                    log.compact(position, epoch, slot.operator()).await?;
                }
                Command::Release { through } => self.release(through),
                Command::Flush => {
                    let mark = self.inbox.mark();
                    self.router.flush(mark, &HeldAcks::default()).await;
                }
            }
        }
        Ok(())
    }

    /// Writes the segments of the batches up to `through` to the task's sink (durable, retried
    /// while retryable) or routes them on, then flushes what was sent, holding every batch not
    /// yet released (what is sent now may hold what a batch applied ahead produced: its
    /// rejections, for one), and makes the error output durable. Gives back the emptied vector.
    async fn output(
        &mut self,
        segments: Vec<Segment>,
        through: u64,
    ) -> Result<Vec<Segment>, RunError> {
        let ctx = self.ctx;
        let mut segments = match self.sink.take() {
            Some(out) if !segments.is_empty() => {
                let (back, segments, result) = write_out(out, segments, self.retry).await?;
                self.sink = Some(back);
                result.map_err(|source| RunError::Sink {
                    task: ctx.task.name.clone(),
                    source,
                })?;
                let n = segments.len() as u64;
                ctx.progress.written.fetch_add(n, Ordering::Relaxed);
                ctx.counters.written.fetch_add(n, Ordering::Relaxed);
                // What an output task wrote does not travel further (outputs have no edges):
                // its field lists go back to the inputs' parsers.
                crate::recycle::POOL.give_back(segments);
                Vec::new()
            }
            other => {
                self.sink = other;
                segments
            }
        };
        for s in segments.drain(..) {
            self.router.route(s)?;
        }
        // The batches' mark: the latest watermark any of them carried, the last one's idleness.
        let mut mark: Option<Mark> = None;
        for h in self.held.iter().take_while(|h| h.seq <= through) {
            mark = Some(Mark {
                watermark: h.mark.watermark.or(mark.and_then(|m| m.watermark)),
                idle: h.mark.idle,
            });
        }
        let mark = mark.unwrap_or_default();
        match self.held.len() {
            1 => self.router.flush(mark, &self.held[0].acks).await,
            _ => {
                let mut all = HeldAcks::default();
                for h in &self.held {
                    all.extend(h.acks.share());
                }
                self.router.flush(mark, &all).await;
                all.release();
            }
        }
        self.router.errors_durable()?;
        Ok(segments)
    }

    /// Batches up to `through` are handled: their acknowledgements go upstream, then the
    /// lifecycles' `after_batch`.
    fn release(&mut self, through: u64) {
        let ctx = self.ctx;
        while self.held.front().is_some_and(|h| h.seq <= through) {
            let h = self.held.pop_front().expect("a held batch");
            h.acks.release();
            if h.len > 0 {
                ctx.counters.observe_batch(h.began.elapsed());
                call_hooks(self.lifecycles, |l| {
                    l.after_batch.as_ref().map(|h2| h2(&ctx.event(), h.len))
                });
            }
        }
    }
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
}

impl GroupOf for Grouping {
    fn group_of<'s>(&self, s: &'s Segment) -> Result<Cow<'s, Value>, String> {
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
        ctx.counters.late.fetch_add(1, Ordering::Relaxed);
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
    f: &FunctionFn,
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
