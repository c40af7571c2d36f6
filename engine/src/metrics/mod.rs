//! Seeing a running process (DESIGN §9): metrics in the Prometheus text format at `/metrics`
//! and a live dashboard at `/`, served on `--metrics ADDR` by `sardonyx run`, `sardonyx demo
//! votes`, `sardonyx log-server` and `sardonyx peer` (which adds the coordination log's time
//! machine at `/cluster`).
//!
//! Nothing here is on the per-segment path: the run counts in [`crate::runtime::Progress`]
//! (atomics updated per batch, per firing or per rejection), and this module reads those
//! counters when it is asked — a scrape encodes them ([`exposition`]), a sampler keeps a short
//! history of them once a second for the dashboard's charts ([`history`]), and a page is
//! rendered from their per-task figures ([`summary`], [`page`], with pictures drawn by
//! `plotters` in [`chart`]). The state
//! log is observed through a timing wrapper around its [`sardonyx_state_log::Ledgers`]
//! ([`ledger_timing`]) and its Raft node's metrics; the process through `/proc` ([`process`]).
//! A peer process's cluster (processes, ring, slot owners, the time machine) is read from its
//! [`crate::cluster::ClusterView`].

pub mod chart;
mod error;
pub mod exposition;
pub mod history;
pub mod ledger_timing;
mod observed;
pub mod page;
pub mod process;
mod server;
pub mod summary;

pub use error::MetricsError;
pub use ledger_timing::{LedgerTiming, TimedLedgers};
pub use observed::{JobGraph, Observed, ObservedJob, ObservedLog};
pub use server::MetricsServer;
