//! Constraints: merge laws, heap choice against an independent oracle,
//! sysfs probing on a fake tree, TOML profiles, and the explanations.

use dmabroker::buffer::CacheMode;
use dmabroker::constraints::{
    allocate_for, choose_heap, rank, ChooseError, Constraints, DeviceCoherency, DeviceProbe, IommuState, ProbeError,
    ProfileError, Profiles,
};
use dmabroker::heap::{HeapInfo, HeapKind, Heaps};
use proptest::prelude::*;
use std::path::{Path, PathBuf};

mod common;

// ---------------------------------------------------------------- helpers

fn heap(name: &str, kind: HeapKind, contig: Option<u64>, page: u64, cache: CacheMode, import: bool) -> HeapInfo {
    HeapInfo {
        name: name.into(),
        kind,
        contiguous_up_to: contig,
        page_size: page,
        cache_modes: vec![cache],
        device_importable: import,
        free_bytes: None,
        max_buffer_size: None,
        usable: true,
        note: None,
        pool_pages: None,
        ram_end: None,
        cma: None,
    }
}

fn memfd() -> HeapInfo {
    heap("memfd", HeapKind::Memfd, Some(4096), 4096, CacheMode::Cached, false)
}
fn hugetlb() -> HeapInfo {
    heap("hugetlb", HeapKind::Hugetlb, Some(2 << 20), 2 << 20, CacheMode::Cached, false)
}
fn udmabuf() -> HeapInfo {
    let mut h = heap("udmabuf", HeapKind::Udmabuf, Some(4096), 4096, CacheMode::Cached, true);
    h.max_buffer_size = Some(64 << 20);
    h
}
fn system() -> HeapInfo {
    heap("dma-heap/system", HeapKind::DmaHeap, Some(4096), 4096, CacheMode::Cached, true)
}
fn cma() -> HeapInfo {
    heap("dma-heap/linux,cma", HeapKind::DmaHeap, None, 4096, CacheMode::Cached, true)
}

/// A fresh, empty temporary directory.
fn temp_dir(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "dmabroker-constraints-{}-{tag}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// ------------------------------------------------------------- merge laws

fn arb_device() -> impl Strategy<Value = Constraints> {
    (
        prop::sample::select(vec!["a", "b", "c", "d"]),
        prop::option::of(any::<bool>()),
        prop::option::of(1..5u64),
        prop::option::of(prop::sample::select(vec![30u32, 32, 40, 64])),
        prop::option::of((0..24u32).prop_map(|s| 1u64 << s)),
        prop::option::of((12..22u32).prop_map(|s| 1u64 << s)),
        prop::option::of((0..16u32).prop_map(|s| 1u64 << s)),
        prop::option::of(prop::sample::select(vec![
            DeviceCoherency::Snoops,
            DeviceCoherency::NeedsMaintenance,
            DeviceCoherency::NeedsUncached,
        ])),
    )
        .prop_map(|(name, dma, seg, bits, align, page, gran, coh)| {
            let mut b = Constraints::builder(name);
            if let Some(v) = dma {
                b = b.dma_buf(v);
            }
            if let Some(v) = seg {
                b = b.max_segments(v);
            }
            if let Some(v) = bits {
                b = b.address_bits(v);
            }
            if let Some(v) = align {
                b = b.align(v);
            }
            if let Some(v) = page {
                b = b.page_size(v);
            }
            if let Some(v) = gran {
                b = b.granularity(v);
            }
            if let Some(v) = coh {
                b = b.coherency(v);
            }
            b.build().unwrap()
        })
}

/// One device or a conflict-free merge of a few.
fn arb_constraints() -> impl Strategy<Value = Constraints> {
    prop::collection::vec(arb_device(), 0..4).prop_filter_map("conflicting", |v| Constraints::merge_all(&v).ok())
}

proptest! {
    #[test]
    fn merge_is_commutative(a in arb_constraints(), b in arb_constraints()) {
        prop_assert_eq!(a.merge(&b), b.merge(&a));
    }

    #[test]
    fn merge_is_associative(a in arb_constraints(), b in arb_constraints(), c in arb_constraints()) {
        let left = a.merge(&b).and_then(|ab| ab.merge(&c));
        let right = b.merge(&c).and_then(|bc| a.merge(&bc));
        match (left, right) {
            (Ok(l), Ok(r)) => prop_assert_eq!(l, r),
            (l, r) => prop_assert_eq!(l.is_err(), r.is_err()),
        }
    }

    #[test]
    fn none_is_the_identity_and_merge_is_idempotent(a in arb_constraints()) {
        prop_assert_eq!(a.merge(&Constraints::none()).unwrap(), a.clone());
        prop_assert_eq!(Constraints::none().merge(&a).unwrap(), a.clone());
        prop_assert_eq!(a.merge(&a).unwrap(), a);
    }

    #[test]
    fn merge_is_at_least_as_strict_as_each_side(a in arb_constraints(), b in arb_constraints()) {
        if let Ok(m) = a.merge(&b) {
            for side in [&a, &b] {
                if let Some(r) = side.max_segments() { prop_assert!(m.max_segments().unwrap().value <= r.value); }
                if let Some(r) = side.align() { prop_assert!(m.align().unwrap().value >= r.value); }
                if let Some(r) = side.address_bits() { prop_assert!(m.address_bits().unwrap().value <= r.value); }
                if side.needs_dma_buf() { prop_assert!(m.needs_dma_buf()); }
                for d in side.devices() { prop_assert!(m.devices().contains(d)); }
            }
        }
    }
}

// ----------------------------------------------------- choice vs. oracle

fn arb_heap() -> impl Strategy<Value = HeapInfo> {
    (
        0..7u8,
        prop::sample::select(vec![4096u64, 16384, 65536, 2 << 20, 1 << 30]),
        any::<bool>(),
        prop::option::of(prop::sample::select(vec![1u64 << 20, 16 << 20, 1 << 40])),
        prop::option::of(prop::sample::select(vec![1u64 << 20, 64 << 20])),
        0..3u8,
        prop::option::of(prop::sample::select(vec![1u64 << 30, 4 << 30, 24 << 30])),
    )
        .prop_map(|(k, page, usable, free, max, suffix, ram_end)| {
            let (name, kind, contig, cache, import) = match k {
                0 => ("memfd", HeapKind::Memfd, Some(page), CacheMode::Cached, false),
                1 => ("hugetlb", HeapKind::Hugetlb, Some(page), CacheMode::Cached, false),
                2 => ("udmabuf", HeapKind::Udmabuf, Some(page), CacheMode::Cached, true),
                3 => ("dma-heap/system", HeapKind::DmaHeap, Some(page), CacheMode::Cached, true),
                4 => ("dma-heap/system-uncached", HeapKind::DmaHeap, Some(page), CacheMode::Uncached, true),
                5 => ("dma-heap/linux,cma", HeapKind::DmaHeap, None, CacheMode::Cached, true),
                _ => ("dma-heap/linux,cma-uncached", HeapKind::DmaHeap, None, CacheMode::Uncached, true),
            };
            let mut h = heap(&format!("{name}{suffix}"), kind, contig, page, cache, import);
            h.usable = usable;
            h.free_bytes = free;
            h.max_buffer_size = max;
            h.ram_end = ram_end;
            h
        })
}

/// The requirements, restated independently of the library's code.
fn oracle(h: &HeapInfo, c: &Constraints, len: u64) -> bool {
    let g = c.granularity().map_or(1, |r| r.value);
    let Some(len) = len.checked_next_multiple_of(g) else { return false };
    let Some(hlen) = len.checked_next_multiple_of(h.page_size).filter(|l| i64::try_from(*l).is_ok()) else {
        return false;
    };
    let cma = h.kind == HeapKind::DmaHeap && h.contiguous_up_to.is_none();
    // CMA aligns to the buffer's order, capped by CONFIG_CMA_ALIGNMENT (2^8 pages).
    let start_align = if cma { hlen.next_power_of_two().max(h.page_size).min(h.page_size << 8) } else { h.page_size };
    h.usable
        && (!c.needs_dma_buf() || h.device_importable)
        && c.max_segments().is_none_or(|r| hlen.div_ceil(h.contiguous_up_to.unwrap_or(u64::MAX)) <= r.value)
        && c.address_bits().is_none_or(|r| cma && r.value >= 32 || h.ram_end.is_some_and(|e| e <= 1 << r.value))
        && c.align().is_none_or(|r| r.value <= start_align)
        && c.page_size().is_none_or(|r| r.value <= start_align)
        && c.cache().is_none_or(|r| h.cache_modes.contains(&r.value))
        && h.max_buffer_size.is_none_or(|m| hlen <= m)
        && h.free_bytes.is_none_or(|f| hlen <= f)
}

/// Heaps with distinct names, as on a real machine.
fn unique(heaps: Vec<HeapInfo>) -> Vec<HeapInfo> {
    let mut seen = std::collections::HashSet::new();
    heaps.into_iter().filter(|h| seen.insert(h.name.clone())).collect()
}

fn key(h: &HeapInfo) -> (u8, u64, String) {
    (rank(h), h.page_size, h.name.clone())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]
    #[test]
    fn the_choice_satisfies_everything_and_errors_only_when_nothing_does(
        heaps in prop::collection::vec(arb_heap(), 0..7),
        c in arb_constraints(),
        len in 1u64..(128 << 20),
    ) {
        let heaps = unique(heaps);
        match choose_heap(&heaps, &c, len) {
            Ok(choice) => {
                let chosen = heaps.iter().find(|h| h.name == choice.heap).unwrap();
                prop_assert!(oracle(chosen, &c, len), "{} chosen but fails: {:?}", choice.heap, chosen);
                // Cheapest: no better-ranked heap satisfies everything, but
                // for one that would more than double the buffer (a 32 MiB
                // buffer in a 1 GiB huge page), which gives way.
                for h in heaps.iter().filter(|h| key(h) < key(chosen)) {
                    let doubles = choice.len.checked_next_multiple_of(h.page_size).is_none_or(|l| l / 2 > choice.len);
                    prop_assert!(
                        !oracle(h, &c, len) || doubles,
                        "{} is cheaper than {} and suitable",
                        h.name,
                        choice.heap
                    );
                }
                // Candidates are exactly the suitable heaps.
                let suitable = heaps.iter().filter(|h| oracle(h, &c, len)).count();
                prop_assert_eq!(choice.candidates.len(), suitable);
                prop_assert!(choice.allocated_len >= len);
            }
            Err(ChooseError::NoHeap(e)) => {
                for h in &heaps {
                    prop_assert!(!oracle(h, &c, len), "{} satisfies but NoHeap was returned", h.name);
                }
                prop_assert_eq!(e.rejected.len(), heaps.len());
                prop_assert!(e.rejected.iter().all(|r| !r.lacks.is_empty()));
                prop_assert!(!e.to_string().is_empty());
            }
            Err(other) => prop_assert!(false, "unexpected {other}"),
        }
    }

    #[test]
    fn the_choice_does_not_depend_on_list_order(
        heaps in prop::collection::vec(arb_heap(), 0..7),
        c in arb_constraints(),
        len in 1u64..(128 << 20),
    ) {
        // With duplicate names the order of equals is the caller's.
        let heaps = unique(heaps);
        let mut reversed = heaps.clone();
        reversed.reverse();
        prop_assert_eq!(choose_heap(&heaps, &c, len), choose_heap(&reversed, &c, len));
    }
}

// ------------------------------------------------------ choice, by example

#[test]
fn unconstrained_buffers_come_from_memfd() {
    let heaps = [cma(), system(), udmabuf(), hugetlb(), memfd()];
    let choice = choose_heap(&heaps, &Constraints::none(), 1 << 20).unwrap();
    assert_eq!(choice.heap, "memfd");
    assert_eq!(choice.candidates, ["memfd", "hugetlb", "udmabuf", "dma-heap/system", "dma-heap/linux,cma"]);
}

#[test]
fn import_picks_udmabuf_then_system_for_large_buffers() {
    let heaps = [cma(), system(), udmabuf(), hugetlb(), memfd()];
    let cam = Constraints::builder("video0 (vivid)").dma_buf(true).build().unwrap();
    let small = choose_heap(&heaps, &cam, 8 << 20).unwrap();
    assert_eq!(small.heap, "udmabuf");
    assert!(small.reasons.iter().any(|r| r.contains("video0 (vivid) needs a dma-buf")), "{:?}", small.reasons);
    // The heaps passed over are listed once, in `passed_over`, not among the reasons.
    let passed: Vec<String> = small.passed_over.iter().map(ToString::to_string).collect();
    assert_eq!(passed, ["memfd: CPU/IPC memory, not a dma-buf", "hugetlb: CPU/IPC memory, not a dma-buf"]);
    assert!(
        !small.reasons.iter().any(|r| r.contains("passed over") || r.contains("CPU/IPC memory, not")),
        "{:?}",
        small.reasons
    );
    // Over udmabuf's 64 MiB limit.
    let big = choose_heap(&heaps, &cam, 100 << 20).unwrap();
    assert_eq!(big.heap, "dma-heap/system");
    assert!(
        big.passed_over.iter().any(|r| r.to_string() == "udmabuf: at most 64 MiB per buffer"),
        "{:?}",
        big.passed_over
    );
}

#[test]
fn an_address_limit_at_or_above_the_end_of_ram_is_met_by_every_heap() {
    let on_24g = |mut h: HeapInfo| {
        h.ram_end = Some(24 << 30);
        h
    };
    let heaps = [on_24g(memfd()), on_24g(hugetlb()), on_24g(system())];
    // `--max-address 0x7fffffffffffffff`: 63 bits, far above 24 GiB of RAM.
    let cli = Constraints::builder("command line").address_bits(63).build().unwrap();
    let choice = choose_heap(&heaps, &cli, 4096).unwrap();
    assert_eq!(choice.heap, "memfd");
    assert_eq!(choice.candidates.len(), 3, "{:?}", choice.candidates);
    assert!(
        choice.reasons.iter().any(|r| r.contains("63-bit DMA") && r.contains("all RAM lies below 24 GiB")),
        "{:?}",
        choice.reasons
    );
    // Exactly at the end of RAM counts too, whoever asked (a profile, say).
    let at_end = Constraints::builder("video0 (rga)").address_bits(35).build().unwrap();
    let mut small = memfd();
    small.ram_end = Some(32 << 30);
    assert_eq!(choose_heap(&[small], &at_end, 4096).unwrap().heap, "memfd");
    // Below the end of RAM the limit stands.
    let dma32 = Constraints::builder("isp0").address_bits(32).build().unwrap();
    let text = choose_heap(&heaps, &dma32, 4096).unwrap_err().to_string();
    assert!(text.contains("may place pages anywhere in RAM"), "{text}");
    // Without a known end of RAM, nothing changes.
    assert!(choose_heap(&[memfd()], &cli, 4096).is_err());
}

#[test]
fn each_heap_is_listed_once_with_all_its_reasons_and_huge_page_fixes_give_the_number() {
    // 3 free 2 MiB pages in a pool of 3; no 1 GiB page at all.
    let mut h2m = hugetlb();
    h2m.free_bytes = Some(3 * (2 << 20));
    h2m.pool_pages = Some(3);
    h2m.note = Some("3 of 3 pages free".into());
    let mut h1g = heap("hugetlb-1G", HeapKind::Hugetlb, Some(1 << 30), 1 << 30, CacheMode::Cached, false);
    h1g.free_bytes = Some(0);
    h1g.pool_pages = Some(0);
    h1g.usable = false;
    h1g.note = Some("0 of 0 pages free; reserve with echo N > somewhere".into());
    let mut locked = udmabuf();
    locked.usable = false;
    locked.note = Some("cannot open /dev/udmabuf: Permission denied".into());
    let c = Constraints::builder("dsp").page_size(2 << 20).build().unwrap();
    let err = match choose_heap(&[memfd(), h2m, h1g, locked], &c, 8 << 20) {
        Err(ChooseError::NoHeap(e)) => e,
        other => panic!("expected NoHeap, got {other:?}"),
    };
    let text = err.to_string();
    let machine = text.lines().find(|l| l.trim_start().starts_with("on this machine:")).expect(&text);
    assert_eq!(
        machine.trim(),
        "on this machine: hugetlb: needs 4 free 2 MiB huge page(s), 3 free; \
         hugetlb-1G: needs 1 free 1 GiB huge page(s), 0 free; \
         udmabuf: not usable (cannot open /dev/udmabuf: Permission denied)"
    );
    assert!(!text.contains("not usable("), "{text}");
    assert!(!text.contains("echo N"), "{text}");
    assert!(
        text.contains(
            "hint: hugetlb meets every device requirement but needs 4 free 2 MiB huge page(s), 3 free: \
             reserve 1 more as root with `echo 4 > /proc/sys/vm/nr_hugepages`"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "reserve 1 more as root with `echo 1 > /sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages`"
        ),
        "{text}"
    );
    // A CMA heap would not have 2 MiB pages for an 8 MiB buffer: not suggested.
    assert!(!text.contains("cma="), "{text}");

    // Two problems of one heap: one entry.
    let mut full = udmabuf();
    full.usable = false;
    full.note = Some("cannot open /dev/udmabuf: Permission denied".into());
    let text = choose_heap(&[full], &Constraints::none(), 100 << 20).unwrap_err().to_string();
    assert!(
        text.contains(
            "on this machine: udmabuf: not usable (cannot open /dev/udmabuf: Permission denied), at most 64 MiB per buffer"
        ),
        "{text}"
    );
    assert_eq!(text.matches(" udmabuf: ").count(), 1, "{text}");
}

#[test]
fn contiguous_below_4g_needs_cma_and_the_error_says_so() {
    let isp = Constraints::builder("isp0").contiguous().address_bits(32).dma_buf(true).build().unwrap();
    let without = [memfd(), hugetlb(), udmabuf(), system()];
    let err = match choose_heap(&without, &isp, 8 << 20) {
        Err(ChooseError::NoHeap(e)) => e,
        other => panic!("expected NoHeap, got {other:?}"),
    };
    let text = err.to_string();
    assert!(text.starts_with("no heap can allocate 8 MiB for isp0:"), "{text}");
    assert!(text.contains("isp0 needs physically contiguous memory: "), "{text}");
    assert!(text.contains("hugetlb: contiguous only to 2 MiB"), "{text}");
    assert!(text.contains("memfd, udmabuf, dma-heap/system: contiguous only to 4 KiB"), "{text}");
    assert!(text.contains("isp0 needs memory below 4 GiB (32-bit DMA, no IOMMU): "), "{text}");
    assert!(text.contains("hint: no CMA heap on this machine: boot with cma=256M"), "{text}");
    assert!(text.contains("or put the device behind an IOMMU"), "{text}");

    let with = [memfd(), hugetlb(), udmabuf(), system(), cma()];
    let choice = choose_heap(&with, &isp, 8 << 20).unwrap();
    assert_eq!(choice.heap, "dma-heap/linux,cma");
    assert!(choice.contiguous);
    assert!(choice.reasons[0].contains("only heap"), "{:?}", choice.reasons);
    assert!(choice.reasons.iter().any(|r| r.contains("contiguous over the whole buffer")), "{:?}", choice.reasons);
}

#[test]
fn hugetlb_serves_cpu_only_contiguity_within_a_page() {
    let c = Constraints::builder("dsp").contiguous().dma_buf(false).build().unwrap();
    let choice = choose_heap(&[memfd(), hugetlb(), cma()], &c, 1 << 20).unwrap();
    assert_eq!(choice.heap, "hugetlb");
    assert_eq!(choice.allocated_len, 2 << 20);
}

#[test]
fn unusable_or_full_cma_is_explained_with_a_fix() {
    let c = Constraints::builder("isp0").contiguous().build().unwrap();
    let mut locked = cma();
    locked.usable = false;
    locked.note = Some("cannot open /dev/dma_heap/linux,cma: Permission denied".into());
    let text = choose_heap(&[memfd(), locked], &c, 8 << 20).unwrap_err().to_string();
    assert!(text.contains("on this machine: dma-heap/linux,cma: not usable (cannot open"), "{text}");
    assert!(text.contains("hint: dma-heap/linux,cma meets every device requirement but is not usable"), "{text}");
    assert!(text.contains("dmabroker alloc --broker"), "{text}");

    let mut full = cma();
    full.free_bytes = Some(4 << 20);
    let text = choose_heap(&[full], &c, 8 << 20).unwrap_err().to_string();
    assert!(text.contains("only 4 MiB free") && text.contains("larger cma="), "{text}");
}

#[test]
fn uncached_requirements_pick_an_uncached_heap_or_explain() {
    let vpu = Constraints::builder("vpu0").coherency(DeviceCoherency::NeedsUncached).dma_buf(true).build().unwrap();
    let uncached = heap("dma-heap/system-uncached", HeapKind::DmaHeap, Some(4096), 4096, CacheMode::Uncached, true);
    let choice = choose_heap(&[system(), uncached, udmabuf()], &vpu, 1 << 20).unwrap();
    assert_eq!(choice.heap, "dma-heap/system-uncached");
    assert_eq!(choice.cache, CacheMode::Uncached);
    let text = choose_heap(&[system(), udmabuf()], &vpu, 1 << 20).unwrap_err().to_string();
    assert!(text.contains("vpu0 needs uncached memory: udmabuf, dma-heap/system: only cached memory"), "{text}");
    assert!(text.contains("hint: no uncached heap"), "{text}");
}

#[test]
fn granularity_rounds_and_sizes_are_checked() {
    let c = Constraints::builder("enc").granularity(1 << 16).build().unwrap();
    let choice = choose_heap(&[memfd()], &c, 5000).unwrap();
    assert_eq!((choice.len, choice.allocated_len), (1 << 16, 1 << 16));
    assert_eq!(choose_heap(&[memfd()], &c, 0), Err(ChooseError::ZeroSize));
    assert!(matches!(choose_heap(&[memfd()], &c, u64::MAX), Err(ChooseError::SizeOverflow { .. })));
    // Rounding to the heap's page overflowing is a lack, not a panic.
    let err = choose_heap(&[memfd()], &Constraints::none(), u64::MAX - 10).unwrap_err();
    assert!(err.to_string().contains("overflows"), "{err}");
}

#[test]
fn choice_and_constraints_serialize_for_json_output() {
    let a = Constraints::builder("video0 (vivid)").dma_buf(true).build().unwrap();
    let b = Constraints::builder("card0 (vgem)").dma_buf(true).build().unwrap();
    let merged = a.merge(&b).unwrap();
    let json = serde_json::to_value(&merged).unwrap();
    assert_eq!(json["dma_buf"]["from"], serde_json::json!(["card0 (vgem)", "video0 (vivid)"]));
    let choice = choose_heap(&[udmabuf()], &merged, 4096).unwrap();
    let json = serde_json::to_value(&choice).unwrap();
    assert_eq!(json["heap"], "udmabuf");
    assert!(json["reasons"].as_array().unwrap().len() >= 2);
}

// ------------------------------------------------------------ fake sysfs

struct FakeSysfs {
    root: PathBuf,
}

impl FakeSysfs {
    fn new(ram_blocks: Option<(u64, u64)>) -> Self {
        let root = temp_dir("sysfs");
        if let Some((block, count)) = ram_blocks {
            let mem = root.join("devices/system/memory");
            std::fs::create_dir_all(&mem).unwrap();
            std::fs::write(mem.join("block_size_bytes"), format!("{block:x}\n")).unwrap();
            for i in 0..count {
                std::fs::create_dir_all(mem.join(format!("memory{i}"))).unwrap();
            }
        }
        Self { root }
    }

    /// A device at `devpath` (under devices/) with a class node `class/name`
    /// numbered `dev`.
    #[allow(clippy::too_many_arguments)]
    fn add(
        &self,
        devpath: &str,
        class: &str,
        name: &str,
        dev: &str,
        driver: Option<&str>,
        dma_mask_bits: Option<u32>,
        iommu: Option<(&str, &str)>,
    ) {
        use std::os::unix::fs::symlink;
        let device = self.root.join("devices").join(devpath);
        let node = device.join(class).join(name);
        std::fs::create_dir_all(&node).unwrap();
        std::fs::create_dir_all(self.root.join("class").join(class)).unwrap();
        std::fs::create_dir_all(self.root.join("dev/char")).unwrap();
        symlink(&node, self.root.join("dev/char").join(dev)).unwrap();
        symlink(self.root.join("class").join(class), node.join("subsystem")).unwrap();
        symlink(&device, node.join("device")).unwrap();
        if let Some(d) = driver {
            let drv = self.root.join("bus/platform/drivers").join(d);
            std::fs::create_dir_all(&drv).unwrap();
            symlink(&drv, device.join("driver")).unwrap();
        }
        if let Some(bits) = dma_mask_bits {
            std::fs::write(device.join("dma_mask_bits"), format!("{bits}\n")).unwrap();
        }
        if let Some((group, kind)) = iommu {
            let g = self.root.join("kernel/iommu_groups").join(group);
            std::fs::create_dir_all(&g).unwrap();
            std::fs::write(g.join("type"), format!("{kind}\n")).unwrap();
            symlink(&g, device.join("iommu_group")).unwrap();
        }
    }

    fn probe(&self, path: &str, major: u32, minor: u32) -> Result<DeviceProbe, ProbeError> {
        DeviceProbe::from_sysfs(&self.root, path, path, major, minor)
    }
}

impl Drop for FakeSysfs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

#[test]
fn probes_a_platform_camera_without_dma_mask_or_iommu() {
    let sys = FakeSysfs::new(None);
    sys.add("platform/vivid.0", "video4linux", "video0", "81:0", Some("vivid"), None, None);
    let p = sys.probe("/dev/video0", 81, 0).unwrap();
    assert_eq!(p.label, "video0 (vivid)");
    assert_eq!(p.subsystem, "video4linux");
    assert_eq!(p.driver.as_deref(), Some("vivid"));
    assert_eq!((p.dma_mask_bits, &p.iommu), (None, &IommuState::None));
    let c = p.constraints();
    assert!(c.needs_dma_buf());
    assert!(c.address_bits().is_none());
    assert!(c.notes().iter().any(|n| n.contains("address limit unknown")), "{:?}", c.notes());
}

#[test]
fn probes_dma_mask_and_iommu_of_a_pci_gpu() {
    let sys = FakeSysfs::new(Some((128 << 20, 64))); // 8 GiB of RAM
    sys.add("pci0000:00/0000:00:02.0", "drm", "card0", "226:0", Some("i915"), Some(39), Some(("3", "DMA-FQ")));
    sys.add("pci0000:00/0000:01:00.0", "drm", "card1", "226:1", Some("oldgpu"), Some(32), None);
    sys.add("pci0000:00/0000:02:00.0", "drm", "card2", "226:2", Some("ptgpu"), Some(32), Some(("7", "identity")));

    let translated = sys.probe("/dev/dri/card0", 226, 0).unwrap();
    assert_eq!(translated.iommu, IommuState::Translated("3".into()));
    assert_eq!(translated.dma_mask_bits, Some(39));
    assert_eq!(translated.address_bits(), None, "an IOMMU lifts the address limit");

    let limited = sys.probe("/dev/dri/card1", 226, 1).unwrap();
    assert_eq!(limited.ram_end, Some(8 << 30));
    let c = limited.constraints();
    assert_eq!(c.address_bits().unwrap().value, 32);
    assert_eq!(c.address_bits().unwrap().from, ["card1 (oldgpu)"]);

    let passthrough = sys.probe("/dev/dri/card2", 226, 2).unwrap();
    assert_eq!(passthrough.iommu, IommuState::Passthrough("7".into()));
    assert_eq!(passthrough.address_bits(), Some(32), "an identity domain translates nothing");
}

#[test]
fn an_address_limit_above_all_ram_is_no_limit() {
    let sys = FakeSysfs::new(Some((128 << 20, 16))); // 2 GiB of RAM
    sys.add("platform/fe00b840.isp", "video4linux", "video3", "81:3", Some("rkisp1"), Some(32), None);
    let p = sys.probe("/dev/video3", 81, 3).unwrap();
    assert_eq!(p.address_bits(), None);
    assert!(p.notes().iter().any(|n| n.contains("all RAM lies below 2 GiB")), "{:?}", p.notes());
}

#[test]
fn probe_errors_name_the_node() {
    let sys = FakeSysfs::new(None);
    sys.add("virtual/mem", "mem", "null", "1:3", None, None, None);
    let e = sys.probe("/dev/null", 1, 3).unwrap_err();
    assert!(matches!(e, ProbeError::UnsupportedSubsystem { ref subsystem, .. } if subsystem == "mem"), "{e}");
    // sysfs is there (dev/char exists): nobody registered 81:9.
    let e = sys.probe("/dev/video9", 81, 9).unwrap_err();
    assert!(matches!(e, ProbeError::NoSuchDevice { major: 81, minor: 9, .. }), "{e}");
    assert!(e.to_string().contains("/dev/video9 (81:9): no device is registered"), "{e}");
    assert!(e.to_string().contains("driver that is not loaded"), "{e}");
    assert!(!e.to_string().contains("sysfs mounted"), "{e}");
    // No dev/char at all: sysfs is not mounted.
    let bare = FakeSysfs::new(None);
    let e = bare.probe("/dev/video9", 81, 9).unwrap_err();
    assert!(matches!(e, ProbeError::NoSysfsEntry { .. }), "{e}");
    assert!(e.to_string().contains("is sysfs mounted?"), "{e}");
    // Real stat paths.
    let e = DeviceProbe::probe("/dev/does-not-exist-dmabroker").unwrap_err();
    assert!(matches!(e, ProbeError::NotFound { .. }), "{e}");
    let e = DeviceProbe::probe(std::env::temp_dir()).unwrap_err();
    assert!(matches!(e, ProbeError::NotACharDevice { .. }), "{e}");
}

#[test]
fn probing_dev_null_on_the_real_sysfs_is_refused() {
    if !Path::new("/sys/dev/char/1:3").exists() {
        common::skip("probing_dev_null_on_the_real_sysfs_is_refused", "no /sys/dev/char on this machine");
        return;
    }
    let e = DeviceProbe::probe("/dev/null").unwrap_err();
    assert!(matches!(e, ProbeError::UnsupportedSubsystem { .. }), "{e}");
}

#[test]
fn a_node_with_no_device_behind_it_is_called_stale() {
    use rustix::fs::{FileType, Mode};
    if !Path::new("/sys/dev/char").is_dir() {
        return common::skip("stale node", "no /sys/dev/char on this machine");
    }
    if !common::is_root() {
        return common::skip("stale node", "mknod of a character device needs root");
    }
    // A V4L2 number nobody registered here.
    let Some(minor) = (200..256u32).find(|m| !Path::new(&format!("/sys/dev/char/81:{m}")).exists()) else {
        return common::skip("stale node", "every minor 81:200-255 is registered here");
    };
    let dir = temp_dir("stale");
    let node = dir.join("video");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &node,
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o600),
        rustix::fs::makedev(81, minor),
    )
    .unwrap();
    let e = DeviceProbe::probe(&node).unwrap_err();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(matches!(e, ProbeError::NoSuchDevice { major: 81, .. }), "{e}");
    let text = e.to_string();
    assert!(text.contains(&format!("(81:{minor}): no device is registered with that number")), "{text}");
    assert!(!text.contains("sysfs mounted"), "{text}");
}

// -------------------------------------------------------------- profiles

#[test]
fn profiles_override_sysfs_and_match_by_driver_or_path() {
    let sys = FakeSysfs::new(Some((128 << 20, 64)));
    sys.add("platform/ff680000.rga", "video4linux", "video1", "81:1", Some("rockchip-rga"), None, None);
    sys.add("platform/ff650000.vpu", "video4linux", "video2", "81:2", Some("hantro-vpu"), Some(32), Some(("1", "DMA")));
    let mut profiles = Profiles::new();
    profiles
        .add_str(
            r#"
            [[device]]
            driver = "rockchip-rga"
            contiguous = true
            address_bits = 32
            align = "64K"
            coherency = "needs-maintenance"

            [[device]]
            driver = "hantro-vpu"
            unless_iommu = true
            contiguous = true

            [[device]]
            path = "/dev/video1"
            granularity = 4096
            "#,
            "test.toml",
        )
        .unwrap();
    let rga = sys.probe("/dev/video1", 81, 1).unwrap();
    let c = profiles.constraints_for(&rga);
    assert!(c.needs_contiguous());
    assert_eq!(c.address_bits().unwrap().value, 32);
    assert_eq!(c.align().unwrap().value, 64 << 10);
    assert_eq!(c.granularity().unwrap().value, 4096, "path entries match too");
    assert_eq!(c.max_segments().unwrap().from, ["video1 (rockchip-rga)"]);
    assert!(c.notes().iter().any(|n| n.contains("profile test.toml (driver = \"rockchip-rga\")")), "{:?}", c.notes());

    // The VPU sits behind a translating IOMMU: its unless_iommu entry is skipped.
    let vpu = sys.probe("/dev/video2", 81, 2).unwrap();
    let c = profiles.constraints_for(&vpu);
    assert!(!c.needs_contiguous());
    assert!(c.address_bits().is_none());

    // Both together need CMA below 4 GiB, and say who asked.
    let both = profiles.constraints_for(&rga).merge(&c).unwrap();
    assert_eq!(both.devices(), ["video1 (rockchip-rga)", "video2 (hantro-vpu)"]);
    assert_eq!(both.dma_buf().unwrap().from, ["video1 (rockchip-rga)", "video2 (hantro-vpu)"]);
}

#[test]
fn later_profile_entries_override_earlier_ones() {
    let sys = FakeSysfs::new(None);
    sys.add("platform/isp", "video4linux", "video0", "81:0", Some("isp"), None, None);
    let mut p = Profiles::new();
    p.add_str("[[device]]\ndriver = \"isp\"\ncontiguous = true\nalign = 4096\n", "a.toml").unwrap();
    p.add_str("[[device]]\ndriver = \"isp\"\nmax_segments = 8\n", "b.toml").unwrap();
    let c = p.constraints_for(&sys.probe("/dev/video0", 81, 0).unwrap());
    assert_eq!(c.max_segments().unwrap().value, 8);
    assert_eq!(c.align().unwrap().value, 4096);
}

fn parse_err(text: &str) -> String {
    Profiles::new().add_str(text, "/etc/dmabroker/devices.d/board.toml").unwrap_err().to_string()
}

#[test]
fn unknown_keys_are_rejected_naming_file_and_key() {
    let e = parse_err("[[device]]\ndriver = \"rkisp1\"\ncontigous = true\n");
    assert!(e.starts_with("/etc/dmabroker/devices.d/board.toml: "), "{e}");
    assert!(e.contains("contigous"), "{e}");
    assert!(e.contains("line 3"), "{e}");
    let e = parse_err("[[devices]]\ndriver = \"x\"\n");
    assert!(e.contains("devices"), "{e}");
}

#[test]
fn bad_values_are_rejected_naming_file_entry_and_key() {
    let e = parse_err("[[device]]\ndriver = \"a\"\n[[device]]\ndriver = \"rga\"\nalign = 3000\n");
    assert_eq!(
        e,
        "/etc/dmabroker/devices.d/board.toml: [[device]] #2 (driver = \"rga\"): `align = 3000` is not a power of two"
    );
    let e = parse_err("[[device]]\npath = \"/dev/video0\"\naddress_bits = 70\n");
    assert!(e.contains("#1 (path = \"/dev/video0\"): `address_bits = 70` is outside 12..=64"), "{e}");
    let e = parse_err("[[device]]\ncontiguous = true\n");
    assert!(e.contains("give `driver` or `path`"), "{e}");
    let e = parse_err("[[device]]\ndriver = \"a\"\npath = \"/dev/video0\"\n");
    assert!(e.contains("not both"), "{e}");
    let e = parse_err("[[device]]\ndriver = \"a\"\ncoherency = \"sometimes\"\n");
    assert!(e.contains("sometimes") && e.contains("needs-maintenance"), "{e}");
    let e = parse_err("[[device]]\ndriver = \"a\"\nalign = \"12Q\"\n");
    assert!(e.contains("unknown unit"), "{e}");
    let e = parse_err("[[device]]\ndriver = \"a\"\ncontiguous = true\nmax_segments = 4\n");
    assert!(e.contains("contradicts"), "{e}");
}

#[test]
fn unreadable_profile_files_are_named() {
    let mut p = Profiles::new();
    let e = p.load(&[PathBuf::from("/nonexistent/dmabroker.toml")]).unwrap_err();
    assert!(matches!(e, ProfileError::Read { .. }));
    assert!(e.to_string().starts_with("/nonexistent/dmabroker.toml: cannot read"), "{e}");
    // A missing directory is no profiles.
    p.load_dir(Path::new("/nonexistent/devices.d")).unwrap();
    assert_eq!(p.entries().count(), 0);
}

#[test]
fn profiles_that_are_not_regular_files_or_too_large_are_refused() {
    use rustix::fs::{FileType, Mode};
    let dir = temp_dir("special");
    let load = |path: &Path| Profiles::new().load(&[path.to_owned()]).unwrap_err();
    // A device that never ends (`--profile /dev/zero` used to read until memory ran out).
    let e = load(Path::new("/dev/zero"));
    assert!(matches!(e, ProfileError::NotAFile { what: "a character device", .. }), "{e}");
    assert!(e.to_string().starts_with("/dev/zero is a character device, not a regular file"), "{e}");
    // A FIFO nobody writes: opening it for reading would block forever.
    let fifo = dir.join("fifo.toml");
    rustix::fs::mknodat(rustix::fs::CWD, &fifo, FileType::Fifo, Mode::from_raw_mode(0o600), 0).unwrap();
    let e = load(&fifo);
    assert!(matches!(e, ProfileError::NotAFile { what: "a FIFO", .. }), "{e}");
    // A directory, also when it is named like a profile in devices.d.
    let sub = dir.join("devices.d");
    std::fs::create_dir_all(sub.join("board.toml")).unwrap();
    let e = Profiles::new().load_dir(&sub).unwrap_err();
    assert!(matches!(e, ProfileError::NotAFile { what: "a directory", .. }), "{e}");
    // Over the size limit.
    let big = dir.join("big.toml");
    let mut text = "# padding\n".repeat((dmabroker::constraints::MAX_PROFILE_BYTES / 10) as usize);
    text.push_str("[[device]]\ndriver = \"x\"\n");
    std::fs::write(&big, &text).unwrap();
    let e = load(&big);
    assert!(matches!(e, ProfileError::TooLarge { max, .. } if max == 1 << 20), "{e}");
    assert!(e.to_string().contains("more than the 1 MiB a profile may hold"), "{e}");
    // Just under the limit loads.
    let ok = dir.join("ok.toml");
    std::fs::write(&ok, "# padding\n".repeat(100_000) + "[[device]]\ndriver = \"x\"\n").unwrap();
    let mut p = Profiles::new();
    p.load(&[ok]).unwrap();
    assert_eq!(p.entries().count(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn shipped_example_profiles_load() {
    // Embedded at build time: the VM runs this binary without the source tree.
    let shipped = [
        ("profiles/nxp-imx8.toml", include_str!("../../../profiles/nxp-imx8.toml")),
        ("profiles/raspberrypi.toml", include_str!("../../../profiles/raspberrypi.toml")),
        ("profiles/rockchip.toml", include_str!("../../../profiles/rockchip.toml")),
        ("profiles/virtual.toml", include_str!("../../../profiles/virtual.toml")),
    ];
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../profiles");
    if let Ok(entries) = std::fs::read_dir(&dir) {
        let on_disk =
            entries.filter(|e| e.as_ref().is_ok_and(|e| e.path().extension().is_some_and(|x| x == "toml"))).count();
        assert_eq!(on_disk, shipped.len(), "a profile was added to profiles/: list it in this test");
    }
    let mut p = Profiles::new();
    for (origin, text) in shipped {
        p.add_str(text, origin).unwrap();
    }
    let drivers: Vec<&str> = p.entries().filter_map(|(_, d)| d.driver.as_deref()).collect();
    for d in ["rockchip-rga", "hantro-vpu", "mxc-isi", "unicam", "vc4_drm", "vivid", "vgem"] {
        assert!(drivers.contains(&d), "no example profile for {d}: {drivers:?}");
    }
    // A Pi camera and display together need CMA.
    let sys = FakeSysfs::new(Some((128 << 20, 32)));
    sys.add("platform/unicam", "video4linux", "video0", "81:0", Some("unicam"), None, None);
    sys.add("platform/gpu", "drm", "card0", "226:0", Some("vc4_drm"), None, None);
    let cam = p.constraints_for(&sys.probe("/dev/video0", 81, 0).unwrap());
    let disp = p.constraints_for(&sys.probe("/dev/dri/card0", 226, 0).unwrap());
    let both = cam.merge(&disp).unwrap();
    assert_eq!(both.max_segments().unwrap().from, ["card0 (vc4_drm)", "video0 (unicam)"]);
    let choice = choose_heap(&[memfd(), udmabuf(), system(), cma()], &both, 1920 * 1088 * 3 / 2).unwrap();
    assert_eq!(choice.heap, "dma-heap/linux,cma");
}

// ------------------------------------------------------- real allocation

#[test]
fn allocate_for_uses_this_machines_heaps() {
    let heaps = Heaps::discover();
    let (buffer, choice) = allocate_for(&heaps, &Constraints::none(), 100_000, Some("constraints-test")).unwrap();
    assert_eq!(choice.heap, "memfd");
    assert_eq!(buffer.heap(), "memfd");
    assert!(buffer.len() >= 100_000);

    let cam = Constraints::builder("cam").dma_buf(true).build().unwrap();
    match allocate_for(&heaps, &cam, 1 << 20, None) {
        Ok((buffer, choice)) => {
            assert!(buffer.properties().device_importable, "{choice:?}");
        }
        Err(e) => {
            let importable = heaps.infos().iter().any(|h| h.device_importable && h.usable);
            assert!(!importable, "a usable dma-buf heap exists but allocation failed: {e}");
            common::skip("allocate_for_uses_this_machines_heaps", &format!("no usable dma-buf heap here: {e}"));
        }
    }
}
