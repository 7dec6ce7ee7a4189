//! `dmabroker alloc --broker`: allocate through the daemon, by heap name or
//! (with device options, or `--contiguous`/`--align` without `--heap`) by
//! constraints: the devices are probed and their constraints merged here
//! (this process reads sysfs and the profiles), the broker chooses a heap
//! among those its policy allows and says why. `--publish`/`--token` then
//! publish the buffer; a published buffer lives on in the broker after this
//! process exits.

use super::alloc_for::{
    buffer_label, explanation_lines, merged_summary, plan, planes_suffix, print_explanations, print_layout,
    which_buffer,
};
use crate::cli::AllocArgs;
use crate::output::print_json;
use dmabroker::client::{Client, PublishOptions};
use dmabroker::constraints::Constraints;
use dmabroker::format::Layout;
use dmabroker::proto::{AllocateForRequest, ChoiceReport};
use dmabroker::size::format_size;
use dmabroker::Buffer;
use serde::Serialize;
use std::process::ExitCode;

/// The heap of `alloc --broker --size S` without `--heap` or device options.
const DEFAULT_HEAP: &str = "memfd";

/// `--broker`, `--publish` or `--token`.
pub fn run(args: &AllocArgs) -> anyhow::Result<ExitCode> {
    // As in-process: device options, and --contiguous/--align without
    // --heap, are requirements for the heap chooser.
    let chooser = args.device.in_use() || (args.heap.is_none() && (args.contiguous || args.align > 1));
    if chooser {
        run_for(args)
    } else {
        run_via_broker(args)
    }
}

fn connect(args: &AllocArgs) -> anyhow::Result<Client> {
    let path = args.socket.clone().unwrap_or_else(dmabroker::proto::default_client_socket);
    Ok(Client::connect(&path)?)
}

/// `--publish`/`--token`: publish `buffer`; the key.
fn publish(client: &mut Client, args: &AllocArgs, buffer: &Buffer) -> anyhow::Result<Option<String>> {
    if args.publish.is_none() && !args.token {
        return Ok(None);
    }
    let mut options = match &args.publish {
        Some(name) => PublishOptions::named(name.clone()),
        None => PublishOptions::token(),
    };
    options.grants = args.allow.clone();
    options.one_shot = args.one_shot;
    options.expires_in = args.expires.map(std::time::Duration::from_secs);
    Ok(Some(client.publish(buffer, options)?))
}

#[derive(Serialize)]
struct BrokerAllocReport {
    buffer: dmabroker::buffer::BufferInfo,
    published: Option<String>,
}

/// Allocation from a named heap (`Allocate`).
fn run_via_broker(args: &AllocArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(args)?;
    let buffer = client.allocate_with(dmabroker::proto::AllocateRequest {
        heap: args.heap.clone().unwrap_or_else(|| DEFAULT_HEAP.to_owned()),
        len: args.size.bytes()?,
        align: args.align,
        contiguous: args.contiguous,
        name: args.name.clone().or_else(|| args.publish.clone()),
    })?;
    let published = publish(&mut client, args, &buffer)?;
    let report = BrokerAllocReport { buffer: buffer.info(), published };
    if args.json {
        print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    let b = &report.buffer;
    println!(
        "allocated {} ({} bytes) from {} through the broker as a {} (inode {})",
        format_size(b.len),
        b.len,
        b.heap,
        b.kind,
        b.inode
    );
    print_published(report.published.as_deref());
    Ok(ExitCode::SUCCESS)
}

fn print_published(key: Option<&str>) {
    if let Some(key) = key {
        println!("published as {key}; the broker keeps it until `dmabroker unpublish {key}`");
    }
}

#[derive(Serialize)]
struct ForReport {
    /// Where the heap was chosen.
    via: &'static str,
    constraints: Constraints,
    requirements: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    layout_notes: Vec<String>,
    layout: Option<Layout>,
    /// How buffer 0's heap was chosen (every buffer's choice is in `buffers`).
    choice: ChoiceReport,
    /// Buffer 0 (the only one except for the `…M` formats).
    buffer: dmabroker::buffer::BufferInfo,
    /// Every buffer allocated: one, or one per plane for the `…M` formats.
    buffers: Vec<ForBuffer>,
    published: Option<String>,
}

#[derive(Serialize)]
struct ForBuffer {
    /// The buffer index that the layout's planes refer to.
    index: usize,
    /// The broker's id of the buffer.
    id: u64,
    /// Bytes the layout needs in it (before rounding).
    size: u64,
    /// Bytes allocated.
    len: u64,
    /// The heap it came from.
    heap: String,
    /// The planes it holds (indexes into `layout.planes`); empty without a format.
    planes: Vec<usize>,
    choice: ChoiceReport,
    buffer: dmabroker::buffer::BufferInfo,
}

/// Allocation by constraints (`AllocateFor`): the constraints merged and
/// the frame laid out here as in-process, the heap chosen by the broker.
fn run_for(args: &AllocArgs) -> anyhow::Result<ExitCode> {
    let plan = plan(args.size, args.contiguous, args.align, &args.device)?;
    let count = plan.sizes.len();
    if count > 1 && (args.publish.is_some() || args.token) {
        anyhow::bail!(
            "{} has {count} memory planes, allocated as {count} buffers: --publish/--token publish one buffer; \
             use the single-buffer format (e.g. NV12 instead of NV12M)",
            args.device.format.map(|f| f.to_string()).unwrap_or_default()
        );
    }
    let mut client = connect(args)?;
    let mut buffers = Vec::with_capacity(count);
    for (index, &size) in plan.sizes.iter().enumerate() {
        let mut request = AllocateForRequest::new(&plan.merged, size);
        request.heap = args.heap.clone();
        request.name = args.name.clone().or_else(|| args.publish.clone());
        match client.allocate_for_with(request) {
            Ok(got) => buffers.push((index, size, got)),
            Err(e) => {
                eprintln!("{}", merged_summary(&plan.merged));
                anyhow::bail!("{}{e}", which_buffer(index, count));
            }
        }
    }
    let published = match buffers.first() {
        Some((_, _, got)) => publish(&mut client, args, &got.buffer)?,
        None => anyhow::bail!("the layout has no buffer"),
    };
    let buffers: Vec<ForBuffer> = buffers
        .into_iter()
        .map(|(index, size, got)| {
            let info = got.buffer.info();
            ForBuffer {
                index,
                id: got.id,
                size,
                len: info.len,
                heap: got.choice.heap.clone(),
                planes: plan.planes_of(index),
                choice: got.choice,
                buffer: info,
            }
        })
        .collect();
    let first = &buffers[0];
    let report = ForReport {
        via: "broker",
        requirements: plan.merged.describe().into_iter().map(|(_, s)| s).collect(),
        constraints: plan.merged,
        layout_notes: plan.notes,
        layout: plan.layout,
        choice: first.choice.clone(),
        buffer: first.buffer.clone(),
        buffers,
        published,
    };
    if args.json {
        print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    print_human(&report);
    Ok(ExitCode::SUCCESS)
}

fn print_human(report: &ForReport) {
    println!("{}", merged_summary(&report.constraints));
    for n in report.constraints.notes() {
        println!("  note: {n}");
    }
    if let Some(layout) = &report.layout {
        print_layout(layout, &report.layout_notes, "note: ");
    }
    print_explanations(
        &report.buffers,
        |b| &b.choice.heap,
        |b| {
            let c = &b.choice;
            let heading = format!("heap: {} ({} bytes allocated), chosen by the broker", c.heap, c.allocated_len);
            explanation_lines(heading, &c.reasons, &c.passed_over)
        },
    );
    let many = report.buffers.len() > 1;
    for b in &report.buffers {
        let info = &b.buffer;
        println!(
            "allocated {}{} ({} bytes) through the broker as a {} from {} (inode {}{})",
            buffer_label(many, b.index),
            format_size(info.len),
            info.len,
            info.kind,
            info.heap,
            info.inode,
            planes_suffix(&b.planes)
        );
    }
    print_published(report.published.as_deref());
}
