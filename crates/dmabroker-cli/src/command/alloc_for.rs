//! `dmabroker alloc --format F --size WxH --for DEVICE...`: allocation that
//! satisfies every device that will touch the buffer, with the merged
//! constraints (and which device asked for each), the plane layout, the
//! chosen heap and why.

use dmabroker::constraints::{allocate_for, AllocForError, Constraints, DeviceCoherency, Profiles};
use dmabroker::format::{Layout, LayoutOptions, PixelFormat};
use dmabroker::size::{format_size, parse_size};
use dmabroker::Heaps;
use serde::Serialize;
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

/// clap value parser for `--size`: `4096`, `12MiB`, `1920x1080`.
pub fn parse_size_spec(s: &str) -> Result<SizeSpec, String> {
    if let Some((w, h)) = s.split_once(['x', 'X']) {
        if !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit()) {
            let w: u32 = w.parse().map_err(|_| format!("width `{w}` is not a number of pixels"))?;
            let h: u32 = h.parse().map_err(|_| format!("height `{h}` is not a number of pixels"))?;
            if w == 0 || h == 0 {
                return Err(format!("{s}: width and height must be at least 1 pixel"));
            }
            return Ok(SizeSpec::Pixels(w, h));
        }
    }
    parse_size(s).map(SizeSpec::Bytes).map_err(|e| e.to_string())
}

/// clap value parser for `--max-address`: `0xffffffff`, `4G`, `4294967295`.
fn parse_address(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        return u64::from_str_radix(&hex.replace('_', ""), 16).map_err(|e| format!("`{s}`: {e}"));
    }
    parse_size(t).map_err(|e| e.to_string())
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
    /// A device node that will touch the buffer (repeatable): /dev/videoN, /dev/dri/cardN.
    #[arg(long = "for", value_name = "DEVICE")]
    pub for_devices: Vec<PathBuf>,
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
    /// Align each plane's bytesperline to this many bytes.
    #[arg(long, value_parser = parse_size, default_value = "1")]
    pub stride_align: u64,
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
    }
}

#[derive(Serialize)]
struct Report {
    constraints: Constraints,
    requirements: Vec<String>,
    layout: Option<Layout>,
    choice: dmabroker::constraints::Choice,
    buffer: dmabroker::buffer::BufferInfo,
}

/// Run `dmabroker alloc` with device-aware options.
pub fn run(
    size: SizeSpec,
    contiguous: bool,
    align: u64,
    name: Option<&str>,
    json: bool,
    dev: &DeviceArgs,
) -> anyhow::Result<ExitCode> {
    let mut profiles = Profiles::load_default()?;
    profiles.load(&dev.profiles)?;
    let mut all = Vec::new();
    for path in &dev.for_devices {
        all.push(Constraints::probe_with(path, &profiles)?);
    }
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

    let (layout, len) = match (size, dev.format) {
        (SizeSpec::Pixels(w, h), Some(format)) => {
            let mut options = LayoutOptions::default().with_stride_align(dev.stride_align);
            if let Some(a) = merged.align() {
                options = options.with_plane_align(a.value);
            }
            if let Some(g) = merged.granularity() {
                options = options.with_size_align(g.value);
            }
            let layout = Layout::new(format, w, h, &options)?;
            if layout.buffer_count() > 1 {
                // One allocation per memory plane would be the V4L2 M-format
                // way; a single buffer holding every plane at its offset is
                // what DRM and most importers want, so allocate the sum.
                tracing::info!("{} has {} memory planes: allocating them in one buffer", format, layout.buffer_count());
            }
            let total = layout.buffer_sizes().iter().try_fold(0u64, |a, b| a.checked_add(*b));
            let total = total.ok_or_else(|| anyhow::anyhow!("{w}x{h} {format}: total size overflows"))?;
            (Some(layout), total)
        }
        (SizeSpec::Bytes(b), None) => (None, b),
        (SizeSpec::Bytes(b), Some(f)) => {
            anyhow::bail!("--format {f} needs --size WIDTHxHEIGHT, not a byte count ({b})")
        }
        (s @ SizeSpec::Pixels(..), None) => (None, s.bytes()?),
    };

    let heaps = Heaps::discover();
    let (buffer, choice) = match allocate_for(&heaps, &merged, len, name) {
        Ok(ok) => ok,
        Err(AllocForError::Choose(e)) => {
            eprintln!("{}", merged_summary(&merged));
            anyhow::bail!("{e}");
        }
        Err(e) => return Err(e.into()),
    };
    let report = Report {
        requirements: merged.describe().into_iter().map(|(_, s)| s).collect(),
        constraints: merged,
        layout,
        choice,
        buffer: buffer.info(),
    };
    if json {
        crate::output::print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("{}", merged_summary(&report.constraints));
    if let Some(layout) = &report.layout {
        println!(
            "layout: {} {}x{}, {} in all",
            layout.format(),
            layout.width(),
            layout.height(),
            format_size(layout.total_size())
        );
        for (i, p) in layout.planes().iter().enumerate() {
            println!(
                "  plane {i}: buffer {}, offset {}, bytesperline {}, {} lines, {} bytes",
                p.buffer, p.offset, p.bytesperline, p.lines, p.size
            );
        }
    }
    println!("heap: {} ({} bytes allocated)", report.choice.heap, report.choice.allocated_len);
    for r in &report.choice.reasons {
        println!("  because {r}");
    }
    for r in &report.choice.passed_over {
        println!("  passed over {r}");
    }
    let b = &report.buffer;
    println!("allocated {} as a {} from {} (inode {})", format_size(b.len), b.kind, b.heap, b.inode);
    Ok(ExitCode::SUCCESS)
}

fn merged_summary(c: &Constraints) -> String {
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
        assert!(parse_size_spec("0x1080").is_err());
        assert!(parse_size_spec("1920x").is_err());
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
