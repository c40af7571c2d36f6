//! Session windows **(beyond Onyx)**: per group, each event at time t spans [t, t]; two
//! sessions merge when the gap between them (next first − previous last) is at most
//! `timeout_gap`; a session's bounds are [first event time, last event time].
//!
//! Live sessions of one group are kept as a map from lower bound to the session. Because two
//! live sessions are always more than `timeout_gap` apart, an event touches at most two of
//! them (one on each side), found by one range scan. The final set of sessions is the set of
//! connected components of the event times (consecutive times at most `timeout_gap` apart), so
//! it does not depend on arrival order; with an associative and commutative merge, neither do
//! the states.

use crate::extent_map::ExtentMap;

/// The lower bounds (ascending) of the sessions that an event at `t` joins: those with
/// `lower − gap <= t <= upper + gap`.
pub(crate) fn touching<E>(
    sessions: &ExtentMap<E>,
    upper: impl Fn(&E) -> i64,
    t: i64,
    gap: i64,
) -> Vec<i64> {
    let mut keys: Vec<i64> = sessions
        .up_to(t.saturating_add(gap))
        .rev()
        .take_while(|(_, e)| upper(e).saturating_add(gap) >= t)
        .map(|(k, _)| *k)
        .collect();
    keys.reverse();
    keys
}

/// The lower bound of the session containing `t`, if any.
pub(crate) fn containing<E>(
    sessions: &ExtentMap<E>,
    upper: impl Fn(&E) -> i64,
    t: i64,
) -> Option<i64> {
    sessions
        .up_to(t)
        .next_back()
        .filter(|(_, e)| upper(e) >= t)
        .map(|(k, _)| *k)
}

/// The sessions (inclusive `[first, last]`, ascending) that the event times `times` form with
/// `timeout_gap` — the reference definition, independent of any order.
pub fn sessions_of(times: &[i64], timeout_gap: i64) -> Vec<(i64, i64)> {
    let mut sorted = times.to_vec();
    sorted.sort_unstable();
    let mut out: Vec<(i64, i64)> = Vec::new();
    for t in sorted {
        match out.last_mut() {
            Some((_, last)) if t.saturating_sub(*last) <= timeout_gap => *last = t,
            _ => out.push((t, t)),
        }
    }
    out
}
