//! `dmabroker heaps`.

use crate::cli::HeapsArgs;
use crate::output::{print_json, table};
use dmabroker::size::format_size;
use dmabroker::Heaps;
use std::process::ExitCode;

pub fn run(args: &HeapsArgs) -> anyhow::Result<ExitCode> {
    let infos = Heaps::discover().infos();
    if args.json {
        print_json(&infos)?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = infos
        .iter()
        .map(|h| {
            vec![
                h.name.clone(),
                h.kind.to_string(),
                h.contiguous_up_to.map_or("whole buffer".into(), format_size),
                format_size(h.page_size),
                h.cache_modes.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
                if h.device_importable { "yes" } else { "no (CPU/IPC)" }.into(),
                h.free_bytes.map_or("?".into(), format_size),
                if h.usable { "yes".into() } else { "no".into() },
                h.note.clone().unwrap_or_default(),
            ]
        })
        .collect();
    crate::output::emit(&table(
        &["HEAP", "KIND", "CONTIGUOUS UP TO", "PAGE", "CACHE", "DEVICE-IMPORTABLE", "FREE", "USABLE", "NOTE"],
        &rows,
    ))?;
    if let Some(line) = dmabroker::heap::cma_probe::summary() {
        crate::output::emit(&format!("{line}\n"))?;
    }
    crate::output::emit(&dmabroker::heap::charge_target::report())?;
    Ok(ExitCode::SUCCESS)
}
