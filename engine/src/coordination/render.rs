//! The replica as plain text (`cluster-status`, `replay`): the processes with their address,
//! slots in use and whom each watches, the joins in progress, and the jobs with, per task,
//! which process owns which slot at which owner epoch and with which key groups, and how often
//! each was restarted (the last restart's reason, and why the cluster killed it if it did).

use std::fmt::{self, Display, Write as _};

use super::ring::watched_by;
use super::state::{JoinStage, KeyGroupRange, Replica, Slot};

impl Display for KeyGroupRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{}", self.start, self.end)
    }
}

fn slot_line(slot: &Slot) -> String {
    let mut line = match (slot.owner, slot.completed) {
        (_, true) => "completed".to_owned(),
        (Some(p), false) => format!("{p} epoch {}", slot.epoch),
        (None, false) => "no owner".to_owned(),
    };
    if !slot.key_groups.is_empty() {
        let ranges: Vec<String> = slot.key_groups.iter().map(ToString::to_string).collect();
        let _ = write!(line, " key groups {}", ranges.join(","));
    }
    line
}

impl Display for Replica {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "at entry {}: {} processes, {} joining, {} jobs, {} entries ignored",
            self.position,
            self.processes.len(),
            self.joins.len(),
            self.jobs.len(),
            self.ignored
        )?;
        if let Some(last) = &self.last_ignored {
            writeln!(f, "last ignored: entry {}: {}", last.position, last.reason)?;
        }
        writeln!(f, "processes (in ring order):")?;
        for id in &self.ring {
            let p = &self.processes[id];
            let watches = watched_by(self, *id).map_or("nobody".to_owned(), |w| w.to_string());
            writeln!(
                f,
                "  {id}  {}  slots {}/{}  watches {watches}",
                p.info.address,
                self.load(*id),
                p.info.slots
            )?;
        }
        for join in &self.joins {
            let stage = match join.stage {
                JoinStage::Waiting => "waiting for a watcher".to_owned(),
                JoinStage::Prepared { watcher } => format!("prepared by {watcher}"),
                JoinStage::Notified { watcher } => format!("notified by {watcher}"),
            };
            writeln!(
                f,
                "  joining {}  {}  slots {}  {stage}",
                join.process.id, join.process.address, join.process.slots
            )?;
        }
        for job in &self.jobs {
            writeln!(
                f,
                "job {}: {} (submitted at entry {}, {} / {})",
                job.spec.id,
                job.status.name(),
                job.submitted_at,
                job.spec.job_scheduler.name(),
                job.spec.task_scheduler.name()
            )?;
            let r = &job.restarts;
            if r.count > 0 {
                write!(
                    f,
                    "  restarts: {} ({} after failures, version {})",
                    r.count,
                    r.failures,
                    job.version()
                )?;
                if let Some((at, reason)) = &r.last {
                    write!(f, "; last at entry {at}: {reason}")?;
                }
                writeln!(f)?;
            }
            if let Some(why) = &r.killed_because {
                writeln!(f, "  killed: {why}")?;
            }
            for (t, task) in job.spec.tasks.iter().enumerate() {
                let Some(alloc) = job.tasks.get(t) else {
                    writeln!(f, "  {}: not started", task.name)?;
                    continue;
                };
                let past: Vec<String> = alloc.past.iter().map(|p| p.layout.to_string()).collect();
                match past.as_slice() {
                    [] => writeln!(f, "  {} (layout {}):", task.name, alloc.layout)?,
                    _ => writeln!(
                        f,
                        "  {} (layout {}, re-divided from {}):",
                        task.name,
                        alloc.layout,
                        past.join(", ")
                    )?,
                }
                for (i, slot) in alloc.slots.iter().enumerate() {
                    writeln!(f, "    slot {i}: {}", slot_line(slot))?;
                }
            }
        }
        Ok(())
    }
}
