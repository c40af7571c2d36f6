//! Transitions onto state: [`WindowOperator::apply`], the one way the operator's state
//! changes, whether the transition was just made or is replayed from the log, and
//! `apply_and_record`, which the event handlers use to apply a transition they made and record
//! it in their [`Step`]. Keeping every change here is what makes a replay rebuild the state
//! exactly.

use super::groups::group_entry;
use super::transition::Transition;
use super::{Extent, Step, WindowOperator};
use crate::error::WindowError;
use crate::session;
use crate::trigger::{Refinement, TriggerOn};
use crate::value::Value;
use crate::window::WindowKind;

impl WindowOperator {
    /// Applies one transition (from this operator, or replayed from the log). An error means the
    /// transition does not fit the state (a corrupt or foreign log); the state is then unchanged.
    pub fn apply(&mut self, t: &Transition) -> Result<(), WindowError> {
        let bad = |m: String| Err(WindowError::BadTransition(m));
        match t {
            Transition::Group { id, key } => {
                let i = *id as usize;
                if self.state.groups.get(i).is_some_and(Option::is_some) {
                    return bad(format!("group id {id} is taken"));
                }
                if self.group_ids.contains_key(key) {
                    return bad(format!("group {key} is already interned"));
                }
                while self.state.groups.len() <= i {
                    self.free_groups.insert(self.state.groups.len() as u32);
                    self.state.groups.push(None);
                }
                self.state.groups[i] = Some(key.clone());
                self.free_groups.remove(id);
                self.group_ids.insert(key.clone(), *id);
                Ok(())
            }
            Transition::Update {
                window: w,
                group: g,
                extent: e,
                update: u,
            } => {
                self.check_wg(*w, *g)?;
                let w = usize::from(*w);
                if matches!(self.windows[w].kind, WindowKind::Session { .. }) {
                    self.apply_session(w, *g, *e, u);
                } else {
                    self.apply_extent(w, *g, *e, u);
                }
                self.count_segment(w, *g);
                Ok(())
            }
            Transition::UpdateRange {
                window: w,
                group: g,
                extent: e,
                count: n,
                update: u,
            } => {
                self.check_wg(*w, *g)?;
                self.check_sliding(*w)?;
                let w = usize::from(*w);
                for i in 0..i64::from(*n) {
                    self.apply_extent(w, *g, e.saturating_add(i), u);
                }
                self.count_segment(w, *g);
                Ok(())
            }
            Transition::UpdateEach {
                window: w,
                group: g,
                extent: e,
                updates: us,
            } => {
                self.check_wg(*w, *g)?;
                self.check_sliding(*w)?;
                let w = usize::from(*w);
                for (i, u) in us.iter().enumerate() {
                    self.apply_extent(w, *g, e.saturating_add(i as i64), u);
                }
                self.count_segment(w, *g);
                Ok(())
            }
            Transition::Fired {
                window: w,
                trigger: tr,
                group: g,
                extent: e,
            } => {
                self.check_wg(*w, *g)?;
                let wi = usize::from(*w);
                let ti = usize::from(*tr);
                let Some(trigger) = self.triggers[wi].get(ti) else {
                    return bad(format!("window {w} has no trigger {tr}"));
                };
                let discard = trigger.refinement == Refinement::Discarding;
                let init = discard.then(|| self.windows[wi].aggregation.init());
                let old = self.due_of(wi, *g, *e);
                let Some(x) = self.state.windows[wi]
                    .groups
                    .get_mut(g)
                    .and_then(|gs| gs.extents.get_mut(e))
                else {
                    return bad(format!("window {w} group {g} has no extent {e}"));
                };
                x.changed &= !(1u64 << ti);
                if let Some(init) = init {
                    x.state = init;
                }
                self.reindex(wi, *g, *e, old);
                Ok(())
            }
            Transition::Evict {
                window: w,
                group: g,
                extent: e,
            } => {
                self.check_wg(*w, *g)?;
                let wi = usize::from(*w);
                let ws = &mut self.state.windows[wi];
                let Some(gs) = ws.groups.get_mut(g) else {
                    return bad(format!("window {w} group {g} has no extent {e}"));
                };
                if gs.extents.remove(e).is_none() {
                    return bad(format!("window {w} group {g} has no extent {e}"));
                }
                // The group's per-window state (and its segment counters) stays while the group
                // holds an extent in any window: a segment trigger counts every n-th segment per
                // window and group, whether or not the watermark has emptied this window of the
                // group in between (which depends on when the watermark arrives).
                if gs.extents.is_empty()
                    && self
                        .state
                        .windows
                        .iter()
                        .all(|ws| ws.groups.get(g).is_none_or(|gs| gs.extents.is_empty()))
                {
                    for ws in &mut self.state.windows {
                        ws.groups.remove(g);
                    }
                    if let Some(key) = self.state.groups[*g as usize].take() {
                        self.group_ids.remove(&key);
                    }
                    self.free_groups.insert(*g);
                }
                Ok(())
            }
            Transition::Watermark(wm) => {
                self.state.watermark = self.state.watermark.max(*wm);
                Ok(())
            }
            Transition::TimerNext {
                window: w,
                trigger: tr,
                at,
            } => {
                let Some(slot) = self
                    .state
                    .windows
                    .get_mut(usize::from(*w))
                    .and_then(|ws| ws.timers.get_mut(usize::from(*tr)))
                else {
                    return bad(format!("window {w} has no trigger {tr}"));
                };
                *slot = Some(*at);
                Ok(())
            }
            Transition::Late { window: w } => {
                let Some(ws) = self.state.windows.get_mut(usize::from(*w)) else {
                    return bad(format!("no window {w}"));
                };
                ws.late += 1;
                Ok(())
            }
        }
    }

    fn check_wg(&self, w: u16, g: u32) -> Result<(), WindowError> {
        if usize::from(w) >= self.windows.len() {
            return Err(WindowError::BadTransition(format!("no window {w}")));
        }
        if !matches!(self.state.groups.get(g as usize), Some(Some(_))) {
            return Err(WindowError::BadTransition(format!("no group {g}")));
        }
        Ok(())
    }

    fn check_sliding(&self, w: u16) -> Result<(), WindowError> {
        match self.windows[usize::from(w)].kind {
            WindowKind::Fixed { .. } | WindowKind::Sliding { .. } => Ok(()),
            _ => Err(WindowError::BadTransition(format!(
                "window {w} has no numbered extents"
            ))),
        }
    }

    fn count_segment(&mut self, w: usize, g: u32) {
        if !self.triggers[w]
            .iter()
            .any(|t| matches!(t.on, TriggerOn::Segment { .. }))
        {
            return;
        }
        let gs = group_entry(&mut self.state.windows[w].groups, g, self.triggers[w].len());
        for (c, t) in gs.counters.iter_mut().zip(&self.triggers[w]) {
            if let TriggerOn::Segment { threshold } = t.on {
                *c = (*c + 1) % threshold;
            }
        }
    }

    fn apply_extent(&mut self, w: usize, g: u32, e: i64, u: &Value) {
        let n = self.triggers[w].len();
        let bits = all_bits(n);
        // The due key of a fixed, sliding or global extent is a function of `e` and its changed
        // bits alone (its bounds are fixed by `e`): an update of an extent with every bit set
        // already (the common case: every update after the first since it fired) keeps its
        // key, and the due index has nothing to do. That extent is found with one lookup and
        // updated in place.
        if let Some(x) = self.state.windows[w]
            .groups
            .get_mut(&g)
            .and_then(|gs| gs.extents.get_mut(&e))
            .filter(|x| x.changed == bits)
        {
            self.windows[w]
                .aggregation
                .apply_update_in_place(&mut x.state, u);
            return;
        }
        let old = self.due_of(w, g, e);
        let spec = &self.windows[w];
        let agg = &spec.aggregation;
        let upper = spec.extents().map_or(i64::MAX, |x| x.upper(e));
        let gs = group_entry(&mut self.state.windows[w].groups, g, n);
        let x = gs.extents.get_or_insert_with(e, || Extent {
            upper,
            state: agg.init(),
            changed: 0,
        });
        agg.apply_update_in_place(&mut x.state, u);
        x.changed = bits;
        self.reindex(w, g, e, old);
    }

    fn apply_session(&mut self, w: usize, g: u32, t: i64, u: &Value) {
        let WindowKind::Session { gap } = self.windows[w].kind else {
            return;
        };
        let agg = &self.windows[w].aggregation;
        let n = self.triggers[w].len();
        let bits = all_bits(n);
        // An event that extends one session without moving its start keeps the session's
        // extent id, and its entry in the due index: `old` is its due key (`reindex`).
        let (keys, old) = match self.state.windows[w].groups.get(&g) {
            Some(gs) => {
                let keys = session::touching(&gs.extents, |x| x.upper, t, gap);
                let old = match keys[..] {
                    [k] if k <= t => gs.extents.get(&k).and_then(|x| self.due_key(w, k, x)),
                    _ => None,
                };
                (keys, old)
            }
            None => (Vec::new(), None),
        };
        let gs = group_entry(&mut self.state.windows[w].groups, g, n);
        let mut lower = t;
        let mut merged: Option<Extent> = None;
        for k in keys {
            let x = gs.extents.remove(&k).expect("touching keys exist");
            lower = lower.min(k);
            merged = Some(match merged {
                None => x,
                Some(m) => Extent {
                    upper: m.upper.max(x.upper),
                    state: agg.merge(m.state, x.state),
                    changed: m.changed | x.changed,
                },
            });
        }
        let mut x = merged.unwrap_or_else(|| Extent {
            upper: t,
            state: agg.init(),
            changed: 0,
        });
        x.upper = x.upper.max(t);
        agg.apply_update_in_place(&mut x.state, u);
        x.changed = bits;
        gs.extents.insert(lower, x);
        self.reindex(w, g, lower, old);
    }

    /// Applies a transition the operator made itself and records it in `step`.
    pub(super) fn apply_and_record(&mut self, step: &mut Step, t: Transition) {
        self.apply(&t)
            .expect("a transition made by the operator fits its state");
        step.transitions.push(t);
    }
}

/// A changed bit set for each of `n` triggers.
fn all_bits(n: usize) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}
