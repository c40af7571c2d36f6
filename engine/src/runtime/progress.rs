//! Live counters of a running job, read by progress displays and the run report.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use super::slot_log::SlotRecovery;

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
