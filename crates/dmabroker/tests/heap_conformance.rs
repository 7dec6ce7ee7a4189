//! One conformance suite generic over `Heap`, run for every heap this machine
//! (or the test VM) has.

mod common;

use dmabroker::buffer::BufferKind;
use dmabroker::{AllocRequest, Buffer, Heap, Heaps};
use std::os::fd::AsFd;

fn check_heap(heap: &dyn Heap) {
    let info = heap.info();
    let page = info.page_size;
    // 1 GiB pages: one page is enough, and filling several under the VM's
    // emulated CPU would take minutes.
    let lens: &[u64] = if page >= 1 << 30 { &[1] } else { &[1, page - 1, page, 3 * page + 1, 1 << 20] };
    for &len in lens {
        let buffer = heap
            .allocate(&AllocRequest::new(len).name("conformance"))
            .unwrap_or_else(|e| panic!("{}: allocating {len}: {e}", info.name));
        assert!(buffer.len() >= len, "{}: got {} for {len}", info.name, buffer.len());
        assert_eq!(buffer.len() % page, 0, "{}: length not a page multiple", info.name);
        assert_eq!(buffer.heap(), info.name);
        assert_eq!(buffer.properties().device_importable, info.device_importable);
        assert_eq!(buffer.kind() == BufferKind::DmaBuf, info.device_importable);
        assert!(buffer.is_size_sealed(), "{}: buffer size not sealed", info.name);

        // Write a pattern through a write guard, read it back through a read
        // guard: the first 4 MiB and the last byte (1 GiB pages stay quick).
        let window = (buffer.len() as usize - 1).min(4 << 20);
        let mut map = buffer.map_read_write().expect("map read-write");
        {
            let mut w = map.begin_write().expect("begin write");
            let n = w.len();
            for (i, b) in w[..window].iter_mut().enumerate() {
                *b = (i % 251) as u8;
            }
            w[n - 1] = 0x5a;
        }
        {
            let r = map.begin_read().expect("begin read");
            assert!(r[..window].iter().enumerate().all(|(i, b)| *b == (i % 251) as u8), "{}: pattern lost", info.name);
            assert_eq!(r[r.len() - 1], 0x5a, "{}: last byte lost", info.name);
        }
        // A second, independent mapping sees the same bytes (shared memory).
        let mut second = buffer.map_read().expect("map read-only");
        assert_eq!(second.begin_read().unwrap()[..64], map.begin_read().unwrap()[..64]);
        assert!(second.begin_write().is_err(), "write guard on a read-only mapping must fail");

        // Adopting a duplicate of the fd tells the same story.
        let adopted = Buffer::from_fd(buffer.try_clone_fd().unwrap()).expect("from_fd");
        assert_eq!(adopted.kind(), buffer.kind());
        assert_eq!(adopted.len(), buffer.len());
        assert_eq!(adopted.inode(), buffer.inode());
    }
}

#[test]
fn every_heap_passes_the_conformance_suite() {
    let heaps = Heaps::discover();
    let mut checked = Vec::new();
    for heap in heaps.iter() {
        let info = heap.info();
        if !info.usable {
            // Only hugetlb may be unusable here (no pages reserved on the host).
            if info.kind == dmabroker::heap::HeapKind::Hugetlb && !common::in_vm() || info.name == "hugetlb-1G" {
                common::skip(&format!("conformance[{}]", info.name), info.note.as_deref().unwrap_or("unusable"));
                continue;
            }
            panic!("heap {} is listed but unusable: {:?}", info.name, info.note);
        }
        check_heap(heap);
        checked.push(info.name);
    }
    println!("conformance passed for: {}", checked.join(", "));
    assert!(checked.iter().any(|n| n == "memfd"), "memfd must always be present");
    if common::in_vm() {
        for needed in ["dma-heap/system", "udmabuf", "hugetlb"] {
            assert!(checked.iter().any(|n| n == needed), "{needed} missing in the VM");
        }
    }
}

#[test]
fn discovery_lists_memfd_and_hugetlb() {
    let names = Heaps::discover().names();
    assert!(names.contains(&"memfd".to_owned()), "{names:?}");
    if std::path::Path::new("/sys/kernel/mm/hugepages/hugepages-2048kB").exists() {
        assert!(names.contains(&"hugetlb".to_owned()), "{names:?}");
    }
    // Pool sizes where there is a pool; the end of RAM where sysfs lists memory blocks.
    let listed = std::path::Path::new("/sys/devices/system/memory/block_size_bytes").exists();
    for info in Heaps::discover().infos() {
        assert_eq!(info.pool_pages.is_some(), info.kind == dmabroker::heap::HeapKind::Hugetlb, "{info:?}");
        assert_eq!(info.ram_end.is_some(), listed, "{info:?}");
    }
}

#[test]
fn memfd_buffers_are_named_and_sealed() {
    let heaps = Heaps::discover();
    let buffer = heaps.allocate("memfd", &AllocRequest::new(4096).name("frame0")).unwrap();
    let link =
        std::fs::read_link(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&buffer.as_fd()))).unwrap();
    assert!(link.to_string_lossy().contains("dmabroker:frame0"), "{link:?}");
    assert_eq!(buffer.seals(), vec!["shrink", "grow", "seal"]);
    let info = buffer.info();
    assert_eq!(info.name.as_deref(), Some("frame0"));
    assert_eq!(serde_json::to_value(&info).unwrap()["kind"], "memfd");
}
