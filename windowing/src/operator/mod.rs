//! The window operator: the sans-I/O heart of a windowed task slot.
//!
//! A [`WindowOperator`] holds every window and trigger of one task slot. It takes events
//! ([`WindowOperator::on_segment`], [`WindowOperator::on_watermark`],
//! [`WindowOperator::on_timer`], [`WindowOperator::on_job_completed`],
//! [`WindowOperator::on_recovered`]) and returns a [`Step`]: the [`Transition`]s it made, the
//! [`Firing`]s for sync, and the [`Late`] segments.
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

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::due::{DueEntry, DueIndex};
use crate::extent_map::ExtentMap;

/// Group key → group id.
type GroupIds = HashMap<Value, u32, foldhash::quality::RandomState>;

use serde::{Deserialize, Serialize};

use crate::error::{a_type, WindowError};
use crate::session;
use crate::trigger::{FireEvent, Firing, PunctuationCtx, Refinement, TriggerOn, TriggerSpec};
use crate::value::{Map, Text, Value};
use crate::window::{Units, WindowKind, WindowSpec};

/// One logged state change. Windows, triggers and groups are small indices: `window` indexes
/// the windows as given to [`WindowOperator::new`], `trigger` the triggers of that window in the
/// order given, `group` the group table (filled by [`Transition::Group`]).
///
/// Encoded with bincode, which stores no field names: a variant is its index, then its fields
/// in declaration order. The order of variants and of fields is therefore part of the log
/// format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Transition {
    /// Interns group key `key` under id `id`.
    Group {
        /// The group id.
        id: u32,
        /// The group key.
        key: Value,
    },
    /// One segment's `update` of one extent: extent id `extent` (fixed/sliding), 0 (global) or
    /// the event time (session: merges the sessions it touches, then applies).
    Update {
        /// Window index.
        window: u16,
        /// Group id.
        group: u32,
        /// Extent id, or event time for sessions.
        extent: i64,
        /// The aggregation update.
        update: Value,
    },
    /// One segment's `update` of the `count` extents `extent, extent+1, …` of a sliding window.
    UpdateRange {
        /// Window index.
        window: u16,
        /// Group id.
        group: u32,
        /// First extent id.
        extent: i64,
        /// Number of extents.
        count: u32,
        /// The aggregation update.
        update: Value,
    },
    /// One segment's updates of the extents `extent, extent+1, …` of a sliding window, one each.
    UpdateEach {
        /// Window index.
        window: u16,
        /// Group id.
        group: u32,
        /// First extent id.
        extent: i64,
        /// The updates, in extent order.
        updates: Vec<Value>,
    },
    /// Trigger `trigger` fired extent `extent` of group `group`: clears its changed bit; a
    /// discarding trigger resets the state to init.
    Fired {
        /// Window index.
        window: u16,
        /// Trigger index within the window.
        trigger: u16,
        /// Group id.
        group: u32,
        /// Extent id (session: lower bound).
        extent: i64,
    },
    /// Removes extent `extent` of group `group` (and the group when nothing else holds it).
    Evict {
        /// Window index.
        window: u16,
        /// Group id.
        group: u32,
        /// Extent id (session: lower bound).
        extent: i64,
    },
    /// The watermark advanced to this value.
    Watermark(i64),
    /// Timer trigger `trigger` next fires at processing time `at`.
    TimerNext {
        /// Window index.
        window: u16,
        /// Trigger index within the window.
        trigger: u16,
        /// Processing time: milliseconds on the monotonic clock of the process that logged it.
        at: i64,
    },
    /// One more late segment for window `window`.
    Late {
        /// Window index.
        window: u16,
    },
}

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

/// How far a job completion in bounded steps ([`WindowOperator::on_job_completed_into`]) has
/// gone: the window and trigger whose changed extents are firing, and the next group.
#[derive(Debug, Default)]
pub struct Completion {
    w: usize,
    tr: usize,
    /// Window `w`'s group ids ordered by group value (the firing order), once listed.
    groups: Option<Vec<u32>>,
    /// Index in `groups` of the next group to fire.
    next: usize,
    done: bool,
}

impl Completion {
    /// True once the completion is done.
    pub fn is_done(&self) -> bool {
        self.done
    }
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
struct GroupState {
    extents: ExtentMap<Extent>,
    counters: Vec<u64>,
}

/// The groups of one window, indexed by group id. Ids are dense (freed ids are reused), so a
/// vector finds a group without the cache misses of a search tree. Serialized as a map from
/// id to state; equal when the same ids hold equal states.
#[derive(Debug, Clone, Default)]
struct GroupTable {
    slots: Vec<Option<GroupState>>,
}

impl GroupTable {
    fn get(&self, g: &u32) -> Option<&GroupState> {
        self.slots.get(*g as usize).and_then(Option::as_ref)
    }

    fn get_mut(&mut self, g: &u32) -> Option<&mut GroupState> {
        self.slots.get_mut(*g as usize).and_then(Option::as_mut)
    }

    fn get_or_insert_with(&mut self, g: u32, f: impl FnOnce() -> GroupState) -> &mut GroupState {
        let i = g as usize;
        if self.slots.len() <= i {
            self.slots.resize_with(i + 1, || None);
        }
        self.slots[i].get_or_insert_with(f)
    }

    fn insert(&mut self, g: u32, gs: GroupState) {
        *self.get_or_insert_with(g, || GroupState {
            extents: ExtentMap::new(),
            counters: Vec::new(),
        }) = gs;
    }

    fn remove(&mut self, g: &u32) -> Option<GroupState> {
        let gs = self.slots.get_mut(*g as usize)?.take();
        while matches!(self.slots.last(), Some(None)) {
            self.slots.pop();
        }
        gs
    }

    /// `(id, state)`, ascending by id.
    fn iter(&self) -> impl Iterator<Item = (u32, &GroupState)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(g, gs)| Some((g as u32, gs.as_ref()?)))
    }

    fn keys(&self) -> impl Iterator<Item = u32> + '_ {
        self.iter().map(|(g, _)| g)
    }

    fn values(&self) -> impl Iterator<Item = &GroupState> {
        self.iter().map(|(_, gs)| gs)
    }
}

impl PartialEq for GroupTable {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Serialize for GroupTable {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        // bincode needs the length up front.
        let mut m = s.serialize_map(Some(self.iter().count()))?;
        for (g, gs) in self.iter() {
            m.serialize_entry(&g, gs)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for GroupTable {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<u32, GroupState>::deserialize(d)?;
        let mut t = GroupTable::default();
        for (g, gs) in map {
            t.insert(g, gs);
        }
        Ok(t)
    }
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
    /// extents that are due instead of every group. Lazy ([`crate::due`]): an entry that no
    /// longer matches the state (the extent moved to another key, or is gone) is dropped when
    /// it is taken.
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

/// Group `g`'s state in a window with `n` triggers, created empty if it has none.
fn group_entry(groups: &mut GroupTable, g: u32, n: usize) -> &mut GroupState {
    groups.get_or_insert_with(g, || GroupState {
        extents: ExtentMap::new(),
        counters: vec![0; n],
    })
}

fn all_bits(n: usize) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}

fn fmt_wm(wm: i64) -> String {
    if wm == i64::MAX {
        "+inf".to_owned()
    } else {
        wm.to_string()
    }
}

/// What a segment does to one window, decided before anything changes.
enum Plan {
    Late(String),
    /// Update extents `e, e+1, …` with `u` then `rest` (only sliding windows have a rest).
    Update {
        e: i64,
        u: Value,
        rest: Vec<Value>,
    },
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

    /// Checks the operator's derived index against its state: every live extent of a
    /// non-global window is indexed under its current due key (other entries are stale ones,
    /// dropped when a watermark takes them), and (after
    /// any event method) no extent is left that a watermark advance to the current watermark
    /// would have fired or evicted. For tests; `Err` says what is wrong.
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
            // Every live extent's current key is in the index; other entries are stale ones,
            // dropped when popped.
            let indexed: BTreeSet<(i64, u32, i64)> = self.due[w].iter().copied().collect();
            if let Some(missing) = expected.difference(&indexed).next() {
                return Err(format!(
                    "window {w}: the index {indexed:?} lacks {missing:?} (the state: {expected:?})"
                ));
            }
        }
        Ok(())
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

    // ----- applying transitions -----

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
        let old = self.due_of(w, g, e);
        let n = self.triggers[w].len();
        let bits = all_bits(n);
        let spec = &self.windows[w];
        let agg = &spec.aggregation;
        let upper = spec.extents().map_or(i64::MAX, |x| x.upper(e));
        let gs = group_entry(&mut self.state.windows[w].groups, g, n);
        let x = gs.extents.get_or_insert_with(e, || Extent {
            upper,
            state: agg.init(),
            changed: 0,
        });
        x.state = agg.apply_update(std::mem::take(&mut x.state), u);
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
        let keys = self.state.windows[w]
            .groups
            .get(&g)
            .map_or_else(Vec::new, |gs| {
                session::touching(&gs.extents, |x| x.upper, t, gap)
            });
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
        x.state = agg.apply_update(x.state, u);
        x.changed = bits;
        gs.extents.insert(lower, x);
        self.reindex(w, g, lower, None);
    }

    /// Applies a transition the operator made itself and records it in `step`.
    fn apply_and_record(&mut self, step: &mut Step, t: Transition) {
        self.apply(&t)
            .expect("a transition made by the operator fits its state");
        step.transitions.push(t);
    }

    // ----- helpers -----

    fn bounds(&self, w: usize, e: i64, x: &Extent) -> (Option<i64>, Option<i64>) {
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
    fn horizon(&self, w: usize, x: &Extent) -> i64 {
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

    /// True when the watermark trigger `tr` of window `w` has reached its deadline for extent `e`.
    fn deadline_reached(&self, w: usize, tr: usize, e: i64, x: &Extent) -> bool {
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
    fn due_key(&self, w: usize, e: i64, x: &Extent) -> Option<i64> {
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
    fn due_of(&self, w: usize, g: u32, e: i64) -> Option<i64> {
        self.extent(w, g, e).and_then(|x| self.due_key(w, e, x))
    }

    /// Indexes extent `e` under its key now, if that differs from its key before a change
    /// (`old`); the entry under `old` goes stale.
    fn reindex(&mut self, w: usize, g: u32, e: i64, old: Option<i64>) {
        let new = self.due_of(w, g, e);
        if new == old {
            return;
        }
        if let Some(k) = new {
            self.index_due(w, (k, g, e));
        }
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
    fn rebuild_due(&mut self) {
        for w in 0..self.windows.len() {
            self.rebuild_due_window(w);
        }
    }

    /// Takes the extents of window `w` due at watermark `wm` out of the index, ordered by group
    /// value, then extent (the firing order); stale entries are dropped. They are put back by
    /// the transitions that fire or evict them, or by [`WindowOperator::restore_due`].
    fn take_due(&mut self, w: usize, wm: i64) -> Vec<(u32, i64)> {
        let mut due = self.due[w].take_upto(wm);
        due.retain(|&(k, g, e)| self.due_of(w, g, e) == Some(k));
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
    fn restore_due(&mut self, w: usize, taken: &[(u32, i64)]) {
        for &(g, e) in taken {
            if let Some(k) = self.due_of(w, g, e) {
                self.index_due(w, (k, g, e));
            }
        }
    }

    fn is_watermark_trigger(&self, w: usize, tr: usize) -> bool {
        matches!(
            self.triggers[w][tr].on,
            TriggerOn::Watermark { .. } | TriggerOn::PercentileWatermark { .. }
        )
    }

    fn extent(&self, w: usize, g: u32, e: i64) -> Option<&Extent> {
        self.state.windows[w].groups.get(&g)?.extents.get(&e)
    }

    fn changed(&self, w: usize, tr: usize, g: u32, e: i64) -> bool {
        self.extent(w, g, e)
            .is_some_and(|x| x.changed & (1u64 << tr) != 0)
    }

    /// Group ids of window `w`, ordered by group value.
    fn sorted_groups(&self, w: usize) -> Vec<u32> {
        let mut gs: Vec<u32> = self.state.windows[w].groups.keys().collect();
        gs.sort_by(|a, b| self.state.groups[*a as usize].cmp(&self.state.groups[*b as usize]));
        gs
    }

    fn extent_keys(&self, w: usize, g: u32) -> Vec<i64> {
        self.state.windows[w]
            .groups
            .get(&g)
            .map_or_else(Vec::new, |gs| gs.extents.keys().copied().collect())
    }

    /// Fires extent `e` of group `g` with trigger `tr`: records the firing with the state before
    /// refinement, then the `Fired` transition when it changes anything.
    fn fire(&mut self, step: &mut Step, w: usize, tr: usize, g: u32, e: i64, event: FireEvent) {
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
            group: self.state.groups[g as usize].clone().unwrap_or_default(),
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

    /// The watermark advanced to its current value: for window `w`, watermark triggers fire the
    /// due extents (when `watermark_triggers`), then extents past their horizon get their final
    /// firings (event `event`) and are evicted. Only the extents the due index holds at or
    /// below the watermark are visited.
    fn advance(&mut self, step: &mut Step, w: usize, event: FireEvent, watermark_triggers: bool) {
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

    // ----- events -----

    /// The window key value of `segment` for window `w` (`None` for global windows).
    fn key_value(&self, w: usize, segment: &Map) -> Result<Option<i64>, WindowError> {
        let spec = &self.windows[w];
        if spec.kind == WindowKind::Global {
            return Ok(None);
        }
        let key = spec.window_key.as_deref().unwrap_or_default();
        let err = |message: String| WindowError::WindowKey {
            window: spec.id.clone(),
            message,
        };
        let Some(v) = segment.get(key) else {
            return Err(err(format!("field {key:?} is missing")));
        };
        match spec.units {
            Units::Millis => match v {
                Value::Str(s) => v
                    .as_event_time()
                    .map(Some)
                    .ok_or_else(|| err(format!("field {key:?} is not an RFC 3339 time: {s:?}"))),
                _ => v.as_event_time().map(Some).ok_or_else(|| {
                    err(format!(
                        "field {key:?} is {}, expected epoch milliseconds or an RFC 3339 time",
                        a_type(v.type_name())
                    ))
                }),
            },
            Units::Elements => v.as_i64().map(Some).ok_or_else(|| {
                err(format!(
                    "field {key:?} is {}, expected an integer",
                    a_type(v.type_name())
                ))
            }),
        }
    }

    fn plan(&self, w: usize, segment: &Map, g: Option<u32>) -> Result<Plan, WindowError> {
        let spec = &self.windows[w];
        let v = self.key_value(w, segment)?;
        let wm = self.state.watermark;
        let gs = g.and_then(|g| self.state.windows[w].groups.get(&g));
        let agg = &spec.aggregation;
        let create = |state: &Value| {
            agg.create_update(state, segment)
                .map_err(|source| WindowError::Aggregation {
                    window: spec.id.clone(),
                    source,
                })
        };
        let key = spec.window_key.as_deref().unwrap_or_default();
        if let Some(v) = v {
            if v < spec.min_value {
                return Ok(Plan::Late(format!(
                    "value {v} of {key:?} is below min_value {}",
                    spec.min_value
                )));
            }
        }
        match spec.kind {
            WindowKind::Global => {
                let u = match gs.and_then(|gs| gs.extents.get(&0)) {
                    Some(x) => create(&x.state)?,
                    None => create(&agg.init())?,
                };
                Ok(Plan::Update {
                    e: 0,
                    u,
                    rest: Vec::new(),
                })
            }
            WindowKind::Session { gap } => {
                let t = v.expect("sessions have a window key");
                let lateness = spec.allowed_lateness;
                let touching: Vec<(i64, &Extent)> = gs.map_or_else(Vec::new, |gs| {
                    session::touching(&gs.extents, |x| x.upper, t, gap)
                        .into_iter()
                        .map(|k| (k, gs.extents.get(&k).expect("touching keys exist")))
                        .collect()
                });
                let past = |upper: i64| wm > upper.saturating_add(gap).saturating_add(lateness);
                // A session past its lateness horizon is final: nothing joins it.
                if let Some((lower, x)) = touching.iter().find(|(_, x)| past(x.upper)) {
                    return Ok(Plan::Late(format!(
                        "value {t} of {key:?} is late: it would join the session [{lower}, {}], closed since watermark {} > {} + timeout_gap {gap} + allowed_lateness {lateness}",
                        x.upper,
                        fmt_wm(wm),
                        x.upper
                    )));
                }
                // Alone, or extending a session to the left, an event whose own session would
                // be past its horizon might belong to a session already evicted.
                if past(t) && !touching.iter().any(|(lower, _)| *lower <= t) {
                    return Ok(Plan::Late(format!(
                        "value {t} of {key:?} is late: watermark {} > {t} + timeout_gap {gap} + allowed_lateness {lateness}",
                        fmt_wm(wm)
                    )));
                }
                // Only an event bridging two sessions pays for a merged copy of their states.
                let u = match touching.as_slice() {
                    [] => create(&agg.init())?,
                    [(_, x)] => create(&x.state)?,
                    [(_, x), rest @ ..] => {
                        create(&rest.iter().fold(x.state.clone(), |acc, (_, y)| {
                            agg.merge(acc, y.state.clone())
                        }))?
                    }
                };
                Ok(Plan::Update {
                    e: t,
                    u,
                    rest: Vec::new(),
                })
            }
            WindowKind::Fixed { .. } | WindowKind::Sliding { .. } => {
                let v = v.expect("fixed and sliding windows have a window key");
                let ext = spec.extents().expect("numbered extents");
                let ids = ext.ids(v).expect("v >= min_value");
                let live: Vec<i64> = ids
                    .filter(|&id| wm <= ext.upper(id).saturating_add(spec.allowed_lateness))
                    .collect();
                if live.is_empty() {
                    let upper = ext.last_upper(v).unwrap_or(v);
                    return Ok(Plan::Late(format!(
                        "value {v} of {key:?} is late: watermark {} > upper {upper} + allowed_lateness {}",
                        fmt_wm(wm),
                        spec.allowed_lateness
                    )));
                }
                let update = |id: i64| match gs.and_then(|gs| gs.extents.get(&id)) {
                    Some(x) => create(&x.state),
                    None => create(&agg.init()),
                };
                let u = update(live[0])?;
                let rest = live[1..]
                    .iter()
                    .map(|&id| update(id))
                    .collect::<Result<Vec<Value>, WindowError>>()?;
                Ok(Plan::Update {
                    e: live[0],
                    u,
                    rest,
                })
            }
        }
    }

    /// A new segment of `group` (`Value::Null` without grouping). On error (a bad window key, or
    /// an aggregation rejecting the segment) nothing changes and the segment belongs on the error
    /// path with the error's message.
    pub fn on_segment(&mut self, segment: &Map, group: &Value) -> Result<Step, WindowError> {
        let mut step = Step::default();
        self.on_segment_into(segment, group, &mut step)?;
        Ok(step)
    }

    /// [`WindowOperator::on_segment`], appending to `step` (so a batch reuses one `Step`). On
    /// error nothing changes and `step` is left as it was.
    pub fn on_segment_into(
        &mut self,
        segment: &Map,
        group: &Value,
        step: &mut Step,
    ) -> Result<(), WindowError> {
        let known = self.group_ids.get(group).copied();
        // Plan every window before changing anything, so an error changes nothing. One window
        // (the common case) needs no list of plans.
        if self.windows.len() == 1 {
            let plan = self.plan(0, segment, known)?;
            self.carry_out(step, 0, plan, segment, group, known);
            return Ok(());
        }
        let plans = (0..self.windows.len())
            .map(|w| self.plan(w, segment, known))
            .collect::<Result<Vec<Plan>, WindowError>>()?;
        let mut gid = known;
        for (w, plan) in plans.into_iter().enumerate() {
            gid = self.carry_out(step, w, plan, segment, group, gid);
        }
        Ok(())
    }

    /// Carries out `plan` for window `w`; `gid` is the group's id if it is interned. Returns the
    /// group's id afterwards.
    fn carry_out(
        &mut self,
        step: &mut Step,
        w: usize,
        plan: Plan,
        segment: &Map,
        group: &Value,
        gid: Option<u32>,
    ) -> Option<u32> {
        match plan {
            Plan::Late(reason) => {
                self.apply_and_record(step, Transition::Late { window: w as u16 });
                step.late.push(Late {
                    window: self.windows[w].id.clone(),
                    segment: segment.clone(),
                    reason,
                });
                gid
            }
            Plan::Update { e, u, mut rest } => {
                let g = match gid {
                    Some(g) => g,
                    None => {
                        let id = self
                            .free_groups
                            .first()
                            .copied()
                            .unwrap_or(self.state.groups.len() as u32);
                        self.apply_and_record(
                            step,
                            Transition::Group {
                                id,
                                key: group.clone(),
                            },
                        );
                        id
                    }
                };
                let w16 = w as u16;
                let n = 1 + rest.len();
                let t = if rest.is_empty() {
                    Transition::Update {
                        window: w16,
                        group: g,
                        extent: e,
                        update: u,
                    }
                } else if rest.iter().all(|r| *r == u) {
                    Transition::UpdateRange {
                        window: w16,
                        group: g,
                        extent: e,
                        count: n as u32,
                        update: u,
                    }
                } else {
                    rest.insert(0, u);
                    Transition::UpdateEach {
                        window: w16,
                        group: g,
                        extent: e,
                        updates: rest,
                    }
                };
                self.apply_and_record(step, t);
                let touched = match self.windows[w].kind {
                    WindowKind::Session { .. } => self.state.windows[w]
                        .groups
                        .get(&g)
                        .and_then(|gs| session::containing(&gs.extents, |x| x.upper, e))
                        .map_or(0..0, |lo| lo..lo + 1),
                    _ => e..e + n as i64,
                };
                self.segment_triggers(step, w, g, touched, segment);
                Some(g)
            }
        }
    }

    /// Evaluates the triggers of window `w` after a segment of group `g` updated the extents
    /// `touched`.
    fn segment_triggers(
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
                    let group = self.state.groups[g as usize].clone().unwrap_or_default();
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

    /// Several segments, each with its group. Returns the combined step and the segments that
    /// were rejected (by index, with the error); a rejected segment changes nothing.
    pub fn on_batch<'a>(
        &mut self,
        batch: impl IntoIterator<Item = (&'a Map, &'a Value)>,
    ) -> (Step, Vec<(usize, WindowError)>) {
        let mut step = Step::default();
        let mut errors = Vec::new();
        for (i, (segment, group)) in batch.into_iter().enumerate() {
            if let Err(e) = self.on_segment_into(segment, group, &mut step) {
                errors.push((i, e));
            }
        }
        (step, errors)
    }

    /// The task watermark advanced to `wm`: watermark triggers fire, then extents past their
    /// horizon get their final firings and are evicted. A watermark not above the current one
    /// does nothing. A watermark of +∞ (`i64::MAX`: every input finished) is job completion and
    /// does what [`WindowOperator::on_job_completed`] does.
    pub fn on_watermark(&mut self, wm: i64) -> Step {
        let mut step = Step::default();
        self.on_watermark_into(wm, &mut step);
        step
    }

    /// [`WindowOperator::on_watermark`], appending to `step` (a batch's step takes its
    /// watermark's transitions and firings without another vector to copy them from).
    pub fn on_watermark_into(&mut self, wm: i64, step: &mut Step) {
        if wm <= self.state.watermark {
            return;
        }
        if wm == i64::MAX {
            step.extend(self.on_job_completed());
            return;
        }
        self.apply_and_record(step, Transition::Watermark(wm));
        for w in 0..self.windows.len() {
            self.advance(step, w, FireEvent::Watermark, true);
        }
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

    /// The job's inputs are exhausted: every trigger fires every extent and group changed since
    /// it last fired it (event `job_completed`); then the watermark becomes +∞ and all
    /// non-global extents are evicted.
    pub fn on_job_completed(&mut self) -> Step {
        let mut step = Step::default();
        self.on_job_completed_into(&mut Completion::default(), &mut step, usize::MAX);
        step
    }

    /// [`WindowOperator::on_job_completed`] in bounded steps, so that a job with many open
    /// windows does not hold all their final firings at once: appends to `step` the firings of
    /// whole groups until at least `max_firings` (at least 1) were appended, or completion is
    /// done. Returns true once it is done (every changed extent fired, the watermark +∞ and
    /// the extents evicted); until then call it again with the same `completion` and no other
    /// event in between. The steps of all calls, concatenated, are those of
    /// [`WindowOperator::on_job_completed`]. Each step can be logged and replayed on its own: a
    /// completion cut short by a crash fires what is left when the job is completed again.
    pub fn on_job_completed_into(
        &mut self,
        completion: &mut Completion,
        step: &mut Step,
        max_firings: usize,
    ) -> bool {
        if completion.done {
            return true;
        }
        let start = step.firings.len();
        let max_firings = max_firings.max(1);
        while completion.w < self.windows.len() {
            let w = completion.w;
            let groups = completion
                .groups
                .take()
                .unwrap_or_else(|| self.sorted_groups(w));
            while completion.tr < self.triggers[w].len() {
                let tr = completion.tr;
                while let Some(&g) = groups.get(completion.next) {
                    if step.firings.len() - start >= max_firings {
                        completion.groups = Some(groups);
                        return false;
                    }
                    completion.next += 1;
                    for e in self.extent_keys(w, g) {
                        if self.changed(w, tr, g, e) {
                            self.fire(step, w, tr, g, e, FireEvent::JobCompleted);
                        }
                    }
                }
                completion.next = 0;
                completion.tr += 1;
            }
            completion.tr = 0;
            completion.w += 1;
        }
        if self.state.watermark < i64::MAX {
            self.apply_and_record(step, Transition::Watermark(i64::MAX));
        }
        for w in 0..self.windows.len() {
            self.advance(step, w, FireEvent::JobCompleted, false);
        }
        completion.done = true;
        true
    }

    /// The slot was recovered (state rebuilt from the log). Fires nothing and changes nothing
    /// (see the module docs): the step is empty. Kept as the event a driver reports, so that a
    /// trigger needing it later has its place.
    pub fn on_recovered(&mut self) -> Step {
        Step::default()
    }
}
