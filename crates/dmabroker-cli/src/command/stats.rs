//! `dmabroker stats`: what the broker charges this user, its quota, and the
//! broker's totals.

use crate::output::{emit, print_json};
use dmabroker::client::Client;
use dmabroker::size::format_size;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `dmabroker stats`.
#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Broker socket [default: $XDG_RUNTIME_DIR/dmabroker.sock if present, else /run/dmabroker/dmabroker.sock].
    #[arg(long, env = "DMABROKER_SOCKET", value_parser = crate::cli::parse_client_socket)]
    pub socket: Option<PathBuf>,
}

pub fn run(args: &StatsArgs) -> anyhow::Result<ExitCode> {
    let path = args.socket.clone().unwrap_or_else(dmabroker::proto::default_client_socket);
    let stats = Client::connect(&path)?.stats()?;
    // The kernel's side, read here (the broker runs on this machine): whether
    // dma-heap memory is charged to cgroups at all.
    let accounting = dmabroker::heap::mem_accounting::MemAccounting::detect();
    if args.json {
        let mut value = serde_json::to_value(&stats)?;
        if let Some(map) = value.as_object_mut() {
            map.insert("dma_heap_mem_accounting".into(), serde_json::to_value(accounting)?);
            map.insert("dma_heap_charging".into(), accounting.describe().into());
        }
        print_json(&value)?;
        return Ok(ExitCode::SUCCESS);
    }
    emit(&format!(
        "uid {}: {} in {} buffer(s) of a quota of {} in {} buffer(s); heaps: {}; may publish: {}\n\
         broker: {} buffer(s), {}, {} publication(s), {} client(s) connected\n\
         charging: {}\n",
        stats.uid,
        format_size(stats.used_bytes),
        stats.used_buffers,
        format_size(stats.max_bytes),
        stats.max_buffers,
        if stats.heaps.is_empty() { "none".to_owned() } else { stats.heaps.join(", ") },
        if stats.may_publish { "yes" } else { "no" },
        stats.total_buffers,
        format_size(stats.total_bytes),
        stats.publications,
        stats.clients,
        accounting.describe(),
    ))?;
    Ok(ExitCode::SUCCESS)
}
