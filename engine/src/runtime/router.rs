//! Where a peer's segments go: flow conditions pick the downstream tasks, a grouped task
//! gets each key on one peer, rejected segments go to the error output; batches are sent
//! per destination peer with the sender's mark and the acks they derive from.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::ack::HeldAcks;
use super::context::{dedup_field, panic_message, PeerContext};
use super::error::RunError;
use super::message::{Mark, Msg};
use super::progress::{Progress, SlotCounters};
use super::rejections::{ErrorFile, Rejection};
use super::routing::{key_hash, key_slot, FlowPlan};
use crate::division::Division;
use crate::job::{GroupKey, Unmatched};
use crate::registry::{GroupFn, Registry};
use crate::segment::Segment;

/// How segments are spread over one downstream task's peers.
enum Spread {
    RoundRobin(usize),
    Key(GroupKey),
    Fn(GroupFn),
}

struct Destination {
    senders: Vec<mpsc::Sender<Msg>>,
    spread: Spread,
    /// How the task's key groups are divided among its peers (keyed spreads).
    division: Division,
    buffers: Vec<Vec<Segment>>,
    /// The last mark each peer was sent.
    sent: Vec<Mark>,
}

/// Routes one peer's output to its downstream peers, the error task and the error file.
pub(super) struct Router {
    task: String,
    sender: usize,
    registry: Registry,
    plan: FlowPlan,
    /// Downstream tasks in workflow order, then the error task (if it is not downstream).
    destinations: Vec<Destination>,
    names: Vec<String>,
    error_destination: Option<usize>,
    error_file: ErrorFile,
    /// This peer wrote rejections to the error file since it last made them durable.
    errors_written: bool,
    /// The job's `unmatched: "error"`: segments no flow condition matches are rejected.
    unmatched_to_errors: bool,
    progress: Arc<Progress>,
    /// This peer's counters (segments out, rejections, backpressure, watermark).
    counters: Arc<SlotCounters>,
}

impl Router {
    pub(super) fn new(ctx: &PeerContext) -> Self {
        let downstream: Vec<String> = ctx
            .job
            .downstream(&ctx.task.name)
            .into_iter()
            .map(str::to_owned)
            .collect();
        let plan = FlowPlan::new(&ctx.task.name, downstream.clone(), &ctx.job.flow_conditions);
        let destinations = ctx
            .targets
            .iter()
            .map(|name| {
                let senders = ctx.topology.senders[name].clone();
                let spec = ctx.job.task(name).expect("validated");
                let spread = match (&spec.group_by_key, &spec.group_by_fn) {
                    (Some(k), _) => Spread::Key(k.clone()),
                    (None, Some(f)) => {
                        Spread::Fn(ctx.registry.group_fn(f).expect("validated").clone())
                    }
                    // With exactly-once state, a windowed task without grouping gets each
                    // segment on the peer its uniqueness id hashes to, so a segment read again
                    // after a restart meets the dedup filter that saw it.
                    (None, None)
                        if ctx.state.is_some() && dedup_field(&ctx.job, spec).is_some() =>
                    {
                        Spread::Key(GroupKey::One(
                            dedup_field(&ctx.job, spec).expect("checked").to_owned(),
                        ))
                    }
                    // Start each sender at a different peer so load spreads from the first batch.
                    (None, None) => Spread::RoundRobin(ctx.peer),
                };
                let n = senders.len();
                let division = ctx.topology.division(name, n, ctx.job.key_groups());
                Destination {
                    senders,
                    spread,
                    division,
                    buffers: vec![Vec::new(); n],
                    sent: vec![Mark::default(); n],
                }
            })
            .collect();
        let error_destination = ctx
            .error_task
            .as_ref()
            .and_then(|e| ctx.targets.iter().position(|t| t == e));
        Router {
            task: ctx.task.name.clone(),
            sender: ctx.id(),
            registry: ctx.registry.clone(),
            plan,
            destinations,
            names: ctx.targets.clone(),
            error_destination,
            error_file: ctx.error_file.clone(),
            errors_written: false,
            unmatched_to_errors: ctx.job.unmatched == Some(Unmatched::Error),
            progress: ctx.progress.clone(),
            counters: ctx.counters.clone(),
        }
    }

    /// Puts a segment the task produced into the buffers of its destinations.
    pub(super) fn route(&mut self, segment: Segment) -> Result<(), RunError> {
        if self.plan.unconditional() {
            // Every downstream task, nothing excluded (what the plan's route would say).
            let n = self.plan.downstream_len();
            if n == 0 {
                return Ok(());
            }
            for d in 0..n - 1 {
                self.place_one(segment.clone(), d, &[])?;
            }
            return self.place_one(segment, n - 1, &[]);
        }
        let route = self
            .plan
            .route(&self.registry, &segment, false)
            .expect("successful segments always get a route");
        if !route.matched {
            return self.unmatched(segment);
        }
        self.place(segment, route.destinations)
    }

    /// A segment that matched none of the task's flow conditions: counted, and sent to the
    /// error output if the job asks for it (`unmatched: "error"`).
    fn unmatched(&mut self, segment: Segment) -> Result<(), RunError> {
        self.progress.unmatched.fetch_add(1, Ordering::Relaxed);
        if self.unmatched_to_errors {
            let reason = format!(
                "matched none of the flow conditions of task \"{}\"",
                self.task
            );
            return self.reject(Rejection::segment(&self.task, reason, segment));
        }
        Ok(())
    }

    pub(super) fn place(
        &mut self,
        segment: Segment,
        destinations: Vec<(usize, Vec<String>)>,
    ) -> Result<(), RunError> {
        let n = destinations.len();
        let mut segment = Some(segment);
        for (i, (d, exclude)) in destinations.into_iter().enumerate() {
            let s = if i + 1 == n {
                segment.take().expect("moved once")
            } else {
                segment.clone().expect("still here")
            };
            self.place_one(s, d, &exclude)?;
        }
        Ok(())
    }

    /// Puts a segment (less the `exclude`d fields) into the buffer of the peer of destination
    /// `d` that takes it, or rejects it if its key cannot be computed.
    fn place_one(&mut self, mut s: Segment, d: usize, exclude: &[String]) -> Result<(), RunError> {
        for k in exclude {
            s.remove(k);
        }
        let dest = &mut self.destinations[d];
        let n_peers = dest.senders.len();
        let peer = match &mut dest.spread {
            Spread::RoundRobin(next) => {
                *next = (*next + 1) % n_peers;
                Ok(*next)
            }
            Spread::Key(k) => key_slot(k, &s, &dest.division),
            Spread::Fn(f) => match catch_unwind(AssertUnwindSafe(|| f(&s))) {
                Ok(key) => Ok(dest.division.slot_of_hash(key_hash(&key))),
                Err(p) => Err(format!("group_by_fn panicked: {}", panic_message(&p))),
            },
        };
        match peer {
            Ok(peer) => {
                dest.buffers[peer].push(s);
                Ok(())
            }
            Err(reason) => self.reject(Rejection::segment(&self.task, reason, s)),
        }
    }

    /// The index of destination task `name`.
    pub(super) fn destination_of(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// Sends a segment the task's function failed on to a thrown-exception route, the error
    /// task or the error file.
    pub(super) fn fail(&mut self, segment: Segment, reason: String) -> Result<(), RunError> {
        let rejection = Rejection::segment(&self.task, reason, segment);
        let record = rejection.to_segment();
        if let Some(route) = self.plan.route(&self.registry, &record, true) {
            return self.place(record, route.destinations);
        }
        self.reject(rejection)
    }

    /// Sends a rejection to the error task, or else the error file.
    pub(super) fn reject(&mut self, rejection: Rejection) -> Result<(), RunError> {
        self.counters.rejected.fetch_add(1, Ordering::Relaxed);
        self.progress.note_rejection(&rejection);
        match self.error_destination {
            Some(d) => {
                let record = rejection.to_segment();
                self.error_file.count_only();
                self.place(record, vec![(d, Vec::new())])
            }
            None => {
                self.errors_written = true;
                self.error_file
                    .write(&rejection)
                    .map_err(RunError::ErrorOutput)
            }
        }
    }

    /// Makes the rejections this peer wrote to the error file durable (written to the OS). Call
    /// before releasing the acks of the batch they came from, so that an input never commits
    /// past a rejection a crash could lose. (Rejections sent to an error task travel with the
    /// batch's acks instead: that task acknowledges them once written.)
    pub(super) fn errors_durable(&mut self) -> Result<(), RunError> {
        if std::mem::take(&mut self.errors_written) {
            self.error_file.flush().map_err(RunError::ErrorOutput)?;
        }
        Ok(())
    }

    /// Sends every buffered segment, with the mark (watermark and idleness) and the acks of the
    /// batch they came from. Peers that got nothing still learn a mark that changed.
    pub(super) async fn flush(&mut self, mark: Mark, acks: &HeldAcks) {
        self.counters.set_watermark(mark.watermark);
        for dest in &mut self.destinations {
            for (peer, buffer) in dest.buffers.iter_mut().enumerate() {
                let moved = dest.sent[peer] != mark;
                if buffer.is_empty() && !moved {
                    continue;
                }
                dest.sent[peer] = mark;
                let msg = Msg::Batch {
                    sender: self.sender,
                    // The next batch likely fills about as much: spare the buffer's regrowth.
                    segments: std::mem::replace(buffer, Vec::with_capacity(buffer.len())),
                    mark,
                    acks: acks.share(),
                };
                if let Msg::Batch { segments, .. } = &msg {
                    self.counters
                        .segments_out
                        .fetch_add(segments.len() as u64, Ordering::Relaxed);
                }
                // A closed receiver means that peer failed; the job reports its error. (The lost
                // message's acks are dropped unreleased, so its input batch is never committed.)
                // A full one is backpressure: the wait is counted.
                if let Err(mpsc::error::TrySendError::Full(msg)) = dest.senders[peer].try_send(msg)
                {
                    let waiting = std::time::Instant::now();
                    let _ = dest.senders[peer].send(msg).await;
                    self.counters.observe_backpressure(waiting.elapsed());
                }
            }
        }
    }

    /// Tells every destination peer this peer is done.
    pub(super) async fn finish(&mut self) {
        for dest in &self.destinations {
            for s in &dest.senders {
                let _ = s
                    .send(Msg::Done {
                        sender: self.sender,
                    })
                    .await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::job::Job;
    use crate::runtime::topology::{Layout, Receivers, Topology};
    use crate::segment::Value;

    /// `check` sends adults (less their `secret`) to `adults`, the others to `minors`, and
    /// everything to `by_name` (3 peers, grouped by `name`); `unmatched` and `errors` are the
    /// job's, as JSON members (or empty).
    fn job(extra: &str) -> Job {
        Job::from_json_str(&format!(
            r#"{{
              "workflow": [["in", "check"], ["check", "adults"], ["check", "minors"],
                           ["check", "by_name"]],
              "catalog": [
                {{"name": "in", "type": "input", "plugin": "sardonyx/jsonl"}},
                {{"name": "check", "type": "function", "fn": "sardonyx/identity"}},
                {{"name": "adults", "type": "output", "plugin": "sardonyx/null"}},
                {{"name": "minors", "type": "output", "plugin": "sardonyx/null"}},
                {{"name": "by_name", "type": "output", "plugin": "sardonyx/null",
                  "group_by_key": "name", "n_peers": 3}},
                {{"name": "rejected", "type": "output", "plugin": "sardonyx/null"}}
              ],
              "flow_conditions": [
                {{"from": "check", "to": ["adults"], "predicate": "test/adult",
                  "exclude_keys": ["secret"]}},
                {{"from": "check", "to": ["minors"], "predicate": "test/minor"}},
                {{"from": "check", "to": ["by_name"], "predicate": "test/named"}}
              ]{extra}
            }}"#
        ))
        .unwrap()
    }

    fn registry() -> Registry {
        let age = |s: &Segment| s.get("age").and_then(Value::as_i64);
        let mut r = Registry::new();
        r.register_predicate("test/adult", move |s, _| age(s).is_some_and(|a| a >= 18))
            .register_predicate("test/minor", move |s, _| age(s).is_some_and(|a| a < 18))
            .register_predicate("test/named", |s, _| s.get("age").is_some());
        r
    }

    /// A router for the one peer of `check`, the receivers of every task, and the error file's
    /// directory.
    struct Bench {
        router: Router,
        receivers: Receivers,
        progress: Arc<Progress>,
        errors: std::path::PathBuf,
        _dir: tempfile::TempDir,
    }

    fn bench(job: Job) -> Bench {
        let dir = tempfile::tempdir().unwrap();
        let errors = dir.path().join("errors.jsonl");
        let error_task = match &job.errors {
            Some(crate::job::ErrorsTarget::Task(t)) => Some(t.clone()),
            _ => None,
        };
        let layout = Layout::of(&job, None, error_task.as_deref());
        let (topology, receivers) =
            Topology::new(&layout, 64, CancellationToken::new(), layout.input_peers);
        let progress = Arc::new(Progress::default());
        let task = job.task("check").unwrap().clone();
        let ctx = PeerContext {
            registry: registry(),
            peer: 0,
            n_peers: 1,
            topology: Arc::new(topology),
            targets: layout.targets["check"].clone(),
            error_task,
            error_file: ErrorFile::new(&errors, progress.rejected.clone()),
            progress: progress.clone(),
            counters: progress.slot("check", 0),
            syncs: Arc::default(),
            state: None,
            task,
            job: Arc::new(job),
        };
        Bench {
            router: Router::new(&ctx),
            receivers,
            progress,
            errors,
            _dir: dir,
        }
    }

    fn person(name: &str, age: Option<i64>) -> Segment {
        let mut s = Segment::with_capacity(3);
        s.insert("name", Value::from(name));
        if let Some(age) = age {
            s.insert("age", Value::from(age));
        }
        s.insert("secret", Value::from(1));
        s
    }

    /// Everything queued for peer `peer` of `task`: (sender, segments, mark) per batch.
    fn received(b: &mut Bench, task: &str, peer: usize) -> Vec<(usize, Vec<Segment>, Mark)> {
        let mut out = Vec::new();
        while let Ok(msg) = b.receivers.get_mut(task).unwrap()[peer].try_recv() {
            match msg {
                Msg::Batch {
                    sender,
                    segments,
                    mark,
                    ..
                } => out.push((sender, segments, mark)),
                Msg::Done { .. } => panic!("unexpected Done"),
            }
        }
        out
    }

    fn segments_of(b: &mut Bench, task: &str, peer: usize) -> Vec<Segment> {
        received(b, task, peer)
            .into_iter()
            .flat_map(|(_, s, _)| s)
            .collect()
    }

    /// Flow conditions pick the destinations; `exclude_keys` holds for its destination only;
    /// batches carry the sender's id (its global peer id) and mark.
    #[tokio::test]
    async fn flow_conditions_pick_the_destinations_of_each_segment() {
        let mut b = bench(job(""));
        b.router.route(person("ann", Some(30))).unwrap();
        b.router.route(person("bo", Some(7))).unwrap();
        let mark = Mark {
            watermark: Some(5),
            idle: false,
        };
        b.router.flush(mark, &HeldAcks::default()).await;
        let adults = received(&mut b, "adults", 0);
        let mut ann = person("ann", Some(30));
        ann.remove("secret");
        assert_eq!(adults, vec![(1, vec![ann], mark)], "check's peer is peer 1");
        assert_eq!(
            segments_of(&mut b, "minors", 0),
            vec![person("bo", Some(7))]
        );
        let grouped: usize = (0..3)
            .map(|p| segments_of(&mut b, "by_name", p).len())
            .sum();
        assert_eq!(grouped, 2, "by_name keeps every field");
    }

    /// A grouped task gets every segment of one key on one peer, and the keys spread.
    #[tokio::test]
    async fn a_grouped_destination_gets_each_key_on_one_peer() {
        let mut b = bench(job(""));
        let names: Vec<String> = (0..30).map(|i| format!("name-{i}")).collect();
        for round in 0..3 {
            for n in &names {
                b.router.route(person(n, Some(round))).unwrap();
            }
            b.router.flush(Mark::default(), &HeldAcks::default()).await;
        }
        let mut peer_of = std::collections::BTreeMap::new();
        for peer in 0..3 {
            for s in segments_of(&mut b, "by_name", peer) {
                let name = format!("{:?}", s.get("name").unwrap());
                assert_eq!(
                    *peer_of.entry(name).or_insert(peer),
                    peer,
                    "one key, one peer"
                );
            }
        }
        assert_eq!(peer_of.len(), 30);
        let used: BTreeSet<usize> = peer_of.values().copied().collect();
        assert!(used.len() > 1, "keys spread over peers: {used:?}");
    }

    /// A segment no condition matches is counted and dropped by default, rejected with
    /// `unmatched: "error"`; a segment without its group key is rejected; rejections go to the
    /// error file, durable once `errors_durable` returns.
    #[tokio::test]
    async fn unmatched_and_keyless_segments_go_to_the_error_file() {
        let mut dropped = bench(job(""));
        dropped.router.route(person("cy", None)).unwrap();
        assert_eq!(dropped.progress.unmatched.load(Ordering::Relaxed), 1);
        assert_eq!(dropped.progress.rejected.load(Ordering::Relaxed), 0);

        let mut b = bench(job(r#", "unmatched": "error""#));
        b.router.route(person("cy", None)).unwrap();
        let mut keyless = person("x", Some(40));
        keyless.remove("name");
        b.router.route(keyless).unwrap();
        b.router.errors_durable().unwrap();
        assert_eq!(b.progress.unmatched.load(Ordering::Relaxed), 1);
        assert_eq!(b.progress.rejected.load(Ordering::Relaxed), 2);
        let unmatched = "matched none of the flow conditions of task \"check\"";
        let mut keyless = person("x", Some(40));
        keyless.remove("name");
        let lines = [
            Rejection::segment("check", unmatched, person("cy", None)),
            Rejection::segment("check", "group_by_key field \"name\" is missing", keyless),
        ]
        .map(|r| format!("{}\n", r.to_segment()));
        assert_eq!(std::fs::read_to_string(&b.errors).unwrap(), lines.concat());
        b.router.flush(Mark::default(), &HeldAcks::default()).await;
        let mut adult = person("x", Some(40));
        adult.remove("name");
        adult.remove("secret");
        assert_eq!(segments_of(&mut b, "adults", 0), vec![adult]);
    }

    /// The peer's own counters: segments sent per destination peer, each rejection (with its
    /// reason among the recent ones), the watermark it sent, and a send that found a full queue
    /// (backpressure) counted as a wait.
    #[tokio::test]
    async fn the_slot_counters_follow_what_the_router_sends_and_rejects() {
        let mut b = bench(job(r#", "unmatched": "error""#));
        // ann: adults and by_name; bo: minors and by_name; cy: unmatched, rejected.
        for s in [
            person("ann", Some(30)),
            person("bo", Some(7)),
            person("cy", None),
        ] {
            b.router.route(s).unwrap();
        }
        let mark = Mark {
            watermark: Some(1_700_000_000_000),
            idle: false,
        };
        b.router.flush(mark, &HeldAcks::default()).await;
        let c = b.progress.slot("check", 0);
        assert_eq!(c.segments_out.load(Ordering::Relaxed), 4);
        assert_eq!(c.rejected.load(Ordering::Relaxed), 1);
        assert_eq!(c.watermark(), Some(1_700_000_000_000));
        assert_eq!(c.backpressure_waits.load(Ordering::Relaxed), 0);
        let recent = b.progress.recent_rejections();
        assert_eq!(recent.len(), 1);
        assert_eq!(recent[0].task, "check");
        assert_eq!(
            recent[0].reason,
            "matched none of the flow conditions of task \"check\""
        );
        assert_eq!(recent[0].what, person("cy", None).to_string());

        // `minors` has one peer and a queue of 64 messages, one taken by the flush above: fill
        // it (the same mark: no message to the other peers but the `by_name` peer of "bo").
        let minors = b.progress.slot("minors", 0);
        assert!(Arc::ptr_eq(&minors, &b.progress.slot("minors", 0)));
        for age in 0..63 {
            b.router.route(person("bo", Some(age % 10))).unwrap();
            b.router.flush(mark, &HeldAcks::default()).await;
        }
        assert_eq!(c.backpressure_waits.load(Ordering::Relaxed), 0);
        // One more waits for `minors` (then finds room at `by_name`, drained meanwhile).
        let mut minors_rx = b.receivers.remove("minors").unwrap().remove(0);
        let mut by_name = b.receivers.remove("by_name").unwrap();
        b.router.route(person("bo", Some(1))).unwrap();
        let drain = async {
            minors_rx.recv().await.unwrap();
            for rx in &mut by_name {
                let _ = rx.try_recv();
            }
        };
        let none = HeldAcks::default();
        tokio::join!(b.router.flush(mark, &none), drain);
        assert_eq!(c.backpressure_waits.load(Ordering::Relaxed), 1);
        assert_eq!(c.segments_out.load(Ordering::Relaxed), 4 + 64 * 2);
    }

    /// With an error task, a rejection travels to it as a record (and is counted), and the
    /// error file stays unwritten.
    #[tokio::test]
    async fn with_an_error_task_rejections_go_to_it() {
        let mut b = bench(job(
            r#", "unmatched": "error", "errors": {"task": "rejected"}"#,
        ));
        b.router.route(person("cy", None)).unwrap();
        b.router.errors_durable().unwrap();
        b.router.flush(Mark::default(), &HeldAcks::default()).await;
        let unmatched = "matched none of the flow conditions of task \"check\"";
        let expected = Rejection::segment("check", unmatched, person("cy", None)).to_segment();
        assert_eq!(segments_of(&mut b, "rejected", 0), vec![expected]);
        assert_eq!(b.progress.rejected.load(Ordering::Relaxed), 1);
        assert!(!b.errors.exists());
    }

    /// A peer that got nothing still learns a mark that changed, once; `finish` tells every
    /// destination peer this peer is done.
    #[tokio::test]
    async fn a_changed_mark_reaches_every_peer_once_and_finish_sends_done() {
        let mut b = bench(job(""));
        let mark = Mark {
            watermark: Some(9),
            idle: true,
        };
        b.router.flush(mark, &HeldAcks::default()).await;
        b.router.flush(mark, &HeldAcks::default()).await;
        for (task, peer) in [
            ("adults", 0),
            ("minors", 0),
            ("by_name", 0),
            ("by_name", 1),
            ("by_name", 2),
        ] {
            assert_eq!(received(&mut b, task, peer), vec![(1, Vec::new(), mark)]);
        }
        b.router.finish().await;
        for peer in 0..3 {
            let rx = &mut b.receivers.get_mut("by_name").unwrap()[peer];
            assert!(matches!(rx.try_recv(), Ok(Msg::Done { sender: 1 })));
        }
    }
}
