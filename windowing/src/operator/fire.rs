//! Firing: one trigger firing one extent, and the events that fire — a segment's triggers, a
//! watermark advance (watermark triggers, then final firings and eviction past the horizon) and
//! processing-time timers. Each firing is returned in the [`Step`] with the state before
//! refinement, and its `Fired` transition is applied and recorded.

use super::transition::Transition;
use super::{Step, WindowOperator};
use crate::trigger::{FireEvent, Firing, PunctuationCtx, Refinement, TriggerOn};
use crate::value::{Map, Text};

impl WindowOperator {
    /// True when extent `e` of group `g` changed since trigger `tr` last fired it.
    pub(super) fn changed(&self, w: usize, tr: usize, g: u32, e: i64) -> bool {
        self.extent(w, g, e)
            .is_some_and(|x| x.changed & (1u64 << tr) != 0)
    }

    /// Fires extent `e` of group `g` with trigger `tr`: records the firing with the state before
    /// refinement, then the `Fired` transition when it changes anything.
    pub(super) fn fire(
        &mut self,
        step: &mut Step,
        w: usize,
        tr: usize,
        g: u32,
        e: i64,
        event: FireEvent,
    ) {
        let Some(x) = self.extent(w, g, e) else {
            return;
        };
        let (lower, upper) = self.bounds(w, e, x);
        let trigger = &self.triggers[w][tr];
        let needs_transition =
            x.changed & (1u64 << tr) != 0 || trigger.refinement == Refinement::Discarding;
        step.firings.push(Firing {
            window: Text::new(&self.windows[w].id),
            trigger: Text::new(&trigger.id),
            event,
            group: self.group_key(g).cloned().unwrap_or_default(),
            lower,
            upper,
            state: x.state.clone(),
        });
        if needs_transition {
            self.apply_and_record(
                step,
                Transition::Fired {
                    window: w as u16,
                    trigger: tr as u16,
                    group: g,
                    extent: e,
                },
            );
        }
    }

    /// Evaluates the triggers of window `w` after a segment of group `g` updated the extents
    /// `touched`.
    pub(super) fn segment_triggers(
        &mut self,
        step: &mut Step,
        w: usize,
        g: u32,
        touched: std::ops::Range<i64>,
        segment: &Map,
    ) {
        for tr in 0..self.triggers[w].len() {
            let all = self.triggers[w][tr].fire_all_extents;
            let candidates = || {
                if all {
                    self.extent_keys(w, g)
                } else {
                    touched.clone().collect()
                }
            };
            let trigger = &self.triggers[w][tr];
            let (fire_all, event) = match &trigger.on {
                TriggerOn::Segment { .. } => {
                    let counter = self.state.windows[w]
                        .groups
                        .get(&g)
                        .map_or(0, |gs| gs.counters[tr]);
                    (counter == 0, FireEvent::Segment)
                }
                TriggerOn::Punctuation(pred) => {
                    let group = self.group_key(g).cloned().unwrap_or_default();
                    let ctx = PunctuationCtx {
                        window: &self.windows[w].id,
                        trigger: &trigger.id,
                        group: &group,
                    };
                    (pred(&ctx, segment), FireEvent::Punctuation)
                }
                TriggerOn::Timer { .. } => continue,
                TriggerOn::Watermark { .. } | TriggerOn::PercentileWatermark { .. } => {
                    // Only extents whose deadline has passed fire here; before the first
                    // deadline (the common case) nothing is due and nothing is collected.
                    if !all && self.none_due_from(w, tr, touched.start) {
                        continue;
                    }
                    let es: Vec<i64> = if all {
                        self.extent_keys(w, g)
                    } else {
                        touched
                            .clone()
                            .filter(|&e| {
                                self.extent(w, g, e).is_some_and(|x| {
                                    x.changed & (1u64 << tr) != 0
                                        && self.deadline_reached(w, tr, e, x)
                                })
                            })
                            .collect()
                    };
                    for e in es {
                        let due = self.extent(w, g, e).is_some_and(|x| {
                            x.changed & (1u64 << tr) != 0 && self.deadline_reached(w, tr, e, x)
                        });
                        if due {
                            self.fire(step, w, tr, g, e, FireEvent::Segment);
                        }
                    }
                    continue;
                }
            };
            if fire_all {
                for e in candidates() {
                    self.fire(step, w, tr, g, e, event);
                }
            }
        }
    }

    /// The watermark advanced to its current value: for window `w`, watermark triggers fire the
    /// due extents (when `watermark_triggers`), then extents past their horizon get their final
    /// firings (event `event`) and are evicted. Only the extents the due index holds at or
    /// below the watermark are visited.
    pub(super) fn advance(
        &mut self,
        step: &mut Step,
        w: usize,
        event: FireEvent,
        watermark_triggers: bool,
    ) {
        let wm = self.state.watermark;
        let due = self.take_due(w, wm);
        if due.is_empty() {
            return;
        }
        if watermark_triggers {
            for tr in 0..self.triggers[w].len() {
                if !self.is_watermark_trigger(w, tr) {
                    continue;
                }
                for &(g, e) in &due {
                    let fire = self.extent(w, g, e).is_some_and(|x| {
                        x.changed & (1u64 << tr) != 0 && self.deadline_reached(w, tr, e, x)
                    });
                    if fire {
                        self.fire(step, w, tr, g, e, FireEvent::Watermark);
                    }
                }
            }
        }
        for &(g, e) in &due {
            let passed = self
                .extent(w, g, e)
                .is_some_and(|x| wm > self.horizon(w, x));
            if !passed {
                continue;
            }
            for tr in 0..self.triggers[w].len() {
                if self.changed(w, tr, g, e) {
                    self.fire(step, w, tr, g, e, event);
                }
            }
            self.apply_and_record(
                step,
                Transition::Evict {
                    window: w as u16,
                    group: g,
                    extent: e,
                },
            );
        }
        self.restore_due(w, &due);
    }

    /// Processing time is `now_ms`: timer triggers whose deadline has come fire every extent of
    /// every group. The first call only starts the timers.
    pub fn on_timer(&mut self, now_ms: i64) -> Step {
        let mut step = Step::default();
        for w in 0..self.windows.len() {
            for tr in 0..self.triggers[w].len() {
                let TriggerOn::Timer { period_ms } = self.triggers[w][tr].on else {
                    continue;
                };
                let next = match self.state.windows[w].timers[tr] {
                    None => now_ms.saturating_add(period_ms),
                    Some(at) if now_ms >= at => {
                        for g in self.sorted_groups(w) {
                            for e in self.extent_keys(w, g) {
                                self.fire(&mut step, w, tr, g, e, FireEvent::Timer);
                            }
                        }
                        let periods = (now_ms - at) / period_ms + 1;
                        at.saturating_add(periods.saturating_mul(period_ms))
                    }
                    Some(_) => continue,
                };
                self.apply_and_record(
                    &mut step,
                    Transition::TimerNext {
                        window: w as u16,
                        trigger: tr as u16,
                        at: next,
                    },
                );
            }
        }
        step
    }

    /// The processing-time clock (re)starts at `now_ms`: every timer trigger's next deadline
    /// becomes `now_ms + period`, without firing. A slot starts its timers this way, and a
    /// recovered one must: the deadlines it logged were on the clock of an earlier process, so
    /// on the new clock they would fire at once or not for a long time.
    pub fn restart_timers(&mut self, now_ms: i64) -> Step {
        let mut step = Step::default();
        for w in 0..self.windows.len() {
            for tr in 0..self.triggers[w].len() {
                let TriggerOn::Timer { period_ms } = self.triggers[w][tr].on else {
                    continue;
                };
                self.apply_and_record(
                    &mut step,
                    Transition::TimerNext {
                        window: w as u16,
                        trigger: tr as u16,
                        at: now_ms.saturating_add(period_ms),
                    },
                );
            }
        }
        step
    }
}
