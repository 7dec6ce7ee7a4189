//! `dmabroker alloc`: allocate in-process and print what was obtained.

use crate::cli::AllocArgs;
use crate::output::print_json;
use dmabroker::size::format_size;
use dmabroker::{AllocRequest, Heaps};
use serde::Serialize;
use std::os::fd::AsRawFd;
use std::process::ExitCode;

/// The heap of `alloc --size S` without `--heap` or device options.
const DEFAULT_HEAP: &str = "memfd";

#[derive(Serialize)]
struct AllocReport {
    fd: i32,
    buffer: dmabroker::buffer::BufferInfo,
    segments: Option<Vec<dmabroker::phys::Segment>>,
    contiguous: Option<bool>,
    segments_error: Option<String>,
}

pub fn run(args: &AllocArgs) -> anyhow::Result<ExitCode> {
    if args.broker || args.publish.is_some() || args.token {
        return super::alloc_broker::run(args);
    }
    // Without --heap, --contiguous and --align are requirements like
    // --page-size: the chooser finds a heap that meets them (hugetlb for a
    // 2 MiB contiguous buffer) or explains, heap by heap, why none does.
    // With --heap they go to that heap as asked.
    let chooser_needed = args.heap.is_none() && (args.contiguous || args.align > 1);
    if args.device.in_use() || chooser_needed {
        return super::alloc_for::run(&super::alloc_for::AllocFor {
            size: args.size,
            contiguous: args.contiguous,
            align: args.align,
            name: args.name.as_deref(),
            json: args.json,
            heap: args.heap.as_deref(),
            dev: &args.device,
        });
    }
    let heaps = Heaps::discover();
    let mut request = AllocRequest::new(args.size.bytes()?).contiguous(args.contiguous).align(args.align);
    if let Some(name) = &args.name {
        request = request.name(name.clone());
    }
    let buffer = heaps.allocate(args.heap.as_deref().unwrap_or(DEFAULT_HEAP), &request)?;
    // Physical segments are extra information: when they cannot be read
    // (frames hidden without CAP_SYS_ADMIN, a buffer too large to populate,
    // a device-only buffer) the allocation still succeeded, so the reason is
    // a note (`segments_error` in JSON), never a failure.
    let (segments, segments_error) = match dmabroker::phys::segments(&buffer) {
        Ok(s) => (Some(s), None),
        Err(e) => {
            tracing::debug!("physical segments not available: {e}");
            (None, Some(e.to_string()))
        }
    };
    let report = AllocReport {
        fd: std::os::fd::AsFd::as_fd(&buffer).as_raw_fd(),
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
    println!(
        "allocated {} ({} bytes) from {} as a {} (fd {}, inode {})",
        format_size(b.len),
        b.len,
        b.heap,
        b.kind,
        report.fd,
        b.inode
    );
    println!(
        "  physical: contiguous up to {}, page {}, {}, {}, device-importable: {}",
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
        (None, Some(e)) => println!("  note: physical segments not available: {e}"),
        (None, None) => {}
    }
    Ok(ExitCode::SUCCESS)
}
