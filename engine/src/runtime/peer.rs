//! Task peers: input peers read from a plugin; worker peers (function and output tasks) take
//! batches, apply the task's code and route what comes out.

use std::borrow::Cow;
use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use sardonyx_connectors::{Position, Positions, SourceBatch};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::ack::{AckIssuer, AckToken, HeldAcks};
use super::durable::{Committed, JobState, SlotLog};
use super::errors::{ErrorFile, Rejection};
use super::routing::{group_key_ref, jump_hash, key_hash, key_peer, FlowPlan};
use super::windowed::{Delivery, Syncs, WindowStage};
use super::{Mark, Msg, Progress, RunError, Topology, COMPLETION_FIRINGS};
use crate::job::{GroupKey, Job, TaskKind, TaskSpec, Unmatched};
use crate::registry::{
    ExceptionAction, GroupFn, InputReader, Lifecycle, PluginContext, Registry, SegmentSink,
    TaskEvent,
};
use crate::segment::{self, Segment, Value};
use sardonyx_windowing::{Completion, WatermarkTracker};

/// The resume positions of peers that have none (outputs, fresh inputs).
static NO_POSITIONS: Positions = Positions::new();

/// Everything a peer needs to know about its place in the job.
pub(crate) struct PeerContext {
    pub job: Arc<Job>,
    pub registry: Registry,
    pub task: TaskSpec,
    pub peer: usize,
    pub n_peers: usize,
    pub topology: Arc<Topology>,
    pub targets: Vec<String>,
    pub error_task: Option<String>,
    pub error_file: ErrorFile,
    pub progress: Arc<Progress>,
    pub syncs: Arc<Syncs>,
    /// The job's exactly-once state, if it has a state log.
    pub state: Option<Arc<JobState>>,
}

impl PeerContext {
    fn lifecycles(&self) -> Vec<Lifecycle> {
        self.job
            .lifecycles
            .iter()
            .filter(|l| l.task == self.task.name || l.task == "all")
            .filter_map(|l| self.registry.lifecycle(&l.calls).cloned())
            .collect()
    }

    fn event(&self) -> TaskEvent<'_> {
        TaskEvent {
            task: &self.task.name,
            peer: self.peer,
        }
    }

    fn plugin_ctx(&self) -> PluginContext<'_> {
        PluginContext {
            task: &self.task,
            peer: self.peer,
            n_peers: self.n_peers,
            resuming: self.state.as_ref().is_some_and(|s| s.resumed),
            positions: &NO_POSITIONS,
        }
    }

    pub(crate) fn id(&self) -> usize {
        self.topology.first_peer[&self.task.name] + self.peer
    }

    fn plugin_error(&self, message: impl Into<String>) -> RunError {
        RunError::Plugin {
            task: self.task.name.clone(),
            message: message.into(),
        }
    }
}

/// How segments are spread over one downstream task's peers.
enum Spread {
    RoundRobin(usize),
    Key(GroupKey),
    Fn(GroupFn),
}

struct Destination {
    senders: Vec<mpsc::Sender<Msg>>,
    spread: Spread,
    buffers: Vec<Vec<Segment>>,
    /// The last mark each peer was sent.
    sent: Vec<Mark>,
}

/// Routes one peer's output to its downstream peers, the error task and the error file.
struct Router {
    task: String,
    sender: usize,
    registry: Registry,
    plan: FlowPlan,
    /// Downstream tasks in workflow order, then the error task (if it is not downstream).
    destinations: Vec<Destination>,
    names: Vec<String>,
    error_destination: Option<usize>,
    error_file: ErrorFile,
    /// This peer wrote rejections to the error file since it last made them durable.
    errors_written: bool,
    /// The job's `unmatched: "error"`: segments no flow condition matches are rejected.
    unmatched_to_errors: bool,
    progress: Arc<Progress>,
}

impl Router {
    fn new(ctx: &PeerContext) -> Self {
        let downstream: Vec<String> = ctx
            .job
            .downstream(&ctx.task.name)
            .into_iter()
            .map(str::to_owned)
            .collect();
        let plan = FlowPlan::new(&ctx.task.name, downstream.clone(), &ctx.job.flow_conditions);
        let destinations = ctx
            .targets
            .iter()
            .map(|name| {
                let senders = ctx.topology.senders[name].clone();
                let spec = ctx.job.task(name).expect("validated");
                let spread = match (&spec.group_by_key, &spec.group_by_fn) {
                    (Some(k), _) => Spread::Key(k.clone()),
                    (None, Some(f)) => {
                        Spread::Fn(ctx.registry.group_fn(f).expect("validated").clone())
                    }
                    // With exactly-once state, a windowed task without grouping gets each
                    // segment on the peer its uniqueness id hashes to, so a segment read again
                    // after a restart meets the dedup filter that saw it.
                    (None, None)
                        if ctx.state.is_some() && dedup_field(&ctx.job, spec).is_some() =>
                    {
                        Spread::Key(GroupKey::One(
                            dedup_field(&ctx.job, spec).expect("checked").to_owned(),
                        ))
                    }
                    // Start each sender at a different peer so load spreads from the first batch.
                    (None, None) => Spread::RoundRobin(ctx.peer),
                };
                let n = senders.len();
                Destination {
                    senders,
                    spread,
                    buffers: vec![Vec::new(); n],
                    sent: vec![Mark::default(); n],
                }
            })
            .collect();
        let error_destination = ctx
            .error_task
            .as_ref()
            .and_then(|e| ctx.targets.iter().position(|t| t == e));
        Router {
            task: ctx.task.name.clone(),
            sender: ctx.id(),
            registry: ctx.registry.clone(),
            plan,
            destinations,
            names: ctx.targets.clone(),
            error_destination,
            error_file: ctx.error_file.clone(),
            errors_written: false,
            unmatched_to_errors: ctx.job.unmatched == Some(Unmatched::Error),
            progress: ctx.progress.clone(),
        }
    }

    /// Puts a segment the task produced into the buffers of its destinations.
    fn route(&mut self, segment: Segment) -> Result<(), RunError> {
        if self.plan.unconditional() {
            // Every downstream task, nothing excluded (what the plan's route would say).
            let n = self.plan.downstream_len();
            if n == 0 {
                return Ok(());
            }
            for d in 0..n - 1 {
                self.place_one(segment.clone(), d, &[])?;
            }
            return self.place_one(segment, n - 1, &[]);
        }
        let route = self
            .plan
            .route(&self.registry, &segment, false)
            .expect("successful segments always get a route");
        if !route.matched {
            return self.unmatched(segment);
        }
        self.place(segment, route.destinations)
    }

    /// A segment that matched none of the task's flow conditions: counted, and sent to the
    /// error output if the job asks for it (`unmatched: "error"`).
    fn unmatched(&mut self, segment: Segment) -> Result<(), RunError> {
        self.progress.unmatched.fetch_add(1, Ordering::Relaxed);
        if self.unmatched_to_errors {
            let reason = format!(
                "matched none of the flow conditions of task \"{}\"",
                self.task
            );
            return self.reject(Rejection::segment(&self.task, reason, segment));
        }
        Ok(())
    }

    fn place(
        &mut self,
        segment: Segment,
        destinations: Vec<(usize, Vec<String>)>,
    ) -> Result<(), RunError> {
        let n = destinations.len();
        let mut segment = Some(segment);
        for (i, (d, exclude)) in destinations.into_iter().enumerate() {
            let s = if i + 1 == n {
                segment.take().expect("moved once")
            } else {
                segment.clone().expect("still here")
            };
            self.place_one(s, d, &exclude)?;
        }
        Ok(())
    }

    /// Puts a segment (less the `exclude`d fields) into the buffer of the peer of destination
    /// `d` that takes it, or rejects it if its key cannot be computed.
    fn place_one(&mut self, mut s: Segment, d: usize, exclude: &[String]) -> Result<(), RunError> {
        for k in exclude {
            s.remove(k);
        }
        let dest = &mut self.destinations[d];
        let n_peers = dest.senders.len();
        let peer = match &mut dest.spread {
            Spread::RoundRobin(next) => {
                *next = (*next + 1) % n_peers;
                Ok(*next)
            }
            Spread::Key(k) => key_peer(k, &s, n_peers),
            Spread::Fn(f) => match catch_unwind(AssertUnwindSafe(|| f(&s))) {
                Ok(key) => Ok(jump_hash(key_hash(&key), n_peers)),
                Err(p) => Err(format!("group_by_fn panicked: {}", panic_message(&p))),
            },
        };
        match peer {
            Ok(peer) => {
                dest.buffers[peer].push(s);
                Ok(())
            }
            Err(reason) => self.reject(Rejection::segment(&self.task, reason, s)),
        }
    }

    /// The index of destination task `name`.
    fn destination_of(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// Sends a segment the task's function failed on to a thrown-exception route, the error
    /// task or the error file.
    fn fail(&mut self, segment: Segment, reason: String) -> Result<(), RunError> {
        let rejection = Rejection::segment(&self.task, reason, segment);
        let record = rejection.to_segment();
        if let Some(route) = self.plan.route(&self.registry, &record, true) {
            return self.place(record, route.destinations);
        }
        self.reject(rejection)
    }

    /// Sends a rejection to the error task, or else the error file.
    fn reject(&mut self, rejection: Rejection) -> Result<(), RunError> {
        match self.error_destination {
            Some(d) => {
                let record = rejection.to_segment();
                self.error_file.count_only();
                self.place(record, vec![(d, Vec::new())])
            }
            None => {
                self.errors_written = true;
                self.error_file
                    .write(&rejection)
                    .map_err(RunError::ErrorOutput)
            }
        }
    }

    /// Makes the rejections this peer wrote to the error file durable (written to the OS). Call
    /// before releasing the acks of the batch they came from, so that an input never commits
    /// past a rejection a crash could lose. (Rejections sent to an error task travel with the
    /// batch's acks instead: that task acknowledges them once written.)
    fn errors_durable(&mut self) -> Result<(), RunError> {
        if std::mem::take(&mut self.errors_written) {
            self.error_file.flush().map_err(RunError::ErrorOutput)?;
        }
        Ok(())
    }

    /// Sends every buffered segment, with the mark (watermark and idleness) and the acks of the
    /// batch they came from. Peers that got nothing still learn a mark that changed.
    async fn flush(&mut self, mark: Mark, acks: &HeldAcks) {
        for dest in &mut self.destinations {
            for (peer, buffer) in dest.buffers.iter_mut().enumerate() {
                let moved = dest.sent[peer] != mark;
                if buffer.is_empty() && !moved {
                    continue;
                }
                dest.sent[peer] = mark;
                let msg = Msg::Batch {
                    sender: self.sender,
                    // The next batch likely fills about as much: spare the buffer's regrowth.
                    segments: std::mem::replace(buffer, Vec::with_capacity(buffer.len())),
                    mark,
                    acks: acks.share(),
                };
                // A closed receiver means that peer failed; the job reports its error. (The lost
                // message's acks are dropped unreleased, so its input batch is never committed.)
                let _ = dest.senders[peer].send(msg).await;
            }
        }
    }

    /// Tells every destination peer this peer is done.
    async fn finish(&mut self) {
        for dest in &self.destinations {
            for s in &dest.senders {
                let _ = s
                    .send(Msg::Done {
                        sender: self.sender,
                    })
                    .await;
            }
        }
    }
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with no message".to_owned())
}

/// Runs one input peer: reads batches from the plugin (opened at `resume`, the positions an
/// earlier run committed), parses records into segments (malformed ones go to the error output
/// with their line number), tracks the watermark, routes, until the input is exhausted or the
/// job is stopped (then it finishes as if exhausted, having marked the job as stopped). Committed positions arriving on
/// `committed` are passed on to the source ([`sardonyx_connectors::Source::commit_all`]), the
/// last of them once everything read is processed.
pub(crate) async fn run_input(
    ctx: PeerContext,
    mut issuer: AckIssuer,
    resume: Positions,
    mut committed: tokio::sync::watch::Receiver<Positions>,
) -> Result<(), RunError> {
    let plugin = ctx
        .registry
        .input(ctx.task.plugin.as_deref().unwrap_or_default())
        .expect("validated")
        .clone();
    let plugin_ctx = PluginContext {
        positions: &resume,
        ..ctx.plugin_ctx()
    };
    let reader = (plugin.open)(&plugin_ctx).map_err(|e| ctx.plugin_error(e))?;
    let lifecycles = ctx.lifecycles();
    call_hooks(&lifecycles, |l| {
        l.before_task_start.as_ref().map(|h| h(&ctx.event()))
    });
    let mut router = Router::new(&ctx);
    let batch_size = ctx.task.effective_batch_size();
    let timeout = ctx.task.effective_batch_timeout();
    let mut watermark = InputWatermark::new(&ctx.task);
    if matches!(reader, InputReader::Nothing) {
        router.finish().await;
    }
    ctx.topology.inputs_opened.wait().await;
    let mut records_source = None;
    let mut stopped_early = false;
    match reader {
        InputReader::Nothing => {
            call_hooks(&lifecycles, |l| {
                l.after_task_stop.as_ref().map(|h| h(&ctx.event()))
            });
            return Ok(());
        }
        InputReader::Records(mut source) => {
            // Every partition the source owns holds the watermark back from the start, also one
            // that has not produced a record yet (until it is idle).
            watermark.register(&source.partitions(), now_ms());
            // The state log, not the source, is where the job resumes from; a run killed
            // between its ledger commit and the source commit left the source behind, and a
            // partition with nothing left to read would never be committed again: bring the
            // source up to the resume point first.
            if !resume.is_empty() {
                let ps = resume.clone();
                source = tokio::task::spawn_blocking(move || {
                    commit_to_source(source.as_mut(), &ps);
                    source
                })
                .await
                .map_err(|e| RunError::Internal(e.to_string()))?;
            }
            loop {
                // A stop ends reading between batches (a poll waits at most `batch_timeout`).
                if ctx.topology.stop.is_cancelled() {
                    stopped_early = true;
                    break;
                }
                let to_commit = committed
                    .has_changed()
                    .unwrap_or(false)
                    .then(|| committed.borrow_and_update().clone());
                let (back, polled) = tokio::task::spawn_blocking(move || {
                    if let Some(ps) = to_commit {
                        commit_to_source(source.as_mut(), &ps);
                    }
                    let r = source.poll_batch(batch_size, timeout);
                    (source, r)
                })
                .await
                .map_err(|e| RunError::Internal(e.to_string()))?;
                source = back;
                let records = match polled.map_err(|e| ctx.plugin_error(e.to_string()))? {
                    SourceBatch::Done => break,
                    SourceBatch::Idle => {
                        // Partitions may have turned idle: downstream learns it if so.
                        router
                            .flush(watermark.mark(now_ms()), &HeldAcks::default())
                            .await;
                        continue;
                    }
                    SourceBatch::Records(r) => r,
                };
                // Where the batch ends in each partition it read.
                let positions: Positions = records.iter().map(|r| r.position).collect();
                ctx.progress
                    .read
                    .fetch_add(records.len() as u64, Ordering::Relaxed);
                call_hooks(&lifecycles, |l| {
                    l.before_batch
                        .as_ref()
                        .map(|h| h(&ctx.event(), records.len()))
                });
                let now = now_ms();
                for r in &records {
                    let parsed = match &r.fault {
                        Some(fault) => Err(fault.to_string()),
                        None => segment::from_json_slice(&r.payload),
                    };
                    match parsed {
                        Ok(s) => {
                            watermark.observe(r.position.partition, &s);
                            router.route(s)?;
                        }
                        Err(reason) => {
                            let raw = String::from_utf8_lossy(&r.payload).into_owned();
                            router.reject(Rejection::input(
                                &ctx.task.name,
                                reason,
                                r.index,
                                raw,
                            ))?;
                        }
                    }
                }
                let acks = HeldAcks::new(vec![issuer.issue(positions)]);
                router.flush(watermark.mark(now), &acks).await;
                router.errors_durable()?;
                acks.release();
                call_hooks(&lifecycles, |l| {
                    l.after_batch
                        .as_ref()
                        .map(|h| h(&ctx.event(), records.len()))
                });
            }
            records_source = Some(source);
        }
        InputReader::Segments(mut rx) => {
            watermark.register(&[0], now_ms());
            let mut n = 0_u64;
            loop {
                // With an `idle_timeout`, wait no longer than until the input turns idle, so
                // that it can say so downstream.
                let idle_wait = watermark.next_idle_at().map(|at| {
                    std::time::Duration::from_millis(at.saturating_sub(now_ms()).max(1) as u64)
                });
                let first = tokio::select! {
                    biased;
                    () = ctx.topology.stop.cancelled() => {
                        stopped_early = true;
                        break;
                    }
                    first = rx.recv() => match first {
                        Some(s) => s,
                        None => break,
                    },
                    () = async {
                        match idle_wait {
                            Some(w) => tokio::time::sleep(w).await,
                            None => std::future::pending().await,
                        }
                    } => {
                        router
                            .flush(watermark.mark(now_ms()), &HeldAcks::default())
                            .await;
                        continue;
                    }
                };
                let mut batch = vec![first];
                let deadline = Instant::now() + timeout;
                while batch.len() < batch_size {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(s)) => batch.push(s),
                        Ok(None) | Err(_) => break,
                    }
                }
                n += batch.len() as u64;
                ctx.progress
                    .read
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                call_hooks(&lifecycles, |l| {
                    l.before_batch
                        .as_ref()
                        .map(|h| h(&ctx.event(), batch.len()))
                });
                let len = batch.len();
                let now = now_ms();
                for s in batch {
                    watermark.observe(0, &s);
                    router.route(s)?;
                }
                let acks = HeldAcks::new(vec![issuer.issue(Positions::from_iter([Position {
                    partition: 0,
                    offset: n,
                }]))]);
                router.flush(watermark.mark(now), &acks).await;
                router.errors_durable()?;
                acks.release();
                call_hooks(&lifecycles, |l| {
                    l.after_batch.as_ref().map(|h| h(&ctx.event(), len))
                });
            }
        }
    }
    if stopped_early {
        // Before `Done` goes downstream, which is how downstream peers learn of it in time.
        tracing::info!(task = %ctx.task.name, peer = ctx.peer, "input stopped before its end");
        ctx.topology.stopped_early.store(true, Ordering::SeqCst);
    }
    router.finish().await;
    drop(issuer);
    if let Some(mut source) = records_source {
        // Once every batch is processed downstream the committer ends: commit its last word.
        let mut last = None;
        while committed.changed().await.is_ok() {
            last = Some(committed.borrow_and_update().clone());
        }
        if let Some(ps) = last {
            tokio::task::spawn_blocking(move || commit_to_source(source.as_mut(), &ps))
                .await
                .map_err(|e| RunError::Internal(e.to_string()))?;
        }
    }
    call_hooks(&lifecycles, |l| {
        l.after_task_stop.as_ref().map(|h| h(&ctx.event()))
    });
    Ok(())
}

/// Tells the source of committed positions; a failure only delays what the source records (the
/// state log, not the source, is where the job resumes from).
fn commit_to_source(source: &mut dyn sardonyx_connectors::Source, positions: &Positions) {
    if positions.is_empty() {
        return;
    }
    if let Err(e) = source.commit_all(positions) {
        tracing::warn!(error = %e, "committing input positions to the source failed");
    }
}

fn call_hooks(lifecycles: &[Lifecycle], f: impl Fn(&Lifecycle) -> Option<()>) {
    for l in lifecycles {
        let _ = f(l);
    }
}

/// The watermark an input derives from the segments it reads, if the task declares one: per
/// partition, greatest event time seen minus `max_out_of_order`; the input's watermark is the
/// least over its partitions, where a partition idle for `idle_timeout` (its own task's) stops
/// holding it back (so one quiet Kafka partition does not stall the job). Every partition the
/// source owns is registered before the first batch, so one that has produced nothing yet
/// holds the watermark back too. When every partition is idle the input is idle, and says so
/// downstream ([`Mark::idle`]).
struct InputWatermark {
    key: Option<String>,
    partitions: WatermarkTracker<u32>,
    /// The greatest event time of each partition observed since the tracker was last told
    /// ([`InputWatermark::mark`]): a batch reaches it once per partition, not per segment.
    pending: Vec<(u32, i64)>,
}

impl InputWatermark {
    fn new(task: &TaskSpec) -> Self {
        let wm = task.watermark.as_ref();
        let millis = |s: Option<crate::job::Span>| s.and_then(|s| s.as_millis());
        InputWatermark {
            key: wm.map(|w| w.key.clone()),
            partitions: WatermarkTracker::new(
                millis(wm.and_then(|w| w.max_out_of_order)).unwrap_or(0),
                // Without a watermark key there is no event time, and nothing to be idle about.
                millis(wm.and_then(|w| w.idle_timeout)),
            ),
            pending: Vec::new(),
        }
    }

    /// Registers the partitions the source owns, their idle clocks starting at `now_ms`.
    fn register(&mut self, partitions: &[u32], now_ms: i64) {
        for &p in partitions {
            self.partitions.add_input(p, now_ms);
        }
    }

    /// Notes the event time of segment `s`, read from `partition`.
    fn observe(&mut self, partition: u32, s: &Segment) {
        let Some(t) = self
            .key
            .as_deref()
            .and_then(|k| s.get(k))
            .and_then(Value::as_event_time)
        else {
            return;
        };
        match self.pending.iter_mut().find(|(p, _)| *p == partition) {
            Some((_, max)) => *max = (*max).max(t),
            None => self.pending.push((partition, t)),
        }
    }

    /// The mark after the segments observed since the last call, which were read at
    /// `read_at_ms`.
    fn mark(&mut self, read_at_ms: i64) -> Mark {
        for (partition, t) in self.pending.drain(..) {
            self.partitions.observe(partition, t, read_at_ms);
        }
        let now = now_ms();
        let wm = self.partitions.watermark(now);
        Mark {
            watermark: (wm > i64::MIN).then_some(wm),
            idle: self.partitions.is_idle(now),
        }
    }

    /// When a partition still holding the watermark back would turn idle (`None`: never, or
    /// none holds it).
    fn next_idle_at(&self) -> Option<i64> {
        self.partitions.next_idle_at(now_ms())
    }
}

/// Processing time for idleness and timers: milliseconds since this process first asked, on a
/// monotonic clock, so that neither jumps when the wall clock is set. (It restarts with the
/// process: a recovered slot restarts its timers, [`sardonyx_windowing::WindowOperator::restart_timers`].)
fn now_ms() -> i64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    i64::try_from(start.elapsed().as_millis()).unwrap_or(i64::MAX)
}

/// What one wait for input gave.
enum Gathered {
    /// A batch (possibly only a watermark or acks).
    Batch(Vec<Segment>, HeldAcks),
    /// Nothing arrived before the timer tick.
    Tick,
    /// Every upstream peer is done.
    Finished,
}

/// The receiving side of a worker peer: batching and per-sender watermarks.
struct Inbox {
    rx: mpsc::Receiver<Msg>,
    pending: usize,
    tracker: WatermarkTracker<usize>,
    batch_size: usize,
    timeout: std::time::Duration,
}

impl Inbox {
    fn new(ctx: &PeerContext, rx: mpsc::Receiver<Msg>) -> Self {
        let upstream = ctx
            .topology
            .upstream_peers
            .get(&ctx.task.name)
            .cloned()
            .unwrap_or_default();
        // No `idle_timeout` here: an upstream peer is idle only when it says so (a quiet peer
        // may be a slow one, and its data would come late).
        let mut tracker = WatermarkTracker::new(0, None);
        let now = now_ms();
        for &p in &upstream {
            tracker.add_input(p, now);
        }
        Inbox {
            rx,
            pending: upstream.len(),
            tracker,
            batch_size: ctx.task.effective_batch_size(),
            timeout: ctx.task.effective_batch_timeout(),
        }
    }

    /// The task's mark now: its watermark (`None` until every upstream peer that is not idle
    /// has given one) and whether every upstream peer still sending is idle.
    fn mark(&mut self) -> Mark {
        let now = now_ms();
        let wm = self.tracker.watermark(now);
        Mark {
            watermark: (wm > i64::MIN).then_some(wm),
            idle: self.tracker.is_idle(now),
        }
    }

    /// Gathers a batch: whatever is queued, then waits until it is full or the timeout ends.
    /// With `tick`, gives up waiting for the first message after that long.
    async fn gather(&mut self, tick: Option<std::time::Duration>) -> Gathered {
        let mut segments = Vec::new();
        let mut acks = HeldAcks::default();
        let mut got_any = false;
        let mut deadline: Option<Instant> = tick.map(|t| Instant::now() + t);
        while self.pending > 0 {
            let msg = match deadline {
                None => self.rx.recv().await,
                Some(d) => match tokio::time::timeout_at(d, self.rx.recv()).await {
                    Ok(m) => m,
                    Err(_) => break,
                },
            };
            if !got_any && matches!(msg, Some(Msg::Batch { .. })) {
                deadline = Some(Instant::now() + self.timeout);
            }
            got_any |= self.take(msg, &mut segments, &mut acks);
            if segments.len() >= self.batch_size {
                break;
            }
        }
        if got_any {
            Gathered::Batch(segments, acks)
        } else if self.pending == 0 {
            Gathered::Finished
        } else {
            Gathered::Tick
        }
    }

    /// What is queued right now, up to a batch, without waiting (`None` if nothing is).
    fn try_gather(&mut self) -> Option<(Vec<Segment>, HeldAcks)> {
        let mut segments = Vec::new();
        let mut acks = HeldAcks::default();
        let mut got_any = false;
        while self.pending > 0 && segments.len() < self.batch_size {
            let msg = match self.rx.try_recv() {
                Ok(m) => Some(m),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => None,
            };
            got_any |= self.take(msg, &mut segments, &mut acks);
        }
        got_any.then_some((segments, acks))
    }

    /// Adds one received message (`None`: every sender is gone) to the batch being gathered;
    /// true if it counts as something received.
    fn take(&mut self, msg: Option<Msg>, segments: &mut Vec<Segment>, acks: &mut HeldAcks) -> bool {
        match msg {
            None => {
                self.pending = 0;
                false
            }
            Some(Msg::Done { sender }) => {
                self.pending -= 1;
                self.tracker.finish(sender);
                true
            }
            Some(Msg::Batch {
                sender,
                segments: s,
                mark,
                acks: a,
            }) => {
                if segments.is_empty() {
                    *segments = s;
                } else {
                    segments.extend(s);
                }
                acks.extend(a);
                let now = now_ms();
                if let Some(w) = mark.watermark {
                    self.tracker.observe(sender, w, now);
                }
                self.tracker.set_idle(sender, mark.idle, now);
                true
            }
        }
    }
}

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
    let retry = crate::registry::retry_policy(&ctx.task.params).map_err(|e| ctx.plugin_error(e))?;
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
                let record = crate::state::BatchRecord {
                    epoch: slot.epoch(),
                    ids: crate::state::Ids::from_values(&batch.ids),
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
        let compaction_due = slot.as_ref().is_some_and(SlotLog::compaction_due);
        if let (true, Some(f), false) = (pipelined, &inflight, compaction_due) {
            // Whatever is queued while the record commits becomes the next record (up to
            // `max_merged_batches`): the slower the log, the larger the records.
            let max = slot.as_ref().map_or(1, SlotLog::max_merged_batches);
            let mut merged = 0;
            while merged < max && (merged == 0 || !f.is_finished()) {
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
            if slot.compaction_due() {
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
            .map_err(|e| RunError::Internal(e.to_string()))?
            .map_err(|e| ctx.plugin_error(e.to_string()))?;
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

/// The field a windowed task deduplicates on: its `uniqueness_key`, unless `deduplicate` is
/// false or the task has no windows.
pub(crate) fn dedup_field<'a>(job: &Job, task: &'a TaskSpec) -> Option<&'a str> {
    if task.deduplicate == Some(false) || job.windows_of(&task.name).next().is_none() {
        return None;
    }
    task.uniqueness_key.as_deref()
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
            crate::state::id_key_into(v, &mut seen.key);
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

/// The uniqueness ids one batch applied (kept between batches for their allocations).
#[derive(Default)]
struct SeenIds {
    /// Integer ids (their key `i` + 8 bytes stands for exactly one value).
    ints: IntIds,
    /// The keys ([`crate::state::id_key`]) of other ids.
    keys: HashSet<Vec<u8>, foldhash::fast::RandomState>,
}

impl SeenIds {
    fn clear(&mut self) {
        self.ints.clear();
        self.keys.clear();
    }

    fn contains(&self, v: &Value, key: &[u8]) -> bool {
        match v {
            Value::Int(i) => self.ints.contains(*i),
            _ => self.keys.contains(key),
        }
    }

    fn insert(&mut self, v: &Value, key: &[u8]) {
        match v {
            Value::Int(i) => self.ints.insert(*i),
            _ => {
                self.keys.insert(key.to_vec());
            }
        }
    }
}

/// A set of integer ids built for ids that mostly arrive in increasing order (sequence
/// numbers, offsets): those above every id before them extend a sorted run, so asking about
/// the next one is a comparison instead of a hash lookup; the others go to a hash set.
#[derive(Default)]
struct IntIds {
    /// Increasing.
    run: Vec<i64>,
    /// Ids that were not above the run's last when inserted (possibly also in the run).
    others: HashSet<i64, foldhash::fast::RandomState>,
}

impl IntIds {
    fn clear(&mut self) {
        self.run.clear();
        self.others.clear();
    }

    fn contains(&self, i: i64) -> bool {
        let in_run = match self.run.last() {
            Some(&last) if i <= last => self.run.binary_search(&i).is_ok(),
            _ => false,
        };
        in_run || (!self.others.is_empty() && self.others.contains(&i))
    }

    /// Adds `i` (callers ask [`IntIds::contains`] first, so an id already in the run is not
    /// searched for again; one would only be held twice).
    fn insert(&mut self, i: i64) {
        match self.run.last() {
            Some(&last) if i <= last => {
                self.others.insert(i);
            }
            _ => self.run.push(i),
        }
    }
}

/// The ids a windowed peer has applied that the dedup filter may not hold yet: those of the
/// batch being prepared and of the batch prepared before it (whose record may still be in
/// flight, or whose ids are inserted into the filter only while the next record is appended).
/// Every earlier batch's ids are in the filter.
#[derive(Default)]
struct SeenPair {
    here: SeenIds,
    prev: SeenIds,
    /// The key of the id at hand.
    key: Vec<u8>,
    /// The keys of the ids of the batch at hand.
    batch: BatchKeys,
}

/// The id keys of a batch's segments, one after another in one buffer (an empty key for a
/// segment without the uniqueness field).
#[derive(Default)]
struct BatchKeys {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl BatchKeys {
    /// Each segment's key, in order.
    fn iter(&self) -> impl Iterator<Item = &[u8]> + Clone {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(&self.ends).map(|(a, &b)| &self.bytes[a..b])
    }
}

impl SeenPair {
    /// Starts a batch: the current batch's ids become the previous batch's.
    fn next_batch(&mut self) {
        std::mem::swap(&mut self.here, &mut self.prev);
        self.here.clear();
    }

    /// True if the id `v`, whose key is in `self.key`, was applied by this batch or the one
    /// before.
    fn contains(&self, v: &Value) -> bool {
        self.here.contains(v, &self.key) || self.prev.contains(v, &self.key)
    }

    /// Computes the id key of each of `segments` (by the uniqueness field `field`) into
    /// `self.batch`.
    fn batch_keys(&mut self, segments: &[Segment], field: &str) {
        self.batch.bytes.clear();
        self.batch.ends.clear();
        for s in segments {
            if let Some(v) = s.get(field) {
                crate::state::id_key_into(v, &mut self.key);
                self.batch.bytes.extend_from_slice(&self.key);
            }
            self.batch.ends.push(self.batch.bytes.len());
        }
    }

    /// Notes the id `v`, whose key is in `self.key`, as applied by this batch.
    fn insert(&mut self, v: &Value) {
        self.here.insert(v, &self.key);
    }
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
        let record = crate::state::BatchRecord {
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
    .map_err(|e| RunError::Internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::IntIds;
    use proptest::prelude::*;
    use std::collections::HashSet;

    proptest! {
        /// Whatever the order of the ids, the set answers as a plain hash set does; runs of
        /// increasing ids (the case it is built for) are mixed with repeats and strays.
        #[test]
        fn int_ids_answer_as_a_hash_set(
            steps in prop::collection::vec((any::<bool>(), -20_i64..20, prop::bool::weighted(0.05)), 0..200),
        ) {
            let mut ids = IntIds::default();
            let mut model = HashSet::new();
            let mut next = 0_i64;
            for (increasing, stray, clear) in steps {
                if clear {
                    ids.clear();
                    model.clear();
                    continue;
                }
                let i = if increasing { next += 3; next } else { next + stray };
                prop_assert_eq!(ids.contains(i), model.contains(&i), "before inserting {}", i);
                ids.insert(i);
                model.insert(i);
                prop_assert!(ids.contains(i));
                for probe in next - 25..next + 25 {
                    prop_assert_eq!(ids.contains(probe), model.contains(&probe), "probe {}", probe);
                }
            }
        }
    }
}
