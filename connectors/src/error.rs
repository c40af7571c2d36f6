//! Connector errors, classified at their source.

use std::io;

/// An error from a source or sink, classified as retryable or fatal where it arises.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// A transient failure (a timeout, a broker or server briefly away): trying again may work.
    #[error("{context}: {message} (retryable)")]
    Retryable {
        /// What was being done.
        context: String,
        /// What went wrong.
        message: String,
    },
    /// A failure that trying again will not cure (bad configuration, missing file, bad data).
    #[error("{context}: {message}")]
    Fatal {
        /// What was being done.
        context: String,
        /// What went wrong.
        message: String,
    },
    /// A retryable failure that went on past the retry bound ([`crate::retry::RetryPolicy`]).
    #[error("{context}: gave up after {attempts} attempts in {elapsed_ms} ms: {source}")]
    RetriesExhausted {
        /// What was being done.
        context: String,
        /// Attempts made, the first included.
        attempts: u32,
        /// Time from the first attempt to giving up.
        elapsed_ms: u64,
        /// The last attempt's error.
        source: Box<ConnectorError>,
    },
    /// An error of the S3 connectors, with its cause (boxed: it keeps the client's error).
    #[error(transparent)]
    S3(Box<crate::s3::S3Error>),
}

impl ConnectorError {
    /// True when the operation may succeed if tried again.
    pub fn is_retryable(&self) -> bool {
        match self {
            ConnectorError::Retryable { .. } => true,
            ConnectorError::S3(e) => e.is_retryable(),
            _ => false,
        }
    }

    /// Classifies an I/O error: interruptions and timeouts are retryable, the rest fatal.
    pub fn io(context: impl Into<String>, err: &io::Error) -> Self {
        let context = context.into();
        let message = err.to_string();
        match err.kind() {
            io::ErrorKind::Interrupted | io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
                ConnectorError::Retryable { context, message }
            }
            _ => ConnectorError::Fatal { context, message },
        }
    }

    /// A fatal error.
    pub fn fatal(context: impl Into<String>, message: impl Into<String>) -> Self {
        ConnectorError::Fatal {
            context: context.into(),
            message: message.into(),
        }
    }
}
