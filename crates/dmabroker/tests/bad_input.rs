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
