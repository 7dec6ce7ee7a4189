//! `dmabroker ps`: who holds what. A scan of `/proc` (not a broker query):
//! every dma-buf and dmabroker buffer held by fd or by mapping, per buffer,
//! per process and per user.

use crate::output::{print_json, table};
use anyhow::Context;
use dmabroker::accounting::{self, procfs, BufferRecord, Holder, ScanOptions, SizeSource};
use dmabroker::size::format_size;
use std::process::ExitCode;

/// Arguments of `dmabroker ps`.
#[derive(Debug, clap::Args)]
pub struct PsArgs {
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Only this process (holder lists stay complete).
    #[arg(long)]
    pub pid: Option<u32>,
    /// Only processes of this user: a name or a uid.
    #[arg(long)]
    pub user: Option<String>,
    /// Include every memfd, not only dmabroker's (`dmabroker:*`, and every
    /// memfd the broker process holds, such as published memfds it adopted).
    #[arg(long = "all-memfd")]
    pub all_memfd: bool,
    /// Only leak candidates: dma-bufs that no process holds, only drivers
    /// (through the dma-buf BPF iterator, Linux >= 6.16, as root).
    #[arg(long)]
    pub leaks: bool,
}

pub fn run(args: &PsArgs) -> anyhow::Result<ExitCode> {
    let uid = match &args.user {
        Some(user) => Some(
            procfs::resolve_user(user, &procfs::user_names())
                .with_context(|| format!("no user {user:?} in /etc/passwd"))?,
        ),
        None => None,
    };
    if let Some(pid) = args.pid {
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            anyhow::bail!("no such process: {pid}");
        }
    }
    if args.leaks {
        return super::ps_leaks::run(args.json, args.all_memfd);
    }
    let options = ScanOptions { all_memfds: args.all_memfd, pid: args.pid, uid, broker_pids: Vec::new() };
    let snapshot = accounting::scan_with(&options)?;
    if args.json {
        print_json(&snapshot)?;
        return Ok(ExitCode::SUCCESS);
    }

    println!("BUFFERS");
    let rows: Vec<Vec<String>> = snapshot
        .buffers
        .iter()
        .map(|b| {
            vec![
                b.inode.to_string(),
                b.kind.to_string(),
                size_cell(b),
                b.exporter.clone().unwrap_or_else(|| "-".into()),
                b.name.clone().unwrap_or_else(|| "-".into()),
                b.holders.iter().map(holder_cell).collect::<Vec<_>>().join(" "),
            ]
        })
        .collect();
    print_section(&["INODE", "KIND", "SIZE", "EXPORTER", "NAME", "HOLDERS (pid:comm fds/maps)"], &rows);

    println!("\nPROCESSES");
    let rows: Vec<Vec<String>> = snapshot
        .processes
        .iter()
        .map(|p| {
            vec![
                p.pid.to_string(),
                p.comm.clone(),
                p.user.clone().unwrap_or_else(|| p.uid.to_string()),
                p.buffers.to_string(),
                p.fds.to_string(),
                p.mappings.to_string(),
                format_size(p.bytes),
                format_size(p.proportional_bytes),
            ]
        })
        .collect();
    print_section(&["PID", "COMM", "USER", "BUFFERS", "FDS", "MAPS", "SIZE", "PROPORTIONAL"], &rows);

    println!("\nUSERS");
    let rows: Vec<Vec<String>> = snapshot
        .users
        .iter()
        .map(|u| {
            vec![
                u.user.clone().unwrap_or_else(|| "?".into()),
                u.uid.to_string(),
                u.processes.to_string(),
                u.buffers.to_string(),
                format_size(u.bytes),
                format_size(u.proportional_bytes),
            ]
        })
        .collect();
    print_section(&["USER", "UID", "PROCESSES", "BUFFERS", "SIZE", "PROPORTIONAL"], &rows);

    let kinds: Vec<String> =
        snapshot.totals.by_kind.iter().map(|k| format!("{} {}: {}", k.buffers, k.kind, format_size(k.bytes))).collect();
    println!(
        "\nTOTAL  {} buffers, {}{}",
        snapshot.totals.buffers,
        format_size(snapshot.totals.bytes),
        if kinds.is_empty() { String::new() } else { format!(" ({})", kinds.join(", ")) }
    );
    print!("scanned {} processes, {} skipped", snapshot.scanned_processes, snapshot.unreadable_processes);
    if snapshot.denied_processes > 0 {
        let hint = if rustix::process::geteuid().is_root() { "" } else { ": run as root to see them" };
        print!(" ({} not readable by this user{hint})", snapshot.denied_processes);
    }
    println!();
    if snapshot.buffers.iter().any(|b| b.size_source == SizeSource::Mapping) {
        println!(">= : only mapped, size known only as the extent of the mappings");
    }
    super::ps_leaks::summary(args.all_memfd, args.pid.is_some() || args.user.is_some())?;
    Ok(ExitCode::SUCCESS)
}

fn print_section(header: &[&str], rows: &[Vec<String>]) {
    if rows.is_empty() {
        println!("(none)");
    } else {
        // A closed pipe ends the command quietly (see output::emit).
        let _ = crate::output::emit(&table(header, rows));
    }
}

fn size_cell(b: &BufferRecord) -> String {
    let size = format_size(b.size);
    if b.size_source == SizeSource::Mapping {
        format!(">={size}")
    } else {
        size
    }
}

/// `123:comm fd3,fd4+2m`: fds and mapping count of one holder.
fn holder_cell(h: &Holder) -> String {
    let mut how: Vec<String> = h.fds.iter().map(|fd| format!("fd{fd}")).collect();
    if h.mappings > 0 {
        how.push(format!("{}map", h.mappings));
    }
    format!("{}:{}({})", h.pid, h.comm, how.join(","))
}
