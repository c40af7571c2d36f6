//! What a peer process has seen of the cluster ([`ClusterView`]), shared with its metrics
//! endpoint: the entries it played, its replica after the last one, and its counts of
//! heartbeats answered and leaves appended. The dashboard's time machine replays the entries
//! kept here to any position.
//!
//! The entries are kept for the life of the process: the coordination log holds membership and
//! job entries (a few hundred bytes each), not per-event data.

use std::sync::Mutex;

use crate::coordination::{replay, Entry, ProcessId, Replica};

/// The cluster as one peer process has played it.
#[derive(Debug, Default)]
pub struct ClusterView {
    seen: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    me: Option<ProcessId>,
    entries: Vec<(u64, Entry)>,
    replica: Replica,
    heartbeats_answered: u64,
    leaves_appended: u64,
}

/// A copy of a [`ClusterView`] at one moment.
#[derive(Debug, Clone, Default)]
pub struct ClusterSnapshot {
    /// This process, once it picked its id.
    pub me: Option<ProcessId>,
    /// The replica after the last entry played.
    pub replica: Replica,
    /// Heartbeats the watched process answered.
    pub heartbeats_answered: u64,
    /// `leave_cluster` entries this process appended for a silent process.
    pub leaves_appended: u64,
}

impl ClusterView {
    /// A view of nothing yet.
    pub fn new() -> ClusterView {
        ClusterView::default()
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().expect("cluster view lock")
    }

    /// This process is `me`.
    pub(crate) fn set_me(&self, me: ProcessId) {
        self.seen().me = Some(me);
    }

    /// The entry at `position` was played, giving `replica`.
    pub(crate) fn played(&self, position: u64, entry: Entry, replica: &Replica) {
        let mut seen = self.seen();
        // A process that joins again plays the log from its start again: keep each entry once.
        if seen.entries.last().is_some_and(|(p, _)| *p >= position) {
            return;
        }
        seen.entries.push((position, entry));
        seen.replica = replica.clone();
    }

    /// The watched process answered a heartbeat.
    pub(crate) fn heartbeat_answered(&self) {
        self.seen().heartbeats_answered += 1;
    }

    /// This process appended `leave_cluster` for a silent process.
    pub(crate) fn leave_appended(&self) {
        self.seen().leaves_appended += 1;
    }

    /// The view now.
    pub fn snapshot(&self) -> ClusterSnapshot {
        let seen = self.seen();
        ClusterSnapshot {
            me: seen.me,
            replica: seen.replica.clone(),
            heartbeats_answered: seen.heartbeats_answered,
            leaves_appended: seen.leaves_appended,
        }
    }

    /// The replica after the entry at position `at` (the time machine), with that entry's
    /// name (`None` before the first entry or for a position not played).
    pub fn at(&self, at: u64) -> (Replica, Option<&'static str>) {
        let seen = self.seen();
        let name = seen
            .entries
            .iter()
            .find(|(p, _)| *p == at)
            .map(|(_, e)| e.name());
        (
            replay(seen.entries.iter().map(|(p, e)| (*p, e)), Some(at)),
            name,
        )
    }
}
