//! Re-dividing window state among slots (rescaling, DESIGN §4 "Grouping"): the groups a new
//! slot owns are kept out of each old slot's snapshot ([`Snapshot::retain_groups`]), and the
//! parts are joined into the new slot's snapshot ([`Snapshot::join`]). A group's whole state
//! (its extents and its segment-trigger counters) moves with it; what belongs to a slot rather
//! than to a group is joined conservatively. Pure: snapshots in, a snapshot out.

use super::{Snapshot, WindowState};
use crate::error::WindowError;
use crate::value::Value;

impl Snapshot {
    /// Drops every group whose key `keep` refuses (their ids become free); the slot's own
    /// parts (watermark, timer deadlines, late counts) stay as they are.
    pub fn retain_groups(&mut self, keep: impl Fn(&Value) -> bool) {
        for (id, key) in self.groups.iter_mut().enumerate() {
            if key.as_ref().is_some_and(|k| !keep(k)) {
                *key = None;
                for w in &mut self.windows {
                    w.groups.remove(&(id as u32));
                }
            }
        }
        while matches!(self.groups.last(), Some(None)) {
            self.groups.pop();
        }
    }

    /// The state of the keys of this snapshot with no group (the shape of `self`: the same
    /// windows and triggers) — then the groups of every part added, renumbered in order. The
    /// parts' keys must be disjoint. What belongs to a slot is joined so that nothing becomes
    /// late or fires early because of the join: the watermark is the least of the parts' (this
    /// snapshot's if there are none), each timer deadline the earliest, and the late count
    /// (a statistic) the greatest.
    pub fn join(&self, parts: Vec<Snapshot>) -> Result<Snapshot, WindowError> {
        let bad = |m: String| WindowError::BadSnapshot(m);
        let mut out = Snapshot {
            groups: Vec::new(),
            watermark: parts
                .iter()
                .map(|p| p.watermark)
                .min()
                .unwrap_or(self.watermark),
            windows: self
                .windows
                .iter()
                .map(|w| WindowState {
                    groups: Default::default(),
                    timers: w.timers.clone(),
                    late: w.late,
                })
                .collect(),
        };
        let mut seen = std::collections::HashSet::new();
        for (i, mut part) in parts.into_iter().enumerate() {
            if part.windows.len() != out.windows.len() {
                return Err(bad(format!(
                    "part {i} has {} windows, expected {}",
                    part.windows.len(),
                    out.windows.len()
                )));
            }
            for (w, (o, p)) in out.windows.iter_mut().zip(&part.windows).enumerate() {
                if p.timers.len() != o.timers.len() {
                    return Err(bad(format!(
                        "part {i}, window {w}: {} timers",
                        p.timers.len()
                    )));
                }
                for (t, d) in o.timers.iter_mut().zip(&p.timers) {
                    *t = match (*t, *d) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                }
                o.late = o.late.max(p.late);
            }
            for (id, key) in std::mem::take(&mut part.groups).into_iter().enumerate() {
                let Some(key) = key else { continue };
                if !seen.insert(key.clone()) {
                    return Err(bad(format!("group {key} is in two parts")));
                }
                let new_id = out.groups.len() as u32;
                for (o, p) in out.windows.iter_mut().zip(&mut part.windows) {
                    if let Some(gs) = p.groups.remove(&(id as u32)) {
                        o.groups.insert(new_id, gs);
                    }
                }
                out.groups.push(Some(key));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use crate::aggregation;
    use crate::trigger::{Firing, Refinement, TriggerSpec};
    use crate::value::{Map, Value};
    use crate::window::WindowSpec;
    use crate::WindowOperator;
    use proptest::prelude::*;

    fn operator() -> WindowOperator {
        WindowOperator::new(
            vec![
                WindowSpec::fixed("ten", "t", 10, aggregation::count()),
                WindowSpec::session("s", "t", 5, aggregation::sum("v")),
                WindowSpec::global("all", aggregation::count()),
            ],
            vec![
                TriggerSpec::watermark("ten", "closed", 0),
                TriggerSpec::segment("ten", "every-2", 2).refinement(Refinement::Discarding),
                TriggerSpec::watermark("s", "closed", 0),
                TriggerSpec::segment("all", "every-3", 3),
            ],
        )
        .unwrap()
    }

    /// Feeds `(time, value, group)` segments, then a watermark `lag` behind the latest time;
    /// returns the firings, sorted (group ids, hence firing order, differ between operators).
    fn feed(op: &mut WindowOperator, segments: &[(i64, i64, i64)], lag: i64) -> Vec<String> {
        let mut firings: Vec<Firing> = Vec::new();
        let mut latest = i64::MIN;
        for &(t, v, g) in segments {
            let mut m = Map::new();
            m.insert("t", t);
            m.insert("v", v);
            firings.extend(op.on_segment(&m, &Value::Int(g)).unwrap().firings);
            latest = latest.max(t);
        }
        if latest > i64::MIN {
            firings.extend(op.on_watermark(latest - lag).firings);
        }
        let mut out: Vec<String> = firings.iter().map(|f| format!("{f:?}")).collect();
        out.sort();
        out
    }

    fn segments() -> impl Strategy<Value = Vec<(i64, i64, i64)>> {
        prop::collection::vec((0_i64..100, 1_i64..5, 0_i64..9), 0..40)
    }

    proptest! {
        /// An operator's state split by group into parts and joined again behaves as the
        /// original: the same extents for every group now, and the same firings and extents
        /// after more segments and watermarks.
        #[test]
        fn split_and_joined_state_behaves_as_the_original(
            before in segments(),
            after in segments(),
            parts in 1_i64..4,
            lag in 0_i64..20,
        ) {
            let mut original = operator();
            feed(&mut original, &before, lag);
            let snapshot = original.snapshot();
            let pieces: Vec<_> = (0..parts)
                .map(|p| {
                    let mut s = snapshot.clone();
                    s.retain_groups(|k| matches!(k, Value::Int(g) if g % parts == p));
                    s
                })
                .collect();
            let mut joined = operator();
            let shape = joined.snapshot();
            joined.restore(shape.join(pieces).unwrap()).unwrap();
            for g in 0..9 {
                for w in ["ten", "s", "all"] {
                    prop_assert_eq!(joined.extents(w, &Value::Int(g)), original.extents(w, &Value::Int(g)));
                }
            }
            prop_assert_eq!(feed(&mut joined, &after, lag), feed(&mut original, &after, lag));
            for g in 0..9 {
                for w in ["ten", "s", "all"] {
                    prop_assert_eq!(joined.extents(w, &Value::Int(g)), original.extents(w, &Value::Int(g)));
                }
            }
        }
    }

    #[test]
    fn a_group_in_two_parts_is_refused() {
        let mut op = operator();
        feed(&mut op, &[(1, 1, 7)], 0);
        let s = op.snapshot();
        let err = operator().snapshot().join(vec![s.clone(), s]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "snapshot does not fit these windows and triggers: group 7 is in two parts"
        );
    }
}
