//! A test-only hook: the environment variable [`DROP_INCOMING_BATCH`] = `N` makes this process
//! drop the `N`-th batch frame it receives (once in its life), as a connection that broke
//! with the frame in it would: the batch is never delivered nor acknowledged (its credit is
//! given back), so its sender's ack tree stays pending until `pending_timeout`. The tests of
//! replay after `pending_timeout` set it; unset, it costs one load per batch.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The environment variable: which incoming batch (1, 2, …) this process drops.
pub const DROP_INCOMING_BATCH: &str = "SARDONYX_TEST_DROP_INCOMING_BATCH";

/// Counts one incoming batch; true for the one to drop.
pub(super) fn drop_this_batch() -> bool {
    static NTH: OnceLock<Option<u64>> = OnceLock::new();
    static SEEN: AtomicU64 = AtomicU64::new(0);
    let nth = *NTH.get_or_init(|| std::env::var(DROP_INCOMING_BATCH).ok()?.parse().ok());
    nth.is_some_and(|n| SEEN.fetch_add(1, Ordering::SeqCst) + 1 == n)
}
