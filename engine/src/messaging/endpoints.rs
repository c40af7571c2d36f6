//! The local ends of messaging in one process: the bounded queue of each open task slot
//! ([`SlotReceiver`]) and the process's ack-tree table ([`AckTable`]).
//!
//! A connection's reader delivers a slot's batches into the slot's queue without ever waiting:
//! credit guarantees room (each connection has at most its window of messages in a slot's
//! queue, and the queue holds `window × max_connections`), so a full queue can only mean a peer
//! broke the protocol. Taking a message out of the queue ([`SlotReceiver::recv`]) gives its
//! credit back to the connection it came by. Incoming acks are applied to the ack table at
//! once (XOR is cheap and needs no queue); trees that complete are listed for the input to
//! collect ([`AckTable::take_completed`]).

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Notify};

use super::ack_tree::{AckOutcome, AckTreeError, AckTrees};
use super::address::{ProcessId, SlotAddress};
use super::frame::{Batch, Done};

/// Where a slot's consumer gives back the credit of a message it took: the connection the
/// message came by (implemented by it, so that this module does not depend on the
/// connection's).
pub(crate) trait CreditReturn: Send + Sync {
    /// The local consumer took a message of `slot` that came by this connection.
    fn consumed(&self, slot: &SlotAddress);
}

/// A message for a local slot, as its consumer takes it.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// A batch, from process `process`.
    Batch {
        /// The process it came from (as authenticated at connection start).
        process: ProcessId,
        /// The batch.
        batch: Batch,
    },
    /// A sender finished its stream to the slot.
    Done {
        /// The process it came from.
        process: ProcessId,
        /// Which sender.
        done: Done,
    },
}

/// A delivery in a slot's queue, with the connection its credit goes back to.
pub(crate) struct Inbound {
    pub delivery: Delivery,
    pub connection: Weak<dyn CreditReturn>,
}

/// The receiving end of one local task slot: its messages from every process, in order per
/// sending process (and so per sender slot).
#[derive(Debug)]
pub struct SlotReceiver {
    slot: SlotAddress,
    rx: mpsc::Receiver<Inbound>,
    endpoints: Arc<Endpoints>,
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbound")
            .field("delivery", &self.delivery)
            .finish_non_exhaustive()
    }
}

impl SlotReceiver {
    /// The slot.
    pub fn slot(&self) -> &SlotAddress {
        &self.slot
    }

    /// The next message for the slot (waiting for one); `None` once the messenger is shut
    /// down. Taking it gives its credit back to the sender's connection.
    pub async fn recv(&mut self) -> Option<Delivery> {
        let inbound = self.rx.recv().await?;
        Some(self.taken(inbound))
    }

    /// The next message if one is queued, without waiting.
    pub fn try_recv(&mut self) -> Option<Delivery> {
        let inbound = self.rx.try_recv().ok()?;
        Some(self.taken(inbound))
    }

    /// Messages queued now.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// True if nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    fn taken(&self, inbound: Inbound) -> Delivery {
        if let Some(connection) = inbound.connection.upgrade() {
            connection.consumed(&self.slot);
        }
        inbound.delivery
    }
}

impl Drop for SlotReceiver {
    fn drop(&mut self) {
        self.endpoints.close_slot(&self.slot);
    }
}

/// The ack trees of the input batches this process read, and the roots that completed.
#[derive(Debug)]
pub struct AckTable {
    trees: AckTrees,
    completed: Vec<u64>,
    /// Acks for roots that were not pending (late after an expiry, or not ours).
    unknown: u64,
}

impl AckTable {
    fn new(pending_timeout: Duration) -> Self {
        AckTable {
            trees: AckTrees::new(pending_timeout),
            completed: Vec::new(),
            unknown: 0,
        }
    }

    /// Starts the tree of an input batch whose id is `root`.
    pub fn start(&mut self, root: u64, now: Instant) -> Result<(), AckTreeError> {
        self.trees.start(root, now)
    }

    /// XORs an update into a tree; a tree that completes is listed for
    /// [`take_completed`](Self::take_completed).
    pub fn ack(&mut self, root: u64, xor: u64) -> AckOutcome {
        let outcome = self.trees.ack(root, xor);
        match outcome {
            AckOutcome::Completed => self.completed.push(root),
            AckOutcome::Unknown => self.unknown += 1,
            AckOutcome::Pending => {}
        }
        outcome
    }

    /// The roots that completed since the last call, in completion order.
    pub fn take_completed(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.completed)
    }

    /// Removes and returns the trees pending for `pending_timeout` or more (to replay).
    pub fn expired(&mut self, now: Instant) -> Vec<u64> {
        self.trees.expired(now)
    }

    /// The pending trees.
    pub fn trees(&self) -> &AckTrees {
        &self.trees
    }

    /// Acks received for roots that were not pending.
    pub fn unknown_acks(&self) -> u64 {
        self.unknown
    }
}

/// The local ends of one messenger, shared with its connections.
#[derive(Debug)]
pub(crate) struct Endpoints {
    slots: Mutex<HashMap<SlotAddress, mpsc::Sender<Inbound>>>,
    queue_capacity: usize,
    acks: Mutex<AckTable>,
    /// Woken when a tree completes.
    pub completed: Notify,
    /// Messages that arrived for a slot not open here (dropped; their credit given back).
    pub misaddressed: AtomicU64,
}

/// Where a delivery went.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Delivered {
    /// Into the slot's queue.
    Queued,
    /// No such slot is open here: dropped (its ack tree will expire and replay it).
    NoSlot,
    /// The slot's queue is full: the sender broke the credit protocol.
    Full,
}

impl Endpoints {
    pub(crate) fn new(queue_capacity: usize, pending_timeout: Duration) -> Self {
        Endpoints {
            slots: Mutex::new(HashMap::new()),
            queue_capacity,
            acks: Mutex::new(AckTable::new(pending_timeout)),
            completed: Notify::new(),
            misaddressed: AtomicU64::new(0),
        }
    }

    /// Opens a slot's queue; `None` if it is open already.
    pub(crate) fn open_slot(self: &Arc<Self>, slot: SlotAddress) -> Option<SlotReceiver> {
        let mut slots = self.slots.lock().expect("slots lock");
        if slots.contains_key(&slot) {
            return None;
        }
        let (tx, rx) = mpsc::channel(self.queue_capacity);
        slots.insert(slot.clone(), tx);
        Some(SlotReceiver {
            slot,
            rx,
            endpoints: self.clone(),
        })
    }

    fn close_slot(&self, slot: &SlotAddress) {
        self.slots.lock().expect("slots lock").remove(slot);
    }

    /// Closes every slot's queue (their receivers then end).
    pub(crate) fn close_all(&self) {
        self.slots.lock().expect("slots lock").clear();
    }

    /// Puts a delivery into its slot's queue, never waiting.
    pub(crate) fn deliver(&self, slot: &SlotAddress, inbound: Inbound) -> Delivered {
        let tx = match self.slots.lock().expect("slots lock").get(slot) {
            Some(tx) => tx.clone(),
            None => return Delivered::NoSlot,
        };
        match tx.try_send(inbound) {
            Ok(()) => Delivered::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => Delivered::Full,
            Err(mpsc::error::TrySendError::Closed(_)) => Delivered::NoSlot,
        }
    }

    /// The ack table (locked: keep it short).
    pub(crate) fn acks(&self) -> std::sync::MutexGuard<'_, AckTable> {
        self.acks.lock().expect("ack table lock")
    }

    /// Applies acks that arrived from another process.
    pub(crate) fn apply_acks(&self, updates: impl IntoIterator<Item = (u64, u64)>) {
        let mut completed = false;
        {
            let mut table = self.acks();
            for (root, xor) in updates {
                completed |= table.ack(root, xor) == AckOutcome::Completed;
            }
        }
        if completed {
            self.completed.notify_waiters();
        }
    }
}
