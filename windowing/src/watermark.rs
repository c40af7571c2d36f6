//! Watermarks: how far event time has progressed at a task, from what its inputs have seen.
//!
//! A [`WatermarkTracker`] follows several inputs: the partitions of a source (at an input peer)
//! or the upstream peers of a task (at a function or windowed peer). Per input, the watermark is
//! (greatest event time seen) − `max_out_of_order`; before the first event it is `i64::MIN`, so
//! an input registered before it produced anything holds everything back. The task's watermark
//! is the least over the inputs that still hold it back:
//! - an **idle** input stops holding it back **(beyond Onyx)**. An input is idle when it was
//!   declared so ([`WatermarkTracker::set_idle`]: an upstream peer's explicit idle mark) or, with
//!   an `idle_timeout`, when it saw no event for that long in processing time (a source
//!   partition). Only sources time out: a tracker over upstream peers has no `idle_timeout`,
//!   since a slow peer is not an idle one. An event makes an input active again;
//! - a finished input no longer holds it back;
//! - when every input is finished the watermark is `i64::MAX` (+∞);
//! - when no input holds it back but some are unfinished (all idle), the watermark is the
//!   greatest per-input watermark (progress seen so far; idleness alone never makes it +∞), and
//!   the tracker itself is idle ([`WatermarkTracker::is_idle`]): a peer passes "idle" on
//!   downstream only when everything upstream of it is idle.
//!
//! The task watermark never goes backwards: an idle input that wakes up with older data does
//! not lower it (its late segments are the window operator's business).
//!
//! Pure: processing time is passed in as `now_ms` (milliseconds of a monotonic clock).

use std::collections::BTreeMap;

/// Per-input progress.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Input {
    max_seen: Option<i64>,
    last_active_ms: i64,
    /// Declared idle by [`WatermarkTracker::set_idle`] (until an event or `set_idle(false)`).
    declared_idle: bool,
    finished: bool,
}

impl Input {
    fn new(now_ms: i64) -> Self {
        Input {
            max_seen: None,
            last_active_ms: now_ms,
            declared_idle: false,
            finished: false,
        }
    }
}

/// The watermark tracker of one task, over inputs identified by `K`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatermarkTracker<K: Ord + Clone = u32> {
    max_out_of_order: i64,
    idle_timeout: Option<i64>,
    inputs: BTreeMap<K, Input>,
    current: i64,
}

impl<K: Ord + Clone> WatermarkTracker<K> {
    /// A tracker with no inputs; with `idle_timeout` `None` inputs are idle only when declared
    /// so ([`WatermarkTracker::set_idle`]).
    pub fn new(max_out_of_order: i64, idle_timeout: Option<i64>) -> Self {
        WatermarkTracker {
            max_out_of_order,
            idle_timeout,
            inputs: BTreeMap::new(),
            current: i64::MIN,
        }
    }

    /// Registers an input (idempotent): until it sees an event it holds the watermark at
    /// `i64::MIN` (unless idle); its idle clock starts at `now_ms`.
    pub fn add_input(&mut self, input: K, now_ms: i64) {
        self.inputs
            .entry(input)
            .or_insert_with(|| Input::new(now_ms));
    }

    /// Records an event with `event_time` from `input` at processing time `now_ms` (registering
    /// the input if needed). The input is active again (no longer idle).
    pub fn observe(&mut self, input: K, event_time: i64, now_ms: i64) {
        let i = self
            .inputs
            .entry(input)
            .or_insert_with(|| Input::new(now_ms));
        i.max_seen = Some(i.max_seen.map_or(event_time, |m| m.max(event_time)));
        i.last_active_ms = i.last_active_ms.max(now_ms);
        i.declared_idle = false;
    }

    /// Declares `input` idle (it stops holding the watermark back) or active again (registering
    /// it if needed). Becoming active restarts its idle clock at `now_ms`.
    pub fn set_idle(&mut self, input: K, idle: bool, now_ms: i64) {
        let i = self
            .inputs
            .entry(input)
            .or_insert_with(|| Input::new(now_ms));
        if i.declared_idle && !idle {
            i.last_active_ms = i.last_active_ms.max(now_ms);
        }
        i.declared_idle = idle;
    }

    /// Marks `input` finished: it no longer holds the watermark back.
    pub fn finish(&mut self, input: K) {
        let i = self
            .inputs
            .entry(input)
            .or_insert_with(|| Input::new(i64::MIN));
        i.finished = true;
    }

    /// The watermark of one input (`None` for an unknown input).
    pub fn input_watermark(&self, input: &K) -> Option<i64> {
        self.inputs.get(input).map(|i| self.of(i))
    }

    /// True if `input` is idle at processing time `now_ms` (`None` for an unknown input).
    pub fn input_is_idle(&self, input: &K, now_ms: i64) -> Option<bool> {
        self.inputs.get(input).map(|i| self.idle(i, now_ms))
    }

    fn of(&self, i: &Input) -> i64 {
        i.max_seen
            .map_or(i64::MIN, |m| m.saturating_sub(self.max_out_of_order))
    }

    fn idle(&self, i: &Input, now_ms: i64) -> bool {
        i.declared_idle
            || self
                .idle_timeout
                .is_some_and(|t| now_ms.saturating_sub(i.last_active_ms) >= t)
    }

    fn holds(&self, i: &Input, now_ms: i64) -> bool {
        !i.finished && !self.idle(i, now_ms)
    }

    /// True when the tracker itself is idle at processing time `now_ms`: some input is
    /// unfinished and every unfinished input is idle.
    pub fn is_idle(&self, now_ms: i64) -> bool {
        let mut unfinished = self.inputs.values().filter(|i| !i.finished).peekable();
        unfinished.peek().is_some() && unfinished.all(|i| self.idle(i, now_ms))
    }

    /// The earliest processing time at which an input still holding the watermark back times
    /// out as idle (`None` without `idle_timeout` or when none holds it back): a source with
    /// nothing to read need not look again before then.
    pub fn next_idle_at(&self, now_ms: i64) -> Option<i64> {
        let t = self.idle_timeout?;
        self.inputs
            .values()
            .filter(|i| self.holds(i, now_ms))
            .map(|i| i.last_active_ms.saturating_add(t))
            .min()
    }

    /// The task watermark at processing time `now_ms` (monotone: never less than before).
    pub fn watermark(&mut self, now_ms: i64) -> i64 {
        let computed = if !self.inputs.is_empty() && self.inputs.values().all(|i| i.finished) {
            i64::MAX
        } else {
            let holding = self
                .inputs
                .values()
                .filter(|i| self.holds(i, now_ms))
                .map(|i| self.of(i))
                .min();
            match holding {
                Some(w) => w,
                None => self
                    .inputs
                    .values()
                    .map(|i| self.of(i))
                    .max()
                    .unwrap_or(i64::MIN),
            }
        };
        self.current = self.current.max(computed);
        self.current
    }

    /// The last watermark returned by [`WatermarkTracker::watermark`] (`i64::MIN` before any).
    pub fn current(&self) -> i64 {
        self.current
    }
}

#[cfg(test)]
mod tests {
    use super::WatermarkTracker;
    use proptest::prelude::*;

    #[test]
    fn a_registered_input_holds_the_watermark_until_it_produces() {
        let mut w: WatermarkTracker = WatermarkTracker::new(0, None);
        w.add_input(0, 0);
        w.add_input(1, 0);
        w.observe(0, 5_000, 10);
        assert_eq!(w.watermark(1_000_000), i64::MIN);
        assert!(!w.is_idle(1_000_000));
        // Its first records are not behind the watermark.
        w.observe(1, 100, 2_000_000);
        assert_eq!(w.watermark(2_000_000), 100);
        w.observe(1, 6_000, 2_000_001);
        assert_eq!(w.watermark(2_000_001), 5_000);
    }

    #[test]
    fn a_silent_partition_stops_holding_once_it_times_out() {
        let mut w: WatermarkTracker = WatermarkTracker::new(10, Some(100));
        w.add_input(0, 0);
        w.add_input(1, 0);
        w.observe(0, 500, 50);
        assert_eq!(w.next_idle_at(50), Some(100)); // partition 1, silent since 0
        assert_eq!(w.watermark(99), i64::MIN);
        assert_eq!(w.input_is_idle(&1, 100), Some(true));
        assert_eq!(w.watermark(100), 490);
        assert!(!w.is_idle(100));
        assert_eq!(w.next_idle_at(100), Some(150)); // partition 0, last read at 50
        assert!(w.is_idle(150));
        assert_eq!(w.watermark(150), 490); // all idle: the greatest, not +inf
        assert_eq!(w.next_idle_at(150), None);
        // A record makes partition 1 active again; the watermark does not go back.
        w.observe(1, 200, 160);
        assert!(!w.is_idle(160));
        assert_eq!(w.watermark(160), 490);
    }

    #[test]
    fn declared_idleness_lasts_until_data_or_an_active_mark() {
        let mut w: WatermarkTracker<usize> = WatermarkTracker::new(0, None);
        w.add_input(7, 0);
        w.add_input(8, 0);
        w.observe(7, 1_000, 0);
        w.observe(8, 400, 0);
        assert_eq!(w.watermark(0), 400);
        // However long peer 8 is quiet, it holds the watermark: no timeout downstream.
        assert_eq!(w.watermark(i64::MAX / 2), 400);
        w.set_idle(8, true, 5);
        assert_eq!(w.watermark(5), 1_000);
        assert!(!w.is_idle(5));
        w.set_idle(7, true, 6);
        assert!(w.is_idle(6));
        assert_eq!(w.watermark(6), 1_000);
        // Peer 8 wakes with data: active again, holding from here on (never lowering).
        w.observe(8, 1_200, 7);
        assert!(!w.is_idle(7));
        assert_eq!(w.watermark(7), 1_200);
        w.observe(8, 1_500, 8);
        assert_eq!(w.watermark(8), 1_500);
        // An active mark without data also makes it hold again.
        w.set_idle(7, false, 9);
        w.observe(8, 2_000, 9);
        assert_eq!(w.watermark(9), 1_500);
        assert_eq!(w.input_is_idle(&7, 9), Some(false));
    }

    #[test]
    fn finished_inputs_stop_holding_and_all_finished_is_infinity() {
        let mut w: WatermarkTracker<usize> = WatermarkTracker::new(0, None);
        w.add_input(1, 0);
        w.add_input(2, 0);
        w.set_idle(2, true, 0);
        w.finish(1);
        assert!(w.is_idle(0)); // the only unfinished input is idle
        assert_eq!(w.watermark(0), i64::MIN); // nothing seen at all
        w.finish(2);
        assert!(!w.is_idle(0));
        assert_eq!(w.watermark(0), i64::MAX);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Observe(usize, i64),
        SetIdle(usize, bool),
        Finish(usize),
        Wait(i64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..4_usize, -1_000..1_000_i64).prop_map(|(k, t)| Op::Observe(k, t)),
            1 => (0..4_usize, any::<bool>()).prop_map(|(k, b)| Op::SetIdle(k, b)),
            1 => (0..4_usize).prop_map(Op::Finish),
            2 => (0..300_i64).prop_map(Op::Wait),
        ]
    }

    proptest! {
        /// Invariants, checked after every event: (monotone) the watermark never goes back;
        /// (idle never lowers) it is at least the least watermark of the inputs still holding
        /// it back; (active holds) an input registered at the start that has never been idle
        /// and is unfinished keeps it at or below its own; (completion) it is +∞ exactly when
        /// every input is finished; (idle) the tracker is idle exactly when some input is
        /// unfinished and every unfinished one is idle.
        #[test]
        fn watermark_invariants(
            timeout in prop::option::of(50..500_i64),
            ooo in 0..50_i64,
            ops in prop::collection::vec(op(), 0..80),
        ) {
            const N: usize = 4;
            let mut w: WatermarkTracker<usize> = WatermarkTracker::new(ooo, timeout);
            let mut now = 0_i64;
            for k in 0..N {
                w.add_input(k, now);
            }
            let mut ever_idle = [false; N];
            let mut finished = [false; N];
            let mut previous = w.watermark(now);
            for op in ops {
                match op {
                    Op::Observe(k, t) => w.observe(k, t, now),
                    Op::SetIdle(k, b) => w.set_idle(k, b, now),
                    Op::Finish(k) => {
                        w.finish(k);
                        finished[k] = true;
                    }
                    Op::Wait(d) => now += d,
                }
                let idle: Vec<bool> =
                    (0..N).map(|k| w.input_is_idle(&k, now).expect("registered")).collect();
                for k in 0..N {
                    ever_idle[k] |= idle[k];
                }
                let wm = w.watermark(now);
                prop_assert!(wm >= previous, "went back from {} to {}", previous, wm);
                previous = wm;
                let own = |k: usize| w.input_watermark(&k).expect("registered");
                let holding = (0..N).filter(|&k| !finished[k] && !idle[k]);
                if let Some(least) = holding.clone().map(own).min() {
                    prop_assert!(wm >= least, "{} below the holders' least {}", wm, least);
                }
                for k in holding.filter(|&k| !ever_idle[k]) {
                    prop_assert!(wm <= own(k), "{} passed active input {} at {}", wm, k, own(k));
                }
                prop_assert_eq!(wm == i64::MAX, finished.iter().all(|&f| f));
                let unfinished: Vec<usize> = (0..N).filter(|&k| !finished[k]).collect();
                prop_assert_eq!(
                    w.is_idle(now),
                    !unfinished.is_empty() && unfinished.iter().all(|&k| idle[k])
                );
            }
        }
    }
}
