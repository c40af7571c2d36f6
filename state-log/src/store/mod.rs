//! RocksDB storage of one node: Raft's log store and the ledger state machine (with its Raft
//! snapshots), in column families of one database.
//!
//! Durability: log appends are written to RocksDB (readable at once) and acknowledged to Raft only
//! after a dedicated flusher thread has synced the write-ahead log (`fsync`), coalescing the
//! syncs of appends that arrive together. Votes, truncations and installed snapshots are written
//! with `sync = true`. State machine writes are not synced on their own: every state machine
//! write is followed in the same WAL by a synced log write or is re-applied from the synced log
//! after a crash (each entry's changes and its `last_applied` are one atomic write batch).
//!
//! `db` opens the database and names its column families, `log_store` is Raft's log,
//! `state_machine` the ledgers, and `coordination_log` the state machine's second keyspace:
//! the coordination log, one totally ordered list of entries.

// openraft's storage traits fix the error type (`StorageError`, ~224 bytes); helpers share it.
#![allow(clippy::result_large_err)]

mod coordination_log;
mod db;
mod log_store;
mod state_machine;

pub(crate) use db::{cf_options, db_options, open_db};
pub(crate) use log_store::{Flusher, LogStore};
pub(crate) use state_machine::StateMachineStore;
