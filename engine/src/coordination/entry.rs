//! The entries of the coordination log (DESIGN §6): what processes append and every replica
//! plays. Each entry carries what its pure function in [`replica`](super::replica) needs and
//! nothing else; positions come from the log, not from the entry.
//!
//! Entries travel as bincode (in the log) and JSON (in `replay --json` and tests). Bytes read
//! from the log are outside input: [`Entry::decode`] bounds what it allocates and
//! [`Entry::check`] refuses values no honest process appends (a zero-slot process, a job
//! spec past the limits), so that a bad entry is noted by the replica, never a panic.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::job_spec::{JobId, JobSpec, SpecProblem};

/// The most virtual peers one process may offer (`--slots`).
pub const MAX_PROCESS_SLOTS: u32 = 4096;

/// The longest messaging address (`host:port`) a join may carry, in bytes.
pub const MAX_ADDRESS_BYTES: usize = 256;

/// The largest encoded entry [`Entry::decode`] accepts, in bytes (a job's JSON text included).
pub const MAX_ENTRY_BYTES: usize = 16 << 20;

/// The longest failure message a `restart_job` may carry, in bytes (longer ones are cut by the
/// process that appends it, [`RestartReason::failed`]).
pub const MAX_REASON_BYTES: usize = 4096;

/// How many times a job's runs may be restarted for a failure before the next failure kills it:
/// the same default as `sardonyx run`'s [`RunOptions::max_restarts`](crate::runtime::RunOptions).
pub const MAX_RESTARTS: u32 = 3;

/// A process of the cluster: a random number it picks when it starts, so a restarted process
/// joins as a new one. Written as 16 hex digits in JSON (a u64 does not fit a JavaScript
/// number), as a plain integer in bincode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProcessId(pub u64);

impl fmt::Display for ProcessId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl std::str::FromStr for ProcessId {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u64::from_str_radix(s, 16).map(ProcessId)
    }
}

impl Serialize for ProcessId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            s.serialize_u64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for ProcessId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let text = std::borrow::Cow::<str>::deserialize(d)?;
            if text.len() != 16 {
                return Err(serde::de::Error::custom(format!(
                    "a process id is 16 hex digits, found \"{text}\""
                )));
            }
            text.parse().map_err(serde::de::Error::custom)
        } else {
            u64::deserialize(d).map(ProcessId)
        }
    }
}

/// What a joining process tells the cluster about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// Its id.
    pub id: ProcessId,
    /// Where other processes reach it for messages and heartbeats (`host:port`).
    pub address: String,
    /// How many virtual peers it runs: its capacity in slots.
    pub slots: u32,
}

/// One entry of the coordination log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Entry {
    /// A process asks to join (appended by the process itself). The first process of an
    /// empty cluster is in at once; any other waits for a watcher to splice it into the ring.
    PrepareJoin {
        /// The joining process.
        process: ProcessInfo,
    },
    /// The watcher chosen for a joiner says it is ready to watch it (appended by the watcher,
    /// in reaction to the joiner's prepared join).
    NotifyJoin {
        /// The joining process.
        joiner: ProcessId,
        /// The process that will watch it.
        watcher: ProcessId,
    },
    /// The joiner completes its join (appended by the joiner once notified): it enters the
    /// ring after its watcher, and its slots count for scheduling.
    AcceptJoin {
        /// The joining process.
        joiner: ProcessId,
        /// Its watcher, as notified (a stale watcher makes the entry not apply).
        watcher: ProcessId,
    },
    /// A joining process gives up its join (appended by the joiner, e.g. when it stops).
    AbortJoin {
        /// The joining process.
        joiner: ProcessId,
    },
    /// A process leaves: it stopped, or its watcher stopped hearing from it. Its slots move to
    /// the others; a joining process leaving abandons its join.
    LeaveCluster {
        /// The process that leaves.
        process: ProcessId,
    },
    /// A job is submitted.
    SubmitJob {
        /// What scheduling needs, and the job itself.
        job: Box<JobSpec>,
    },
    /// A job is killed: its slots stop and it never runs again.
    KillJob {
        /// The job.
        job: JobId,
    },
    /// A slot finished its work (appended by its owner): it no longer needs a process.
    CompleteSlot {
        /// The job.
        job: JobId,
        /// The task's index in the job spec.
        task: u32,
        /// The slot's index in the task.
        slot: u32,
        /// The owner epoch the owner held it with (an older one makes the entry stale).
        epoch: u64,
    },
    /// Every slot of a job has completed: the job is complete (appended by one process, in
    /// reaction to the last completion).
    SealJob {
        /// The job.
        job: JobId,
    },
    /// A process's run of version `version` of a job needs every process to start the job's
    /// runs again (appended by that process): a batch's ack tree stayed pending past
    /// `pending_timeout` (the batch is replayed from the input), or the run failed with a cause
    /// the job recovers from (`flux_policy: recover`, a lifecycle's `restart`). It applies only
    /// while the job runs at that version, so several processes appending it for one failure
    /// restart the job once; it gives the job a new version, or kills it once its failures
    /// exceed [`MAX_RESTARTS`].
    RestartJob {
        /// The job.
        job: JobId,
        /// The version the run had (the greatest owner epoch or layout of the job's slots).
        version: u64,
        /// Why.
        reason: RestartReason,
    },
}

/// Why a run of a job is to be restarted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartReason {
    /// A batch that `process` sent to another process was not acknowledged within
    /// `pending_timeout` (lost with a connection, or dropped): its input replays it. Does not
    /// count against [`MAX_RESTARTS`].
    Expired {
        /// The process whose ack tree expired.
        process: ProcessId,
    },
    /// A peer of `task` failed with `error` and the job recovers from it: the task has
    /// `flux_policy: recover`, or a lifecycle asked for a restart. Counts against
    /// [`MAX_RESTARTS`].
    Failed {
        /// The task whose peer failed.
        task: String,
        /// The error, as the process's log shows it.
        error: String,
    },
}

impl RestartReason {
    /// A failure of `task` with `error`, the message cut to [`MAX_REASON_BYTES`] (at a char
    /// boundary) so that the entry is within the limits.
    pub fn failed(task: &str, error: &str) -> RestartReason {
        let mut end = error.len().min(MAX_REASON_BYTES);
        while !error.is_char_boundary(end) {
            end -= 1;
        }
        RestartReason::Failed {
            task: task.to_owned(),
            error: error[..end].to_owned(),
        }
    }
}

impl fmt::Display for RestartReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestartReason::Expired { process } => write!(
                f,
                "a batch sent by process {process} was not acknowledged within pending_timeout"
            ),
            RestartReason::Failed { task, error } => write!(f, "task \"{task}\" failed: {error}"),
        }
    }
}

/// Bytes from the log that are not an entry.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    /// Longer than any entry may be.
    #[error("a coordination entry of {len} bytes is longer than the limit of {MAX_ENTRY_BYTES}")]
    TooLong {
        /// Its length.
        len: usize,
    },
    /// Not a bincode entry.
    #[error("a coordination entry does not decode")]
    Decode(#[source] bincode::error::DecodeError),
    /// Bytes left after the entry.
    #[error("a coordination entry has {trailing} bytes after it")]
    Trailing {
        /// How many.
        trailing: usize,
    },
}

/// An entry whose values no honest process appends; the replica notes it and ignores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum EntryProblem {
    /// A process offering no slots or more than [`MAX_PROCESS_SLOTS`].
    #[error("a process offers {slots} slots (1 to {MAX_PROCESS_SLOTS})")]
    Slots {
        /// What it offered.
        slots: u32,
    },
    /// A process address longer than [`MAX_ADDRESS_BYTES`] or empty.
    #[error("a process address of {len} bytes (1 to {MAX_ADDRESS_BYTES})")]
    Address {
        /// Its length.
        len: usize,
    },
    /// A job spec past the limits.
    #[error("job spec: {0}")]
    Job(#[source] SpecProblem),
    /// A restart's task name or failure message past its limit ([`MAX_NAME_BYTES`](super::job_spec::MAX_NAME_BYTES),
    /// [`MAX_REASON_BYTES`]).
    #[error("a restart reason of {len} bytes is past the limit")]
    Reason {
        /// Its length.
        len: usize,
    },
}

impl Entry {
    /// The entry as bincode, for the log.
    pub fn encode(&self) -> Vec<u8> {
        bincode::serde::encode_to_vec(self, bincode::config::standard())
            .expect("an entry always encodes")
    }

    /// An entry from the log's bytes: bounded in what it allocates (a declared length must be
    /// backed by bytes), refused past [`MAX_ENTRY_BYTES`]. It is not [`checked`](Entry::check).
    pub fn decode(bytes: &[u8]) -> Result<Entry, EntryError> {
        if bytes.len() > MAX_ENTRY_BYTES {
            return Err(EntryError::TooLong { len: bytes.len() });
        }
        let (entry, read) =
            sardonyx_state_log::decode_bounded::<Entry>(bytes).map_err(EntryError::Decode)?;
        match bytes.len() - read {
            0 => Ok(entry),
            trailing => Err(EntryError::Trailing { trailing }),
        }
    }

    /// Whether the entry's values are within the limits (the replica ignores one that is not).
    pub fn check(&self) -> Result<(), EntryProblem> {
        match self {
            Entry::PrepareJoin { process } => {
                if process.slots == 0 || process.slots > MAX_PROCESS_SLOTS {
                    return Err(EntryProblem::Slots {
                        slots: process.slots,
                    });
                }
                let len = process.address.len();
                if len == 0 || len > MAX_ADDRESS_BYTES {
                    return Err(EntryProblem::Address { len });
                }
                Ok(())
            }
            Entry::SubmitJob { job } => job.check().map_err(EntryProblem::Job),
            Entry::RestartJob {
                reason: RestartReason::Failed { task, error },
                ..
            } => {
                if task.len() > super::job_spec::MAX_NAME_BYTES {
                    return Err(EntryProblem::Reason { len: task.len() });
                }
                if error.len() > MAX_REASON_BYTES {
                    return Err(EntryProblem::Reason { len: error.len() });
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The entry's name as in the log's JSON (`prepare_join`, …).
    pub fn name(&self) -> &'static str {
        match self {
            Entry::PrepareJoin { .. } => "prepare_join",
            Entry::NotifyJoin { .. } => "notify_join",
            Entry::AcceptJoin { .. } => "accept_join",
            Entry::AbortJoin { .. } => "abort_join",
            Entry::LeaveCluster { .. } => "leave_cluster",
            Entry::SubmitJob { .. } => "submit_job",
            Entry::KillJob { .. } => "kill_job",
            Entry::CompleteSlot { .. } => "complete_slot",
            Entry::SealJob { .. } => "seal_job",
            Entry::RestartJob { .. } => "restart_job",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn join(id: u64) -> Entry {
        Entry::PrepareJoin {
            process: ProcessInfo {
                id: ProcessId(id),
                address: "127.0.0.1:7001".into(),
                slots: 4,
            },
        }
    }

    #[test]
    fn entries_round_trip_through_bincode_and_json() {
        let entries = [
            join(u64::MAX),
            Entry::NotifyJoin {
                joiner: ProcessId(1),
                watcher: ProcessId(2),
            },
            Entry::CompleteSlot {
                job: JobId("votes".into()),
                task: 1,
                slot: 2,
                epoch: 9,
            },
            Entry::SealJob {
                job: JobId("votes".into()),
            },
            Entry::RestartJob {
                job: JobId("votes".into()),
                version: 12,
                reason: RestartReason::Expired {
                    process: ProcessId(7),
                },
            },
            Entry::RestartJob {
                job: JobId("votes".into()),
                version: 12,
                reason: RestartReason::failed("write", "the sink is down"),
            },
        ];
        for e in entries {
            assert_eq!(Entry::decode(&e.encode()).unwrap(), e);
            let json = serde_json::to_string(&e).unwrap();
            assert_eq!(serde_json::from_str::<Entry>(&json).unwrap(), e);
        }
        assert_eq!(
            serde_json::to_string(&join(0xabc)).unwrap(),
            r#"{"prepare_join":{"process":{"id":"0000000000000abc","address":"127.0.0.1:7001","slots":4}}}"#
        );
    }

    #[test]
    fn bad_bytes_and_values_are_errors() {
        let mut bytes = join(1).encode();
        bytes.push(0);
        assert!(matches!(
            Entry::decode(&bytes),
            Err(EntryError::Trailing { trailing: 1 })
        ));
        assert!(matches!(
            Entry::decode(&vec![0; MAX_ENTRY_BYTES + 1]),
            Err(EntryError::TooLong { .. })
        ));
        // A string that claims 2^60 bytes is refused before anything is allocated.
        let lying = [0_u8, 0xff, 0, 0, 0, 0, 0, 0, 0x10, 0];
        assert!(matches!(Entry::decode(&lying), Err(EntryError::Decode(_))));
        let zero = Entry::PrepareJoin {
            process: ProcessInfo {
                id: ProcessId(1),
                address: "a:1".into(),
                slots: 0,
            },
        };
        assert_eq!(zero.check(), Err(EntryProblem::Slots { slots: 0 }));
        assert!(serde_json::from_str::<ProcessId>("\"12\"").is_err());
        let long = Entry::RestartJob {
            job: JobId("votes".into()),
            version: 1,
            reason: RestartReason::Failed {
                task: "write".into(),
                error: "x".repeat(MAX_REASON_BYTES + 1),
            },
        };
        assert_eq!(
            long.check(),
            Err(EntryProblem::Reason {
                len: MAX_REASON_BYTES + 1
            })
        );
    }

    #[test]
    fn a_failure_message_is_cut_at_a_char_boundary_within_the_limit() {
        let error = format!("{}é", "x".repeat(MAX_REASON_BYTES - 1));
        let RestartReason::Failed { error: cut, .. } = RestartReason::failed("t", &error) else {
            unreachable!()
        };
        assert_eq!(cut.len(), MAX_REASON_BYTES - 1);
        assert_eq!(
            serde_json::to_string(&RestartReason::Expired {
                process: ProcessId(0xab)
            })
            .unwrap(),
            r#"{"expired":{"process":"00000000000000ab"}}"#
        );
    }

    proptest! {
        #[test]
        fn any_bytes_give_an_entry_or_an_error(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(e) = Entry::decode(&bytes) {
                let _ = e.check();
            }
        }
    }
}
