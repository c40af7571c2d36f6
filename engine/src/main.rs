//! The `sardonyx` binary (see [`sardonyx::cli`]).

use std::process::ExitCode;

/// mimalloc instead of glibc's malloc: the per-segment path allocates small maps and strings,
/// and glibc's per-thread arenas kept freed memory in the process (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    sardonyx::cli::main()
}
