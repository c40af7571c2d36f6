//! Sources and sinks for Sardonyx, with checkpointable positions.
//!
//! This crate knows nothing of the engine: a [`Source`] yields raw [`Record`]s (bytes) with a
//! [`Position`] per partition that can be committed and resumed from; a [`Sink`] writes batches
//! of encoded records and says when they are durable. Every error is classified at its source
//! as retryable or fatal ([`ConnectorError`]); [`retry`] retries the retryable ones with backoff,
//! up to a bound.
//!
//! Connectors (each with a typed params struct read from the task's `params` JSON and a
//! `validate` function that reports every problem as `(field, message)`):
//! - JSON-lines files ([`jsonl::JsonLinesSource`], [`jsonl::JsonLinesSink`]);
//! - Kafka ([`kafka::KafkaSource`], [`kafka::KafkaSink`]), plugin name `kafka`;
//! - PostgreSQL upserts ([`postgres::PostgresSink`]), plugin name `postgres`;
//! - HTTP ingestion ([`http::HttpSource`]), plugin name `http`;
//! - object storage ([`s3::S3Source`], [`s3::S3Sink`]), plugin name `sardonyx/s3`.
//!
//! [`plugins`] maps the plugin names to their checks and constructors.
//!
//! Sources are polled, and the PostgreSQL sink is written, from a blocking thread (not from
//! inside an async runtime): connectors that need one run their own.

pub mod error;
pub mod http;
pub mod jsonl;
pub mod kafka;
pub mod line_reader;
pub mod params;
pub mod plugins;
pub mod postgres;
pub mod retry;
pub mod s3;
pub mod source;
pub mod stripe;

pub use error::ConnectorError;
pub use params::Problems;
pub use retry::RetryPolicy;
pub use source::{Position, Positions, Record, Sink, Source, SourceBatch};
