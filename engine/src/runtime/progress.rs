//! Live counters of a running job, read by progress displays, the run report and the metrics
//! endpoint: job-wide totals, per task slot counters ([`SlotCounters`]), per trigger firings
//! ([`TriggerFirings`], counted by a wrapper around each trigger's sync), the latest rejections,
//! and what each windowed slot's recovery did. Everything here is updated per batch, per
//! firing or per rejection, never per segment on the happy path, and read when scraped.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

use super::rejections::Rejection;
use super::window_stage::{SharedSync, Syncs};
use crate::job::Job;
use crate::plugin::SyncSink;
use crate::segment::{Map, Value};

/// How many rejections [`Progress::recent_rejections`] keeps.
pub const RECENT_REJECTIONS: usize = 20;

/// How many firings [`TriggerFirings::recent`] keeps per trigger.
pub const RECENT_FIRINGS: usize = 8;

/// A trigger's firings are sampled for [`TriggerFirings::recent`] at most this often (all are
/// counted): a job completion that fires a million sessions records a few, not a million.
pub const FIRING_SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// Longest text kept of a rejected input or segment, or a firing's state, for display.
const PREVIEW_CHARS: usize = 200;

/// Live counters of a running job, for progress displays.
#[derive(Debug, Default)]
pub struct Progress {
    /// Records read by input tasks.
    pub read: AtomicU64,
    /// Records read by input tasks whose positions are committed: fully processed downstream
    /// and, when the job has a state log, their positions written there (a rerun resumes after
    /// them).
    pub committed: AtomicU64,
    /// Segments written by output tasks.
    pub written: AtomicU64,
    /// Segments (or input lines) sent to the error output.
    pub rejected: Arc<AtomicU64>,
    /// Segments that came too late for a window.
    pub late: AtomicU64,
    /// Segments that matched none of their task's flow conditions.
    pub unmatched: AtomicU64,
    /// Trigger firings.
    pub fired: AtomicU64,
    /// Segments a windowed task had already applied (skipped by its dedup filter).
    pub duplicates: AtomicU64,
    /// Batch records appended to windowed slots' ledgers.
    pub logged_records: AtomicU64,
    /// Their bytes.
    pub logged_bytes: AtomicU64,
    /// Segment ids they carry.
    pub logged_segments: AtomicU64,
    /// Compaction snapshots written.
    pub snapshots: AtomicU64,
    /// What recovering each windowed slot read.
    pub recoveries: std::sync::Mutex<Vec<SlotRecovery>>,
    /// Per task slot counters, in the order the slots were first started.
    slots: Mutex<Vec<Arc<SlotCounters>>>,
    /// Per trigger, its firings.
    triggers: Mutex<Vec<Arc<TriggerFirings>>>,
    /// The latest rejections, oldest first.
    rejections: Mutex<VecDeque<RecentRejection>>,
}

impl Progress {
    /// The counters of `task`'s slot `slot`, made on first use: a restarted peer keeps counting
    /// where the failed one stopped (as the job-wide totals do).
    pub fn slot(&self, task: &str, slot: usize) -> Arc<SlotCounters> {
        let mut slots = self.slots.lock().expect("slot counters lock");
        if let Some(c) = slots.iter().find(|c| c.task == task && c.slot == slot) {
            return c.clone();
        }
        let c = Arc::new(SlotCounters::new(task, slot));
        slots.push(c.clone());
        c
    }

    /// Every task slot's counters.
    pub fn slots(&self) -> Vec<Arc<SlotCounters>> {
        self.slots.lock().expect("slot counters lock").clone()
    }

    /// The firings of `trigger` of `window` (on `task`), made on first use.
    pub fn trigger(&self, task: &str, window: &str, trigger: &str) -> Arc<TriggerFirings> {
        let mut triggers = self.triggers.lock().expect("trigger firings lock");
        if let Some(t) = triggers
            .iter()
            .find(|t| t.window == window && t.trigger == trigger)
        {
            return t.clone();
        }
        let t = Arc::new(TriggerFirings {
            task: task.to_owned(),
            window: window.to_owned(),
            trigger: trigger.to_owned(),
            count: AtomicU64::new(0),
            recent: Mutex::default(),
        });
        triggers.push(t.clone());
        t
    }

    /// Every trigger's firings.
    pub fn triggers(&self) -> Vec<Arc<TriggerFirings>> {
        self.triggers.lock().expect("trigger firings lock").clone()
    }

    /// Keeps a rejection among the latest ones (the error output has them all).
    pub fn note_rejection(&self, rejection: &Rejection) {
        let what = match (&rejection.input, &rejection.segment) {
            (Some(input), _) => preview(input),
            (None, Some(segment)) => preview(&segment.to_string()),
            (None, None) => String::new(),
        };
        let note = RecentRejection {
            at: SystemTime::now(),
            task: rejection.task.clone(),
            reason: rejection.reason.clone(),
            line: rejection.line,
            what,
        };
        let mut recent = self.rejections.lock().expect("rejections lock");
        if recent.len() == RECENT_REJECTIONS {
            recent.pop_front();
        }
        recent.push_back(note);
    }

    /// The latest rejections, oldest first (at most [`RECENT_REJECTIONS`]).
    pub fn recent_rejections(&self) -> Vec<RecentRejection> {
        self.rejections
            .lock()
            .expect("rejections lock")
            .iter()
            .cloned()
            .collect()
    }
}

/// At most [`PREVIEW_CHARS`] characters of `text`, with an ellipsis if cut.
fn preview(text: &str) -> String {
    match text.char_indices().nth(PREVIEW_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Live counters of one task slot (one peer of a task): what it took in and sent on, its
/// rejections, how long it waited on full downstream queues, its watermark, and how long its
/// batches took. Input slots count records read as segments in.
#[derive(Debug)]
pub struct SlotCounters {
    /// The task.
    pub task: String,
    /// The slot (peer number within the task).
    pub slot: usize,
    /// Segments taken in: records read by an input, segments gathered by a worker.
    pub segments_in: AtomicU64,
    /// Batches taken in.
    pub batches: AtomicU64,
    /// Segments sent downstream (to every destination, the error task included).
    pub segments_out: AtomicU64,
    /// Segments (or input lines) this slot sent to the error output.
    pub rejected: AtomicU64,
    /// Segments this (output) slot wrote to its sink.
    pub written: AtomicU64,
    /// Segments that came too late for this (windowed) slot's windows.
    pub late: AtomicU64,
    /// Segments this (windowed) slot had already applied (skipped by its dedup filter).
    pub duplicates: AtomicU64,
    /// Sends that found a downstream queue full and waited (backpressure).
    pub backpressure_waits: AtomicU64,
    /// Nanoseconds spent in those waits.
    pub backpressure_nanos: AtomicU64,
    /// The slot's watermark in epoch milliseconds (`i64::MIN`: none yet).
    watermark: AtomicI64,
    /// Wall time of each batch the slot processed, in seconds.
    pub batch_seconds: Histogram,
}

impl SlotCounters {
    /// Zeroed counters of `task`'s slot `slot`.
    pub fn new(task: &str, slot: usize) -> Self {
        SlotCounters {
            task: task.to_owned(),
            slot,
            segments_in: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            segments_out: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            written: AtomicU64::new(0),
            late: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            backpressure_waits: AtomicU64::new(0),
            backpressure_nanos: AtomicU64::new(0),
            watermark: AtomicI64::new(i64::MIN),
            // 0.5 ms to about 8 s.
            batch_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 15)),
        }
    }

    /// Notes the slot's watermark (what it sends downstream with a batch). `None` and +∞ (the
    /// end of the inputs) leave the last finite one.
    pub fn set_watermark(&self, watermark: Option<i64>) {
        if let Some(wm) = watermark.filter(|&w| w > i64::MIN && w < i64::MAX) {
            self.watermark.store(wm, Ordering::Relaxed);
        }
    }

    /// The slot's watermark in epoch milliseconds, once it has one.
    pub fn watermark(&self) -> Option<i64> {
        Some(self.watermark.load(Ordering::Relaxed)).filter(|&w| w > i64::MIN)
    }

    /// Records how long one batch took (gathered to acknowledged).
    pub fn observe_batch(&self, took: Duration) {
        self.batch_seconds.observe(took.as_secs_f64());
    }

    /// Records one send that waited `waited` for room downstream.
    pub fn observe_backpressure(&self, waited: Duration) {
        self.backpressure_waits.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
        self.backpressure_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

/// The firings of one trigger: all counted, a few of the latest kept for display.
#[derive(Debug)]
pub struct TriggerFirings {
    /// The task the trigger's window is on.
    pub task: String,
    /// The window.
    pub window: String,
    /// The trigger.
    pub trigger: String,
    /// Firings so far.
    pub count: AtomicU64,
    /// Sampled latest firings, oldest first (at most [`RECENT_FIRINGS`], one per
    /// [`FIRING_SAMPLE_EVERY`]).
    recent: Mutex<VecDeque<RecentFiring>>,
}

impl TriggerFirings {
    /// The sampled latest firings, oldest first.
    pub fn recent(&self) -> Vec<RecentFiring> {
        self.recent
            .lock()
            .expect("firings lock")
            .iter()
            .cloned()
            .collect()
    }

    fn keep(&self, firing: &Map) {
        let text = |k: &str| firing.get(k).map_or_else(String::new, |v| v.to_string());
        let bound = |k: &str| firing.get(k).and_then(Value::as_i64);
        let note = RecentFiring {
            at: SystemTime::now(),
            event: firing
                .get("event")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            group: preview(&text("group")),
            lower: bound("lower"),
            upper: bound("upper"),
            state: preview(&text("state")),
        };
        let mut recent = self.recent.lock().expect("firings lock");
        if recent.len() == RECENT_FIRINGS {
            recent.pop_front();
        }
        recent.push_back(note);
    }
}

/// One firing as shown on the dashboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecentFiring {
    /// When it fired (wall clock).
    pub at: SystemTime,
    /// What fired it (`timer`, `watermark`, `job_completed`, …).
    pub event: String,
    /// Its group as JSON (`null` without grouping), cut to a preview.
    pub group: String,
    /// The extent's bounds (epoch milliseconds, inclusive; none for global windows).
    pub lower: Option<i64>,
    /// See `lower`.
    pub upper: Option<i64>,
    /// The state handed to the sync, as JSON, cut to a preview.
    pub state: String,
}

/// One rejection as shown on the dashboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecentRejection {
    /// When it was rejected (wall clock).
    pub at: SystemTime,
    /// The task that rejected it.
    pub task: String,
    /// Why.
    pub reason: String,
    /// The input line number, for records that never became segments.
    pub line: Option<u64>,
    /// The raw input or the segment, cut to a preview.
    pub what: String,
}

/// A trigger's sync (or nothing, for a trigger without one) with its firings counted and
/// sampled: every firing of a step passes through its trigger's sync call.
struct CountedSync {
    inner: Option<SharedSync>,
    firings: Arc<TriggerFirings>,
    last_kept: Option<Instant>,
}

impl SyncSink for CountedSync {
    fn sync(&mut self, firing: &Map) -> Result<(), String> {
        self.firings.count.fetch_add(1, Ordering::Relaxed);
        if self
            .last_kept
            .is_none_or(|t| t.elapsed() >= FIRING_SAMPLE_EVERY)
        {
            self.last_kept = Some(Instant::now());
            self.firings.keep(firing);
        }
        match &self.inner {
            Some(s) => s.lock().expect("sync lock poisoned").sync(firing),
            None => Ok(()),
        }
    }

    fn flush(&mut self) -> Result<(), String> {
        match &self.inner {
            Some(s) => s.lock().expect("sync lock poisoned").flush(),
            None => Ok(()),
        }
    }
}

/// Puts a [`CountedSync`] on every trigger of `job` (around its sync, if it has one), so that
/// `progress` counts the firings per trigger.
pub(super) fn counted_syncs(job: &Job, mut syncs: Syncs, progress: &Progress) -> Syncs {
    for t in &job.triggers {
        let key = (t.window.clone(), t.id.clone());
        let inner = syncs.remove(&key);
        let task = job
            .windows
            .iter()
            .find(|w| w.id == t.window)
            .map_or("", |w| w.task.as_str());
        let counted = CountedSync {
            inner,
            firings: progress.trigger(task, &t.window, &t.id),
            last_kept: None,
        };
        syncs.insert(key, Arc::new(Mutex::new(Box::new(counted))));
    }
    syncs
}

/// What recovering one windowed slot read and did (for reports and tests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotRecovery {
    /// The slot's ledger.
    pub ledger: String,
    /// Whether a snapshot was read, and the position it covers.
    pub snapshot_position: Option<u64>,
    /// Ledger records visited by the read (each checksummed).
    pub records_scanned: u64,
    /// Bytes read (snapshot + entries).
    pub bytes_read: u64,
    /// Batch records replayed.
    pub batches: u64,
    /// Batch records fenced off (written by a process after a newer one took over).
    pub fenced: u64,
    /// Firings of the last batch synced again.
    pub pending_firings: u64,
    /// How the dedup filter was brought up to date (`None` without deduplication).
    pub filter: Option<FilterOpened>,
    /// Wall time of the recovery, in milliseconds.
    pub millis: u64,
}

/// How a slot's dedup filter was brought up to date with its recovered ledger.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FilterOpened {
    /// The filter found on disk held a prefix of the ledger and was kept (else it was rebuilt
    /// from the snapshot's export and the replayed batches).
    pub reused: bool,
    /// Ids inserted (those of the batches the filter did not hold yet, or all of them).
    pub ids: u64,
}
