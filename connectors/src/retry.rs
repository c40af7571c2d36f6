//! Retrying retryable connector errors with exponential backoff, up to a bound.
//!
//! A sink's write that fails with a [`ConnectorError::Retryable`] error (a broker or server
//! briefly away) is tried again after a delay that doubles from `first_delay_ms` up to
//! `max_delay_ms`, with jitter. The job gives up — and fails with
//! [`ConnectorError::RetriesExhausted`], which keeps the last cause — after `max_retries`
//! retries or once `max_elapsed_ms` have passed since the first attempt, whichever comes first.
//! A fatal error is never retried.
//!
//! The policy is read from a plugin's (or sync trigger's) `params.retry`, e.g.
//! `{"retry": {"max_retries": 10, "first_delay_ms": 100, "max_delay_ms": 5000,
//! "max_elapsed_ms": 60000}}` (every field optional; those are the defaults).

use std::time::{Duration, Instant};

use backon::{BlockingRetryable, ExponentialBuilder};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::params::{self, Fields, Problems};
use crate::ConnectorError;

/// How often and how long a retryable failure is tried again (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0: never retry).
    pub max_retries: u32,
    /// The delay before the first retry, in milliseconds; each later delay doubles.
    pub first_delay_ms: u64,
    /// The longest delay between two attempts, in milliseconds.
    pub max_delay_ms: u64,
    /// No retry starts once this many milliseconds have passed since the first attempt.
    pub max_elapsed_ms: u64,
}

impl Default for RetryPolicy {
    /// 10 retries, 100 ms doubling up to 5 s (about 26 s of waiting in all), at most 60 s.
    fn default() -> Self {
        RetryPolicy {
            max_retries: 10,
            first_delay_ms: 100,
            max_delay_ms: 5_000,
            max_elapsed_ms: 60_000,
        }
    }
}

/// The fields of `params.retry`.
const FIELDS: [&str; 4] = [
    "max_retries",
    "first_delay_ms",
    "max_delay_ms",
    "max_elapsed_ms",
];

impl RetryPolicy {
    /// The policy in `params.retry` (the default if absent). Callers validate first
    /// ([`check_params`]); this reports the problems it finds as a fatal error.
    pub fn from_params(params: &Value) -> Result<Self, ConnectorError> {
        let problems = check_params(params);
        if !problems.is_empty() {
            return Err(ConnectorError::fatal(
                "retry params",
                params::describe(&problems),
            ));
        }
        match params.get("retry") {
            None | Some(Value::Null) => Ok(RetryPolicy::default()),
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| ConnectorError::fatal("retry params", e.to_string())),
        }
    }

    /// Runs `op` (which must be safe to repeat: a sink's write of a whole batch is), retrying
    /// its retryable errors with backoff. `context` says what is being done, for the logs and
    /// for the error given after the last retry.
    pub fn run<T>(
        &self,
        context: &str,
        mut op: impl FnMut() -> Result<T, ConnectorError>,
    ) -> Result<T, ConnectorError> {
        let start = Instant::now();
        let max_elapsed = Duration::from_millis(self.max_elapsed_ms);
        let mut attempts: u32 = 1;
        let backoff = ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(self.first_delay_ms))
            .with_max_delay(Duration::from_millis(self.max_delay_ms))
            .with_factor(2.0)
            .with_max_times(self.max_retries as usize)
            .with_jitter();
        let result = (&mut op)
            .retry(backoff)
            .sleep(std::thread::sleep)
            .when(|e: &ConnectorError| e.is_retryable() && start.elapsed() < max_elapsed)
            .notify(|e: &ConnectorError, delay: Duration| {
                attempts += 1;
                tracing::warn!(
                    context,
                    error = %e,
                    retry = attempts - 1,
                    delay_ms = delay.as_millis() as u64,
                    "retrying after a retryable error"
                );
            })
            .call();
        match result {
            Err(e) if e.is_retryable() => Err(ConnectorError::RetriesExhausted {
                context: context.to_owned(),
                attempts,
                elapsed_ms: start.elapsed().as_millis() as u64,
                source: Box::new(e),
            }),
            other => other,
        }
    }
}

/// Checks `params.retry` (if present) for a plugin whose own checks use [`Fields`].
pub(crate) fn check(f: &mut Fields<'_>) {
    if let Some(v) = f.value("retry", false) {
        for (field, message) in check_value(v) {
            f.problem(field, message);
        }
    }
}

/// Problems with `params.retry`, as `(field, message)` with fields such as
/// `retry.max_retries`; for plugins that check their params without a `Fields` checker.
pub fn check_params(params: &Value) -> Problems {
    match params.get("retry") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => check_value(v),
    }
}

fn check_value(v: &Value) -> Problems {
    let Value::Object(obj) = v else {
        return vec![(
            "retry".to_owned(),
            format!(
                "must be an object such as {{\"max_retries\": 10}}, got {}",
                params::kind(v)
            ),
        )];
    };
    let mut problems = Problems::new();
    for (k, v) in obj {
        if !FIELDS.contains(&k.as_str()) {
            problems.push((
                format!("retry.{k}"),
                format!("unknown field; expected one of: {}", FIELDS.join(", ")),
            ));
        } else if v.as_u64().is_none() || (k == "max_retries" && v.as_u64() > Some(1_000)) {
            let what = if k == "max_retries" {
                "an integer from 0 to 1000"
            } else {
                "a non-negative integer (milliseconds)"
            };
            problems.push((format!("retry.{k}"), format!("must be {what}, got {v}")));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn retryable() -> ConnectorError {
        ConnectorError::Retryable {
            context: "writing".to_owned(),
            message: "server away".to_owned(),
        }
    }

    fn quick(max_retries: u32) -> RetryPolicy {
        RetryPolicy {
            max_retries,
            first_delay_ms: 1,
            max_delay_ms: 2,
            max_elapsed_ms: 10_000,
        }
    }

    #[test]
    fn a_transient_failure_is_retried_until_it_passes() {
        let mut calls = 0;
        let r = quick(5).run("writing", || {
            calls += 1;
            if calls < 4 {
                Err(retryable())
            } else {
                Ok(calls)
            }
        });
        assert_eq!(r.unwrap(), 4);
    }

    #[test]
    fn the_bound_gives_up_with_the_cause() {
        let mut calls = 0;
        let e = quick(3)
            .run("writing to t", || -> Result<(), _> {
                calls += 1;
                Err(retryable())
            })
            .unwrap_err();
        assert_eq!(calls, 4, "the first attempt and three retries");
        assert!(!e.is_retryable());
        let ConnectorError::RetriesExhausted {
            attempts, source, ..
        } = &e
        else {
            panic!("expected RetriesExhausted, got {e:?}");
        };
        assert_eq!(*attempts, 4);
        assert_eq!(source.to_string(), "writing: server away (retryable)");
        let text = e.to_string();
        assert!(
            text.starts_with("writing to t: gave up after 4 attempts in ")
                && text.ends_with(" ms: writing: server away (retryable)"),
            "{text}"
        );
    }

    #[test]
    fn the_time_bound_stops_retrying() {
        let policy = RetryPolicy {
            max_retries: 1_000,
            first_delay_ms: 5,
            max_delay_ms: 5,
            max_elapsed_ms: 30,
        };
        let mut calls = 0;
        let e = policy
            .run("writing", || -> Result<(), _> {
                calls += 1;
                Err(retryable())
            })
            .unwrap_err();
        assert!(matches!(e, ConnectorError::RetriesExhausted { .. }));
        assert!((2..=12).contains(&calls), "{calls} attempts in about 30 ms");
    }

    #[test]
    fn a_fatal_error_is_not_retried() {
        let mut calls = 0;
        let e = quick(5)
            .run("writing", || -> Result<(), _> {
                calls += 1;
                Err(ConnectorError::fatal("writing", "bad data"))
            })
            .unwrap_err();
        assert_eq!(calls, 1);
        assert_eq!(e.to_string(), "writing: bad data");
    }

    #[test]
    fn params_are_checked_and_defaulted() {
        assert_eq!(
            RetryPolicy::from_params(&json!({"path": "x"})).unwrap(),
            RetryPolicy::default()
        );
        let p = RetryPolicy::from_params(&json!({"retry": {"max_retries": 2}})).unwrap();
        assert_eq!(
            p,
            RetryPolicy {
                max_retries: 2,
                ..RetryPolicy::default()
            }
        );
        assert_eq!(
            check_params(&json!({"retry": {"max_retries": -1, "delay": 3}})),
            vec![
                (
                    "retry.delay".to_owned(),
                    "unknown field; expected one of: max_retries, first_delay_ms, max_delay_ms, max_elapsed_ms".to_owned()
                ),
                (
                    "retry.max_retries".to_owned(),
                    "must be an integer from 0 to 1000, got -1".to_owned()
                ),
            ]
        );
        assert_eq!(
            check_params(&json!({"retry": 3})),
            vec![(
                "retry".to_owned(),
                "must be an object such as {\"max_retries\": 10}, got an integer".to_owned()
            )]
        );
        assert!(RetryPolicy::from_params(&json!({"retry": []})).is_err());
    }
}
