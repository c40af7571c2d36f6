//! When each extent needs attention: its bounds, its eviction horizon, the watermark at which
//! each watermark trigger fires it, and the due index (by watermark) kept in step with the state
//! by every transition, so that a watermark advance visits only the extents that are due. All
//! of it is derived from the state, so the live operator and a replay agree.

use std::collections::{BTreeMap, BTreeSet};

use super::{Extent, WindowOperator, DUE_SLACK};
use crate::due::DueEntry;
use crate::trigger::TriggerOn;
use crate::value::Value;
use crate::window::WindowKind;

impl WindowOperator {
    pub(super) fn bounds(&self, w: usize, e: i64, x: &Extent) -> (Option<i64>, Option<i64>) {
        let spec = &self.windows[w];
        match spec.kind {
            WindowKind::Global => (None, None),
            WindowKind::Session { .. } => (Some(e), Some(x.upper)),
            WindowKind::Fixed { .. } | WindowKind::Sliding { .. } => {
                let ext = spec.extents().expect("numbered extents");
                (Some(ext.lower(e)), Some(ext.upper(e)))
            }
        }
    }

    /// The watermark past which extent `x` is evicted (`i64::MAX`: never). For fixed and
    /// sliding extents it is also the lateness horizon; a session is kept longer, see
    /// [`WindowOperator::session_keep`].
    pub(super) fn horizon(&self, w: usize, x: &Extent) -> i64 {
        let spec = &self.windows[w];
        match spec.kind {
            WindowKind::Global => i64::MAX,
            WindowKind::Session { gap } => x
                .upper
                .saturating_add(gap)
                .saturating_add(self.session_keep[w]),
            _ => x.upper.saturating_add(spec.allowed_lateness),
        }
    }

    /// The watermark at which watermark trigger `tr` of window `w` fires an extent with these
    /// bounds (`None`: not a watermark trigger). A session's deadlines count from the moment it
    /// closes, `upper + timeout_gap + 1` (see the module docs).
    fn threshold(&self, w: usize, tr: usize, lower: i64, upper: i64) -> Option<i64> {
        let end = match self.windows[w].kind {
            WindowKind::Session { gap } => upper.saturating_add(gap).saturating_add(1),
            _ => upper,
        };
        match self.triggers[w][tr].on {
            TriggerOn::Watermark { delay } => Some(end.saturating_add(delay)),
            TriggerOn::PercentileWatermark { percentage } => {
                let offset = (end.saturating_sub(lower) as f64 * percentage).ceil() as i64;
                Some(lower.saturating_add(offset))
            }
            _ => None,
        }
    }

    /// True when window `w` numbers its extents (fixed, sliding) and the deadline of watermark
    /// trigger `tr` for extent `e` is ahead of the watermark: then so is every later extent's
    /// (a numbered extent's bounds, and so its deadline, grow with its id and depend on nothing
    /// else), and none of them is due, without looking any of them up.
    pub(super) fn none_due_from(&self, w: usize, tr: usize, e: i64) -> bool {
        let spec = &self.windows[w];
        match spec.kind {
            WindowKind::Fixed { .. } | WindowKind::Sliding { .. } => {
                let ext = spec.extents().expect("numbered extents");
                self.threshold(w, tr, ext.lower(e), ext.upper(e))
                    .is_some_and(|t| self.state.watermark < t)
            }
            WindowKind::Global | WindowKind::Session { .. } => false,
        }
    }

    /// True when the watermark trigger `tr` of window `w` has reached its deadline for extent `e`.
    pub(super) fn deadline_reached(&self, w: usize, tr: usize, e: i64, x: &Extent) -> bool {
        let (Some(lower), Some(upper)) = self.bounds(w, e, x) else {
            return self.state.watermark == i64::MAX;
        };
        self.threshold(w, tr, lower, upper)
            .is_some_and(|t| self.state.watermark >= t)
    }

    /// The lowest watermark at which a watermark advance has something to do with extent `e`
    /// of window `w`: fire it by a watermark trigger whose changed bit is set, or evict it (past
    /// its horizon). `None` for global windows, which only job completion fires and nothing
    /// evicts. A pure function of the extent, so the live operator and a replay agree.
    pub(super) fn due_key(&self, w: usize, e: i64, x: &Extent) -> Option<i64> {
        let (Some(lower), Some(upper)) = self.bounds(w, e, x) else {
            return None;
        };
        let mut key = self.horizon(w, x).saturating_add(1);
        for tr in 0..self.triggers[w].len() {
            if x.changed & (1u64 << tr) != 0 {
                if let Some(t) = self.threshold(w, tr, lower, upper) {
                    key = key.min(t);
                }
            }
        }
        Some(key)
    }

    /// The due key of extent `e` of group `g` in window `w`, if it exists and has one.
    pub(super) fn due_of(&self, w: usize, g: u32, e: i64) -> Option<i64> {
        self.extent(w, g, e).and_then(|x| self.due_key(w, e, x))
    }

    /// Indexes extent `e` under its key now, after a change, unless its key before the change
    /// (`old`, `None` for an extent new or moved) was no greater: the extent's entry, at or
    /// below `old`, still comes no later than it is due. A watermark that reaches that entry
    /// early finds the extent not due yet and indexes it under its key then
    /// ([`WindowOperator::take_due`]). So a session that grows with every event, its key with
    /// it, is indexed once per watermark that passes its entry, not once per event.
    pub(super) fn reindex(&mut self, w: usize, g: u32, e: i64, old: Option<i64>) {
        let Some(new) = self.due_of(w, g, e) else {
            return;
        };
        if old.is_some_and(|old| old <= new) {
            return;
        }
        self.index_due(w, (new, g, e));
    }

    /// Adds `entry` to window `w`'s due index, rebuilding the index when stale entries have
    /// grown it past its limit.
    fn index_due(&mut self, w: usize, entry: DueEntry) {
        self.due[w].push(entry);
        if self.due[w].len() > self.due_limit[w] {
            self.rebuild_due_window(w);
        }
    }

    /// Rebuilds window `w`'s due index from the state.
    fn rebuild_due_window(&mut self, w: usize) {
        let mut entries = Vec::new();
        for (g, gs) in self.state.windows[w].groups.iter() {
            for (&e, x) in &gs.extents {
                if let Some(k) = self.due_key(w, e, x) {
                    entries.push((k, g, e));
                }
            }
        }
        self.due_limit[w] = 2 * entries.len() + DUE_SLACK;
        self.due[w] = entries.into_iter().collect();
    }

    /// The number of entries in window `w`'s due index, stale ones included (for tests).
    #[doc(hidden)]
    pub fn due_index_len(&self, w: usize) -> usize {
        self.due[w].len()
    }

    /// Rebuilds the due index from the state (after `restore`).
    pub(super) fn rebuild_due(&mut self) {
        for w in 0..self.windows.len() {
            self.rebuild_due_window(w);
        }
    }

    /// Takes the extents of window `w` due at watermark `wm` out of the index, ordered by group
    /// value, then extent (the firing order). Entries of extents gone are dropped; an extent
    /// whose entry came early (its key grew since) goes back under its key. The extents taken
    /// are put back by [`WindowOperator::restore_due`].
    pub(super) fn take_due(&mut self, w: usize, wm: i64) -> Vec<(u32, i64)> {
        let mut due = self.due[w].take_upto(wm);
        let mut later = Vec::new();
        due.retain(|&(_, g, e)| match self.due_of(w, g, e) {
            Some(k) if k <= wm => true,
            Some(k) => {
                later.push((k, g, e));
                false
            }
            None => false,
        });
        for entry in later {
            self.index_due(w, entry);
        }
        let groups = &self.state.groups;
        // Integer group keys (the common case) sort as plain integers, without comparing
        // `Value`s through the group table on every comparison.
        let int_keyed: Option<Vec<(i64, i64, u32)>> = due
            .iter()
            .map(|&(_, g, e)| match groups[g as usize] {
                Some(Value::Int(i)) => Some((i, e, g)),
                _ => None,
            })
            .collect();
        if let Some(mut keyed) = int_keyed {
            keyed.sort_unstable();
            keyed.dedup();
            return keyed.into_iter().map(|(_, e, g)| (g, e)).collect();
        }
        let mut v: Vec<(u32, i64)> = due.into_iter().map(|(_, g, e)| (g, e)).collect();
        v.sort_by(|a, b| {
            groups[a.0 as usize]
                .cmp(&groups[b.0 as usize])
                .then(a.1.cmp(&b.1))
        });
        v.dedup();
        v
    }

    /// Puts the extents taken by [`WindowOperator::take_due`] that are still live back into the
    /// index under their current keys.
    pub(super) fn restore_due(&mut self, w: usize, taken: &[(u32, i64)]) {
        for &(g, e) in taken {
            if let Some(k) = self.due_of(w, g, e) {
                self.index_due(w, (k, g, e));
            }
        }
    }

    /// Checks the operator's derived index against its state: every live extent of a
    /// non-global window is indexed at or below its current due key (other entries are stale
    /// ones, dropped or re-keyed when a watermark takes them), and (after any event method) no
    /// extent is left that a watermark advance to the current watermark would have fired or
    /// evicted. For tests; `Err` says what is wrong.
    #[doc(hidden)]
    pub fn check_due_index(&self) -> Result<(), String> {
        let wm = self.state.watermark;
        for (w, ws) in self.state.windows.iter().enumerate() {
            let mut expected = BTreeSet::new();
            for (g, gs) in ws.groups.iter() {
                for (&e, x) in &gs.extents {
                    if let Some(k) = self.due_key(w, e, x) {
                        if k <= wm {
                            return Err(format!(
                                "window {w} group {g} extent {e} is due at {k} <= watermark {wm}"
                            ));
                        }
                        expected.insert((k, g, e));
                    }
                }
            }
            // Every live extent has an entry at or below its current key: the earliest entry
            // of each extent is what counts.
            let mut earliest: BTreeMap<(u32, i64), i64> = BTreeMap::new();
            for &(k, g, e) in self.due[w].iter() {
                let at = earliest.entry((g, e)).or_insert(k);
                *at = (*at).min(k);
            }
            let late = expected
                .iter()
                .find(|&&(k, g, e)| earliest.get(&(g, e)).is_none_or(|&at| at > k));
            if let Some(missing) = late {
                return Err(format!(
                    "window {w}: the index {earliest:?} has no entry at or below {missing:?} (the state: {expected:?})"
                ));
            }
        }
        Ok(())
    }

    pub(super) fn is_watermark_trigger(&self, w: usize, tr: usize) -> bool {
        matches!(
            self.triggers[w][tr].on,
            TriggerOn::Watermark { .. } | TriggerOn::PercentileWatermark { .. }
        )
    }
}
