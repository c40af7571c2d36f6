//! Sardonyx: a stateful stream-processing engine where jobs are data.
//!
//! A [`Job`] — workflow, catalog, windows, triggers, flow conditions, lifecycles — is read from
//! JSON or TOML or built in Rust, checked against a [`Registry`] of named code, and run by the
//! local [`runtime`]: every task on its peers, batches flowing over bounded channels, grouped
//! segments routed so one key always lands on one peer, failures sent to the error output. A
//! [`cluster`] of peer processes runs the same runtime spread over processes: each runs the
//! slots the [`coordination`] replica gives it, bridged to the others over [`messaging`], and
//! takes over the slots of a process that dies.
//!
//! ```
//! use sardonyx::{Job, Registry};
//!
//! let job = Job::from_json_str(r#"{
//!   "workflow": [["in", "out"]],
//!   "catalog": [
//!     {"name": "in", "type": "input", "plugin": "sardonyx/jsonl", "params": {"path": "in.jsonl"}},
//!     {"name": "out", "type": "output", "plugin": "sardonyx/null"}
//!   ]
//! }"#).unwrap();
//! job.validate(&Registry::new()).unwrap();
//! ```

pub mod allocator;
pub mod cli;
pub mod cluster;
pub mod coordination;
pub mod data_dir;
pub mod demo;
pub mod division;
pub mod job;
pub mod key_groups;
pub mod lifecycle;
pub mod mark;
pub mod messaging;
pub mod metrics;
pub mod plugin;
mod plugins;
pub mod recycle;
pub mod registry;
pub mod runtime;
pub mod segment;
pub mod slot;
mod validation;

pub use job::{Job, Problem, ValidationError};
pub use registry::Registry;
pub use runtime::{run_job, JobReport, RunError, RunOptions};
pub use segment::{Map, Segment, Value};
