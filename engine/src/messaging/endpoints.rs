//! The local ends of messaging in one process: the bounded queue of each open task slot
//! ([`SlotReceiver`]) and the process's ack-tree table ([`AckTable`]).
//!
//! A connection's reader delivers a slot's batches into the slot's queue without ever waiting:
//! credit guarantees room (each connection has at most its window of messages in a slot's
//! queue, and the queue holds `window × max_connections`), so a full queue can only mean a peer
//! broke the protocol. A message for a slot not open yet is parked in the queue the slot will
//! open with (its credit held until it is taken); one for a slot that was closed is dropped.
//! Taking a message out of the queue ([`SlotReceiver::recv`]) gives its
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

/// The most slots that may hold parked messages at once (messages for slots not open yet): a
/// peer addressing many slots that never open can make a process hold no more than this many
/// queues, each bounded by credit.
pub(crate) const MAX_PARKED_SLOTS: usize = 4096;

/// One slot's queue: its sending end, and its receiving end while no consumer has opened it
/// (messages that arrive before the slot opens are parked there, their credit held).
#[derive(Debug)]
struct SlotQueue {
    tx: mpsc::Sender<Inbound>,
    parked: Option<mpsc::Receiver<Inbound>>,
}

/// The local ends of one messenger, shared with its connections.
#[derive(Debug)]
pub(crate) struct Endpoints {
    slots: Mutex<Slots>,
    queue_capacity: usize,
    acks: Mutex<AckTable>,
    /// Woken when a tree completes.
    pub completed: Notify,
    /// Messages that arrived for a slot that was closed here (dropped; their credit given
    /// back).
    pub misaddressed: AtomicU64,
}

/// The slots' queues, open or parked, and the slots that were open and closed since.
#[derive(Debug, Default)]
struct Slots {
    queues: HashMap<SlotAddress, SlotQueue>,
    closed: std::collections::HashSet<SlotAddress>,
}

/// Where a delivery went.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Delivered {
    /// Into the slot's queue (open, or parked until it opens).
    Queued,
    /// The slot was closed here (or too many slots hold parked messages): dropped (its ack
    /// tree will expire and replay it).
    NoSlot,
    /// The slot's queue is full: the sender broke the credit protocol.
    Full,
}

impl Endpoints {
    pub(crate) fn new(queue_capacity: usize, pending_timeout: Duration) -> Self {
        Endpoints {
            slots: Mutex::new(Slots::default()),
            queue_capacity,
            acks: Mutex::new(AckTable::new(pending_timeout)),
            completed: Notify::new(),
            misaddressed: AtomicU64::new(0),
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().expect("slots lock")
    }

    /// Opens a slot's queue (with the messages parked for it, if any); `None` if it is open
    /// already. A slot closed earlier may be opened again.
    pub(crate) fn open_slot(self: &Arc<Self>, slot: SlotAddress) -> Option<SlotReceiver> {
        let mut slots = self.slots();
        slots.closed.remove(&slot);
        let rx = match slots.queues.get_mut(&slot) {
            Some(queue) => queue.parked.take()?,
            None => {
                let (tx, rx) = mpsc::channel(self.queue_capacity);
                slots
                    .queues
                    .insert(slot.clone(), SlotQueue { tx, parked: None });
                rx
            }
        };
        Some(SlotReceiver {
            slot,
            rx,
            endpoints: self.clone(),
        })
    }

    fn close_slot(&self, slot: &SlotAddress) {
        let mut slots = self.slots();
        slots.queues.remove(slot);
        slots.closed.insert(slot.clone());
    }

    /// Closes every slot's queue (their receivers then end).
    pub(crate) fn close_all(&self) {
        self.slots().queues.clear();
    }

    /// Forgets the slots `stale` picks that are not open: their parked messages are dropped
    /// (with their credit: the senders are gone or stale) and closed ones are no longer
    /// remembered.
    pub(crate) fn discard(&self, stale: impl Fn(&SlotAddress) -> bool) {
        let mut dropped = Vec::new();
        {
            let mut slots = self.slots();
            slots.closed.retain(|slot| !stale(slot));
            let parked: Vec<SlotAddress> = slots
                .queues
                .iter()
                .filter(|(slot, queue)| queue.parked.is_some() && stale(slot))
                .map(|(slot, _)| slot.clone())
                .collect();
            for slot in parked {
                if let Some(rx) = slots.queues.remove(&slot).and_then(|q| q.parked) {
                    dropped.push((slot, rx));
                }
            }
        }
        // Outside the lock: giving credit back takes the connection's.
        for (slot, mut rx) in dropped {
            while let Ok(inbound) = rx.try_recv() {
                if let Some(connection) = inbound.connection.upgrade() {
                    connection.consumed(&slot);
                }
            }
        }
    }

    /// Puts a delivery into its slot's queue, never waiting. A message for a slot that is not
    /// open yet is parked in the slot's queue until it opens (its credit held, so a sender
    /// cannot park more than its window); one for a slot that was closed is dropped.
    pub(crate) fn deliver(&self, slot: &SlotAddress, inbound: Inbound) -> Delivered {
        let tx = {
            let mut slots = self.slots();
            if slots.closed.contains(slot) {
                return Delivered::NoSlot;
            }
            match slots.queues.get(slot) {
                Some(queue) => queue.tx.clone(),
                None => {
                    let parked = slots.queues.values().filter(|q| q.parked.is_some()).count();
                    if parked >= MAX_PARKED_SLOTS {
                        return Delivered::NoSlot;
                    }
                    let (tx, rx) = mpsc::channel(self.queue_capacity);
                    slots.queues.insert(
                        slot.clone(),
                        SlotQueue {
                            tx: tx.clone(),
                            parked: Some(rx),
                        },
                    );
                    tx
                }
            }
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
