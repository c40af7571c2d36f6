//! The [`Transition`]: one logged change of the operator's state, the unit of the slot's log.
//! Every change the operator makes is one of these, applied by
//! [`WindowOperator::apply`](super::WindowOperator::apply) and returned in a
//! [`Step`](super::Step); the log stores them with bincode, so the order of variants and fields
//! here is part of the log format.

use serde::{Deserialize, Serialize};

use crate::value::Value;

/// One logged state change. Windows, triggers and groups are small indices: `window` indexes
/// the windows as given to [`WindowOperator::new`](super::WindowOperator::new), `trigger` the
/// triggers of that window in the order given, `group` the group table (filled by
/// [`Transition::Group`]).
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
