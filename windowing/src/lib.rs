//! Pure, sans-I/O window logic for Sardonyx.
//!
//! - [`value`]: the value model shared by segments and window state ([`Value`], [`Map`]).
//! - [`window`] and [`trigger`]: window and trigger specs as plain Rust values.
//! - [`extent`]: extent ids and bounds of fixed and sliding windows (DESIGN §4).
//! - [`extent_map`]: a group's extents in one window (a sorted vector).
//! - [`session`]: session windows (merging by `timeout_gap`).
//! - [`due`]: the index of extents by the watermark at which they need attention.
//! - [`aggregation`]: the [`Aggregation`] trait and the built-in aggregations.
//! - [`watermark`]: per-task watermark tracking over several inputs.
//! - [`operator`]: the [`WindowOperator`], a state machine that takes segments, watermarks,
//!   timer ticks, completion and recovery, and returns transitions (to log), firings (to sync)
//!   and late segments. All of its state changes go through [`WindowOperator::apply`], so
//!   replaying logged transitions rebuilds it exactly.
//!
//! Nothing here does I/O or needs a runtime: every piece takes events and returns what to do,
//! so it is tested without sockets or sleeps.

pub mod aggregation;
pub mod due;
pub mod error;
pub mod extent;
pub mod extent_map;
pub mod operator;
pub mod session;
pub mod trigger;
pub mod value;
pub mod watermark;
pub mod window;

pub use aggregation::Aggregation;
pub use error::{AggregationError, WindowError};
pub use extent::Extents;
pub use operator::{Completion, ExtentView, Late, Snapshot, Step, Transition, WindowOperator};
pub use trigger::{
    FireEvent, Firing, PunctuationCtx, PunctuationPred, Refinement, TriggerOn, TriggerSpec,
};
pub use value::{Map, Value};
pub use watermark::WatermarkTracker;
pub use window::{Units, WindowKind, WindowSpec};
