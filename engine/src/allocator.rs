//! Process-wide tuning of the C allocator, for the programs that own their process.
//!
//! glibc serves a block of at least its *mmap threshold* (128 KiB at start) with a mapping of
//! its own, returned to the system when the block is freed. But each time such a block is
//! freed, glibc raises the threshold to that block's size (up to 32 MiB), so from then on the
//! engine's large short-lived buffers (a batch's transitions and firings, a ledger snapshot and
//! its copies on the way into RocksDB, RocksDB's block builders) come from the per-thread
//! heaps, where freeing them rarely gives memory back. A windowed job's resident memory then
//! grows far past what it holds: Q4 of the vote benchmark at 10M events peaked at 158–178 MiB
//! of RSS with an 83 MB heap. Fixing the threshold keeps large blocks in mappings of their own.
//!
//! Only a program that owns its process should call this (the `sardonyx` binary and the
//! benchmark do); a library embedded in someone else's program leaves their allocator alone.

/// The fixed mmap threshold: blocks of this size or more are mapped and unmapped on their own.
pub const MMAP_THRESHOLD_BYTES: usize = 256 << 10;

/// Fixes glibc's mmap threshold at [`MMAP_THRESHOLD_BYTES`] (which also stops it from moving).
/// Returns whether the allocator took the setting; elsewhere than glibc it does nothing and
/// returns `false`.
pub fn bound_retained_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallopt` only changes allocator parameters; glibc takes the arena locks it
        // needs, so it may be called at any time from any thread. It returns 0 (and changes
        // nothing) for a value it does not accept.
        #[allow(unsafe_code)]
        let accepted =
            unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES as libc::c_int) };
        accepted == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_takes_the_threshold() {
        assert!(super::bound_retained_memory());
    }
}
