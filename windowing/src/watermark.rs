//! Watermarks: how far event time has progressed at a task, from what its inputs have seen.
//!
//! Per input, the watermark is (greatest event time seen) − `max_out_of_order`; before the
//! first event it is `i64::MIN` (holds everything back). The task's watermark is the least over
//! the inputs that still hold it back:
//! - an input idle (no event) for `idle_timeout` ms of processing time stops holding it back
//!   **(beyond Onyx)**; it holds it back again when it sees an event;
//! - a finished input no longer holds it back;
//! - when every input is finished the watermark is `i64::MAX` (+∞);
//! - when no input holds it back but some are unfinished (all idle), the watermark is the
//!   greatest per-input watermark (progress seen so far; idleness alone never makes it +∞).
//!
//! The task watermark never goes backwards: an idle input that wakes up with older data does
//! not lower it (its late segments are the window operator's business).
//!
//! Pure: processing time is passed in as `now_ms`.

use std::collections::BTreeMap;

/// Per-input progress.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Input {
    max_seen: Option<i64>,
    last_active_ms: i64,
    finished: bool,
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
    /// A tracker with no inputs; `idle_timeout` `None` means inputs never count as idle.
    pub fn new(max_out_of_order: i64, idle_timeout: Option<i64>) -> Self {
        WatermarkTracker {
            max_out_of_order,
            idle_timeout,
            inputs: BTreeMap::new(),
            current: i64::MIN,
        }
    }

    /// Registers an input (idempotent); its idle clock starts at `now_ms`.
    pub fn add_input(&mut self, input: K, now_ms: i64) {
        self.inputs.entry(input).or_insert(Input {
            max_seen: None,
            last_active_ms: now_ms,
            finished: false,
        });
    }

    /// Records an event with `event_time` from `input` at processing time `now_ms` (registering
    /// the input if needed).
    pub fn observe(&mut self, input: K, event_time: i64, now_ms: i64) {
        self.add_input(input.clone(), now_ms);
        if let Some(i) = self.inputs.get_mut(&input) {
            i.max_seen = Some(i.max_seen.map_or(event_time, |m| m.max(event_time)));
            i.last_active_ms = i.last_active_ms.max(now_ms);
        }
    }

    /// Marks `input` finished: it no longer holds the watermark back.
    pub fn finish(&mut self, input: K) {
        let i = self.inputs.entry(input).or_insert(Input {
            max_seen: None,
            last_active_ms: i64::MIN,
            finished: false,
        });
        i.finished = true;
    }

    /// The watermark of one input (`None` for an unknown input).
    pub fn input_watermark(&self, input: &K) -> Option<i64> {
        self.inputs.get(input).map(|i| self.of(i))
    }

    fn of(&self, i: &Input) -> i64 {
        i.max_seen
            .map_or(i64::MIN, |m| m.saturating_sub(self.max_out_of_order))
    }

    fn is_idle(&self, i: &Input, now_ms: i64) -> bool {
        self.idle_timeout
            .is_some_and(|t| now_ms.saturating_sub(i.last_active_ms) >= t)
    }

    /// The task watermark at processing time `now_ms` (monotone: never less than before).
    pub fn watermark(&mut self, now_ms: i64) -> i64 {
        let computed = if !self.inputs.is_empty() && self.inputs.values().all(|i| i.finished) {
            i64::MAX
        } else {
            let holding = self
                .inputs
                .values()
                .filter(|i| !i.finished && !self.is_idle(i, now_ms))
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
