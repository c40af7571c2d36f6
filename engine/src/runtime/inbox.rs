//! The receiving side of a worker peer: gathers batches up to the task's batch size or
//! timeout and keeps each sender's watermark and idleness.

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::ack::HeldAcks;
use super::context::{now_ms, PeerContext};
use super::{Mark, Msg};
use crate::segment::Segment;
use sardonyx_windowing::WatermarkTracker;

/// What one wait for input gave.
pub(crate) enum Gathered {
    /// A batch (possibly only a watermark or acks).
    Batch(Vec<Segment>, HeldAcks),
    /// Nothing arrived before the timer tick.
    Tick,
    /// Every upstream peer is done.
    Finished,
}

/// The receiving side of a worker peer: batching and per-sender watermarks.
pub(crate) struct Inbox {
    rx: mpsc::Receiver<Msg>,
    pending: usize,
    tracker: WatermarkTracker<usize>,
    batch_size: usize,
    timeout: std::time::Duration,
}

impl Inbox {
    pub(crate) fn new(ctx: &PeerContext, rx: mpsc::Receiver<Msg>) -> Self {
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
    pub(crate) fn mark(&mut self) -> Mark {
        let now = now_ms();
        let wm = self.tracker.watermark(now);
        Mark {
            watermark: (wm > i64::MIN).then_some(wm),
            idle: self.tracker.is_idle(now),
        }
    }

    /// Gathers a batch: whatever is queued, then waits until it is full or the timeout ends.
    /// With `tick`, gives up waiting for the first message after that long.
    pub(crate) async fn gather(&mut self, tick: Option<std::time::Duration>) -> Gathered {
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
    pub(crate) fn try_gather(&mut self) -> Option<(Vec<Segment>, HeldAcks)> {
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
    pub(crate) fn take(
        &mut self,
        msg: Option<Msg>,
        segments: &mut Vec<Segment>,
        acks: &mut HeldAcks,
    ) -> bool {
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
