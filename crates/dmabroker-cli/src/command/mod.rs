//! One file per verb.

mod alloc;
mod alloc_broker;
pub mod alloc_for;
mod bench_alloc;
pub mod bench_broker;
mod bench_broker_load;
pub mod bench_compare;
mod bench_floor;
pub mod bench_ledger;
pub mod bench_pool;
pub mod bench_sync;
pub mod charge_worker;
pub mod demo;
pub mod for_device;
mod heaps;
pub mod import;
mod inspect;
pub(crate) mod measure;
pub mod ps;
mod ps_leaks;
pub mod serve;
pub mod stats;
pub mod top;
pub mod unpublish;

use crate::cli::{BenchCommand, Command};
use std::process::ExitCode;

/// Run a verb.
pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Heaps(args) => heaps::run(&args),
        Command::Alloc(args) => alloc::run(&args),
        Command::Inspect(args) => inspect::run(&args),
        Command::Serve(args) => serve::run(&args),
        Command::Import(args) => import::run(&args),
        Command::Unpublish(args) => unpublish::run(&args),
        Command::Stats(args) => stats::run(&args),
        Command::Ps(args) => ps::run(&args),
        Command::Top(args) => top::run(&args),
        Command::Demo(args) => demo::run(&args),
        Command::ChargeWorker(args) => charge_worker::run(&args),
        Command::Bench(BenchCommand::Alloc(args)) => bench_alloc::run(&args),
        Command::Bench(BenchCommand::Broker(args)) => bench_broker::run(&args),
        Command::Bench(BenchCommand::Pool(args)) => bench_pool::run(&args),
        Command::Bench(BenchCommand::Sync(args)) => bench_sync::run(&args),
        Command::Bench(BenchCommand::Ledger(args)) => bench_ledger::run(&args),
        Command::Bench(BenchCommand::Compare(args)) => bench_compare::run(&args),
    }
}
