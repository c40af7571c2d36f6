//! The source and sink traits and the records they carry.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::ConnectorError;

/// Where a source stands in one partition: resuming from it reads the next record after it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Position {
    /// The partition (0 for single-partition sources such as a file).
    pub partition: u32,
    /// The resume point within the partition (a byte offset for files, an offset for Kafka).
    pub offset: u64,
}

/// The resume point of every partition of a source: what the engine checkpoints.
///
/// Build it by [`Positions::advance`]-ing over every record a batch covered (positions only move
/// forward), store it with the batch, and hand it to [`Source::seek_all`] (or a connector's
/// constructor) to resume.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Positions(BTreeMap<u32, u64>);

impl Positions {
    /// No position for any partition.
    pub const fn new() -> Self {
        Positions(BTreeMap::new())
    }

    /// Moves `position.partition` forward to `position.offset` (never backward).
    pub fn advance(&mut self, position: Position) {
        let offset = self.0.entry(position.partition).or_insert(position.offset);
        *offset = (*offset).max(position.offset);
    }

    /// The resume offset of `partition`, if known.
    pub fn get(&self, partition: u32) -> Option<u64> {
        self.0.get(&partition).copied()
    }

    /// Every known position, by partition.
    pub fn iter(&self) -> impl Iterator<Item = Position> + '_ {
        self.0
            .iter()
            .map(|(&partition, &offset)| Position { partition, offset })
    }

    /// True when no partition has a position.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<Position> for Positions {
    fn from_iter<I: IntoIterator<Item = Position>>(iter: I) -> Self {
        let mut positions = Positions::new();
        for p in iter {
            positions.advance(p);
        }
        positions
    }
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
    /// Set when the source could not hand over the record whole (then `payload` holds only
    /// its start): the record goes to the error output with this reason, and reading goes on.
    pub fault: Option<RecordFault>,
}

/// Why a source could not hand over a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordFault {
    /// A line longer than the source's `max_line_bytes` (DESIGN §10): it was skipped without
    /// being held in memory.
    #[error("the line is {length} bytes long, more than max_line_bytes ({limit}); it was skipped")]
    LineTooLong {
        /// The line's length in bytes up to its newline.
        length: u64,
        /// The limit it broke.
        limit: usize,
    },
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

    /// Every partition this source reads, including those that have not produced a record yet:
    /// the engine keeps one watermark per partition and registers each of these before the first
    /// batch, so a partition holds the input's watermark back from the start (until it is idle
    /// for the task's `idle_timeout`). A partition left out here could let the watermark pass
    /// its first records, which would then be late. The default is `[0]` (single-partition
    /// sources).
    fn partitions(&self) -> Vec<u32> {
        vec![0]
    }

    /// Seeks every partition in `positions`; partitions without a position are left alone.
    fn seek_all(&mut self, positions: &Positions) -> Result<(), ConnectorError> {
        positions.iter().try_for_each(|p| self.seek(p))
    }

    /// Commits every partition in `positions`.
    fn commit_all(&mut self, positions: &Positions) -> Result<(), ConnectorError> {
        positions.iter().try_for_each(|p| self.commit(p))
    }

    /// Takes back the records of a batch the engine is done with, so that a source may reuse
    /// their buffers for the next batch instead of allocating one per record. The default drops
    /// them.
    fn recycle(&mut self, records: Vec<Record>) {
        drop(records);
    }
}

/// A sink for encoded records.
pub trait Sink: Send {
    /// Writes a batch of records.
    fn write_batch(&mut self, records: &[Vec<u8>]) -> Result<(), ConnectorError>;

    /// Makes everything written so far durable.
    fn flush(&mut self) -> Result<(), ConnectorError>;
}
