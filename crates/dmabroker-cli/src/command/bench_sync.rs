//! `dmabroker bench sync`: what CPU cache maintenance costs, bracketed by
//! dmabroker's guards against the bare mechanism, per heap, size and access
//! pattern; and from the per-line cost, the size beyond which ranged
//! maintenance costs more than maintaining the whole cache.
//!
//! Methods, each timed around the whole access (maintenance included):
//! - `access only`: the CPU access alone, no maintenance (what a coherent
//!   device, or uncached memory's maintenance-free access, is compared with);
//! - `bare clflushopt` (`dc civac` on aarch64): `dmabroker_sys::cache::
//!   clean_invalidate` over the range accessed, then a fence, on a second
//!   mapping of the same buffer; before a read, after a write;
//! - `dmabroker guard`: `begin_read`/`begin_write` on a [`Coherency::NonCoherent`]
//!   memfd (which maintain the whole buffer with the same instructions), or
//!   on a dma-buf (where they are `DMA_BUF_IOCTL_SYNC`);
//! - `bare DMA_BUF_IOCTL_SYNC`: the ioctl pair directly, dma-bufs only.
//!
//! Patterns: `write-once` (the CPU fills the buffer for a device), `read-once`
//! (the CPU reads what a device wrote), `read-many` (the same, 4 passes in one
//! access), `partial-read` (the first 1/16 of the buffer, 4 KiB at least).
//! Before every access the buffer is written back and invalidated
//! (untimed), as after a device's write or read: accesses start from memory.
//!
//! Uncached memory is measured where a heap offers it (`system-uncached`
//! dma-heaps of vendor kernels): the same patterns with `access only`.

use super::measure::{fmt_ns, paired_ratios, JsonReport, JsonRow, Spread};
use dmabroker::buffer::{BufferKind, CacheMode, Coherency};
use dmabroker::heap::{AllocRequest, HeapKind, Heaps};
use dmabroker::size::format_size;
use dmabroker_sys::cache;
use dmabroker_sys::dma_buf;
use dmabroker_sys::mmap::{Mapping, Protection};
use std::process::ExitCode;
use std::time::Instant;

/// Arguments of `dmabroker bench sync`.
#[derive(Debug, clap::Args)]
pub struct BenchSyncArgs {
    /// Buffer sizes.
    #[arg(long, value_delimiter = ',', value_parser = dmabroker::size::parse_size, default_value = "4K,64K,1M,4M,16M,64M")]
    pub sizes: Vec<u64>,
    /// Heaps (default: memfd and every usable dma-heap and udmabuf).
    #[arg(long, value_delimiter = ',')]
    pub heaps: Vec<String>,
    /// Rounds; every method is measured once per round, interleaved.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,
    /// Bytes touched per method, size and round (sets the iteration count, 3 to 2000).
    #[arg(long, default_value = "256M", value_parser = dmabroker::size::parse_size)]
    pub budget: u64,
    /// A fast run for tests: sizes 4K,64K, one round, a 1 MiB budget.
    #[arg(long)]
    pub quick: bool,
    /// Print one JSON report (for `bench compare` / scripts/ab.sh) instead of the tables.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pattern {
    WriteOnce,
    ReadOnce,
    ReadMany,
    PartialRead,
}

const PATTERNS: [Pattern; 4] = [Pattern::WriteOnce, Pattern::ReadOnce, Pattern::ReadMany, Pattern::PartialRead];

impl Pattern {
    fn name(self) -> &'static str {
        match self {
            Self::WriteOnce => "write-once",
            Self::ReadOnce => "read-once",
            Self::ReadMany => "read-many",
            Self::PartialRead => "partial-read",
        }
    }
    fn reads(self) -> bool {
        self != Self::WriteOnce
    }
    /// Bytes the access touches.
    fn range(self, len: usize) -> usize {
        match self {
            Self::PartialRead => (len / 16).max(4096).min(len),
            _ => len,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    AccessOnly,
    Bare,
    Guard,
    Ioctl,
}

impl Method {
    fn key(self) -> &'static str {
        match self {
            Self::AccessOnly => "access",
            Self::Bare => "bare",
            Self::Guard => "guard",
            Self::Ioctl => "ioctl",
        }
    }
    fn label(self, dma_buf: bool) -> &'static str {
        match self {
            Self::AccessOnly => "access only (no maintenance)",
            Self::Bare => {
                if cfg!(target_arch = "aarch64") {
                    "bare dc civac + dsb over the range"
                } else {
                    "bare clflushopt + sfence over the range"
                }
            }
            Self::Guard if dma_buf => "dmabroker guard (DMA_BUF_IOCTL_SYNC)",
            Self::Guard => "dmabroker guard (NonCoherent memfd)",
            Self::Ioctl => "bare DMA_BUF_IOCTL_SYNC start/end",
        }
    }
}

/// The buffer under test: the library's mapping (for guards) and a second,
/// raw mapping of the same memory (for the bare paths).
struct Subject {
    lib: dmabroker::buffer::BufferMapping,
    raw: Mapping,
    dma_buf: bool,
    uncached: bool,
}

fn read_sum(bytes: &[u8], passes: usize) -> u64 {
    let mut sum = 0u64;
    for _ in 0..passes {
        for c in bytes.chunks_exact(8) {
            sum = sum.wrapping_add(u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]));
        }
    }
    sum
}

fn passes(p: Pattern) -> usize {
    if p == Pattern::ReadMany {
        4
    } else {
        1
    }
}

/// One timed access; returns nanoseconds.
fn once(s: &mut Subject, p: Pattern, m: Method, tag: u8) -> anyhow::Result<u64> {
    let len = s.raw.len();
    let range = p.range(len);
    // Every access starts with nothing of the buffer in the CPU caches: as
    // after a device wrote it (reads), or after the previous frame was
    // handed to a device (writes). Without this, a method that follows
    // `access only` (which leaves dirty lines behind) writes into cached
    // lines, and the rotation's order biases the comparison (1.2-1.3x
    // guard/bare for write-once at 64 KiB-4 MiB, gone with it).
    cache::clean_invalidate(&s.raw, 0, len);
    let fd_flags = if p.reads() { dma_buf::DMA_BUF_SYNC_READ } else { dma_buf::DMA_BUF_SYNC_WRITE };
    let t = Instant::now();
    let mut sink = 0u64;
    match m {
        Method::AccessOnly => {
            if p.reads() {
                sink = read_sum(&s.raw.as_slice()[..range], passes(p));
            } else if let Some(b) = s.raw.as_mut_slice() {
                b.fill(tag);
            }
        }
        Method::Bare => {
            if p.reads() {
                cache::clean_invalidate(&s.raw, 0, range);
                sink = read_sum(&s.raw.as_slice()[..range], passes(p));
            } else {
                if let Some(b) = s.raw.as_mut_slice() {
                    b.fill(tag);
                }
                cache::clean_invalidate(&s.raw, 0, len);
            }
        }
        Method::Ioctl => {
            dma_buf::sync(s.lib.buffer(), dma_buf::DMA_BUF_SYNC_START | fd_flags)?;
            if p.reads() {
                sink = read_sum(&s.raw.as_slice()[..range], passes(p));
            } else if let Some(b) = s.raw.as_mut_slice() {
                b.fill(tag);
            }
            dma_buf::sync(s.lib.buffer(), dma_buf::DMA_BUF_SYNC_END | fd_flags)?;
        }
        Method::Guard => {
            if p.reads() {
                let g = s.lib.begin_read()?;
                sink = read_sum(&g[..range], passes(p));
            } else {
                let mut g = s.lib.begin_write()?;
                g.fill(tag);
            }
        }
    }
    let elapsed = t.elapsed();
    std::hint::black_box(sink);
    Ok(super::measure::ns(elapsed))
}

/// Maintenance alone over the whole buffer: after writing it (dirty lines)
/// and after flushing it (no line cached). Nanoseconds.
fn flush_only(s: &mut Subject, dirty: bool, tag: u8) -> u64 {
    let len = s.raw.len();
    if dirty {
        if let Some(b) = s.raw.as_mut_slice() {
            b.fill(tag);
        }
    } else {
        cache::clean_invalidate(&s.raw, 0, len);
    }
    let t = Instant::now();
    cache::clean_invalidate(&s.raw, 0, len);
    super::measure::ns(t.elapsed())
}

fn methods(s: &Subject) -> Vec<Method> {
    if s.uncached {
        vec![Method::AccessOnly, Method::Guard]
    } else if s.dma_buf {
        vec![Method::AccessOnly, Method::Bare, Method::Guard, Method::Ioctl]
    } else {
        vec![Method::AccessOnly, Method::Bare, Method::Guard]
    }
}

/// Size of the largest CPU cache (sysfs), in bytes.
fn last_level_cache() -> Option<u64> {
    let mut best = None;
    for i in 0..8 {
        let dir = format!("/sys/devices/system/cpu/cpu0/cache/index{i}");
        let Ok(size) = std::fs::read_to_string(format!("{dir}/size")) else { continue };
        let level: u32 = std::fs::read_to_string(format!("{dir}/level")).ok()?.trim().parse().ok()?;
        let size = size.trim();
        let bytes = if let Some(k) = size.strip_suffix('K') {
            k.parse::<u64>().ok()? << 10
        } else if let Some(m) = size.strip_suffix('M') {
            m.parse::<u64>().ok()? << 20
        } else {
            size.parse().ok()?
        };
        if best.is_none_or(|(l, _)| level > l) {
            best = Some((level, bytes));
        }
    }
    best.map(|(_, b)| b)
}

/// One (heap, size) cell: per pattern and method, per-round medians of
/// per-iteration times; and the flush-only costs.
struct Cell {
    heap: String,
    size: u64,
    dma_buf: bool,
    uncached: bool,
    /// (pattern, method) -> one value per round (median ns per access).
    times: Vec<((Pattern, Method), Vec<f64>)>,
    flush_dirty: Vec<f64>,
    flush_clean: Vec<f64>,
}

fn median_of(mut v: Vec<u64>) -> f64 {
    v.sort_unstable();
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2] as f64
    }
}

fn measure_cell(
    heaps: &Heaps,
    heap: &str,
    size: u64,
    args: &BenchSyncArgs,
    rounds: u32,
    budget: u64,
) -> anyhow::Result<Option<Cell>> {
    let h = heaps.require(heap)?;
    let info = h.info();
    let request = AllocRequest::new(size).coherency(Coherency::NonCoherent);
    let buffer = match h.allocate(&request) {
        Ok(b) => b,
        Err(e) => {
            if !args.json {
                println!("| {heap} | {} | skipped: {e} |", format_size(size));
            }
            return Ok(None);
        }
    };
    let dma_buf = buffer.kind() == BufferKind::DmaBuf;
    let uncached = buffer.properties().cache == CacheMode::Uncached || info.name.contains("uncached");
    let len = usize::try_from(buffer.len())?;
    let raw = Mapping::map(&buffer, 0, len, Protection::ReadWrite, false)?;
    let lib = buffer.map_read_write()?;
    let mut s = Subject { lib, raw, dma_buf, uncached };
    // Fault every page of both mappings in before timing.
    if let Some(b) = s.raw.as_mut_slice() {
        b.fill(1);
    }
    s.lib.begin_write()?.fill(1);
    let iterations = (budget / size.max(1)).clamp(3, 2000) as usize;
    let ms = methods(&s);
    let mut times: Vec<((Pattern, Method), Vec<f64>)> =
        PATTERNS.iter().flat_map(|&p| ms.iter().map(move |&m| ((p, m), Vec::new()))).collect();
    let (mut flush_dirty, mut flush_clean) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for (pi, &p) in PATTERNS.iter().enumerate() {
            // Interleave the methods iteration by iteration, rotating the order.
            let mut per: Vec<Vec<u64>> = ms.iter().map(|_| Vec::with_capacity(iterations)).collect();
            for i in 0..iterations {
                for k in 0..ms.len() {
                    let mi = (k + i + round as usize) % ms.len();
                    per[mi].push(once(&mut s, p, ms[mi], i as u8)?);
                }
            }
            for (mi, v) in per.into_iter().enumerate() {
                times[pi * ms.len() + mi].1.push(median_of(v));
            }
        }
        if !s.uncached {
            let (mut d, mut c) = (Vec::new(), Vec::new());
            for i in 0..iterations {
                d.push(flush_only(&mut s, true, i as u8));
                c.push(flush_only(&mut s, false, i as u8));
            }
            flush_dirty.push(median_of(d));
            flush_clean.push(median_of(c));
        }
    }
    Ok(Some(Cell { heap: info.name.clone(), size, dma_buf, uncached, times, flush_dirty, flush_clean }))
}

fn per_mib(ns: f64, bytes: usize) -> f64 {
    ns * (1u64 << 20) as f64 / bytes.max(1) as f64
}

pub fn run(args: &BenchSyncArgs) -> anyhow::Result<ExitCode> {
    let heaps = Heaps::discover();
    let (sizes, rounds, budget) =
        if args.quick { (vec![4096, 65536], 1, 1 << 20) } else { (args.sizes.clone(), args.rounds, args.budget) };
    let names: Vec<String> = if args.heaps.is_empty() {
        heaps
            .iter()
            .filter(|h| {
                let i = h.info();
                i.usable && matches!(i.kind, HeapKind::Memfd | HeapKind::DmaHeap | HeapKind::Udmabuf)
            })
            .map(|h| h.info().name.clone())
            .collect()
    } else {
        args.heaps.clone()
    };
    anyhow::ensure!(sizes.iter().all(|&s| s > 0), "--sizes 0: give sizes of at least one byte (e.g. 4K,1M)");
    let method_name = match cache::method() {
        cache::CacheMaintenance::ClflushOpt => "clflushopt",
        cache::CacheMaintenance::Clflush => "clflush",
        cache::CacheMaintenance::DcCivac => "dc civac",
        cache::CacheMaintenance::Unsupported => "none (unsupported architecture)",
    };
    let llc = last_level_cache();
    let mut cells = Vec::new();
    for heap in &names {
        for &size in &sizes {
            if let Some(c) = measure_cell(&heaps, heap, size, args, rounds, budget)? {
                cells.push(c);
            }
        }
        eprintln!("{heap}: done");
    }
    // Per-line cost of writing back dirty lines, from the sizes that fit in
    // the last-level cache (all their lines can be dirty in it), and the
    // whole-cache equivalent: every line of that cache written back.
    let line = cache::line_size() as f64;
    let fits: Vec<f64> = cells
        .iter()
        .filter(|c| !c.uncached && llc.is_none_or(|l| c.size <= l / 2) && c.size >= 64 << 10)
        .map(|c| Spread::of(&c.flush_dirty).median / (c.size as f64 / line))
        .collect();
    let per_line_dirty = Spread::of(&fits).median;
    let whole_cache_ns = llc.map(|l| l as f64 / line * per_line_dirty);

    let mut report = JsonReport::new("sync");
    for c in &cells {
        let len = c.size as usize;
        for &p in &PATTERNS {
            let get = |m: Method| c.times.iter().find(|((pp, mm), _)| *pp == p && *mm == m).map(|(_, v)| v.clone());
            let access = get(Method::AccessOnly).unwrap_or_default();
            for ((pp, m), v) in &c.times {
                if *pp != p {
                    continue;
                }
                let floor = match m {
                    Method::Guard if c.dma_buf => Some(Method::Ioctl),
                    Method::Guard if !c.uncached => Some(Method::Bare),
                    Method::AccessOnly => None,
                    _ => Some(Method::AccessOnly),
                };
                let mut extra = serde_json::Map::new();
                extra.insert("label".into(), m.label(c.dma_buf).into());
                extra.insert("ns_per_access".into(), serde_json::to_value(Spread::of(v))?);
                extra.insert("bytes_accessed".into(), p.range(len).into());
                if *m != Method::AccessOnly {
                    // Maintenance: the method's time minus the access alone, per round.
                    let maint: Vec<f64> = v.iter().zip(&access).map(|(a, b)| (a - b).max(0.0)).collect();
                    extra.insert("maintenance_ns".into(), serde_json::to_value(Spread::of(&maint))?);
                }
                let ns_mib: Vec<f64> = v.iter().map(|x| per_mib(*x, len)).collect();
                let ratio = floor.and_then(&get).map(|fv| Spread::of(&paired_ratios(v, &fv)));
                report.rows.push(JsonRow {
                    key: format!("sync/{}/{}/{}/{}", c.heap, p.name(), m.key(), format_size(c.size)),
                    value: Spread::of(&ns_mib),
                    unit: "ns_per_mib".into(),
                    floor: floor.map(|f| format!("sync/{}/{}/{}/{}", c.heap, p.name(), f.key(), format_size(c.size))),
                    ratio,
                    extra,
                });
            }
        }
        if !c.uncached {
            for (what, v) in [("flush-dirty", &c.flush_dirty), ("flush-clean", &c.flush_clean)] {
                let mut extra = serde_json::Map::new();
                extra.insert("ns".into(), serde_json::to_value(Spread::of(v))?);
                extra.insert("ns_per_line".into(), (Spread::of(v).median / (c.size as f64 / line)).into());
                report.rows.push(JsonRow {
                    key: format!("sync/{}/{what}/bare/{}", c.heap, format_size(c.size)),
                    value: Spread::of(&v.iter().map(|x| per_mib(*x, len)).collect::<Vec<_>>()),
                    unit: "ns_per_mib".into(),
                    floor: None,
                    ratio: None,
                    extra,
                });
            }
        }
    }
    if args.json {
        report.print()?;
        return Ok(ExitCode::SUCCESS);
    }
    print_tables(&report, &cells, method_name, llc, per_line_dirty, whole_cache_ns, rounds);
    Ok(ExitCode::SUCCESS)
}

fn spread_of(row: &JsonRow, k: &str) -> Spread {
    row.extra.get(k).and_then(|v| serde_json::from_value(v.clone()).ok()).unwrap_or_default()
}

fn print_tables(
    report: &JsonReport,
    cells: &[Cell],
    method_name: &str,
    llc: Option<u64>,
    per_line_dirty: f64,
    whole_cache_ns: Option<f64>,
    rounds: u32,
) {
    println!(
        "Cache maintenance by {method_name}, line {} bytes; last-level cache {}; medians over {rounds} round(s), range in parentheses.\n",
        cache::line_size(),
        llc.map_or("unknown".into(), format_size)
    );
    println!("Per access (maintenance included). The guard's floor is the bare mechanism it uses: {method_name} on a memfd, DMA_BUF_IOCTL_SYNC on a dma-buf.\n");
    println!("| heap | pattern | size | access only | bare {method_name} | bare DMA_BUF_IOCTL_SYNC | dmabroker guard | guard / its floor | guard's maintenance per MiB |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let find = |heap: &str, p: Pattern, m: Method, size: u64| {
        report.rows.iter().find(|r| r.key == format!("sync/{heap}/{}/{}/{}", p.name(), m.key(), format_size(size)))
    };
    for c in cells {
        for p in PATTERNS {
            let cell =
                |m: Method| find(&c.heap, p, m, c.size).map_or("-".into(), |r| spread_of(r, "ns_per_access").latency());
            let guard = find(&c.heap, p, Method::Guard, c.size);
            let ratio = guard.and_then(|g| g.ratio.as_ref()).map_or("-".into(), Spread::ratio);
            let maint = guard
                .map_or("-".into(), |g| fmt_ns(per_mib(spread_of(g, "maintenance_ns").median, c.size as usize) as u64));
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                c.heap,
                p.name(),
                format_size(c.size),
                cell(Method::AccessOnly),
                if c.uncached { "-".into() } else { cell(Method::Bare) },
                cell(Method::Ioctl),
                cell(Method::Guard),
                ratio,
                maint
            );
        }
    }
    let line = cache::line_size() as f64;
    let Some(whole) = whole_cache_ns else {
        println!("\nThe last-level cache size is unknown here: no whole-cache estimate.");
        return;
    };
    println!(
        "\nRanged maintenance against a whole-cache equivalent. User space cannot write back the whole cache (wbinvd is privileged), so its cost is estimated: {} lines x {per_line_dirty:.1} ns (the median per-line cost of writing back dirty lines, over the sizes up to half the cache) = {}. Ranged: bare {method_name} + fence over the range, measured alone, after a write (dirty lines) or after a flush (nothing cached, as before a read of what a device wrote).\n",
        llc.unwrap_or(0) / cache::line_size() as u64,
        fmt_ns(whole as u64)
    );
    println!("| heap | size | ranged, dirty (write-once) | per line | ranged, nothing cached (read-once, read-many) | per line | partial read (1/16, ranged) | cheaper: write-once / reads / partial read |");
    println!("|---|---|---|---|---|---|---|---|");
    let pick = |ranged: f64| if ranged <= whole { "ranged" } else { "whole cache" };
    for c in cells.iter().filter(|c| !c.uncached) {
        let (d, cl) = (Spread::of(&c.flush_dirty), Spread::of(&c.flush_clean));
        let lines = c.size as f64 / line;
        let partial = cl.median * Pattern::PartialRead.range(c.size as usize) as f64 / c.size as f64;
        println!(
            "| {} | {} | {} | {:.1} ns | {} | {:.1} ns | {} | {} / {} / {} |",
            c.heap,
            format_size(c.size),
            d.latency(),
            d.median / lines,
            cl.latency(),
            cl.median / lines,
            fmt_ns(partial as u64),
            pick(d.median),
            pick(cl.median),
            pick(partial)
        );
    }
    let mut heaps: Vec<&str> = cells.iter().filter(|c| !c.uncached).map(|c| c.heap.as_str()).collect();
    heaps.dedup();
    for heap in heaps {
        let mine: Vec<&Cell> = cells.iter().filter(|c| c.heap == heap && !c.uncached).collect();
        let from = |f: fn(&Cell) -> &Vec<f64>| {
            mine.iter().find(|c| Spread::of(f(c)).median > whole).map_or_else(
                || {
                    // Extrapolated from the largest size's per-line cost.
                    mine.last().map_or("-".into(), |c| {
                        let per = Spread::of(f(c)).median / (c.size as f64 / line);
                        if per > 0.0 {
                            format!("about {} (extrapolated)", format_size((whole / per * line) as u64))
                        } else {
                            "-".into()
                        }
                    })
                },
                |c| format_size(c.size),
            )
        };
        println!(
            "\n{heap}: ranged maintenance costs more than the whole-cache equivalent from {} (dirty lines) and {} (nothing cached).",
            from(|c| &c.flush_dirty),
            from(|c| &c.flush_clean)
        );
    }
}
