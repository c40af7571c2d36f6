//! [`NodeObserver`]: a read-only view of one Raft node's metrics (role, term, log indexes,
//! group-commit counters, WAL syncs) for a metrics endpoint, which does not keep the node alive
//! (closing an [`crate::EmbeddedLog`] waits for every other handle to its node to go).

use std::sync::Weak;

use crate::node::Node;
use crate::types::{CommitStats, ServerStatus};

/// A view of a node's metrics that holds it weakly: every answer is `None` once it is closed.
#[derive(Clone)]
pub struct NodeObserver {
    node: Weak<Node>,
}

impl NodeObserver {
    pub(crate) fn new(node: Weak<Node>) -> Self {
        NodeObserver { node }
    }

    /// The node's status line: role, leader, term, last log index and applied index.
    pub fn status(&self) -> Option<ServerStatus> {
        self.node.upgrade().map(|n| n.status().0)
    }

    /// Group-commit counters: ledger commands submitted and the Raft entries they became.
    pub fn commit_stats(&self) -> Option<CommitStats> {
        self.node.upgrade().map(|n| n.commit_stats())
    }

    /// WAL syncs (fsyncs) made by the node's Raft log store.
    pub fn wal_syncs(&self) -> Option<u64> {
        self.node.upgrade().map(|n| n.wal_syncs())
    }
}

impl std::fmt::Debug for NodeObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeObserver").finish_non_exhaustive()
    }
}
