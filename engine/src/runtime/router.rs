//! Where a peer's segments go: flow conditions pick the downstream tasks, a grouped task
//! gets each key on one peer, rejected segments go to the error output; batches are sent
//! per destination peer with the sender's mark and the acks they derive from.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::ack::HeldAcks;
use super::context::{panic_message, PeerContext};
use super::rejections::{ErrorFile, Rejection};
use super::routing::{hash_peer, key_hash, key_peer, FlowPlan};
use super::worker_peer::dedup_field;
use super::{Mark, Msg, Progress, RunError};
use crate::job::{GroupKey, Unmatched};
use crate::registry::{GroupFn, Registry};
use crate::segment::Segment;

/// How segments are spread over one downstream task's peers.
pub(crate) enum Spread {
    RoundRobin(usize),
    Key(GroupKey),
    Fn(GroupFn),
}

pub(crate) struct Destination {
    senders: Vec<mpsc::Sender<Msg>>,
    spread: Spread,
    buffers: Vec<Vec<Segment>>,
    /// The last mark each peer was sent.
    sent: Vec<Mark>,
}

/// Routes one peer's output to its downstream peers, the error task and the error file.
pub(crate) struct Router {
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
    /// The job's `key_groups`: keys go to the peer that owns their key group.
    key_groups: usize,
    progress: Arc<Progress>,
}

impl Router {
    pub(crate) fn new(ctx: &PeerContext) -> Self {
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
                Destination {
                    senders,
                    spread,
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
            key_groups: ctx.job.key_groups(),
            progress: ctx.progress.clone(),
        }
    }

    /// Puts a segment the task produced into the buffers of its destinations.
    pub(crate) fn route(&mut self, segment: Segment) -> Result<(), RunError> {
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
    pub(crate) fn unmatched(&mut self, segment: Segment) -> Result<(), RunError> {
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

    pub(crate) fn place(
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
    pub(crate) fn place_one(
        &mut self,
        mut s: Segment,
        d: usize,
        exclude: &[String],
    ) -> Result<(), RunError> {
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
            Spread::Key(k) => key_peer(k, &s, n_peers, self.key_groups),
            Spread::Fn(f) => match catch_unwind(AssertUnwindSafe(|| f(&s))) {
                Ok(key) => Ok(hash_peer(key_hash(&key), n_peers, self.key_groups)),
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
    pub(crate) fn destination_of(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// Sends a segment the task's function failed on to a thrown-exception route, the error
    /// task or the error file.
    pub(crate) fn fail(&mut self, segment: Segment, reason: String) -> Result<(), RunError> {
        let rejection = Rejection::segment(&self.task, reason, segment);
        let record = rejection.to_segment();
        if let Some(route) = self.plan.route(&self.registry, &record, true) {
            return self.place(record, route.destinations);
        }
        self.reject(rejection)
    }

    /// Sends a rejection to the error task, or else the error file.
    pub(crate) fn reject(&mut self, rejection: Rejection) -> Result<(), RunError> {
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
    pub(crate) fn errors_durable(&mut self) -> Result<(), RunError> {
        if std::mem::take(&mut self.errors_written) {
            self.error_file.flush().map_err(RunError::ErrorOutput)?;
        }
        Ok(())
    }

    /// Sends every buffered segment, with the mark (watermark and idleness) and the acks of the
    /// batch they came from. Peers that got nothing still learn a mark that changed.
    pub(crate) async fn flush(&mut self, mark: Mark, acks: &HeldAcks) {
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
                // A closed receiver means that peer failed; the job reports its error. (The lost
                // message's acks are dropped unreleased, so its input batch is never committed.)
                let _ = dest.senders[peer].send(msg).await;
            }
        }
    }

    /// Tells every destination peer this peer is done.
    pub(crate) async fn finish(&mut self) {
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
