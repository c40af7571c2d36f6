//! Sources and sinks for Sardonyx, with checkpointable positions.
//!
//! This crate knows nothing of the engine: a [`Source`] yields raw [`Record`]s (bytes) with a
//! [`Position`] per partition that can be committed and resumed from; a [`Sink`] writes batches
//! of encoded records and says when they are durable. Every error is classified at its source
//! as retryable or fatal ([`ConnectorError`]).
//!
//! Built in: JSON-lines files ([`jsonl::JsonLinesSource`], [`jsonl::JsonLinesSink`]).

pub mod error;
pub mod jsonl;
pub mod source;

pub use error::ConnectorError;
pub use source::{Position, Record, Sink, Source, SourceBatch};
