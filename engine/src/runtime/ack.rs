//! Acknowledgement of input batches: an input position is committed only once every segment
//! derived from it is fully processed.
//!
//! Each input batch gets an [`AckToken`] holding the batch's end position in every partition it
//! read (the position of its last record of that partition); every batch derived from it
//! downstream holds a clone of the token's `Arc`. When the last clone drops, the batch is done
//! and the token reports its positions. The [`Committer`] advances the committed [`Positions`]
//! over the contiguous prefix of completed batches (merging each batch's positions in with
//! [`Positions::advance`]), so a resumed input never skips an unfinished batch in any partition.
//!
//! Tokens travel in [`HeldAcks`]. Whoever finishes a batch releases its acks; acks dropped any
//! other way (a peer failing mid-batch, a message lost with a failed peer's queue) poison their
//! tokens, and a poisoned token never reports: a job that fails never commits positions past
//! work it did not finish.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use sardonyx_connectors::Positions;
use tokio::sync::mpsc;

/// Marks one input batch as in flight until dropped.
#[derive(Debug)]
pub struct AckToken {
    seq: u64,
    input: u32,
    positions: Positions,
    records: u64,
    done: mpsc::UnboundedSender<Completion>,
    poisoned: AtomicBool,
}

/// What a finished batch's token reports to its committer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The batch's number in its issuer's order.
    pub seq: u64,
    /// The positions the batch ends at, per partition it read.
    pub positions: Positions,
    /// How many input records the batch holds.
    pub records: u64,
}

impl AckToken {
    /// Marks the batch as not finished: it will never be reported done.
    pub fn poison(&self) {
        self.poisoned.store(true, Ordering::SeqCst);
    }

    /// The batch's number in its issuer's order (0, 1, 2, …): what its completion reports.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The input peer (its job-wide peer id) that read the batch.
    pub fn input(&self) -> u32 {
        self.input
    }

    /// The positions the batch ends at, per partition it read.
    pub fn positions(&self) -> &Positions {
        &self.positions
    }
}

impl Drop for AckToken {
    fn drop(&mut self) {
        if self.poisoned.load(Ordering::SeqCst) {
            return;
        }
        // The committer may have gone (job aborted): nothing left to record then.
        let _ = self.done.send(Completion {
            seq: self.seq,
            positions: std::mem::take(&mut self.positions),
            records: self.records,
        });
    }
}

/// The acks a batch carries. Release them once the batch is fully handled; dropping them
/// otherwise poisons their tokens (see the module docs).
#[derive(Debug, Default)]
pub struct HeldAcks(Vec<Arc<AckToken>>);

impl HeldAcks {
    /// Acks for these tokens.
    pub fn new(tokens: Vec<Arc<AckToken>>) -> Self {
        HeldAcks(tokens)
    }

    /// The tokens.
    pub fn tokens(&self) -> &[Arc<AckToken>] {
        &self.0
    }

    /// Another holder of the same tokens (for a message derived from this batch).
    pub fn share(&self) -> Self {
        HeldAcks(self.0.clone())
    }

    /// Takes in another batch's acks.
    pub fn extend(&mut self, mut other: HeldAcks) {
        self.0.append(&mut other.0);
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The batch is fully handled: let go of the tokens normally.
    pub fn release(mut self) {
        self.0.clear();
    }
}

impl Drop for HeldAcks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.poison();
        }
    }
}

/// Hands out tokens for one input peer's batches, in order.
#[derive(Debug)]
pub struct AckIssuer {
    next: u64,
    input: u32,
    done: mpsc::UnboundedSender<Completion>,
}

impl AckIssuer {
    /// A token for the next batch, which holds `records` input records and ends at
    /// `positions` (per partition it read).
    pub fn issue(&mut self, positions: Positions, records: u64) -> Arc<AckToken> {
        let seq = self.next;
        self.next += 1;
        Arc::new(AckToken {
            seq,
            input: self.input,
            positions,
            records,
            done: self.done.clone(),
            poisoned: AtomicBool::new(false),
        })
    }
}

/// Tracks completions and the committed positions of one input peer.
#[derive(Debug, Default)]
pub struct Committer {
    next: u64,
    completed: BTreeMap<u64, (Positions, u64)>,
    committed: Positions,
    records: u64,
}

impl Committer {
    /// A committer starting from `resume` (the positions an earlier run committed).
    pub fn new(resume: Positions) -> Self {
        Committer {
            committed: resume,
            ..Committer::default()
        }
    }

    /// Records that a batch is done; returns the new committed positions if they advanced.
    pub fn complete(&mut self, done: Completion) -> Option<&Positions> {
        self.completed
            .insert(done.seq, (done.positions, done.records));
        let mut advanced = false;
        while let Some((ps, records)) = self.completed.remove(&self.next) {
            self.next += 1;
            self.records += records;
            for p in ps.iter() {
                let before = self.committed.get(p.partition);
                self.committed.advance(p);
                advanced |= self.committed.get(p.partition) != before;
            }
        }
        advanced.then_some(&self.committed)
    }

    /// The committed positions: in each partition, everything before its position is fully
    /// processed.
    pub fn committed(&self) -> &Positions {
        &self.committed
    }

    /// How many records the batches committed so far (since this committer started) hold.
    pub fn records(&self) -> u64 {
        self.records
    }
}

/// A token issuer for input peer `input` and the receiving end of its completions.
pub fn channel(input: u32) -> (AckIssuer, mpsc::UnboundedReceiver<Completion>) {
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
    use sardonyx_connectors::Position;

    fn pos(offset: u64) -> Positions {
        at(&[(0, offset)])
    }

    /// Batch `seq`, of 10 records, ending at `positions`.
    fn done(seq: u64, positions: Positions) -> Completion {
        Completion {
            seq,
            positions,
            records: 10,
        }
    }

    fn at(ps: &[(u32, u64)]) -> Positions {
        ps.iter()
            .map(|&(partition, offset)| Position { partition, offset })
            .collect()
    }

    #[test]
    fn commits_only_the_contiguous_prefix() {
        let mut c = Committer::default();
        assert_eq!(c.complete(done(1, pos(20))), None);
        assert!(c.committed().is_empty());
        assert_eq!(c.complete(done(0, pos(10))), Some(&pos(20)));
        assert_eq!(c.complete(done(3, pos(40))), None);
        assert_eq!(c.committed(), &pos(20));
        assert_eq!(c.complete(done(2, pos(30))), Some(&pos(40)));
        assert_eq!(c.records(), 40, "batches 0 to 3, 10 records each");
    }

    #[test]
    fn merges_the_partitions_of_completed_batches() {
        let mut c = Committer::new(at(&[(0, 5), (2, 9)]));
        // Batch 1 (partitions 1 and 2) is done before batch 0: nothing moves yet.
        assert_eq!(c.complete(done(1, at(&[(1, 30), (2, 12)]))), None);
        assert_eq!(c.committed(), &at(&[(0, 5), (2, 9)]));
        assert_eq!(
            c.complete(done(0, at(&[(0, 8), (1, 20)]))),
            Some(&at(&[(0, 8), (1, 30), (2, 12)]))
        );
        // A batch of one partition leaves the others where they are.
        assert_eq!(
            c.complete(done(2, at(&[(1, 31)]))),
            Some(&at(&[(0, 8), (1, 31), (2, 12)]))
        );
        // A batch that moves nothing (positions never go back) reports nothing.
        assert_eq!(c.complete(done(3, at(&[(0, 7)]))), None);
    }

    #[test]
    fn tokens_report_when_the_last_clone_drops() {
        let (mut issuer, mut rx) = channel(0);
        let t = issuer.issue(pos(7), 3);
        let clone = t.clone();
        drop(t);
        assert!(rx.try_recv().is_err());
        drop(clone);
        assert_eq!(
            rx.try_recv().unwrap(),
            Completion {
                seq: 0,
                positions: pos(7),
                records: 3
            }
        );
    }

    #[test]
    fn acks_dropped_unreleased_never_report() {
        let (mut issuer, mut rx) = channel(0);
        let held = HeldAcks::new(vec![issuer.issue(pos(1), 1)]);
        let downstream = held.share();
        held.release();
        // A peer fails with the batch in hand: its acks drop without a release.
        drop(downstream);
        assert!(
            rx.try_recv().is_err(),
            "a poisoned batch must not be committed"
        );
        let ok = HeldAcks::new(vec![issuer.issue(pos(2), 1)]);
        ok.share().release();
        ok.release();
        assert_eq!(
            rx.try_recv().unwrap(),
            Completion {
                seq: 1,
                positions: pos(2),
                records: 1
            }
        );
    }
}
