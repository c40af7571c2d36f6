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
//! glibc also gives each thread that allocates an arena of its own, up to eight per core, and
//! each arena keeps the pages of its own peak. Most of the per-event allocations now go around
//! the allocator (segments' field lists are recycled, [`crate::recycle`]), so fewer arenas cost
//! little contention and save the memory the others keep: one arena per two cores. On this
//! project's 2-core machine (one arena) Q4 of the vote benchmark at 10M events peaked at
//! 90 MiB instead of 97–98, Q2 at 62–63 MiB instead of 66–68, with the same CPU time
//! (BENCHMARKS.md "Session 22"). A many-core machine has not been measured.
//!
//! Only a program that owns its process should call this (the `sardonyx` binary and the
//! benchmark do); a library embedded in someone else's program leaves their allocator alone.

/// The fixed mmap threshold: blocks of this size or more are mapped and unmapped on their own.
pub const MMAP_THRESHOLD_BYTES: usize = 256 << 10;

/// The arenas glibc may make for a machine of `cores` cores: one per two cores, at least one.
pub fn arenas_for(cores: usize) -> usize {
    (cores / 2).max(1)
}

/// Fixes glibc's mmap threshold at [`MMAP_THRESHOLD_BYTES`] (which also stops it from moving)
/// and bounds its arenas at [`arenas_for`] the machine's cores. Returns whether the allocator
/// took both settings; elsewhere than glibc it does nothing and returns `false`.
pub fn bound_retained_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let arenas = libc::c_int::try_from(arenas_for(cores)).unwrap_or(libc::c_int::MAX);
        // SAFETY: `mallopt` only changes allocator parameters; glibc takes the arena locks it
        // needs, so it may be called at any time from any thread. It returns 0 (and changes
        // nothing) for a value it does not accept.
        #[allow(unsafe_code)]
        let accepted = unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES as libc::c_int) == 1
                && libc::mallopt(libc::M_ARENA_MAX, arenas) == 1
        };
        accepted
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
    fn glibc_takes_the_threshold_and_the_arenas() {
        assert!(super::bound_retained_memory());
    }

    #[test]
    fn one_arena_per_two_cores_and_at_least_one() {
        let arenas: Vec<usize> = [0, 1, 2, 3, 4, 64].map(super::arenas_for).into();
        assert_eq!(arenas, [1, 1, 1, 1, 2, 32]);
    }
}
