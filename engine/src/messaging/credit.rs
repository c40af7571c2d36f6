//! Credit-based flow control between two processes, as pure state: the sending side's
//! [`SendWindow`] and the receiving side's [`ReceiveWindow`] of one connection.
//!
//! Credit is counted per destination slot. When a connection opens, the receiver announces its
//! window `N` (batches per slot) in its handshake, and the sender may then send `N` slot
//! messages (batches or `Done`) to every slot without asking. Each message takes one credit;
//! the receiver gives one back (a `Credit` frame) only when its local consumer takes the message
//! out of the slot's queue. A sender with no credit left for a slot waits: that wait is the
//! backpressure that crosses processes. A slow consumer therefore holds its senders to at most
//! `N` messages in flight per (connection, slot) — sent and not yet taken — and the receiver's
//! queue for the slot never holds more than `N` per connection, so it never has to refuse or
//! block the connection's reader (which would stall every other slot of the connection).
//!
//! Both sides check the other: a sender refuses a grant that would take it above `N`, a
//! receiver refuses a message that arrives without credit ([`CreditError`]); either means the
//! peer broke the protocol, and the connection is closed. Credit belongs to one connection: a
//! new connection starts both windows afresh.

use std::collections::HashMap;
use std::hash::Hash;

/// A peer broke the credit protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreditError {
    /// A message arrived for a slot that had no credit left.
    #[error("a message arrived for a slot with no credit left (window {window})")]
    Exceeded {
        /// The window of the slot.
        window: u32,
    },
    /// A grant would give a slot more credit than its window.
    #[error(
        "a grant of {granted} would give a slot {available} credits, over its window of {window}"
    )]
    OverGranted {
        /// Batches granted.
        granted: u32,
        /// Credit the slot would have.
        available: u64,
        /// The window of the slot.
        window: u32,
    },
}

/// The sending side of one connection: credit left per destination slot.
///
/// A slot never sent to has the whole window; only slots with credit in use take memory.
#[derive(Debug, Clone)]
pub struct SendWindow<S> {
    window: u32,
    /// Credit in use (messages sent and not yet granted back), per slot; absent means none.
    in_use: HashMap<S, u32>,
}

impl<S: Hash + Eq + Clone> SendWindow<S> {
    /// A sender's window of `window` messages per slot (the receiver's announced window).
    pub fn new(window: u32) -> Self {
        SendWindow {
            window,
            in_use: HashMap::new(),
        }
    }

    /// The window per slot.
    pub fn window(&self) -> u32 {
        self.window
    }

    /// Takes one credit for a message to `slot`: true if there was one (send now), false if
    /// the slot's window is used up (wait for a grant).
    pub fn try_take(&mut self, slot: &S) -> bool {
        let used = self.in_use.get(slot).copied().unwrap_or(0);
        if used >= self.window {
            return false;
        }
        self.in_use.insert(slot.clone(), used + 1);
        true
    }

    /// Gives back a credit taken by [`try_take`](Self::try_take) for a message that was not
    /// sent after all.
    pub fn untake(&mut self, slot: &S) {
        self.release(slot, 1);
    }

    /// Messages to `slot` in flight: sent and not yet granted back.
    pub fn in_flight(&self, slot: &S) -> u32 {
        self.in_use.get(slot).copied().unwrap_or(0)
    }

    /// The receiver granted `batches` more for `slot`. Refused if that would exceed the window.
    pub fn grant(&mut self, slot: &S, batches: u32) -> Result<(), CreditError> {
        let used = self.in_flight(slot);
        if batches > used {
            return Err(CreditError::OverGranted {
                granted: batches,
                available: u64::from(self.window) - u64::from(used) + u64::from(batches),
                window: self.window,
            });
        }
        self.release(slot, batches);
        Ok(())
    }

    fn release(&mut self, slot: &S, n: u32) {
        if let Some(used) = self.in_use.get_mut(slot) {
            *used = used.saturating_sub(n);
            if *used == 0 {
                self.in_use.remove(slot);
            }
        }
    }
}

/// The receiving side of one connection: per slot, messages that arrived and have not been
/// granted back yet, and grants waiting to be sent.
#[derive(Debug, Clone)]
pub struct ReceiveWindow<S> {
    window: u32,
    slots: HashMap<S, Received>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Received {
    /// Arrived and not yet granted back to the sender (queued, or taken with the grant unsent).
    outstanding: u32,
    /// Taken by the consumer, grant not yet sent.
    to_grant: u32,
}

impl<S: Hash + Eq + Clone> ReceiveWindow<S> {
    /// A receiver granting `window` messages per slot.
    pub fn new(window: u32) -> Self {
        ReceiveWindow {
            window,
            slots: HashMap::new(),
        }
    }

    /// The window per slot.
    pub fn window(&self) -> u32 {
        self.window
    }

    /// A message arrived for `slot`; refused if the sender had no credit for it.
    pub fn arrive(&mut self, slot: &S) -> Result<(), CreditError> {
        let r = self.slots.entry(slot.clone()).or_default();
        if r.outstanding >= self.window {
            return Err(CreditError::Exceeded {
                window: self.window,
            });
        }
        r.outstanding += 1;
        Ok(())
    }

    /// The local consumer took a message of `slot` out of its queue: one credit to grant back.
    /// (A slot with nothing outstanding is ignored: nothing of it is owed.)
    pub fn consume(&mut self, slot: &S) {
        if let Some(r) = self.slots.get_mut(slot) {
            if r.to_grant < r.outstanding {
                r.to_grant += 1;
            }
        }
    }

    /// True if grants wait to be sent.
    pub fn has_grants(&self) -> bool {
        self.slots.values().any(|r| r.to_grant > 0)
    }

    /// The grants to send now (one per slot, coalesced), counted as sent.
    pub fn take_grants(&mut self) -> Vec<(S, u32)> {
        let mut grants = Vec::new();
        self.slots.retain(|slot, r| {
            if r.to_grant > 0 {
                grants.push((slot.clone(), r.to_grant));
                r.outstanding -= r.to_grant;
                r.to_grant = 0;
            }
            r.outstanding > 0
        });
        grants
    }

    /// Messages of `slot` arrived and not yet granted back.
    pub fn outstanding(&self, slot: &S) -> u32 {
        self.slots.get(slot).map_or(0, |r| r.outstanding)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_sender_takes_its_window_then_waits_for_grants() {
        let mut s = SendWindow::new(2);
        assert!(s.try_take(&"a"));
        assert!(s.try_take(&"a"));
        assert!(!s.try_take(&"a"), "window used up");
        assert!(s.try_take(&"b"), "each slot has its own window");
        assert_eq!(s.in_flight(&"a"), 2);
        s.grant(&"a", 1).unwrap();
        assert!(s.try_take(&"a"));
        assert_eq!(
            s.grant(&"a", 3),
            Err(CreditError::OverGranted {
                granted: 3,
                available: 3,
                window: 2
            })
        );
        s.untake(&"b");
        assert_eq!(s.in_flight(&"b"), 0);
    }

    #[test]
    fn a_receiver_refuses_a_message_without_credit_and_grants_on_consumption() {
        let mut r = ReceiveWindow::new(2);
        r.arrive(&"a").unwrap();
        r.arrive(&"a").unwrap();
        assert_eq!(r.arrive(&"a"), Err(CreditError::Exceeded { window: 2 }));
        assert!(!r.has_grants());
        r.consume(&"a");
        assert!(r.has_grants());
        // Not yet sent: the grant still counts as outstanding.
        assert_eq!(r.arrive(&"a"), Err(CreditError::Exceeded { window: 2 }));
        assert_eq!(r.take_grants(), vec![("a", 1)]);
        r.arrive(&"a").unwrap();
        r.consume(&"a");
        r.consume(&"a");
        r.consume(&"a");
        assert_eq!(r.take_grants(), vec![("a", 2)], "no more than arrived");
        assert_eq!(r.outstanding(&"a"), 0);
        assert!(r.slots.is_empty(), "a quiet slot takes no memory");
    }

    /// One step of the simulated pair.
    #[derive(Debug, Clone)]
    enum Step {
        /// The producer tries to send to slot `0..3`.
        Send(usize),
        /// The network delivers the oldest data message.
        Deliver,
        /// The consumer of slot `0..3` takes one message.
        Consume(usize),
        /// The receiver sends its pending grants.
        Flush,
        /// The network delivers the oldest grant frame.
        DeliverGrant,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => (0..3usize).prop_map(Step::Send),
            2 => Just(Step::Deliver),
            2 => (0..3usize).prop_map(Step::Consume),
            1 => Just(Step::Flush),
            1 => Just(Step::DeliverGrant),
        ]
    }

    /// Sender, network (both ways, in order) and receiver of one connection.
    struct Pair {
        sender: SendWindow<usize>,
        receiver: ReceiveWindow<usize>,
        data: VecDeque<usize>,
        grants: VecDeque<Vec<(usize, u32)>>,
        queues: [usize; 3],
        sent: [u64; 3],
        taken: [u64; 3],
    }

    impl Pair {
        fn new(window: u32) -> Self {
            Pair {
                sender: SendWindow::new(window),
                receiver: ReceiveWindow::new(window),
                data: VecDeque::new(),
                grants: VecDeque::new(),
                queues: [0; 3],
                sent: [0; 3],
                taken: [0; 3],
            }
        }

        fn apply(&mut self, step: &Step) -> Result<(), CreditError> {
            match *step {
                Step::Send(slot) => {
                    if self.sender.try_take(&slot) {
                        self.sent[slot] += 1;
                        self.data.push_back(slot);
                    }
                }
                Step::Deliver => {
                    if let Some(slot) = self.data.pop_front() {
                        self.receiver.arrive(&slot)?;
                        self.queues[slot] += 1;
                    }
                }
                Step::Consume(slot) => {
                    if self.queues[slot] > 0 {
                        self.queues[slot] -= 1;
                        self.taken[slot] += 1;
                        self.receiver.consume(&slot);
                    }
                }
                Step::Flush => {
                    let g = self.receiver.take_grants();
                    if !g.is_empty() {
                        self.grants.push_back(g);
                    }
                }
                Step::DeliverGrant => {
                    if let Some(g) = self.grants.pop_front() {
                        for (slot, n) in g {
                            self.sender.grant(&slot, n)?;
                        }
                    }
                }
            }
            Ok(())
        }
    }

    proptest! {
        /// Whatever the interleaving, no slot ever has more messages in flight (sent, not yet
        /// taken by its consumer) than the window, the receiver's queue never holds more, and
        /// neither side ever sees the other break the protocol.
        #[test]
        fn in_flight_never_exceeds_the_window(
            window in 1u32..6,
            steps in proptest::collection::vec(step(), 0..400),
        ) {
            let mut pair = Pair::new(window);
            for s in &steps {
                pair.apply(s).unwrap();
                for slot in 0..3 {
                    let in_flight = pair.sent[slot] - pair.taken[slot];
                    prop_assert!(in_flight <= u64::from(window));
                    prop_assert!(pair.queues[slot] as u64 <= u64::from(window));
                    prop_assert!(in_flight <= u64::from(pair.sender.in_flight(&slot)));
                }
            }
        }

        /// No deadlock: from any state, a consumer that keeps consuming (with the network and
        /// the grants moving) gives the sender its whole window back, so it can always send
        /// again.
        #[test]
        fn a_consuming_receiver_always_frees_the_sender(
            window in 1u32..6,
            steps in proptest::collection::vec(step(), 0..400),
        ) {
            let mut pair = Pair::new(window);
            for s in &steps {
                pair.apply(s).unwrap();
            }
            let round = [Step::Deliver, Step::Consume(0), Step::Consume(1), Step::Consume(2),
                         Step::Flush, Step::DeliverGrant];
            // Every round moves something while anything is left; bounded, to fail rather than
            // hang if that ever stops being true.
            let mut rounds = 0;
            while !pair.data.is_empty() || !pair.grants.is_empty()
                || pair.queues.iter().any(|&q| q > 0) || pair.receiver.has_grants()
            {
                for s in &round {
                    pair.apply(s).unwrap();
                }
                rounds += 1;
                prop_assert!(rounds < 10_000, "no progress");
            }
            for slot in 0..3 {
                prop_assert_eq!(pair.sender.in_flight(&slot), 0);
                prop_assert_eq!(pair.sent[slot], pair.taken[slot]);
                prop_assert!(pair.sender.try_take(&slot));
            }
        }
    }
}
