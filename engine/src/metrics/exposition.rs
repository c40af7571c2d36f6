//! The Prometheus text exposition of what a process observes ([`encode`]): a
//! `prometheus-client` collector that reads the live counters at scrape time.
//!
//! Families (labels in braces):
//! - per task slot `{job,task,slot}`: `sardonyx_segments_in_total` (records read, for an
//!   input), `sardonyx_segments_out_total`, `sardonyx_batches_total`,
//!   `sardonyx_rejected_segments_total`, `sardonyx_backpressure_waits_total`,
//!   `sardonyx_backpressure_wait_seconds_total`, `sardonyx_watermark_timestamp_seconds` and
//!   `sardonyx_watermark_lag_seconds` (now − watermark; both once the slot has a watermark),
//!   `sardonyx_batch_duration_seconds` (histogram), `sardonyx_segments_written_total` (output
//!   slots), `sardonyx_late_segments_total` and `sardonyx_duplicates_dropped_total` (windowed
//!   slots);
//! - per trigger `{job,task,window,trigger}`: `sardonyx_firings_total`;
//! - per job `{job}`: `sardonyx_unmatched_segments_total`, `sardonyx_slot_recoveries_total`;
//! - per state log `{log}`: `sardonyx_state_log_appends_total`,
//!   `sardonyx_state_log_append_bytes_total`, `sardonyx_state_log_append_errors_total`,
//!   `sardonyx_state_log_compactions_total`, `sardonyx_state_log_append_duration_seconds`
//!   (histogram); of a Raft node in this process: `sardonyx_raft_role{log,role}` (1 for its
//!   role), `sardonyx_raft_term`, `sardonyx_raft_last_log_index`, `sardonyx_raft_applied_index`,
//!   `sardonyx_state_log_commands_total`, `sardonyx_state_log_raft_writes_total`,
//!   `sardonyx_state_log_wal_syncs_total`;
//! - the cluster, as a peer process sees it: `sardonyx_cluster_processes`,
//!   `sardonyx_cluster_joining_processes`, `sardonyx_cluster_log_position` (entries played),
//!   `sardonyx_cluster_jobs{status}`, `sardonyx_cluster_owned_slots` (this process's),
//!   `sardonyx_cluster_heartbeats_answered_total`, `sardonyx_cluster_leaves_appended_total`;
//! - the process: `process_resident_memory_bytes`, `process_cpu_seconds_total`,
//!   `process_start_time_seconds`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::observed::{Observed, ObservedJob, ObservedLog};
use super::process;
use crate::runtime::SlotCounters;

/// Encodes everything `observed` shows in the Prometheus text format.
pub fn encode(observed: &Observed) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ObservedCollector(observed.clone())));
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

/// Seconds since the Unix epoch of `t`.
pub fn epoch_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[derive(Debug)]
struct ObservedCollector(Observed);

impl Collector for ObservedCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let e = &mut encoder;
        if let Some(job) = &self.0.job {
            encode_job(e, job)?;
        }
        if let Some(log) = &self.0.log {
            encode_log(e, log)?;
        }
        if let Some(cluster) = &self.0.cluster {
            encode_cluster(e, &cluster.snapshot())?;
        }
        if let Some(u) = process::usage() {
            let memory = "Resident memory size in bytes.";
            let family = e.encode_descriptor(
                "process_resident_memory_bytes",
                memory,
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(u.resident_bytes as f64).encode(family)?;
            let cpu = "Total user and system CPU time spent in seconds.";
            let family =
                e.encode_descriptor("process_cpu_seconds", cpu, None, MetricType::Counter)?;
            ConstCounter::new(u.cpu_seconds).encode(family)?;
        }
        let start = "Start time of the process since the Unix epoch in seconds.";
        let family =
            e.encode_descriptor("process_start_time_seconds", start, None, MetricType::Gauge)?;
        ConstGauge::new(epoch_seconds(*PROCESS_START)).encode(family)?;
        Ok(())
    }
}

/// The cluster families of a peer process.
fn encode_cluster(
    e: &mut DescriptorEncoder,
    c: &crate::cluster::ClusterSnapshot,
) -> std::fmt::Result {
    let r = &c.replica;
    let gauges: [(&str, &str, i64); 4] = [
        (
            "sardonyx_cluster_processes",
            "Processes in the cluster.",
            r.processes.len() as i64,
        ),
        (
            "sardonyx_cluster_joining_processes",
            "Processes joining the cluster.",
            r.joins.len() as i64,
        ),
        (
            "sardonyx_cluster_log_position",
            "Position of the last coordination-log entry this process played.",
            r.position as i64,
        ),
        (
            "sardonyx_cluster_owned_slots",
            "Slots the replica gives this process.",
            c.me.map_or(0, |me| r.load(me)) as i64,
        ),
    ];
    for (name, help, value) in gauges {
        let family = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
        ConstGauge::new(value).encode(family)?;
    }
    let mut jobs = e.encode_descriptor(
        "sardonyx_cluster_jobs",
        "Jobs in the cluster, by status.",
        None,
        MetricType::Gauge,
    )?;
    for status in ["pending", "running", "killed", "completed"] {
        let n = r.jobs.iter().filter(|j| j.status.name() == status).count();
        ConstGauge::new(n as i64).encode(jobs.encode_family(&[("status", status)])?)?;
    }
    let counters: [(&str, &str, u64); 2] = [
        (
            "sardonyx_cluster_heartbeats_answered",
            "Heartbeats the watched process answered.",
            c.heartbeats_answered,
        ),
        (
            "sardonyx_cluster_leaves_appended",
            "leave_cluster entries this process appended for a silent process.",
            c.leaves_appended,
        ),
    ];
    for (name, help, value) in counters {
        let family = e.encode_descriptor(name, help, None, MetricType::Counter)?;
        ConstCounter::new(value).encode(family)?;
    }
    Ok(())
}

/// When this process first encoded its metrics or started a metrics server, close enough to
/// its start for `process_start_time_seconds`.
static PROCESS_START: std::sync::LazyLock<SystemTime> = std::sync::LazyLock::new(SystemTime::now);

/// Notes the process's start (call early).
pub fn note_process_start() {
    std::sync::LazyLock::force(&PROCESS_START);
}

fn load(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

fn encode_job(e: &mut DescriptorEncoder, job: &ObservedJob) -> std::fmt::Result {
    let p = &job.progress;
    let name = job.name.as_str();
    let slots = p.slots();
    let slot_numbers: Vec<String> = slots.iter().map(|s| s.slot.to_string()).collect();
    let labelled: Vec<([(&str, &str); 3], &SlotCounters)> = slots
        .iter()
        .zip(&slot_numbers)
        .map(|(c, n)| {
            let labels = [
                ("job", name),
                ("task", c.task.as_str()),
                ("slot", n.as_str()),
            ];
            (labels, c.as_ref())
        })
        .collect();
    let rows = |f: fn(&SlotCounters) -> u64| labelled.iter().map(move |&(l, c)| (l, f(c)));
    counter(
        e,
        "sardonyx_segments_in",
        "Segments taken in by a task slot (records read, for an input).",
        rows(|c| load(&c.segments_in)),
    )?;
    counter(
        e,
        "sardonyx_segments_out",
        "Segments a task slot sent downstream.",
        rows(|c| load(&c.segments_out)),
    )?;
    counter(
        e,
        "sardonyx_batches",
        "Batches a task slot took in.",
        rows(|c| load(&c.batches)),
    )?;
    counter(
        e,
        "sardonyx_rejected_segments",
        "Segments or input lines a task slot sent to the error output.",
        rows(|c| load(&c.rejected)),
    )?;
    counter(
        e,
        "sardonyx_segments_written",
        "Segments an output task slot wrote to its sink.",
        rows(|c| load(&c.written)),
    )?;
    counter(
        e,
        "sardonyx_late_segments",
        "Segments that came too late for a windowed task slot's windows.",
        rows(|c| load(&c.late)),
    )?;
    counter(
        e,
        "sardonyx_duplicates_dropped",
        "Segments a windowed task slot had already applied (skipped by its dedup filter).",
        rows(|c| load(&c.duplicates)),
    )?;
    counter(
        e,
        "sardonyx_backpressure_waits",
        "Sends of a task slot that waited for room downstream.",
        rows(|c| load(&c.backpressure_waits)),
    )?;
    counter_f64(
        e,
        "sardonyx_backpressure_wait_seconds",
        "Seconds a task slot waited for room downstream.",
        labelled
            .iter()
            .map(|&(l, c)| (l, load(&c.backpressure_nanos) as f64 / 1e9)),
    )?;
    let now_ms = epoch_seconds(SystemTime::now()) * 1000.0;
    let with_watermark: Vec<([(&str, &str); 3], i64)> = labelled
        .iter()
        .filter_map(|&(l, c)| Some((l, c.watermark()?)))
        .collect();
    gauge(
        e,
        "sardonyx_watermark_timestamp_seconds",
        "A task slot's watermark (event time, seconds since the Unix epoch).",
        with_watermark
            .iter()
            .map(|&(l, wm)| (l, wm as f64 / 1000.0)),
    )?;
    gauge(
        e,
        "sardonyx_watermark_lag_seconds",
        "How far a task slot's watermark is behind the wall clock.",
        with_watermark
            .iter()
            .map(|&(l, wm)| (l, (now_ms - wm as f64) / 1000.0)),
    )?;
    histogram(
        e,
        "sardonyx_batch_duration_seconds",
        "Wall time of a task slot's batches.",
        labelled.iter().map(|&(l, c)| (l, &c.batch_seconds)),
    )?;

    let triggers = p.triggers();
    counter(
        e,
        "sardonyx_firings",
        "Trigger firings.",
        triggers.iter().map(|t| {
            (
                [
                    ("job", name),
                    ("task", t.task.as_str()),
                    ("window", t.window.as_str()),
                    ("trigger", t.trigger.as_str()),
                ],
                load(&t.count),
            )
        }),
    )?;

    let job_label = [("job", name)];
    counter(
        e,
        "sardonyx_unmatched_segments",
        "Segments that matched none of their task's flow conditions.",
        [(job_label, load(&p.unmatched))],
    )?;
    let recoveries = p.recoveries.lock().expect("recoveries lock").len() as u64;
    counter(
        e,
        "sardonyx_slot_recoveries",
        "Windowed slots recovered from their ledgers.",
        [(job_label, recoveries)],
    )?;
    Ok(())
}

fn encode_log(e: &mut DescriptorEncoder, log: &ObservedLog) -> std::fmt::Result {
    let l = [("log", log.name.as_str())];
    if let Some(t) = &log.timing {
        counter(
            e,
            "sardonyx_state_log_appends",
            "Records appended to the state log (committed).",
            [(l, load(&t.appends))],
        )?;
        counter(
            e,
            "sardonyx_state_log_append_bytes",
            "Bytes of the records appended to the state log.",
            [(l, load(&t.append_bytes))],
        )?;
        counter(
            e,
            "sardonyx_state_log_append_errors",
            "Appends to the state log that failed.",
            [(l, load(&t.append_errors))],
        )?;
        counter(
            e,
            "sardonyx_state_log_compactions",
            "Snapshots stored in the state log (ledger compactions).",
            [(l, load(&t.snapshots))],
        )?;
        histogram(
            e,
            "sardonyx_state_log_append_duration_seconds",
            "Seconds from an append to its commit (quorum, fsync).",
            [(l, &t.append_seconds)],
        )?;
    }
    let Some(node) = &log.node else {
        return Ok(());
    };
    if let Some(status) = node.status() {
        let role = format!("{:?}", status.role).to_lowercase();
        gauge(
            e,
            "sardonyx_raft_role",
            "1 for the Raft role this process's state-log node has.",
            [([("log", log.name.as_str()), ("role", role.as_str())], 1.0)],
        )?;
        gauge(
            e,
            "sardonyx_raft_term",
            "The Raft term of this process's state-log node.",
            [(l, status.current_term as f64)],
        )?;
        gauge(
            e,
            "sardonyx_raft_last_log_index",
            "Index of the node's last Raft log entry.",
            [(l, status.last_log_index.map_or(0.0, |i| i as f64))],
        )?;
        gauge(
            e,
            "sardonyx_raft_applied_index",
            "Index of the last Raft log entry applied (so committed) by the node.",
            [(l, status.last_applied.map_or(0.0, |i| i as f64))],
        )?;
    }
    if let Some(stats) = node.commit_stats() {
        counter(
            e,
            "sardonyx_state_log_commands",
            "Ledger commands (appends, snapshots) the node received as leader.",
            [(l, stats.commands)],
        )?;
        counter(
            e,
            "sardonyx_state_log_raft_writes",
            "Raft entries the node's group commit packed those commands into.",
            [(l, stats.raft_writes)],
        )?;
    }
    if let Some(syncs) = node.wal_syncs() {
        counter(
            e,
            "sardonyx_state_log_wal_syncs",
            "WAL syncs (fsyncs) of the node's Raft log store.",
            [(l, syncs)],
        )?;
    }
    Ok(())
}

fn counter<L: EncodeLabelSet>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (L, u64)>,
) -> std::fmt::Result {
    let mut family = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        ConstCounter::new(v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter_f64<L: EncodeLabelSet>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (L, f64)>,
) -> std::fmt::Result {
    let mut family = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        ConstCounter::new(v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge<L: EncodeLabelSet>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (L, f64)>,
) -> std::fmt::Result {
    let mut family = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn histogram<'h, L: EncodeLabelSet>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (L, &'h Histogram)>,
) -> std::fmt::Result {
    let mut family = e.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, h) in rows {
        h.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::metrics::{JobGraph, ObservedJob};
    use crate::runtime::Progress;

    /// Exact lines for a slot's counters, a trigger's firings and the job's totals; a slot
    /// without a watermark has no watermark sample.
    #[test]
    fn the_exposition_names_each_count_by_job_task_and_slot() {
        let progress = Arc::new(Progress::default());
        let read = progress.slot("read", 0);
        read.segments_in.fetch_add(12, Ordering::Relaxed);
        read.rejected.fetch_add(1, Ordering::Relaxed);
        read.set_watermark(Some(1_700_000_000_500));
        progress
            .slot("count", 1)
            .batches
            .fetch_add(3, Ordering::Relaxed);
        progress
            .trigger("count", "per-minute", "closed")
            .count
            .fetch_add(4, Ordering::Relaxed);
        progress
            .slot("count", 1)
            .late
            .fetch_add(2, Ordering::Relaxed);
        let observed = Observed {
            job: Some(ObservedJob {
                name: "votes".to_owned(),
                graph: JobGraph::default(),
                progress,
                started: SystemTime::now(),
            }),
            log: None,
            cluster: None,
        };
        let text = encode(&observed);
        for line in [
            "# TYPE sardonyx_segments_in counter",
            r#"sardonyx_segments_in_total{job="votes",task="read",slot="0"} 12"#,
            r#"sardonyx_segments_in_total{job="votes",task="count",slot="1"} 0"#,
            r#"sardonyx_rejected_segments_total{job="votes",task="read",slot="0"} 1"#,
            r#"sardonyx_batches_total{job="votes",task="count",slot="1"} 3"#,
            r#"sardonyx_watermark_timestamp_seconds{job="votes",task="read",slot="0"} 1700000000.5"#,
            r#"sardonyx_firings_total{job="votes",task="count",window="per-minute",trigger="closed"} 4"#,
            r#"sardonyx_late_segments_total{job="votes",task="count",slot="1"} 2"#,
            "# TYPE sardonyx_batch_duration_seconds histogram",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert!(!text.contains(r#"sardonyx_watermark_timestamp_seconds{job="votes",task="count""#));
        assert!(text.contains("\nprocess_resident_memory_bytes "), "{text}");
    }
}
