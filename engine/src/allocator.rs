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
//! Freed memory that stays in an arena's free lists is still resident. Segments' field lists
//! recycled from outputs to inputs ([`crate::recycle`]) live long and pin the pages around
//! them, so a thread trims every arena twice a second (`malloc_trim`, which gives whole free
//! pages back). Vote Q4 exactly-once at 10M events peaked at 96.3–100.3 MiB with recycling and
//! no trim (six runs), 95.9–96.3 MiB with the trim (three), at the same CPU time within this VM's
//! noise (BENCHMARKS.md "Session 22").
//!
//! Only a program that owns its process should call this (the `sardonyx` binary and the
//! benchmark do); a library embedded in someone else's program leaves their allocator alone.

/// The fixed mmap threshold: blocks of this size or more are mapped and unmapped on their own.
pub const MMAP_THRESHOLD_BYTES: usize = 256 << 10;

/// How often [`bound_retained_memory`]'s thread gives the arenas' free pages back.
pub const TRIM_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// Fixes glibc's mmap threshold at [`MMAP_THRESHOLD_BYTES`] (which also stops it from moving)
/// and starts a thread that gives the free pages of every arena back to the system every
/// [`TRIM_EVERY`] (`malloc_trim`). Returns whether the allocator took the setting; elsewhere
/// than glibc it does nothing and returns `false`.
pub fn bound_retained_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // One trimming thread per process, however often this is called.
        static TRIMMER: std::sync::Once = std::sync::Once::new();
        TRIMMER.call_once(|| {
            let _ = std::thread::Builder::new()
                .name("malloc-trim".into())
                .spawn(|| loop {
                    std::thread::sleep(TRIM_EVERY);
                    // SAFETY: `malloc_trim` takes the arena locks it needs; any thread may call
                    // it.
                    #[allow(unsafe_code)]
                    unsafe {
                        libc::malloc_trim(0);
                    }
                });
        });
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
