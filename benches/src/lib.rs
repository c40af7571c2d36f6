//! Benchmarks of Sardonyx: criterion micro-benchmarks for the hot paths and the `vote-bench`
//! macro benchmark (the vote workload of `../shared/bench-peers`). Filled in by the benchmark work.
