//! A job's peers spread over the processes of a cluster (DESIGN §6–§7): which peers of a run
//! are here ([`Placement`]), and the bridges that carry batches to and from the peers that are
//! elsewhere, over the process's [`Messenger`].
//!
//! A run of a job has the same topology in every process (one channel per peer of every task,
//! `topology`); a process spawns only its own peers. What its peers send to a peer of
//! another process goes into that peer's channel here, and a **forwarder** sends it on: each
//! batch becomes a messaging [`Batch`] to the peer's slot in the owner's process (waiting for
//! the slot's credit, so backpressure crosses processes), with one ack edge whose tree this
//! process keeps; the batch's own acks ([`HeldAcks`]) are held in [`RemoteAcks`] until the
//! receiving process acknowledges the tree. A local peer with upstream peers elsewhere gets a
//! **receiver**: the slot's messaging queue, whose batches enter the peer's channel holding a
//! local ack token; when the peer (and everything it derived from the batch) has finished with
//! it, the token reports and the receiver acks the sender's tree. So a batch is acknowledged
//! across processes exactly when it would be in one: once its outputs are durable.
//!
//! A peer whose slot has **completed** (it finished in an earlier run and everything it sent
//! was acknowledged) runs nowhere: its downstream peers here count it as done from the start,
//! and what a re-run upstream peer sends to it is acknowledged and dropped (it applied all of
//! it before it completed).
//!
//! A run's slot addresses carry the run's name (`job@version`), so messages of a superseded run
//! never reach the next one (messaging drops them once the run's slots closed).
//!
//! **Lost batches.** A batch lost between two live processes (a connection that dropped with
//! it) leaves its ack tree pending: [`RemoteAcks::run`] reports each run with a tree pending
//! past the messenger's `pending_timeout`, and the process asks the cluster to restart the job
//! (`restart_job`), whose next run replays the batch from its input's committed position. The
//! expired batch's acks stay held until then, so its run can neither commit past it nor
//! complete. Batches carry their number per (sender, slot), and a `Done` the count sent: a
//! receiver that sees a gap takes nothing more from that sender (what it applied past the gap
//! would be ahead of the replay: its watermark past the lost segments, which would come late)
//! and never counts it as finished (its slot would complete without the lost batch, and a
//! completed slot drops what is replayed to it).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sardonyx_connectors::Positions;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::ack::{self, HeldAcks};
use super::job_log::TaskLedgers;
use super::message::Msg;
use super::topology::Layout;
use crate::division::Division;
use crate::messaging::{
    random_id, AckEdge, Batch, Delivery, Done, Messenger, ProcessId, Sender, SlotAddress,
    SlotReceiver,
};

/// Where one peer (slot) of a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotHome {
    /// In this process.
    Here,
    /// In another process.
    There(ProcessId),
    /// Nowhere: it completed in an earlier run.
    Completed,
}

/// Where the peers of one run of a job are, and how to reach the others.
#[derive(Clone)]
pub struct Placement {
    /// This process's messenger.
    pub messenger: Messenger,
    /// The run's name in slot addresses (`job@version`: every process of the run uses the
    /// same).
    pub run: String,
    /// The run's version: the position of the coordination log entry that started it.
    pub version: u64,
    /// Per task, where each of its slots is (the length is the task's peer count).
    pub homes: BTreeMap<String, Vec<SlotHome>>,
    /// The division of each keyed task's key groups among its slots that is not the
    /// contiguous one (a task the cluster re-divided while it ran).
    pub divisions: BTreeMap<String, Division>,
    /// Per windowed task, the layouts of its ledgers (current and past) in the replica.
    pub ledgers: BTreeMap<String, TaskLedgers>,
    /// The process's table of batches sent elsewhere and not yet acknowledged.
    pub acks: Arc<RemoteAcks>,
}

impl std::fmt::Debug for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Placement")
            .field("run", &self.run)
            .field("homes", &self.homes)
            .finish_non_exhaustive()
    }
}

impl Placement {
    /// Where peer `peer` of `task` is (a task or slot not in the placement is here).
    pub(super) fn home(&self, task: &str, peer: usize) -> SlotHome {
        self.homes
            .get(task)
            .and_then(|h| h.get(peer))
            .copied()
            .unwrap_or(SlotHome::Here)
    }

    fn address(&self, task: &str, peer: usize) -> SlotAddress {
        SlotAddress::new(self.run.clone(), task, peer as u32)
    }
}

/// Batches this process sent to other processes and not yet acknowledged: per ack-tree root,
/// the acks the batch held here (released when the tree completes). One per process, shared
/// by every run ([`RemoteAcks::run`] collects completed trees from the messenger).
#[derive(Default)]
pub struct RemoteAcks {
    held: Mutex<HashMap<u64, Held>>,
    next_run: AtomicU64,
    /// The name (`job@version`) of each run that has bridges here, by its number.
    names: Mutex<HashMap<u64, String>>,
}

/// The shortest pause between two looks for expired ack trees.
const MIN_EXPIRY_CHECK: Duration = Duration::from_millis(10);

struct Held {
    run: u64,
    acks: HeldAcks,
    /// Dropped when the batch is acknowledged: its forwarder waits for all of them.
    _outstanding: mpsc::Sender<()>,
}

impl RemoteAcks {
    /// An empty table.
    pub fn new() -> Arc<RemoteAcks> {
        Arc::new(RemoteAcks::default())
    }

    /// Releases the acks of every tree that completes at `messenger`, and sends on `expired`
    /// the name of each run (`job@version`) with a batch whose tree stayed pending past the
    /// messenger's `pending_timeout` (looked for every quarter of it), until the messenger shuts
    /// down (run it as a task for the process's life). An expired batch's acks stay held
    /// (poisoned when its run ends): its run waits for the restart.
    pub async fn run(
        self: Arc<Self>,
        messenger: Messenger,
        expired: mpsc::UnboundedSender<String>,
    ) {
        let timeout = messenger.ack_table().trees().pending_timeout();
        let mut check = tokio::time::interval((timeout / 4).max(MIN_EXPIRY_CHECK));
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            let roots = tokio::select! {
                roots = messenger.completed_trees() => roots,
                _ = check.tick() => {
                    let roots = messenger.ack_table().expired(Instant::now());
                    for run in self.runs_of(&roots) {
                        tracing::warn!(
                            run = %run, timeout_ms = timeout.as_millis() as u64,
                            "a batch sent to another process was not acknowledged within \
                             pending_timeout: its run is to be restarted to replay it"
                        );
                        let _ = expired.send(run);
                    }
                    continue;
                }
                () = messenger.stopped() => return,
            };
            let released: Vec<Held> = {
                let mut held = self.held.lock().expect("remote acks");
                roots.iter().filter_map(|r| held.remove(r)).collect()
            };
            for h in released {
                h.acks.release();
            }
        }
    }

    /// Batches sent and not yet acknowledged.
    pub fn pending(&self) -> usize {
        self.held.lock().expect("remote acks").len()
    }

    fn new_run(&self, name: &str) -> u64 {
        let run = self.next_run.fetch_add(1, Ordering::Relaxed);
        self.names
            .lock()
            .expect("run names")
            .insert(run, name.to_owned());
        run
    }

    /// The names of the runs that hold batches with these roots (each once).
    fn runs_of(&self, roots: &[u64]) -> BTreeSet<String> {
        if roots.is_empty() {
            return BTreeSet::new();
        }
        // The same order as `hold` and `forget_run`: names, then held.
        let names = self.names.lock().expect("run names");
        let held = self.held.lock().expect("remote acks");
        roots
            .iter()
            .filter_map(|r| held.get(r))
            .filter_map(|h| names.get(&h.run).cloned())
            .collect()
    }

    /// Holds a batch's acks until its tree completes — unless its run was forgotten already (a
    /// forwarder still running for an instant after its run was aborted): its acks are then
    /// dropped at once (poisoned), since nothing would ever release them and the run's input
    /// would wait for them for ever.
    fn hold(&self, root: u64, run: u64, acks: HeldAcks, outstanding: mpsc::Sender<()>) {
        let names = self.names.lock().expect("run names");
        if !names.contains_key(&run) {
            drop(names);
            drop((acks, outstanding));
            return;
        }
        self.held.lock().expect("remote acks").insert(
            root,
            Held {
                run,
                acks,
                _outstanding: outstanding,
            },
        );
    }

    /// Drops what run `run` still holds: its batches will never be acknowledged (their acks
    /// are poisoned, so nothing is committed past them).
    fn forget_run(&self, run: u64) {
        let dropped: Vec<Held> = {
            // Under the names lock: a `hold` for this run either comes before (and is dropped
            // here) or sees the run forgotten.
            let mut names = self.names.lock().expect("run names");
            names.remove(&run);
            let mut held = self.held.lock().expect("remote acks");
            let roots: Vec<u64> = held
                .iter()
                .filter(|(_, h)| h.run == run)
                .map(|(r, _)| *r)
                .collect();
            roots.iter().filter_map(|r| held.remove(r)).collect()
        };
        drop(dropped);
    }
}

/// The bridges of one run in this process; dropping it stops them and drops what the run still
/// held for other processes.
pub(super) struct Bridges {
    tasks: JoinSet<()>,
    acks: Arc<RemoteAcks>,
    run: u64,
}

impl Drop for Bridges {
    fn drop(&mut self) {
        self.tasks.abort_all();
        self.acks.forget_run(self.run);
    }
}

impl Bridges {
    /// Waits until every bridge has finished: every forwarder's channel closed and its batches
    /// acknowledged, every receiver's remote senders done and its batches finished here.
    pub(super) async fn finished(&mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Starts the bridges of a run: a forwarder for every peer elsewhere (from its channel's
/// receiving end, taken out of `receivers`), a drain for every completed peer, a receiver for
/// every local peer with upstream peers elsewhere, and the `Done`s of completed upstream peers
/// for local peers. What is left in `receivers` is the local peers' own channels.
pub(super) fn start(
    placement: &Placement,
    layout: &Layout,
    senders: &BTreeMap<String, Vec<mpsc::Sender<Msg>>>,
    receivers: &mut BTreeMap<String, Vec<mpsc::Receiver<Msg>>>,
) -> Result<Bridges, crate::messaging::MessagingError> {
    let mut bridges = Bridges {
        tasks: JoinSet::new(),
        acks: placement.acks.clone(),
        run: placement.acks.new_run(&placement.run),
    };
    let names = Arc::new(PeerNames::from_layout(layout));
    let me = placement.messenger.process();
    for (task, rxs) in receivers.iter_mut() {
        for (peer, rx) in rxs.iter_mut().enumerate() {
            let (_, closed) = mpsc::channel(1);
            match placement.home(task, peer) {
                SlotHome::Here => {}
                SlotHome::There(process) => {
                    let rx = std::mem::replace(rx, closed);
                    bridges.tasks.spawn(forward(Forwarder {
                        rx,
                        to: process,
                        address: placement.address(task, peer),
                        names: names.clone(),
                        messenger: placement.messenger.clone(),
                        acks: placement.acks.clone(),
                        run: bridges.run,
                        me,
                    }));
                }
                SlotHome::Completed => {
                    let rx = std::mem::replace(rx, closed);
                    bridges.tasks.spawn(drain(rx));
                }
            }
        }
    }
    for (task, upstream) in &layout.upstream_peers {
        for (peer, tx) in senders[task].iter().enumerate() {
            if placement.home(task, peer) != SlotHome::Here {
                continue;
            }
            let tx = tx.clone();
            let mut remote = 0;
            for &up in upstream {
                let (up_task, up_peer) = names.name(up);
                match placement.home(up_task, up_peer) {
                    SlotHome::Here => {}
                    SlotHome::There(_) => remote += 1,
                    SlotHome::Completed => {
                        let tx = tx.clone();
                        bridges.tasks.spawn(async move {
                            let _ = tx.send(Msg::Done { sender: up }).await;
                        });
                    }
                }
            }
            if remote > 0 {
                let rx = placement
                    .messenger
                    .open_slot(placement.address(task, peer))?;
                bridges.tasks.spawn(receive(Receiver {
                    rx,
                    tx,
                    remote,
                    names: names.clone(),
                    messenger: placement.messenger.clone(),
                }));
            }
        }
    }
    Ok(bridges)
}

/// Peer ids (global in the job) to `(task, slot)` and back.
struct PeerNames {
    /// `(first peer id, task, peer count)` in id order.
    tasks: Vec<(usize, String, usize)>,
}

impl PeerNames {
    fn from_layout(layout: &Layout) -> PeerNames {
        let mut tasks: Vec<(usize, String, usize)> = layout
            .first_peer
            .iter()
            .map(|(t, &first)| (first, t.clone(), layout.peers[t]))
            .collect();
        tasks.sort();
        PeerNames { tasks }
    }

    fn name(&self, id: usize) -> (&str, usize) {
        let i = self.tasks.partition_point(|(first, ..)| *first <= id) - 1;
        let (first, task, _) = &self.tasks[i];
        (task, id - first)
    }

    fn id(&self, sender: &Sender) -> Option<usize> {
        self.tasks
            .iter()
            .find(|(_, t, n)| *t == sender.task && (sender.slot as usize) < *n)
            .map(|(first, ..)| first + sender.slot as usize)
    }
}

struct Forwarder {
    rx: mpsc::Receiver<Msg>,
    to: ProcessId,
    address: SlotAddress,
    names: Arc<PeerNames>,
    messenger: Messenger,
    acks: Arc<RemoteAcks>,
    run: u64,
    me: ProcessId,
}

/// Sends what local peers put into a remote peer's channel to its process; once every local
/// sender is gone, waits until every batch it sent is acknowledged.
async fn forward(mut f: Forwarder) {
    let (outstanding, mut all_acked) = mpsc::channel::<()>(1);
    // Batches sent per local sender (their `Done` says how many).
    let mut sent_by: HashMap<usize, u64> = HashMap::new();
    while let Some(msg) = f.rx.recv().await {
        let sent = match msg {
            Msg::Batch {
                sender,
                segments,
                mark,
                acks,
            } => {
                let root = loop {
                    let root = random_id();
                    if f.messenger.start_tree(root).is_ok() {
                        break root;
                    }
                };
                f.acks.hold(root, f.run, acks, outstanding.clone());
                let sent = sent_by.entry(sender).or_default();
                let seq = *sent;
                *sent += 1;
                let (task, slot) = f.names.name(sender);
                let batch = Batch {
                    to: f.address.clone(),
                    from: Sender::new(task, slot as u32),
                    segments,
                    mark,
                    acks: vec![AckEdge {
                        origin: f.me,
                        root,
                        id: root,
                    }],
                    seq,
                };
                f.messenger.send_batch(f.to, batch).await
            }
            Msg::Done { sender } => {
                let (task, slot) = f.names.name(sender);
                let done = Done {
                    to: f.address.clone(),
                    from: Sender::new(task, slot as u32),
                    batches: sent_by.get(&sender).copied().unwrap_or(0),
                };
                f.messenger.send_done(f.to, done).await
            }
        };
        if let Err(e) = sent {
            // The process is gone (or this one is shutting down): the run waits, holding its
            // senders back, until the cluster moves the slot and starts the next run.
            tracing::warn!(slot = %f.address, process = %f.to, error = %e,
                "cannot reach the process of a slot: this run waits for the slot to move");
            std::future::pending::<()>().await;
        }
    }
    drop(outstanding);
    let _ = all_acked.recv().await;
}

/// Acknowledges and drops what is sent to a completed peer.
async fn drain(mut rx: mpsc::Receiver<Msg>) {
    while let Some(msg) = rx.recv().await {
        if let Msg::Batch { acks, .. } = msg {
            acks.release();
        }
    }
}

struct Receiver {
    rx: SlotReceiver,
    tx: mpsc::Sender<Msg>,
    /// Upstream peers elsewhere that have not said `Done`.
    remote: usize,
    names: Arc<PeerNames>,
    messenger: Messenger,
}

/// Puts what other processes send to a local peer into its channel, each batch holding a local
/// token whose completion acks the sender's tree; ends once every remote sender is done and
/// every batch it delivered is finished.
async fn receive(mut r: Receiver) {
    let (mut issuer, mut done) = ack::channel(u32::MAX);
    let edges: Arc<Mutex<HashMap<u64, Vec<AckEdge>>>> = Arc::default();
    let acker = {
        let edges = edges.clone();
        let messenger = r.messenger.clone();
        tokio::spawn(async move {
            while let Some(d) = done.recv().await {
                let finished = edges.lock().expect("edges").remove(&d.seq);
                for e in finished.into_iter().flatten() {
                    if let Err(err) = messenger.send_ack(e.origin, e.root, e.id) {
                        tracing::debug!(error = %err, "an ack for a process that left");
                    }
                }
            }
        })
    };
    let slot = r.rx.slot().clone();
    // Batches taken per remote sender (the next one's expected number), and the senders from
    // which one was lost: nothing more from them is applied.
    let mut taken: HashMap<usize, u64> = HashMap::new();
    let mut broken: HashSet<usize> = HashSet::new();
    while r.remote > 0 {
        let Some(delivery) = r.rx.recv().await else {
            break; // the messenger shut down
        };
        let (from, msg) = match delivery {
            Delivery::Batch { batch, process } => {
                let Some(sender) = r.names.id(&batch.from) else {
                    tracing::warn!(%slot, %process, from = ?batch.from, "a batch from a sender not in the run was dropped");
                    continue;
                };
                let expected = taken.entry(sender).or_default();
                if broken.contains(&sender) || batch.seq != *expected {
                    // Batches before it were lost (with a connection): their trees expire and
                    // the job restarts to replay them. Applying this one (or any later) now
                    // would put this slot ahead of the replay — its watermark past the lost
                    // segments, which would then come late — so it is dropped unacknowledged.
                    if broken.insert(sender) {
                        tracing::warn!(%slot, %process, from = ?batch.from, expected = *expected,
                            got = batch.seq, "batches from another process were lost: this slot \
                            takes nothing more from that sender until the job restarts");
                    }
                    continue;
                }
                *expected += 1;
                let token = issuer.issue(Positions::new(), 0);
                edges.lock().expect("edges").insert(token.seq(), batch.acks);
                let msg = Msg::Batch {
                    sender,
                    segments: batch.segments,
                    mark: batch.mark,
                    acks: HeldAcks::new(vec![token]),
                };
                (sender, msg)
            }
            Delivery::Done { done, process } => {
                let Some(sender) = r.names.id(&done.from) else {
                    tracing::warn!(%slot, %process, from = ?done.from, "a done from a sender not in the run was dropped");
                    continue;
                };
                let got = taken.get(&sender).copied().unwrap_or(0);
                if broken.contains(&sender) || got != done.batches {
                    // Lost with a connection (or dropped): the sender's trees of the missing
                    // batches expire, and the restarted job replays them. Until then this
                    // peer must not finish, or its slot would complete without them.
                    tracing::warn!(%slot, %process, from = ?done.from, sent = done.batches, taken = got,
                        "batches from another process were lost: this slot waits for their replay");
                    continue;
                }
                r.remote -= 1;
                (sender, Msg::Done { sender })
            }
        };
        if r.tx.send(msg).await.is_err() {
            tracing::debug!(%slot, from, "the local peer has ended");
            break;
        }
    }
    drop(issuer);
    let _ = acker.await;
}
