//! Input peers: read batches from an input plugin, parse them into segments, track the
//! input's watermark, route, and pass committed positions back to the source.

use std::sync::atomic::Ordering;

use sardonyx_connectors::{Position, Positions, SourceBatch};
use tokio::time::Instant;

use super::ack::{AckIssuer, HeldAcks};
use super::context::{call_hooks, now_ms, PeerContext};
use super::rejections::Rejection;
use super::router::Router;
use super::{Mark, RunError};
use crate::job::TaskSpec;
use crate::plugin::{InputReader, PluginContext};
use crate::segment::{self, Segment, Value};
use sardonyx_windowing::WatermarkTracker;

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
                .map_err(RunError::PeerTask)?;
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
                .map_err(RunError::PeerTask)?;
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
                .map_err(RunError::PeerTask)?;
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
