//! The receiving side of a worker peer: gathers batches up to the task's batch size or
//! timeout and keeps each sender's watermark and idleness.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::ack::HeldAcks;
use super::context::{now_ms, PeerContext};
use super::message::{Mark, Msg};
use super::progress::SlotCounters;
use crate::segment::Segment;
use sardonyx_windowing::WatermarkTracker;

/// What one wait for input gave.
pub(super) enum Gathered {
    /// A batch (possibly only a watermark or acks).
    Batch(Vec<Segment>, HeldAcks),
    /// Nothing arrived before the timer tick.
    Tick,
    /// Every upstream peer is done.
    Finished,
}

/// The receiving side of a worker peer: batching and per-sender watermarks.
pub(super) struct Inbox {
    rx: mpsc::Receiver<Msg>,
    pending: usize,
    tracker: WatermarkTracker<usize>,
    batch_size: usize,
    timeout: std::time::Duration,
    /// The peer's counters (segments and batches taken in).
    counters: std::sync::Arc<SlotCounters>,
    /// Set when the job was stopped before its inputs' end (set before any input sends its
    /// `Done` then): a sender's `Done` after it keeps the sender's hold on the watermark.
    stopped_early: Arc<AtomicBool>,
}

impl Inbox {
    /// The inbox of a peer of `ctx`'s task, reading `rx`.
    pub(super) fn new(ctx: &PeerContext, rx: mpsc::Receiver<Msg>) -> Self {
        let upstream = ctx
            .topology
            .upstream_peers
            .get(&ctx.task.name)
            .map_or(&[][..], Vec::as_slice);
        Inbox {
            counters: ctx.counters.clone(),
            stopped_early: ctx.topology.stopped_early.clone(),
            ..Inbox::with(
                rx,
                upstream,
                ctx.task.effective_batch_size(),
                ctx.task.effective_batch_timeout(),
            )
        }
    }

    /// An inbox reading `rx`, sent to by the peers `upstream`, gathering batches of up to
    /// `batch_size` segments (whole messages: a batch may end a little over) or what arrived
    /// within `timeout` of the first.
    fn with(
        rx: mpsc::Receiver<Msg>,
        upstream: &[usize],
        batch_size: usize,
        timeout: std::time::Duration,
    ) -> Self {
        // No `idle_timeout` here: an upstream peer is idle only when it says so (a quiet peer
        // may be a slow one, and its data would come late).
        let mut tracker = WatermarkTracker::new(0, None);
        let now = now_ms();
        for &p in upstream {
            tracker.add_input(p, now);
        }
        Inbox {
            rx,
            pending: upstream.len(),
            tracker,
            batch_size,
            timeout,
            counters: std::sync::Arc::new(SlotCounters::new("", 0)),
            stopped_early: Arc::default(),
        }
    }

    /// The task's mark now: its watermark (`None` until every upstream peer that is not idle
    /// has given one) and whether every upstream peer still sending is idle.
    pub(super) fn mark(&mut self) -> Mark {
        let now = now_ms();
        let wm = self.tracker.watermark(now);
        Mark {
            watermark: (wm > i64::MIN).then_some(wm),
            idle: self.tracker.is_idle(now),
        }
    }

    /// Gathers a batch: whatever is queued, then waits until it is full or the timeout ends.
    /// With `tick`, gives up waiting for the first message after that long.
    pub(super) async fn gather(&mut self, tick: Option<std::time::Duration>) -> Gathered {
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
            self.count(&segments);
            Gathered::Batch(segments, acks)
        } else if self.pending == 0 {
            Gathered::Finished
        } else {
            Gathered::Tick
        }
    }

    /// What is queued right now, up to a batch, without waiting (`None` if nothing is).
    pub(super) fn try_gather(&mut self) -> Option<(Vec<Segment>, HeldAcks)> {
        self.gather_queued(Vec::new(), HeldAcks::default(), false)
    }

    /// Waits for the next message, then takes what is queued behind it, up to a batch (`None`
    /// if the message was the last sender going away). Never finishes once every sender is done.
    /// Cancel safe: dropped before a message arrives, it has taken none (so it can race the
    /// commit of a record in flight).
    pub(super) async fn next_queued(&mut self) -> Option<(Vec<Segment>, HeldAcks)> {
        if self.pending == 0 {
            return std::future::pending().await;
        }
        let msg = self.rx.recv().await;
        let (mut segments, mut acks) = (Vec::new(), HeldAcks::default());
        let got_any = self.take(msg, &mut segments, &mut acks);
        self.gather_queued(segments, acks, got_any)
    }

    /// Adds what is queued right now to `segments` and `acks`, up to a batch, without
    /// waiting; `got_any`: whether something was received before.
    fn gather_queued(
        &mut self,
        mut segments: Vec<Segment>,
        mut acks: HeldAcks,
        mut got_any: bool,
    ) -> Option<(Vec<Segment>, HeldAcks)> {
        while self.pending > 0 && segments.len() < self.batch_size {
            let msg = match self.rx.try_recv() {
                Ok(m) => Some(m),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => None,
            };
            got_any |= self.take(msg, &mut segments, &mut acks);
        }
        if got_any {
            self.count(&segments);
        }
        got_any.then_some((segments, acks))
    }

    /// Counts a gathered batch (one with segments) in the peer's counters.
    fn count(&self, segments: &[Segment]) {
        if !segments.is_empty() {
            let c = &self.counters;
            c.segments_in
                .fetch_add(segments.len() as u64, Ordering::Relaxed);
            c.batches.fetch_add(1, Ordering::Relaxed);
        }
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
                // A sender stopped early is not exhausted: it holds the watermark where it was.
                // Were its hold lifted, the other senders' watermark (an input peer further
                // into its file, say) would be logged, and what the stopped sender reads after
                // a resume would be late.
                if !self.stopped_early.load(Ordering::SeqCst) {
                    self.tracker.finish(sender);
                }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::segment::Value;

    /// Segments numbered `from..to`.
    fn segments(from: i64, to: i64) -> Vec<Segment> {
        (from..to)
            .map(|n| {
                let mut s = Segment::with_capacity(1);
                s.insert("n", Value::from(n));
                s
            })
            .collect()
    }

    fn numbers(segments: &[Segment]) -> Vec<i64> {
        segments
            .iter()
            .map(|s| s.get("n").and_then(Value::as_i64).unwrap())
            .collect()
    }

    fn batch(sender: usize, segments: Vec<Segment>, watermark: Option<i64>, idle: bool) -> Msg {
        Msg::Batch {
            sender,
            segments,
            mark: Mark { watermark, idle },
            acks: HeldAcks::default(),
        }
    }

    /// An inbox over upstream peers 0 and 1, batches of `batch_size`, and the sending end.
    fn inbox(batch_size: usize, timeout: Duration) -> (Inbox, mpsc::Sender<Msg>) {
        let (tx, rx) = mpsc::channel(16);
        (Inbox::with(rx, &[0, 1], batch_size, timeout), tx)
    }

    /// What is queued is gathered in whole messages until the batch size is reached; the rest
    /// waits for the next batch.
    #[test]
    fn a_batch_takes_whole_messages_up_to_the_batch_size() {
        let (mut inbox, tx) = inbox(3, Duration::ZERO);
        assert!(inbox.try_gather().is_none(), "nothing queued");
        tx.try_send(batch(0, segments(0, 2), None, false)).unwrap();
        tx.try_send(batch(1, segments(2, 4), None, false)).unwrap();
        tx.try_send(batch(0, segments(4, 5), None, false)).unwrap();
        let (first, _) = inbox.try_gather().unwrap();
        assert_eq!(numbers(&first), vec![0, 1, 2, 3]);
        let (second, _) = inbox.try_gather().unwrap();
        assert_eq!(numbers(&second), vec![4]);
        assert!(inbox.try_gather().is_none());
    }

    /// `next_queued` waits for a message and takes what is queued behind it, up to a batch; one
    /// dropped before anything arrives (a commit won the race) has taken nothing; once every
    /// sender is done it never finishes.
    #[tokio::test]
    async fn next_queued_waits_for_a_message_then_takes_the_queue_and_loses_nothing_if_dropped() {
        let (mut inbox, tx) = inbox(3, Duration::ZERO);
        let raced = tokio::time::timeout(Duration::from_millis(1), inbox.next_queued()).await;
        assert!(
            raced.is_err(),
            "nothing was queued: it waited, and was dropped"
        );
        tx.try_send(batch(0, segments(0, 2), None, false)).unwrap();
        tx.try_send(batch(1, segments(2, 4), None, false)).unwrap();
        tx.try_send(batch(0, segments(4, 5), None, false)).unwrap();
        let (first, _) = inbox.next_queued().await.unwrap();
        assert_eq!(numbers(&first), vec![0, 1, 2, 3]);
        let sent = tokio::spawn(async move {
            tx.send(Msg::Done { sender: 0 }).await.unwrap();
            tx.send(Msg::Done { sender: 1 }).await.unwrap();
        });
        let (second, _) = inbox.next_queued().await.unwrap();
        assert_eq!(numbers(&second), vec![4]);
        sent.await.unwrap();
        // The two `Done`s (whether they come with the batch above or after it).
        while inbox.pending > 0 {
            inbox.next_queued().await;
        }
        let after = tokio::time::timeout(Duration::from_millis(1), inbox.next_queued()).await;
        assert!(after.is_err(), "every sender is done: it waits forever");
    }

    /// The watermark is the least over the senders, once every sender that is not idle has
    /// given one; an idle sender stops holding it back until it sends a batch that is not idle;
    /// the inbox is idle when every sender still sending is.
    #[test]
    fn the_mark_follows_each_senders_watermark_and_idleness() {
        let (mut inbox, tx) = inbox(100, Duration::ZERO);
        let none = Mark::default();
        assert_eq!(inbox.mark(), none);
        tx.try_send(batch(0, Vec::new(), Some(10), false)).unwrap();
        inbox.try_gather().unwrap();
        assert_eq!(inbox.mark(), none, "sender 1 has no watermark yet");
        tx.try_send(batch(1, Vec::new(), Some(4), false)).unwrap();
        inbox.try_gather().unwrap();
        let at = |w: i64, idle: bool| Mark {
            watermark: Some(w),
            idle,
        };
        assert_eq!(inbox.mark(), at(4, false));
        tx.try_send(batch(1, Vec::new(), Some(4), true)).unwrap();
        inbox.try_gather().unwrap();
        assert_eq!(
            inbox.mark(),
            at(10, false),
            "idle sender 1 holds nothing back"
        );
        tx.try_send(batch(0, Vec::new(), Some(12), true)).unwrap();
        inbox.try_gather().unwrap();
        assert_eq!(inbox.mark(), at(12, true), "every sender idle");
        tx.try_send(batch(1, segments(0, 1), Some(6), false))
            .unwrap();
        inbox.try_gather().unwrap();
        assert_eq!(
            inbox.mark(),
            at(12, false),
            "never backwards, no longer idle"
        );
    }

    /// A sender's `Done` ends its hold on the watermark and counts as something received; when
    /// every sender is done the inbox is finished, and its watermark is +∞.
    #[tokio::test]
    async fn done_from_every_sender_finishes_the_inbox() {
        let (mut inbox, tx) = inbox(100, Duration::ZERO);
        tx.try_send(batch(0, segments(0, 1), Some(10), false))
            .unwrap();
        tx.try_send(Msg::Done { sender: 1 }).unwrap();
        match inbox.gather(None).await {
            Gathered::Batch(s, _) => assert_eq!(numbers(&s), vec![0]),
            _ => panic!("expected a batch"),
        }
        assert_eq!(inbox.mark().watermark, Some(10));
        tx.try_send(Msg::Done { sender: 0 }).unwrap();
        assert!(matches!(inbox.gather(None).await, Gathered::Batch(s, _) if s.is_empty()));
        assert_eq!(inbox.mark().watermark, Some(i64::MAX));
        assert!(matches!(inbox.gather(None).await, Gathered::Finished));
        assert!(inbox.try_gather().is_none());
    }

    /// After a stop, a sender's `Done` still finishes it, but its watermark keeps holding the
    /// task's back (it resumes from there in the next run).
    #[tokio::test]
    async fn done_after_a_stop_keeps_the_senders_hold_on_the_watermark() {
        let (mut inbox, tx) = inbox(100, Duration::ZERO);
        tx.try_send(batch(0, Vec::new(), Some(10), false)).unwrap();
        tx.try_send(batch(1, Vec::new(), Some(90), false)).unwrap();
        inbox.try_gather().unwrap();
        assert_eq!(inbox.mark().watermark, Some(10));
        inbox.stopped_early.store(true, Ordering::SeqCst);
        tx.try_send(Msg::Done { sender: 0 }).unwrap();
        inbox.try_gather().unwrap();
        assert_eq!(inbox.mark().watermark, Some(10), "sender 0 still holds it");
        tx.try_send(Msg::Done { sender: 1 }).unwrap();
        inbox.try_gather().unwrap();
        assert_eq!(inbox.mark().watermark, Some(10), "not +∞ either");
        assert!(matches!(inbox.gather(None).await, Gathered::Finished));
    }

    /// Every sender gone without a `Done` (their peers failed) finishes the inbox too.
    #[tokio::test]
    async fn a_closed_channel_finishes_the_inbox() {
        let (mut inbox, tx) = inbox(100, Duration::ZERO);
        drop(tx);
        assert!(matches!(inbox.gather(None).await, Gathered::Finished));
    }

    /// With a tick and nothing queued, a wait gives `Tick`; a full batch is given at once,
    /// without waiting for the batch timeout.
    #[tokio::test]
    async fn a_wait_ends_at_the_tick_or_when_the_batch_is_full() {
        let (mut inbox, tx) = inbox(2, Duration::from_secs(3600));
        assert!(matches!(
            inbox.gather(Some(Duration::ZERO)).await,
            Gathered::Tick
        ));
        tx.try_send(batch(0, segments(0, 2), None, false)).unwrap();
        tx.try_send(batch(1, segments(2, 3), None, false)).unwrap();
        match inbox.gather(None).await {
            Gathered::Batch(s, _) => assert_eq!(numbers(&s), vec![0, 1]),
            _ => panic!("expected a batch"),
        }
    }

    /// A batch that is not full goes out the task's batch timeout after its first message
    /// arrived: what arrives meanwhile joins it, what arrives later waits for the next batch.
    /// (On tokio's paused clock: the test takes no time.)
    #[tokio::test(start_paused = true)]
    async fn a_batch_that_is_not_full_goes_out_at_its_timeout() {
        let (mut inbox, tx) = inbox(100, Duration::from_millis(50));
        let sender = tokio::spawn(async move {
            tx.send(batch(0, segments(0, 1), None, false))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
            tx.send(batch(1, segments(1, 2), None, false))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(40)).await;
            tx.send(batch(0, segments(2, 3), None, false))
                .await
                .unwrap();
            tx
        });
        let start = Instant::now();
        match inbox.gather(None).await {
            Gathered::Batch(s, _) => assert_eq!(numbers(&s), vec![0, 1]),
            _ => panic!("expected a batch"),
        }
        let waited = start.elapsed();
        assert!(
            (Duration::from_millis(50)..Duration::from_millis(70)).contains(&waited),
            "the batch went out after {waited:?}"
        );
        let _tx = sender.await.unwrap();
        match inbox.gather(None).await {
            Gathered::Batch(s, _) => assert_eq!(numbers(&s), vec![2]),
            _ => panic!("expected a batch"),
        }
    }
}
