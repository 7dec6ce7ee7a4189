//! `dmabroker bench broker`: broker benchmarks.

use std::process::ExitCode;

/// Arguments of `dmabroker bench broker`.
#[derive(Debug, clap::Args)]
pub struct BenchBrokerArgs {}

pub fn run(_args: &BenchBrokerArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`dmabroker bench broker` is not implemented yet")
}
