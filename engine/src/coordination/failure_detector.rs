//! Failure detection, the pure half (DESIGN §6): a process heartbeats the process it watches
//! ([`watched_by`](super::ring::watched_by)) every `heartbeat_interval`, and after
//! `failure_timeout` without an answer appends `leave_cluster` for it. The heartbeats, their
//! answers and the clock are the runtime's; this machine only decides, from events stamped with
//! a monotonic time the caller reads (`now`, any fixed origin), what to do.
//!
//! [`LogLease`] is the other half of the rule: a process that has not reached the log for
//! `failure_timeout` stops its slots (owner epochs fence it in any case).

use std::time::Duration;

use super::entry::ProcessId;

/// The default time between heartbeats.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(200);

/// The default time without an answer after which a watched process is declared gone.
pub const DEFAULT_FAILURE_TIMEOUT: Duration = Duration::from_secs(2);

/// The failure detector's timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DetectorConfig {
    /// Time between heartbeats.
    pub heartbeat_interval: Duration,
    /// Time without an answer after which the watched process is declared gone.
    pub failure_timeout: Duration,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            failure_timeout: DEFAULT_FAILURE_TIMEOUT,
        }
    }
}

/// What the runtime must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetectorAction {
    /// Send a heartbeat to this process.
    Heartbeat(ProcessId),
    /// Append `leave_cluster` for this process.
    AppendLeave(ProcessId),
}

/// The state of one process's watch over the process it watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureDetector {
    config: DetectorConfig,
    watched: Option<ProcessId>,
    /// When the watch began or an answer last came.
    last_heard: Duration,
    last_sent: Option<Duration>,
    reported: bool,
}

impl FailureDetector {
    /// A detector watching nobody yet.
    pub fn new(config: DetectorConfig) -> Self {
        FailureDetector {
            config,
            watched: None,
            last_heard: Duration::ZERO,
            last_sent: None,
            reported: false,
        }
    }

    /// The process watched.
    pub fn watched(&self) -> Option<ProcessId> {
        self.watched
    }

    /// The ring changed: watch `target` from `now` (the same target keeps its timer; a new
    /// one gets a full `failure_timeout` from now).
    pub fn watch(&mut self, target: Option<ProcessId>, now: Duration) {
        if target != self.watched {
            self.watched = target;
            self.last_heard = now;
            self.last_sent = None;
            self.reported = false;
        }
    }

    /// `from` answered a heartbeat at `now` (answers from others are stale and ignored).
    pub fn heartbeat_answered(&mut self, from: ProcessId, now: Duration) {
        if Some(from) == self.watched && !self.reported {
            self.last_heard = self.last_heard.max(now);
        }
    }

    /// Time passed: the heartbeat due, or the leave to append (once per watched process).
    pub fn tick(&mut self, now: Duration) -> Option<DetectorAction> {
        let target = self.watched?;
        if self.reported {
            return None;
        }
        if now.saturating_sub(self.last_heard) >= self.config.failure_timeout {
            self.reported = true;
            return Some(DetectorAction::AppendLeave(target));
        }
        let due = self
            .last_sent
            .is_none_or(|t| now.saturating_sub(t) >= self.config.heartbeat_interval);
        due.then(|| {
            self.last_sent = Some(now);
            DetectorAction::Heartbeat(target)
        })
    }

    /// When [`tick`](FailureDetector::tick) next has something to do (`None`: nothing to
    /// watch), so the runtime sleeps until then.
    pub fn next_deadline(&self) -> Option<Duration> {
        if self.watched.is_none() || self.reported {
            return None;
        }
        let timeout = self.last_heard + self.config.failure_timeout;
        let beat = self
            .last_sent
            .map_or(Duration::ZERO, |t| t + self.config.heartbeat_interval);
        Some(timeout.min(beat))
    }
}

/// Whether a process may keep running its slots: it must have reached the log within
/// `failure_timeout` (by then its watcher may have declared it gone and its slots moved).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLease {
    failure_timeout: Duration,
    last_reached: Duration,
}

impl LogLease {
    /// A lease taken at `now` (the process just reached the log).
    pub fn new(failure_timeout: Duration, now: Duration) -> Self {
        LogLease {
            failure_timeout,
            last_reached: now,
        }
    }

    /// The log answered at `now`.
    pub fn log_reached(&mut self, now: Duration) {
        self.last_reached = self.last_reached.max(now);
    }

    /// Whether, at `now`, the process must stop its slots.
    pub fn expired(&self, now: Duration) -> bool {
        now.saturating_sub(self.last_reached) >= self.failure_timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const X: ProcessId = ProcessId(7);
    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn heartbeats_every_interval_and_leave_after_the_timeout() {
        let mut d = FailureDetector::new(DetectorConfig::default());
        assert_eq!(d.tick(MS(0)), None);
        d.watch(Some(X), MS(0));
        assert_eq!(d.tick(MS(0)), Some(DetectorAction::Heartbeat(X)));
        assert_eq!(d.tick(MS(199)), None);
        assert_eq!(d.tick(MS(200)), Some(DetectorAction::Heartbeat(X)));
        d.heartbeat_answered(X, MS(210));
        assert_eq!(d.next_deadline(), Some(MS(400)));
        d.heartbeat_answered(ProcessId(8), MS(5000));
        assert_eq!(d.tick(MS(2209)), Some(DetectorAction::Heartbeat(X)));
        assert_eq!(d.tick(MS(2210)), Some(DetectorAction::AppendLeave(X)));
        assert_eq!(d.tick(MS(9999)), None);
        // A new target gets a full timeout.
        d.watch(Some(ProcessId(9)), MS(10_000));
        assert_eq!(
            d.tick(MS(11_999)),
            Some(DetectorAction::Heartbeat(ProcessId(9)))
        );
        assert_eq!(
            d.tick(MS(12_000)),
            Some(DetectorAction::AppendLeave(ProcessId(9)))
        );
    }

    #[test]
    fn the_log_lease_expires_after_the_timeout() {
        let mut lease = LogLease::new(DEFAULT_FAILURE_TIMEOUT, MS(100));
        assert!(!lease.expired(MS(2099)));
        lease.log_reached(MS(1000));
        assert!(!lease.expired(MS(2999)));
        assert!(lease.expired(MS(3000)));
    }

    proptest! {
        /// With answers never more than `failure_timeout` apart, no leave is appended; once
        /// they stop, exactly one leave is appended, no earlier than the timeout after the
        /// last answer and no later than the first tick past it; heartbeats are never closer
        /// than the interval.
        #[test]
        fn leaves_exactly_when_answers_stop(
            gaps in prop::collection::vec(1_u64..1999, 0..40),
            ticks in prop::collection::vec(1_u64..300, 1..200),
        ) {
            let config = DetectorConfig::default();
            let mut d = FailureDetector::new(config);
            d.watch(Some(X), MS(0));
            let mut answers = Vec::new();
            let mut t = 0;
            for g in gaps {
                t += g;
                answers.push(t);
            }
            let last_answer = answers.last().copied().unwrap_or(0);
            let (mut now, mut next_answer) = (0_u64, 0_usize);
            let (mut last_beat, mut leaves) = (None::<u64>, Vec::new());
            for step in ticks.iter().cycle().take(400) {
                now += step;
                while next_answer < answers.len() && answers[next_answer] <= now {
                    d.heartbeat_answered(X, MS(answers[next_answer]));
                    next_answer += 1;
                }
                match d.tick(MS(now)) {
                    Some(DetectorAction::Heartbeat(p)) => {
                        prop_assert_eq!(p, X);
                        prop_assert!(last_beat.is_none_or(|b| now - b >= 200));
                        last_beat = Some(now);
                    }
                    Some(DetectorAction::AppendLeave(p)) => {
                        prop_assert_eq!(p, X);
                        leaves.push(now);
                    }
                    None => {}
                }
            }
            prop_assert!(leaves.len() <= 1);
            if let Some(&at) = leaves.first() {
                prop_assert!(at >= last_answer + 2000, "left at {at}, last answer {last_answer}");
                prop_assert!(at < last_answer + 2000 + 300);
            } else {
                prop_assert!(now < last_answer + 2000);
            }
        }
    }
}
