//! One file per verb.

mod alloc;
mod bench_alloc;
mod heaps;
mod inspect;

use crate::cli::{BenchCommand, Command};
use std::process::ExitCode;

/// Run a verb.
pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Heaps(args) => heaps::run(&args),
        Command::Alloc(args) => alloc::run(&args),
        Command::Inspect(args) => inspect::run(&args),
        Command::Bench(BenchCommand::Alloc(args)) => bench_alloc::run(&args),
    }
}
