//! A windowed slot's ledger and dedup filter: the I/O of the slot machine
//! ([`crate::slot::Slot`]) — taking the slot over (owner record, reading the ledger, opening
//! the filter), appending its batch records, looking ids up and inserting committed ones,
//! writing snapshots. The machine decides what and when; nothing is decided here.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use sardonyx_state_log::{DedupConfig, DedupFilter, LedgerRead, RequestId};

use super::crash_point::CrashPoint;
use super::error::RunError;
use super::job_log::{log_error, slot_write_error, JobLog};
use super::progress::{FilterOpened, Progress, SlotRecovery};
use crate::slot::{self, FilterMark, FilterPlan, SlotRecord};
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
        f.insert_labelled_marked(rest.iter().flat_map(|(_, ids)| ids.labelled()), Some(&mark))?;
    }
    // Written now, so that a second crash does not have to do this again.
    f.flush()?;
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
static AFTER_COMMIT: CrashPoint = CrashPoint::new(CRASH_AFTER_RECORDS);

/// A batch record being appended ([`SlotLog::begin_append`]).
pub(crate) struct Appending {
    append: tokio::task::JoinHandle<Result<u64, RunError>>,
    /// The append's outcome, once [`Appending::finished`] has seen it.
    outcome: Option<Result<Result<u64, RunError>, tokio::task::JoinError>>,
    len: u64,
    ids: u64,
}

impl Appending {
    /// True once the append has finished (committed or failed): [`SlotLog::end_append`] will
    /// not wait.
    pub fn is_finished(&self) -> bool {
        self.outcome.is_some() || self.append.is_finished()
    }

    /// Waits until the append has finished, keeping its outcome for [`SlotLog::end_append`].
    /// Cancel safe: dropped before the append finishes, it has changed nothing.
    pub async fn finished(&mut self) {
        if self.outcome.is_none() {
            self.outcome = Some((&mut self.append).await);
        }
    }
}

/// A slot's ledger as [`SlotLog::take_over`] read it, for recovery.
pub(crate) struct TakenOver {
    /// The snapshot and the entries after it.
    pub read: LedgerRead,
    started: Instant,
}

/// One windowed slot's ledger and dedup filter: carries out the I/O commands of the slot
/// machine ([`crate::slot::Slot`]), which decides when and what.
pub(crate) struct SlotLog {
    js: Arc<JobLog>,
    ledger: String,
    client: u64,
    seq: u64,
    /// The fence of every write to the ledger: this run's epoch, to which the `Owner` record
    /// raised the ledger's fence (the log refuses it once a newer run has written there).
    fence: u64,
    filter: Option<DedupFilter>,
    progress: Arc<Progress>,
}

impl SlotLog {
    /// Takes over a slot: announces this run as its owner (a write fenced with the run's epoch,
    /// which raises the ledger's fence to it, so that older runs can no longer write there) and
    /// reads the snapshot and the tail, for [`crate::slot::Slot::on_recovered`].
    pub async fn take_over(
        js: Arc<JobLog>,
        task: &str,
        peer: usize,
        progress: Arc<Progress>,
    ) -> Result<(SlotLog, TakenOver), RunError> {
        let started = Instant::now();
        let ledger = js.slot_ledger(task, peer);
        let store = js.options.store.clone();
        let client = js.client(&ledger);
        let owner = slot::encode_record(&SlotRecord::Owner { epoch: js.epoch });
        store
            .append_fenced(&ledger, js.epoch, RequestId::new(client, 0), owner)
            .await
            .map_err(slot_write_error(&ledger))?;
        let read = store.read(&ledger, 0).await.map_err(log_error(&ledger))?;
        let log = SlotLog {
            ledger,
            client,
            seq: 1,
            fence: js.epoch,
            filter: None,
            js,
            progress,
        };
        Ok((log, TakenOver { read, started }))
    }

    /// The slot's ledger.
    pub fn ledger(&self) -> &str {
        &self.ledger
    }

    /// After recovery: opens the slot's dedup filter (`dedup`) and brings it up to date with
    /// the ledger just recovered ([`open_filter`]); reports the recovery.
    pub async fn recovered(
        &mut self,
        dedup: bool,
        mut recovered: slot::Recovered,
        taken: TakenOver,
    ) -> Result<(), RunError> {
        let TakenOver { mut read, started } = taken;
        let snapshot = read.snapshot.take();
        let snapshot_position = snapshot.as_ref().map(|(p, _)| *p);
        let mut filter_opened = None;
        if dedup {
            let dir = self.filter_dir();
            let config = self.js.options.dedup;
            let export = recovered.filter_export.take();
            let batch_ids = std::mem::take(&mut recovered.batch_ids);
            let entries = std::mem::take(&mut read.entries);
            let name = self.ledger.clone();
            let (filter, opened) = tokio::task::spawn_blocking(move || {
                let snapshot = snapshot.as_ref().map(|(p, b)| (*p, b.as_slice()));
                open_filter(&dir, config, &name, export, snapshot, &batch_ids, &entries)
            })
            .await?
            .map_err(filter_error(&self.ledger))?;
            filter_opened = Some(opened);
            self.filter = Some(filter);
        }
        let report = SlotRecovery {
            ledger: self.ledger.clone(),
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
        self.progress
            .recoveries
            .lock()
            .expect("recoveries lock")
            .push(report);
        Ok(())
    }

    /// A rescaled slot's dedup filter, filled with the ids gathered from the old slots, with
    /// their key groups (what was on disk under its name is cleared first).
    pub async fn fill_filter(&mut self, ids: Vec<(Option<u16>, Vec<u8>)>) -> Result<(), RunError> {
        let dir = self.filter_dir();
        let config = self.js.options.dedup;
        let filter = tokio::task::spawn_blocking(move || {
            let mut f = DedupFilter::open(&dir, config)?;
            f.clear()?;
            f.insert_labelled_marked(ids.iter().map(|(kg, id)| (*kg, id)), None)?;
            Ok::<_, sardonyx_state_log::Error>(f)
        })
        .await?
        .map_err(filter_error(&self.ledger))?;
        self.filter = Some(filter);
        Ok(())
    }

    /// Where this slot's dedup filter lives.
    fn filter_dir(&self) -> std::path::PathBuf {
        self.js
            .options
            .dir
            .join("filters")
            .join(self.ledger.replace(['/', '\\', ':'], "_"))
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

    /// Starts appending one encoded batch record (fenced with this run's epoch) on its own
    /// task, so the caller can work while Raft and the fsync run; [`SlotLog::end_append`] waits
    /// for it. `ids`: how many ids it applies (for the run's counters).
    pub fn begin_append(&mut self, bytes: Vec<u8>, ids: u64) -> Appending {
        let len = bytes.len() as u64;
        let store = self.js.options.store.clone();
        let ledger = self.ledger.clone();
        let (fence, request) = (self.fence, RequestId::new(self.client, self.seq));
        self.seq += 1;
        let append = tokio::spawn(async move {
            store
                .append_fenced(&ledger, fence, request, bytes)
                .await
                .map_err(slot_write_error(&ledger))
        });
        Appending {
            append,
            outcome: None,
            len,
            ids,
        }
    }

    /// Waits for a record begun by [`SlotLog::begin_append`] to be committed; returns its
    /// position.
    pub async fn end_append(&mut self, appending: Appending) -> Result<u64, RunError> {
        let Appending {
            append,
            outcome,
            len,
            ids,
        } = appending;
        let position = match outcome {
            Some(outcome) => outcome,
            None => append.await,
        }??;
        AFTER_COMMIT.pass();
        let p = &self.progress;
        p.logged_records.fetch_add(1, Ordering::Relaxed);
        p.logged_bytes.fetch_add(len, Ordering::Relaxed);
        p.logged_segments.fetch_add(ids, Ordering::Relaxed);
        Ok(position)
    }

    /// Inserts a committed record's ids into the dedup filter, with the mark naming the record.
    pub fn insert_ids(&mut self, ids: &slot::Ids, mark: &FilterMark) -> Result<(), RunError> {
        if let Some(f) = &mut self.filter {
            f.insert_labelled_marked(ids.labelled(), Some(&mark.encode()))
                .map_err(filter_error(&self.ledger))?;
        }
        Ok(())
    }

    /// Writes a snapshot of `op` and the filter's export (fenced with this run's epoch)
    /// covering the record at `position`, stamped with `epoch`, and drops the ledger's prefix.
    pub async fn compact(
        &mut self,
        position: u64,
        epoch: u64,
        op: &WindowOperator,
    ) -> Result<(), RunError> {
        let filter = match &self.filter {
            Some(f) => f.export().map_err(filter_error(&self.ledger))?,
            None => Vec::new(),
        };
        let bytes = slot::encode_snapshot_ref(&slot::SlotSnapshotRef {
            epoch,
            operator: op.snapshot_ref(),
            filter: &filter,
        });
        drop(filter);
        let len = bytes.len();
        let mark = FilterMark::of_entry(&self.ledger, position, &bytes);
        self.js
            .options
            .store
            .snapshot_fenced(&self.ledger, self.fence, position, bytes)
            .await
            .map_err(slot_write_error(&self.ledger))?;
        if let Some(f) = &mut self.filter {
            // The filter holds what the snapshot covers: name the snapshot and write it out,
            // so that a restart keeps the filter (a mark older than the snapshot would name
            // a record the compaction is about to drop, and the filter would be rebuilt).
            f.insert_batch_marked(std::iter::empty::<&[u8]>(), Some(&mark.encode()))
                .and_then(|()| f.flush())
                .map_err(filter_error(&self.ledger))?;
        }
        tracing::info!(ledger = %self.ledger, covers = position, bytes = len, "slot compacted");
        self.progress.snapshots.fetch_add(1, Ordering::Relaxed);
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

    /// A run's slot as the runtime holds it: the ledger and filter, the operator, the epoch
    /// on its records, its last committed record.
    struct Run {
        log: SlotLog,
        op: WindowOperator,
        epoch: u64,
        last: Option<u64>,
    }

    /// A run of the job: its state (a new epoch) and the slot `count/0` taken over and
    /// recovered.
    async fn take_over(store: &Arc<dyn Ledgers>, dir: &std::path::Path) -> Result<Run, RunError> {
        let job = JobBuilder::new().id("fencing").build();
        let mut options = StateOptions::new(store.clone(), dir);
        options.compact_after_bytes = 0;
        let peers = BTreeMap::from([("count".to_owned(), 1)]);
        let js = Arc::new(JobLog::open(&job, options, &peers, vec!["count".into()]).await?);
        let epoch = js.epoch;
        let (mut log, taken) =
            SlotLog::take_over(js, "count", 0, Arc::new(Progress::default())).await?;
        let mut op = operator();
        let read = &taken.read;
        let snapshot = read.snapshot.as_ref().map(|(p, b)| (*p, b.as_slice()));
        let recovered = slot::recover(log.ledger(), &mut op, snapshot, &read.entries)?;
        let (epoch, last) = (epoch.max(recovered.epoch), recovered.last_position);
        log.recovered(true, recovered, taken).await?;
        Ok(Run {
            log,
            op,
            epoch,
            last,
        })
    }

    /// One batch of new votes, through the operator and into the slot, as the runtime does.
    async fn batch(run: &mut Run, ids: std::ops::Range<i64>) -> Result<(), RunError> {
        let mut record = slot::BatchRecord {
            epoch: run.epoch,
            ..Default::default()
        };
        let mut values = Vec::new();
        for id in ids {
            let mut s = Map::new();
            s.insert("vote_id", id);
            let step = run.op.on_segment(&s, &Value::Null).unwrap();
            record.transitions.extend(step.transitions);
            values.push(Value::Int(id));
        }
        record.ids = slot::Ids::from_values(&values);
        let bytes = slot::encode_batch_record(&record);
        let crc = crc32fast::hash(&bytes);
        let appending = run.log.begin_append(bytes, record.ids.len() as u64);
        let position = run.log.end_append(appending).await?;
        run.last = Some(position);
        let mark = FilterMark {
            ledger: run.log.ledger().to_owned(),
            position,
            crc,
        };
        run.log.insert_ids(&record.ids, &mark)
    }

    async fn compact(run: &mut Run) -> Result<(), RunError> {
        let position = run.last.expect("a record was committed");
        run.log.compact(position, run.epoch, &run.op).await
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
        let mut a = take_over(&store, &dir.path().join("a")).await.unwrap();
        assert_eq!((a.log.fence, a.epoch), (1, 1));
        batch(&mut a, 0..3).await.unwrap();
        batch(&mut a, 3..5).await.unwrap();

        let mut b = take_over(&store, &dir.path().join("b")).await.unwrap();
        assert_eq!((b.log.fence, b.epoch), (2, 2));
        assert_eq!(count(&b.op), Value::Int(5));
        let ledger = b.log.ledger.clone();

        // The zombie's next batch and its compaction are refused by the log itself.
        assert_refused(batch(&mut a, 5..8).await, &ledger);
        assert_eq!(
            count(&a.op),
            Value::Int(8),
            "the zombie's own state went on"
        );
        assert_refused(compact(&mut a).await, &ledger);
        // So is a stale run taking the slot over again (its `Owner` record).
        drop(a);
        let options = StateOptions::new(store.clone(), dir.path().join("a"));
        let stale = JobLog::stale(options, "fencing", 1, 77);
        let reopened =
            SlotLog::take_over(Arc::new(stale), "count", 0, Arc::new(Progress::default())).await;
        assert_refused(reopened.map(|_| ()), &ledger);

        // The new owner goes on; nothing of the zombie's refused writes is in the ledger.
        batch(&mut b, 100..102).await.unwrap();
        let read = store.read(&ledger, 0).await.unwrap();
        let mut op = operator();
        let snapshot = read.snapshot.as_ref().map(|(p, b)| (*p, b.as_slice()));
        let recovered = slot::recover(&ledger, &mut op, snapshot, &read.entries).unwrap();
        assert_eq!((count(&op), recovered.fenced), (Value::Int(7), 0));
        // It compacts, and goes on.
        compact(&mut b).await.unwrap();
        batch(&mut b, 102..103).await.unwrap();
        assert_eq!(count(&b.op), Value::Int(8));
        let info = store.info(&ledger).await.unwrap();
        assert_eq!(info.fence, 2);
        drop(b);

        // A later run recovers exactly B's state: 5 votes of A before the takeover, 3 of B.
        let c = take_over(&store, &dir.path().join("c")).await.unwrap();
        assert_eq!(count(&c.op), Value::Int(8));
        assert_eq!(c.log.fence, 3);
        drop(c);
        drop(store);
        log.close().await.unwrap();
    }
}
