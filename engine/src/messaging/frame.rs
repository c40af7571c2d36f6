//! The wire format of messaging between processes: what travels in each length-delimited
//! frame, and its bincode encoding.
//!
//! Every frame is a `u32` big-endian length and a bincode body (tokio-util's
//! `LengthDelimitedCodec`; the length is checked against a limit before anything is allocated).
//! A connection starts with `Handshake` frames of at most [`HANDSHAKE_FRAME_BYTES`] (see
//! `handshake`), and only once both sides are satisfied carries `Frame`s, of at most the
//! messenger's `max_frame_bytes`:
//! - [`Batch`]: segments for one task slot, with the sender's identity and [`Mark`] and the
//!   [`AckEdge`]s of the ack trees they belong to; takes one credit of the slot;
//! - [`Done`]: a sender has finished its stream to a slot; takes one credit too, so it stays in
//!   order behind the stream's batches;
//! - `Credit`: the receiver gives credit back for a slot (see `credit`);
//! - `Acks`: ack-tree updates (root, XOR) for trees whose root this receiver holds;
//! - `Ping`/`Pong`: heartbeats of the failure detector, matched by sequence number.
//!
//! Decoding goes through [`sardonyx_state_log::decode_bounded`] (no allocation sized by a
//! declared length beyond what the frame holds) and the value model's depth bound (no stack
//! overflow from nested segments); a body with bytes left over is refused too.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::ack_tree::AckEdge;
use super::address::{ProcessId, Sender, SlotAddress};
use crate::mark::Mark;
use crate::segment::Segment;
use sardonyx_state_log::Nonce;

/// Version of the messaging protocol (handshake and frames); both ends must speak the same.
pub const PROTOCOL_VERSION: u32 = 2;

/// Largest handshake frame (they are under 150 bytes): before a peer is authenticated, it can
/// make a process read no more than this.
pub const HANDSHAKE_FRAME_BYTES: usize = 256;

/// Default largest frame after the handshake: a batch of 1000 segments of a few hundred bytes
/// is well under 1 MiB; 64 MiB leaves room for wide segments without letting a peer make a
/// process hold gigabytes.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 << 20;

/// Segments for one task slot, as one process sends them to another.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// The destination slot.
    pub to: SlotAddress,
    /// The slot that sent it (same job).
    pub from: Sender,
    /// The segments, in order.
    pub segments: Vec<Segment>,
    /// The sender's watermark and idleness.
    pub mark: Mark,
    /// The ack trees the batch belongs to: per tree, its root and this batch's id.
    pub acks: Vec<AckEdge>,
    /// Its number among the batches its sender sent to the slot (0, 1, …, in sending order):
    /// a receiver that sees a number it did not expect knows that earlier ones were lost, and
    /// applies nothing more from that sender (what it applied after a gap would be ahead of
    /// the replay).
    pub seq: u64,
}

/// A sender has finished its stream to a slot: nothing more comes from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    /// The destination slot.
    pub to: SlotAddress,
    /// The slot that finished.
    pub from: Sender,
    /// How many batches it sent to the slot before this (in this run): a receiver that took
    /// fewer knows that some were lost (with a connection that dropped), and does not count
    /// the sender as finished — the lost batches' ack trees expire and the job is restarted.
    pub batches: u64,
}

/// One ack-tree update: XOR `xor` into the tree of `root`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckUpdate {
    /// The tree's root.
    pub root: u64,
    /// The XOR of the sender's edges of that tree.
    pub xor: u64,
}

/// Most ack updates in one `Acks` frame (16–20 bytes each: far under any frame limit).
pub(crate) const ACKS_PER_FRAME: usize = 4096;

/// A frame after the handshake.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Frame {
    Batch(Batch),
    Done(Done),
    Credit { slot: SlotAddress, batches: u32 },
    Acks(Vec<AckUpdate>),
    Ping { seq: u64 },
    Pong { seq: u64 },
}

impl Frame {
    /// The frame's name, for messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Frame::Batch(_) => "Batch",
            Frame::Done(_) => "Done",
            Frame::Credit { .. } => "Credit",
            Frame::Acks(_) => "Acks",
            Frame::Ping { .. } => "Ping",
            Frame::Pong { .. } => "Pong",
        }
    }
}

/// An HMAC-SHA256 proof.
pub(crate) type Proof = [u8; 32];

/// The frames of the handshake (see `handshake`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Handshake {
    /// The dialer's opening.
    Hello {
        /// The dialer's [`PROTOCOL_VERSION`].
        version: u32,
        /// The dialer.
        process: ProcessId,
        /// The dialer holds a cluster secret (and will prove it).
        has_secret: bool,
        /// The dialer's challenge.
        nonce: Nonce,
        /// The dialer's credit window per slot (what it grants as a receiver).
        window: u32,
    },
    /// The listener's answer: who it is, its challenge and its proof over both nonces.
    Challenge {
        version: u32,
        process: ProcessId,
        nonce: Nonce,
        /// `None` when neither side has a secret.
        proof: Option<Proof>,
        window: u32,
    },
    /// The dialer's proof (`None` when neither side has a secret).
    Proof { proof: Option<Proof> },
    /// The listener admits the connection: frames may follow.
    Accepted,
    /// The connection is refused, and why; the sender closes it.
    Refused(Refusal),
}

impl Handshake {
    /// The frame's name, for messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Handshake::Hello { .. } => "Hello",
            Handshake::Challenge { .. } => "Challenge",
            Handshake::Proof { .. } => "Proof",
            Handshake::Accepted => "Accepted",
            Handshake::Refused(_) => "Refused",
        }
    }
}

/// Why a connection between two processes was refused (by either end).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum Refusal {
    /// The two ends speak different versions of the protocol.
    #[error(
        "the dialer speaks messaging protocol version {dialer} and the listener version {listener}"
    )]
    Version {
        /// The dialer's version.
        dialer: u32,
        /// The listener's.
        listener: u32,
    },
    /// The listener requires the cluster secret and the dialer has none.
    #[error("the listening process requires the cluster secret and the dialer has none (give --secret-file)")]
    SecretRequired,
    /// The dialer has a secret and the listener has none, so it cannot prove it is a member.
    #[error(
        "the listening process has no cluster secret, so it cannot prove it belongs to the cluster"
    )]
    ListenerHasNoSecret,
    /// The listener refused the dialer's proof: they hold different secrets.
    #[error(
        "the listener refused the dialer's proof: the two processes hold different cluster secrets"
    )]
    WrongSecret,
    /// The dialer refused the listener's proof: it holds another secret or is an impostor.
    #[error(
        "the listener's proof is wrong: it holds a different cluster secret or is an impostor"
    )]
    BadListenerProof,
    /// The address dialled answered as another process.
    #[error("dialled process {expected} but process {found} answered")]
    WrongProcess {
        /// The process the dialer meant.
        expected: ProcessId,
        /// The process that answered.
        found: ProcessId,
    },
    /// A process dialled itself.
    #[error("a process cannot connect to itself (process {0})")]
    SameProcess(ProcessId),
    /// The two processes have a connection already, or the lower-numbered one is dialling: the
    /// dialer uses that one instead.
    #[error("the two processes have, or are making, another connection (the one the lower process id dials is kept)")]
    Duplicate,
    /// A frame declared a length over the limit; it was not read.
    #[error("a frame declared more than the limit of {limit} bytes")]
    FrameTooLarge {
        /// The limit in force.
        limit: usize,
    },
    /// The other end broke the protocol (or is not a Sardonyx process).
    #[error("messaging protocol error: {0}")]
    Protocol(String),
}

/// Encodes a value with bincode (standard configuration).
pub(crate) fn encode<T: Serialize>(value: &T) -> Bytes {
    // Encoding our own types into memory cannot fail (no maps with non-string keys matter to
    // bincode, no I/O): a failure is a bug worth its panic.
    Bytes::from(
        bincode::serde::encode_to_vec(value, bincode::config::standard())
            .expect("encoding a frame into memory cannot fail"),
    )
}

/// Decodes a frame body from untrusted bytes; the whole body must be one value.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    match sardonyx_state_log::decode_bounded::<T>(bytes) {
        Ok((value, read)) if read == bytes.len() => Ok(value),
        Ok((_, read)) => Err(format!(
            "{} bytes left over after the frame's value",
            bytes.len() - read
        )),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::Value;

    fn batch() -> Batch {
        let mut s = Segment::new();
        s.insert("vote_id", Value::from(7));
        s.insert("candidate", Value::from("ada"));
        Batch {
            to: SlotAddress::new("votes", "count", 2),
            from: Sender::new("read", 0),
            segments: vec![s.clone(), s],
            mark: Mark {
                watermark: Some(1_700_000_000_000),
                idle: false,
            },
            acks: vec![AckEdge {
                origin: ProcessId(1),
                root: 9,
                id: 11,
            }],
            seq: 4,
        }
    }

    #[test]
    fn frames_round_trip() {
        for f in [
            Frame::Batch(batch()),
            Frame::Done(Done {
                to: SlotAddress::new("j", "t", 0),
                from: Sender::new("u", 1),
                batches: 12,
            }),
            Frame::Credit {
                slot: SlotAddress::new("j", "t", 0),
                batches: 3,
            },
            Frame::Acks(vec![AckUpdate { root: 1, xor: 2 }]),
            Frame::Ping { seq: 5 },
            Frame::Pong { seq: 5 },
        ] {
            assert_eq!(decode::<Frame>(&encode(&f)).unwrap(), f, "{}", f.kind());
        }
    }

    /// Bytes from outside give an error, never a panic or a large allocation: trailing bytes,
    /// a truncated body, and a declared length far beyond the body.
    #[test]
    fn malformed_bodies_are_refused() {
        let good = encode(&Frame::Ping { seq: 1 });
        let mut long = good.to_vec();
        long.push(0);
        assert_eq!(
            decode::<Frame>(&long).unwrap_err(),
            "1 bytes left over after the frame's value"
        );
        let b = encode(&Frame::Batch(batch()));
        assert!(decode::<Frame>(&b[..b.len() - 3]).is_err());
        // Variant 3 (Acks) declaring 2⁶⁰ updates in a few bytes.
        let lying = [3u8, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0x10];
        assert!(decode::<Frame>(&lying).is_err());
        // A handshake body is not a frame and vice versa where the shapes differ.
        assert!(decode::<Handshake>(&encode(&Frame::Batch(batch()))).is_err());
    }

    #[test]
    fn handshake_frames_fit_their_limit() {
        let hello = Handshake::Challenge {
            version: u32::MAX,
            process: ProcessId(u64::MAX),
            nonce: [0xFF; 32],
            proof: Some([0xFF; 32]),
            window: u32::MAX,
        };
        assert!(encode(&hello).len() <= HANDSHAKE_FRAME_BYTES);
        let refused = Handshake::Refused(Refusal::WrongProcess {
            expected: ProcessId(u64::MAX),
            found: ProcessId(u64::MAX),
        });
        assert!(encode(&refused).len() <= HANDSHAKE_FRAME_BYTES);
    }
}
