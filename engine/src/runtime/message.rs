//! What peers send each other ([`Msg`]): batches with the sender's event-time mark ([`Mark`])
//! and the acks they derive from, and `Done`.

pub use crate::mark::Mark;

use crate::segment::Segment;

use super::ack;

/// A message between peers.
#[derive(Debug)]
pub(super) enum Msg {
    /// Segments, the sender's watermark and idleness, and the acks of the input batches they
    /// derive from.
    Batch {
        sender: usize,
        segments: Vec<Segment>,
        mark: Mark,
        acks: ack::HeldAcks,
    },
    /// The sender has finished and will send nothing more.
    Done { sender: usize },
}
