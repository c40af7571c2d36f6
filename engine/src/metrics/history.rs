//! A short history of a job's counters ([`History`]), sampled once a second by the metrics
//! server, from which the dashboard draws throughput and watermark lag over the last minutes.
//! Pure: samples in, rates out.

use std::collections::{BTreeMap, VecDeque};

/// How many samples are kept (at one a second: five minutes).
pub const SAMPLES: usize = 300;

/// Per task, what was counted at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// When, in seconds on a monotonic clock (since the server started).
    pub at: f64,
    /// Per task: segments taken in so far (summed over its slots).
    pub segments_in: BTreeMap<String, u64>,
    /// Per task: its watermark lag in seconds (the greatest over its slots), if it has one.
    pub lag: BTreeMap<String, f64>,
}

/// The latest [`SAMPLES`] samples, oldest first.
#[derive(Debug, Default)]
pub struct History {
    samples: VecDeque<Sample>,
}

impl History {
    /// Adds a sample (the oldest goes once there are [`SAMPLES`]).
    pub fn push(&mut self, sample: Sample) {
        if self.samples.len() == SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }

    /// The samples, oldest first.
    pub fn samples(&self) -> impl Iterator<Item = &Sample> {
        self.samples.iter()
    }

    /// Per task, segments per second between consecutive samples: `(at, rate)` points.
    pub fn rates(&self) -> BTreeMap<String, Vec<(f64, f64)>> {
        let mut out: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for (a, b) in self.samples.iter().zip(self.samples.iter().skip(1)) {
            let dt = b.at - a.at;
            if dt <= 0.0 {
                continue;
            }
            for (task, &n) in &b.segments_in {
                let before = a.segments_in.get(task).copied().unwrap_or(0);
                let rate = n.saturating_sub(before) as f64 / dt;
                out.entry(task.clone()).or_default().push((b.at, rate));
            }
        }
        out
    }

    /// Per task, segments per second from the sample about `window` seconds before `now` (or
    /// the oldest one after it) to `now`'s counts: the live throughput.
    pub fn throughput(
        &self,
        now: f64,
        counts: &BTreeMap<String, u64>,
        window: f64,
    ) -> BTreeMap<String, f64> {
        let since = self
            .samples
            .iter()
            .find(|s| s.at >= now - window)
            .filter(|s| now > s.at);
        counts
            .iter()
            .map(|(task, &n)| {
                let rate = since.map_or(0.0, |s| {
                    let before = s.segments_in.get(task).copied().unwrap_or(0);
                    n.saturating_sub(before) as f64 / (now - s.at)
                });
                (task.clone(), rate)
            })
            .collect()
    }

    /// Per task, its watermark lag over time: `(at, seconds)` points.
    pub fn lags(&self) -> BTreeMap<String, Vec<(f64, f64)>> {
        let mut out: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for s in &self.samples {
            for (task, &lag) in &s.lag {
                out.entry(task.clone()).or_default().push((s.at, lag));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn sample(at: f64, n: u64) -> Sample {
        Sample {
            at,
            segments_in: BTreeMap::from([("t".to_owned(), n)]),
            lag: BTreeMap::from([("t".to_owned(), at * 2.0)]),
        }
    }

    /// Rates are the differences of consecutive samples over their time apart; the live
    /// throughput runs from the first sample inside the window to the current count.
    #[test]
    fn rates_and_throughput_follow_the_counts() {
        let mut h = History::default();
        for (at, n) in [(0.0, 0), (1.0, 100), (2.0, 100), (4.0, 500)] {
            h.push(sample(at, n));
        }
        assert_eq!(h.rates()["t"], vec![(1.0, 100.0), (2.0, 0.0), (4.0, 200.0)]);
        let now = BTreeMap::from([("t".to_owned(), 700)]);
        // From the sample at 2.0 (the first at or after 5.0 − 3.0) to 5.0.
        assert_eq!(h.throughput(5.0, &now, 3.0)["t"], 200.0);
        // No sample inside the window: no rate to speak of.
        assert_eq!(h.throughput(20.0, &now, 3.0)["t"], 0.0);
        assert_eq!(
            h.lags()["t"],
            vec![(0.0, 0.0), (1.0, 2.0), (2.0, 4.0), (4.0, 8.0)]
        );
    }

    proptest! {
        /// At most `SAMPLES` are kept, the latest ones, in order.
        #[test]
        fn the_history_keeps_the_latest_samples(n in 0_usize..700) {
            let mut h = History::default();
            for i in 0..n {
                h.push(sample(i as f64, i as u64));
            }
            let kept: Vec<f64> = h.samples().map(|s| s.at).collect();
            let expected: Vec<f64> = (n.saturating_sub(SAMPLES)..n).map(|i| i as f64).collect();
            prop_assert_eq!(kept, expected);
            prop_assert!(h.rates().values().flatten().all(|&(_, r)| r == 1.0));
        }
    }
}
