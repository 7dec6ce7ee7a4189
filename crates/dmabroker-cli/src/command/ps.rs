//! `dmabroker ps`: who holds what.

use std::process::ExitCode;

/// Arguments of `dmabroker ps`.
#[derive(Debug, clap::Args)]
pub struct PsArgs {}

pub fn run(_args: &PsArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`dmabroker ps` is not implemented yet")
}
