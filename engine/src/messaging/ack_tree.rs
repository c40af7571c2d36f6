//! Storm-style ack trees (DESIGN §7): [`AckTrees`], the table of pending input batches that the
//! process which read them keeps, as pure state.
//!
//! Every input batch gets a random 64-bit **root**, and every batch derived from it downstream
//! — in this process or another — carries an [`AckEdge`]: the root and the batch's own random
//! 64-bit id. The table starts a tree at the root's value; each process that handles a batch
//! XORs together its edges — the id of the batch it finished and the id of every batch it
//! emitted from it — and sends that XOR back to the root's process (an `Ack` frame), where it
//! is XORed into the tree. Every id enters the tree twice (once when emitted, once when
//! finished), so the value returns to zero exactly when every batch of the tree has finished,
//! whatever the order the acks arrive in; the input batch itself is the tree's first node
//! (its id is the root: [`AckTrees::start`] puts it in, and the input's own ack takes it out).
//! Ids are random, so a value of zero before the end has probability 2⁻⁶⁴.
//!
//! A tree whose acks do not all arrive (a batch lost with a connection or a process) never
//! returns to zero: [`AckTrees::expired`] lists the trees older than `pending_timeout`, and the
//! input replays them (the dedup filter drops what was already applied, DESIGN §5). An ack
//! for a root that is not pending (it expired, or it is not ours) is ignored.
//!
//! Memory per pending tree: 16 bytes in the table (root and value) plus 16 in the expiry
//! order (time and root), about 35 with the hash table's spare room — more than Storm's 20,
//! because expiry here needs each tree's age in start order rather than a scan.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// One batch's place in an ack tree: the tree's root and the batch's own id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct AckEdge {
    /// The root: the id of the input batch the tree started from.
    pub root: u64,
    /// This batch's random id (never 0).
    pub id: u64,
}

/// What an ack did to its tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// The tree is still waiting for batches.
    Pending,
    /// The tree's value returned to zero: every batch finished. It left the table.
    Completed,
    /// No such tree is pending (it expired or completed, or the root is not ours).
    Unknown,
}

/// A tree could not be started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckTreeError {
    /// Roots are never zero (a tree starting at zero would be complete at once).
    #[error("an ack tree's root cannot be 0")]
    ZeroRoot,
    /// A tree with this root is already pending.
    #[error("an ack tree with root {0:#x} is already pending")]
    DuplicateRoot(u64),
}

/// A fresh random id for a root or a batch (never 0), from the operating system's source.
pub fn random_id() -> u64 {
    loop {
        // No random source at all is a broken host; a panic names it instead of ids that
        // collide.
        let id = getrandom::u64().expect("the operating system's random source is available");
        if id != 0 {
            return id;
        }
    }
}

/// The pending ack trees of the input batches this process read.
#[derive(Debug, Clone)]
pub struct AckTrees {
    pending_timeout: Duration,
    /// Root → the XOR of every id put in so far.
    pending: HashMap<u64, u64>,
    /// (start time, root) in start order; completed roots are dropped lazily.
    order: VecDeque<(Instant, u64)>,
}

impl AckTrees {
    /// An empty table whose trees expire `pending_timeout` after they start.
    pub fn new(pending_timeout: Duration) -> Self {
        AckTrees {
            pending_timeout,
            pending: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Starts the tree of an input batch whose id is `root`, at `now` (a monotonic time, no
    /// earlier than the previous start's).
    pub fn start(&mut self, root: u64, now: Instant) -> Result<(), AckTreeError> {
        if root == 0 {
            return Err(AckTreeError::ZeroRoot);
        }
        if self.pending.contains_key(&root) {
            return Err(AckTreeError::DuplicateRoot(root));
        }
        self.pending.insert(root, root);
        self.order.push_back((now, root));
        Ok(())
    }

    /// XORs `xor` (a process's edges of this tree) into the tree of `root`.
    pub fn ack(&mut self, root: u64, xor: u64) -> AckOutcome {
        let Some(value) = self.pending.get_mut(&root) else {
            return AckOutcome::Unknown;
        };
        *value ^= xor;
        if *value == 0 {
            self.pending.remove(&root);
            AckOutcome::Completed
        } else {
            AckOutcome::Pending
        }
    }

    /// Removes and returns, oldest first, the trees that started `pending_timeout` or more
    /// before `now` and have not completed: their input batches are to be replayed.
    pub fn expired(&mut self, now: Instant) -> Vec<u64> {
        let mut expired = Vec::new();
        while let Some(&(started, root)) = self.order.front() {
            if !self.pending.contains_key(&root) {
                // Completed: its place in the order is all that is left of it.
                self.order.pop_front();
                continue;
            }
            if now.saturating_duration_since(started) < self.pending_timeout {
                break;
            }
            self.order.pop_front();
            self.pending.remove(&root);
            expired.push(root);
        }
        expired
    }

    /// True if the tree of `root` is pending.
    pub fn contains(&self, root: u64) -> bool {
        self.pending.contains_key(&root)
    }

    /// Pending trees.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// True if no tree is pending.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The time after which a pending tree expires.
    pub fn pending_timeout(&self) -> Duration {
        self.pending_timeout
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(10);

    /// A tree of batches: node 0 is the input batch (its id the root), every other node's
    /// parent comes before it. The acks its processes send: per node, its id XOR its children's.
    fn acks(ids: &[u64], parents: &[usize]) -> Vec<u64> {
        let mut acks: Vec<u64> = ids.to_vec();
        for (child, &parent) in parents.iter().enumerate() {
            acks[parent] ^= ids[child + 1];
        }
        acks
    }

    /// Distinct non-zero ids and, for nodes 1.., a parent before each.
    fn tree() -> impl Strategy<Value = (Vec<u64>, Vec<usize>)> {
        (1usize..12)
            .prop_flat_map(|n| {
                (
                    proptest::collection::hash_set(1u64.., n),
                    (1..n).map(|i| (0..i).boxed()).collect::<Vec<_>>(),
                )
            })
            .prop_map(|(ids, parents)| (ids.into_iter().collect(), parents))
    }

    #[test]
    fn a_chain_completes_when_its_last_batch_finishes() {
        let t0 = Instant::now();
        let mut trees = AckTrees::new(TIMEOUT);
        let (root, a, b) = (0x11, 0x22, 0x44);
        trees.start(root, t0).unwrap();
        // The input emits `a`; `a`'s process emits `b`; `b` is written.
        assert_eq!(trees.ack(root, root ^ a), AckOutcome::Pending);
        assert_eq!(
            trees.ack(root, a ^ b),
            AckOutcome::Pending,
            "b is not finished"
        );
        assert_eq!(trees.ack(root, b), AckOutcome::Completed);
        assert!(trees.is_empty());
        assert_eq!(trees.ack(root, 1), AckOutcome::Unknown);
        assert_eq!(trees.expired(t0 + TIMEOUT), Vec::<u64>::new());
        assert_eq!(trees.start(0, t0), Err(AckTreeError::ZeroRoot));
        trees.start(7, t0).unwrap();
        assert_eq!(trees.start(7, t0), Err(AckTreeError::DuplicateRoot(7)));
    }

    #[test]
    fn trees_expire_oldest_first_at_their_timeout() {
        let t0 = Instant::now();
        let mut trees = AckTrees::new(TIMEOUT);
        trees.start(1, t0).unwrap();
        trees.start(2, t0 + Duration::from_secs(1)).unwrap();
        trees.start(3, t0 + Duration::from_secs(2)).unwrap();
        assert_eq!(trees.ack(2, 2), AckOutcome::Completed);
        assert_eq!(
            trees.expired(t0 + TIMEOUT - Duration::from_millis(1)),
            Vec::<u64>::new()
        );
        assert_eq!(
            trees.expired(t0 + TIMEOUT + Duration::from_secs(2)),
            vec![1, 3]
        );
        assert!(trees.is_empty());
        assert!(trees.order.is_empty(), "nothing lingers");
        assert_eq!(
            trees.ack(1, 1),
            AckOutcome::Unknown,
            "an expired tree takes no ack"
        );
    }

    proptest! {
        /// Several trees, their acks in any interleaving: each tree completes on exactly its
        /// last ack (never before), and none is left pending or expires afterwards.
        #[test]
        fn any_interleaving_completes_each_tree_on_its_last_ack(
            trees in proptest::collection::vec(tree(), 1..5),
            seed in any::<u64>(),
        ) {
            let t0 = Instant::now();
            let mut table = AckTrees::new(TIMEOUT);
            let mut all: Vec<(usize, u64)> = Vec::new();
            for (t, (ids, parents)) in trees.iter().enumerate() {
                // Roots of different trees may repeat in generated data: make them distinct.
                let root = ids[0];
                if table.contains(root) { return Ok(()); }
                table.start(root, t0).unwrap();
                all.extend(acks(ids, parents).into_iter().map(|a| (t, a)));
            }
            // A deterministic shuffle from the seed.
            let mut rng = seed | 1;
            for i in (1..all.len()).rev() {
                rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
                all.swap(i, (rng % (i as u64 + 1)) as usize);
            }
            let mut left: Vec<usize> = trees.iter().map(|(ids, _)| ids.len()).collect();
            for (t, a) in all {
                left[t] -= 1;
                let outcome = table.ack(trees[t].0[0], a);
                let expected = if left[t] == 0 { AckOutcome::Completed } else { AckOutcome::Pending };
                prop_assert_eq!(outcome, expected);
            }
            prop_assert!(table.is_empty());
            prop_assert_eq!(table.expired(t0 + TIMEOUT), Vec::<u64>::new());
        }

        /// A lost ack leaves its tree pending for good: it never completes, and it expires at
        /// `pending_timeout` (not before).
        #[test]
        fn a_lost_ack_makes_the_tree_expire_never_complete(
            (ids, parents) in tree(),
            lost in any::<prop::sample::Index>(),
        ) {
            let t0 = Instant::now();
            let mut table = AckTrees::new(TIMEOUT);
            let root = ids[0];
            table.start(root, t0).unwrap();
            let mut acks = acks(&ids, &parents);
            let lost = acks.remove(lost.index(acks.len()));
            // (A lost ack of value 0 would change nothing: with random ids, chance 2⁻⁶⁴.)
            prop_assume!(lost != 0);
            for a in acks {
                prop_assert_eq!(table.ack(root, a), AckOutcome::Pending);
            }
            prop_assert!(table.contains(root));
            prop_assert_eq!(table.expired(t0 + TIMEOUT - Duration::from_nanos(1)), Vec::<u64>::new());
            prop_assert_eq!(table.expired(t0 + TIMEOUT), vec![root]);
            prop_assert!(table.is_empty());
        }
    }
}
