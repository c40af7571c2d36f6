//! Input peers: open an input plugin at the resume positions, read batches from it, parse them
//! into segments, track the input's watermark, route, and on a stop or the input's end tell
//! downstream peers they are done and pass the last committed positions back to the source.

use std::sync::atomic::Ordering;

use sardonyx_connectors::{ConnectorError, Position, Positions, Record, Source, SourceBatch};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::ack::{AckIssuer, HeldAcks};
use super::context::{call_hooks, now_ms, PeerContext};
use super::error::RunError;
use super::input_watermark::InputWatermark;
use super::rejections::Rejection;
use super::router::Router;
use crate::lifecycle::Lifecycle;
use crate::plugin::{InputReader, PluginContext};
use crate::segment::{self, Segment};

/// The committed positions an input peer receives from its `commit_loop`.
type Committed = tokio::sync::watch::Receiver<Positions>;

/// Runs one input peer: reads batches from the plugin (opened at `resume`, the positions an
/// earlier run committed), parses records into segments (malformed ones go to the error output
/// with their line number), tracks the watermark, routes, until the input is exhausted or the
/// job is stopped (then it finishes as if exhausted, having marked the job as stopped).
/// Committed positions arriving on `committed` are passed on to the source
/// ([`sardonyx_connectors::Source::commit_all`]), the last of them once everything read is
/// processed.
///
/// Its steps: [`InputPeer::open`], then once every input peer has opened, one of the read loops
/// ([`InputPeer::read_records`], [`InputPeer::read_segments`]), then [`InputPeer::finish`].
pub(super) async fn run_input(
    ctx: PeerContext,
    issuer: AckIssuer,
    resume: Positions,
    mut committed: Committed,
) -> Result<(), RunError> {
    let (mut peer, reader) = InputPeer::open(ctx, issuer, &resume)?;
    if matches!(reader, InputReader::Nothing) {
        peer.router.finish().await;
    }
    peer.ctx.topology.inputs_opened.wait().await;
    let (source, end) = match reader {
        InputReader::Nothing => {
            peer.after_task_stop();
            return Ok(());
        }
        InputReader::Records(source) => {
            let (source, end) = peer.read_records(source, &resume, &mut committed).await?;
            (Some(source), end)
        }
        InputReader::Segments(rx) => (None, peer.read_segments(rx).await?),
    };
    peer.finish(end, source, committed).await
}

/// Why a read loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The input is exhausted.
    Exhausted,
    /// The job was stopped before the input was exhausted.
    Stopped,
}

/// A read of the next batch, begun on a blocking thread: it gives the source back.
type Reading = tokio::task::JoinHandle<(Box<dyn Source>, Result<SourceBatch, ConnectorError>)>;

/// What follows the batch being parsed.
enum Next {
    /// The next batch, being read meanwhile.
    Read(Reading),
    /// A stop: reading ends after this batch.
    Stop(Box<dyn Source>),
}

/// One input peer while it runs: its place in the job, hooks, router and watermark.
struct InputPeer {
    ctx: PeerContext,
    lifecycles: Vec<Lifecycle>,
    router: Router,
    watermark: InputWatermark,
    issuer: AckIssuer,
    batch_size: usize,
    timeout: std::time::Duration,
    /// The parser of the records' lines: of the fields the job reads if it reads only some
    /// ([`super::projection::input_fields`]), by a parser that learns the lines' shape.
    parser: segment::LineParser,
}

impl InputPeer {
    /// Opens the plugin's reader at `resume` and calls the `before_task_start` hooks.
    fn open(
        ctx: PeerContext,
        issuer: AckIssuer,
        resume: &Positions,
    ) -> Result<(InputPeer, InputReader), RunError> {
        let plugin = ctx
            .registry
            .input(ctx.task.plugin.as_deref().unwrap_or_default())
            .expect("validated")
            .clone();
        let plugin_ctx = PluginContext {
            positions: resume,
            ..ctx.plugin_ctx()
        };
        let reader = (plugin.open)(&plugin_ctx).map_err(|e| ctx.plugin_error(e))?;
        let lifecycles = ctx.lifecycles();
        call_hooks(&lifecycles, |l| {
            l.before_task_start.as_ref().map(|h| h(&ctx.event()))
        });
        let peer = InputPeer {
            router: Router::new(&ctx),
            batch_size: ctx.task.effective_batch_size(),
            timeout: ctx.task.effective_batch_timeout(),
            watermark: InputWatermark::new(&ctx.task),
            parser: super::projection::input_fields(&ctx.job, &ctx.task.name)
                .map_or_else(segment::LineParser::whole, |names| {
                    segment::LineParser::new(segment::Fields::new(names))
                }),
            lifecycles,
            issuer,
            ctx,
        };
        Ok((peer, reader))
    }

    /// Reads a connector source until it is exhausted or the job is stopped: each batch is
    /// parsed and routed; committed positions are passed on to the source between polls.
    async fn read_records(
        &mut self,
        mut source: Box<dyn Source>,
        resume: &Positions,
        committed: &mut Committed,
    ) -> Result<(Box<dyn Source>, End), RunError> {
        // Every partition the source owns holds the watermark back from the start, also one
        // that has not produced a record yet (until it is idle).
        self.watermark.register(&source.partitions(), now_ms());
        // The state log, not the source, is where the job resumes from; a run killed between
        // its ledger commit and the source commit left the source behind, and a partition with
        // nothing left to read would never be committed again: bring the source up to the
        // resume point first.
        if !resume.is_empty() {
            let ps = resume.clone();
            source = tokio::task::spawn_blocking(move || {
                commit_to_source(source.as_mut(), &ps);
                source
            })
            .await
            .map_err(RunError::PeerTask)?;
        }
        // While a batch is parsed and routed, the next one is read on a blocking thread, so
        // that reading the source and parsing overlap. A stop ends reading between batches:
        // the batch read when it came is still processed, the next is not read.
        if self.ctx.topology.stop.is_cancelled() {
            return Ok((source, End::Stopped));
        }
        let mut reading = self.read_next(source, committed, Vec::new());
        // The records of the batch parsed last, handed back to the source with the next read
        // (to reuse their buffers).
        let mut spent = Vec::new();
        loop {
            let (source, polled) = reading.await.map_err(RunError::PeerTask)?;
            let polled = polled.map_err(|source| RunError::Source {
                task: self.ctx.task.name.clone(),
                source,
            })?;
            if let SourceBatch::Done = polled {
                return Ok((source, End::Exhausted));
            }
            let next = if self.ctx.topology.stop.is_cancelled() {
                Next::Stop(source)
            } else {
                Next::Read(self.read_next(source, committed, std::mem::take(&mut spent)))
            };
            if let SourceBatch::Records(records) = polled {
                let began = Instant::now();
                // Where the batch ends in each partition it read.
                let positions: Positions = records.iter().map(|r| r.position).collect();
                self.before_batch(records.len());
                let now = now_ms();
                self.parser.restock();
                for r in &records {
                    self.parse_and_route(r)?;
                }
                self.end_batch(positions, now, records.len()).await?;
                self.ctx.counters.observe_batch(began.elapsed());
                spent = records;
            } else {
                // Idle: partitions may have turned idle, and downstream learns it if so.
                self.send_mark().await;
            }
            match next {
                Next::Read(next) => reading = next,
                Next::Stop(source) => return Ok((source, End::Stopped)),
            }
        }
    }

    /// Starts reading the next batch from `source` on a blocking thread, first passing on the
    /// positions committed since the last read and handing back `spent`, the records of a
    /// batch already parsed. The task gives the source back with what it read.
    fn read_next(
        &self,
        mut source: Box<dyn Source>,
        committed: &mut Committed,
        spent: Vec<Record>,
    ) -> Reading {
        let to_commit = committed
            .has_changed()
            .unwrap_or(false)
            .then(|| committed.borrow_and_update().clone());
        let (batch_size, timeout) = (self.batch_size, self.timeout);
        tokio::task::spawn_blocking(move || {
            if let Some(ps) = to_commit {
                commit_to_source(source.as_mut(), &ps);
            }
            source.recycle(spent);
            let r = source.poll_batch(batch_size, timeout);
            (source, r)
        })
    }

    /// Parses one record into a segment and routes it, or rejects it (with its line number and
    /// raw text) if it is malformed or the source could not hand it over whole.
    fn parse_and_route(&mut self, r: &Record) -> Result<(), RunError> {
        let parsed = match &r.fault {
            Some(fault) => Err(fault.to_string()),
            None => self.parser.parse(&r.payload),
        };
        match parsed {
            Ok(s) => {
                self.watermark.observe(r.position.partition, &s);
                self.router.route(s)
            }
            Err(reason) => {
                let raw = String::from_utf8_lossy(&r.payload).into_owned();
                self.router
                    .reject(Rejection::input(&self.ctx.task.name, reason, r.index, raw))
            }
        }
    }

    /// Reads segments handed over in memory until the channel closes or the job is stopped;
    /// with an `idle_timeout`, a wait ends when the input turns idle, so that it says so
    /// downstream.
    async fn read_segments(&mut self, mut rx: mpsc::Receiver<Segment>) -> Result<End, RunError> {
        self.watermark.register(&[0], now_ms());
        let mut n = 0_u64;
        loop {
            // With an `idle_timeout`, wait no longer than until the input turns idle, so that
            // it can say so downstream.
            let idle_wait = self.watermark.next_idle_at(now_ms()).map(|at| {
                std::time::Duration::from_millis(at.saturating_sub(now_ms()).max(1) as u64)
            });
            let first = tokio::select! {
                biased;
                () = self.ctx.topology.stop.cancelled() => return Ok(End::Stopped),
                first = rx.recv() => match first {
                    Some(s) => s,
                    None => return Ok(End::Exhausted),
                },
                () = async {
                    match idle_wait {
                        Some(w) => tokio::time::sleep(w).await,
                        None => std::future::pending().await,
                    }
                } => {
                    self.send_mark().await;
                    continue;
                }
            };
            let mut batch = vec![first];
            let deadline = Instant::now() + self.timeout;
            while batch.len() < self.batch_size {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(s)) => batch.push(s),
                    Ok(None) | Err(_) => break,
                }
            }
            let began = Instant::now();
            n += batch.len() as u64;
            self.before_batch(batch.len());
            let len = batch.len();
            let now = now_ms();
            for s in batch {
                self.watermark.observe(0, &s);
                self.router.route(s)?;
            }
            let positions = Positions::from_iter([Position {
                partition: 0,
                offset: n,
            }]);
            self.end_batch(positions, now, len).await?;
            self.ctx.counters.observe_batch(began.elapsed());
        }
    }

    /// Counts a batch of `len` records read and calls the `before_batch` hooks.
    fn before_batch(&self, len: usize) {
        self.ctx
            .progress
            .read
            .fetch_add(len as u64, Ordering::Relaxed);
        let counters = &self.ctx.counters;
        counters
            .segments_in
            .fetch_add(len as u64, Ordering::Relaxed);
        counters.batches.fetch_add(1, Ordering::Relaxed);
        call_hooks(&self.lifecycles, |l| {
            l.before_batch.as_ref().map(|h| h(&self.ctx.event(), len))
        });
    }

    /// Ends a routed batch of `len` records that ends at `positions` and was read at `read_at`:
    /// sends it downstream with the input's mark and the batch's ack, makes its rejections
    /// durable, releases the ack, and calls the `after_batch` hooks.
    async fn end_batch(
        &mut self,
        positions: Positions,
        read_at: i64,
        len: usize,
    ) -> Result<(), RunError> {
        let acks = HeldAcks::new(vec![self.issuer.issue(positions, len as u64)]);
        self.router
            .flush(self.watermark.mark(read_at, now_ms()), &acks)
            .await;
        self.router.errors_durable()?;
        acks.release();
        call_hooks(&self.lifecycles, |l| {
            l.after_batch.as_ref().map(|h| h(&self.ctx.event(), len))
        });
        Ok(())
    }

    /// Sends the input's mark with no segments (peers that got it already get nothing).
    async fn send_mark(&mut self) {
        let mark = self.watermark.mark(now_ms(), now_ms());
        self.router.flush(mark, &HeldAcks::default()).await;
    }

    /// Ends the peer: marks the job as stopped if it was, tells downstream peers it is done,
    /// passes the last committed positions to the source once everything read is processed,
    /// and calls the `after_task_stop` hooks.
    async fn finish(
        mut self,
        end: End,
        source: Option<Box<dyn Source>>,
        mut committed: Committed,
    ) -> Result<(), RunError> {
        if end == End::Stopped {
            // Before `Done` goes downstream, which is how downstream peers learn of it in time.
            tracing::info!(task = %self.ctx.task.name, peer = self.ctx.peer, "input stopped before its end");
            self.ctx
                .topology
                .stopped_early
                .store(true, Ordering::SeqCst);
        }
        self.router.finish().await;
        // The router lives on to the end, as the peer's senders did before this was split.
        let InputPeer {
            ctx,
            lifecycles,
            issuer,
            router: _router,
            ..
        } = self;
        drop(issuer);
        if let Some(mut source) = source {
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

    /// Calls the `after_task_stop` hooks (of a peer with nothing to read).
    fn after_task_stop(&self) {
        call_hooks(&self.lifecycles, |l| {
            l.after_task_stop.as_ref().map(|h| h(&self.ctx.event()))
        });
    }
}

/// Tells the source of committed positions; a failure only delays what the source records (the
/// state log, not the source, is where the job resumes from).
fn commit_to_source(source: &mut dyn Source, positions: &Positions) {
    if positions.is_empty() {
        return;
    }
    if let Err(e) = source.commit_all(positions) {
        tracing::warn!(error = %e, "committing input positions to the source failed");
    }
}
