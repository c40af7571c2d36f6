//! Window specs: plain Rust values, already resolved from the job file by the engine.
//!
//! ```
//! use sardonyx_windowing::{aggregation::count, WindowSpec};
//! let w = WindowSpec::fixed("per-minute", "event_time", 60_000, count())
//!     .min_value(0)
//!     .allowed_lateness(5_000);
//! assert_eq!(w.id, "per-minute");
//! ```

use std::sync::Arc;

use crate::aggregation::Aggregation;
use crate::extent::Extents;

/// The shape of a window; all lengths in milliseconds (or elements, see [`Units`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// Non-overlapping extents of `range`.
    Fixed {
        /// The width of an extent.
        range: i64,
    },
    /// Extents of `range` starting every `slide`.
    Sliding {
        /// The width of an extent.
        range: i64,
        /// The distance between extent starts (0 < slide <= range).
        slide: i64,
    },
    /// One unbounded extent.
    Global,
    /// Per group, events no further apart than `gap` form one session **(beyond Onyx)**.
    Session {
        /// The greatest gap between consecutive events of one session (`timeout_gap`).
        gap: i64,
    },
}

/// What the window key's values measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Units {
    /// Event time in epoch milliseconds: an integer, or an RFC 3339 string.
    #[default]
    Millis,
    /// A raw integer (e.g. a sequence number), not a time.
    Elements,
}

/// One window of a task.
#[derive(Debug, Clone)]
pub struct WindowSpec {
    /// The window id, unique within the job.
    pub id: String,
    /// The shape.
    pub kind: WindowKind,
    /// The field holding the event time (or element number); `None` only for global windows.
    pub window_key: Option<String>,
    /// What the window key measures.
    pub units: Units,
    /// m: the least value in any extent; smaller values are late. Default 0.
    pub min_value: i64,
    /// The aggregation building each extent's state.
    pub aggregation: Arc<dyn Aggregation>,
    /// How far (same units) past an extent's upper bound the watermark may go before the extent
    /// is closed and evicted. Default 0.
    pub allowed_lateness: i64,
}

impl WindowSpec {
    fn new(
        id: &str,
        kind: WindowKind,
        window_key: Option<&str>,
        aggregation: Arc<dyn Aggregation>,
    ) -> Self {
        WindowSpec {
            id: id.to_owned(),
            kind,
            window_key: window_key.map(str::to_owned),
            units: Units::Millis,
            min_value: 0,
            aggregation,
            allowed_lateness: 0,
        }
    }

    /// A fixed window of `range` over the event time in `window_key`.
    pub fn fixed(
        id: &str,
        window_key: &str,
        range: i64,
        aggregation: Arc<dyn Aggregation>,
    ) -> Self {
        WindowSpec::new(
            id,
            WindowKind::Fixed { range },
            Some(window_key),
            aggregation,
        )
    }

    /// A sliding window of `range` every `slide`.
    pub fn sliding(
        id: &str,
        window_key: &str,
        range: i64,
        slide: i64,
        aggregation: Arc<dyn Aggregation>,
    ) -> Self {
        WindowSpec::new(
            id,
            WindowKind::Sliding { range, slide },
            Some(window_key),
            aggregation,
        )
    }

    /// A global window (one extent, no window key).
    pub fn global(id: &str, aggregation: Arc<dyn Aggregation>) -> Self {
        WindowSpec::new(id, WindowKind::Global, None, aggregation)
    }

    /// A session window with `timeout_gap` over the event time in `window_key`.
    pub fn session(
        id: &str,
        window_key: &str,
        timeout_gap: i64,
        aggregation: Arc<dyn Aggregation>,
    ) -> Self {
        WindowSpec::new(
            id,
            WindowKind::Session { gap: timeout_gap },
            Some(window_key),
            aggregation,
        )
    }

    /// Sets `min_value`.
    pub fn min_value(mut self, min_value: i64) -> Self {
        self.min_value = min_value;
        self
    }

    /// Sets `allowed_lateness`.
    pub fn allowed_lateness(mut self, allowed_lateness: i64) -> Self {
        self.allowed_lateness = allowed_lateness;
        self
    }

    /// Sets the units of the window key.
    pub fn units(mut self, units: Units) -> Self {
        self.units = units;
        self
    }

    /// The extent geometry of a fixed or sliding window.
    pub fn extents(&self) -> Option<Extents> {
        match self.kind {
            WindowKind::Fixed { range } => Some(Extents::fixed(self.min_value, range)),
            WindowKind::Sliding { range, slide } => {
                Some(Extents::sliding(self.min_value, range, slide))
            }
            WindowKind::Global | WindowKind::Session { .. } => None,
        }
    }

    /// Checks the spec; the message says what is wrong.
    pub(crate) fn check(&self) -> Result<(), String> {
        match self.kind {
            WindowKind::Fixed { range } if range <= 0 => {
                return Err(format!("range must be positive, got {range}"))
            }
            WindowKind::Sliding { range, slide } => {
                if range <= 0 {
                    return Err(format!("range must be positive, got {range}"));
                }
                if slide <= 0 || slide > range {
                    return Err(format!(
                        "slide must be positive and at most the range {range}, got {slide}"
                    ));
                }
            }
            WindowKind::Session { gap } if gap < 0 => {
                return Err(format!("timeout_gap must not be negative, got {gap}"))
            }
            _ => {}
        }
        if self.window_key.is_none() && self.kind != WindowKind::Global {
            return Err("window_key is required (only global windows may omit it)".into());
        }
        if self.allowed_lateness < 0 {
            return Err(format!(
                "allowed_lateness must not be negative, got {}",
                self.allowed_lateness
            ));
        }
        Ok(())
    }
}
