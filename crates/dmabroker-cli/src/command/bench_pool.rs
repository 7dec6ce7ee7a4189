//! `dmabroker bench pool`: pool benchmarks.

use std::process::ExitCode;

/// Arguments of `dmabroker bench pool`.
#[derive(Debug, clap::Args)]
pub struct BenchPoolArgs {}

pub fn run(_args: &BenchPoolArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`dmabroker bench pool` is not implemented yet")
}
