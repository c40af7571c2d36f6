//! Test-only crash points: an environment variable `N` makes the process kill itself with
//! SIGKILL (no cleanup) when a counted event happens for the `N`-th time, so crash tests can
//! stop a run at an exact point of the protocol.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// One crash point, counted per process.
pub(super) struct CrashPoint {
    var: &'static str,
    after: OnceLock<Option<u64>>,
    passed: AtomicU64,
}

impl CrashPoint {
    /// The crash point set by the environment variable `var`.
    pub(super) const fn new(var: &'static str) -> Self {
        CrashPoint {
            var,
            after: OnceLock::new(),
            passed: AtomicU64::new(0),
        }
    }

    /// Counts one pass; on the `N`-th, kills this process.
    pub(super) fn pass(&self) {
        let after = *self
            .after
            .get_or_init(|| std::env::var(self.var).ok().and_then(|v| v.parse().ok()));
        if after.is_some_and(|n| self.passed.fetch_add(1, Ordering::SeqCst) + 1 == n) {
            kill_this_process();
        }
    }
}

/// SIGKILL to this process (no cleanup); this thread does nothing more.
fn kill_this_process() -> ! {
    tracing::warn!("test crash point: killing this process with SIGKILL");
    let sent = std::process::Command::new("kill")
        .args(["-9", &std::process::id().to_string()])
        .status()
        .is_ok_and(|s| s.success());
    if !sent {
        // No `kill` to run: die at once all the same (SIGABRT, no cleanup either).
        std::process::abort();
    }
    // SIGKILL is on its way.
    loop {
        std::thread::park();
    }
}
