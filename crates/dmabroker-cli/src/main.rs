//! `dmabroker`: the command-line front end (see `dmabroker --help`).
#![forbid(unsafe_code)]

mod cli;
mod command;
mod output;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let level = match cli.verbose {
        0 => tracing::Level::WARN,
        1 => tracing::Level::INFO,
        2 => tracing::Level::DEBUG,
        _ => tracing::Level::TRACE,
    };
    tracing_subscriber::fmt().with_max_level(level).with_writer(std::io::stderr).with_target(false).init();
    match command::run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dmabroker: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
