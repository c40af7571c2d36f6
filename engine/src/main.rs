//! The `sardonyx` binary (see [`sardonyx::cli`]).

use std::process::ExitCode;

fn main() -> ExitCode {
    sardonyx::cli::main()
}
