//! `dmabroker bench alloc`: allocation + map + first touch, per heap and size,
//! through the library and through the raw system calls a C program would
//! make, interleaved in the same run so that drift hits both alike.

use super::measure::{ns, JsonReport, JsonRow, Spread};
use crate::cli::BenchAllocArgs;
use dmabroker::heap::{HeapKind, Heaps};
use dmabroker::size::format_size;
use dmabroker::AllocRequest;
use dmabroker_sys::mmap::{Mapping, Protection};
use rustix::fs::{FallocateFlags, MemfdFlags, Mode, OFlags, SealFlags};
use std::os::fd::{AsFd, OwnedFd};
use std::process::ExitCode;
use std::time::{Duration, Instant};

pub fn run(args: &BenchAllocArgs) -> anyhow::Result<ExitCode> {
    let heaps = Heaps::discover();
    let selected: Vec<_> = if args.heaps.is_empty() {
        heaps.iter().filter(|h| h.info().usable).collect()
    } else {
        args.heaps.iter().map(|n| heaps.require(n)).collect::<Result<_, _>>()?
    };
    // Check every size up front, before the table starts: at least one byte
    // (clap checked), and a whole number of each heap's pages that one
    // mapping can hold.
    for heap in &selected {
        let info = heap.info();
        for &size in &args.sizes {
            anyhow::ensure!(size > 0, "--sizes 0: a buffer needs at least one byte (e.g. --sizes 4K,1M)");
            anyhow::ensure!(
                rounded(size, info.page_size).is_some(),
                "--sizes {size}: rounding up to whole {} pages of {} overflows the address space: give a smaller size (e.g. 64M)",
                format_size(info.page_size),
                info.name
            );
        }
    }
    // Memory the kernel could hand out now, read once outside the timed
    // loops: a size above it is skipped rather than pushing the machine into
    // reclaim, swap or the OOM killer.
    let available = mem_available();
    let measured = if args.control { "raw syscalls again (control)" } else { "dmabroker" };
    let mut report = JsonReport::new("alloc");
    // With --json, the table lines go nowhere and one report is printed at the end.
    let out = |line: String| {
        if !args.json {
            println!("{line}");
        }
    };
    out(format!(
        "| heap | size | iterations | raw syscalls p50 | {measured} p50 | overhead (p50) | raw p90 | {measured} p90 |"
    ));
    out("|---|---|---|---|---|---|---|---|".into());
    for heap in selected {
        let info = heap.info();
        for &size in &args.sizes {
            let len = rounded(size, info.page_size).unwrap_or(u64::MAX);
            // Huge pages come from their own pool (checked below), which
            // MemAvailable does not count.
            if let Some(avail) = available.filter(|a| info.kind != HeapKind::Hugetlb && len > *a) {
                out(format!(
                    "| {} | {} | skipped: more than the {} of memory available (MemAvailable) | | | | | |",
                    info.name,
                    format_size(size),
                    format_size(avail)
                ));
                continue;
            }
            if info.kind == HeapKind::Hugetlb && info.free_bytes.unwrap_or(0) < len {
                out(format!(
                    "| {} | {} | skipped: not enough free huge pages | | | | | |",
                    info.name,
                    format_size(size)
                ));
                continue;
            }
            if info.max_buffer_size.is_some_and(|m| len > m) {
                out(format!(
                    "| {} | {} | skipped: above the heap's per-buffer limit | | | | | |",
                    info.name,
                    format_size(size)
                ));
                continue;
            }
            let iterations = (((256u64 << 20) as f64 * args.scale / size as f64) as usize).clamp(8, 2000);
            let raw_once = raw_for(&info.kind, &info.name, len)?;
            let mut raw = Vec::with_capacity(iterations);
            let mut lib = Vec::with_capacity(iterations);
            let request = AllocRequest::new(size);
            // The measured path: the library, or (--control) the raw path
            // again, so that the method's own bias can be read off.
            let measure = || if args.control { raw_once() } else { library_once(heap, &request) };
            // Warm up both paths once (page cache of /proc, lazy statics).
            raw_once()?;
            measure()?;
            for i in 0..iterations {
                // Alternate which goes first so neither always runs on a
                // cache just warmed by the other.
                if i % 2 == 0 {
                    raw.push(raw_once()?);
                    lib.push(measure()?);
                } else {
                    lib.push(measure()?);
                    raw.push(raw_once()?);
                }
            }
            let (r50, r90) = percentiles(&mut raw);
            let (l50, l90) = percentiles(&mut lib);
            let overhead = (l50.as_secs_f64() - r50.as_secs_f64()) / r50.as_secs_f64() * 100.0;
            out(format!(
                "| {} | {} | {} | {} | {} | {:+.1}% | {} | {} |",
                info.name,
                format_size(size),
                iterations,
                fmt_dur(r50),
                fmt_dur(l50),
                overhead,
                fmt_dur(r90),
                fmt_dur(l90)
            ));
            let raw_key = format!("alloc/{}/{}/raw", info.name, format_size(size));
            let one = |d: Duration| Spread::of(&[ns(d) as f64]);
            let extra = |p90: Duration| {
                let mut m = serde_json::Map::new();
                m.insert("p90_ns".into(), ns(p90).into());
                m.insert("iterations".into(), iterations.into());
                m
            };
            report.rows.push(JsonRow {
                key: raw_key.clone(),
                value: one(r50),
                unit: "p50_ns".into(),
                floor: None,
                ratio: None,
                extra: extra(r90),
            });
            report.rows.push(JsonRow {
                key: format!(
                    "alloc/{}/{}/{}",
                    info.name,
                    format_size(size),
                    if args.control { "control" } else { "dmabroker" }
                ),
                value: one(l50),
                unit: "p50_ns".into(),
                floor: Some(raw_key),
                ratio: Some(Spread::of(&[l50.as_secs_f64() / r50.as_secs_f64()])),
                extra: extra(l90),
            });
        }
    }
    if args.json {
        report.print()?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `size` rounded up to whole pages, when that fits in one mapping.
fn rounded(size: u64, page: u64) -> Option<u64> {
    size.checked_next_multiple_of(page.max(1)).filter(|l| isize::try_from(*l).is_ok())
}

/// `MemAvailable` from /proc/meminfo in bytes; `None` when unreadable (then
/// nothing is skipped for it).
fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines().find_map(|l| {
        let kb = l.strip_prefix("MemAvailable:")?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()?;
        kb.checked_mul(1024)
    })
}

fn percentiles(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.9))
}

fn fmt_dur(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.1} us")
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

fn touch_pages(bytes: &mut [u8]) {
    for chunk in bytes.chunks_mut(4096) {
        chunk[0] = 1;
    }
}

fn library_once(heap: &dyn dmabroker::Heap, request: &AllocRequest) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let buffer = heap.allocate(request)?;
    let mut map = buffer.map_read_write()?;
    touch_pages(&mut map.begin_write()?);
    drop(map);
    drop(buffer);
    Ok(start.elapsed())
}

type RawFn = Box<dyn Fn() -> anyhow::Result<Duration>>;

/// The same work as the heap, with nothing but system calls.
fn raw_for(kind: &HeapKind, name: &str, len: u64) -> anyhow::Result<RawFn> {
    let seals = SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL;
    let memfd = move |extra: MemfdFlags| -> anyhow::Result<OwnedFd> {
        let fd = rustix::fs::memfd_create("raw", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING | extra)?;
        rustix::fs::ftruncate(&fd, len)?;
        rustix::fs::fcntl_add_seals(&fd, seals)?;
        Ok(fd)
    };
    let map_touch = move |fd: &OwnedFd, sync: bool| -> anyhow::Result<()> {
        let mut map = Mapping::map(fd, 0, len as usize, Protection::ReadWrite, false)?;
        if sync {
            dmabroker_sys::dma_buf::sync(fd, dmabroker_sys::dma_buf::DMA_BUF_SYNC_WRITE)?;
        }
        touch_pages(map.as_mut_slice().unwrap_or_default());
        if sync {
            dmabroker_sys::dma_buf::sync(
                fd,
                dmabroker_sys::dma_buf::DMA_BUF_SYNC_WRITE | dmabroker_sys::dma_buf::DMA_BUF_SYNC_END,
            )?;
        }
        Ok(())
    };
    Ok(match kind {
        HeapKind::Memfd => Box::new(move || {
            let start = Instant::now();
            let fd = memfd(MemfdFlags::empty())?;
            map_touch(&fd, false)?;
            drop(fd);
            Ok(start.elapsed())
        }),
        HeapKind::Hugetlb => {
            let page = if name.ends_with("1G") { MemfdFlags::HUGE_1GB } else { MemfdFlags::HUGE_2MB };
            Box::new(move || {
                let start = Instant::now();
                let fd = memfd(MemfdFlags::HUGETLB | page)?;
                rustix::fs::fallocate(&fd, FallocateFlags::empty(), 0, len)?;
                map_touch(&fd, false)?;
                drop(fd);
                Ok(start.elapsed())
            })
        }
        HeapKind::Udmabuf => {
            let dev = rustix::fs::open("/dev/udmabuf", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())?;
            Box::new(move || {
                let start = Instant::now();
                let fd = memfd(MemfdFlags::empty())?;
                let buf = dmabroker_sys::udmabuf::create(dev.as_fd(), &fd, 0, len)?;
                drop(fd);
                map_touch(&buf, true)?;
                drop(buf);
                Ok(start.elapsed())
            })
        }
        HeapKind::DmaHeap => {
            let path = format!("/dev/dma_heap/{}", name.trim_start_matches("dma-heap/"));
            let dev = rustix::fs::open(path.as_str(), OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
            Box::new(move || {
                let start = Instant::now();
                let buf = dmabroker_sys::dma_heap::alloc(dev.as_fd(), len)?;
                map_touch(&buf, true)?;
                drop(buf);
                Ok(start.elapsed())
            })
        }
    })
}
