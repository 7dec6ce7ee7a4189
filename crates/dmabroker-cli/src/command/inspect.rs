//! `dmabroker inspect --pid P --fd N`.

use crate::cli::InspectArgs;
use crate::output::print_json;
use anyhow::Context;
use dmabroker::fdinfo::{fd_link, FdInfo};
use dmabroker::size::format_size;
use serde::Serialize;
use std::process::ExitCode;

/// Exit status when the fd exists but is not a buffer (or could not be copied).
const NOT_A_BUFFER: u8 = 3;

#[derive(Serialize)]
struct Inspection {
    pid: u32,
    fd: i32,
    link: String,
    buffer: Option<dmabroker::buffer::BufferInfo>,
    not_a_buffer: Option<String>,
    fdinfo_size: Option<u64>,
    exporter: Option<String>,
    file_count: Option<u64>,
}

pub fn run(args: &InspectArgs) -> anyhow::Result<ExitCode> {
    let link = match fd_link(Some(args.pid), args.fd) {
        Ok(link) => link,
        // /proc/<pid> is there for every process, whoever owns it.
        Err(_) if args.pid == 0 || !std::path::Path::new(&format!("/proc/{}", args.pid)).exists() => {
            anyhow::bail!(
                "no such process {}: give the pid of a running process (see `ps` or `dmabroker ps`)",
                args.pid
            )
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            anyhow::bail!("cannot read the fds of process {}: permission denied: run as its user or root", args.pid)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => anyhow::bail!(
            "process {} has no fd {}: see `ls -l /proc/{}/fd` for its open fds",
            args.pid,
            args.fd,
            args.pid
        ),
        Err(e) => return Err(e).with_context(|| format!("reading /proc/{}/fd/{}", args.pid, args.fd)),
    };
    let info = FdInfo::read(Some(args.pid), args.fd)
        .with_context(|| format!("reading /proc/{}/fdinfo/{}", args.pid, args.fd))?;
    // Take a duplicate of the process's fd (pidfd_getfd needs ptrace rights:
    // same user with ptrace_scope 0, or CAP_SYS_PTRACE) to classify it fully.
    let theirs = i32::try_from(args.pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .with_context(|| format!("{} is not a process id (1 to 2^31-1)", args.pid))
        .and_then(|pid| Ok(rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())?))
        .and_then(|pidfd| {
            Ok(rustix::process::pidfd_getfd(&pidfd, args.fd, rustix::process::PidfdGetfdFlags::empty())?)
        });
    let (buffer, not_a_buffer) = match theirs {
        Ok(fd) => match dmabroker::Buffer::from_fd(fd) {
            Ok(b) => (Some(b.info()), None),
            Err(e) => (None, Some(e.to_string())),
        },
        Err(e) => (None, Some(format!("cannot take a copy of the fd ({e}); fdinfo only"))),
    };
    let report = Inspection {
        pid: args.pid,
        fd: args.fd,
        link,
        fdinfo_size: info.dma_buf_size(),
        exporter: info.exporter().map(str::to_owned),
        file_count: info.file_count(),
        buffer,
        not_a_buffer,
    };
    if args.json {
        print_json(&report)?;
    } else {
        println!("pid {} fd {}: {}", report.pid, report.fd, report.link);
        if let Some(b) = &report.buffer {
            println!(
                "  {} of {} ({} bytes), heap/exporter {}, inode {}, contiguous up to {}, device-importable: {}",
                b.kind,
                format_size(b.len),
                b.len,
                b.heap,
                b.inode,
                format_size(b.properties.contiguous_up_to),
                b.properties.device_importable
            );
            if !b.seals.is_empty() {
                println!("  seals: {}", b.seals.join(", "));
            }
        }
        if let Some(why) = &report.not_a_buffer {
            println!("  {why}");
        }
        if let Some(exp) = &report.exporter {
            let mut line = format!("  dma-buf exporter {exp}");
            if let Some(size) = report.fdinfo_size {
                line.push_str(&format!(", size {} ({size} bytes)", format_size(size)));
            }
            if let Some(count) = report.file_count {
                line.push_str(&format!(", file references {count}"));
            }
            println!("{line}");
        }
    }
    // Documented in `dmabroker inspect --help` and the README: 3 = not a buffer.
    Ok(if report.buffer.is_some() { ExitCode::SUCCESS } else { ExitCode::from(NOT_A_BUFFER) })
}
