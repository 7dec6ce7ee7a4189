//! `dmabroker ps --leaks` and the ledger line of `dmabroker ps`: every
//! dma-buf the kernel has (the dma-buf BPF iterator) joined with the `/proc`
//! scan; buffers no process holds are leak candidates.

use crate::output::{print_json, table};
use dmabroker::accounting::ledger::{self, Ledger, LedgerSource};
use dmabroker::accounting::{self, ScanOptions};
use dmabroker::size::format_size;
use std::process::ExitCode;

/// The ledger of the whole machine (the scan is never filtered: a filtered
/// one would make every other process's buffers look leaked).
pub fn whole_machine(all_memfds: bool) -> anyhow::Result<Ledger> {
    let options = ScanOptions { all_memfds, pid: None, uid: None, broker_pids: Vec::new() };
    let snapshot = accounting::scan_with(&options)?;
    Ok(ledger::ledger(&snapshot))
}

/// The sentence `ps` prints when the iterator cannot be used.
pub fn cannot_see(l: &Ledger) -> Option<String> {
    l.unavailable.as_ref().map(|why| {
        format!(
            "cannot see dma-bufs that no process holds (only drivers): {why}; listing those held through /proc only"
        )
    })
}

fn age_cell(age: Option<u64>) -> String {
    match age {
        None => "-".into(),
        Some(s) if s < 120 => format!("{s}s"),
        Some(s) if s < 7200 => format!("{}m", s / 60),
        Some(s) => format!("{}h", s / 3600),
    }
}

pub fn run(json: bool, all_memfds: bool) -> anyhow::Result<ExitCode> {
    let l = whole_machine(all_memfds)?;
    if json {
        print_json(&l)?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(msg) = cannot_see(&l) {
        println!("{msg}");
        return Ok(ExitCode::SUCCESS);
    }
    println!("LEAK CANDIDATES (dma-bufs no process holds by fd or mapping; only drivers do)");
    let rows: Vec<Vec<String>> = l
        .leaks
        .iter()
        .map(|c| {
            let b = &c.buffer;
            let holders: Vec<String> = c
                .drm_holders
                .iter()
                .map(|d| format!("{}:{}(fd{} {})", d.pid, d.comm, d.fd, d.driver.as_deref().unwrap_or("drm")))
                .collect();
            vec![
                b.inode.to_string(),
                format_size(b.size),
                b.exporter.clone(),
                b.name.clone().unwrap_or_else(|| "-".into()),
                age_cell(c.age_sec),
                match &b.importer {
                    Some(dev) => format!("{dev} ({})", b.attachments),
                    None => "-".into(),
                },
                if holders.is_empty() { "-".into() } else { holders.join(" ") },
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("(none)");
    } else {
        let _ = crate::output::emit(&table(
            &["INODE", "SIZE", "EXPORTER", "NAME", "AGE", "IMPORTER (attachments)", "DRM HOLDERS (pid:comm)"],
            &rows,
        ));
    }
    print_totals(&l);
    Ok(ExitCode::SUCCESS)
}

fn print_totals(l: &Ledger) {
    let leaked: u64 = l.leaks.iter().map(|c| c.buffer.size).sum();
    println!(
        "ledger (dma-buf BPF iterator): {} dma-bufs, {}; {} leak candidates, {}",
        l.dmabufs,
        format_size(l.dmabuf_bytes),
        l.leaks.len(),
        format_size(leaked)
    );
    if l.unreadable_processes > 0 {
        println!(
            "{} processes could not be read wholly: a leak candidate may be held by one of them",
            l.unreadable_processes
        );
    }
}

/// The last lines of `dmabroker ps`: what the ledger adds, or why it cannot.
pub fn summary(all_memfds: bool, filtered: bool) -> anyhow::Result<()> {
    let l = whole_machine(all_memfds)?;
    match l.source {
        LedgerSource::ProcScan => println!("{}", cannot_see(&l).unwrap_or_default()),
        LedgerSource::BpfIterator => {
            print_totals(&l);
            if !l.leaks.is_empty() && !filtered {
                println!("list them with `dmabroker ps --leaks`");
            }
        }
    }
    Ok(())
}
