//! [`MessagingError`]: why a connection, a send or a ping between processes failed.

use std::net::SocketAddr;
use std::time::Duration;

use super::address::{ProcessId, SlotAddress};
use super::credit::CreditError;
use super::frame::Refusal;

/// Why messaging between processes failed.
#[derive(Debug, thiserror::Error)]
pub enum MessagingError {
    /// The messenger could not listen on its address.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A TCP connection to a process could not be made.
    #[error("cannot connect to process {process} at {addr}")]
    Connect {
        /// The process dialled.
        process: ProcessId,
        /// Its address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The handshake with a process (or an unknown dialer) was refused, by either end.
    #[error("connection with {} at {addr} refused by {}", process.map_or("an unknown process".to_owned(), |p| format!("process {p}")), if *by_peer { "the peer" } else { "this process" })]
    Refused {
        /// The other process, if it said who it is.
        process: Option<ProcessId>,
        /// Its address.
        addr: SocketAddr,
        /// True if the other end refused, false if this one did.
        by_peer: bool,
        /// Why.
        #[source]
        reason: Refusal,
    },
    /// The handshake did not complete in time.
    #[error("the handshake with {addr} did not complete within {timeout:?}")]
    HandshakeTimeout {
        /// The other end.
        addr: SocketAddr,
        /// The time it had.
        timeout: Duration,
    },
    /// No address is known for a process (or it was forgotten).
    #[error("no address is known for process {0}")]
    UnknownProcess(ProcessId),
    /// A frame to send exceeds the frame limit.
    #[error("a {what} frame of {bytes} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge {
        /// The frame's kind.
        what: &'static str,
        /// Its encoded size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// A frame from a process could not be decoded.
    #[error("malformed {context} from process {process}: {message}")]
    Malformed {
        /// The sender.
        process: ProcessId,
        /// What was being read.
        context: &'static str,
        /// The decoder's message.
        message: String,
    },
    /// A process broke the credit protocol.
    #[error("process {process} broke the credit protocol for slot {slot}")]
    Credit {
        /// The process.
        process: ProcessId,
        /// The slot.
        slot: SlotAddress,
        /// How.
        #[source]
        source: CreditError,
    },
    /// The connection with a process closed (an I/O error or its end of stream).
    #[error("the connection with process {process} closed")]
    Closed {
        /// The process.
        process: ProcessId,
        /// The I/O error, if it was one.
        #[source]
        source: Option<std::io::Error>,
    },
    /// A slot was opened twice in one messenger.
    #[error("slot {0} is already open in this process")]
    SlotAlreadyOpen(SlotAddress),
    /// The messenger has been shut down.
    #[error("the messenger is shut down")]
    Shutdown,
}

impl MessagingError {
    /// True if trying again later may succeed (the peer may come up, the other connection
    /// may be made); false for refusals that only a change of configuration fixes.
    pub fn is_retryable(&self) -> bool {
        match self {
            MessagingError::Connect { .. }
            | MessagingError::HandshakeTimeout { .. }
            | MessagingError::Closed { .. } => true,
            MessagingError::Refused { reason, .. } => {
                matches!(reason, Refusal::Duplicate)
            }
            _ => false,
        }
    }
}
