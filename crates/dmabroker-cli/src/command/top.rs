//! `dmabroker top`: a live view of buffer memory per process, user and
//! cgroup, refreshed in place, with totals and the leak count of the
//! dma-buf ledger; `--json` streams one JSON object per refresh (one line
//! each) for scripts. Each refresh is a whole-machine `/proc` scan joined
//! with the BPF iterator where the kernel has it (as `ps` and `ps --leaks`).

use crate::output::table;
use dmabroker::accounting::{self, bpf_iter, ledger, ScanOptions, Snapshot};
use dmabroker::size::format_size;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

/// Arguments of `dmabroker top`.
#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// Milliseconds between refreshes.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(50..))]
    pub interval_ms: u64,
    /// Sort rows by this column (largest first; `name` and `pid` ascending).
    #[arg(long, value_enum, default_value_t = SortKey::Bytes)]
    pub sort: SortKey,
    /// Rows per table (the totals always cover everything).
    #[arg(long, default_value_t = 15)]
    pub rows: usize,
    /// Stop after this many refreshes (default: until interrupted).
    #[arg(long)]
    pub iterations: Option<u64>,
    /// One refresh, then exit (`--iterations 1`).
    #[arg(long, conflicts_with = "iterations")]
    pub once: bool,
    /// One JSON object per refresh, one per line, instead of the screen.
    #[arg(long)]
    pub json: bool,
    /// Include every memfd, not only dmabroker's.
    #[arg(long = "all-memfd")]
    pub all_memfd: bool,
}

/// What `top` sorts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SortKey {
    /// Bytes held (each buffer counted in full per holder).
    Bytes,
    /// Proportional share: each buffer's size divided by its holders.
    Share,
    /// Distinct buffers held.
    Buffers,
    /// Process id, user id or cgroup path (ascending).
    Pid,
    /// Command, user or cgroup name (ascending).
    Name,
}

/// One row: a process, a user or a cgroup.
#[derive(Debug, Clone, Serialize)]
struct Row {
    /// pid, uid, or 0 for a cgroup.
    id: u64,
    /// Command name, user name, or cgroup path.
    name: String,
    /// The user of a process.
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    /// The cgroup of a process.
    #[serde(skip_serializing_if = "Option::is_none")]
    cgroup: Option<String>,
    /// Processes (of a user or cgroup).
    processes: u64,
    buffers: u64,
    bytes: u64,
    proportional_bytes: u64,
}

/// One refresh, as `--json` prints it.
#[derive(Debug, Serialize)]
struct Frame {
    /// Seconds since the epoch.
    time: u64,
    /// Refresh number, from 1.
    iteration: u64,
    processes: Vec<Row>,
    users: Vec<Row>,
    cgroups: Vec<Row>,
    total_buffers: u64,
    total_bytes: u64,
    /// Dma-bufs no process holds, only drivers (`ps --leaks`); `null` when
    /// the kernel's dma-buf iterator cannot be used (see `ledger_note`).
    leaks: Option<u64>,
    leak_bytes: Option<u64>,
    /// Why leaks cannot be counted, if they cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    ledger_note: Option<String>,
    scanned_processes: u64,
    unreadable_processes: u64,
}

/// The cgroup v2 path of a process (`0::/...` in /proc/PID/cgroup).
fn cgroup_of(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines().find_map(|l| l.strip_prefix("0::")).map(str::to_owned)
}

fn sort(rows: &mut [Row], key: SortKey) {
    match key {
        SortKey::Bytes => rows.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.id.cmp(&b.id))),
        SortKey::Share => rows.sort_by(|a, b| b.proportional_bytes.cmp(&a.proportional_bytes).then(a.id.cmp(&b.id))),
        SortKey::Buffers => rows.sort_by(|a, b| b.buffers.cmp(&a.buffers).then(a.id.cmp(&b.id))),
        SortKey::Pid => rows.sort_by(|a, b| a.id.cmp(&b.id).then(a.name.cmp(&b.name))),
        SortKey::Name => rows.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id))),
    }
}

fn frame(
    snapshot: &Snapshot,
    iteration: u64,
    sort_key: SortKey,
    iterator: &mut Result<bpf_iter::Loaded, bpf_iter::Unavailable>,
) -> Frame {
    let mut processes: Vec<Row> = snapshot
        .processes
        .iter()
        .map(|p| Row {
            id: u64::from(p.pid),
            name: p.comm.clone(),
            user: Some(p.user.clone().unwrap_or_else(|| p.uid.to_string())),
            cgroup: cgroup_of(p.pid),
            processes: 1,
            buffers: p.buffers,
            bytes: p.bytes,
            proportional_bytes: p.proportional_bytes,
        })
        .collect();
    let mut users: Vec<Row> = snapshot
        .users
        .iter()
        .map(|u| Row {
            id: u64::from(u.uid),
            name: u.user.clone().unwrap_or_else(|| u.uid.to_string()),
            user: None,
            cgroup: None,
            processes: u.processes,
            buffers: u.buffers,
            bytes: u.bytes,
            proportional_bytes: u.proportional_bytes,
        })
        .collect();
    // Per cgroup: the sum over its processes (a buffer two of them hold
    // counts twice in `bytes`, once in the proportional share).
    let mut by_cgroup: BTreeMap<String, Row> = BTreeMap::new();
    for p in &processes {
        let path = p.cgroup.clone().unwrap_or_else(|| "(unknown)".into());
        let r = by_cgroup.entry(path.clone()).or_insert_with(|| Row {
            id: 0,
            name: path,
            user: None,
            cgroup: None,
            processes: 0,
            buffers: 0,
            bytes: 0,
            proportional_bytes: 0,
        });
        r.processes += 1;
        r.buffers += p.buffers;
        r.bytes += p.bytes;
        r.proportional_bytes += p.proportional_bytes;
    }
    let mut cgroups: Vec<Row> = by_cgroup.into_values().collect();
    sort(&mut processes, sort_key);
    sort(&mut users, sort_key);
    sort(&mut cgroups, sort_key);
    let listing = match iterator {
        Ok(loaded) => loaded.read(),
        Err(why) => Err(why.clone()),
    };
    let l = ledger::ledger_from(snapshot, listing);
    let (leaks, leak_bytes) = if l.unavailable.is_some() {
        (None, None)
    } else {
        (Some(l.leaks.len() as u64), Some(l.leaks.iter().map(|c| c.buffer.size).sum()))
    };
    Frame {
        time: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        iteration,
        processes,
        users,
        cgroups,
        total_buffers: snapshot.totals.buffers,
        total_bytes: snapshot.totals.bytes,
        leaks,
        leak_bytes,
        ledger_note: l.unavailable,
        scanned_processes: snapshot.scanned_processes,
        unreadable_processes: snapshot.unreadable_processes,
    }
}

fn render(f: &Frame, rows: usize, sort_key: SortKey) -> String {
    let cells = |r: &Row, first: String| {
        vec![
            first,
            r.name.clone(),
            r.processes.to_string(),
            r.buffers.to_string(),
            format_size(r.bytes),
            format_size(r.proportional_bytes),
        ]
    };
    let leaks = match (f.leaks, f.leak_bytes) {
        (Some(n), Some(b)) => format!("{n} leak candidates ({})", format_size(b)),
        _ => format!("leaks not counted: {}", f.ledger_note.as_deref().unwrap_or("no ledger")),
    };
    let mut out = format!(
        "dmabroker top: {} buffers, {} in all; {leaks}; {} processes scanned, {} not wholly readable; sorted by {}\n\n",
        f.total_buffers,
        format_size(f.total_bytes),
        f.scanned_processes,
        f.unreadable_processes,
        clap::ValueEnum::to_possible_value(&sort_key).map_or_else(String::new, |v| v.get_name().to_owned())
    );
    let procs: Vec<Vec<String>> = f
        .processes
        .iter()
        .take(rows)
        .map(|r| {
            let mut c = cells(r, r.id.to_string());
            c[2] = r.user.clone().unwrap_or_default();
            c.push(r.cgroup.clone().unwrap_or_default());
            c
        })
        .collect();
    out += "PROCESSES\n";
    out += &table(&["PID", "COMMAND", "USER", "BUFFERS", "BYTES", "SHARE", "CGROUP"], &procs);
    let users: Vec<Vec<String>> = f.users.iter().take(rows).map(|r| cells(r, r.id.to_string())).collect();
    out += "\nUSERS\n";
    out += &table(&["UID", "USER", "PROCS", "BUFFERS", "BYTES", "SHARE"], &users);
    let cgroups: Vec<Vec<String>> = f
        .cgroups
        .iter()
        .take(rows)
        .map(|r| {
            let mut c = cells(r, String::new());
            c.remove(0);
            c
        })
        .collect();
    out += "\nCGROUPS\n";
    out += &table(&["CGROUP", "PROCS", "BUFFERS", "BYTES", "SHARE"], &cgroups);
    out
}

pub fn run(args: &TopArgs) -> anyhow::Result<ExitCode> {
    let iterations = if args.once { Some(1) } else { args.iterations };
    let options = ScanOptions { all_memfds: args.all_memfd, pid: None, uid: None, broker_pids: Vec::new() };
    let live = std::io::stdout().is_terminal() && !args.json;
    // Loaded once: each refresh then only attaches and reads it.
    let mut iterator = bpf_iter::Loaded::load();
    let mut n = 0u64;
    loop {
        n += 1;
        let snapshot = accounting::scan_with(&options)?;
        let f = frame(&snapshot, n, args.sort, &mut iterator);
        let mut out = std::io::stdout().lock();
        let written = if args.json {
            serde_json::to_string(&f).map_err(anyhow::Error::from).and_then(|s| Ok(writeln!(out, "{s}")?))
        } else if live {
            // Home, clear, then the frame: redrawn in place.
            write!(out, "\x1b[H\x1b[2J{}", render(&f, args.rows, args.sort)).map_err(anyhow::Error::from)
        } else {
            writeln!(out, "{}", render(&f, args.rows, args.sort)).map_err(anyhow::Error::from)
        };
        match written.and_then(|()| Ok(out.flush()?)) {
            Ok(()) => {}
            // A reader that went away (`| head`) ends the run quietly.
            Err(e)
                if e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
            {
                return Ok(ExitCode::SUCCESS)
            }
            Err(e) => return Err(e),
        }
        drop(out);
        if iterations.is_some_and(|max| n >= max) {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_millis(args.interval_ms));
    }
}
