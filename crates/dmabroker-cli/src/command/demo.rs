//! `dmabroker demo`: streaming pool demo.

use std::process::ExitCode;

/// Arguments of `dmabroker demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {}

pub fn run(_args: &DemoArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`dmabroker demo` is not implemented yet")
}
