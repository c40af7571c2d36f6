//! [`TimedLedgers`]: a state log ([`Ledgers`]) whose appends are timed and counted in a
//! [`LedgerTiming`], so that a metrics endpoint shows the state log's append latency, records,
//! bytes and compactions as this process sees them, whatever log is behind (embedded or a
//! cluster). Two clock readings per append (one per batch record), nothing per segment.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use sardonyx_state_log::{BoxFuture, LedgerInfo, LedgerRead, Ledgers, RequestId, Result};

/// What a process's appends to its state log took, and how many it made.
#[derive(Debug)]
pub struct LedgerTiming {
    /// Appends completed (committed).
    pub appends: AtomicU64,
    /// Their record bytes.
    pub append_bytes: AtomicU64,
    /// Appends that failed (fenced, unavailable, …).
    pub append_errors: AtomicU64,
    /// Snapshots stored (compactions).
    pub snapshots: AtomicU64,
    /// Nanoseconds spent in appends, all told.
    pub append_nanos: AtomicU64,
    /// Seconds from an append's call to its commit (committed on a quorum and fsynced).
    pub append_seconds: Histogram,
}

impl Default for LedgerTiming {
    fn default() -> Self {
        LedgerTiming {
            appends: AtomicU64::new(0),
            append_bytes: AtomicU64::new(0),
            append_errors: AtomicU64::new(0),
            snapshots: AtomicU64::new(0),
            append_nanos: AtomicU64::new(0),
            // 0.1 ms to about 3 s.
            append_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
        }
    }
}

impl LedgerTiming {
    fn appended(&self, started: Instant, bytes: usize, ok: bool) {
        let took = started.elapsed();
        self.append_seconds.observe(took.as_secs_f64());
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.append_nanos.fetch_add(nanos, Ordering::Relaxed);
        if ok {
            self.appends.fetch_add(1, Ordering::Relaxed);
            self.append_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        } else {
            self.append_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A state log whose appends and snapshots are timed and counted.
pub struct TimedLedgers {
    inner: Arc<dyn Ledgers>,
    timing: Arc<LedgerTiming>,
}

impl TimedLedgers {
    /// `inner`, timed into `timing`.
    pub fn new(inner: Arc<dyn Ledgers>, timing: Arc<LedgerTiming>) -> Self {
        TimedLedgers { inner, timing }
    }
}

impl Ledgers for TimedLedgers {
    fn append<'a>(
        &'a self,
        ledger: &'a str,
        request: RequestId,
        record: Vec<u8>,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let (started, bytes) = (Instant::now(), record.len());
            let r = self.inner.append(ledger, request, record).await;
            self.timing.appended(started, bytes, r.is_ok());
            r
        })
    }

    fn read<'a>(
        &'a self,
        ledger: &'a str,
        from_position: u64,
    ) -> BoxFuture<'a, Result<LedgerRead>> {
        self.inner.read(ledger, from_position)
    }

    fn snapshot<'a>(
        &'a self,
        ledger: &'a str,
        covers_position: u64,
        bytes: Vec<u8>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let r = self.inner.snapshot(ledger, covers_position, bytes).await;
            if r.is_ok() {
                self.timing.snapshots.fetch_add(1, Ordering::Relaxed);
            }
            r
        })
    }

    fn append_fenced<'a>(
        &'a self,
        ledger: &'a str,
        fence: u64,
        request: RequestId,
        record: Vec<u8>,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let (started, bytes) = (Instant::now(), record.len());
            let r = self
                .inner
                .append_fenced(ledger, fence, request, record)
                .await;
            self.timing.appended(started, bytes, r.is_ok());
            r
        })
    }

    fn snapshot_fenced<'a>(
        &'a self,
        ledger: &'a str,
        fence: u64,
        covers_position: u64,
        bytes: Vec<u8>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let r = self
                .inner
                .snapshot_fenced(ledger, fence, covers_position, bytes)
                .await;
            if r.is_ok() {
                self.timing.snapshots.fetch_add(1, Ordering::Relaxed);
            }
            r
        })
    }

    fn info<'a>(&'a self, ledger: &'a str) -> BoxFuture<'a, Result<LedgerInfo>> {
        self.inner.info(ledger)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Appends on a real embedded log are counted with their bytes and timed; a fenced-off
    /// append counts as an error; snapshots are counted.
    #[tokio::test]
    async fn appends_and_snapshots_on_the_embedded_log_are_counted_and_timed() {
        let dir = tempfile::tempdir().unwrap();
        let log = sardonyx_state_log::EmbeddedLog::open(dir.path().join("log"))
            .await
            .unwrap();
        let timing = Arc::new(LedgerTiming::default());
        let timed = TimedLedgers::new(Arc::new(log.clone()), timing.clone());
        let request = |n: u64| RequestId { client: 7, seq: n };
        timed.append("l", request(1), vec![1; 10]).await.unwrap();
        timed
            .append_fenced("l", 2, request(2), vec![2; 5])
            .await
            .unwrap();
        assert!(timed
            .append_fenced("l", 1, request(3), vec![3; 5])
            .await
            .is_err());
        timed.snapshot("l", 1, vec![9; 4]).await.unwrap();
        assert_eq!(timing.appends.load(Ordering::Relaxed), 2);
        assert_eq!(timing.append_bytes.load(Ordering::Relaxed), 15);
        assert_eq!(timing.append_errors.load(Ordering::Relaxed), 1);
        assert_eq!(timing.snapshots.load(Ordering::Relaxed), 1);
        let read = timed.read("l", 0).await.unwrap();
        assert_eq!(read.snapshot.map(|(position, _)| position), Some(1));
        drop(timed);
        log.close().await.unwrap();
    }
}
