//! Test-only plugins, registered only in a process whose environment sets
//! [`FAILING_WRITES`] (the real-process tests of restarts do; nothing else should): the output
//! `sardonyx-test/failing-jsonl` is `sardonyx/jsonl`'s, except that each of its sinks fails its
//! second write while the process has failures left — the variable's value is how many, for
//! the process's life. So a test can make a task fail a bounded number of times in one process
//! and watch `flux_policy: recover` restart the job.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use sardonyx_connectors::ConnectorError;

use crate::plugin::{OutputPlugin, PluginFamily, SegmentSink};
use crate::segment::Segment;

/// The environment variable: how many writes of `sardonyx-test/failing-jsonl` fail in this
/// process (each sink's second write fails while some are left).
pub const FAILING_WRITES: &str = "SARDONYX_TEST_FAILING_WRITES";

/// The failures this process has left (read from the environment once).
fn failures_left() -> Option<&'static AtomicU64> {
    static LEFT: OnceLock<Option<AtomicU64>> = OnceLock::new();
    LEFT.get_or_init(|| {
        let n = std::env::var(FAILING_WRITES).ok()?.parse().ok()?;
        Some(AtomicU64::new(n))
    })
    .as_ref()
}

/// The test plugins, if [`FAILING_WRITES`] is set.
pub(crate) fn family() -> Option<PluginFamily> {
    let left = failures_left()?;
    let (_, jsonl) = super::jsonl::family()
        .outputs
        .into_iter()
        .find(|(name, _)| *name == "sardonyx/jsonl")
        .expect("the jsonl output");
    let open = jsonl.open.clone();
    Some(PluginFamily {
        outputs: vec![(
            "sardonyx-test/failing-jsonl",
            OutputPlugin {
                check: jsonl.check,
                open: Arc::new(move |ctx| {
                    Ok(Box::new(FailingSink {
                        inner: open(ctx)?,
                        writes: 0,
                        left,
                    }) as Box<dyn SegmentSink>)
                }),
            },
        )],
        ..PluginFamily::default()
    })
}

struct FailingSink {
    inner: Box<dyn SegmentSink>,
    writes: u64,
    left: &'static AtomicU64,
}

impl SegmentSink for FailingSink {
    fn write(&mut self, segments: &[Segment]) -> Result<(), ConnectorError> {
        self.writes += 1;
        let fail = self.writes == 2
            && self
                .left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        if fail {
            tracing::warn!("test hook: a write of sardonyx-test/failing-jsonl fails");
            return Err(ConnectorError::Fatal {
                context: "writing".into(),
                message: "the test sink fails".into(),
            });
        }
        self.inner.write(segments)
    }

    fn flush(&mut self) -> Result<(), ConnectorError> {
        self.inner.flush()
    }
}
