//! Heap choice: the cheapest heap that meets every requirement, with reasons.
//!
//! # Ranking
//!
//! Cheapest first ([`RANKING`]): `memfd` (plain pages, charged to the caller,
//! no device) < `hugetlb` (smaller huge pages first; takes pages from a
//! pool root reserved) < `udmabuf` (a dma-buf over shmem pages) <
//! `dma-heap` cached (e.g. `system`) < `dma-heap` uncached < CMA
//! `dma-heap` (scarce contiguous memory that fragments). Ties are broken by
//! name, so the choice is a deterministic function of the heap list.
//!
//! # What a heap is assumed to guarantee
//!
//! Only what [`HeapInfo`] says, plus one assumption:
//! - contiguity: `contiguous_up_to` (`None` = the whole buffer, CMA); a
//!   buffer of `len` bytes has at most `ceil(len / contiguous_up_to)`
//!   physical segments;
//! - alignment: the heap's page size, or for CMA the buffer's size rounded
//!   up to a power of two (as [`crate::heap`] checks at allocation);
//! - page size: its `page_size`, or for CMA that same alignment;
//! - address limit: **assumed** that a CMA heap lies below 4 GiB (the
//!   default CMA area is placed in ZONE_DMA32 on arm64, where such devices
//!   live) and that every other heap may hand out any page of RAM. So a
//!   device without an IOMMU and with a DMA mask under 64 bits is met by CMA
//!   when its mask has at least 32 bits, and by nothing otherwise;
//!   [`DeviceProbe`](super::DeviceProbe) drops the requirement when all RAM
//!   lies below the limit or an IOMMU translates;
//! - `usable`, `max_buffer_size` and `free_bytes` (where known) as reported.

use super::{who, Constraints, RequirementKind};
use crate::buffer::{Buffer, CacheMode, Coherency};
use crate::heap::{
    check_request, cma_cmdline, reserve_huge_pages, AllocError, AllocRequest, HeapInfo, HeapKind, Heaps, Limits,
};
use crate::size::format_size;
use serde::Serialize;
use std::fmt;

/// The ranking [`choose_heap`] applies, as shown in reasons.
pub const RANKING: &str = "memfd < hugetlb < udmabuf < dma-heap < uncached dma-heap < CMA dma-heap";

/// The heap's place in [`RANKING`] (0 = cheapest).
pub fn rank(info: &HeapInfo) -> u8 {
    match info.kind {
        HeapKind::Memfd => 0,
        HeapKind::Hugetlb => 1,
        HeapKind::Udmabuf => 2,
        HeapKind::DmaHeap if is_cma(info) => 5,
        HeapKind::DmaHeap if !info.cache_modes.contains(&CacheMode::Cached) => 4,
        HeapKind::DmaHeap => 3,
    }
}

fn is_cma(info: &HeapInfo) -> bool {
    info.kind == HeapKind::DmaHeap && info.contiguous_up_to.is_none()
}

/// One thing a heap does not offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lack {
    /// The requirement it fails; `None` for what no device asked but the
    /// heap cannot do here (not usable, too little free, per-buffer limit).
    pub requirement: Option<RequirementKind>,
    /// The devices behind the requirement.
    pub from: Vec<String>,
    /// What the heap lacks (`contiguous only to 4 KiB`).
    pub problem: String,
}

/// A heap that cannot take the buffer, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejection {
    /// The heap.
    pub heap: String,
    /// Everything it lacks.
    pub lacks: Vec<Lack>,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let problems: Vec<&str> = self.lacks.iter().map(|l| l.problem.as_str()).collect();
        write!(f, "{}: {}", self.heap, problems.join(", "))
    }
}

/// The heap chosen, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Choice {
    /// Its name (for [`Heaps::get`]).
    pub heap: String,
    /// Its family.
    pub kind: HeapKind,
    /// Bytes to request: the length rounded up to the granularity.
    pub len: u64,
    /// Bytes the heap will give: `len` rounded up to its page size.
    pub allocated_len: u64,
    /// Start alignment to request.
    pub align: u64,
    /// Whether to request physical contiguity.
    pub contiguous: bool,
    /// The buffer's cache mode.
    pub cache: CacheMode,
    /// Whether CPU access needs cache maintenance.
    pub coherency: Coherency,
    /// Why this heap, one sentence each. The heaps passed over are not
    /// among them: they are in `passed_over`, to be shown once.
    pub reasons: Vec<String>,
    /// Every heap that meets everything, cheapest first (the fallbacks of
    /// [`allocate_for`]).
    pub candidates: Vec<String>,
    /// The cheaper heaps passed over, and why.
    pub passed_over: Vec<Rejection>,
}

impl Choice {
    /// The request to give the chosen heap.
    pub fn request(&self, name: Option<&str>) -> AllocRequest {
        let r = AllocRequest::new(self.len).align(self.align).contiguous(self.contiguous).coherency(self.coherency);
        match name {
            Some(n) => r.name(n),
            None => r,
        }
    }
}

/// No heap meets every requirement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NoHeapError {
    /// The length asked, after granularity.
    pub len: u64,
    /// The devices involved.
    pub devices: Vec<String>,
    /// Each requirement no heap met in full, as a sentence naming its devices.
    pub requirements: Vec<(RequirementKind, String)>,
    /// Every heap and what it lacks.
    pub rejected: Vec<Rejection>,
    /// What to do about it.
    pub hints: Vec<String>,
}

impl std::error::Error for NoHeapError {}

impl fmt::Display for NoHeapError {
    /// ```text
    /// no heap can allocate 8 MiB for isp0:
    ///   isp0 needs physically contiguous memory: memfd, dma-heap/system: contiguous only to 4 KiB; hugetlb: contiguous only to 2 MiB
    ///   isp0 needs memory below 4 GiB (32-bit DMA, no IOMMU): memfd, hugetlb, dma-heap/system: may place pages anywhere in RAM
    ///   hint: no CMA heap on this machine: boot with cma=256M (or reserve a CMA region in the device tree)
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no heap can allocate {}", format_size(self.len))?;
        if !self.devices.is_empty() {
            write!(f, " for {}", who(&self.devices))?;
        }
        f.write_str(":")?;
        if self.rejected.is_empty() {
            f.write_str("\n  this machine lists no heap at all")?;
        }
        let lines = self
            .requirements
            .iter()
            .map(|(k, s)| (Some(*k), s.clone()))
            .chain(std::iter::once((None, "on this machine".to_owned())));
        for (kind, sentence) in lines {
            // Each heap once, with everything it lacks here; heaps that lack
            // exactly the same share an entry.
            let mut groups: Vec<(String, Vec<&str>)> = Vec::new();
            for r in &self.rejected {
                let problems: Vec<&str> =
                    r.lacks.iter().filter(|l| l.requirement == kind).map(|l| l.problem.as_str()).collect();
                if problems.is_empty() {
                    continue;
                }
                let problem = problems.join(", ");
                match groups.iter_mut().find(|(p, _)| *p == problem) {
                    Some((_, heaps)) => heaps.push(&r.heap),
                    None => groups.push((problem, vec![&r.heap])),
                }
            }
            if groups.is_empty() {
                continue;
            }
            let groups: Vec<String> = groups.iter().map(|(p, h)| format!("{}: {p}", h.join(", "))).collect();
            write!(f, "\n  {sentence}: {}", groups.join("; "))?;
        }
        for hint in &self.hints {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// Why no heap was chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChooseError {
    /// Length 0.
    #[error("size 0: a buffer needs at least one byte")]
    ZeroSize,
    /// Rounding up to the granularity overflows.
    #[error("size {len} bytes overflows when rounded up to a multiple of {granularity}")]
    SizeOverflow {
        /// The length asked.
        len: u64,
        /// The granularity.
        granularity: u64,
    },
    /// No heap meets every requirement.
    #[error(transparent)]
    NoHeap(#[from] NoHeapError),
}

/// Why [`allocate_for`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AllocForError {
    /// No heap meets the constraints.
    #[error(transparent)]
    Choose(#[from] ChooseError),
    /// Every heap that meets them failed to allocate.
    #[error("every suitable heap failed: {}", attempts.iter().map(|(h, e)| format!("{h}: {e}")).collect::<Vec<_>>().join("; "))]
    Alloc {
        /// Each heap tried, cheapest first, with its error.
        attempts: Vec<(String, AllocError)>,
    },
}

/// Check one heap; the page-rounded length when it meets everything.
fn evaluate(h: &HeapInfo, c: &Constraints, len: u64) -> Result<u64, Vec<Lack>> {
    let mut lacks = Vec::new();
    let mut lack = |req: Option<RequirementKind>, from: &[String], problem: String| {
        lacks.push(Lack { requirement: req, from: from.to_vec(), problem });
    };
    let page = h.page_size;
    if page == 0 {
        lack(None, &[], "reports a page size of 0".to_owned());
        return Err(lacks);
    }
    let Some(hlen) = len.checked_next_multiple_of(page).filter(|l| isize::try_from(*l).is_ok()) else {
        lack(None, &[], format!("{} rounded up to {}-byte pages overflows", format_size(len), page));
        return Err(lacks);
    };
    // A hugetlb heap is unusable exactly when it has no free page: the
    // shortage below says so with the number to reserve, once.
    let short_of_pages = h.free_bytes.filter(|f| hlen > *f);
    let said_by_shortage = h.kind == HeapKind::Hugetlb && short_of_pages.is_some();
    if !h.usable && !said_by_shortage {
        let why = h.note.as_deref().unwrap_or("this process cannot allocate from it");
        lack(None, &[], format!("not usable ({why})"));
    }
    if let Some(r) = c.dma_buf().filter(|r| r.value && !h.device_importable) {
        lack(Some(RequirementKind::DmaBuf), &r.from, "CPU/IPC memory, not a dma-buf".into());
    }
    let contig = h.contiguous_up_to.unwrap_or(u64::MAX).max(1);
    if let Some(r) = c.max_segments() {
        let segments = hlen.div_ceil(contig);
        if segments > r.value {
            let problem = if r.value == 1 {
                format!("contiguous only to {}", format_size(contig))
            } else {
                format!("contiguous only to {}: {segments} segments, {} allowed", format_size(contig), r.value)
            };
            lack(Some(RequirementKind::Segments), &r.from, problem);
        }
    }
    if let Some(r) = c.address_bits() {
        if !(is_cma(h) && r.value >= 32 || below_limit(h, r.value)) {
            let problem = if is_cma(h) {
                format!("CMA assumed below 4 GiB, not below {}", format_size(address_limit(r.value)))
            } else {
                "may place pages anywhere in RAM".to_owned()
            };
            lack(Some(RequirementKind::AddressBits), &r.from, problem);
        }
    }
    // As heap::check_request: pages, or for CMA the size's power-of-two order.
    let max_align = crate::heap::max_start_alignment(h.contiguous_up_to.is_none(), hlen, page);
    if let Some(r) = c.align().filter(|r| r.value > max_align) {
        lack(Some(RequirementKind::Align), &r.from, format!("aligns only to {}", format_size(max_align)));
    }
    if let Some(r) = c.page_size().filter(|r| r.value > max_align) {
        lack(Some(RequirementKind::PageSize), &r.from, format!("has {} pages", format_size(page)));
    }
    if let Some(r) = c.cache().filter(|r| !h.cache_modes.contains(&r.value)) {
        let modes: Vec<String> = h.cache_modes.iter().map(std::string::ToString::to_string).collect();
        let offered =
            if modes.is_empty() { "no cache mode".to_owned() } else { format!("only {} memory", modes.join("/")) };
        lack(Some(RequirementKind::Cache), &r.from, offered);
    }
    if let Some(max) = h.max_buffer_size.filter(|m| hlen > *m) {
        lack(None, &[], format!("at most {} per buffer", format_size(max)));
    }
    // A CMA area with enough free pages may still hold no run that long;
    // where debugfs shows its largest free run, it is the limit.
    let run = h.cma.as_ref().and_then(|a| a.largest_free_run).filter(|run| hlen > *run);
    if let (Some(run), None) = (run, short_of_pages) {
        lack(
            None,
            &[],
            format!("its largest free contiguous run is {} (CMA fragmented; debugfs maxchunk)", format_size(run)),
        );
    }
    if let Some(free) = short_of_pages {
        let problem = if h.kind == HeapKind::Hugetlb {
            let (needed, free) = (hlen / page, free / page);
            format!("needs {needed} free {} huge page(s), {free} free", format_size(page))
        } else {
            format!("only {} free", format_size(free))
        };
        lack(None, &[], problem);
    }
    if lacks.is_empty() {
        // The allocator's own check must agree; if it does not, trust it.
        if let Err(e) = check_request(&limits(h), &request(c, len, None)) {
            lacks.push(Lack { requirement: None, from: Vec::new(), problem: e.to_string() });
        }
    }
    if lacks.is_empty() {
        Ok(hlen)
    } else {
        Err(lacks)
    }
}

/// The first address out of reach of `bits`-bit DMA (`u64::MAX` from 64 bits).
fn address_limit(bits: u32) -> u64 {
    1u64.checked_shl(bits).unwrap_or(u64::MAX)
}

/// True when all RAM lies below the reach of `bits`-bit DMA, so that no page
/// of the heap can be out of reach.
fn below_limit(h: &HeapInfo, bits: u32) -> bool {
    h.ram_end.is_some_and(|end| end <= address_limit(bits))
}

/// The allocator's view of a heap.
fn limits(h: &HeapInfo) -> Limits<'_> {
    Limits {
        name: &h.name,
        kind: h.kind,
        page_size: h.page_size,
        contiguous_up_to: h.contiguous_up_to,
        max_buffer_size: h.max_buffer_size,
    }
}

fn request(c: &Constraints, len: u64, name: Option<&str>) -> AllocRequest {
    Choice {
        heap: String::new(),
        kind: HeapKind::Memfd,
        len,
        allocated_len: len,
        align: c.align().map_or(1, |r| r.value),
        contiguous: c.needs_contiguous(),
        cache: CacheMode::Cached,
        coherency: c.effective_coherency(),
        reasons: Vec::new(),
        candidates: Vec::new(),
        passed_over: Vec::new(),
    }
    .request(name)
}

/// How the chosen heap meets a requirement.
fn how(kind: RequirementKind, h: &HeapInfo, c: &Constraints, hlen: u64) -> String {
    match kind {
        RequirementKind::DmaBuf if c.needs_dma_buf() => "it exports dma-bufs".into(),
        RequirementKind::DmaBuf => "any memory will do".into(),
        RequirementKind::Segments => match h.contiguous_up_to {
            None => "it is contiguous over the whole buffer".into(),
            Some(cu) => format!("contiguous runs of {} make {} segment(s)", format_size(cu), hlen.div_ceil(cu.max(1))),
        },
        RequirementKind::AddressBits => match (c.address_bits(), h.ram_end) {
            (Some(r), Some(end)) if end <= address_limit(r.value) => format!(
                "all RAM lies below {} (the highest memory block in /sys/devices/system/memory), \
                 so every heap meets it",
                format_size(end)
            ),
            _ => "CMA lies below 4 GiB (assumed; see the module docs)".into(),
        },
        RequirementKind::Align | RequirementKind::PageSize => {
            if h.contiguous_up_to.is_none() {
                format!("it aligns to {}", format_size(crate::heap::max_start_alignment(true, hlen, h.page_size)))
            } else {
                format!("it has {} pages", format_size(h.page_size))
            }
        }
        RequirementKind::Granularity => "the length was rounded up".into(),
        RequirementKind::Cache => "it offers that cache mode".into(),
        RequirementKind::Coherency if c.effective_coherency() == Coherency::Coherent => {
            "no cache maintenance needed".into()
        }
        RequirementKind::Coherency if h.kind == HeapKind::Udmabuf => {
            "CPU access goes through CpuRead/CpuWrite guards (DMA_BUF_IOCTL_SYNC); \
             udmabuf's sync does nothing until a device has attached the buffer"
                .into()
        }
        RequirementKind::Coherency => "CPU access goes through CpuRead/CpuWrite guards (cache maintenance)".into(),
    }
}

/// Pick the cheapest heap of `heaps` that meets every requirement of
/// `constraints` for a `len`-byte buffer. A pure function of its arguments.
///
/// # Errors
/// [`ChooseError::ZeroSize`], [`ChooseError::SizeOverflow`], or
/// [`ChooseError::NoHeap`] listing each unmet requirement, the devices
/// behind it, what each heap lacks, and hints.
pub fn choose_heap(heaps: &[HeapInfo], constraints: &Constraints, len: u64) -> Result<Choice, ChooseError> {
    let len = constraints.round_len(len)?;
    let mut order: Vec<&HeapInfo> = heaps.iter().collect();
    order.sort_by(|a, b| (rank(a), a.page_size, &a.name).cmp(&(rank(b), b.page_size, &b.name)));
    let mut suitable: Vec<(&HeapInfo, u64)> = Vec::new();
    let mut rejected: Vec<Rejection> = Vec::new();
    for h in &order {
        match evaluate(h, constraints, len) {
            Ok(hlen) => suitable.push((h, hlen)),
            Err(lacks) => rejected.push(Rejection { heap: h.name.clone(), lacks }),
        }
    }
    let Some(&(first, _)) = suitable.first() else {
        return Err(no_heap(&order, constraints, len, rejected).into());
    };
    // A heap that would round the buffer up to more than twice its size (a
    // 32 MiB contiguous buffer in a 1 GiB huge page) gives way to the next
    // suitable one that does not (CMA), where there is one.
    let (best, hlen) = suitable.iter().copied().find(|&(_, hlen)| hlen / 2 <= len).unwrap_or(suitable[0]);
    let wasteful = (best.name != first.name).then(|| first.name.clone());
    let candidates: Vec<String> = suitable.iter().map(|(h, _)| h.name.clone()).collect();
    let best_key = (rank(best), best.page_size, &best.name);
    let passed_over: Vec<Rejection> = rejected
        .into_iter()
        .filter(|r| {
            let h = order.iter().find(|h| h.name == r.heap).expect("rejected heaps come from the list");
            (rank(h), h.page_size, &h.name) < best_key
        })
        .collect();
    let mut reasons = vec![if candidates.len() == 1 {
        format!("{} is the only heap that meets every requirement", best.name)
    } else {
        format!(
            "{} is the cheapest of {} suitable heaps ({}) by the ranking {RANKING}",
            best.name,
            candidates.len(),
            candidates.join(", ")
        )
    }];
    if let Some(w) = wasteful {
        reasons.push(format!("{w} ranks before it but would round {} up to more than twice that", format_size(len)));
    }
    for (kind, sentence) in constraints.describe() {
        reasons.push(format!("{sentence}: {}", how(kind, best, constraints, hlen)));
    }
    let cache =
        constraints.cache().map(|r| r.value).or_else(|| best.cache_modes.first().copied()).unwrap_or(CacheMode::Cached);
    Ok(Choice {
        heap: best.name.clone(),
        kind: best.kind,
        len,
        allocated_len: hlen,
        align: constraints.align().map_or(1, |r| r.value),
        contiguous: constraints.needs_contiguous(),
        cache,
        coherency: constraints.effective_coherency(),
        reasons,
        candidates,
        passed_over,
    })
}

fn no_heap(order: &[&HeapInfo], c: &Constraints, len: u64, rejected: Vec<Rejection>) -> NoHeapError {
    let failed = |k: RequirementKind| rejected.iter().any(|r| r.lacks.iter().any(|l| l.requirement == Some(k)));
    let requirements: Vec<(RequirementKind, String)> = c.describe().into_iter().filter(|(k, _)| failed(*k)).collect();
    let mut hints = Vec::new();
    let cma: Vec<&&HeapInfo> = order.iter().filter(|h| is_cma(h)).collect();
    // Suggest CMA only where a CMA heap would meet what failed: evaluate one
    // as this machine would have it.
    let cma_kinds =
        [RequirementKind::Segments, RequirementKind::AddressBits, RequirementKind::Align, RequirementKind::PageSize];
    let base_page = order.iter().map(|h| h.page_size).min().unwrap_or(4096);
    let would_be_cma = HeapInfo {
        name: "dma-heap/linux,cma".into(),
        kind: HeapKind::DmaHeap,
        contiguous_up_to: None,
        page_size: base_page,
        cache_modes: vec![CacheMode::Cached],
        device_importable: true,
        free_bytes: None,
        max_buffer_size: None,
        usable: true,
        note: None,
        pool_pages: None,
        ram_end: order.iter().find_map(|h| h.ram_end),
        cma: None,
    };
    let cma_lacks = evaluate(&would_be_cma, c, len).err().unwrap_or_default();
    let cma_would_help = cma_kinds.into_iter().any(failed)
        && !cma_lacks.iter().any(|l| l.requirement.is_some_and(|k| cma_kinds.contains(&k)));
    if cma.is_empty() && cma_would_help {
        let mut hint = format!(
            "no CMA heap on this machine: boot with {} (or reserve a CMA region in the device tree)",
            cma_cmdline(len)
        );
        if failed(RequirementKind::AddressBits) {
            hint.push_str(", or put the device behind an IOMMU");
        }
        hints.push(hint);
    } else if failed(RequirementKind::AddressBits)
        && rejected.iter().all(|r| r.lacks.iter().any(|l| l.requirement == Some(RequirementKind::AddressBits)))
    {
        hints.push("no heap here places pages within the device's reach: put the device behind an IOMMU".to_owned());
    }
    if failed(RequirementKind::DmaBuf) && !order.iter().any(|h| h.device_importable && h.usable) {
        hints.push(
            "no dma-buf allocator usable here: `modprobe udmabuf` and grant access to /dev/udmabuf, \
             grant access to /dev/dma_heap/system, or allocate through the broker \
             (`dmabroker serve`, then `dmabroker alloc --broker ...`)"
                .to_owned(),
        );
    }
    if c.cache().is_some_and(|r| r.value == CacheMode::Uncached) && failed(RequirementKind::Cache) {
        hints.push(
            "no uncached heap: vendor kernels name it `system-uncached` or `linux,cma-uncached`; \
             otherwise use cached memory with explicit sync and drop the uncached requirement"
                .to_owned(),
        );
    }
    // A heap held back only by this machine's state says how to free it.
    for r in &rejected {
        if !r.lacks.is_empty() && r.lacks.iter().all(|l| l.requirement.is_none()) {
            let h = order.iter().find(|h| h.name == r.heap).expect("rejected heaps come from the list");
            let problems: Vec<&str> = r.lacks.iter().map(|l| l.problem.as_str()).collect();
            // Too few huge pages: the exact number to reserve.
            let hlen = len.checked_next_multiple_of(h.page_size);
            let free = hlen.and_then(|l| h.free_bytes.filter(|f| h.kind == HeapKind::Hugetlb && l > *f));
            if let (Some(hlen), Some(free), [problem]) = (hlen, free, problems.as_slice()) {
                let missing = (hlen / h.page_size).saturating_sub(free / h.page_size);
                let fix = reserve_huge_pages(h.page_size, missing, h.pool_pages);
                hints.push(format!("{} meets every device requirement but {problem}: {fix}", r.heap));
                continue;
            }
            let too_large = h.max_buffer_size.is_some_and(|m| hlen.is_some_and(|l| l > m));
            let fix = match h.kind {
                HeapKind::Hugetlb => "reserve huge pages (see `dmabroker heaps`)".to_owned(),
                HeapKind::DmaHeap | HeapKind::Udmabuf if !h.usable => {
                    let node = match h.kind {
                        HeapKind::Udmabuf => crate::heap::udmabuf::DEVICE.to_owned(),
                        _ => format!(
                            "{}/{}",
                            crate::heap::dma_heap::DIRECTORY,
                            h.name.strip_prefix("dma-heap/").unwrap_or(&h.name)
                        ),
                    };
                    format!(
                        "grant this user access to {node} (a udev rule, or the group owning it), \
                         or allocate through the broker: `dmabroker alloc --broker ...`"
                    )
                }
                HeapKind::DmaHeap if is_cma(h) => "boot with a larger cma=, or stop other CMA users".to_owned(),
                HeapKind::Udmabuf if too_large => {
                    "raise /sys/module/udmabuf/parameters/size_limit_mb, or use a dma-heap".to_owned()
                }
                _ => "free memory".to_owned(),
            };
            hints.push(format!("{} meets every device requirement but is {}: {fix}", r.heap, problems.join(", ")));
        }
    }
    NoHeapError { len, devices: c.devices().to_vec(), requirements, rejected, hints }
}

/// Choose a heap among `heaps` for `constraints` and allocate `len` bytes
/// from it; when allocation fails (out of memory, no huge pages, permission),
/// try the next suitable heap and say so in the reasons.
///
/// # Errors
/// [`AllocForError::Choose`] when no heap meets the constraints,
/// [`AllocForError::Alloc`] when every suitable heap failed.
pub fn allocate_for(
    heaps: &Heaps,
    constraints: &Constraints,
    len: u64,
    name: Option<&str>,
) -> Result<(Buffer, Choice), AllocForError> {
    let mut infos = heaps.infos();
    let mut attempts: Vec<(String, AllocError)> = Vec::new();
    loop {
        let mut choice = match choose_heap(&infos, constraints, len) {
            Ok(c) => c,
            Err(e) if attempts.is_empty() => return Err(e.into()),
            Err(_) => return Err(AllocForError::Alloc { attempts }),
        };
        let result = match heaps.get(&choice.heap) {
            Some(heap) => heap.allocate(&choice.request(name)),
            None => Err(AllocError::NoSuchHeap { name: choice.heap.clone(), available: heaps.names() }),
        };
        match result {
            Ok(buffer) => {
                for (heap, e) in &attempts {
                    choice.reasons.push(format!("fell back from {heap}: {e}"));
                }
                return Ok((buffer, choice));
            }
            Err(e) => {
                tracing::debug!("allocation from {} failed: {e}; trying the next suitable heap", choice.heap);
                infos.retain(|h| h.name != choice.heap);
                attempts.push((choice.heap, e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::constraints::DeviceCoherency;
    use proptest::prelude::*;

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

    fn arb_heap() -> impl Strategy<Value = HeapInfo> {
        (
            0..7u8,
            prop::sample::select(vec![4096u64, 16384, 65536, 2 << 20, 1 << 30]),
            any::<bool>(),
            prop::option::of(prop::sample::select(vec![1u64 << 20, 64 << 20, 1 << 40])),
            prop::option::of(prop::sample::select(vec![1u64 << 20, 64 << 20, 1 << 40])),
        )
            .prop_map(|(k, page, usable, free, max)| {
                let mut h = match k {
                    0 => heap("memfd", HeapKind::Memfd, Some(page), page, CacheMode::Cached, false),
                    1 => heap("hugetlb", HeapKind::Hugetlb, Some(page), page, CacheMode::Cached, false),
                    2 => heap("udmabuf", HeapKind::Udmabuf, Some(page), page, CacheMode::Cached, true),
                    3 => heap("dma-heap/system", HeapKind::DmaHeap, Some(page), page, CacheMode::Cached, true),
                    4 => {
                        heap("dma-heap/system-uncached", HeapKind::DmaHeap, Some(page), page, CacheMode::Uncached, true)
                    }
                    5 => heap("dma-heap/linux,cma", HeapKind::DmaHeap, None, page, CacheMode::Cached, true),
                    _ => heap("dma-heap/linux,cma-uncached", HeapKind::DmaHeap, None, page, CacheMode::Uncached, true),
                };
                h.usable = usable;
                h.free_bytes = free;
                h.max_buffer_size = max;
                h
            })
    }

    fn arb_constraints() -> impl Strategy<Value = Constraints> {
        (
            prop::option::of(any::<bool>()),
            prop::option::of(1..40u64),
            prop::option::of(prop::sample::select(vec![30u32, 32, 40])),
            prop::option::of((0..32u32).prop_map(|s| 1u64 << s)),
            prop::option::of(prop::sample::select(vec![
                DeviceCoherency::Snoops,
                DeviceCoherency::NeedsMaintenance,
                DeviceCoherency::NeedsUncached,
            ])),
        )
            .prop_map(|(dma, seg, bits, align, coh)| {
                let mut b = Constraints::builder("dev");
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
                if let Some(v) = coh {
                    b = b.coherency(v);
                }
                b.build().unwrap()
            })
    }

    proptest! {
        /// The chosen heap accepts the request the choice makes: choice and
        /// allocator never disagree.
        #[test]
        fn choice_agrees_with_the_allocator_check(
            heaps in prop::collection::vec(arb_heap(), 0..6),
            c in arb_constraints(),
            len in 1u64..(256 << 20),
        ) {
            let mut seen = std::collections::HashSet::new();
            let heaps: Vec<HeapInfo> = heaps.into_iter().filter(|h| seen.insert(h.name.clone())).collect();
            if let Ok(choice) = choose_heap(&heaps, &c, len) {
                let info = heaps.iter().find(|h| h.name == choice.heap).unwrap();
                let checked = check_request(&limits(info), &choice.request(None));
                prop_assert_eq!(checked.ok(), Some(choice.allocated_len));
            }
        }
    }

    #[test]
    fn udmabuf_noncoherent_reason_warns_about_sync() {
        let heaps = [heap("udmabuf", HeapKind::Udmabuf, Some(4096), 4096, CacheMode::Cached, true)];
        let c =
            Constraints::builder("isp0").dma_buf(true).coherency(DeviceCoherency::NeedsMaintenance).build().unwrap();
        let choice = choose_heap(&heaps, &c, 4096).unwrap();
        assert!(choice.reasons.iter().any(|r| r.contains("udmabuf's sync does nothing")), "{:?}", choice.reasons);
    }

    #[test]
    fn unusable_dma_buf_heaps_get_a_permission_hint_not_a_size_limit_one() {
        let mut udmabuf = heap("udmabuf", HeapKind::Udmabuf, Some(4096), 4096, CacheMode::Cached, true);
        udmabuf.usable = false;
        udmabuf.max_buffer_size = Some(64 << 20);
        udmabuf.note = Some("cannot open /dev/udmabuf: Permission denied".into());
        let mut system = heap("dma-heap/system", HeapKind::DmaHeap, Some(4096), 4096, CacheMode::Cached, true);
        system.usable = false;
        let c = Constraints::builder("cam").dma_buf(true).build().unwrap();
        let Err(ChooseError::NoHeap(e)) = choose_heap(&[udmabuf, system], &c, 1 << 20) else { panic!() };
        let hints = e.hints.join("\n");
        assert!(!hints.contains("size_limit_mb"), "{hints}");
        assert!(hints.contains("/dev/udmabuf") && hints.contains("/dev/dma_heap/system"), "{hints}");
        assert!(hints.contains("dmabroker alloc --broker"), "{hints}");
    }
}
