//! The hugetlb heap on this host: reserves huge pages itself when it may
//! (root), restores the old count, and proves a 2 MiB buffer contiguous
//! through /proc/self/pagemap.

mod common;

use dmabroker::heap::AllocError;
use dmabroker::{AllocRequest, Heaps};

const NR: &str = "/proc/sys/vm/nr_hugepages";

/// Restores nr_hugepages on drop, even when the test fails.
struct Reservation {
    old: Option<String>,
}

impl Reservation {
    fn reserve(pages: u64) -> Result<Self, String> {
        let old = std::fs::read_to_string(NR).map_err(|e| format!("cannot read {NR}: {e}"))?;
        let free = dmabroker::heap::hugetlb::counts(2 << 20).map_or(0, |c| c.available());
        if free >= pages {
            return Ok(Self { old: None });
        }
        let total: u64 = old.trim().parse().unwrap_or(0);
        std::fs::write(NR, (total + pages - free).to_string())
            .map_err(|e| format!("cannot reserve huge pages in {NR} ({e}); run as root"))?;
        let now = dmabroker::heap::hugetlb::counts(2 << 20).map_or(0, |c| c.available());
        let guard = Self { old: Some(old) };
        if now < pages {
            return Err(format!("the kernel reserved only {now} of {pages} huge pages (memory fragmented)"));
        }
        Ok(guard)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(old) = &self.old {
            let _ = std::fs::write(NR, old.trim());
        }
    }
}

#[test]
fn hugetlb_heap_allocates_contiguous_huge_pages() {
    let heaps = Heaps::discover();
    let Some(heap) = heaps.get("hugetlb") else {
        return common::skip(
            "hugetlb",
            "this kernel has no 2 MiB huge pages (no /sys/kernel/mm/hugepages/hugepages-2048kB)",
        );
    };
    let _reservation = match Reservation::reserve(4) {
        Ok(r) => r,
        Err(why) => return common::skip("hugetlb", &why),
    };
    // 2 MiB: one huge page, physically contiguous.
    let buffer = heap.allocate(&AllocRequest::new(2 << 20).contiguous(true)).expect("2 MiB hugetlb");
    assert_eq!(buffer.len(), 2 << 20);
    assert_eq!(buffer.properties().page_size, 2 << 20);
    assert_eq!(buffer.properties().contiguous_up_to, 2 << 20);
    assert!(buffer.is_size_sealed());
    match dmabroker::phys::segments(&buffer) {
        Ok(segs) => {
            assert!(dmabroker::phys::is_contiguous(&segs), "2 MiB hugetlb buffer not contiguous: {segs:?}");
            assert_eq!(segs[0].len, 2 << 20);
            assert_eq!(segs[0].phys_addr % (2 << 20), 0, "huge page not 2 MiB aligned physically");
        }
        Err(dmabroker::phys::PhysError::FramesHidden) if !common::is_root() => {
            common::skip("hugetlb pagemap", "frame numbers hidden without CAP_SYS_ADMIN");
        }
        Err(e) => panic!("pagemap: {e}"),
    }
    // Data round trip.
    let mut map = buffer.map_read_write().unwrap();
    map.begin_write().unwrap().fill(0xa5);
    assert!(map.begin_read().unwrap().iter().all(|&b| b == 0xa5));
    // A 1-byte request rounds up to one huge page.
    assert_eq!(heap.allocate(&AllocRequest::new(1)).unwrap().len(), 2 << 20);
    // Contiguity beyond one huge page is refused with the reason.
    let err = heap.allocate(&AllocRequest::new(4 << 20).contiguous(true)).unwrap_err();
    assert!(matches!(err, AllocError::NotContiguous { .. }), "{err}");
    // Asking for more pages than are free names the sysctl.
    let err = heap.allocate(&AllocRequest::new(1 << 40)).unwrap_err();
    assert!(matches!(err, AllocError::NoHugePages { .. }), "{err}");
    assert!(err.to_string().contains("/proc/sys/vm/nr_hugepages"), "{err}");
    // One page more than are free: the counts are those after the failed
    // fallocate gave back the pages it had taken, so the fix is exact.
    let before = dmabroker::heap::hugetlb::counts(2 << 20).unwrap();
    let free = before.available();
    let err = heap.allocate(&AllocRequest::new((free + 1) * (2 << 20))).unwrap_err();
    match &err {
        AllocError::NoHugePages { needed, free: f, reserved, .. } => {
            assert_eq!((*needed, *f, *reserved), (free + 1, free, before.total), "{err}");
        }
        other => panic!("expected NoHugePages, got {other}"),
    }
    let text = err.to_string();
    assert!(text.contains(&format!("needs {} free 2 MiB huge page(s) and {free} are free", free + 1)), "{text}");
    assert!(
        text.contains(&format!("reserve 1 more as root with `echo {} > /proc/sys/vm/nr_hugepages`", before.total + 1)),
        "{text}"
    );
    assert_eq!(dmabroker::heap::hugetlb::counts(2 << 20).unwrap().available(), free, "a refused allocation kept pages");
}
