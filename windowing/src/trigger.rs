//! Trigger specs and firings.
//!
//! A trigger decides when an extent's state (per group) is handed to a sync function. The
//! decision logic lives in the [`crate::operator::WindowOperator`]; this module holds the specs
//! and what a firing carries.
//!
//! ```
//! use sardonyx_windowing::{Refinement, TriggerSpec};
//! let t = TriggerSpec::segment("per-minute", "every-5", 5).discarding();
//! assert_eq!(t.refinement, Refinement::Discarding);
//! ```

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::value::{Map, Text, Value};

/// What a punctuation predicate sees besides the segment.
#[derive(Debug, Clone, Copy)]
pub struct PunctuationCtx<'a> {
    /// The window id.
    pub window: &'a str,
    /// The trigger id.
    pub trigger: &'a str,
    /// The segment's group (`Value::Null` without grouping).
    pub group: &'a Value,
}

/// A punctuation predicate: fires when it returns true for a segment.
pub type PunctuationPred = Arc<dyn Fn(&PunctuationCtx<'_>, &Map) -> bool + Send + Sync>;

/// When a trigger fires.
#[derive(Clone)]
pub enum TriggerOn {
    /// Every `threshold`-th segment per window and group.
    Segment {
        /// n, at least 1.
        threshold: u64,
    },
    /// All extents, every `period_ms` of processing time.
    Timer {
        /// The period in milliseconds, positive.
        period_ms: i64,
    },
    /// When the predicate is true for a new segment.
    Punctuation(PunctuationPred),
    /// An extent, once the watermark is at least `upper + delay` (and again if its state changes
    /// while it is still open). A session, once the watermark passed `upper + timeout_gap +
    /// delay`, when it can no longer grow: once per session.
    Watermark {
        /// Extra time after the upper bound, not negative.
        delay: i64,
    },
    /// An extent, once the watermark reaches `lower + (upper − lower) · percentage`; for a
    /// session, the share of the time it is open, `[lower, upper + timeout_gap + 1]`.
    PercentileWatermark {
        /// Between 0 and 1.
        percentage: f64,
    },
}

impl fmt::Debug for TriggerOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TriggerOn::Segment { threshold } => write!(f, "Segment {{ threshold: {threshold} }}"),
            TriggerOn::Timer { period_ms } => write!(f, "Timer {{ period_ms: {period_ms} }}"),
            TriggerOn::Punctuation(_) => f.write_str("Punctuation(<predicate>)"),
            TriggerOn::Watermark { delay } => write!(f, "Watermark {{ delay: {delay} }}"),
            TriggerOn::PercentileWatermark { percentage } => {
                write!(f, "PercentileWatermark {{ percentage: {percentage} }}")
            }
        }
    }
}

/// What happens to an extent's state after a firing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Refinement {
    /// Keep the state.
    #[default]
    Accumulating,
    /// Reset the state to the aggregation's init.
    Discarding,
}

/// One trigger of a window.
#[derive(Debug, Clone)]
pub struct TriggerSpec {
    /// The id of the window it fires.
    pub window: String,
    /// The trigger id, unique within the window.
    pub id: String,
    /// When it fires.
    pub on: TriggerOn,
    /// What happens to the state after firing. Default accumulating.
    pub refinement: Refinement,
    /// Fire all extents (of the segment's group, for segment and punctuation triggers) instead of
    /// only the new segment's extents. Default false.
    pub fire_all_extents: bool,
}

impl TriggerSpec {
    /// A trigger on `window` with id `id`, firing `on`.
    pub fn new(window: &str, id: &str, on: TriggerOn) -> Self {
        TriggerSpec {
            window: window.to_owned(),
            id: id.to_owned(),
            on,
            refinement: Refinement::Accumulating,
            fire_all_extents: false,
        }
    }

    /// Fires every `threshold`-th segment per group.
    pub fn segment(window: &str, id: &str, threshold: u64) -> Self {
        TriggerSpec::new(window, id, TriggerOn::Segment { threshold })
    }

    /// Fires all extents every `period_ms` of processing time.
    pub fn timer(window: &str, id: &str, period_ms: i64) -> Self {
        TriggerSpec::new(window, id, TriggerOn::Timer { period_ms })
    }

    /// Fires when `pred` is true for a new segment.
    pub fn punctuation(
        window: &str,
        id: &str,
        pred: impl Fn(&PunctuationCtx<'_>, &Map) -> bool + Send + Sync + 'static,
    ) -> Self {
        TriggerSpec::new(window, id, TriggerOn::Punctuation(Arc::new(pred)))
    }

    /// Fires an extent when the watermark reaches `upper + delay`.
    pub fn watermark(window: &str, id: &str, delay: i64) -> Self {
        TriggerSpec::new(window, id, TriggerOn::Watermark { delay })
    }

    /// Fires an extent when the watermark reaches `lower + (upper − lower) · percentage`.
    pub fn percentile_watermark(window: &str, id: &str, percentage: f64) -> Self {
        TriggerSpec::new(window, id, TriggerOn::PercentileWatermark { percentage })
    }

    /// Sets the refinement.
    pub fn refinement(mut self, refinement: Refinement) -> Self {
        self.refinement = refinement;
        self
    }

    /// Sets the refinement to accumulating.
    pub fn accumulating(self) -> Self {
        self.refinement(Refinement::Accumulating)
    }

    /// Sets the refinement to discarding.
    pub fn discarding(self) -> Self {
        self.refinement(Refinement::Discarding)
    }

    /// Sets `fire_all_extents`.
    pub fn fire_all_extents(mut self, all: bool) -> Self {
        self.fire_all_extents = all;
        self
    }

    /// Checks the spec's own values; the message says what is wrong.
    pub(crate) fn check(&self) -> Result<(), String> {
        match self.on {
            TriggerOn::Segment { threshold: 0 } => Err("threshold must be at least 1".into()),
            TriggerOn::Timer { period_ms } if period_ms <= 0 => {
                Err(format!("period must be positive, got {period_ms} ms"))
            }
            TriggerOn::Watermark { delay } if delay < 0 => {
                Err(format!("delay must not be negative, got {delay}"))
            }
            TriggerOn::PercentileWatermark { percentage } if !(0.0..=1.0).contains(&percentage) => {
                Err(format!(
                    "watermark_percentage must be between 0 and 1, got {percentage}"
                ))
            }
            _ => Ok(()),
        }
    }
}

/// The event that made a trigger fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FireEvent {
    /// A new segment.
    Segment,
    /// A timer tick.
    Timer,
    /// A punctuation predicate held.
    Punctuation,
    /// The watermark advanced (including final firings before eviction).
    Watermark,
    /// The job's inputs are exhausted.
    JobCompleted,
    /// The task slot was recovered.
    Recovered,
}

impl FireEvent {
    /// The snake_case name used in sync output (`segment`, …, `job_completed`, `recovered`).
    pub fn as_str(self) -> &'static str {
        match self {
            FireEvent::Segment => "segment",
            FireEvent::Timer => "timer",
            FireEvent::Punctuation => "punctuation",
            FireEvent::Watermark => "watermark",
            FireEvent::JobCompleted => "job_completed",
            FireEvent::Recovered => "recovered",
        }
    }
}

/// One trigger firing for one extent and group: what `sync` receives.
#[derive(Debug, Clone, PartialEq)]
pub struct Firing {
    /// The window id.
    pub window: Text,
    /// The trigger id.
    pub trigger: Text,
    /// Why it fired.
    pub event: FireEvent,
    /// The group (`Value::Null` without grouping).
    pub group: Value,
    /// The inclusive lower bound; `None` for global windows.
    pub lower: Option<i64>,
    /// The inclusive upper bound; `None` for global windows.
    pub upper: Option<i64>,
    /// The extent's state before the refinement applied.
    pub state: Value,
}

impl Firing {
    /// The `sardonyx/jsonl` sync line: `{"window","trigger","group","lower","upper","state",
    /// "event"}` in that order.
    pub fn to_sync_map(&self) -> Map {
        self.clone().into_sync_map()
    }

    /// [`Firing::to_sync_map`], moving the group and the state instead of copying them.
    pub fn into_sync_map(self) -> Map {
        // Seven distinct static keys: no key is copied and none compared.
        Map::from_distinct(vec![
            (Text::const_new("window"), self.window.into()),
            (Text::const_new("trigger"), self.trigger.into()),
            (Text::const_new("group"), self.group),
            (Text::const_new("lower"), self.lower.into()),
            (Text::const_new("upper"), self.upper.into()),
            (Text::const_new("state"), self.state),
            (
                Text::const_new("event"),
                Value::Str(Text::const_new(self.event.as_str())),
            ),
        ])
    }
}
