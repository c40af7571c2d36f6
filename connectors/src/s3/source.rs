//! The `sardonyx/s3` input: JSON-lines objects under a bucket's prefix (plain, `.gz` or
//! `.zst`), read in key order, split among the input's peers, with resumable positions.
//!
//! Each peer reads the objects that fall to it ([`super::position::peer_of`]) one after the
//! other in key order; a record's position is the object's ordinal and the byte offset just
//! after its line ([`super::position`]), so a resumed peer opens the object it stood in and
//! skips what it had read (in the decompressed body), not the objects before it. Keys with a
//! segment starting with `_` or `.` (such as the output's `_staging/`) are skipped. With
//! `watch`, the prefix is listed again every `watch_interval` and new objects that sort after
//! the last one known are read; one that appears with a lower key would break the order the
//! positions count in, so it is skipped with a warning. Without `watch` the input finishes
//! once the objects listed at its start are read.

use std::collections::HashSet;
use std::io::{BufReader, Read};
use std::time::{Duration, Instant};

use super::error::S3Error;
use super::params::S3SourceParams;
use super::position::{self, Compression, ObjectPosition};
use super::store::{ObjectInfo, S3Store};
use crate::jsonl::TOO_LONG_PREVIEW_BYTES;
use crate::line_reader::LineReader;
use crate::source::RecordFault;
use crate::{ConnectorError, Position, Positions, Record, Source, SourceBatch};

/// The object being read.
struct OpenObject {
    lines: LineReader<BufReader<Box<dyn Read + Send>>>,
    /// Lines read so far (for record numbers).
    line: u64,
}

/// One input peer's share of the objects under a prefix.
pub struct S3Source {
    store: S3Store,
    params: S3SourceParams,
    peer: usize,
    n_peers: usize,
    /// This peer's objects, in key order: an object's ordinal is its index here.
    objects: Vec<ObjectInfo>,
    /// Every key known, this peer's or not, read or skipped (`watch`: new objects are the rest).
    known: HashSet<String>,
    /// Where reading goes on.
    next: ObjectPosition,
    open: Option<OpenObject>,
    listed_at: Instant,
    /// Transfer failures in a row (reset by every line read).
    failures: u32,
}

impl S3Source {
    /// Opens peer `peer` (of `n_peers`) of the input, resuming from its position in
    /// `positions` (the task's positions; each peer takes its own partition's). Lists the
    /// prefix: a missing bucket or refused credentials fail here, with the parameter named.
    pub fn open(
        params: S3SourceParams,
        peer: usize,
        n_peers: usize,
        positions: &Positions,
    ) -> Result<Self, ConnectorError> {
        let store = S3Store::open(&params.location)?;
        Self::open_with_store(store, params, peer, n_peers, positions)
    }

    /// As [`S3Source::open`], over a store already connected (for example with credentials
    /// from elsewhere than the process's environment).
    pub fn open_with_store(
        store: S3Store,
        params: S3SourceParams,
        peer: usize,
        n_peers: usize,
        positions: &Positions,
    ) -> Result<Self, ConnectorError> {
        let n_peers = n_peers.max(1);
        let mut source = S3Source {
            store,
            params,
            peer,
            n_peers,
            objects: Vec::new(),
            known: HashSet::new(),
            next: ObjectPosition {
                ordinal: 0,
                byte: 0,
            },
            open: None,
            listed_at: Instant::now(),
            failures: 0,
        };
        source.refresh()?;
        source.seek_all(positions)?;
        Ok(source)
    }

    /// This peer's partition id.
    pub fn partition(&self) -> u32 {
        position::partition_id(self.peer, self.n_peers)
    }

    /// The objects this peer reads (so far), in order.
    pub fn objects(&self) -> &[ObjectInfo] {
        &self.objects
    }

    fn resume_error(&self, reason: String) -> ConnectorError {
        S3Error::Resume {
            bucket: self.params.location.bucket.clone(),
            prefix: self.params.location.prefix.clone(),
            reason,
        }
        .into()
    }

    /// Lists the prefix and takes in this peer's new objects (see the module docs).
    fn refresh(&mut self) -> Result<(), ConnectorError> {
        let prefix = self.params.location.prefix.clone();
        let listed = self.store.list(&prefix)?;
        self.listed_at = Instant::now();
        for object in listed {
            if position::is_hidden(&prefix, &object.key) || !self.known.insert(object.key.clone()) {
                continue;
            }
            if position::peer_of(&object.key, self.n_peers) != self.peer {
                continue;
            }
            match self.objects.last() {
                Some(last) if last.key > object.key => tracing::warn!(
                    key = %object.key,
                    after = %last.key,
                    "a new S3 object sorts before one already read: skipped (positions count \
                     objects in key order)"
                ),
                _ => self.objects.push(object),
            }
        }
        Ok(())
    }

    /// Opens object `self.next.ordinal` and skips to `self.next.byte`.
    fn open_next(&mut self) -> Result<(), ConnectorError> {
        let object = &self.objects[self.next.ordinal as usize];
        let compression = Compression::of_key(&object.key);
        let key = object.key.clone();
        if compression == Compression::None && self.next.byte >= object.size {
            // Read to its end already: nothing to fetch.
            if self.next.byte > object.size {
                return Err(self.resume_error(format!(
                    "the position is byte {} of {key:?}, which has {} bytes: was it replaced?",
                    self.next.byte, object.size
                )));
            }
            self.next = ObjectPosition {
                ordinal: self.next.ordinal + 1,
                byte: 0,
            };
            return Ok(());
        }
        let body_error = |retryable, source| S3Error::Body {
            bucket: self.params.location.bucket.clone(),
            key: key.clone(),
            retryable,
            source,
        };
        let body = self.store.get(&key)?;
        let body: Box<dyn Read + Send> = match compression {
            Compression::None => Box::new(body),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(body)),
            Compression::Zstd => {
                Box::new(zstd::stream::read::Decoder::new(body).map_err(|e| body_error(false, e))?)
            }
        };
        let mut lines = LineReader::new(
            BufReader::with_capacity(1 << 16, body),
            self.params.max_line_bytes,
        );
        let line = match lines.skip(self.next.byte) {
            Ok(Some(line)) => line,
            Ok(None) => {
                return Err(self.resume_error(format!(
                    "the position is byte {} of {key:?}, which is shorter: was it replaced?",
                    self.next.byte
                )))
            }
            Err(e) => return Err(self.read_error(&key, e)),
        };
        self.open = Some(OpenObject { lines, line });
        Ok(())
    }

    /// Classifies a failure while reading object `key`: the client's transfer errors are
    /// retryable, bad data (not gzip, not zstd) is not.
    fn read_error(&self, key: &str, e: std::io::Error) -> ConnectorError {
        let transfer = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<object_store::Error>())
            .map(super::error::is_transient);
        S3Error::Body {
            bucket: self.params.location.bucket.clone(),
            key: key.to_owned(),
            retryable: transfer.unwrap_or(false),
            source: e,
        }
        .into()
    }

    /// Sleeps before trying a failed transfer again, or gives the error up once the retry
    /// policy's bound is reached.
    fn backoff(&mut self, err: ConnectorError) -> Result<(), ConnectorError> {
        let retry = self.params.location.retry;
        if !err.is_retryable() || self.failures >= retry.max_retries {
            return Err(err);
        }
        let delay = retry
            .first_delay_ms
            .saturating_mul(1 << self.failures.min(20))
            .min(retry.max_delay_ms);
        self.failures += 1;
        tracing::warn!(error = %err, retry = self.failures, delay_ms = delay, "reading S3 again");
        std::thread::sleep(Duration::from_millis(delay));
        Ok(())
    }

    /// The next record of the open object, or `None` at its end (then the next object is due).
    fn next_record(&mut self) -> Result<Option<Record>, ConnectorError> {
        let open = self.open.as_mut().expect("an object is open");
        let key = &self.objects[self.next.ordinal as usize].key;
        let line = match open.lines.next_line() {
            Ok(Some(line)) => line,
            Ok(None) => {
                self.open = None;
                self.next = ObjectPosition {
                    ordinal: self.next.ordinal + 1,
                    byte: 0,
                };
                return Ok(None);
            }
            Err(e) => {
                let err = self.read_error(key, e);
                // Read again from the last whole line.
                self.open = None;
                return Err(err);
            }
        };
        self.failures = 0;
        open.line += 1;
        self.next.byte += line.consumed;
        let key = key.clone();
        let Some(offset) = self.next.encode() else {
            let reason = format!(
                "object {key:?} is larger than 1 TiB, or the peer has more than {} objects",
                position::MAX_ORDINAL
            );
            return Err(self.resume_error(reason));
        };
        let open = self.open.as_mut().expect("an object is open");
        let position = Position {
            partition: position::partition_id(self.peer, self.n_peers),
            offset,
        };
        let text = open.lines.text();
        let max = open.lines.max_line_bytes();
        Ok(Some(if text.len() > max {
            Record {
                position,
                index: open.line,
                payload: text[..TOO_LONG_PREVIEW_BYTES.min(text.len())].to_vec(),
                fault: Some(RecordFault::LineTooLong {
                    length: line.length,
                    limit: max,
                }),
            }
        } else {
            Record {
                position,
                index: open.line,
                payload: text.to_vec(),
                fault: None,
            }
        }))
    }
}

impl Source for S3Source {
    fn poll_batch(&mut self, max: usize, timeout: Duration) -> Result<SourceBatch, ConnectorError> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::with_capacity(max.min(4096));
        while out.len() < max {
            if self.open.is_none() {
                if (self.next.ordinal as usize) < self.objects.len() {
                    if let Err(e) = self.open_next() {
                        self.backoff(e)?;
                    }
                    continue;
                }
                if !self.params.watch || !out.is_empty() {
                    break;
                }
                // Watching: list again when due, waiting for it at most until the deadline.
                let due = self.listed_at + self.params.watch_interval;
                let now = Instant::now();
                if now < due {
                    if deadline <= now {
                        break;
                    }
                    std::thread::sleep(due.min(deadline) - now);
                    if Instant::now() < due {
                        break;
                    }
                }
                if let Err(e) = self.refresh() {
                    self.backoff(e)?;
                }
                continue;
            }
            match self.next_record() {
                Ok(Some(record)) => {
                    // Blank lines are counted (record numbers are line numbers) but not handed
                    // over; their bytes are covered by the next record's position.
                    if record.fault.is_some() || !record.payload.iter().all(u8::is_ascii_whitespace)
                    {
                        out.push(record);
                    }
                }
                Ok(None) => {}
                Err(e) => self.backoff(e)?,
            }
        }
        Ok(if !out.is_empty() {
            SourceBatch::Records(out)
        } else if !self.params.watch && self.next.ordinal as usize >= self.objects.len() {
            SourceBatch::Done
        } else {
            SourceBatch::Idle
        })
    }

    fn seek(&mut self, position: Position) -> Result<(), ConnectorError> {
        let (peer, n_peers) = position::partition_peer(position.partition);
        if n_peers != self.n_peers {
            return Err(self.resume_error(format!(
                "the position was committed by {n_peers} input peers, and the task now has {}: \
                 objects are split among peers by their number, so it cannot change (start \
                 over with --fresh)",
                self.n_peers
            )));
        }
        if peer != self.peer {
            return Err(self.resume_error(format!(
                "partition {} belongs to peer {peer}, not {}",
                position.partition, self.peer
            )));
        }
        let at = ObjectPosition::decode(position.offset);
        if at.ordinal as usize > self.objects.len()
            || (at.ordinal as usize == self.objects.len() && at.byte > 0)
        {
            return Err(self.resume_error(format!(
                "the position is in object number {} of peer {peer}, which has only {}: \
                 objects were removed",
                at.ordinal + 1,
                self.objects.len()
            )));
        }
        self.next = at;
        self.open = None;
        Ok(())
    }

    fn seek_all(&mut self, positions: &Positions) -> Result<(), ConnectorError> {
        for p in positions.iter() {
            let (peer, n_peers) = position::partition_peer(p.partition);
            // Another peer's position is that peer's business, unless it shows another count.
            if peer == self.peer || n_peers != self.n_peers {
                self.seek(p)?;
            }
        }
        Ok(())
    }

    fn partitions(&self) -> Vec<u32> {
        vec![self.partition()]
    }
}
