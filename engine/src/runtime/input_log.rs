//! An input peer's committed positions in the state log ([`InputLog`]): where a resumed input
//! starts reading, and the loop that writes each newly committed value.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use sardonyx_connectors::Positions;
use sardonyx_state_log::RequestId;
use tokio::sync::watch;

use super::error::RunError;
use super::job_log::{corrupt, decode, encode, log_error, JobLog};
use super::progress::Progress;

/// An input peer's committed positions in the state log: each record is the peer's whole
/// committed [`Positions`] (every partition it reads) at the time it was written.
pub(super) struct InputLog {
    js: Arc<JobLog>,
    ledger: String,
}

impl InputLog {
    /// The input peer's ledger.
    pub fn new(js: Arc<JobLog>, task: &str, peer: usize) -> Self {
        let ledger = format!("{}/input", js.slot_ledger(task, peer));
        InputLog { js, ledger }
    }

    /// The positions to resume from: per partition, the greatest one recorded (each was
    /// committed when written, so the greatest is). Empty when nothing was recorded.
    pub async fn resume_positions(&self) -> Result<Positions, RunError> {
        let read = self
            .js
            .options
            .store
            .read(&self.ledger, 0)
            .await
            .map_err(log_error(&self.ledger))?;
        let mut best = Positions::new();
        let snap = read.snapshot.iter().filter(|(_, b)| !b.is_empty());
        for (pos, bytes) in snap.chain(read.entries.iter()) {
            let ps: Positions = decode(bytes).map_err(|d| corrupt(&self.ledger, *pos, d))?;
            ps.iter().for_each(|p| best.advance(p));
        }
        Ok(best)
    }

    /// Appends every committed positions it is told of (skipping superseded ones while an
    /// append is in flight) until the sender is dropped; compacts every 256 appends. Each
    /// value comes with the records committed so far, added to [`Progress::committed`] once
    /// it is written.
    pub async fn write_loop(
        self,
        mut rx: watch::Receiver<(Positions, u64)>,
        progress: Arc<Progress>,
    ) -> Result<(), RunError> {
        let store = self.js.options.store.clone();
        let client = self.js.client(&self.ledger);
        let mut seq = 0_u64;
        let (mut written, mut counted) = rx.borrow().clone();
        loop {
            let closed = rx.changed().await.is_err();
            let (current, records) = rx.borrow_and_update().clone();
            if current != written && !current.is_empty() {
                let bytes = encode(&current);
                let pos = store
                    .append(&self.ledger, RequestId::new(client, seq), bytes.clone())
                    .await
                    .map_err(log_error(&self.ledger))?;
                seq += 1;
                written = current;
                progress
                    .committed
                    .fetch_add(records - counted, Ordering::Relaxed);
                counted = records;
                if seq.is_multiple_of(256) {
                    store
                        .snapshot(&self.ledger, pos, bytes)
                        .await
                        .map_err(log_error(&self.ledger))?;
                }
            }
            if closed {
                return Ok(());
            }
        }
    }
}
