//! An input's watermark ([`InputWatermark`]): per partition, the greatest event time read
//! minus the task's `max_out_of_order`, the least over partitions that are not idle, and the
//! mark an input peer sends downstream with every batch.

use sardonyx_windowing::WatermarkTracker;

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

    /// The mark at processing time `now_ms` after the segments observed since the last call,
    /// which were read at `read_at_ms`.
    pub(super) fn mark(&mut self, read_at_ms: i64, now_ms: i64) -> Mark {
        for (partition, t) in self.pending.drain(..) {
            self.partitions.observe(partition, t, read_at_ms);
        }
        let now = now_ms;
        let wm = self.partitions.watermark(now);
        Mark {
            watermark: (wm > i64::MIN).then_some(wm),
            idle: self.partitions.is_idle(now),
        }
    }

    /// When a partition still holding the watermark back at `now_ms` would turn idle (`None`:
    /// never, or none holds it).
    pub(super) fn next_idle_at(&self, now_ms: i64) -> Option<i64> {
        self.partitions.next_idle_at(now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Job;

    /// The input task of a job whose watermark is `watermark` (JSON, or none).
    fn task(watermark: Option<&str>) -> TaskSpec {
        let watermark = watermark.map_or(String::new(), |w| format!(", \"watermark\": {w}"));
        let job = Job::from_json_str(&format!(
            r#"{{
              "workflow": [["in", "out"]],
              "catalog": [
                {{"name": "in", "type": "input", "plugin": "sardonyx/jsonl"{watermark}}},
                {{"name": "out", "type": "output", "plugin": "sardonyx/null"}}
              ]
            }}"#
        ))
        .unwrap();
        job.catalog[0].clone()
    }

    /// Event time `t` under key `t`.
    fn at(t: i64) -> Segment {
        let mut s = Segment::with_capacity(1);
        s.insert("t", Value::from(t));
        s
    }

    fn mark(watermark: Option<i64>, idle: bool) -> Mark {
        Mark { watermark, idle }
    }

    const OUT_OF_ORDER_2: &str = r#"{"key": "t", "max_out_of_order": [2, "milliseconds"]}"#;
    const IDLE_AFTER_100: &str = r#"{"key": "t", "max_out_of_order": [2, "milliseconds"],
        "idle_timeout": [100, "milliseconds"]}"#;

    /// Per partition, the greatest event time minus `max_out_of_order`; the input's is the least
    /// over partitions, and it never goes back.
    #[test]
    fn the_watermark_is_the_least_over_partitions_of_their_greatest_time_less_the_lateness() {
        let mut wm = InputWatermark::new(&task(Some(OUT_OF_ORDER_2)));
        wm.register(&[0, 1], 0);
        wm.observe(0, &at(10));
        wm.observe(0, &at(30));
        wm.observe(0, &at(20));
        assert_eq!(
            wm.mark(5, 5),
            mark(None, false),
            "partition 1 has nothing yet"
        );
        wm.observe(1, &at(15));
        assert_eq!(wm.mark(6, 6), mark(Some(13), false));
        wm.observe(1, &at(50));
        assert_eq!(wm.mark(7, 7), mark(Some(28), false));
        wm.observe(0, &at(1));
        assert_eq!(wm.mark(8, 8), mark(Some(28), false), "never backwards");
    }

    /// Every partition the source owns holds the watermark back from its registration, also one
    /// that has not produced anything; one that is not registered does not.
    #[test]
    fn a_registered_partition_holds_the_watermark_back_before_its_first_record() {
        let mut registered = InputWatermark::new(&task(Some(OUT_OF_ORDER_2)));
        registered.register(&[0, 1, 2], 0);
        registered.observe(0, &at(10));
        registered.observe(1, &at(10));
        assert_eq!(registered.mark(1, 1), mark(None, false));

        let mut unregistered = InputWatermark::new(&task(Some(OUT_OF_ORDER_2)));
        unregistered.register(&[0, 1], 0);
        unregistered.observe(0, &at(10));
        unregistered.observe(1, &at(10));
        assert_eq!(unregistered.mark(1, 1), mark(Some(8), false));
    }

    /// A partition quiet for `idle_timeout` stops holding the watermark back; when every one is
    /// idle the input is idle (its watermark the greatest seen); a record wakes its partition.
    #[test]
    fn partitions_quiet_for_the_idle_timeout_stop_holding_the_watermark_back() {
        let mut wm = InputWatermark::new(&task(Some(IDLE_AFTER_100)));
        wm.register(&[0, 1], 0);
        assert_eq!(wm.next_idle_at(0), Some(100));
        wm.observe(0, &at(40));
        assert_eq!(wm.mark(50, 50), mark(None, false), "partition 1 holds it");
        assert_eq!(
            wm.next_idle_at(50),
            Some(100),
            "partition 1 times out first"
        );
        assert_eq!(wm.mark(50, 99), mark(None, false));
        assert_eq!(wm.mark(50, 100), mark(Some(38), false), "partition 1 idle");
        assert_eq!(wm.next_idle_at(100), Some(150));
        assert_eq!(
            wm.mark(50, 150),
            mark(Some(38), true),
            "every partition idle"
        );
        assert_eq!(wm.next_idle_at(150), None);
        wm.observe(1, &at(90));
        assert_eq!(wm.mark(160, 160), mark(Some(88), false), "partition 1 woke");
        assert_eq!(wm.next_idle_at(160), Some(260));
    }

    /// Without a watermark key nothing has an event time and nothing turns idle; a segment
    /// without the key (or not a time) moves nothing.
    #[test]
    fn without_a_watermark_or_an_event_time_the_mark_stays_empty() {
        let mut none = InputWatermark::new(&task(None));
        none.register(&[0], 0);
        none.observe(0, &at(10));
        assert_eq!(none.mark(1, 1_000_000), mark(None, false));
        assert_eq!(none.next_idle_at(1), None);

        let mut keyed = InputWatermark::new(&task(Some(OUT_OF_ORDER_2)));
        keyed.register(&[0], 0);
        let mut other = Segment::with_capacity(1);
        other.insert("u", Value::from(10));
        keyed.observe(0, &other);
        let mut text = Segment::with_capacity(1);
        text.insert("t", Value::from("soon"));
        keyed.observe(0, &text);
        assert_eq!(keyed.mark(1, 1), mark(None, false));
    }

    /// The event times of a batch reach the tracker once per partition (the greatest), at the
    /// time the batch was read: a partition's idle clock restarts at `read_at_ms`, not at the
    /// time the mark is asked for.
    #[test]
    fn a_batch_restarts_the_idle_clock_of_its_partitions_at_its_read_time() {
        let mut wm = InputWatermark::new(&task(Some(IDLE_AFTER_100)));
        wm.register(&[0], 0);
        wm.observe(0, &at(5));
        wm.observe(0, &at(7));
        assert_eq!(wm.mark(20, 90), mark(Some(5), false));
        assert_eq!(wm.next_idle_at(90), Some(120));
        assert_eq!(wm.mark(20, 120), mark(Some(5), true));
    }
}
