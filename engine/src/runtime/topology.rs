//! The shape of a running job: which task sends to which ([`Layout`], computed from the job
//! alone, so it is a pure function with unit tests) and the channels, barrier and stop signal
//! its peers share ([`Topology`], built from a layout before any peer is spawned).

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::message::Msg;
use crate::division::Division;
use crate::job::{Job, TaskKind};

/// Who sends to whom in a job, and how many peers each task runs on; peer ids are global in the
/// job, given in catalog order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Layout {
    /// Per task, its peer count.
    pub(super) peers: BTreeMap<String, usize>,
    /// Per task, the tasks its peers send to: its downstream tasks (workflow order), then the
    /// late tasks of its windows, then the error task (for every task but the error task).
    pub(super) targets: BTreeMap<String, Vec<String>>,
    /// Per task, the id of its first peer.
    pub(super) first_peer: BTreeMap<String, usize>,
    /// Per task, the ids of every peer that sends to it.
    pub(super) upstream_peers: BTreeMap<String, Vec<usize>>,
    /// How many input peers the job has.
    pub(super) input_peers: usize,
    /// The key groups' division of each task whose division is not the contiguous one of its
    /// peer count (a task a cluster re-divided while it ran).
    pub(super) divisions: BTreeMap<String, Division>,
}

impl Layout {
    /// The layout of `job`, every task on `peers_override` peers if set (else its own count),
    /// every other task sending its rejections to `error_task` if the job has one.
    pub(super) fn of(job: &Job, peers_override: Option<usize>, error_task: Option<&str>) -> Self {
        let peers_of =
            |name: &str| peers_override.unwrap_or_else(|| job.task(name).map_or(1, |t| t.peers()));
        Layout::with_peers(job, peers_of, error_task)
    }

    /// The layout of `job` with `peers_of(task)` peers per task (a cluster's allocation).
    pub(super) fn with_peers(
        job: &Job,
        peers_of: impl Fn(&str) -> usize,
        error_task: Option<&str>,
    ) -> Self {
        let peers: BTreeMap<String, usize> = job
            .catalog
            .iter()
            .map(|t| (t.name.clone(), peers_of(&t.name)))
            .collect();
        // Who sends to whom: downstream edges, the late tasks of the task's windows, and the
        // error task (from every other task).
        let mut targets: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for t in &job.catalog {
            let mut ts: Vec<String> = job
                .downstream(&t.name)
                .into_iter()
                .map(str::to_owned)
                .collect();
            let late = job.windows_of(&t.name).filter_map(|w| w.late.clone());
            let error = error_task.filter(|e| *e != t.name).map(str::to_owned);
            for extra in late.chain(error) {
                if !ts.contains(&extra) {
                    ts.push(extra);
                }
            }
            targets.insert(t.name.clone(), ts);
        }
        let mut first_peer = BTreeMap::new();
        let mut next_id = 0;
        for t in &job.catalog {
            first_peer.insert(t.name.clone(), next_id);
            next_id += peers[&t.name];
        }
        let mut upstream_peers: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (from, ts) in &targets {
            for to in ts {
                let first = first_peer[from];
                upstream_peers
                    .entry(to.clone())
                    .or_default()
                    .extend(first..first + peers[from]);
            }
        }
        let input_peers = job
            .catalog
            .iter()
            .filter(|t| t.kind == TaskKind::Input)
            .map(|t| peers[&t.name])
            .sum();
        Layout {
            peers,
            targets,
            first_peer,
            upstream_peers,
            input_peers,
            divisions: BTreeMap::new(),
        }
    }
}

/// What the peers of a running job share: their channels, who sends to whom, the barrier inputs
/// open at, and the stop signal.
pub(super) struct Topology {
    /// Per task, the sending end of each of its peers' channels.
    pub(super) senders: BTreeMap<String, Vec<mpsc::Sender<Msg>>>,
    /// Per task, the ids of every peer that sends to it.
    pub(super) upstream_peers: BTreeMap<String, Vec<usize>>,
    /// Per task, the id of its first peer (peer ids are global in the job).
    pub(super) first_peer: BTreeMap<String, usize>,
    /// Every input peer (of this process) waits here after opening its reader; peers with
    /// nothing to read have sent their `Done` by then, so no reading peer's data can overtake
    /// them and the downstream watermark never waits on a peer that will never read.
    pub(super) inputs_opened: tokio::sync::Barrier,
    /// Cancelled to stop the job ([`super::launch::RunOptions::stop`]).
    pub(super) stop: CancellationToken,
    /// Set by an input peer that stopped before its input was exhausted, before it tells its
    /// downstream peers it is done: they then skip job completion (the job is not complete).
    pub(super) stopped_early: Arc<AtomicBool>,
    /// The divisions of the tasks whose key groups are not divided contiguously
    /// ([`Layout::divisions`]).
    divisions: BTreeMap<String, Division>,
}

/// Per task, the receiving end of each of its peers' channels (peer `i` of a task reads the
/// `i`-th).
pub(super) type Receivers = BTreeMap<String, Vec<mpsc::Receiver<Msg>>>;

impl Topology {
    /// The topology of `layout`: one bounded channel of `capacity` messages (at least 1) per
    /// peer, whose receiving ends are returned beside it; `stopped_early` starts false; the
    /// inputs' barrier waits for `input_peers` peers (those that run in this process).
    pub(super) fn new(
        layout: &Layout,
        capacity: usize,
        stop: CancellationToken,
        input_peers: usize,
    ) -> (Topology, Receivers) {
        let mut senders = BTreeMap::new();
        let mut receivers = BTreeMap::new();
        for (task, &n) in &layout.peers {
            let (txs, rxs): (Vec<_>, Vec<_>) =
                (0..n).map(|_| mpsc::channel(capacity.max(1))).unzip();
            senders.insert(task.clone(), txs);
            receivers.insert(task.clone(), rxs);
        }
        let topology = Topology {
            senders,
            upstream_peers: layout.upstream_peers.clone(),
            first_peer: layout.first_peer.clone(),
            inputs_opened: tokio::sync::Barrier::new(input_peers),
            stop,
            stopped_early: Arc::new(AtomicBool::new(false)),
            divisions: layout.divisions.clone(),
        };
        (topology, receivers)
    }

    /// How task `task`'s key groups (of `key_groups`) are divided among its `peers` peers:
    /// its division in the layout, else the contiguous one.
    pub(super) fn division(&self, task: &str, peers: usize, key_groups: usize) -> Division {
        self.divisions
            .get(task)
            .cloned()
            .unwrap_or_else(|| Division::contiguous(peers, key_groups))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `in` (2 peers) feeds `a` (3 peers) and `b`; `a` feeds `out`; rejections go to the task
    /// `rejected`.
    fn job() -> Job {
        Job::from_json_str(
            r#"{
              "workflow": [["in", "a"], ["in", "b"], ["a", "out"], ["b", "out"]],
              "catalog": [
                {"name": "in", "type": "input", "plugin": "sardonyx/jsonl", "n_peers": 2},
                {"name": "a", "type": "function", "fn": "f", "n_peers": 3},
                {"name": "b", "type": "function", "fn": "f"},
                {"name": "out", "type": "output", "plugin": "sardonyx/null"},
                {"name": "rejected", "type": "output", "plugin": "sardonyx/null"}
              ],
              "errors": {"task": "rejected"}
            }"#,
        )
        .unwrap()
    }

    fn names(ns: &[&str]) -> Vec<String> {
        ns.iter().map(|n| (*n).to_owned()).collect()
    }

    /// Peer ids follow the catalog; every task but the error task sends to it; upstream lists
    /// follow the senders' names, then their peers.
    #[test]
    fn a_layout_numbers_peers_in_catalog_order_and_lists_who_sends_to_whom() {
        let layout = Layout::of(&job(), None, Some("rejected"));
        let map = |pairs: Vec<(&str, usize)>| -> BTreeMap<String, usize> {
            pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
        };
        assert_eq!(
            layout.peers,
            map(vec![
                ("in", 2),
                ("a", 3),
                ("b", 1),
                ("out", 1),
                ("rejected", 1)
            ])
        );
        assert_eq!(
            layout.first_peer,
            map(vec![
                ("in", 0),
                ("a", 2),
                ("b", 5),
                ("out", 6),
                ("rejected", 7)
            ])
        );
        let targets: Vec<(String, Vec<String>)> = layout.targets.clone().into_iter().collect();
        assert_eq!(
            targets,
            vec![
                ("a".to_owned(), names(&["out", "rejected"])),
                ("b".to_owned(), names(&["out", "rejected"])),
                ("in".to_owned(), names(&["a", "b", "rejected"])),
                ("out".to_owned(), names(&["rejected"])),
                ("rejected".to_owned(), names(&[])),
            ]
        );
        let upstream: Vec<(String, Vec<usize>)> =
            layout.upstream_peers.clone().into_iter().collect();
        assert_eq!(
            upstream,
            vec![
                ("a".to_owned(), vec![0, 1]),
                ("b".to_owned(), vec![0, 1]),
                ("out".to_owned(), vec![2, 3, 4, 5]),
                ("rejected".to_owned(), vec![2, 3, 4, 5, 0, 1, 6]),
            ]
        );
        assert_eq!(layout.input_peers, 2);
    }

    /// An override puts every task on that many peers; without an error task nothing sends to
    /// `rejected`.
    #[test]
    fn a_peer_override_applies_to_every_task() {
        let layout = Layout::of(&job(), Some(2), None);
        assert!(layout.peers.values().all(|&n| n == 2));
        assert_eq!(layout.first_peer["rejected"], 8);
        assert_eq!(layout.targets["in"], names(&["a", "b"]));
        assert_eq!(layout.upstream_peers["out"], vec![2, 3, 4, 5]);
        assert!(!layout.upstream_peers.contains_key("rejected"));
        assert_eq!(layout.input_peers, 2, "the one input task, on 2 peers");
    }

    /// The topology has one channel per peer: what is sent to peer `i` of a task arrives at its
    /// `i`-th receiver, and a channel holds `capacity` messages (at least one).
    #[test]
    fn a_topology_has_one_bounded_channel_per_peer() {
        let layout = Layout::of(&job(), None, Some("rejected"));
        for capacity in [0, 2] {
            let (topology, mut receivers) =
                Topology::new(&layout, capacity, CancellationToken::new(), 2);
            assert_eq!(topology.senders["a"].len(), 3);
            assert_eq!(receivers["a"].len(), 3);
            let a1 = &topology.senders["a"][1];
            for sender in 0..capacity.max(1) {
                a1.try_send(Msg::Done { sender }).unwrap();
            }
            assert!(a1.try_send(Msg::Done { sender: 9 }).is_err(), "bounded");
            assert!(receivers.get_mut("a").unwrap()[0].try_recv().is_err());
            match receivers.get_mut("a").unwrap()[1].try_recv() {
                Ok(Msg::Done { sender: 0 }) => {}
                other => panic!("expected Done from 0, got {other:?}"),
            }
            assert_eq!(topology.first_peer, layout.first_peer);
            assert_eq!(topology.upstream_peers, layout.upstream_peers);
        }
    }
}
