//! `dmabroker unpublish`: withdraw a published buffer.

use std::process::ExitCode;

/// Arguments of `dmabroker unpublish`.
#[derive(Debug, clap::Args)]
pub struct UnpublishArgs {}

pub fn run(_args: &UnpublishArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`dmabroker unpublish` is not implemented yet")
}
