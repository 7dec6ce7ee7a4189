//! Bad input gets typed errors with useful messages, never a panic, and no
//! leaked fd or mapping. One test function: fd counting needs no other test
//! running in this process.

mod common;

use dmabroker::buffer::{FromFdError, MapError, SyncError};
use dmabroker::heap::AllocError;
use dmabroker::{AllocRequest, Buffer, Heaps};
use std::os::fd::OwnedFd;

#[test]
fn bad_input_gives_typed_errors_and_leaks_nothing() {
    let heaps = Heaps::discover();
    let fds_before = common::open_fds();
    let maps_before = common::mappings();

    let e = heaps.allocate("memfd", &AllocRequest::new(0)).unwrap_err();
    assert!(matches!(e, AllocError::ZeroSize), "{e}");
    assert!(e.to_string().contains("size 0"));

    let e = heaps.allocate("memfd", &AllocRequest::new(u64::MAX)).unwrap_err();
    assert!(matches!(e, AllocError::SizeOverflow { .. }), "{e}");
    let e = heaps.allocate("memfd", &AllocRequest::new(u64::MAX - 4095)).unwrap_err();
    assert!(matches!(e, AllocError::SizeOverflow { .. }), "{e}");

    for align in [3, 6, 4097, u64::MAX] {
        let e = heaps.allocate("memfd", &AllocRequest::new(4096).align(align)).unwrap_err();
        assert!(matches!(e, AllocError::BadAlignment(a) if a == align), "{e}");
    }
    let e = heaps.allocate("memfd", &AllocRequest::new(4096).align(1 << 21)).unwrap_err();
    assert!(matches!(e, AllocError::AlignmentUnsatisfiable { .. }), "{e}");

    let e = heaps.allocate("no-such-heap", &AllocRequest::new(4096)).unwrap_err();
    assert!(matches!(e, AllocError::NoSuchHeap { .. }), "{e}");
    assert!(e.to_string().contains("memfd"), "the error must list the heaps there are: {e}");

    let e = heaps.allocate("memfd", &AllocRequest::new(8 << 20).contiguous(true)).unwrap_err();
    assert!(matches!(e, AllocError::NotContiguous { .. }), "{e}");
    assert!(e.to_string().contains("CMA"), "{e}");

    // Hints never point back at the heap that refused, nor at one that
    // would refuse too (checked before any page is taken, so no huge page
    // needs to be reserved).
    if heaps.get("hugetlb-1G").is_some() {
        let e = heaps.allocate("hugetlb-1G", &AllocRequest::new(2 << 30).contiguous(true)).unwrap_err();
        let AllocError::NotContiguous { hint, .. } = &e else { panic!("{e}") };
        assert!(!hint.contains("hugetlb"), "neither hugetlb heap holds 2 GiB in one page: {e}");
        assert!(hint.contains("CMA") && hint.contains("cma=2048M"), "{e}");
    }
    if heaps.get("hugetlb").is_some() {
        let e = heaps.allocate("hugetlb", &AllocRequest::new(1).align(4 << 20)).unwrap_err();
        let AllocError::AlignmentUnsatisfiable { hint, .. } = &e else { panic!("{e}") };
        assert_eq!(hint, "use hugetlb-1G (1 GiB pages)", "{e}");
        assert!(e.to_string().contains("at most 2 MiB, 4 MiB asked"), "{e}");
        let e = heaps.allocate("hugetlb", &AllocRequest::new(4 << 20).contiguous(true)).unwrap_err();
        let AllocError::NotContiguous { hint, .. } = &e else { panic!("{e}") };
        assert!(hint.starts_with("use hugetlb-1G (1 GiB pages) or a CMA dma-heap"), "{e}");
    }
    let e = heaps.allocate("memfd", &AllocRequest::new(4096).align(1 << 31)).unwrap_err();
    let AllocError::AlignmentUnsatisfiable { hint, .. } = &e else { panic!("{e}") };
    assert!(hint.starts_with("no heap aligns a 4 KiB buffer to 2 GiB"), "{e}");

    // More than RAM and swap together: refused at once (it used to be
    // accepted, and the first full touch brought the OOM killer).
    let si = rustix::system::sysinfo();
    let unit = u64::from(si.mem_unit);
    let machine = (si.totalram as u64).saturating_add(si.totalswap as u64).saturating_mul(unit);
    if machine < 1 << 40 {
        let e = heaps.allocate("memfd", &AllocRequest::new(1 << 40)).unwrap_err();
        assert!(matches!(e, AllocError::LargerThanMemory { len, .. } if len == 1 << 40), "{e}");
        let text = e.to_string();
        assert!(text.starts_with("heap memfd cannot hold 1 TiB: this machine has "), "{text}");
        assert!(text.contains("of RAM and") && text.contains("of swap"), "{text}");
    } else {
        common::skip("1 TiB memfd", "this machine has 1 TiB or more of RAM and swap");
    }
    // As large as the machine (accepted: pages come on first touch), but
    // reading its physical segments would fault it all in: refused before
    // anything is populated.
    let page = rustix::param::page_size() as u64;
    let big = heaps.allocate("memfd", &AllocRequest::new(machine / page * page)).unwrap();
    match dmabroker::phys::segments(&big) {
        Err(dmabroker::phys::PhysError::TooLargeToPopulate { missing, available, .. }) => {
            assert!(missing > available, "{missing} <= {available}");
        }
        Err(dmabroker::phys::PhysError::FramesHidden) => assert!(!common::is_root()),
        other => panic!("segments of a buffer as large as the machine: {other:?}"),
    }
    drop(big);

    // A regular file is not a buffer.
    let file: OwnedFd = std::fs::File::open("/proc/self/status").unwrap().into();
    let e = Buffer::from_fd(file).unwrap_err();
    assert!(matches!(e, FromFdError::NotABuffer { .. }), "{e}");
    let tmp = std::env::temp_dir().join(format!("dmabroker-bad-input-{}", std::process::id()));
    std::fs::write(&tmp, b"not a buffer").unwrap();
    let e = Buffer::from_fd(std::fs::File::open(&tmp).unwrap().into()).unwrap_err();
    let _ = std::fs::remove_file(&tmp);
    assert!(e.to_string().contains("regular file"), "{e}");

    // A socket is not a buffer.
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let e = Buffer::from_fd(a.into()).unwrap_err();
    assert!(e.to_string().contains("socket"), "{e}");
    drop(b);

    // A pipe is not a buffer.
    let (r, w) = rustix::pipe::pipe().unwrap();
    assert!(matches!(Buffer::from_fd(r), Err(FromFdError::NotABuffer { .. })));
    drop(w);

    // An unsealed, empty memfd is refused as empty.
    let empty = rustix::fs::memfd_create("empty", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    assert!(matches!(Buffer::from_fd(empty), Err(FromFdError::Empty)));

    // A read-only fd cannot be mapped writable; a read-only mapping refuses write guards.
    let buffer = heaps.allocate("memfd", &AllocRequest::new(4096)).unwrap();
    let ro: OwnedFd = std::fs::File::open(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&std::os::fd::AsFd::as_fd(&buffer))
    ))
    .unwrap()
    .into();
    let ro = Buffer::from_fd(ro).unwrap();
    assert!(matches!(ro.map_read_write(), Err(MapError::ReadOnly)));
    let mut map = ro.map_read().unwrap();
    assert_eq!(common::mappings(), maps_before + 1, "the leak check must see a buffer mapping");
    assert!(matches!(map.begin_write(), Err(SyncError::ReadOnlyMapping)));
    drop(map);
    drop(ro);
    drop(buffer);

    // Everything above failed or was dropped: no fd and no mapping left over.
    assert_eq!(common::open_fds(), fds_before, "fd leaked");
    assert_eq!(common::mappings(), maps_before, "mapping leaked");
}

#[test]
fn sizes_parse_with_clear_errors() {
    use dmabroker::size::parse_size;
    assert_eq!(parse_size("12MiB").unwrap(), 12 << 20);
    let e = parse_size("12 parsecs").unwrap_err();
    assert!(e.to_string().contains("unknown unit"), "{e}");
}
