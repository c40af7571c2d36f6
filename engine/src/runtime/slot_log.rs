//! A windowed slot's ledger and dedup filter: taking the slot over (owner record, recovery),
//! appending its batch records, inserting committed ids into the filter, compaction.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use sardonyx_state_log::{DedupConfig, DedupFilter, RequestId};

use super::error::RunError;
use super::job_log::{log_error, slot_write_error, JobLog};
use super::progress::{FilterOpened, Progress, SlotRecovery};
use crate::slot::{self, FilterMark, FilterPlan, RecordSchedule, SlotRecord};
use sardonyx_windowing::trigger::Firing;
use sardonyx_windowing::WindowOperator;

/// The error of the dedup filter of the slot `ledger`.
fn filter_error(ledger: &str) -> impl FnOnce(sardonyx_state_log::Error) -> RunError + '_ {
    move |source| RunError::DedupFilter {
        ledger: ledger.to_owned(),
        source,
    }
}

/// Opens a slot's dedup filter under `dir` and brings it up to date with the ledger just
/// recovered ([`slot::filter_plan`]): keeps what it holds if its mark names a replayed batch
/// or the snapshot, else clears it and imports the snapshot's `export`; then inserts the ids of
/// the replayed batches it lacks, marked with the last of them.
fn open_filter(
    dir: &std::path::Path,
    config: DedupConfig,
    ledger: &str,
    export: Option<Vec<u8>>,
    snapshot: Option<(u64, &[u8])>,
    batch_ids: &[(u64, slot::Ids)],
    entries: &[(u64, Vec<u8>)],
) -> Result<(DedupFilter, FilterOpened), sardonyx_state_log::Error> {
    let mut f = DedupFilter::open(dir, config)?;
    let mark = f.mark()?.and_then(|m| FilterMark::decode(&m));
    let plan = slot::filter_plan(ledger, mark.as_ref(), snapshot, batch_ids, entries);
    let from = match plan {
        FilterPlan::Reuse { from } => from,
        FilterPlan::Rebuild => {
            f.clear()?;
            if let Some(e) = export.filter(|e| !e.is_empty()) {
                f.import(&e)?;
            }
            0
        }
    };
    let rest = &batch_ids[from..];
    if let Some((pos, _)) = rest.last() {
        let i = entries
            .binary_search_by_key(pos, |(p, _)| *p)
            .expect("every replayed batch is an entry read");
        let mark = FilterMark::of_entry(ledger, *pos, &entries[i].1).encode();
        f.insert_batch_marked(
            rest.iter().flat_map(|(_, ids)| ids.iter_keys()),
            Some(&mark),
        )?;
    }
    let opened = FilterOpened {
        reused: matches!(plan, FilterPlan::Reuse { .. }),
        ids: rest.iter().map(|(_, ids)| ids.len() as u64).sum(),
    };
    Ok((f, opened))
}

/// The environment variable of the test-only crash point: `N` makes the process kill itself
/// with SIGKILL right after its `N`-th batch record is committed (before the record's ids reach
/// the dedup filter and its firings are synced), so crash tests can stop a tiny job in the
/// middle deterministically, with no cleanup.
pub const CRASH_AFTER_RECORDS: &str = "SARDONYX_TEST_CRASH_AFTER_RECORDS";

/// The crash point of [`CRASH_AFTER_RECORDS`]: counts committed batch records in this process.
fn crash_point_after_commit() {
    static AFTER: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    static COMMITTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let Some(after) = *AFTER.get_or_init(|| {
        std::env::var(CRASH_AFTER_RECORDS)
            .ok()
            .and_then(|v| v.parse().ok())
    }) else {
        return;
    };
    if COMMITTED.fetch_add(1, Ordering::SeqCst) + 1 == after {
        tracing::warn!(after, "test crash point: killing this process with SIGKILL");
        let sent = std::process::Command::new("kill")
            .args(["-9", &std::process::id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if !sent {
            // No `kill` to run: die at once all the same (SIGABRT, no cleanup either).
            std::process::abort();
        }
        // SIGKILL is on its way; this thread does nothing more.
        loop {
            std::thread::park();
        }
    }
}

/// A batch record being appended ([`SlotLog::begin_commit`]).
pub(crate) struct InFlight {
    append: tokio::task::JoinHandle<Result<u64, RunError>>,
    len: u64,
    crc: u32,
    ids: slot::Ids,
}

impl InFlight {
    /// True once the append has finished (committed or failed): [`SlotLog::end_commit`] will
    /// not wait.
    pub fn is_finished(&self) -> bool {
        self.append.is_finished()
    }
}

/// The ids of a committed batch record, for the dedup filter ([`SlotLog::insert_committed`]).
pub(crate) struct Committed {
    ids: slot::Ids,
    mark: FilterMark,
}

/// One windowed slot's ledger and dedup filter.
pub(crate) struct SlotLog {
    js: Arc<JobLog>,
    ledger: String,
    client: u64,
    seq: u64,
    epoch: u64,
    /// The fence of every write to the ledger: this run's epoch, to which the `Owner` record
    /// raised the ledger's fence (the log refuses it once a newer run has written there).
    fence: u64,
    filter: Option<DedupFilter>,
    last_position: Option<u64>,
    /// When to compact and how many batches to merge (decided there, carried out here).
    schedule: RecordSchedule,
    progress: Arc<Progress>,
}

impl SlotLog {
    /// Takes over a slot: announces this run as its owner (a write fenced with the run's epoch,
    /// which raises the ledger's fence to it, so that older runs can no longer write there),
    /// reads the snapshot and the tail, rebuilds `op` and the dedup filter. Returns the firings
    /// of the last batch to sync again.
    pub async fn open(
        js: Arc<JobLog>,
        task: &str,
        peer: usize,
        dedup: bool,
        op: &mut WindowOperator,
        progress: Arc<Progress>,
    ) -> Result<(SlotLog, Vec<Firing>), RunError> {
        let started = Instant::now();
        let ledger = js.slot_ledger(task, peer);
        let store = js.options.store.clone();
        let client = js.client(&ledger);
        let owner = slot::encode_record(&SlotRecord::Owner { epoch: js.epoch });
        store
            .append_fenced(&ledger, js.epoch, RequestId::new(client, 0), owner)
            .await
            .map_err(slot_write_error(&ledger))?;
        let mut read = store.read(&ledger, 0).await.map_err(log_error(&ledger))?;
        let snapshot = read.snapshot.as_ref().map(|(p, b)| (*p, b.as_slice()));
        let mut recovered = slot::recover(&ledger, op, snapshot, &read.entries)?;
        let snapshot = read.snapshot.take();
        let snapshot_position = snapshot.as_ref().map(|(p, _)| *p);
        let mut filter_opened = None;
        let filter = if dedup {
            let dir = js
                .options
                .dir
                .join("filters")
                .join(ledger.replace(['/', '\\', ':'], "_"));
            let config = js.options.dedup;
            let export = recovered.filter_export.take();
            let batch_ids = std::mem::take(&mut recovered.batch_ids);
            let entries = std::mem::take(&mut read.entries);
            let name = ledger.clone();
            let (filter, opened) = tokio::task::spawn_blocking(move || {
                let snapshot = snapshot.as_ref().map(|(p, b)| (*p, b.as_slice()));
                open_filter(&dir, config, &name, export, snapshot, &batch_ids, &entries)
            })
            .await?
            .map_err(filter_error(&ledger))?;
            filter_opened = Some(opened);
            Some(filter)
        } else {
            None
        };
        let report = SlotRecovery {
            ledger: ledger.clone(),
            snapshot_position,
            records_scanned: read.stats.records_scanned,
            bytes_read: read.stats.bytes_read,
            batches: recovered.batches,
            fenced: recovered.fenced,
            pending_firings: recovered.pending.len() as u64,
            filter: filter_opened,
            millis: started.elapsed().as_millis() as u64,
        };
        tracing::info!(?report, "windowed slot recovered");
        progress
            .recoveries
            .lock()
            .expect("recoveries lock")
            .push(report);
        Ok((
            SlotLog {
                ledger,
                client,
                seq: 1,
                epoch: js.epoch.max(recovered.epoch),
                fence: js.epoch,
                filter,
                last_position: recovered.last_position,
                schedule: RecordSchedule::new(
                    js.options.compact_after_bytes,
                    js.options.max_merged_batches,
                    recovered.entry_bytes,
                ),
                js,
                progress,
            },
            recovered.pending,
        ))
    }

    /// Whether the filter has seen each of `keys`, in order, into `answers` (cleared first;
    /// always false without deduplication): one pass over the filter for a whole batch, whose
    /// lookups overlap their cache misses.
    pub fn seen_each<'a, I>(&self, keys: I, answers: &mut Vec<bool>) -> Result<(), RunError>
    where
        I: IntoIterator<Item = &'a [u8]>,
        I::IntoIter: Clone,
    {
        match &self.filter {
            Some(f) => f
                .contains_each(keys, answers)
                .map_err(filter_error(&self.ledger)),
            None => {
                answers.clear();
                answers.extend(keys.into_iter().map(|_| false));
                Ok(())
            }
        }
    }

    /// The epoch to stamp on records.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Appends one batch record (fenced with this run's epoch) and waits for its commit; then
    /// inserts its ids into the filter.
    pub async fn commit(&mut self, record: slot::BatchRecord) -> Result<(), RunError> {
        let inflight = self.begin_commit(record);
        if let Some(c) = self.end_commit(inflight).await? {
            self.insert_committed(c)?;
        }
        Ok(())
    }

    /// Starts appending one batch record (fenced with this run's epoch) on its own task, so the
    /// caller can work while Raft and the fsync run; [`SlotLog::end_commit`] waits for it.
    /// Records are appended in the order they are begun; begin the next one only after this
    /// one has ended (a record's firings are synced before the next record is appended).
    pub fn begin_commit(&mut self, record: slot::BatchRecord) -> InFlight {
        let bytes = slot::encode_batch_record(&record);
        let len = bytes.len() as u64;
        let crc = crc32fast::hash(&bytes);
        let store = self.js.options.store.clone();
        let ledger = self.ledger.clone();
        let (fence, request) = (self.fence, RequestId::new(self.client, self.seq));
        self.seq += 1;
        self.schedule.appended(len);
        let append = tokio::spawn(async move {
            store
                .append_fenced(&ledger, fence, request, bytes)
                .await
                .map_err(slot_write_error(&ledger))
        });
        InFlight {
            append,
            len,
            crc,
            ids: record.ids,
        }
    }

    /// Waits for a record begun by [`SlotLog::begin_commit`] to be committed. Returns its ids
    /// for the dedup filter (`None` without deduplication), to insert with
    /// [`SlotLog::insert_committed`] before the ids of any later record.
    pub async fn end_commit(&mut self, inflight: InFlight) -> Result<Option<Committed>, RunError> {
        let InFlight {
            append,
            len,
            crc,
            ids,
        } = inflight;
        let pos = append.await??;
        self.last_position = Some(pos);
        crash_point_after_commit();
        let p = &self.progress;
        p.logged_records.fetch_add(1, Ordering::Relaxed);
        p.logged_bytes.fetch_add(len, Ordering::Relaxed);
        p.logged_segments
            .fetch_add(ids.len() as u64, Ordering::Relaxed);
        Ok(self.filter.is_some().then(|| Committed {
            ids,
            mark: FilterMark {
                ledger: self.ledger.clone(),
                position: pos,
                crc,
            },
        }))
    }

    /// Inserts a committed record's ids into the dedup filter, with the mark naming the record.
    pub fn insert_committed(&mut self, committed: Committed) -> Result<(), RunError> {
        if let Some(f) = &mut self.filter {
            f.insert_batch_marked(committed.ids.iter_keys(), Some(&committed.mark.encode()))
                .map_err(filter_error(&self.ledger))?;
        }
        Ok(())
    }

    /// The slot's record schedule: whether a compaction is due, how many batches to merge.
    pub fn schedule(&self) -> &RecordSchedule {
        &self.schedule
    }

    /// Writes a snapshot (fenced with this run's epoch) and drops the ledger's prefix once the
    /// schedule says a compaction is due ([`RecordSchedule::compaction_due`]). Call only after
    /// the last batch's firings were synced.
    pub async fn maybe_compact(&mut self, op: &WindowOperator) -> Result<(), RunError> {
        let Some(pos) = self.last_position else {
            return Ok(());
        };
        if !self.schedule.compaction_due() {
            return Ok(());
        }
        let filter = match &self.filter {
            Some(f) => f.export().map_err(filter_error(&self.ledger))?,
            None => Vec::new(),
        };
        let bytes = slot::encode_snapshot_ref(&slot::SlotSnapshotRef {
            epoch: self.epoch,
            operator: op.snapshot_ref(),
            filter: &filter,
        });
        drop(filter);
        let len = bytes.len();
        let mark = FilterMark::of_entry(&self.ledger, pos, &bytes);
        self.js
            .options
            .store
            .snapshot_fenced(&self.ledger, self.fence, pos, bytes)
            .await
            .map_err(slot_write_error(&self.ledger))?;
        if let Some(f) = &mut self.filter {
            // The filter holds what the snapshot covers: name the snapshot, so that a restart
            // before the next batch still keeps the filter.
            f.insert_batch_marked(std::iter::empty::<&[u8]>(), Some(&mark.encode()))
                .map_err(filter_error(&self.ledger))?;
        }
        tracing::info!(ledger = %self.ledger, covers = pos, bytes = len, "slot compacted");
        self.progress.snapshots.fetch_add(1, Ordering::Relaxed);
        self.schedule.compacted();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::builder::JobBuilder;
    use crate::runtime::job_log::StateOptions;
    use sardonyx_state_log::EmbeddedLog;
    use sardonyx_state_log::Ledgers;
    use sardonyx_windowing::{aggregation, Map, Value, WindowSpec};
    use std::collections::BTreeMap;

    fn operator() -> WindowOperator {
        WindowOperator::new(
            vec![WindowSpec::global("all", aggregation::count())],
            vec![],
        )
        .unwrap()
    }

    fn count(op: &WindowOperator) -> Value {
        op.extents("all", &Value::Null)
            .first()
            .map_or(Value::Null, |v| v.state.clone())
    }

    /// A run of the job: its state (a new epoch) and the slot `count/0` taken over.
    async fn take_over(
        store: &Arc<dyn Ledgers>,
        dir: &std::path::Path,
    ) -> Result<(SlotLog, WindowOperator), RunError> {
        let job = JobBuilder::new().id("fencing").build();
        let mut options = StateOptions::new(store.clone(), dir);
        options.compact_after_bytes = 0;
        let peers = BTreeMap::from([("count".to_owned(), 1)]);
        let js = JobLog::open(&job, options, &peers, vec!["count".into()]).await?;
        let mut op = operator();
        let (slot, _) = SlotLog::open(
            Arc::new(js),
            "count",
            0,
            true,
            &mut op,
            Arc::new(Progress::default()),
        )
        .await?;
        Ok((slot, op))
    }

    /// One batch of new votes, through the operator and into the slot, as the runtime does.
    async fn batch(
        slot: &mut SlotLog,
        op: &mut WindowOperator,
        ids: std::ops::Range<i64>,
    ) -> Result<(), RunError> {
        let mut record = slot::BatchRecord {
            epoch: slot.epoch(),
            ..Default::default()
        };
        let mut values = Vec::new();
        for id in ids {
            let mut s = Map::new();
            s.insert("vote_id", id);
            let step = op.on_segment(&s, &Value::Null).unwrap();
            record.transitions.extend(step.transitions);
            values.push(Value::Int(id));
        }
        record.ids = slot::Ids::from_values(&values);
        slot.commit(record).await
    }

    fn assert_refused(result: Result<(), RunError>, ledger: &str) {
        let err = result.expect_err("a stale run's write was accepted");
        assert_eq!(
            err.to_string(),
            format!(
                "state log: windowed slot {ledger:?} was taken over by a newer run (epoch 2): \
                 the write of this run (epoch 1) was refused, and this run stops"
            )
        );
    }

    /// Run A owns the slot; run B takes it over; A, still running (a zombie), can neither
    /// append nor compact (a snapshot of A's state would replace B's `Owner` record and A's
    /// fenced batches); B's state, and a later recovery, count every vote once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stale_run_can_neither_append_nor_compact_after_a_takeover() {
        let dir = tempfile::tempdir().unwrap();
        let log = EmbeddedLog::open(dir.path().join("log")).await.unwrap();
        let store: Arc<dyn Ledgers> = Arc::new(log.clone());
        // Each run on its own machine: its own directory for dedup filters.
        let (mut a, mut op_a) = take_over(&store, &dir.path().join("a")).await.unwrap();
        assert_eq!((a.fence, a.epoch()), (1, 1));
        batch(&mut a, &mut op_a, 0..3).await.unwrap();
        batch(&mut a, &mut op_a, 3..5).await.unwrap();

        let (mut b, mut op_b) = take_over(&store, &dir.path().join("b")).await.unwrap();
        assert_eq!((b.fence, b.epoch()), (2, 2));
        assert_eq!(count(&op_b), Value::Int(5));
        let ledger = b.ledger.clone();

        // The zombie's next batch and its compaction are refused by the log itself.
        assert_refused(batch(&mut a, &mut op_a, 5..8).await, &ledger);
        assert_eq!(
            count(&op_a),
            Value::Int(8),
            "the zombie's own state went on"
        );
        assert_refused(a.maybe_compact(&op_a).await, &ledger);
        // So is a stale run taking the slot over again (its `Owner` record).
        drop(a);
        let stale = JobLog {
            options: StateOptions::new(store.clone(), dir.path().join("a")),
            resumed: true,
            prefix: "fencing/g0".into(),
            epoch: 1,
            nonce: 77,
        };
        let reopened = SlotLog::open(
            Arc::new(stale),
            "count",
            0,
            true,
            &mut operator(),
            Arc::new(Progress::default()),
        )
        .await;
        assert_refused(reopened.map(|_| ()), &ledger);

        // The new owner goes on; nothing of the zombie's refused writes is in the ledger.
        batch(&mut b, &mut op_b, 100..102).await.unwrap();
        let read = store.read(&ledger, 0).await.unwrap();
        let mut op = operator();
        let snapshot = read.snapshot.as_ref().map(|(p, b)| (*p, b.as_slice()));
        let recovered = slot::recover(&ledger, &mut op, snapshot, &read.entries).unwrap();
        assert_eq!((count(&op), recovered.fenced), (Value::Int(7), 0));
        // It compacts, and goes on.
        b.maybe_compact(&op_b).await.unwrap();
        batch(&mut b, &mut op_b, 102..103).await.unwrap();
        assert_eq!(count(&op_b), Value::Int(8));
        let info = store.info(&ledger).await.unwrap();
        assert_eq!(info.fence, 2);
        drop(b);

        // A later run recovers exactly B's state: 5 votes of A before the takeover, 3 of B.
        let (c, op_c) = take_over(&store, &dir.path().join("c")).await.unwrap();
        assert_eq!(count(&op_c), Value::Int(8));
        assert_eq!(c.fence, 3);
        drop(c);
        drop(store);
        log.close().await.unwrap();
    }
}
