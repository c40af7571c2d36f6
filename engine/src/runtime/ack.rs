//! Acknowledgement of input batches: an input position is committed only once every segment
//! derived from it is fully processed.
//!
//! Each input batch gets an [`AckToken`]; every batch derived from it downstream holds a clone
//! of the token's `Arc`. When the last clone drops, the batch is done and the token reports its
//! position. The [`Committer`] advances the committed position over the contiguous prefix of
//! completed batches, so a resumed input never skips an unfinished batch.

use std::collections::BTreeMap;
use std::sync::Arc;

use sardonyx_connectors::Position;
use tokio::sync::mpsc;

/// Marks one input batch as in flight until dropped.
#[derive(Debug)]
pub struct AckToken {
    seq: u64,
    input: u32,
    position: Position,
    done: mpsc::UnboundedSender<(u64, Position)>,
}

impl AckToken {
    /// The input peer (its job-wide peer id) that read the batch.
    pub fn input(&self) -> u32 {
        self.input
    }

    /// The position the batch ends at.
    pub fn position(&self) -> Position {
        self.position
    }
}

impl Drop for AckToken {
    fn drop(&mut self) {
        // The committer may have gone (job aborted): nothing left to record then.
        let _ = self.done.send((self.seq, self.position));
    }
}

/// Hands out tokens for one input peer's batches, in order.
#[derive(Debug)]
pub struct AckIssuer {
    next: u64,
    input: u32,
    done: mpsc::UnboundedSender<(u64, Position)>,
}

impl AckIssuer {
    /// A token for the next batch, which ends at `position`.
    pub fn issue(&mut self, position: Position) -> Arc<AckToken> {
        let seq = self.next;
        self.next += 1;
        Arc::new(AckToken {
            seq,
            input: self.input,
            position,
            done: self.done.clone(),
        })
    }
}

/// Tracks completions and the committed position of one input peer.
#[derive(Debug, Default)]
pub struct Committer {
    next: u64,
    completed: BTreeMap<u64, Position>,
    committed: Option<Position>,
}

impl Committer {
    /// Records that batch `seq` (ending at `position`) is done; returns the new committed
    /// position if it advanced.
    pub fn complete(&mut self, seq: u64, position: Position) -> Option<Position> {
        self.completed.insert(seq, position);
        let mut advanced = None;
        while let Some(p) = self.completed.remove(&self.next) {
            self.next += 1;
            advanced = Some(p);
        }
        if advanced.is_some() {
            self.committed = advanced;
        }
        advanced
    }

    /// The committed position: everything up to it is fully processed.
    pub fn committed(&self) -> Option<Position> {
        self.committed
    }
}

/// A token issuer for input peer `input` and the receiving end of its completions.
pub fn channel(input: u32) -> (AckIssuer, mpsc::UnboundedReceiver<(u64, Position)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        AckIssuer {
            next: 0,
            input,
            done: tx,
        },
        rx,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(offset: u64) -> Position {
        Position {
            partition: 0,
            offset,
        }
    }

    #[test]
    fn commits_only_the_contiguous_prefix() {
        let mut c = Committer::default();
        assert_eq!(c.complete(1, pos(20)), None);
        assert_eq!(c.committed(), None);
        assert_eq!(c.complete(0, pos(10)), Some(pos(20)));
        assert_eq!(c.complete(3, pos(40)), None);
        assert_eq!(c.committed(), Some(pos(20)));
        assert_eq!(c.complete(2, pos(30)), Some(pos(40)));
    }

    #[test]
    fn tokens_report_when_the_last_clone_drops() {
        let (mut issuer, mut rx) = channel(0);
        let t = issuer.issue(pos(7));
        let clone = t.clone();
        drop(t);
        assert!(rx.try_recv().is_err());
        drop(clone);
        assert_eq!(rx.try_recv().unwrap(), (0, pos(7)));
    }
}
