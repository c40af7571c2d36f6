//! The slot machine driven by a test driver without I/O: a ledger in a `Vec`, a filter in a
//! set, a source that replays what was not released after a crash. Invariants are checked as
//! each command is carried out; the final state against a model.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashSet};

use proptest::prelude::*;
use sardonyx_windowing::trigger::{Refinement, TriggerSpec};
use sardonyx_windowing::{aggregation, Map, Snapshot, Value, WindowOperator, WindowSpec};

use super::machine::{Batch, Command, GroupOf, LogConfig, Slot, SlotConfig, Want};
use super::record::{
    decode_record, encode_record, encode_snapshot, id_key, BatchRecord, Ids, SlotRecord,
    SlotSnapshot,
};
use super::recovery::recover;
use crate::segment::Segment;

fn operator() -> WindowOperator {
    WindowOperator::new(
        vec![
            WindowSpec::global("all", aggregation::count()),
            WindowSpec::fixed("ten", "t", 10, aggregation::count()),
        ],
        vec![
            TriggerSpec::segment("all", "every-3", 3),
            TriggerSpec::watermark("ten", "closed", 0).refinement(Refinement::Discarding),
        ],
    )
    .unwrap()
}

/// Every segment in one group.
struct NoGroup;

impl GroupOf for NoGroup {
    fn group_of<'s>(&self, _: &'s Segment) -> Result<Cow<'s, Value>, String> {
        Ok(Cow::Owned(Value::Null))
    }
}

/// The global count of an operator.
fn count(op: &WindowOperator) -> i64 {
    match op.extents("all", &Value::Null).first().map(|v| &v.state) {
        Some(Value::Int(n)) => *n,
        _ => 0,
    }
}

/// A segment: `Some(id)` with the uniqueness field, `None` without (rejected).
fn segment(id: Option<i64>, t: i64) -> Segment {
    let mut m = Map::new();
    if let Some(id) = id {
        m.insert("id", id);
    }
    m.insert("t", t);
    m
}

/// The durable side: what survives a crash.
#[derive(Default)]
struct Disk {
    /// Committed entries after the snapshot, by position.
    entries: Vec<(u64, Vec<u8>)>,
    next_position: u64,
    /// The last snapshot (position, bytes) and the filter's contents when it was written.
    snapshot: Option<(u64, Vec<u8>, HashSet<Vec<u8>>)>,
}

/// A run of the slot over a source of batches (each a list of `(id, time)`), recording what it
/// did, checking invariants at every command.
struct Harness {
    disk: Disk,
    source: Vec<Vec<(Option<i64>, i64)>>,
    /// The first source batch not released (where the input resumes after a crash).
    resume: usize,
    /// The next source batch to feed.
    next: usize,
    /// One past the furthest source batch ever fed.
    high: usize,
    /// Source index of each seq fed in this run.
    fed: Vec<usize>,
    slot: Slot,
    epoch: u64,
    filter: HashSet<Vec<u8>>,
    in_flight: Option<Vec<u8>>,
    rejected: usize,
    outputs: usize,
    compactions: usize,
    log: bool,
    pipelined: bool,
}

impl Harness {
    fn new(source: Vec<Vec<(Option<i64>, i64)>>, log: bool, pipelined: bool) -> Self {
        let mut h = Harness {
            disk: Disk::default(),
            source,
            resume: 0,
            next: 0,
            high: 0,
            fed: Vec::new(),
            slot: Slot::new(operator(), config(log, pipelined, 0)),
            epoch: 0,
            filter: HashSet::new(),
            in_flight: None,
            rejected: 0,
            outputs: 0,
            compactions: 0,
            log,
            pipelined,
        };
        h.start();
        h
    }

    /// A run starts (after a crash, or the first): takes the slot over, recovers it.
    fn start(&mut self) {
        self.epoch += 1;
        self.slot = Slot::new(operator(), config(self.log, self.pipelined, self.epoch));
        self.fed.clear();
        self.next = self.resume;
        self.in_flight = None;
        if self.log {
            self.commit_bytes(encode_record(&SlotRecord::Owner { epoch: self.epoch }));
            let snapshot = self
                .disk
                .snapshot
                .as_ref()
                .map(|(p, b, _)| (*p, b.as_slice()));
            let recovered = self
                .slot
                .on_recovered(snapshot, &self.disk.entries)
                .expect("the ledger recovers");
            // What the filter holds after recovery ([`super::filter_plan`]): the snapshot's
            // export and every replayed record's ids.
            self.filter = self
                .disk
                .snapshot
                .as_ref()
                .map(|s| s.2.clone())
                .unwrap_or_default();
            for (_, ids) in &recovered.batch_ids {
                self.filter.extend(ids.keys());
            }
        }
        self.slot.on_started(0);
    }

    fn commit_bytes(&mut self, bytes: Vec<u8>) -> u64 {
        let p = self.disk.next_position;
        self.disk.next_position += 1;
        self.disk.entries.push((p, bytes));
        p
    }

    /// The operator state the ledger replays to.
    fn replayed(&self) -> WindowOperator {
        let mut op = operator();
        let snapshot = self
            .disk
            .snapshot
            .as_ref()
            .map(|(p, b, _)| (*p, b.as_slice()));
        recover("slot", &mut op, snapshot, &self.disk.entries).expect("the ledger replays");
        op
    }

    /// Distinct ids of source batches `..end`.
    fn distinct_ids(&self, end: usize) -> usize {
        let ids: BTreeSet<i64> = self.source[..end]
            .iter()
            .flatten()
            .filter_map(|(id, _)| *id)
            .collect();
        ids.len()
    }

    /// Carries out every queued command, checking the invariants.
    fn drain(&mut self) {
        while let Some(c) = self.slot.next_command() {
            match c {
                Command::LookUpIds => {
                    let answers: Vec<bool> = self
                        .slot
                        .lookup_keys()
                        .map(|k| self.filter.contains(k))
                        .collect();
                    self.slot.on_ids_looked_up(&answers, &NoGroup);
                }
                Command::Reject { reason, .. } => {
                    assert_eq!(reason, "uniqueness_key field \"id\" is missing");
                    self.rejected += 1;
                }
                Command::CountDuplicates(_) => {}
                Command::Append { bytes, .. } => {
                    assert!(self.log, "memory mode appends nothing");
                    assert!(
                        self.in_flight.is_none(),
                        "records are appended one at a time"
                    );
                    self.in_flight = Some(bytes);
                }
                Command::InsertIds { ids, mark } => {
                    assert!(
                        self.disk.entries.iter().any(|(p, _)| *p == mark.position),
                        "ids are inserted only once their record is committed"
                    );
                    self.filter.extend(ids.keys());
                }
                Command::Deliver(_) | Command::Output { .. } | Command::Flush => {
                    assert!(
                        self.in_flight.is_none(),
                        "nothing is delivered while a record is in flight"
                    );
                    if let Command::Output { segments, .. } = c {
                        self.outputs += segments.len();
                    }
                }
                Command::Compact { position, .. } => {
                    assert!(self.in_flight.is_none());
                    assert_eq!(
                        Some(position),
                        self.disk.entries.last().map(|e| e.0),
                        "a snapshot covers the last committed record"
                    );
                    assert_eq!(
                        self.replayed().snapshot(),
                        self.slot.operator().snapshot(),
                        "the snapshot is the state of exactly the committed records"
                    );
                    let bytes = encode_snapshot(&SlotSnapshot {
                        epoch: self.epoch,
                        operator: self.slot.operator().snapshot(),
                        legacy_groups: Vec::new(),
                        filter: Vec::new(),
                    });
                    self.disk.snapshot = Some((position, bytes, self.filter.clone()));
                    self.disk.entries.clear();
                    self.compactions += 1;
                }
                Command::Release { through } => {
                    assert!(self.in_flight.is_none(), "released before its commit");
                    let end = self.fed[through as usize] + 1;
                    assert!(end > self.resume, "released in order, each batch once");
                    self.resume = end;
                    if self.log {
                        // The ledger may also hold batches applied with the released ones and
                        // not released yet (a record committed, then a crash), never others.
                        let counted = count(&self.replayed()) as usize;
                        assert!(
                            counted >= self.distinct_ids(end),
                            "a released batch's ids are in the ledger"
                        );
                        assert!(
                            counted <= self.distinct_ids(self.high),
                            "the ledger counts only ids fed, each once"
                        );
                    }
                }
            }
        }
    }

    /// The record in flight commits.
    fn commit(&mut self) {
        let bytes = self.in_flight.take().expect("a record in flight");
        let p = self.commit_bytes(bytes);
        self.slot.on_committed(p);
    }

    /// Takes one step of the slot; `coin` decides what the world does where it may choose.
    /// Returns false once the slot is done.
    fn step(&mut self, coin: u8) -> bool {
        self.drain();
        let commit_finished = coin & 1 == 1;
        let want = self.slot.want(commit_finished);
        assert!(
            !(commit_finished && want == Want::CommitOrBatch),
            "a finished commit is not raced against batches (the driver would spin)"
        );
        // Whether a batch comes before the commit (or is queued), if the slot would take one.
        let batch_first = coin & 2 != 0 && self.next < self.source.len();
        match want {
            Want::Done => return false,
            Want::Commit => self.commit(),
            Want::CommitOrBatch if !batch_first => self.commit(),
            Want::QueuedBatch if !batch_first => self.slot.on_queue_empty(),
            Want::QueuedBatch | Want::CommitOrBatch | Want::Batch => {
                if self.next == self.source.len() {
                    self.slot.on_inputs_finished(false);
                } else {
                    let seq = self.fed.len() as u64;
                    self.fed.push(self.next);
                    let batch = &self.source[self.next];
                    self.next += 1;
                    self.high = self.high.max(self.next);
                    let wm = batch.iter().map(|(_, t)| t - 3).max();
                    self.slot.on_batch(
                        Batch {
                            seq,
                            segments: batch.iter().map(|&(id, t)| segment(id, t)).collect(),
                            inputs: vec![(0, seq)],
                            watermark: wm,
                            now_ms: 0,
                        },
                        &NoGroup,
                    );
                }
            }
        }
        true
    }

    /// The process dies: the machine is dropped, the append in flight committed or not.
    fn crash(&mut self, append_committed: bool) {
        if let (Some(bytes), true) = (self.in_flight.take(), append_committed) {
            self.commit_bytes(bytes);
        }
        self.start();
    }

    fn run(&mut self, coins: &[u8], crashes: &[(usize, bool)]) {
        let mut i = 0;
        loop {
            if let Some(&(_, committed)) = crashes.iter().find(|(at, _)| *at == i) {
                self.crash(committed);
            }
            if !self.step(coins.get(i % coins.len().max(1)).copied().unwrap_or(0)) {
                break;
            }
            i += 1;
            assert!(i < 100_000, "the slot finishes");
        }
        self.drain();
    }
}

fn config(log: bool, pipelined: bool, epoch: u64) -> SlotConfig {
    SlotConfig {
        ledger: "slot".into(),
        uniqueness_key: Some("id".into()),
        timer: false,
        pipelined,
        key_groups: None,
        log: log.then_some(LogConfig {
            epoch,
            compact_after_bytes: 200,
            max_merged_batches: 3,
        }),
    }
}

fn snapshot_of(h: &Harness) -> Snapshot {
    h.slot.operator().snapshot()
}

#[test]
fn a_batch_is_appended_then_delivered_and_released_after_its_commit() {
    let mut slot = Slot::new(operator(), config(true, true, 1));
    slot.on_recovered(None, &[]).unwrap();
    slot.on_started(0);
    assert!(
        slot.next_command().is_none(),
        "nothing to log at a fresh start"
    );
    assert_eq!(slot.want(false), Want::Batch);
    let batch = Batch {
        seq: 0,
        segments: vec![segment(Some(1), 5), segment(None, 6), segment(Some(2), 7)],
        inputs: vec![(0, 10)],
        watermark: None,
        now_ms: 0,
    };
    slot.on_batch(batch, &NoGroup);
    assert!(matches!(slot.next_command(), Some(Command::LookUpIds)));
    let keys: Vec<Vec<u8>> = slot.lookup_keys().map(<[u8]>::to_vec).collect();
    assert_eq!(
        keys,
        vec![id_key(&Value::Int(1)), vec![], id_key(&Value::Int(2))]
    );
    slot.on_ids_looked_up(&[false, false, true], &NoGroup);
    let Some(Command::Reject { reason, .. }) = slot.next_command() else {
        panic!("the segment without an id is rejected")
    };
    assert_eq!(reason, "uniqueness_key field \"id\" is missing");
    assert!(matches!(
        slot.next_command(),
        Some(Command::CountDuplicates(1))
    ));
    let Some(Command::Append { ids: 1, .. }) = slot.next_command() else {
        panic!("one record with one new id")
    };
    assert!(
        slot.next_command().is_none(),
        "nothing goes on before the commit"
    );
    // The first queued batch is taken whether or not the commit has finished.
    assert_eq!(slot.want(true), Want::QueuedBatch);
    assert_eq!(slot.want(false), Want::QueuedBatch);
    slot.on_queue_empty();
    // None was queued: the commit, or a batch that arrives before it; the commit once it has
    // finished.
    assert_eq!(slot.want(false), Want::CommitOrBatch);
    assert_eq!(slot.want(true), Want::Commit);
    slot.on_committed(7);
    let Some(Command::Output {
        segments,
        through: 0,
    }) = slot.next_command()
    else {
        panic!("the batch goes on")
    };
    assert_eq!(
        segments.len(),
        2,
        "the new segment and the duplicate travel on"
    );
    assert!(matches!(
        slot.next_command(),
        Some(Command::Release { through: 0 })
    ));
    assert!(slot.next_command().is_none());
    assert_eq!(count(slot.operator()), 1);
    slot.on_inputs_finished(false);
    let Some(Command::InsertIds { ids, mark }) = slot.next_command() else {
        panic!("the last record's ids go into the filter before completion")
    };
    assert_eq!(
        (ids.keys(), mark.position),
        (vec![id_key(&Value::Int(1))], 7)
    );
}

#[test]
fn a_batch_applied_while_a_record_commits_is_appended_only_after_it_is_delivered() {
    let mut h = Harness::new(
        vec![
            vec![(Some(1), 1), (Some(2), 2)],
            vec![(Some(2), 3), (Some(3), 4)],
        ],
        true,
        true,
    );
    h.step(0); // batch 0 applied, appended
    h.drain();
    assert!(h.in_flight.is_some());
    h.step(2); // batch 1 applied ahead (the coin says one is queued)
    h.drain();
    assert_eq!(
        h.disk.entries.len(),
        1,
        "only the owner record is committed"
    );
    assert_eq!(count(h.slot.operator()), 3, "applied ahead of the commit");
    assert_eq!(h.resume, 0, "nothing released");
    h.step(0); // no more queued
    h.step(0); // commit of batch 0: delivered, released; batch 1 appended
    h.drain();
    assert_eq!(h.resume, 1);
    assert!(h.in_flight.is_some());
    h.run(&[0], &[]);
    assert_eq!(h.resume, 2);
    assert_eq!(
        count(&h.replayed()),
        3,
        "id 2 counted once across the two records"
    );
}

#[test]
fn lifecycle_hooks_turn_pipelining_off() {
    let mut h = Harness::new(vec![vec![(Some(1), 1)], vec![(Some(2), 2)]], true, false);
    h.step(3);
    h.drain();
    assert_eq!(h.slot.want(false), Want::Commit);
}

#[test]
fn memory_mode_delivers_at_once_and_counts_duplicates_only_by_the_operator() {
    let mut h = Harness::new(
        vec![vec![(Some(1), 1), (Some(1), 2)], vec![(None, 3)]],
        false,
        true,
    );
    h.run(&[3], &[]);
    assert_eq!(
        count(h.slot.operator()),
        3,
        "no deduplication without a log"
    );
    assert_eq!(h.rejected, 0);
    assert_eq!(h.outputs, 3);
}

#[test]
fn a_crash_with_the_append_committed_but_unacknowledged_counts_it_once() {
    let source = vec![vec![(Some(1), 1), (Some(2), 2)], vec![(Some(3), 3)]];
    let mut h = Harness::new(source, true, true);
    h.step(0);
    h.drain();
    h.crash(true); // the record reached the log; the batch was never released
    h.run(&[0], &[]);
    assert_eq!(count(&h.replayed()), 3);
    assert_eq!(count(h.slot.operator()), 3);
}

fn sources() -> impl Strategy<Value = Vec<Vec<(Option<i64>, i64)>>> {
    prop::collection::vec(
        prop::collection::vec((prop::option::weighted(0.95, 0_i64..40), 0_i64..60), 0..6),
        0..14,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Random sources (ids repeated within and across batches, segments without ids), commits
    /// arriving early or late, batches queued or not, crashes with the append in flight lost
    /// or committed: the invariants hold at every command, every batch is released, and the
    /// final count is exactly the number of distinct ids, in the slot and in the ledger.
    #[test]
    fn every_id_is_counted_once_whatever_happens(
        source in sources(),
        coins in prop::collection::vec(any::<u8>(), 1..40),
        crashes in prop::collection::vec((0_usize..60, any::<bool>()), 0..3),
        pipelined in any::<bool>(),
    ) {
        let mut h = Harness::new(source, true, pipelined);
        h.run(&coins, &crashes);
        let distinct = h.distinct_ids(h.source.len());
        prop_assert_eq!(h.resume, h.source.len(), "every batch released");
        prop_assert_eq!(count(h.slot.operator()) as usize, distinct);
        let replayed = h.replayed();
        prop_assert_eq!(replayed.snapshot(), snapshot_of(&h), "the ledger replays to the slot's state");
    }
}

/// Each segment in the group of its field `id`.
struct ById;

impl GroupOf for ById {
    fn group_of<'s>(&self, s: &'s Segment) -> Result<Cow<'s, Value>, String> {
        s.get("id").map(Cow::Borrowed).ok_or_else(|| "no id".into())
    }
}

fn batch(seq: u64, ids: impl IntoIterator<Item = i64>) -> Batch {
    Batch {
        seq,
        segments: ids.into_iter().map(|i| segment(Some(i), 0)).collect(),
        inputs: vec![(0, seq)],
        watermark: None,
        now_ms: 0,
    }
}

/// Carries out the lookups of `slot` against an empty filter; returns the other commands.
fn commands(slot: &mut Slot, grouping: &impl GroupOf) -> Vec<Command> {
    let mut out = Vec::new();
    while let Some(c) = slot.next_command() {
        match c {
            Command::LookUpIds => {
                let n = slot.lookup_keys().count();
                slot.on_ids_looked_up(&vec![false; n], grouping);
            }
            other => out.push(other),
        }
    }
    out
}

#[test]
fn batches_that_arrive_while_the_slot_waits_for_its_commit_join_the_next_record_up_to_the_bound() {
    let mut slot = Slot::new(operator(), config(true, true, 1));
    slot.on_recovered(None, &[]).unwrap();
    slot.on_started(0);
    slot.on_batch(batch(0, [1]), &NoGroup);
    assert!(matches!(
        commands(&mut slot, &NoGroup)[..],
        [Command::Append { ids: 1, .. }]
    ));
    slot.on_queue_empty();
    assert_eq!(slot.want(false), Want::CommitOrBatch);
    // A batch arrives before the commit: applied ahead, nothing of it goes out yet.
    slot.on_batch(batch(1, [2]), &NoGroup);
    assert!(commands(&mut slot, &NoGroup).is_empty());
    assert_eq!(
        slot.want(false),
        Want::CommitOrBatch,
        "either may come next"
    );
    assert_eq!(
        slot.want(true),
        Want::Commit,
        "a finished commit is taken before another batch is merged"
    );
    for (seq, id) in [(2, 3), (3, 4)] {
        slot.on_batch(batch(seq, [id]), &NoGroup);
        assert!(commands(&mut slot, &NoGroup).is_empty());
    }
    assert_eq!(
        slot.want(false),
        Want::Commit,
        "three batches merged: the bound (max_merged_batches)"
    );
    slot.on_committed(1);
    let c = commands(&mut slot, &NoGroup);
    let appended = c
        .iter()
        .position(|c| matches!(c, Command::Append { ids: 3, .. }));
    let output = c
        .iter()
        .position(|c| matches!(c, Command::Output { through: 0, .. }));
    assert!(
        matches!((output, appended), (Some(o), Some(a)) if o < a),
        "the committed batch goes on, then the three that arrived become one record: {c:?}"
    );
    assert_eq!(count(slot.operator()), 4);
}

#[test]
fn a_compaction_comes_after_delivery_with_the_last_ids_inserted_and_nothing_applied_ahead() {
    let mut config = config(true, true, 1);
    config.log.as_mut().unwrap().compact_after_bytes = 0;
    let mut slot = Slot::new(operator(), config);
    slot.on_recovered(None, &[]).unwrap();
    slot.on_started(0);
    slot.on_batch(batch(0, [1, 2]), &NoGroup);
    let c = commands(&mut slot, &NoGroup);
    assert!(matches!(c[..], [Command::Append { ids: 2, .. }]));
    assert_eq!(
        slot.want(false),
        Want::Commit,
        "no batch is prepared ahead once a compaction is due"
    );
    slot.on_committed(4);
    let c = commands(&mut slot, &NoGroup);
    let kinds: Vec<&str> = c
        .iter()
        .map(|c| match c {
            Command::Output { .. } => "output",
            Command::InsertIds { .. } => "insert",
            Command::Compact {
                position: 4,
                epoch: 1,
            } => "compact at 4",
            Command::Release { through: 0 } => "release",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["output", "insert", "compact at 4", "release"]);
    assert_eq!(slot.want(false), Want::Batch);
}

/// A grouped slot labels each new id with its segment's key group, in the record it appends
/// and in the ids it inserts into the filter; duplicates and rejected segments get none.
#[test]
fn a_grouped_slot_labels_each_new_id_with_its_key_group() {
    let mut config = config(true, false, 1);
    config.key_groups = Some(16);
    let mut slot = Slot::new(operator(), config);
    slot.on_recovered(None, &[]).unwrap();
    slot.on_started(0);
    let mut b = batch(0, [5, 9, 5, 12]);
    b.segments.push(segment(None, 0));
    slot.on_batch(b, &ById);
    let c = commands(&mut slot, &ById);
    let Some(Command::Append { bytes, ids: 3 }) =
        c.iter().find(|c| matches!(c, Command::Append { .. }))
    else {
        panic!("one record of 3 ids: {c:?}");
    };
    let label = |id: i64| crate::key_groups::key_group_label(&Value::Int(id), 16);
    let mut want: Vec<(Option<u16>, Vec<u8>)> = [5, 9, 12]
        .into_iter()
        .map(|id| (Some(label(id)), id_key(&Value::Int(id))))
        .collect();
    want.sort();
    let labelled = |ids: &Ids| -> Vec<(Option<u16>, Vec<u8>)> {
        let mut v: Vec<_> = ids
            .labelled()
            .into_iter()
            .map(|(kg, k)| (kg, k.as_ref().to_vec()))
            .collect();
        v.sort();
        v
    };
    let Ok(SlotRecord::Batch(record)) = decode_record(bytes) else {
        panic!("a batch record");
    };
    assert_eq!(labelled(&record.ids), want);
    slot.on_committed(2);
    commands(&mut slot, &ById);
    // The ids of the last record go into the filter when the inputs finish.
    slot.on_inputs_finished(true);
    let inserted = commands(&mut slot, &ById)
        .into_iter()
        .find_map(|c| match c {
            Command::InsertIds { ids, .. } => Some(ids),
            _ => None,
        })
        .expect("the ids go into the filter");
    assert_eq!(labelled(&inserted), want);
}

#[test]
fn completion_commits_each_bounded_record_before_delivering_it() {
    let groups = super::COMPLETION_FIRINGS as i64 + 100;
    let op = WindowOperator::new(
        vec![WindowSpec::global("all", aggregation::count())],
        vec![TriggerSpec::watermark("all", "end", 0)],
    )
    .unwrap();
    let mut config = config(true, true, 1);
    config.uniqueness_key = None;
    let mut slot = Slot::new(op, config);
    slot.on_recovered(None, &[]).unwrap();
    slot.on_started(0);
    slot.on_batch(batch(0, 0..groups), &ById);
    assert!(matches!(
        commands(&mut slot, &ById)[..],
        [Command::Append { .. }]
    ));
    slot.on_committed(1);
    commands(&mut slot, &ById);
    slot.on_inputs_finished(false);
    let mut fired = Vec::new();
    let mut position = 1;
    loop {
        let c = commands(&mut slot, &ById);
        match slot.want(false) {
            Want::Commit => {
                assert!(
                    c.iter().all(|c| matches!(c, Command::Append { .. })),
                    "nothing of a completion record goes out before its commit"
                );
                position += 1;
                slot.on_committed(position);
                let delivered = commands(&mut slot, &ById);
                let Some(Command::Deliver(step)) = delivered.first() else {
                    panic!("a committed completion record is delivered")
                };
                fired.push(step.firings.len());
                match &delivered[1..] {
                    // Then the next record is appended, or, after the last, the final flush.
                    [Command::Append { .. }] => continue,
                    [Command::Flush] => {
                        assert_eq!(slot.want(false), Want::Done);
                        break;
                    }
                    other => panic!("after a completion record: {other:?}"),
                }
            }
            Want::Done => {
                assert!(matches!(c[..], [Command::Flush]));
                break;
            }
            other => panic!("completion waits for {other:?}"),
        }
    }
    assert_eq!(
        fired.iter().sum::<usize>(),
        groups as usize,
        "every group fires once"
    );
    assert!(fired.len() >= 2, "in more than one record: {fired:?}");
    assert!(
        fired.iter().all(|&n| n <= super::COMPLETION_FIRINGS),
        "{fired:?}"
    );
}

#[test]
fn records_carry_the_run_epoch_and_stale_owners_records_are_fenced_at_recovery() {
    let mut stale = BatchRecord {
        epoch: 1,
        ..Default::default()
    };
    let mut op = operator();
    stale.transitions = op
        .on_segment(&segment(Some(9), 0), &Value::Null)
        .unwrap()
        .transitions;
    let entries = vec![
        (0, encode_record(&SlotRecord::Owner { epoch: 1 })),
        (1, encode_record(&SlotRecord::Owner { epoch: 2 })),
        // Written by the run of epoch 1 after the run of epoch 2 took over: fenced off.
        (2, encode_record(&SlotRecord::Batch(stale))),
        (3, encode_record(&SlotRecord::Owner { epoch: 3 })),
    ];
    let mut slot = Slot::new(operator(), config(true, true, 3));
    let recovered = slot.on_recovered(None, &entries).unwrap();
    assert_eq!((recovered.fenced, count(slot.operator())), (1, 0));
    slot.on_started(0);
    slot.on_batch(batch(0, [1]), &NoGroup);
    let c = commands(&mut slot, &NoGroup);
    let [Command::Append { bytes, .. }] = &c[..] else {
        panic!("one record: {c:?}")
    };
    let SlotRecord::Batch(record) = decode_record(bytes).unwrap() else {
        panic!("a batch record")
    };
    assert_eq!(record.epoch, 3);
    assert_eq!(record.inputs, vec![(0, 0)]);
}
