//! The source and sink traits and the records they carry.

use std::time::Duration;

use crate::ConnectorError;

/// Where a source stands in one partition: resuming from it reads the next record after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct Position {
    /// The partition (0 for single-partition sources such as a file).
    pub partition: u32,
    /// The resume point within the partition (a byte offset for files, an offset for Kafka).
    pub offset: u64,
}

/// One raw record read from a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The position just after this record: committing it means this record is done.
    pub position: Position,
    /// The 1-based number of this record in its partition (the line number for files).
    pub index: u64,
    /// The record's bytes (one JSON document for the built-in sources).
    pub payload: Vec<u8>,
}

/// What one poll of a source produced.
#[derive(Debug)]
pub enum SourceBatch {
    /// Some records (never empty).
    Records(Vec<Record>),
    /// Nothing arrived within the timeout; the source is not finished.
    Idle,
    /// The source is exhausted (finite sources only).
    Done,
}

/// A source of raw records with resumable positions. Sources are polled from a blocking thread.
pub trait Source: Send {
    /// Reads up to `max` records, waiting at most `timeout` for the first.
    fn poll_batch(&mut self, max: usize, timeout: Duration) -> Result<SourceBatch, ConnectorError>;

    /// Moves the source so that it next reads the record after `position`.
    fn seek(&mut self, position: Position) -> Result<(), ConnectorError>;

    /// Records that everything up to `position` is fully processed (an external system may store
    /// it; a file source only remembers it). The default does nothing.
    fn commit(&mut self, position: Position) -> Result<(), ConnectorError> {
        let _ = position;
        Ok(())
    }
}

/// A sink for encoded records.
pub trait Sink: Send {
    /// Writes a batch of records.
    fn write_batch(&mut self, records: &[Vec<u8>]) -> Result<(), ConnectorError>;

    /// Makes everything written so far durable.
    fn flush(&mut self) -> Result<(), ConnectorError>;
}
