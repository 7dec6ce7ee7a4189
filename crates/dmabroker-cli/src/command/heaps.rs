//! `dmabroker heaps`.

use crate::cli::HeapsArgs;
use crate::output::{print_json, table};
use dmabroker::heap::{AllocError, AllocRequest, Heap, HeapInfo};
use dmabroker::size::format_size;
use dmabroker::Heaps;
use std::process::ExitCode;

/// Resolution of `--probe-contiguous`.
const PROBE_STEP: u64 = 1 << 20;

pub fn run(args: &HeapsArgs) -> anyhow::Result<ExitCode> {
    let heaps = Heaps::discover();
    let probed = if args.probe_contiguous { probe_cma_heaps(&heaps) } else { Vec::new() };
    // Infos after probing: the largest allocation seen includes the probe's.
    let infos = heaps.infos();
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
    let cma_heaps: Vec<&HeapInfo> = infos.iter().filter(|h| h.cma.is_some()).collect();
    for h in &cma_heaps {
        if let Some(cma) = &h.cma {
            crate::output::emit(&format!("CMA heap {}: {}\n", h.name, cma.describe()))?;
        }
    }
    if cma_heaps.is_empty() {
        if let Some(line) = dmabroker::heap::cma_probe::summary() {
            crate::output::emit(&format!("{line}\n"))?;
        }
    }
    for line in probed {
        crate::output::emit(&format!("{line}\n"))?;
    }
    if args.probe_contiguous && cma_heaps.is_empty() {
        crate::output::emit(
            "probe: no CMA heap here (dmabroker heaps lists none as contiguous for the whole buffer)\n",
        )?;
    }
    crate::output::emit(&dmabroker::heap::charge_target::report())?;
    Ok(ExitCode::SUCCESS)
}

/// `--probe-contiguous`: one line per CMA heap with the largest contiguous
/// allocation that succeeds now. Each allocation made is also recorded as
/// seen, so the heap's CMA line that follows includes it.
fn probe_cma_heaps(heaps: &Heaps) -> Vec<String> {
    let mut lines = Vec::new();
    for heap in heaps.iter() {
        let info = heap.info();
        let Some(cma) = &info.cma else { continue };
        if !info.usable {
            lines.push(format!("probe {}: skipped, the heap cannot be opened here", info.name));
            continue;
        }
        let ceiling = cma.free_bytes.or(cma.total_bytes).unwrap_or(0) / PROBE_STEP;
        let t0 = std::time::Instant::now();
        match largest_contiguous(heap, ceiling) {
            Ok((0, tries)) => lines.push(format!(
                "probe {}: no contiguous {} can be allocated now ({tries} tries)",
                info.name,
                format_size(PROBE_STEP)
            )),
            Ok((steps, tries)) => lines.push(format!(
                "probe {}: largest contiguous allocation now {} ({tries} allocations in {:.0} ms, {} resolution)",
                info.name,
                format_size(steps * PROBE_STEP),
                t0.elapsed().as_secs_f64() * 1e3,
                format_size(PROBE_STEP)
            )),
            Err(e) => lines.push(format!("probe {}: stopped: {e}", info.name)),
        }
    }
    lines
}

/// Binary search for the largest `n <= ceiling` such that `n` steps of
/// [`PROBE_STEP`] allocate contiguously; (n, allocations tried). Only a
/// shortage of contiguous memory counts as "too large": any other error
/// ends the search.
fn largest_contiguous(heap: &dyn Heap, ceiling: u64) -> Result<(u64, u32), AllocError> {
    let (mut ok, mut too_large, mut tries) = (0u64, ceiling + 1, 0u32);
    while too_large - ok > 1 {
        let mid = ok + (too_large - ok) / 2;
        tries += 1;
        match heap.allocate(&AllocRequest::new(mid * PROBE_STEP).contiguous(true).name("dmabroker-probe")) {
            Ok(buffer) => {
                drop(buffer);
                ok = mid;
            }
            Err(AllocError::CmaShort { .. } | AllocError::OutOfMemory { .. }) => too_large = mid,
            Err(e) => return Err(e),
        }
    }
    Ok((ok, tries))
}
