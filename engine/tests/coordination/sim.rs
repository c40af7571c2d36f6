//! A simulated cluster: processes that each play a shared in-memory coordination log into
//! their own replica and append their reactions to it, as the runtime will do over the real
//! log. Delivery is stepwise (a process reads one entry at a time), so a test chooses who reads
//! when — joins and leaves interleave — and [`Sim::settle`] runs every live process until none
//! has anything left to read or append.

use sardonyx::coordination::{diff, reactions, Entry, JobSpec, ProcessId, ProcessInfo, Replica};

/// One simulated process.
pub struct SimProcess {
    /// Its id.
    pub id: ProcessId,
    /// Whether it is running (a dead process reads and appends nothing).
    pub alive: bool,
    /// Its replica.
    pub replica: Replica,
    /// How many log entries it has read.
    pub read: usize,
    /// Its replica after each entry it read: `(position, replica)`.
    pub history: Vec<(u64, Replica)>,
}

/// A shared log and the processes playing it.
#[derive(Default)]
pub struct Sim {
    /// The log: entry `i` is at position `i + 1`.
    pub log: Vec<Entry>,
    /// The processes, in start order.
    pub processes: Vec<SimProcess>,
    /// The replica after each prefix of the log (`reference[n]`: after `n` entries), played
    /// by nobody in particular.
    pub reference: Vec<Replica>,
    /// Whether processes keep their replica after every entry ([`SimProcess::history`]).
    pub keep_history: bool,
}

impl Sim {
    /// An empty cluster.
    pub fn new() -> Self {
        Sim {
            reference: vec![Replica::new()],
            ..Sim::default()
        }
    }

    /// Appends `entry`, playing it into the reference replica.
    pub fn append(&mut self, entry: Entry) {
        let at = self.log.len() as u64 + 1;
        let next = self
            .reference
            .last()
            .expect("one at least")
            .apply(&entry, at);
        self.log.push(entry);
        self.reference.push(next);
    }

    /// The reference replica at the end of the log.
    pub fn now(&self) -> &Replica {
        self.reference.last().expect("one at least")
    }

    /// Starts a process with `slots` slots and id `id`: it appends its `prepare_join`.
    pub fn start(&mut self, id: u64, slots: u32) -> ProcessId {
        let id = ProcessId(id);
        self.processes.push(SimProcess {
            id,
            alive: true,
            replica: Replica::new(),
            read: 0,
            history: Vec::new(),
        });
        self.append(Entry::PrepareJoin {
            process: ProcessInfo {
                id,
                address: format!("127.0.0.1:{}", 7000 + self.processes.len()),
                slots,
            },
        });
        id
    }

    /// Kills process `id` and appends the `leave_cluster` its watcher would.
    pub fn kill(&mut self, id: ProcessId) {
        if let Some(p) = self.processes.iter_mut().find(|p| p.id == id) {
            p.alive = false;
        }
        self.append(Entry::LeaveCluster { process: id });
    }

    /// Submits a job.
    pub fn submit(&mut self, spec: JobSpec) {
        self.append(Entry::SubmitJob {
            job: Box::new(spec),
        });
    }

    /// Process `i` reads one entry if it can, appending its reactions; whether it read one.
    /// `check` sees its replica after the entry and the reference at the same position.
    pub fn step(&mut self, i: usize, check: &mut dyn FnMut(&Replica, &Replica, usize)) -> bool {
        let p = &self.processes[i];
        if !p.alive || p.read >= self.log.len() {
            return false;
        }
        let at = p.read;
        let entry = self.log[at].clone();
        let p = &mut self.processes[i];
        let next = p.replica.apply(&entry, at as u64 + 1);
        let changes = diff(&p.replica, &next);
        let out = reactions(&changes, &p.replica, &next, p.id);
        p.replica = next;
        p.read += 1;
        if self.keep_history {
            p.history.push((at as u64 + 1, p.replica.clone()));
        }
        check(&self.processes[i].replica, &self.reference[at + 1], at + 1);
        for e in out {
            self.append(e);
        }
        true
    }

    /// Runs every live process until none has an entry left to read (so no reaction is left
    /// to append).
    pub fn settle(&mut self, check: &mut dyn FnMut(&Replica, &Replica, usize)) {
        loop {
            let mut any = false;
            for i in 0..self.processes.len() {
                while self.step(i, check) {
                    any = true;
                }
            }
            if !any {
                return;
            }
        }
    }

    /// [`Sim::settle`] asserting that every replica equals the reference at each position.
    pub fn settle_agreeing(&mut self) {
        self.settle(&mut |mine, reference, at| {
            assert_eq!(mine, reference, "a replica differs at entry {at}");
        });
    }
}
