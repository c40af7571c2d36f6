//! The window operator: the sans-I/O heart of a windowed task slot.
//!
//! A [`WindowOperator`] holds every window and trigger of one task slot. It takes events
//! ([`WindowOperator::on_segment`], [`WindowOperator::on_watermark`],
//! [`WindowOperator::on_timer`], [`WindowOperator::on_job_completed`],
//! [`WindowOperator::on_recovered`]) and returns a [`Step`]: the [`Transition`]s it made, the
//! [`Firing`]s for sync, and the [`Late`] segments.
//!
//! **Where things are.** This module holds the operator, its state types and its accessors;
//! the rest is split by concern: `transition` (the logged change and its format), `apply`
//! (transitions onto state — the only place state changes), `segment` and `plan` (a segment
//! becomes transitions, after every window's plan is known), `fire` (triggers, a window's
//! watermark advance, timers), `watermark` (the watermark event), `complete` (job completion
//! and recovery), `deadline` (bounds, horizons and the due index) and `groups` (the group table
//! and ids). In the order `watermark`, `segment`, `complete`, `plan`, `fire`, `apply`,
//! `deadline`, `groups`, each calls only those after it (and `mod.rs`), never back.
//!
//! **Exactly-once invariant.** All operator state — extent states per group, sessions, segment
//! trigger counters, "changed since last fired" marks, refinement resets, evictions, the
//! watermark, timer deadlines, late counts and the group table — changes only through
//! [`WindowOperator::apply`], and every change the operator makes is returned as a
//! [`Transition`]. Replaying the returned transitions in order into a fresh operator with the
//! same specs rebuilds exactly the same state ([`WindowOperator::snapshot`] compares equal).
//!
//! **Semantics chosen here** (DESIGN §4 leaves them open):
//! - A trigger fires per (window, extent, group). "Changed since last fired" is a bit per
//!   trigger on each extent: set by every update, cleared when that trigger fires the extent.
//! - Segment trigger: a counter per (window, trigger, group), kept modulo the threshold; it
//!   fires when it wraps to 0. With `fire_all_extents`, segment and punctuation triggers fire all
//!   extents of the segment's group; timer, watermark, completion and recovery consider all
//!   groups.
//! - Watermark and percentile triggers fire an extent once its deadline is reached **and** its
//!   state changed since that trigger last fired it; they are checked on watermark advances
//!   (all extents) and on new segments (the segment's extents, so an update allowed by
//!   `allowed_lateness` fires again at once). Global windows have no bounds: these triggers fire
//!   them only at job completion. Deadlines: a watermark trigger fires a fixed or sliding extent
//!   once the watermark is at least `upper + delay`, a percentile trigger once it is at least
//!   `lower + ⌈(upper − lower) · percentage⌉`.
//! - **Sessions close once** (DESIGN §4). A session `[lower, upper]` can still grow while the
//!   watermark is at most `upper + timeout_gap` (an event at the watermark may still join it),
//!   so it *closes* when the watermark passes `upper + timeout_gap`, i.e. is at least
//!   `close = upper + timeout_gap + 1`. Its watermark trigger fires once the watermark is at
//!   least `close + delay` (it passed `upper + timeout_gap + delay`): with `allowed_lateness`
//!   at most `delay` (the default: both 0) the session cannot change after that, so the
//!   trigger fires each session once, with its whole state. A percentile trigger measures
//!   progress through the time the session is open, `[lower, close]`: it fires once the
//!   watermark is at least `lower + ⌈(close − lower) · percentage⌉`, so 1 is the moment the
//!   session closes (as a watermark trigger with delay 0) and anything less is an early firing,
//!   repeated if the session changes afterwards.
//! - Timer: the first [`WindowOperator::on_timer`] call starts the clock (no firing); after that
//!   every extent of every group fires whenever `now_ms` reaches the deadline, which then moves
//!   to the next multiple of the period. Processing time is a monotonic clock that restarts
//!   with its process, so a recovered slot's logged deadlines mean nothing on the new clock:
//!   [`WindowOperator::restart_timers`] starts every timer afresh, without firing (recovery
//!   itself fires what changed).
//! - Late data: a fixed/sliding segment is late when v < `min_value` or the watermark is past
//!   `upper + allowed_lateness` for all its extents (extents already past it are not updated).
//!   A session segment at t is late when t < `min_value`, or when it would join a session that
//!   is already past its lateness horizon (the watermark is past `upper + timeout_gap +
//!   allowed_lateness`: that session is final, it must not grow or fire again), or when the
//!   watermark is past `t + timeout_gap + allowed_lateness` and t does not fall within
//!   `[lower, upper + timeout_gap]` of a live session (alone, or only extending a session to
//!   the left, it might belong to a session that was already evicted). A segment that joins a
//!   session still open at or after its start is never late.
//! - Eviction: on a watermark advance, an extent whose eviction horizon has passed is fired one
//!   last time by every trigger whose changed bit is set (event `watermark`), then evicted.
//!   Fixed and sliding extents are evicted past `upper + allowed_lateness`. A session is kept
//!   after its lateness horizon until every event that could touch it (within `timeout_gap`) is
//!   late by its own time and every watermark trigger's deadline has passed: it is evicted past
//!   `upper + timeout_gap + max(timeout_gap + allowed_lateness, largest watermark delay)`.
//!   A group whose last extent in every window is evicted leaves the group table (its segment
//!   counters go with it). Global windows are never evicted.
//! - Job completion: every trigger fires every extent and group it has not fired since the last
//!   change (event `job_completed`); then the watermark becomes +∞ (`i64::MAX`) and all
//!   non-global extents are evicted, so later segments are late. A watermark of +∞ (`i64::MAX`,
//!   what a task's watermark becomes once every input is finished) *is* job completion:
//!   [`WindowOperator::on_watermark`] with `i64::MAX` does exactly what
//!   [`WindowOperator::on_job_completed`] does, so those firings say `job_completed`, not
//!   `watermark`.
//! - Recovery fires nothing new and changes nothing: a recovered slot goes on exactly as an
//!   uninterrupted one would (DESIGN §5.4), so a session still fires once, when it closes, and
//!   a discarding trigger resets the same states. Every record's firings are synced before the
//!   next record is appended, so the only firings a crash can lose are those of the last
//!   committed record: the driver derives them from its `Fired` transitions and syncs them again
//!   (event `recovered`). (Firing every changed extent at recovery, as before, fired open
//!   sessions and extents early and, with discarding triggers, reset states that an
//!   uninterrupted run keeps.)
//! - Firing order within a step: events in the order processed; within one event, windows in
//!   spec order, triggers in spec order (per window), groups by value, extents ascending.

mod apply;
mod complete;
mod deadline;
mod fire;
mod groups;
mod plan;
mod rescale;
mod segment;
mod transition;
mod watermark;

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::due::DueIndex;
use crate::error::WindowError;
use crate::trigger::{Firing, TriggerOn, TriggerSpec};
use crate::value::{Map, Value};
use crate::window::{WindowKind, WindowSpec};
use groups::GroupTable;

pub use complete::Completion;
pub use transition::Transition;

/// Group key → group id.
type GroupIds = HashMap<Value, u32, foldhash::quality::RandomState>;

/// A segment that came too late for a window; it updated nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct Late {
    /// The window id.
    pub window: String,
    /// The segment.
    pub segment: Map,
    /// Why it is late, e.g. `value 5 of "event_time" is below min_value 10`.
    pub reason: String,
}

/// What one event did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Step {
    /// The state changes, in the order applied (log them; replay them with `apply`).
    pub transitions: Vec<Transition>,
    /// The trigger firings, in a deterministic order.
    pub firings: Vec<Firing>,
    /// The late segments.
    pub late: Vec<Late>,
}

impl Step {
    /// Appends `other` to this step.
    pub fn extend(&mut self, other: Step) {
        append(&mut self.transitions, other.transitions);
        append(&mut self.firings, other.firings);
        append(&mut self.late, other.late);
    }

    /// True when nothing happened.
    pub fn is_empty(&self) -> bool {
        self.transitions.is_empty() && self.firings.is_empty() && self.late.is_empty()
    }
}

/// A read-only view of one live extent.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtentView {
    /// Inclusive lower bound (`None` for global windows).
    pub lower: Option<i64>,
    /// Inclusive upper bound (`None` for global windows).
    pub upper: Option<i64>,
    /// The aggregation state.
    pub state: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Extent {
    upper: i64,
    state: Value,
    changed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct WindowState {
    groups: GroupTable,
    timers: Vec<Option<i64>>,
    late: u64,
}

/// The complete operator state, serializable (for compaction snapshots and comparisons).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    groups: Vec<Option<Value>>,
    watermark: i64,
    windows: Vec<WindowState>,
}

/// The window operator of one task slot. See the [module docs](self).
pub struct WindowOperator {
    windows: Vec<WindowSpec>,
    triggers: Vec<Vec<TriggerSpec>>,
    state: Snapshot,
    /// Group key → group id (foldhash, seeded per process: this lookup is on every segment).
    group_ids: GroupIds,
    free_groups: BTreeSet<u32>,
    /// Per window, the extents of non-global windows by the earliest watermark at which they
    /// need attention ([`WindowOperator::due_key`]): `(key, group, extent)`. Derived from the
    /// state (kept by `apply`, rebuilt by `restore`), so a watermark advance visits only the
    /// extents that are due instead of every group. Lazy ([`crate::due`]): each live extent has
    /// an entry at or below its key; an entry taken before its extent is due is indexed again
    /// under the extent's key, one whose extent is gone is dropped.
    due: Vec<DueIndex>,
    /// Per window, the size past which the due index is rebuilt from the state (dropping its
    /// stale entries): twice its size after the last rebuild, plus [`DUE_SLACK`].
    due_limit: Vec<usize>,
    /// Per window, how long (in watermark) a session is kept past `upper + timeout_gap` before
    /// it is evicted: `max(timeout_gap + allowed_lateness, largest watermark-trigger delay)`.
    /// Past its lateness horizon a session is final, but it stays until every event that could
    /// join it is late by its own time (so such an event is found late instead of starting a
    /// session of its own next to a closed one) and every watermark trigger has fired it.
    /// 0 for other windows.
    session_keep: Vec<i64>,
}

/// Stale entries a due index may gather beyond twice its live ones before it is rebuilt. An
/// extent whose key goes back and forth (late segments within a long allowed lateness, each
/// firing a watermark trigger again) adds an entry each time; the rebuild, O(live extents)
/// after at least as many pushes, keeps the index proportional to the state.
const DUE_SLACK: usize = 4096;

impl std::fmt::Debug for WindowOperator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowOperator")
            .field("windows", &self.windows)
            .field("triggers", &self.triggers)
            .field("state", &self.state)
            .finish()
    }
}

const MAX_TRIGGERS_PER_WINDOW: usize = 64;

/// Appends `more` to `v`, taking `more`'s buffer instead of copying when `v` is empty.
fn append<T>(v: &mut Vec<T>, more: Vec<T>) {
    if v.is_empty() && v.capacity() < more.len() {
        *v = more;
    } else {
        v.extend(more);
    }
}

impl WindowOperator {
    /// An operator for `windows` and their `triggers` (each trigger names its window by id).
    /// Errors name the window or trigger and what is wrong with it.
    pub fn new(windows: Vec<WindowSpec>, triggers: Vec<TriggerSpec>) -> Result<Self, WindowError> {
        if windows.len() > usize::from(u16::MAX) {
            return Err(WindowError::InvalidWindow {
                window: String::new(),
                message: format!("at most {} windows per task", u16::MAX),
            });
        }
        let mut seen = BTreeSet::new();
        for w in &windows {
            if !seen.insert(w.id.as_str()) {
                return Err(WindowError::InvalidWindow {
                    window: w.id.clone(),
                    message: "duplicate window id".into(),
                });
            }
            w.check().map_err(|message| WindowError::InvalidWindow {
                window: w.id.clone(),
                message,
            })?;
        }
        let mut per_window: Vec<Vec<TriggerSpec>> = vec![Vec::new(); windows.len()];
        for t in triggers {
            let invalid = |message: String| WindowError::InvalidTrigger {
                window: t.window.clone(),
                trigger: t.id.clone(),
                message,
            };
            let Some(w) = windows.iter().position(|w| w.id == t.window) else {
                return Err(invalid("unknown window".into()));
            };
            t.check().map_err(invalid)?;
            if per_window[w].iter().any(|o| o.id == t.id) {
                return Err(invalid("duplicate trigger id in this window".into()));
            }
            if per_window[w].len() == MAX_TRIGGERS_PER_WINDOW {
                return Err(invalid(format!(
                    "at most {MAX_TRIGGERS_PER_WINDOW} triggers per window"
                )));
            }
            per_window[w].push(t);
        }
        let state = Snapshot {
            groups: Vec::new(),
            watermark: i64::MIN,
            windows: per_window
                .iter()
                .map(|ts| WindowState {
                    groups: GroupTable::default(),
                    timers: vec![None; ts.len()],
                    late: 0,
                })
                .collect(),
        };
        let session_keep = windows
            .iter()
            .zip(&per_window)
            .map(|(w, ts)| match w.kind {
                WindowKind::Session { gap } => {
                    let delay = ts
                        .iter()
                        .filter_map(|t| match t.on {
                            TriggerOn::Watermark { delay } => Some(delay),
                            _ => None,
                        })
                        .max()
                        .unwrap_or(0);
                    gap.saturating_add(w.allowed_lateness).max(delay)
                }
                _ => 0,
            })
            .collect();
        Ok(WindowOperator {
            session_keep,
            due: vec![DueIndex::new(); windows.len()],
            due_limit: vec![DUE_SLACK; windows.len()],
            windows,
            triggers: per_window,
            state,
            group_ids: GroupIds::default(),
            free_groups: BTreeSet::new(),
        })
    }

    /// The windows, in index order (the `w` of transitions).
    pub fn windows(&self) -> &[WindowSpec] {
        &self.windows
    }

    /// The triggers of window index `w`, in index order (the `tr` of transitions).
    pub fn triggers(&self, w: usize) -> &[TriggerSpec] {
        self.triggers.get(w).map_or(&[], Vec::as_slice)
    }

    /// The current watermark (`i64::MIN` before any, `i64::MAX` after job completion).
    pub fn watermark(&self) -> i64 {
        self.state.watermark
    }

    /// How many segments were late for window `window` (`None` for an unknown window).
    pub fn late_count(&self, window: &str) -> Option<u64> {
        let w = self.windows.iter().position(|s| s.id == window)?;
        Some(self.state.windows[w].late)
    }

    /// The number of live extents, over all windows and groups.
    pub fn live_extents(&self) -> usize {
        self.state
            .windows
            .iter()
            .flat_map(|w| w.groups.values())
            .map(|g| g.extents.len())
            .sum()
    }

    /// The number of groups in the group table.
    pub fn live_groups(&self) -> usize {
        self.group_ids.len()
    }

    /// The key of group id `group` in the operator's group table: the `key` of the
    /// [`Transition::Group`] that interned it, while the group lives. `None` for an id never
    /// interned, or freed when the group's last extent was evicted (a freed id is reused by the
    /// next new group, so the answer follows the table as of the last transition applied).
    pub fn group_key(&self, group: u32) -> Option<&Value> {
        self.state.groups.get(group as usize)?.as_ref()
    }

    /// The live extents of `window` for `group`, ascending.
    pub fn extents(&self, window: &str, group: &Value) -> Vec<ExtentView> {
        let Some(w) = self.windows.iter().position(|s| s.id == window) else {
            return Vec::new();
        };
        let Some(g) = self.group_ids.get(group) else {
            return Vec::new();
        };
        let Some(gs) = self.state.windows[w].groups.get(g) else {
            return Vec::new();
        };
        gs.extents
            .iter()
            .map(|(&e, x)| {
                let (lower, upper) = self.bounds(w, e, x);
                ExtentView {
                    lower,
                    upper,
                    state: x.state.clone(),
                }
            })
            .collect()
    }

    /// The complete state, for snapshots and comparisons.
    pub fn snapshot(&self) -> Snapshot {
        self.state.clone()
    }

    /// The complete state by reference: what [`WindowOperator::snapshot`] copies, for encoding
    /// it without a copy.
    pub fn snapshot_ref(&self) -> &Snapshot {
        &self.state
    }

    /// Replaces the state with `snapshot` (taken from an operator with the same specs).
    pub fn restore(&mut self, snapshot: Snapshot) -> Result<(), WindowError> {
        let bad = |m: String| Err(WindowError::BadSnapshot(m));
        if snapshot.windows.len() != self.windows.len() {
            return bad(format!(
                "{} windows, expected {}",
                snapshot.windows.len(),
                self.windows.len()
            ));
        }
        let mut group_ids = GroupIds::default();
        let mut free_groups = BTreeSet::new();
        for (id, key) in snapshot.groups.iter().enumerate() {
            let id = id as u32;
            match key {
                Some(k) => {
                    if group_ids.insert(k.clone(), id).is_some() {
                        return bad(format!("group {k} appears twice"));
                    }
                }
                None => {
                    free_groups.insert(id);
                }
            }
        }
        for (w, ws) in snapshot.windows.iter().enumerate() {
            let n = self.triggers[w].len();
            if ws.timers.len() != n {
                return bad(format!(
                    "window {:?}: {} timers",
                    self.windows[w].id,
                    ws.timers.len()
                ));
            }
            for (g, gs) in ws.groups.iter() {
                if !matches!(snapshot.groups.get(g as usize), Some(Some(_))) {
                    return bad(format!(
                        "window {:?}: unknown group id {g}",
                        self.windows[w].id
                    ));
                }
                if gs.counters.len() != n {
                    return bad(format!(
                        "window {:?}: {} counters",
                        self.windows[w].id,
                        gs.counters.len()
                    ));
                }
            }
        }
        self.state = snapshot;
        self.group_ids = group_ids;
        self.free_groups = free_groups;
        self.rebuild_due();
        Ok(())
    }
}
