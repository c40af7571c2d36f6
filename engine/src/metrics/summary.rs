//! What the dashboard and its history need of a running job, per task: its slots' counters
//! summed, and its watermark the least over its slots ([`TaskSummary`]); and one [`Sample`]
//! of them for the history.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use super::exposition::epoch_seconds;
use super::history::Sample;
use super::observed::ObservedJob;

/// How far back the live throughput looks, in seconds.
pub const THROUGHPUT_WINDOW: f64 = 10.0;

/// One task's figures, summed (or, for the watermark, the least) over its slots.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskSummary {
    /// `input`, `function` or `output`.
    pub kind: &'static str,
    /// Slots seen running.
    pub slots: usize,
    /// Segments taken in (records read, for an input).
    pub segments_in: u64,
    /// Segments sent on.
    pub segments_out: u64,
    /// Rejected segments or lines.
    pub rejected: u64,
    /// Sends that waited for room downstream.
    pub backpressure_waits: u64,
    /// The least watermark over its slots that have one (epoch milliseconds).
    pub watermark: Option<i64>,
}

/// Per task, its summary (tasks in catalog order).
pub fn task_summaries(job: &ObservedJob) -> Vec<(String, TaskSummary)> {
    let slots = job.progress.slots();
    job.graph
        .tasks
        .iter()
        .map(|(name, kind)| {
            let mut s = TaskSummary {
                kind,
                ..TaskSummary::default()
            };
            for c in slots.iter().filter(|c| &c.task == name) {
                s.slots += 1;
                s.segments_in += c.segments_in.load(Ordering::Relaxed);
                s.segments_out += c.segments_out.load(Ordering::Relaxed);
                s.rejected += c.rejected.load(Ordering::Relaxed);
                s.backpressure_waits += c.backpressure_waits.load(Ordering::Relaxed);
                if let Some(wm) = c.watermark() {
                    s.watermark = Some(s.watermark.map_or(wm, |w| w.min(wm)));
                }
            }
            (name.clone(), s)
        })
        .collect()
}

/// The sample of `job`'s counters at `at` (seconds on the server's clock), for the history.
pub fn sample(job: &ObservedJob, at: f64) -> Sample {
    let now_ms = epoch_seconds(SystemTime::now()) * 1000.0;
    let mut out = Sample {
        at,
        segments_in: BTreeMap::new(),
        lag: BTreeMap::new(),
    };
    for (name, s) in task_summaries(job) {
        out.segments_in.insert(name.clone(), s.segments_in);
        if let Some(wm) = s.watermark {
            out.lag.insert(name, (now_ms - wm as f64) / 1000.0);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::metrics::JobGraph;
    use crate::runtime::Progress;

    /// A task's figures sum over its slots; its watermark is the least of its slots' (a slot
    /// without one does not count); a task with no slot started shows zeros.
    #[test]
    fn a_task_sums_its_slots_and_takes_their_least_watermark() {
        let progress = Arc::new(Progress::default());
        for (slot, n, wm) in [(0, 5, Some(2_000)), (1, 7, Some(1_000)), (2, 1, None)] {
            let c = progress.slot("count", slot);
            c.segments_in.fetch_add(n, Ordering::Relaxed);
            c.rejected.fetch_add(1, Ordering::Relaxed);
            c.set_watermark(wm);
        }
        progress.slot("count", 1).set_watermark(Some(i64::MAX));
        let job = ObservedJob {
            name: "j".to_owned(),
            graph: JobGraph {
                tasks: vec![
                    ("count".to_owned(), "function"),
                    ("out".to_owned(), "output"),
                ],
                edges: vec![("count".to_owned(), "out".to_owned())],
            },
            progress,
            started: SystemTime::now(),
        };
        let s = task_summaries(&job);
        assert_eq!(s[0].0, "count");
        assert_eq!(
            s[0].1,
            TaskSummary {
                kind: "function",
                slots: 3,
                segments_in: 13,
                rejected: 3,
                watermark: Some(1_000),
                ..TaskSummary::default()
            }
        );
        assert_eq!(
            s[1].1,
            TaskSummary {
                kind: "output",
                ..TaskSummary::default()
            }
        );
        let sample = sample(&job, 4.0);
        assert_eq!(sample.at, 4.0);
        assert_eq!(sample.segments_in["count"], 13);
        assert_eq!(sample.segments_in["out"], 0);
        assert!(sample.lag["count"] > 0.0);
        assert!(!sample.lag.contains_key("out"));
    }
}
