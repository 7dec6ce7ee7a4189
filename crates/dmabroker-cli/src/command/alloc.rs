//! `dmabroker alloc`: allocate in-process and print what was obtained.

use crate::cli::AllocArgs;
use crate::output::print_json;
use dmabroker::size::format_size;
use dmabroker::{AllocRequest, Heaps};
use serde::Serialize;
use std::os::fd::AsRawFd;
use std::process::ExitCode;

#[derive(Serialize)]
struct AllocReport {
    fd: i32,
    buffer: dmabroker::buffer::BufferInfo,
    segments: Option<Vec<dmabroker::phys::Segment>>,
    contiguous: Option<bool>,
    segments_error: Option<String>,
}

pub fn run(args: &AllocArgs) -> anyhow::Result<ExitCode> {
    let heaps = Heaps::discover();
    let mut request = AllocRequest::new(args.size).contiguous(args.contiguous).align(args.align);
    if let Some(name) = &args.name {
        request = request.name(name.clone());
    }
    let buffer = heaps.allocate(&args.heap, &request)?;
    let (segments, segments_error) = match dmabroker::phys::segments(&buffer) {
        Ok(s) => (Some(s), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let report = AllocReport {
        fd: buffer.as_fd_raw(),
        contiguous: segments.as_deref().map(dmabroker::phys::is_contiguous),
        buffer: buffer.info(),
        segments,
        segments_error,
    };
    if args.json {
        print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    let b = &report.buffer;
    let p = &b.properties;
    println!("allocated {} ({} bytes) from {} as a {} (fd {}, inode {})", format_size(b.len), b.len, b.heap, b.kind, report.fd, b.inode);
    println!(
        "  physical: contiguous up to {}, page {}, {}, {:?}, device-importable: {}",
        format_size(p.contiguous_up_to),
        format_size(p.page_size),
        p.cache,
        p.coherency,
        p.device_importable
    );
    if !b.seals.is_empty() {
        println!("  seals: {}", b.seals.join(", "));
    }
    match (&report.segments, &report.segments_error) {
        (Some(segs), _) => {
            println!("  {} physical segment(s){}:", segs.len(), if segs.len() == 1 { " (contiguous)" } else { "" });
            for s in segs.iter().take(16) {
                println!("    {:#014x} + {}", s.phys_addr, format_size(s.len));
            }
            if segs.len() > 16 {
                println!("    ... {} more", segs.len() - 16);
            }
        }
        (None, Some(e)) => println!("  physical segments: not available: {e}"),
        (None, None) => {}
    }
    Ok(ExitCode::SUCCESS)
}

trait RawFdNumber {
    fn as_fd_raw(&self) -> i32;
}

impl RawFdNumber for dmabroker::Buffer {
    /// The fd number, for display only.
    fn as_fd_raw(&self) -> i32 {
        std::os::fd::AsFd::as_fd(self).as_raw_fd()
    }
}
