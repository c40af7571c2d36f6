//! Pure, sans-I/O window logic for Sardonyx.
//!
//! This crate holds the value model shared by segments and window state ([`Value`], [`Map`]),
//! and (as it grows) extent ids and bounds, session merging, aggregations, triggers as state
//! machines, refinements and watermarks. Nothing here does I/O or needs a runtime: every piece
//! takes events and returns what to do, so it is tested without sockets or sleeps.

pub mod value;

pub use value::{Map, Value};
