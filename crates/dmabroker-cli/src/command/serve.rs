//! `dmabroker serve`: the broker daemon.

use std::process::ExitCode;

/// Arguments of `dmabroker serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {}

pub fn run(_args: &ServeArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`dmabroker serve` is not implemented yet")
}
