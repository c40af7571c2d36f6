//! Messaging between processes (DESIGN §7, issue 20 item 6): how peer processes of a cluster
//! send each other batches for task slots, with backpressure that crosses processes and ack
//! trees that span them.
//!
//! One TCP connection per pair of processes carries length-delimited frames of bincode
//! ([`frame`]): an authenticated, versioned handshake first (`handshake`: mutual HMAC with
//! the cluster secret, before any other frame is read), then batches, `Done`s, credit, acks and
//! pings. Whichever process dials first makes the connection; simultaneous dials end as one
//! (`link`). Flow control is credit per (connection, destination slot) ([`credit`]): a
//! receiver grants a few batches per slot and grants more only as its consumer takes them, so
//! a slow consumer holds its senders back. Input batches are tracked with Storm-style ack trees
//! ([`ack_tree`]) whose XOR updates travel back to the process that read the input.
//!
//! The pure parts — [`credit`], [`ack_tree`], `link` — are state machines tested alone; the
//! I/O is in `connection` (one connection's loops) and [`messenger`] (the process's
//! listener, connections, slot queues and table of trees).
//!
//! A sketch (two processes in one test; in a cluster each runs its own messenger):
//!
//! ```no_run
//! # async fn demo() -> Result<(), sardonyx::messaging::MessagingError> {
//! use sardonyx::messaging::*;
//! let a = Messenger::bind(MessengerConfig::new(ProcessId(1), "127.0.0.1:0".parse().unwrap())).await?;
//! let b = Messenger::bind(MessengerConfig::new(ProcessId(2), "127.0.0.1:0".parse().unwrap())).await?;
//! a.set_address(ProcessId(2), b.local_addr());
//! let slot = SlotAddress::new("votes", "count", 0);
//! let mut inbox = b.open_slot(slot.clone())?;
//! a.send_batch(ProcessId(2), Batch {
//!     to: slot,
//!     from: Sender::new("read", 0),
//!     segments: vec![],
//!     mark: Default::default(),
//!     acks: vec![],
//!     seq: 0,
//! }).await?;
//! let delivery = inbox.recv().await;
//! # Ok(()) }
//! ```

pub mod ack_tree;
mod address;
mod connection;
pub mod credit;
mod drop_point;
mod endpoints;
mod error;
pub mod frame;
mod handshake;
mod link;
pub mod messenger;

pub use ack_tree::{random_id, AckEdge, AckOutcome, AckTreeError, AckTrees};
pub use address::{ProcessId, Sender, SlotAddress};
pub use drop_point::DROP_INCOMING_BATCH;
pub use endpoints::{AckTable, Delivery, SlotReceiver};
pub use error::MessagingError;
pub use frame::{AckUpdate, Batch, Done, Refusal, PROTOCOL_VERSION};
pub use messenger::{LinkEvent, Messenger, MessengerConfig, MessengerStats};

#[cfg(test)]
mod tests;
