//! `dmabroker alloc --format F --size WxH --for DEVICE...`: allocation that
//! satisfies every device that will touch the buffer, with the merged
//! constraints (and which device asked for each), the plane layout, the
//! chosen heap and why.

use super::for_device::{self, ForDevice};
use dmabroker::constraints::modifier::{ChosenModifier, ModifierOffer};
use dmabroker::constraints::{
    allocate_for, choose_heap, AllocForError, Choice, ChooseError, Constraints, DeviceCoherency, DeviceProbe,
    NoHeapError, Profiles,
};
use dmabroker::format::{Layout, LayoutOptions, PixelFormat};
use dmabroker::size::{format_size, parse_size};
use dmabroker::{Buffer, Heaps};
use serde::Serialize;
use std::fmt::Display;
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::process::ExitCode;

/// What `--size` says: bytes, or pixels when a `--format` is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeSpec {
    /// A byte count.
    Bytes(u64),
    /// WIDTHxHEIGHT in pixels.
    Pixels(u32, u32),
}

impl SizeSpec {
    /// The byte count, for verbs that take no format.
    pub fn bytes(self) -> anyhow::Result<u64> {
        match self {
            Self::Bytes(b) => Ok(b),
            Self::Pixels(w, h) => anyhow::bail!("--size {w}x{h} is in pixels: give --format too (e.g. --format NV12)"),
        }
    }
}

/// clap value parser for `--size`: `4096`, `12MiB`, `0x1000` (hexadecimal
/// bytes), `1920x1080` (pixels).
pub fn parse_size_spec(s: &str) -> Result<SizeSpec, String> {
    let t = s.trim();
    if t.starts_with("0x") || t.starts_with("0X") {
        return match parse_size(t).map_err(|e| e.to_string())? {
            0 => Err(format!(
                "`{s}` is read as hexadecimal: size 0 bytes; a buffer needs at least one byte \
                 (and a size in pixels at least 1x1, e.g. 1920x1080)"
            )),
            n => Ok(SizeSpec::Bytes(n)),
        };
    }
    if let Some((w, h)) = t.split_once(['x', 'X']) {
        if !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit()) {
            let w: u32 = w.parse().map_err(|_| format!("width `{w}` in `{s}` is not a number of pixels"))?;
            let h: u32 = h.parse().map_err(|_| format!("height `{h}` in `{s}` is not a number of pixels"))?;
            if w == 0 {
                return Err(format!("`{s}`: the width is 0 pixels: give at least 1 (e.g. 1920x1080)"));
            }
            if h == 0 {
                return Err(format!("`{s}`: the height is 0 pixels: give at least 1 (e.g. 1920x1080)"));
            }
            return Ok(SizeSpec::Pixels(w, h));
        }
    }
    parse_size(t).map(SizeSpec::Bytes).map_err(|e| e.to_string())
}

/// clap value parser for `--max-address`: `0xffffffff`, `4G`, `4294967295`.
fn parse_address(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

/// `--max-address A` as DMA address bits: `0xffffffff` (highest byte) and
/// `4G` (first byte out of reach) both mean 32 bits.
fn address_bits(max: u64) -> anyhow::Result<u32> {
    if max == u64::MAX {
        return Ok(64);
    }
    if (max + 1).is_power_of_two() {
        return Ok((max + 1).trailing_zeros());
    }
    if max.is_power_of_two() {
        return Ok(max.trailing_zeros());
    }
    anyhow::bail!("--max-address {max:#x}: give the highest reachable address (0xffffffff) or the limit (4G)")
}

/// The device-aware part of `dmabroker alloc`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DeviceArgs {
    /// Pixel format (NV12, NV12M, YUYV, RGB24, YUV420, ...); --size is then WIDTHxHEIGHT.
    #[arg(long)]
    pub format: Option<PixelFormat>,
    /// A device that will touch the buffer (repeatable): /dev/videoN, /dev/dri/cardN, or
    /// vulkan:N[:USAGE,...] (Vulkan physical device N; usages sampled, storage, color,
    /// transfer, transfer-src, transfer-dst; default sampled,transfer; needs --format).
    #[arg(long = "for", value_name = "DEVICE", value_parser = super::for_device::parse_for)]
    pub for_devices: Vec<ForDevice>,
    /// The DRM format modifier every device must import: LINEAR (the default) or its value
    /// (0x0100000000000001); with --format.
    #[arg(long, value_parser = super::for_device::parse_modifier)]
    pub modifier: Option<u64>,
    /// Device profile TOML files (besides /etc/dmabroker/devices.d/*.toml).
    #[arg(long = "profile", value_name = "FILE")]
    pub profiles: Vec<PathBuf>,
    /// Highest physical address a device can reach (0xffffffff or 4G for 32-bit DMA).
    #[arg(long, value_parser = parse_address)]
    pub max_address: Option<u64>,
    /// Page size wanted (e.g. 2M for huge pages).
    #[arg(long, value_parser = parse_size)]
    pub page_size: Option<u64>,
    /// The buffer must be uncached for the CPU.
    #[arg(long)]
    pub uncached: bool,
    /// Align each plane's bytesperline to this many bytes (a power of two; needs --format).
    #[arg(long, value_parser = crate::cli::parse_power_of_two)]
    pub stride_align: Option<u64>,
}

impl DeviceArgs {
    /// True when any device-aware option was given.
    pub fn in_use(&self) -> bool {
        self.format.is_some()
            || !self.for_devices.is_empty()
            || !self.profiles.is_empty()
            || self.max_address.is_some()
            || self.page_size.is_some()
            || self.uncached
            || self.stride_align.is_some()
            || self.modifier.is_some()
    }
}

/// One line per `--profile` entry that describes none of the `--for`
/// devices (a typo in `driver`, or a profile meant for another machine):
/// its keys were silently not applied.
fn unmatched_profiles(files: &[PathBuf], probes: &[DeviceProbe]) -> anyhow::Result<Vec<String>> {
    let mut given = Profiles::new();
    given.load(files)?;
    let devices = if probes.is_empty() {
        "no --for device was given".to_owned()
    } else {
        let labels: Vec<&str> = probes.iter().map(|p| p.label.as_str()).collect();
        format!("the --for devices are {}", labels.join(", "))
    };
    Ok(given
        .entries()
        .filter(|(_, entry)| !probes.iter().any(|p| entry.matches(p)))
        .map(|(file, entry)| {
            format!(
                "profile {file}: the entry {} matches none of the --for devices, so it was not applied ({devices})",
                entry.matcher()
            )
        })
        .collect())
}

#[derive(Serialize)]
struct Report {
    /// `--profile` entries that matched no `--for` device.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
    /// Why the layout differs from the plain one (e.g. a V4L2 rule).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    layout_notes: Vec<String>,
    constraints: Constraints,
    requirements: Vec<String>,
    layout: Option<Layout>,
    /// The modifier the devices agreed on, and who offered it.
    #[serde(skip_serializing_if = "Option::is_none")]
    modifier: Option<ChosenModifier>,
    /// How buffer 0's heap was chosen (every buffer's choice is in `buffers`).
    choice: Choice,
    /// Buffer 0 (the only one except for the `…M` formats).
    buffer: dmabroker::buffer::BufferInfo,
    /// Every buffer allocated: one, or one per plane for the `…M` formats.
    buffers: Vec<BufferReport>,
}

#[derive(Serialize)]
struct BufferReport {
    /// The buffer index that the layout's planes refer to.
    index: usize,
    /// Its fd in this process.
    fd: i32,
    /// Bytes the layout needs in it (before page rounding).
    size: u64,
    /// Bytes allocated.
    len: u64,
    /// The heap it came from.
    heap: String,
    /// The planes it holds (indexes into `layout.planes`); empty without a format.
    planes: Vec<usize>,
    choice: Choice,
    buffer: dmabroker::buffer::BufferInfo,
}

/// What the user asked of `dmabroker alloc` with device-aware options.
pub struct AllocFor<'a> {
    /// `--size`.
    pub size: SizeSpec,
    /// `--contiguous`.
    pub contiguous: bool,
    /// `--align` (a power of two, 1 = none).
    pub align: u64,
    /// `--name`.
    pub name: Option<&'a str>,
    /// `--json`.
    pub json: bool,
    /// `--heap`, when given: allocate from it only.
    pub heap: Option<&'a str>,
    /// The device options.
    pub dev: &'a DeviceArgs,
}

/// What both `alloc` paths (in-process and `--broker`) allocate: the
/// devices' constraints merged with the command line's, the plane layout
/// and the size of each buffer.
pub(crate) struct Plan {
    /// Every requirement, with the devices behind it.
    pub merged: Constraints,
    /// `--profile` entries that matched no `--for` device.
    pub warnings: Vec<String>,
    /// The plane layout, with `--format`.
    pub layout: Option<Layout>,
    /// Bytes of each buffer: one, or one per plane for the `…M` formats
    /// (V4L2 memory planes, one DRM handle each), each meeting every
    /// constraint.
    pub sizes: Vec<u64>,
    /// Why the layout differs from the plain one (e.g. a V4L2 rule).
    pub notes: Vec<String>,
    /// What the frame needs without the alignment constraints, when
    /// aligning makes it larger: to say so when the aligned size fails.
    pub rounded_by_alignment: Option<String>,
    /// The DRM format modifier every device imports, when a Vulkan device
    /// or `--modifier` asked (the layout carries it too).
    pub modifier: Option<ChosenModifier>,
}

impl Plan {
    /// The planes (indexes into the layout's planes) that buffer `index`
    /// holds; none without a format.
    pub fn planes_of(&self, index: usize) -> Vec<usize> {
        match &self.layout {
            Some(l) => l.planes().iter().enumerate().filter(|(_, p)| p.buffer == index).map(|(i, _)| i).collect(),
            None => Vec::new(),
        }
    }
}

/// Probe the `--for` devices, merge their constraints with the explicit
/// options (`--contiguous`, `--align`, the device options) and lay out the
/// frame: what to allocate, in-process or through the broker.
pub(crate) fn plan(size: SizeSpec, contiguous: bool, align: u64, dev: &DeviceArgs) -> anyhow::Result<Plan> {
    if let (Some(stride), None) = (dev.stride_align, dev.format) {
        anyhow::bail!(
            "--stride-align {stride} needs --format: it pads the rows of a pixel format's planes \
             (e.g. --format NV12 --size 1920x1080 --stride-align {stride})"
        );
    }
    let mut profiles = Profiles::load_default()?;
    profiles.load(&dev.profiles)?;
    let mut all = Vec::new();
    let mut probes = Vec::new();
    // Each device's modifier offer for --format: what the primary planes
    // of a KMS card scan out (their IN_FORMATS), LINEAR from other device
    // nodes, what the driver says from Vulkan devices.
    let mut offers: Vec<ModifierOffer> = Vec::new();
    let mut offer_notes: Vec<String> = Vec::new();
    let mut linear_nodes: Vec<String> = Vec::new();
    let mut kms_card = false;
    let mut wants_modifier =
        dev.modifier.is_some() || dev.for_devices.iter().any(|d| matches!(d, ForDevice::Vulkan { .. }));
    if let (true, None) = (wants_modifier, dev.format) {
        anyhow::bail!(
            "{} needs --format: modifiers are offered per pixel format (e.g. --format XR24 --size 1920x1080)",
            match dev.for_devices.iter().find(|d| matches!(d, ForDevice::Vulkan { .. })) {
                Some(d) => format!("--for {d}"),
                None => "--modifier".to_owned(),
            }
        );
    }
    for device in &dev.for_devices {
        match device {
            ForDevice::Node(path) => {
                let probe = DeviceProbe::probe(path)?;
                all.push(profiles.constraints_for(&probe));
                if let Some(format) = dev.format {
                    match for_device::kms_offer(path, &probe, format)? {
                        Some(offer) => {
                            offers.push(offer);
                            kms_card = true;
                        }
                        None => linear_nodes.push(probe.label.clone()),
                    }
                }
                probes.push(probe);
            }
            ForDevice::Vulkan { index, usage } => {
                let format = dev.format.ok_or_else(|| anyhow::anyhow!("--for {device} needs --format"))?;
                let vk = for_device::probe_vulkan(*index, usage, format)?;
                all.push(vk.constraints);
                offers.push(vk.offer);
                offer_notes.push(vk.note);
            }
        }
    }
    // A KMS card has modifiers to choose among: then every device offers.
    wants_modifier |= kms_card;
    if let (true, Some(format)) = (wants_modifier, dev.format) {
        for label in linear_nodes {
            let fourcc = for_device::drm_fourcc(format, &label)?;
            offers.push(ModifierOffer::linear(label, fourcc, format.plane_count() as u32));
        }
    }
    let modifier = if wants_modifier { Some(for_device::choose(&offers, dev.modifier)?) } else { None };
    let warnings = unmatched_profiles(&dev.profiles, &probes)?;
    // Explicit options form a pseudo-device "command line", listed among
    // the devices only when it asks for something.
    let explicit = contiguous || align > 1 || dev.max_address.is_some() || dev.page_size.is_some() || dev.uncached;
    let mut cli = Constraints::builder("command line");
    if contiguous {
        cli = cli.contiguous();
    }
    if align > 1 {
        cli = cli.align(align);
    }
    if let Some(max) = dev.max_address {
        cli = cli.address_bits(address_bits(max)?);
    }
    if let Some(page) = dev.page_size {
        cli = cli.page_size(page);
    }
    if dev.uncached {
        cli = cli.coherency(DeviceCoherency::NeedsUncached);
    }
    if explicit || all.is_empty() {
        all.push(cli.build()?);
    }
    let merged = Constraints::merge_all(&all)?;

    let mut notes: Vec<String> = Vec::new();
    let mut rounded_by_alignment: Option<String> = None;
    let (layout, sizes) = match (size, dev.format) {
        (SizeSpec::Pixels(w, h), Some(format)) => {
            let mut stride_align = dev.stride_align.unwrap_or(1);
            // A single-planar V4L2 buffer has one bytesperline for all its
            // planes; the chroma pitch is derived from it. At an odd width
            // the unpadded chroma line (rounded up) is longer than the luma
            // line implies: align the pitches to 2 so both agree.
            let v4l2 = probes.iter().find(|p| p.subsystem == "video4linux");
            if let Some(device) =
                v4l2.filter(|_| format.plane_count() > 1 && !format.is_multi_buffer() && stride_align < 2)
            {
                let (hdiv, _) = format.subsampling();
                if w % hdiv != 0 {
                    stride_align = 2;
                    notes.push(format!(
                        "bytesperline aligned to 2 bytes for {}: single-planar V4L2: one bytesperline for all planes \
                         (the odd width {w} would otherwise give the chroma plane a longer line than the luma plane)",
                        device.label
                    ));
                }
            }
            let mut options = LayoutOptions::default().with_stride_align(stride_align);
            if let Some(a) = merged.align() {
                options = options.with_plane_align(a.value);
            }
            if let Some(g) = merged.granularity() {
                options = options.with_size_align(g.value);
            }
            let mut layout = Layout::new(format, w, h, &options)?;
            if let Some(m) = &modifier {
                layout = layout.with_modifier(m.modifier);
                notes.extend(offer_notes.iter().cloned());
                if m.from.is_empty() {
                    notes.push(format!(
                        "modifier {} as given (no --for device offers modifiers to check it against)",
                        dmabroker::constraints::modifier::modifier_name(m.modifier)
                    ));
                } else {
                    notes.push(format!("modifier {m}"));
                }
            }
            let plain = Layout::new(format, w, h, &LayoutOptions::default().with_stride_align(stride_align))?;
            if plain.total_size() < layout.total_size() {
                rounded_by_alignment = Some(format!(
                    "{format} {w}x{h} needs {} ({} bytes); aligning its planes to {} makes {} in all",
                    format_size(plain.total_size()),
                    plain.total_size(),
                    merged.align().map_or_else(
                        || format!("a granularity of {}", merged.granularity().map_or(1, |g| g.value)),
                        |a| format_size(a.value)
                    ),
                    format_size(layout.total_size())
                ));
            }
            let sizes = layout.buffer_sizes().to_vec();
            (Some(layout), sizes)
        }
        (SizeSpec::Bytes(b), None) => (None, vec![b]),
        (SizeSpec::Bytes(b), Some(f)) => anyhow::bail!(
            "--format {f} needs --size WIDTHxHEIGHT in pixels, not a byte count ({b} bytes; 0x... is read as hexadecimal)"
        ),
        (s @ SizeSpec::Pixels(..), None) => (None, vec![s.bytes()?]),
    };
    Ok(Plan { merged, warnings, layout, sizes, notes, rounded_by_alignment, modifier })
}

/// `buffer I of N (plane I): ` before an error about one of several
/// buffers; nothing when there is one.
pub(crate) fn which_buffer(index: usize, count: usize) -> String {
    if count > 1 {
        format!("buffer {index} of {count} (plane {index}): ")
    } else {
        String::new()
    }
}

/// Run `dmabroker alloc` with device-aware options.
pub fn run(args: &AllocFor<'_>) -> anyhow::Result<ExitCode> {
    let plan = plan(args.size, args.contiguous, args.align, args.dev)?;
    for w in &plan.warnings {
        tracing::warn!("{w}");
    }
    let count = plan.sizes.len();
    if let (Some(format), true) = (args.dev.format, count > 1) {
        tracing::info!("{format} has {count} memory planes: allocating one buffer per plane");
    }
    let merged = &plan.merged;
    let heaps = Heaps::discover();
    let forced = match args.heap {
        Some(name) => Some(heaps.require(name)?.name().to_owned()),
        None => None,
    };
    let mut buffers = Vec::with_capacity(count);
    for (index, &size) in plan.sizes.iter().enumerate() {
        let result = match &forced {
            Some(heap) => allocate_from(&heaps, heap, merged, size, args.name),
            None => allocate_for(&heaps, merged, size, args.name),
        };
        let which = which_buffer(index, count);
        let (buffer, choice) = match result {
            Ok(ok) => ok,
            Err(AllocForError::Choose(ChooseError::NoHeap(e))) if forced.is_some() => {
                eprintln!("{}", merged_summary(merged));
                if let Some(why) = &plan.rounded_by_alignment {
                    eprintln!("note: {why}");
                }
                anyhow::bail!("{which}{}", heap_lacks(&e));
            }
            Err(AllocForError::Choose(e)) => {
                eprintln!("{}", merged_summary(merged));
                if let Some(why) = &plan.rounded_by_alignment {
                    eprintln!("note: {why}");
                }
                anyhow::bail!("{which}{e}");
            }
            Err(AllocForError::Alloc { attempts }) if forced.is_some() && attempts.len() == 1 => {
                let (heap, e) = &attempts[0];
                anyhow::bail!("{which}allocation from heap {heap} (--heap) failed: {e}");
            }
            Err(e) => anyhow::bail!("{which}{e}"),
        };
        buffers.push((buffer, choice, size, plan.planes_of(index)));
    }
    let buffers: Vec<BufferReport> = buffers
        .iter()
        .enumerate()
        .map(|(index, (buffer, choice, size, planes))| {
            let info = buffer.info();
            BufferReport {
                index,
                fd: buffer.as_fd().as_raw_fd(),
                size: *size,
                len: info.len,
                heap: info.heap.clone(),
                planes: planes.clone(),
                choice: choice.clone(),
                buffer: info,
            }
        })
        .collect();
    let first = buffers.first().ok_or_else(|| anyhow::anyhow!("the layout has no buffer"))?;
    let report = Report {
        warnings: plan.warnings,
        layout_notes: plan.notes,
        requirements: plan.merged.describe().into_iter().map(|(_, s)| s).collect(),
        constraints: plan.merged,
        layout: plan.layout,
        modifier: plan.modifier,
        choice: first.choice.clone(),
        buffer: first.buffer.clone(),
        buffers,
    };
    if args.json {
        crate::output::print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    print_human(&report);
    Ok(ExitCode::SUCCESS)
}

/// `--heap H` with device options: that heap only, if it meets the constraints.
fn allocate_from(
    heaps: &Heaps,
    heap: &str,
    merged: &Constraints,
    len: u64,
    name: Option<&str>,
) -> Result<(Buffer, Choice), AllocForError> {
    let all = heaps.infos();
    let infos: Vec<_> = all.iter().filter(|h| h.name == heap).cloned().collect();
    let mut choice = match choose_heap(&infos, merged, len) {
        Ok(choice) => choice,
        Err(ChooseError::NoHeap(mut e)) => {
            // The library judged only the heap asked for: where it says no
            // dma-buf allocator is usable, name the ones this machine has.
            let usable: Vec<&str> =
                all.iter().filter(|h| h.device_importable && h.usable).map(|h| h.name.as_str()).collect();
            if !usable.is_empty() {
                e.hints.retain(|h| !h.starts_with("no dma-buf allocator usable"));
                if infos.iter().all(|h| !h.device_importable) {
                    e.hints.push(format!(
                        "{heap} is not a dma-buf; the dma-buf heaps usable here are {}: pass one with --heap",
                        usable.join(", ")
                    ));
                }
            }
            return Err(AllocForError::Choose(ChooseError::NoHeap(e)));
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(first) = choice.reasons.first_mut() {
        *first = format!("{heap} was asked for (--heap) and meets every requirement");
    }
    match heaps.allocate(&choice.heap, &choice.request(name)) {
        Ok(buffer) => Ok((buffer, choice)),
        Err(e) => Err(AllocForError::Alloc { attempts: vec![(choice.heap, e)] }),
    }
}

/// Why the one heap given with `--heap` cannot take the buffer, requirement
/// by requirement, with the devices behind each.
fn heap_lacks(e: &NoHeapError) -> String {
    let mut out = String::new();
    for r in &e.rejected {
        out.push_str(&format!("heap {} cannot allocate {}", r.heap, format_size(e.len)));
        // Name the devices when one of their requirements is what fails.
        if !e.devices.is_empty() && r.lacks.iter().any(|l| l.requirement.is_some()) {
            out.push_str(&format!(" for {}", e.devices.join(", ")));
        }
        out.push(':');
        for lack in &r.lacks {
            let sentence = lack
                .requirement
                .and_then(|k| e.requirements.iter().find(|(kind, _)| *kind == k).map(|(_, s)| s.clone()))
                .unwrap_or_else(|| "on this machine".to_owned());
            out.push_str(&format!("\n  {sentence}: {}: {}", r.heap, lack.problem));
        }
    }
    for hint in &e.hints {
        out.push_str(&format!("\n  hint: {hint}"));
    }
    out.push_str("\n  hint: leave out --heap to let dmabroker choose among every heap");
    out
}

fn print_human(report: &Report) {
    for w in &report.warnings {
        println!("warning: {w}");
    }
    println!("{}", merged_summary(&report.constraints));
    if let Some(layout) = &report.layout {
        print_layout(layout, &report.layout_notes, "");
    }
    print_explanations(&report.buffers, |b| &b.choice.heap, |b| choice_lines(&b.choice));
    let many = report.buffers.len() > 1;
    for b in &report.buffers {
        let info = &b.buffer;
        println!(
            "allocated {}{} as a {} from {} (fd {}, inode {}{})",
            buffer_label(many, b.index),
            format_size(info.len),
            info.kind,
            info.heap,
            b.fd,
            info.inode,
            planes_suffix(&b.planes)
        );
    }
}

/// The layout, its notes (each after `note_prefix`) and its planes.
pub(crate) fn print_layout(layout: &Layout, notes: &[String], note_prefix: &str) {
    println!(
        "layout: {} {}x{}, {} in all, in {} buffer(s)",
        layout.format(),
        layout.width(),
        layout.height(),
        format_size(layout.total_size()),
        layout.buffer_count()
    );
    for n in notes {
        println!("  {note_prefix}{n}");
    }
    for (i, p) in layout.planes().iter().enumerate() {
        println!(
            "  plane {i}: buffer {}, offset {}, bytesperline {}, {} lines, {} bytes",
            p.buffer, p.offset, p.bytesperline, p.lines, p.size
        );
    }
}

/// Each buffer's heap choice (`lines`), once for a run of buffers from the
/// same heap (`heap`).
pub(crate) fn print_explanations<B>(buffers: &[B], heap: impl Fn(&B) -> &str, lines: impl Fn(&B) -> Vec<String>) {
    let mut explained: Option<&str> = None;
    for b in buffers {
        if explained == Some(heap(b)) {
            continue;
        }
        explained = Some(heap(b));
        for line in lines(b) {
            println!("{line}");
        }
    }
}

/// `buffer I: ` before each of several buffers; nothing when there is one.
pub(crate) fn buffer_label(many: bool, index: usize) -> String {
    if many {
        format!("buffer {index}: ")
    } else {
        String::new()
    }
}

/// `, plane P` or `, planes P, Q` for the planes a buffer holds.
pub(crate) fn planes_suffix(planes: &[usize]) -> String {
    match planes {
        [] => String::new(),
        [p] => format!(", plane {p}"),
        ps => format!(", planes {}", ps.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")),
    }
}

fn choice_lines(choice: &Choice) -> Vec<String> {
    let heading = format!("heap: {} ({} bytes allocated)", choice.heap, choice.allocated_len);
    explanation_lines(heading, &choice.reasons, &choice.passed_over)
}

/// The chosen heap (`heading`) and why, each passed-over heap once.
pub(crate) fn explanation_lines(heading: String, reasons: &[String], passed_over: &[impl Display]) -> Vec<String> {
    let mut lines = vec![heading];
    // The passed-over heaps are listed from `passed_over`, once, whether or
    // not the library also words them among the reasons.
    lines.extend(reasons.iter().filter(|r| !r.starts_with("passed over ")).map(|r| format!("  because {r}")));
    lines.extend(passed_over.iter().map(|r| format!("  passed over {r}")));
    lines
}

/// The merged constraints, one requirement a line.
pub(crate) fn merged_summary(c: &Constraints) -> String {
    let lines = c.describe();
    if lines.is_empty() {
        return "constraints: none (any heap will do)".into();
    }
    let mut out = String::from("constraints:");
    for (_, line) in lines {
        out.push_str("\n  ");
        out.push_str(&line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_as_bytes_or_pixels() {
        assert_eq!(parse_size_spec("12MiB"), Ok(SizeSpec::Bytes(12 << 20)));
        assert_eq!(parse_size_spec("1920x1080"), Ok(SizeSpec::Pixels(1920, 1080)));
        assert_eq!(parse_size_spec("0x1000"), Ok(SizeSpec::Bytes(4096)));
        assert_eq!(parse_size_spec("0x1080"), Ok(SizeSpec::Bytes(0x1080)));
        assert!(parse_size_spec("0x").is_err());
        assert!(parse_size_spec("0xzz").is_err());
        assert!(parse_size_spec("1920x").is_err());
        assert!(parse_size_spec("00x1080").unwrap_err().contains("width is 0"));
        assert!(parse_size_spec("1920x0").unwrap_err().contains("height is 0"));
    }

    #[test]
    fn each_passed_over_heap_is_listed_once() {
        use dmabroker::buffer::{CacheMode, Coherency};
        use dmabroker::constraints::{Lack, Rejection};
        use dmabroker::heap::HeapKind;
        let memfd = Rejection {
            heap: "memfd".into(),
            lacks: vec![Lack { requirement: None, from: Vec::new(), problem: "has 4 KiB pages".into() }],
        };
        let mut choice = Choice {
            heap: "hugetlb".into(),
            kind: HeapKind::Hugetlb,
            len: 2 << 20,
            allocated_len: 2 << 20,
            align: 1,
            contiguous: false,
            cache: CacheMode::Cached,
            coherency: Coherency::Coherent,
            reasons: vec!["hugetlb is the only heap that meets every requirement".into()],
            candidates: vec!["hugetlb".into()],
            passed_over: vec![memfd.clone()],
        };
        // Whether or not the reasons also word it (the library did, and may not).
        for worded in [false, true] {
            if worded {
                choice.reasons.push(format!("passed over {memfd}"));
            }
            let lines = choice_lines(&choice);
            assert_eq!(lines.iter().filter(|l| l.contains("memfd")).count(), 1, "{lines:?}");
            assert_eq!(lines.iter().filter(|l| l.starts_with("  because")).count(), 1, "{lines:?}");
        }
    }

    #[test]
    fn max_address_means_bits() {
        assert_eq!(address_bits(0xffff_ffff).unwrap(), 32);
        assert_eq!(address_bits(4 << 30).unwrap(), 32);
        assert_eq!(address_bits(u64::MAX).unwrap(), 64);
        assert!(address_bits(3 << 30).is_err());
        assert_eq!(parse_address("0xffffffff"), Ok(0xffff_ffff));
        assert_eq!(parse_address("4G"), Ok(4 << 30));
    }
}
