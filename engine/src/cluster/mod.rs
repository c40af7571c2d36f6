//! The peer process of a cluster (DESIGN §6), the edge where the pure coordination replica
//! ([`crate::coordination`]) meets the world: the coordination log of a log cluster
//! (`sardonyx_state_log::CoordinationLog`), the messaging between processes
//! ([`crate::messaging`]) and the clock.
//!
//! [`peer::run_peer`] joins a process to the cluster and keeps it there: it appends its
//! `prepare_join`, plays every entry of the coordination log into its replica, appends the
//! reactions the replica asks of it (the join handshake, sealing a job), heartbeats the process
//! it watches in the ring and appends `leave_cluster` for it when it stays silent for
//! `failure_timeout`. [`jobs`] runs the slots the replica gives the process (a run per job
//! version, bridged to the other processes' slots over messaging; aborted and started again
//! when a slot moves) and appends `complete_slot` or `kill_job` when a run ends.
//! [`submission`] is what `sardonyx submit` and `kill-job` append. [`log_view`] reads a
//! coordination log whole and plays it to any position (`sardonyx cluster-status`, `sardonyx
//! replay`: the time machine). [`view::ClusterView`] is what a peer has seen, for its metrics
//! endpoint and dashboard (`--metrics ADDR`).

pub mod jobs;
pub mod log_view;
pub mod peer;
pub mod submission;
pub mod view;

pub use jobs::JobContext;
pub use log_view::{read_entries, LogView};
pub use peer::{run_peer, PeerConfig, PeerError, PeerExit};
pub use submission::{JobOutcome, Submitted};
pub use view::{ClusterSnapshot, ClusterView};
