//! When a slot compacts and when it may prepare the next batch while a record commits: the
//! pure decisions of the per-batch loop (bytes appended since the last snapshot, the
//! `max_merged_batches` bound), apart from the ledger and the filter that carry them out.

/// The record cadence of one slot: counts the bytes appended since the last snapshot and
/// answers whether a compaction is due and whether the next batches may be prepared ahead
/// (pipelining) while a record is in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordSchedule {
    /// Compact once the bytes since the last snapshot exceed this.
    compact_after_bytes: u64,
    /// Bytes of the records appended (or begun) since the last snapshot.
    since_snapshot: u64,
    /// Most gathered batches merged into one record (at least 1).
    max_merged_batches: usize,
}

impl RecordSchedule {
    /// A schedule that compacts past `compact_after_bytes` and merges up to
    /// `max_merged_batches` (at least 1) into one record; `recovered_bytes` are the bytes of the
    /// entries recovery read after the snapshot (they count towards the next compaction).
    pub fn new(compact_after_bytes: u64, max_merged_batches: usize, recovered_bytes: u64) -> Self {
        RecordSchedule {
            compact_after_bytes,
            since_snapshot: recovered_bytes,
            max_merged_batches: max_merged_batches.max(1),
        }
    }

    /// Notes a record of `len` bytes begun (counted before it commits, so that the batches
    /// prepared meanwhile see the compaction it will make due).
    pub fn appended(&mut self, len: u64) {
        self.since_snapshot += len;
    }

    /// Notes a snapshot written: the count starts again.
    pub fn compacted(&mut self) {
        self.since_snapshot = 0;
    }

    /// True if the records since the last snapshot exceed the threshold (records begun but
    /// not yet committed included).
    pub fn compaction_due(&self) -> bool {
        self.since_snapshot > self.compact_after_bytes
    }

    /// Most gathered batches to merge into one record.
    pub fn max_merged_batches(&self) -> usize {
        self.max_merged_batches
    }

    /// Whether the slot may prepare the next batch while a record is in flight: only when the
    /// loop pipelines at all (`pipelined`: a log, no lifecycle hooks), a record is in flight, and
    /// no compaction is due (the snapshot must be the state of exactly the committed records).
    pub fn may_prepare_ahead(&self, pipelined: bool, in_flight: bool) -> bool {
        pipelined && in_flight && !self.compaction_due()
    }

    /// Whether one more queued batch may be merged into the record prepared ahead, `merged`
    /// having been merged so far: at most [`RecordSchedule::max_merged_batches`], and past the
    /// first only while the record in flight has not finished committing (`commit_finished`),
    /// so a fast log keeps records small and a slow one makes them large.
    pub fn may_merge_more(&self, merged: usize, commit_finished: bool) -> bool {
        merged < self.max_merged_batches && (merged == 0 || !commit_finished)
    }
}

#[cfg(test)]
mod tests {
    use super::RecordSchedule;
    use proptest::prelude::*;

    #[test]
    fn a_compaction_is_due_only_past_the_threshold_and_not_after_it() {
        let mut s = RecordSchedule::new(100, 4, 60);
        assert!(!s.compaction_due());
        s.appended(40);
        assert!(!s.compaction_due(), "exactly the threshold is not past it");
        s.appended(1);
        assert!(s.compaction_due());
        s.compacted();
        assert!(!s.compaction_due());
        assert_eq!(s, RecordSchedule::new(100, 4, 0));
    }

    #[test]
    fn nothing_is_prepared_ahead_without_pipelining_a_record_in_flight_or_when_compaction_is_due() {
        let mut s = RecordSchedule::new(10, 16, 0);
        assert!(s.may_prepare_ahead(true, true));
        assert!(
            !s.may_prepare_ahead(false, true),
            "lifecycle hooks or no log"
        );
        assert!(!s.may_prepare_ahead(true, false), "nothing in flight");
        s.appended(11);
        assert!(!s.may_prepare_ahead(true, true), "compaction due");
    }

    proptest! {
        /// However the commits finish, a record merges at least the first queued batch, never
        /// more than the bound, and none past the first once its predecessor has committed.
        #[test]
        fn merging_stops_at_the_bound_or_once_the_commit_finished(
            max in 0_usize..20,
            finished_after in prop::option::of(0_usize..25),
        ) {
            let s = RecordSchedule::new(u64::MAX, max, 0);
            let mut merged = 0;
            while s.may_merge_more(merged, finished_after.is_some_and(|f| merged > f)) {
                merged += 1;
                prop_assert!(merged <= 25);
            }
            let bound = max.max(1);
            let expected = match finished_after {
                Some(f) => bound.min(f + 1).max(1),
                None => bound,
            };
            prop_assert_eq!(merged, expected);
        }
    }
}
