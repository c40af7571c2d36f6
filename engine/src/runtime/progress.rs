//! Live counters of a running job, read by progress displays and the run report, and what
//! each windowed slot's recovery did.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// Live counters of a running job, for progress displays.
#[derive(Debug, Default)]
pub struct Progress {
    /// Records read by input tasks.
    pub read: AtomicU64,
    /// Segments written by output tasks.
    pub written: AtomicU64,
    /// Segments (or input lines) sent to the error output.
    pub rejected: Arc<AtomicU64>,
    /// Segments that came too late for a window.
    pub late: AtomicU64,
    /// Segments that matched none of their task's flow conditions.
    pub unmatched: AtomicU64,
    /// Trigger firings.
    pub fired: AtomicU64,
    /// Segments a windowed task had already applied (skipped by its dedup filter).
    pub duplicates: AtomicU64,
    /// Batch records appended to windowed slots' ledgers.
    pub logged_records: AtomicU64,
    /// Their bytes.
    pub logged_bytes: AtomicU64,
    /// Segment ids they carry.
    pub logged_segments: AtomicU64,
    /// Compaction snapshots written.
    pub snapshots: AtomicU64,
    /// What recovering each windowed slot read.
    pub recoveries: std::sync::Mutex<Vec<SlotRecovery>>,
}

/// What recovering one windowed slot read and did (for reports and tests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotRecovery {
    /// The slot's ledger.
    pub ledger: String,
    /// Whether a snapshot was read, and the position it covers.
    pub snapshot_position: Option<u64>,
    /// Ledger records visited by the read (each checksummed).
    pub records_scanned: u64,
    /// Bytes read (snapshot + entries).
    pub bytes_read: u64,
    /// Batch records replayed.
    pub batches: u64,
    /// Batch records fenced off (written by a process after a newer one took over).
    pub fenced: u64,
    /// Firings of the last batch synced again.
    pub pending_firings: u64,
    /// How the dedup filter was brought up to date (`None` without deduplication).
    pub filter: Option<FilterOpened>,
    /// Wall time of the recovery, in milliseconds.
    pub millis: u64,
}

/// How a slot's dedup filter was brought up to date with its recovered ledger.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FilterOpened {
    /// The filter found on disk held a prefix of the ledger and was kept (else it was rebuilt
    /// from the snapshot's export and the replayed batches).
    pub reused: bool,
    /// Ids inserted (those of the batches the filter did not hold yet, or all of them).
    pub ids: u64,
}
