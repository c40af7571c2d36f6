//! An input's watermark ([`InputWatermark`]): per partition, the greatest event time read
//! minus the task's `max_out_of_order`, the least over partitions that are not idle, and the
//! mark an input peer sends downstream with every batch.

use sardonyx_windowing::WatermarkTracker;

use super::context::now_ms;
use super::message::Mark;
use crate::job::TaskSpec;
use crate::segment::{Segment, Value};

/// The watermark an input derives from the segments it reads, if the task declares one: per
/// partition, greatest event time seen minus `max_out_of_order`; the input's watermark is the
/// least over its partitions, where a partition idle for `idle_timeout` (its own task's) stops
/// holding it back (so one quiet Kafka partition does not stall the job). Every partition the
/// source owns is registered before the first batch, so one that has produced nothing yet
/// holds the watermark back too. When every partition is idle the input is idle, and says so
/// downstream ([`Mark::idle`]).
pub(super) struct InputWatermark {
    key: Option<String>,
    partitions: WatermarkTracker<u32>,
    /// The greatest event time of each partition observed since the tracker was last told
    /// ([`InputWatermark::mark`]): a batch reaches it once per partition, not per segment.
    pending: Vec<(u32, i64)>,
}

impl InputWatermark {
    pub(super) fn new(task: &TaskSpec) -> Self {
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
    pub(super) fn register(&mut self, partitions: &[u32], now_ms: i64) {
        for &p in partitions {
            self.partitions.add_input(p, now_ms);
        }
    }

    /// Notes the event time of segment `s`, read from `partition`.
    pub(super) fn observe(&mut self, partition: u32, s: &Segment) {
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
    pub(super) fn mark(&mut self, read_at_ms: i64) -> Mark {
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
    pub(super) fn next_idle_at(&self) -> Option<i64> {
        self.partitions.next_idle_at(now_ms())
    }
}
