//! The durable, Raft-replicated state log of Sardonyx.
//!
//! It will hold openraft log servers whose Raft log and ledger state machine live in RocksDB,
//! the ledgers (one per task slot) with group commit, snapshots and compaction, the dedup filter
//! (a bloom filter in front of RocksDB, in rotating buckets), and its own TCP transport.
//! Records are opaque bytes here: this crate knows nothing of windows.
