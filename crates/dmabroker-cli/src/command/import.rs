//! `dmabroker import`: import a published buffer.

use std::process::ExitCode;

/// Arguments of `dmabroker import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {}

pub fn run(_args: &ImportArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`dmabroker import` is not implemented yet")
}
