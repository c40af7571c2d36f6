//! The exactly-once slot as a machine without I/O ([`Slot`]): it owns the slot's window
//! operator and the protocol's state, takes events (a batch, the filter's answers, a commit,
//! the end of the inputs, a recovery) and answers with [`Command`]s for a driver to carry out,
//! in order. Every decision of DESIGN §5 is taken here — the order of appends, lookups,
//! inserts, deliveries and releases, pipelining and merging, when to compact, completion in
//! bounded records, the epoch stamped on records — so it is tested without a runtime, a log or
//! a clock (time comes in with the events).
//!
//! What is *not* inside: I/O (the driver's `runtime/slot_log.rs` appends, looks ids up,
//! inserts them, writes snapshots), the acknowledgements and the router (batches are named by
//! the driver's sequence numbers), and user code that may panic outside the window logic: the
//! task's function and the lifecycles run in the driver before a batch reaches the slot, and a
//! group function reaches the slot through [`GroupOf`], which the driver implements without
//! letting a panic out. User aggregations and punctuation predicates run inside the operator,
//! so inside the slot; the operator reports their failures as a rejection of the segment.

use std::borrow::Cow;
use std::collections::VecDeque;

use sardonyx_windowing::{Completion, Step, Transition, WindowOperator};

use super::filter_mark::FilterMark;
use super::record::{encode_batch_record, id_key_into, BatchRecord, Ids, StateError};
use super::recovery::{recover, Recovered};
use super::schedule::RecordSchedule;
use super::seen_ids::SeenPair;
use crate::key_groups::key_group_label;
use crate::segment::{Segment, Value};

/// Most firings of one job-completion record (whole groups, so a little more at times): when
/// every input has finished, a windowed peer fires, logs and syncs its open windows in records
/// of about this size, so a job with many open windows (a session per user) never holds all
/// their final firings at once.
pub const COMPLETION_FIRINGS: usize = 4096;

/// How the slot finds a segment's group. The driver implements it (group by a key, by a
/// registered function, or not at all); it must not panic: a user's function is called there
/// under `catch_unwind` and its panic comes back as an error (the segment is rejected).
pub trait GroupOf {
    /// The group of `segment`, or why it has none.
    fn group_of<'s>(&self, segment: &'s Segment) -> Result<Cow<'s, Value>, String>;
}

/// A batch handed to the slot, after the task's function.
#[derive(Debug, Default)]
pub struct Batch {
    /// The driver's number for the batch (increasing): commands name batches by it.
    pub seq: u64,
    /// The segments.
    pub segments: Vec<Segment>,
    /// `(input slot, greatest offset)` of the input batches it derives from.
    pub inputs: Vec<(u32, u64)>,
    /// The task's watermark when it was gathered (`i64::MAX`: every input finished).
    pub watermark: Option<i64>,
    /// The clock, for timer triggers.
    pub now_ms: i64,
}

/// What the slot asks of its driver, in the order given.
#[derive(Debug)]
pub enum Command {
    /// Ask the dedup filter about every key of [`Slot::lookup_keys`], then answer with
    /// [`Slot::on_ids_looked_up`] before anything else.
    LookUpIds,
    /// Send a segment to the error output with its reason.
    Reject {
        /// The segment.
        segment: Segment,
        /// Why.
        reason: String,
    },
    /// Segments skipped as already applied (they still travel on): count them.
    CountDuplicates(u64),
    /// Append one encoded [`BatchRecord`] to the ledger (fenced); answer with
    /// [`Slot::on_committed`] once the log has committed it. One is in flight at a time.
    Append {
        /// The record, encoded.
        bytes: Vec<u8>,
        /// Ids it applies (for the run's counters).
        ids: u64,
    },
    /// Insert a committed record's ids into the dedup filter, marked with the record.
    InsertIds {
        /// The ids.
        ids: Ids,
        /// The record they come from.
        mark: FilterMark,
    },
    /// Sync the step's firings (flushing the syncs), send emitted firings and late segments
    /// on. Its record is committed.
    Deliver(Step),
    /// Send the segments of batches up to `through` on (or write them to the task's sink) and
    /// make what was sent so far durable, holding every batch not yet released.
    Output {
        /// The segments going on.
        segments: Vec<Segment>,
        /// The last batch they come from.
        through: u64,
    },
    /// Write a snapshot of [`Slot::operator`] (and the filter's export) covering the record at
    /// `position`, stamped with `epoch`, and drop the ledger before it.
    Compact {
        /// The last record the snapshot covers.
        position: u64,
        /// The epoch to stamp on it.
        epoch: u64,
    },
    /// Batches up to `through` are fully handled: release their acknowledgements.
    Release {
        /// The last batch released.
        through: u64,
    },
    /// Job completion is done: flush what was sent, holding nothing.
    Flush,
}

/// What the slot waits for next ([`Slot::want`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// The next batch (wait for one): [`Slot::on_batch`] or [`Slot::on_inputs_finished`].
    Batch,
    /// A batch already queued, to prepare while the record in flight commits:
    /// [`Slot::on_batch`], or [`Slot::on_queue_empty`] if none is queued.
    QueuedBatch,
    /// The commit of the record in flight: [`Slot::on_committed`].
    Commit,
    /// The commit of the record in flight or, if one arrives first, a batch to prepare while it
    /// commits (none was queued when last asked): [`Slot::on_committed`] or [`Slot::on_batch`],
    /// whichever comes first. Waiting only for the commit, a slot would sit idle while its
    /// inputs, their queues full, wait for it.
    CommitOrBatch,
    /// Nothing more: the inputs are finished and every record delivered.
    Done,
}

/// How a slot is set up.
#[derive(Debug, Clone)]
pub struct SlotConfig {
    /// The slot's ledger (named in filter marks).
    pub ledger: String,
    /// The uniqueness field, if segments are deduplicated (only with a log).
    pub uniqueness_key: Option<String>,
    /// Whether a trigger is a timer (each batch then ticks the operator's clock).
    pub timer: bool,
    /// Whether the next batches may be prepared while a record commits (not with lifecycle
    /// hooks: their calls would interleave across batches).
    pub pipelined: bool,
    /// For a grouped task, the job's number of key groups: each new id is then labelled with
    /// its segment's key group in the record ([`Ids::Grouped`]) and in the filter, so a
    /// rescale can take the ids of any key groups out of this slot's ledger.
    pub key_groups: Option<usize>,
    /// `Some` for an exactly-once slot with a ledger, `None` in memory mode.
    pub log: Option<LogConfig>,
}

/// The ledger side of a [`SlotConfig`].
#[derive(Debug, Clone, Copy)]
pub struct LogConfig {
    /// This run's epoch (records are stamped with it, or with a greater recovered one).
    pub epoch: u64,
    /// Compact once the bytes appended since the last snapshot exceed this.
    pub compact_after_bytes: u64,
    /// Most gathered batches merged into one record.
    pub max_merged_batches: usize,
}

/// A batch applied but not yet delivered: its step (the transitions go into its record), the
/// segments going on, its new ids.
#[derive(Default)]
struct Applied {
    step: Step,
    outputs: Vec<Segment>,
    ids: Vec<Value>,
    /// The key group of each id (empty when ids are not labelled).
    labels: Vec<u16>,
    inputs: Vec<(u32, u64)>,
    /// The last batch in it (`None` for a step of the slot's own: recovery, timers restarted,
    /// completion).
    through: Option<u64>,
}

impl Applied {
    /// Takes in the input positions of a batch applied after this one (one record, one
    /// delivery): each input's greatest offset.
    fn absorb_inputs(&mut self, inputs: Vec<(u32, u64)>) {
        for (input, offset) in inputs {
            match self.inputs.iter_mut().find(|(i, _)| *i == input) {
                Some((_, o)) => *o = (*o).max(offset),
                None => self.inputs.push((input, offset)),
            }
        }
        self.inputs.sort_unstable();
    }
}

/// The vectors of a record delivered, emptied and kept for the next record. A record's
/// vectors grow with it (up to `max_merged_batches` batches); made afresh for every record,
/// those past the allocator's mmap threshold were mapped, faulted in page by page, copied as
/// they grew and unmapped again each time (`crate::allocator`).
#[derive(Default)]
struct Spare {
    transitions: Vec<Transition>,
    outputs: Vec<Segment>,
    ids: Vec<Value>,
    labels: Vec<u16>,
}

/// Empties `v` and keeps it in `spare` if it holds more than what is kept there.
fn keep_larger<T>(spare: &mut Vec<T>, mut v: Vec<T>) {
    if v.capacity() > spare.capacity() {
        v.clear();
        *spare = v;
    }
}

/// The record being appended and what waits for its commit.
struct InFlight {
    applied: Applied,
    ids: Ids,
    crc: u32,
}

/// A step of the slot's own to commit and deliver when nothing is in flight.
enum Own {
    Step(Step),
    Completion(Completion),
}

/// The ledger side of a slot's state.
struct LogState {
    epoch: u64,
    schedule: RecordSchedule,
    /// The last committed record (or the snapshot's position).
    last_position: Option<u64>,
    /// The last committed batch record's ids, not yet in the filter.
    uninserted: Option<(Ids, FilterMark)>,
    in_flight: Option<InFlight>,
    /// Batches applied while the record in flight commits: the next record.
    ahead: Option<Applied>,
    /// How many batches `ahead` holds.
    merged: usize,
    /// No batch was queued when asked, while this record is in flight.
    queue_empty: bool,
}

/// One exactly-once (or in-memory) windowed slot, without I/O: see the module doc.
pub struct Slot {
    operator: WindowOperator,
    config: SlotConfig,
    log: Option<LogState>,
    seen: SeenPair,
    /// The last delivered record's vectors, for the next one.
    spare: Spare,
    /// The batch whose ids the filter is being asked about.
    looking_up: Option<Batch>,
    own: VecDeque<Own>,
    finishing: bool,
    flush_at_end: bool,
    commands: VecDeque<Command>,
}

impl Slot {
    /// A slot over `operator` (fresh, or to be recovered with [`Slot::on_recovered`]).
    pub fn new(operator: WindowOperator, config: SlotConfig) -> Self {
        let log = config.log.map(|l| LogState {
            epoch: l.epoch,
            schedule: RecordSchedule::new(l.compact_after_bytes, l.max_merged_batches, 0),
            last_position: None,
            uninserted: None,
            in_flight: None,
            ahead: None,
            merged: 0,
            queue_empty: false,
        });
        Slot {
            operator,
            config,
            log,
            seen: SeenPair::default(),
            spare: Spare::default(),
            looking_up: None,
            own: VecDeque::new(),
            finishing: false,
            flush_at_end: false,
            commands: VecDeque::new(),
        }
    }

    /// The window operator (its state includes batches applied ahead of their commit).
    pub fn operator(&self) -> &WindowOperator {
        &self.operator
    }

    /// The epoch stamped on records.
    pub fn epoch(&self) -> Option<u64> {
        self.log.as_ref().map(|l| l.epoch)
    }

    /// The next command to carry out.
    pub fn next_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// Hands back the vector of a [`Command::Output`] once its segments are taken out, for a
    /// later record's segments (its capacity is kept, its contents dropped).
    pub fn recycle_outputs(&mut self, segments: Vec<Segment>) {
        keep_larger(&mut self.spare.outputs, segments);
    }

    /// Gives up the vectors kept for the next record: a compaction's snapshot is the peak of a
    /// slot's memory, and these need not be resident beside it (the next record grows its
    /// own).
    pub fn drop_spare(&mut self) {
        self.spare = Spare::default();
    }

    /// The id keys of the batch being looked up ([`Command::LookUpIds`]), in order (an empty
    /// key for a segment without the uniqueness field).
    pub fn lookup_keys(&self) -> impl Iterator<Item = &[u8]> + Clone {
        self.seen.batch.iter()
    }

    /// What the slot waits for. `commit_finished`: whether the append in flight has finished
    /// (then at most one queued batch is merged before its commit is taken).
    pub fn want(&self, commit_finished: bool) -> Want {
        debug_assert!(
            self.looking_up.is_none(),
            "ids looked up are answered first"
        );
        let Some(log) = &self.log else {
            return if self.finishing {
                Want::Done
            } else {
                Want::Batch
            };
        };
        match &log.in_flight {
            Some(f) => {
                let ahead_ok = f.applied.through.is_some()
                    && !self.finishing
                    && log.schedule.may_prepare_ahead(self.config.pipelined, true)
                    && log.schedule.may_merge_more(log.merged, commit_finished);
                match (ahead_ok, log.queue_empty) {
                    (true, false) => Want::QueuedBatch,
                    (true, true) if !commit_finished => Want::CommitOrBatch,
                    _ => Want::Commit,
                }
            }
            None if self.finishing => Want::Done,
            None => Want::Batch,
        }
    }

    /// Rebuilds an exactly-once slot from its ledger ([`recover`]: the snapshot and the
    /// entries after it), then queues the re-delivery of the last record's firings (event
    /// `recovered`) and the operator's recovery step. Returns what recovery found, for the
    /// dedup filter and the run's report.
    pub fn on_recovered(
        &mut self,
        snapshot: Option<(u64, &[u8])>,
        entries: &[(u64, Vec<u8>)],
    ) -> Result<Recovered, StateError> {
        let recovered = recover(&self.config.ledger, &mut self.operator, snapshot, entries)?;
        if let (Some(log), Some(config)) = (&mut self.log, &self.config.log) {
            log.epoch = config.epoch.max(recovered.epoch);
            log.last_position = recovered.last_position;
            log.schedule = RecordSchedule::new(
                config.compact_after_bytes,
                config.max_merged_batches,
                recovered.entry_bytes,
            );
        }
        if !recovered.pending.is_empty() {
            self.commands.push_back(Command::Deliver(Step {
                firings: recovered.pending.clone(),
                ..Default::default()
            }));
        }
        let step = self.operator.on_recovered();
        self.own.push_back(Own::Step(step));
        self.run_own();
        Ok(recovered)
    }

    /// Starts the timers' clocks at `now_ms` (a recovered slot's deadlines were on an earlier
    /// process's clock and start afresh too). Call once, before the first batch.
    pub fn on_started(&mut self, now_ms: i64) {
        let step = self.operator.restart_timers(now_ms);
        self.own.push_back(Own::Step(step));
        self.run_own();
    }

    /// Takes a batch: asks for its ids to be looked up ([`Command::LookUpIds`]) if the slot
    /// deduplicates, else applies it at once.
    pub fn on_batch(&mut self, batch: Batch, grouping: &impl GroupOf) {
        debug_assert!(!self.finishing, "no batch after the inputs finished");
        // A batch merged into the one applied just before it shares its seen ids.
        if self.ahead().is_none() {
            self.seen.next_batch();
        }
        let field = self
            .config
            .uniqueness_key
            .as_deref()
            .filter(|_| self.log.is_some());
        match field {
            Some(field) => {
                self.seen.batch_keys(&batch.segments, field);
                self.looking_up = Some(batch);
                self.commands.push_back(Command::LookUpIds);
            }
            None => self.apply(batch, &[], grouping),
        }
    }

    /// The filter's answers for [`Slot::lookup_keys`], in order: applies the batch.
    pub fn on_ids_looked_up(&mut self, in_filter: &[bool], grouping: &impl GroupOf) {
        let batch = self.looking_up.take().expect("a batch is being looked up");
        self.apply(batch, in_filter, grouping);
    }

    /// No batch was queued ([`Want::QueuedBatch`]): wait for the commit, or for a batch to
    /// arrive before it ([`Want::CommitOrBatch`]).
    pub fn on_queue_empty(&mut self) {
        if let Some(log) = &mut self.log {
            log.queue_empty = true;
        }
    }

    /// The record in flight is committed at `position`: its ids are due in the filter, its
    /// firings are delivered, its batches go on and are released; then the next record (the
    /// batches applied meanwhile, or a step of the slot's own) is appended.
    pub fn on_committed(&mut self, position: u64) {
        let log = self.log.as_mut().expect("only a logged slot commits");
        let f = log.in_flight.take().expect("a record is in flight");
        log.last_position = Some(position);
        log.queue_empty = false;
        let mark = FilterMark {
            ledger: self.config.ledger.clone(),
            position,
            crc: f.crc,
        };
        if self.config.uniqueness_key.is_some() {
            if f.applied.through.is_some() {
                // Inserted while the next record commits, or before a snapshot.
                log.uninserted = Some((f.ids, mark));
            } else {
                self.commands
                    .push_back(Command::InsertIds { ids: f.ids, mark });
            }
        }
        self.finish_record(f.applied);
        if let Some(ahead) = self.log.as_mut().and_then(|l| l.ahead.take()) {
            self.start_record(ahead);
        }
        self.run_own();
    }

    /// Every input is finished (`stopped`: an input was stopped early, so the job is not
    /// complete and its windows must not fire as at completion): the last ids go into the
    /// filter, then the operator fires every changed extent, in records of about
    /// [`COMPLETION_FIRINGS`] firings, each committed before it is delivered.
    pub fn on_inputs_finished(&mut self, stopped: bool) {
        if let Some(u) = self.log.as_mut().and_then(|l| l.uninserted.take()) {
            self.commands.push_back(Command::InsertIds {
                ids: u.0,
                mark: u.1,
            });
        }
        self.finishing = true;
        if !stopped {
            self.own.push_back(Own::Completion(Completion::default()));
            self.flush_at_end = true;
        }
        self.run_own();
    }

    fn ahead(&self) -> Option<&Applied> {
        self.log.as_ref().and_then(|l| l.ahead.as_ref())
    }

    /// Feeds a batch to the operator, then the watermark and the timer. Segments already
    /// applied (by the filter's answer `in_filter`, by this batch or by the one before) skip
    /// the window state and still travel on; a segment the windows refuse is rejected.
    fn apply(&mut self, batch: Batch, in_filter: &[bool], grouping: &impl GroupOf) {
        let Batch {
            seq,
            segments,
            inputs,
            watermark,
            now_ms,
        } = batch;
        // A batch applied while a record is in flight joins the batches applied ahead of it:
        // applied straight into them, so nothing of theirs is copied.
        let mut applied = match self
            .log
            .as_mut()
            .filter(|l| l.in_flight.is_some())
            .and_then(|l| l.ahead.take())
        {
            Some(mut ahead) => {
                ahead.absorb_inputs(inputs);
                ahead.through = Some(seq);
                ahead.outputs.reserve(segments.len());
                ahead
            }
            None => {
                let mut fresh = Applied {
                    outputs: std::mem::take(&mut self.spare.outputs),
                    ids: std::mem::take(&mut self.spare.ids),
                    labels: std::mem::take(&mut self.spare.labels),
                    inputs,
                    through: Some(seq),
                    ..Default::default()
                };
                fresh.step.transitions = std::mem::take(&mut self.spare.transitions);
                fresh.outputs.reserve(segments.len());
                fresh
            }
        };
        let step = &mut applied.step;
        // About one transition per segment and window: grown once, not by doubling.
        step.transitions
            .reserve(segments.len() * self.operator.windows().len());
        // The fields are borrowed apart (not through a method), so no copy of the name.
        let field = self
            .config
            .uniqueness_key
            .as_deref()
            .filter(|_| self.log.is_some());
        let mut duplicates = 0;
        for (i, s) in segments.into_iter().enumerate() {
            let mut id = None;
            if let Some(field) = field {
                let Some(v) = s.get(field) else {
                    let reason = format!("uniqueness_key field \"{field}\" is missing");
                    self.commands
                        .push_back(Command::Reject { segment: s, reason });
                    continue;
                };
                id_key_into(v, &mut self.seen.key);
                if self.seen.contains(v) || in_filter[i] {
                    duplicates += 1;
                    applied.outputs.push(s);
                    continue;
                }
                id = Some(v.clone());
            }
            // On error `step` is left as it was.
            let mut label = None;
            let result = match grouping.group_of(&s) {
                Ok(g) => {
                    if let (Some(_), Some(n)) = (&id, self.config.key_groups) {
                        label = Some(key_group_label(&g, n));
                    }
                    self.operator
                        .on_segment_into(&s, &g, step)
                        .map_err(|e| e.to_string())
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => {
                    if let Some(v) = id {
                        // `seen.key` is still this segment's id key.
                        self.seen.insert(&v);
                        applied.ids.push(v);
                        applied.labels.extend(label);
                    }
                    applied.outputs.push(s);
                }
                Err(reason) => self
                    .commands
                    .push_back(Command::Reject { segment: s, reason }),
            }
        }
        if duplicates > 0 {
            self.commands
                .push_back(Command::CountDuplicates(duplicates));
        }
        // +∞ (every input finished) is job completion, which comes after the last batch, in
        // bounded records.
        if let Some(wm) = watermark.filter(|&wm| wm < i64::MAX) {
            self.operator.on_watermark_into(wm, step);
        }
        if self.config.timer {
            step.extend(self.operator.on_timer(now_ms));
        }
        match self.log.as_mut() {
            Some(log) if log.in_flight.is_some() => {
                log.ahead = Some(applied);
                log.merged += 1;
            }
            _ => self.start_record(applied),
        }
    }

    /// Appends the record of `applied` (nothing in flight), or, in memory mode or when it
    /// would change nothing, delivers it at once. The previous record's ids go into the filter
    /// while this one commits.
    fn start_record(&mut self, mut applied: Applied) {
        let Some(log) = &mut self.log else {
            self.finish_record(applied);
            return;
        };
        debug_assert!(log.in_flight.is_none(), "one record in flight at a time");
        log.merged = 0;
        log.queue_empty = false;
        let record = BatchRecord {
            epoch: log.epoch,
            ids: Ids::from_labelled(&applied.ids, &applied.labels),
            transitions: std::mem::take(&mut applied.step.transitions),
            inputs: std::mem::take(&mut applied.inputs),
        };
        if record.is_empty() {
            if let Some((ids, mark)) = log.uninserted.take() {
                self.commands.push_back(Command::InsertIds { ids, mark });
            }
            keep_larger(&mut self.spare.transitions, record.transitions);
            self.finish_record(applied);
            return;
        }
        let bytes = encode_batch_record(&record);
        let crc = crc32fast::hash(&bytes);
        log.schedule.appended(bytes.len() as u64);
        self.commands.push_back(Command::Append {
            bytes,
            ids: record.ids.len() as u64,
        });
        let BatchRecord {
            ids, transitions, ..
        } = record;
        keep_larger(&mut self.spare.transitions, transitions);
        log.in_flight = Some(InFlight { applied, ids, crc });
        if let Some((ids, mark)) = log.uninserted.take() {
            self.commands.push_back(Command::InsertIds { ids, mark });
        }
    }

    /// Delivers a committed (or unlogged) record's firings, sends its batches' segments on,
    /// compacts if due, releases its batches.
    fn finish_record(&mut self, applied: Applied) {
        let Applied {
            mut step,
            outputs,
            ids,
            labels,
            through,
            ..
        } = applied;
        keep_larger(&mut self.spare.ids, ids);
        keep_larger(&mut self.spare.labels, labels);
        // In memory mode the transitions are still here (a logged record took them).
        keep_larger(
            &mut self.spare.transitions,
            std::mem::take(&mut step.transitions),
        );
        if !step.firings.is_empty() || !step.late.is_empty() {
            self.commands.push_back(Command::Deliver(step));
        }
        if let Some(through) = through {
            self.commands.push_back(Command::Output {
                segments: outputs,
                through,
            });
        }
        if let Some(log) = self
            .log
            .as_mut()
            .filter(|l| l.ahead.is_none() && through.is_some())
        {
            // The snapshot is the state of exactly the committed records and holds the
            // filter's contents: nothing applied ahead, the last ids inserted first.
            if log.schedule.compaction_due() {
                if let Some(position) = log.last_position {
                    if let Some((ids, mark)) = log.uninserted.take() {
                        self.commands.push_back(Command::InsertIds { ids, mark });
                    }
                    self.commands.push_back(Command::Compact {
                        position,
                        epoch: log.epoch,
                    });
                    log.schedule.compacted();
                }
            }
        }
        if let Some(through) = through {
            self.commands.push_back(Command::Release { through });
        }
    }

    /// Carries out the slot's own steps (recovery, timers restarted, completion) one record at
    /// a time, while nothing is in flight; then, once finished, the final flush.
    fn run_own(&mut self) {
        while self.log.as_ref().is_none_or(|l| l.in_flight.is_none()) {
            let Some(front) = self.own.front_mut() else {
                break;
            };
            let step = match front {
                Own::Step(s) => {
                    let s = std::mem::take(s);
                    self.own.pop_front();
                    s
                }
                Own::Completion(c) => {
                    let mut step = Step::default();
                    self.operator
                        .on_job_completed_into(c, &mut step, COMPLETION_FIRINGS);
                    if c.is_done() {
                        self.own.pop_front();
                    }
                    step
                }
            };
            self.start_record(Applied {
                step,
                ..Default::default()
            });
        }
        let idle = self.own.is_empty() && self.log.as_ref().is_none_or(|l| l.in_flight.is_none());
        if self.finishing && idle && self.flush_at_end {
            self.flush_at_end = false;
            self.commands.push_back(Command::Flush);
        }
    }
}
