//! The `sardonyx/s3` output: records as JSON-lines objects, rolled by size and age, each batch
//! durable before it is acknowledged, objects visible only complete, and names that a replay
//! after a crash reuses (the layout is in [`super::layout`]).
//!
//! [`Sink::flush`] writes the batch's records as a staged part of the current object (one PUT:
//! durable when it returns) and keeps them in memory; once the object holds `max_object_bytes`
//! or its first record is `max_object_age` old, it is rolled: written whole under its final
//! name (multipart above `part_bytes`) and its parts deleted. A sink opened on a resumed job
//! first rolls what a killed run left staged, each object under the name it would have had, and
//! numbers its next object after the last; on a fresh job it deletes this peer's objects and
//! parts first, as a file output truncates its file. The current object is rolled when the
//! sink is dropped (the end of the job). The age is checked as batches arrive: an output that
//! receives nothing keeps its object open until the next batch or the end.

use std::collections::BTreeMap;
use std::time::Instant;

use bytes::Bytes;

use super::error::S3Error;
use super::layout;
use super::params::S3SinkParams;
use super::store::S3Store;
use crate::{ConnectorError, Sink};

/// One output peer's writer of objects.
pub struct S3Sink {
    store: S3Store,
    params: S3SinkParams,
    peer: usize,
    /// The number of the object being filled.
    seq: u64,
    /// The number of its next staged part.
    part: u32,
    /// Its bytes, every one of them already staged.
    object: Vec<u8>,
    /// When its first bytes were staged.
    started: Option<Instant>,
    /// Records written since the last flush.
    pending: Vec<u8>,
}

impl S3Sink {
    /// Opens output peer `peer`: on a resumed job (`resuming`) rolls what an earlier run left
    /// staged, else deletes the peer's earlier objects (see the module docs). A missing bucket
    /// or refused credentials fail here, with the parameter named.
    pub fn open(params: S3SinkParams, peer: usize, resuming: bool) -> Result<Self, ConnectorError> {
        let store = S3Store::open(&params.location)?;
        Self::open_with_store(store, params, peer, resuming)
    }

    /// As [`S3Sink::open`], over a store already connected.
    pub fn open_with_store(
        store: S3Store,
        params: S3SinkParams,
        peer: usize,
        resuming: bool,
    ) -> Result<Self, ConnectorError> {
        let prefix = params.location.prefix.clone();
        let listed = store.list(&prefix)?;
        let mut objects = Vec::new();
        let mut staged: BTreeMap<u64, Vec<(u32, String)>> = BTreeMap::new();
        for o in listed {
            if let Some(seq) = layout::object_seq(&prefix, peer, &o.key) {
                objects.push((seq, o.key));
            } else if let Some((seq, part)) = layout::part_of(&prefix, peer, &o.key) {
                staged.entry(seq).or_default().push((part, o.key));
            }
        }
        let mut sink = S3Sink {
            store,
            params,
            peer,
            seq: 0,
            part: 0,
            object: Vec::new(),
            started: None,
            pending: Vec::new(),
        };
        if !resuming {
            let parts = staged.values().flatten().map(|(_, key)| key);
            let keys: Vec<String> = objects
                .iter()
                .map(|(_, key)| key)
                .chain(parts)
                .cloned()
                .collect();
            sink.store.delete_all(&keys)?;
            return Ok(sink);
        }
        let next = |seq: Option<&u64>| seq.map_or(0, |s| s + 1);
        sink.seq = next(objects.iter().map(|(s, _)| s).max()).max(next(staged.keys().last()));
        for (seq, mut parts) in staged {
            parts.sort();
            if !objects.iter().any(|(s, _)| *s == seq) {
                // Not rolled before the crash: roll it now, under its own name.
                let mut body = Vec::new();
                for (_, key) in &parts {
                    body.extend_from_slice(&sink.store.get_bytes(key)?);
                }
                let key = layout::object_key(&prefix, peer, seq);
                tracing::info!(%key, parts = parts.len(), "rolling an object a killed run left staged");
                sink.store
                    .put(&key, Bytes::from(body), sink.params.part_bytes)?;
            }
            // (Rolled already, and killed before its parts were all deleted: the object holds
            // them all, and only the deletion is left.)
            let keys: Vec<String> = parts.into_iter().map(|(_, key)| key).collect();
            sink.store.delete_all(&keys)?;
        }
        Ok(sink)
    }

    /// The key of the object being filled.
    pub fn current_key(&self) -> String {
        layout::object_key(&self.params.location.prefix, self.peer, self.seq)
    }

    fn roll_due(&self) -> bool {
        self.object.len() as u64 >= self.params.max_object_bytes
            || self
                .started
                .is_some_and(|t| t.elapsed() >= self.params.max_object_age)
    }

    /// Writes the current object whole under its final name, deletes its staged parts, and
    /// begins the next one. Nothing to do when it is empty.
    pub fn roll(&mut self) -> Result<(), ConnectorError> {
        if self.object.is_empty() {
            return Ok(());
        }
        let key = self.current_key();
        let body = Bytes::from(std::mem::take(&mut self.object));
        if let Err(e) = self.store.put(&key, body.clone(), self.params.part_bytes) {
            self.object = body.into();
            return Err(e.into());
        }
        let (seq, parts) = (self.seq, self.part);
        self.seq += 1;
        self.part = 0;
        self.started = None;
        tracing::debug!(%key, bytes = body.len(), "rolled an S3 object");
        // The object is complete: parts left behind by a failed deletion are deleted when a
        // later run finds them beside it.
        let prefix = &self.params.location.prefix;
        let keys: Vec<String> = (0..parts)
            .map(|part| layout::part_key(prefix, self.peer, seq, part))
            .collect();
        if let Err(e) = self.store.delete_all(&keys) {
            tracing::warn!(%key, error = %e, "deleting the staged parts of a rolled S3 object failed");
        }
        Ok(())
    }

    /// Flushes and rolls the current object: the end of the output.
    pub fn close(mut self) -> Result<(), ConnectorError> {
        self.flush()?;
        self.roll()
    }
}

impl Sink for S3Sink {
    /// Takes a batch. Records written and not flushed belong to a batch whose flush failed
    /// and which is being written again (the engine writes and flushes each batch together,
    /// and on a retryable failure retries both): they are dropped, not written twice.
    fn write_batch(&mut self, records: &[Vec<u8>]) -> Result<(), ConnectorError> {
        self.pending.clear();
        for r in records {
            self.pending.extend_from_slice(r);
            self.pending.push(b'\n');
        }
        Ok(())
    }

    /// Stages what was written (durable when this returns), then rolls the object if it is
    /// full or old. A roll that fails with a retryable error is tried again at the next flush
    /// (the batch is durable already: failing the flush would only write it again).
    fn flush(&mut self) -> Result<(), ConnectorError> {
        if !self.pending.is_empty() {
            let key =
                layout::part_key(&self.params.location.prefix, self.peer, self.seq, self.part);
            let body = Bytes::from(std::mem::take(&mut self.pending));
            if let Err(e) = self.store.put(&key, body.clone(), u64::MAX) {
                self.pending = body.into();
                return Err(e.into());
            }
            self.part += 1;
            self.object.extend_from_slice(&body);
            self.started.get_or_insert_with(Instant::now);
        }
        if self.roll_due() {
            match self.roll() {
                Err(e) if e.is_retryable() => {
                    tracing::warn!(error = %e, "rolling an S3 object failed; trying again at the next batch");
                }
                other => other?,
            }
        }
        Ok(())
    }
}

impl Drop for S3Sink {
    fn drop(&mut self) {
        if let Err(e) = self.roll() {
            tracing::warn!(
                key = %self.current_key(),
                error = %e,
                "the last S3 object was not rolled; its parts stay staged and are rolled when the job resumes"
            );
        }
    }
}

impl From<S3Error> for ConnectorError {
    fn from(e: S3Error) -> Self {
        ConnectorError::S3(Box::new(e))
    }
}
