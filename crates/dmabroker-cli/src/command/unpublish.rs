//! `dmabroker unpublish`: withdraw a published buffer.

use dmabroker::client::Client;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `dmabroker unpublish`.
#[derive(Debug, clap::Args)]
pub struct UnpublishArgs {
    /// Publication name or token.
    pub key: String,
    /// Broker socket [default: $XDG_RUNTIME_DIR/dmabroker.sock if present, else /run/dmabroker/dmabroker.sock].
    #[arg(long, env = "DMABROKER_SOCKET", value_parser = crate::cli::parse_client_socket)]
    pub socket: Option<PathBuf>,
}

pub fn run(args: &UnpublishArgs) -> anyhow::Result<ExitCode> {
    let path = args.socket.clone().unwrap_or_else(dmabroker::proto::default_client_socket);
    Client::connect(&path)?.unpublish(&args.key)?;
    println!("unpublished {} (processes that imported it keep their fds)", args.key);
    Ok(ExitCode::SUCCESS)
}
