//! The extern "C" functions called directly, as C would, with bad
//! arguments and in wrong orders: each returns an error status with a
//! message (never a crash), clears its out-parameters, and follows the fd
//! ownership rules. Plus the round trip alloc -> map -> write -> dup ->
//! import -> read.
#![allow(clippy::undocumented_unsafe_blocks)] // tests: every call passes valid or deliberately NULL pointers

use dmabroker_capi::*;
use std::ffi::{c_void, CStr};
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};
use std::ptr;

#[path = "../../dmabroker-broker/tests/common/child_broker.rs"]
mod child_broker;
#[path = "../../dmabroker/tests/common/skip.rs"]
mod skip_rule;

use child_broker::ChildBroker;

fn last_error() -> String {
    unsafe { CStr::from_ptr(dmabroker_last_error()) }.to_string_lossy().into_owned()
}

/// `status` is `want`, and a failure left a message.
#[track_caller]
fn expect(status: Status, want: Status) {
    assert_eq!(status, want, "message: {}", last_error());
    if want != Status::DMABROKER_OK {
        assert!(!last_error().is_empty(), "{want:?} without a message");
    }
}

const INVALID: Status = Status::DMABROKER_ERROR_INVALID_ARGUMENT;
const TAKE: u32 = FdOwnership::Take as u32;
const DUP: u32 = FdOwnership::Dup as u32;

/// What fd number `fd` refers to now (`pipe:[1234]`, `/memfd:x (deleted)`),
/// None when closed. Tests run in parallel threads that reuse fd numbers,
/// so "still open" means "still the same file".
fn target(fd: i32) -> Option<String> {
    std::fs::read_link(format!("/proc/self/fd/{fd}")).ok().map(|p| p.to_string_lossy().into_owned())
}

/// A size-sealed memfd with a name no other test uses, so `target` tells it apart.
fn memfd(len: u64) -> OwnedFd {
    let fd = unsealed_memfd(len);
    rustix::fs::fcntl_add_seals(&fd, rustix::fs::SealFlags::SHRINK | rustix::fs::SealFlags::GROW).unwrap();
    fd
}

/// A memfd anyone holding it could truncate.
fn unsealed_memfd(len: u64) -> OwnedFd {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let name = format!("capi-test-{}", N.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let flags = rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING;
    let fd = rustix::fs::memfd_create(name, flags).unwrap();
    rustix::fs::ftruncate(&fd, len).unwrap();
    fd
}

#[test]
fn an_unsealed_memfd_is_not_mapped() {
    let mut b = ptr::null_mut();
    expect(
        unsafe { dmabroker_buffer_from_fd(unsealed_memfd(4096).into_raw_fd(), TAKE, &raw mut b) },
        Status::DMABROKER_OK,
    );
    let mut m = ptr::null_mut();
    expect(unsafe { dmabroker_buffer_map(b, MapMode::Read as u32, &raw mut m) }, Status::DMABROKER_ERROR_UNSUPPORTED);
    assert!(last_error().contains("SIGBUS"), "{}", last_error());
    assert!(m.is_null());
    unsafe { dmabroker_buffer_free(b) };
}

fn alloc(len: u64) -> *mut Buffer {
    let mut b = ptr::null_mut();
    expect(
        unsafe { dmabroker_alloc(ptr::null(), c"memfd".as_ptr(), len, ptr::null(), &raw mut b) },
        Status::DMABROKER_OK,
    );
    b
}

#[test]
fn heaps_reject_null_and_out_of_range() {
    expect(unsafe { dmabroker_heaps_discover(ptr::null_mut()) }, INVALID);
    let mut heaps = ptr::null_mut();
    expect(unsafe { dmabroker_heaps_discover(&raw mut heaps) }, Status::DMABROKER_OK);
    let n = unsafe { dmabroker_heaps_count(heaps) };
    assert!(n >= 1, "memfd is always there");
    assert_eq!(unsafe { dmabroker_heaps_count(ptr::null()) }, 0);
    let mut info = std::mem::MaybeUninit::<HeapInfo>::uninit();
    expect(unsafe { dmabroker_heaps_get_info(heaps, n, info.as_mut_ptr()) }, INVALID);
    expect(unsafe { dmabroker_heaps_get_info(ptr::null(), 0, info.as_mut_ptr()) }, INVALID);
    expect(unsafe { dmabroker_heaps_get_info(heaps, 0, ptr::null_mut()) }, INVALID);
    let names: Vec<String> = (0..n)
        .map(|i| {
            expect(unsafe { dmabroker_heaps_get_info(heaps, i, info.as_mut_ptr()) }, Status::DMABROKER_OK);
            let info = unsafe { info.assume_init() };
            assert!(info.page_size >= 4096);
            unsafe { CStr::from_ptr(info.name) }.to_string_lossy().into_owned()
        })
        .collect();
    assert!(names.iter().any(|n| n == "memfd"), "{names:?}");
    unsafe { dmabroker_heaps_free(heaps) };
    unsafe { dmabroker_heaps_free(ptr::null_mut()) };
}

#[test]
fn alloc_rejects_bad_requests() {
    let mut b: *mut Buffer = ptr::dangling_mut::<Buffer>();
    expect(unsafe { dmabroker_alloc(ptr::null(), ptr::null(), 4096, ptr::null(), &raw mut b) }, INVALID);
    assert!(b.is_null(), "out is cleared on failure");
    expect(unsafe { dmabroker_alloc(ptr::null(), c"memfd".as_ptr(), 0, ptr::null(), &raw mut b) }, INVALID);
    expect(
        unsafe { dmabroker_alloc(ptr::null(), c"nope".as_ptr(), 4096, ptr::null(), &raw mut b) },
        Status::DMABROKER_ERROR_NO_SUCH_HEAP,
    );
    assert!(last_error().contains("memfd"), "the message lists the heaps: {}", last_error());
    expect(unsafe { dmabroker_alloc(ptr::null(), c"memfd".as_ptr(), 4096, ptr::null(), ptr::null_mut()) }, INVALID);
    let bad_utf8 = [0xffu8, 0xfe, 0];
    expect(unsafe { dmabroker_alloc(ptr::null(), bad_utf8.as_ptr().cast(), 4096, ptr::null(), &raw mut b) }, INVALID);
    let options = AllocOptions { align: 3, name: ptr::null(), contiguous: false, non_coherent: false };
    expect(unsafe { dmabroker_alloc(ptr::null(), c"memfd".as_ptr(), 4096, &raw const options, &raw mut b) }, INVALID);
    let options = AllocOptions { align: 0, name: ptr::null(), contiguous: true, non_coherent: false };
    expect(
        unsafe { dmabroker_alloc(ptr::null(), c"memfd".as_ptr(), 1 << 24, &raw const options, &raw mut b) },
        Status::DMABROKER_ERROR_UNSUPPORTED,
    );
    expect(unsafe { dmabroker_alloc(ptr::null(), c"memfd".as_ptr(), u64::MAX, ptr::null(), &raw mut b) }, INVALID);
    assert!(b.is_null());
}

#[test]
fn named_allocation_reports_its_info() {
    let options = AllocOptions { align: 4096, name: c"capi-info".as_ptr(), contiguous: false, non_coherent: false };
    let mut b = ptr::null_mut();
    expect(
        unsafe { dmabroker_alloc(ptr::null(), c"memfd".as_ptr(), 5000, &raw const options, &raw mut b) },
        Status::DMABROKER_OK,
    );
    let mut info = std::mem::MaybeUninit::<BufferInfo>::uninit();
    expect(unsafe { dmabroker_buffer_get_info(b, info.as_mut_ptr()) }, Status::DMABROKER_OK);
    let info = unsafe { info.assume_init() };
    assert_eq!(info.len, 8192, "rounded up to pages");
    assert_eq!(info.kind, BufferKind::Memfd);
    assert_eq!(unsafe { CStr::from_ptr(info.heap) }, c"memfd");
    assert!(unsafe { CStr::from_ptr(info.name) }.to_string_lossy().contains("capi-info"));
    assert!(info.inode != 0 && info.size_sealed && !info.device_importable);
    assert_eq!(unsafe { dmabroker_buffer_len(b) }, 8192);
    expect(unsafe { dmabroker_buffer_get_info(b, ptr::null_mut()) }, INVALID);
    expect(unsafe { dmabroker_buffer_get_info(ptr::null(), &mut std::mem::zeroed()) }, INVALID);
    unsafe { dmabroker_buffer_free(b) };
}

#[test]
fn fds_follow_the_ownership_rules() {
    let b = alloc(4096);
    // Borrowed fd: valid, and still open after the call.
    let borrowed = unsafe { dmabroker_buffer_fd(b) };
    let borrowed_target = target(borrowed);
    assert!(borrowed >= 0 && borrowed_target.is_some());
    assert_eq!(unsafe { dmabroker_buffer_fd(ptr::null()) }, -1);
    // Dup: a new fd the caller owns.
    let mut fd = 0;
    expect(unsafe { dmabroker_buffer_dup_fd(b, &raw mut fd) }, Status::DMABROKER_OK);
    assert!(fd >= 0 && fd != borrowed);
    let mut bad_fd = 0;
    expect(unsafe { dmabroker_buffer_dup_fd(ptr::null(), &raw mut bad_fd) }, INVALID);
    assert_eq!(bad_fd, -1, "fd_out is -1 on failure");
    expect(unsafe { dmabroker_buffer_dup_fd(b, ptr::null_mut()) }, INVALID);

    // Bad fd numbers are refused and nothing is closed.
    let mut out: *mut Buffer = ptr::dangling_mut::<Buffer>();
    expect(unsafe { dmabroker_buffer_from_fd(-1, TAKE, &raw mut out) }, INVALID);
    assert!(out.is_null());
    expect(unsafe { dmabroker_buffer_from_fd(999_999, TAKE, &raw mut out) }, INVALID);
    expect(unsafe { dmabroker_buffer_from_fd(999_999, DUP, &raw mut out) }, INVALID);
    expect(unsafe { dmabroker_buffer_from_fd(borrowed, 7, &raw mut out) }, INVALID);
    assert_eq!(target(borrowed), borrowed_target, "an unknown ownership value touches nothing");

    // A pipe: DUP leaves it open, TAKE closes it even though the call fails.
    let (r, w) = rustix::pipe::pipe().unwrap();
    let r = r.into_raw_fd();
    let pipe = target(r);
    expect(unsafe { dmabroker_buffer_from_fd(r, DUP, &raw mut out) }, Status::DMABROKER_ERROR_NOT_A_BUFFER);
    assert_eq!(target(r), pipe);
    expect(unsafe { dmabroker_buffer_from_fd(r, TAKE, &raw mut out) }, Status::DMABROKER_ERROR_NOT_A_BUFFER);
    assert_ne!(target(r), pipe, "TAKE owns the fd even on failure");
    drop(w);
    // An empty memfd is not a buffer either.
    let empty = memfd(0).into_raw_fd();
    expect(unsafe { dmabroker_buffer_from_fd(empty, TAKE, &raw mut out) }, Status::DMABROKER_ERROR_NOT_A_BUFFER);
    // A NULL out with TAKE still takes (and closes) the fd.
    let m = memfd(4096).into_raw_fd();
    let m_target = target(m);
    expect(unsafe { dmabroker_buffer_from_fd(m, TAKE, ptr::null_mut()) }, INVALID);
    assert_ne!(target(m), m_target);

    // The dup imports as the same buffer.
    expect(unsafe { dmabroker_buffer_from_fd(fd, TAKE, &raw mut out) }, Status::DMABROKER_OK);
    let (mut a, mut c) = unsafe { (std::mem::zeroed::<BufferInfo>(), std::mem::zeroed::<BufferInfo>()) };
    expect(unsafe { dmabroker_buffer_get_info(b, &raw mut a) }, Status::DMABROKER_OK);
    expect(unsafe { dmabroker_buffer_get_info(out, &raw mut c) }, Status::DMABROKER_OK);
    assert_eq!(a.inode, c.inode);
    unsafe { dmabroker_buffer_free(out) };
    assert_eq!(target(borrowed), borrowed_target, "the original handle's fd is untouched");
    unsafe { dmabroker_buffer_free(b) };
}

#[test]
fn mapping_brackets_access_and_refuses_a_second_begin() {
    let b = alloc(8192);
    let mut m: *mut Mapping = ptr::dangling_mut::<Mapping>();
    expect(unsafe { dmabroker_buffer_map(ptr::null(), MapMode::Read as u32, &raw mut m) }, INVALID);
    assert!(m.is_null());
    expect(unsafe { dmabroker_buffer_map(b, 42, &raw mut m) }, INVALID);
    expect(unsafe { dmabroker_buffer_map(b, MapMode::Read as u32, ptr::null_mut()) }, INVALID);
    expect(unsafe { dmabroker_buffer_map(b, MapMode::ReadWrite as u32, &raw mut m) }, Status::DMABROKER_OK);
    assert_eq!(unsafe { dmabroker_mapping_len(m) }, 8192);
    assert_eq!(unsafe { dmabroker_mapping_len(ptr::null()) }, 0);

    let (mut data, mut len): (*mut c_void, usize) = (ptr::null_mut(), 0);
    expect(unsafe { dmabroker_mapping_end(m) }, Status::DMABROKER_ERROR_NOT_BEGUN);
    expect(unsafe { dmabroker_mapping_begin(m, 3, &raw mut data, &raw mut len) }, INVALID);
    expect(unsafe { dmabroker_mapping_begin(m, Access::Write as u32, ptr::null_mut(), &raw mut len) }, INVALID);
    expect(unsafe { dmabroker_mapping_begin(m, Access::Write as u32, &raw mut data, ptr::null_mut()) }, INVALID);
    expect(unsafe { dmabroker_mapping_begin(ptr::null(), Access::Write as u32, &raw mut data, &raw mut len) }, INVALID);
    expect(
        unsafe { dmabroker_mapping_begin(m, Access::Write as u32, &raw mut data, &raw mut len) },
        Status::DMABROKER_OK,
    );
    assert_eq!(len, 8192);
    unsafe { std::slice::from_raw_parts_mut(data.cast::<u8>(), len) }.fill(0x5a);
    let (mut d2, mut l2): (*mut c_void, usize) = (ptr::dangling_mut::<c_void>(), 1);
    expect(
        unsafe { dmabroker_mapping_begin(m, Access::Read as u32, &raw mut d2, &raw mut l2) },
        Status::DMABROKER_ERROR_BUSY,
    );
    assert!(d2.is_null() && l2 == 0);
    expect(unsafe { dmabroker_mapping_end(m) }, Status::DMABROKER_OK);
    expect(unsafe { dmabroker_mapping_end(m) }, Status::DMABROKER_ERROR_NOT_BEGUN);
    expect(unsafe { dmabroker_mapping_end(ptr::null()) }, INVALID);
    // Freed with an access active: the free ends it.
    expect(
        unsafe { dmabroker_mapping_begin(m, Access::ReadWrite as u32, &raw mut data, &raw mut len) },
        Status::DMABROKER_OK,
    );
    unsafe { dmabroker_mapping_free(m) };

    // A read-only mapping refuses write access; the buffer handle can go first.
    expect(unsafe { dmabroker_buffer_map(b, MapMode::Read as u32, &raw mut m) }, Status::DMABROKER_OK);
    unsafe { dmabroker_buffer_free(b) };
    expect(
        unsafe { dmabroker_mapping_begin(m, Access::Write as u32, &raw mut data, &raw mut len) },
        Status::DMABROKER_ERROR_READ_ONLY,
    );
    expect(
        unsafe { dmabroker_mapping_begin(m, Access::Read as u32, &raw mut data, &raw mut len) },
        Status::DMABROKER_OK,
    );
    let bytes = unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) };
    assert!(bytes.iter().all(|&x| x == 0x5a), "the mapping kept the buffer alive");
    expect(unsafe { dmabroker_mapping_end(m) }, Status::DMABROKER_OK);
    unsafe { dmabroker_mapping_free(m) };
    unsafe { dmabroker_mapping_free(ptr::null_mut()) };
}

#[test]
fn read_only_fd_refuses_a_writable_mapping() {
    let fd = memfd(4096);
    let ro = rustix::fs::open(
        format!("/proc/self/fd/{}", fd.as_raw_fd()),
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    let mut b = ptr::null_mut();
    expect(unsafe { dmabroker_buffer_from_fd(ro.into_raw_fd(), TAKE, &raw mut b) }, Status::DMABROKER_OK);
    let mut m = ptr::null_mut();
    expect(
        unsafe { dmabroker_buffer_map(b, MapMode::ReadWrite as u32, &raw mut m) },
        Status::DMABROKER_ERROR_READ_ONLY,
    );
    unsafe { dmabroker_buffer_free(b) };
}

#[test]
fn segments_use_the_two_call_protocol() {
    let b = alloc(4096);
    let mut count = 7;
    expect(unsafe { dmabroker_buffer_segments(ptr::null(), ptr::null_mut(), 0, &raw mut count) }, INVALID);
    assert_eq!(count, 0);
    expect(unsafe { dmabroker_buffer_segments(b, ptr::null_mut(), 0, ptr::null_mut()) }, INVALID);
    expect(unsafe { dmabroker_buffer_segments(b, ptr::null_mut(), 4, &raw mut count) }, INVALID);
    match unsafe { dmabroker_buffer_segments(b, ptr::null_mut(), 0, &raw mut count) } {
        Status::DMABROKER_ERROR_PERMISSION_DENIED => {
            skip_rule::skip("segments_use_the_two_call_protocol", &format!("{} (needs CAP_SYS_ADMIN)", last_error()));
        }
        Status::DMABROKER_ERROR_BUFFER_TOO_SMALL => {
            assert_eq!(count, 1, "one page is one segment");
            let mut segs = [Segment { phys_addr: 0, len: 0 }; 1];
            expect(unsafe { dmabroker_buffer_segments(b, segs.as_mut_ptr(), 1, &raw mut count) }, Status::DMABROKER_OK);
            assert_eq!((count, segs[0].len), (1, 4096));
            assert!(segs[0].phys_addr != 0);
        }
        other => panic!("unexpected {other:?}: {}", last_error()),
    }
    unsafe { dmabroker_buffer_free(b) };
}

#[test]
fn clone_shares_the_buffer() {
    let b = alloc(4096);
    let mut c: *mut Buffer = ptr::dangling_mut::<Buffer>();
    expect(unsafe { dmabroker_buffer_clone(ptr::null(), &raw mut c) }, INVALID);
    assert!(c.is_null());
    expect(unsafe { dmabroker_buffer_clone(b, ptr::null_mut()) }, INVALID);
    expect(unsafe { dmabroker_buffer_clone(b, &raw mut c) }, Status::DMABROKER_OK);
    assert_eq!(unsafe { dmabroker_buffer_fd(b) }, unsafe { dmabroker_buffer_fd(c) });
    unsafe { dmabroker_buffer_free(b) };
    assert_eq!(unsafe { dmabroker_buffer_len(c) }, 4096);
    unsafe { dmabroker_buffer_free(c) };
}

#[test]
fn panics_become_a_status_and_messages_are_per_thread() {
    expect(dmabroker_private_test_panic(), Status::DMABROKER_ERROR_PANIC);
    assert!(last_error().contains("panic"));
    // Another thread has its own message.
    let other = std::thread::spawn(|| {
        let before = last_error();
        expect(unsafe { dmabroker_heaps_discover(ptr::null_mut()) }, INVALID);
        (before, last_error())
    })
    .join()
    .unwrap();
    assert_eq!(other.0, "", "a fresh thread starts with no message");
    assert!(other.1.contains("NULL"));
    assert!(last_error().contains("panic"), "this thread's message is untouched");
}

#[test]
fn status_names_and_version() {
    let name = |s: u32| unsafe { CStr::from_ptr(dmabroker_status_name(s)) }.to_str().unwrap().to_owned();
    assert_eq!(name(0), "DMABROKER_OK");
    assert_eq!(name(Status::DMABROKER_ERROR_NOT_BEGUN as u32), "DMABROKER_ERROR_NOT_BEGUN");
    assert_eq!(name(12345), "DMABROKER_UNKNOWN_STATUS");
    let version = unsafe { CStr::from_ptr(dmabroker_version()) }.to_str().unwrap();
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
}

#[test]
fn client_calls_refuse_null_and_report_a_missing_broker() {
    let mut c: *mut Client = ptr::dangling_mut::<Client>();
    expect(
        unsafe { dmabroker_client_connect(c"/nonexistent/dmabroker.sock".as_ptr(), &raw mut c) },
        Status::DMABROKER_ERROR_NO_BROKER,
    );
    assert!(c.is_null());
    assert!(last_error().contains("dmabroker serve"), "{}", last_error());
    expect(unsafe { dmabroker_client_connect(ptr::null(), ptr::null_mut()) }, INVALID);
    // Paths no Unix socket can have are bad arguments, not a missing broker.
    c = ptr::dangling_mut::<Client>();
    expect(unsafe { dmabroker_client_connect(c"".as_ptr(), &raw mut c) }, INVALID);
    assert!(c.is_null());
    assert!(last_error().contains("empty"), "{}", last_error());
    let long = std::ffi::CString::new(format!("/tmp/{}", "x".repeat(295))).unwrap();
    expect(unsafe { dmabroker_client_connect(long.as_ptr(), &raw mut c) }, INVALID);
    assert!(last_error().contains("300 bytes"), "{}", last_error());
    let mut b = ptr::null_mut();
    expect(unsafe { dmabroker_client_alloc(ptr::null(), c"memfd".as_ptr(), 4096, ptr::null(), &raw mut b) }, INVALID);
    let mut key = ptr::dangling_mut::<std::ffi::c_char>();
    expect(unsafe { dmabroker_client_publish(ptr::null(), ptr::null(), ptr::null(), &raw mut key) }, INVALID);
    assert!(key.is_null());
    expect(unsafe { dmabroker_client_import(ptr::null(), c"x".as_ptr(), &raw mut b, ptr::null_mut()) }, INVALID);
    expect(unsafe { dmabroker_client_unpublish(ptr::null(), c"x".as_ptr()) }, INVALID);
    unsafe { dmabroker_client_free(ptr::null_mut()) };
    unsafe { dmabroker_string_free(ptr::null_mut()) };
}

// ---- constraints and allocation by constraints -------------------------------

fn c_string_of(p: *const std::ffi::c_char) -> String {
    assert!(!p.is_null());
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

fn describe(c: *const Constraints) -> String {
    let mut text = ptr::null_mut();
    expect(unsafe { dmabroker_constraints_describe(c, &raw mut text) }, Status::DMABROKER_OK);
    let s = c_string_of(text);
    unsafe { dmabroker_string_free(text) };
    s
}

fn constraints(device: &CStr) -> *mut Constraints {
    let mut c = ptr::null_mut();
    expect(unsafe { dmabroker_constraints_new(device.as_ptr(), &raw mut c) }, Status::DMABROKER_OK);
    c
}

#[test]
fn constraints_refuse_bad_values_and_keep_their_state() {
    let mut c: *mut Constraints = ptr::dangling_mut::<Constraints>();
    expect(unsafe { dmabroker_constraints_new(ptr::null(), &raw mut c) }, INVALID);
    assert!(c.is_null());
    expect(unsafe { dmabroker_constraints_new(c"isp0".as_ptr(), ptr::null_mut()) }, INVALID);
    c = ptr::dangling_mut::<Constraints>();
    expect(unsafe { dmabroker_constraints_probe(ptr::null(), &raw mut c) }, INVALID);
    assert!(c.is_null());
    expect(
        unsafe { dmabroker_constraints_probe(c"/nonexistent/video9".as_ptr(), &raw mut c) },
        Status::DMABROKER_ERROR_NOT_FOUND,
    );
    assert!(c.is_null());
    // A character device of another class (or no sysfs in a container).
    let status = unsafe { dmabroker_constraints_probe(c"/dev/null".as_ptr(), &raw mut c) };
    assert_ne!(status, Status::DMABROKER_OK);
    assert!(c.is_null());

    // Every setter refuses NULL.
    expect(unsafe { dmabroker_constraints_set_contiguous(ptr::null_mut(), true) }, INVALID);
    expect(unsafe { dmabroker_constraints_set_max_segments(ptr::null_mut(), 4) }, INVALID);
    expect(unsafe { dmabroker_constraints_set_address_bits(ptr::null_mut(), 32) }, INVALID);
    expect(unsafe { dmabroker_constraints_set_align(ptr::null_mut(), 4096) }, INVALID);
    expect(unsafe { dmabroker_constraints_set_page_size(ptr::null_mut(), 4096) }, INVALID);
    expect(unsafe { dmabroker_constraints_set_granularity(ptr::null_mut(), 64) }, INVALID);
    expect(unsafe { dmabroker_constraints_set_coherency(ptr::null_mut(), 1) }, INVALID);
    expect(unsafe { dmabroker_constraints_set_dma_buf(ptr::null_mut(), true) }, INVALID);

    let c = constraints(c"isp0");
    assert!(describe(c).contains("no requirement"), "{}", describe(c));
    expect(unsafe { dmabroker_constraints_set_contiguous(c, true) }, Status::DMABROKER_OK);
    expect(unsafe { dmabroker_constraints_set_align(c, 65536) }, Status::DMABROKER_OK);
    let before = describe(c);
    assert!(before.contains("isp0"), "{before}");
    // Invalid values are refused and leave the handle as it was.
    expect(unsafe { dmabroker_constraints_set_align(c, 3) }, INVALID);
    assert!(last_error().contains("power of two"), "{}", last_error());
    expect(unsafe { dmabroker_constraints_set_page_size(c, 12345) }, INVALID);
    expect(unsafe { dmabroker_constraints_set_granularity(c, 100) }, INVALID);
    expect(unsafe { dmabroker_constraints_set_address_bits(c, 8) }, INVALID);
    expect(unsafe { dmabroker_constraints_set_address_bits(c, 65) }, INVALID);
    expect(unsafe { dmabroker_constraints_set_coherency(c, 99) }, INVALID);
    assert_eq!(describe(c), before);

    // Cached against uncached: a conflict naming both, dst unchanged.
    let gpu = constraints(c"gpu0");
    expect(unsafe { dmabroker_constraints_set_coherency(gpu, Coherency::Snoops as u32) }, Status::DMABROKER_OK);
    expect(unsafe { dmabroker_constraints_set_coherency(c, Coherency::NeedsUncached as u32) }, Status::DMABROKER_OK);
    let before = describe(c);
    expect(unsafe { dmabroker_constraints_merge(c, gpu) }, Status::DMABROKER_ERROR_CONFLICT);
    assert!(last_error().contains("gpu0") && last_error().contains("isp0"), "{}", last_error());
    assert_eq!(describe(c), before);
    // Nor may a setter create the conflict after a merge.
    expect(unsafe { dmabroker_constraints_set_coherency(c, Coherency::Unspecified as u32) }, Status::DMABROKER_OK);
    expect(unsafe { dmabroker_constraints_merge(c, gpu) }, Status::DMABROKER_OK);
    expect(
        unsafe { dmabroker_constraints_set_coherency(c, Coherency::NeedsUncached as u32) },
        Status::DMABROKER_ERROR_CONFLICT,
    );
    expect(unsafe { dmabroker_constraints_merge(c, c) }, Status::DMABROKER_OK);
    expect(unsafe { dmabroker_constraints_merge(c, ptr::null()) }, INVALID);
    expect(unsafe { dmabroker_constraints_merge(ptr::null_mut(), gpu) }, INVALID);
    let merged = describe(c);
    assert!(merged.contains("gpu0") && merged.contains("isp0"), "{merged}");
    let mut text = ptr::dangling_mut::<std::ffi::c_char>();
    expect(unsafe { dmabroker_constraints_describe(ptr::null(), &raw mut text) }, INVALID);
    assert!(text.is_null());
    unsafe {
        dmabroker_constraints_free(gpu);
        dmabroker_constraints_free(c);
        dmabroker_constraints_free(ptr::null_mut());
    }
}

#[test]
fn alloc_for_chooses_explains_and_refuses() {
    let mut b: *mut Buffer = ptr::dangling_mut::<Buffer>();
    let mut info = ChoiceInfo {
        heap: ptr::dangling_mut(),
        reasons: ptr::dangling_mut(),
        len: 1,
        allocated_len: 1,
        align: 1,
        contiguous: true,
        non_coherent: true,
        uncached: true,
    };
    expect(
        unsafe { dmabroker_alloc_for(ptr::null(), ptr::null(), 4096, ptr::null(), &raw mut b, &raw mut info) },
        INVALID,
    );
    assert!(b.is_null() && info.heap.is_null() && info.reasons.is_null() && info.len == 0);
    let c = constraints(c"cpu-only");
    expect(unsafe { dmabroker_alloc_for(ptr::null(), c, 4096, ptr::null(), ptr::null_mut(), &raw mut info) }, INVALID);
    expect(unsafe { dmabroker_alloc_for(ptr::null(), c, 0, ptr::null(), &raw mut b, &raw mut info) }, INVALID);
    assert!(b.is_null());

    // CPU memory will do: the cheapest heap, memfd, with reasons.
    expect(unsafe { dmabroker_constraints_set_dma_buf(c, false) }, Status::DMABROKER_OK);
    expect(unsafe { dmabroker_constraints_set_granularity(c, 65536) }, Status::DMABROKER_OK);
    expect(
        unsafe { dmabroker_alloc_for(ptr::null(), c, 5000, c"chosen".as_ptr(), &raw mut b, &raw mut info) },
        Status::DMABROKER_OK,
    );
    assert_eq!(c_string_of(info.heap), "memfd");
    assert!(!c_string_of(info.reasons).is_empty());
    assert_eq!(info.len, 65536, "rounded up to the granularity");
    assert!(unsafe { dmabroker_buffer_len(b) } >= 65536);
    unsafe { dmabroker_choice_info_clear(&raw mut info) };
    assert!(info.heap.is_null() && info.reasons.is_null());
    unsafe { dmabroker_choice_info_clear(&raw mut info) }; // twice: nothing to free
    unsafe { dmabroker_choice_info_clear(ptr::null_mut()) };
    unsafe { dmabroker_buffer_free(b) };
    // choice_info may be NULL.
    let mut b2 = ptr::null_mut();
    expect(
        unsafe { dmabroker_alloc_for(ptr::null(), c, 4096, ptr::null(), &raw mut b2, ptr::null_mut()) },
        Status::DMABROKER_OK,
    );
    unsafe { dmabroker_buffer_free(b2) };

    // What no heap on this host offers: 32-bit contiguous DMA of 64 MiB
    // (no CMA heap here; a CMA machine would pass, so only check the form).
    let dev = constraints(c"old-dma");
    unsafe {
        dmabroker_constraints_set_contiguous(dev, true);
        dmabroker_constraints_set_address_bits(dev, 32);
        dmabroker_constraints_set_dma_buf(dev, true);
    }
    let status = unsafe { dmabroker_alloc_for(ptr::null(), dev, 64 << 20, ptr::null(), &raw mut b, &raw mut info) };
    if status == Status::DMABROKER_OK {
        unsafe {
            dmabroker_choice_info_clear(&raw mut info);
            dmabroker_buffer_free(b);
        }
    } else {
        assert!(b.is_null() && info.heap.is_null());
        assert!(last_error().contains("old-dma"), "{}", last_error());
    }
    unsafe {
        dmabroker_constraints_free(dev);
        dmabroker_constraints_free(c);
    }
}

// ---- layouts ----------------------------------------------------------------

#[test]
fn layouts_match_the_kernel_and_refuse_bad_formats() {
    let mut l: *mut Layout = ptr::dangling_mut::<Layout>();
    expect(unsafe { dmabroker_layout_new(ptr::null(), 64, 64, 0, &raw mut l) }, INVALID);
    assert!(l.is_null());
    expect(unsafe { dmabroker_layout_new(c"BOGUS".as_ptr(), 64, 64, 0, &raw mut l) }, INVALID);
    assert!(last_error().contains("NV12"), "lists the formats: {}", last_error());
    expect(unsafe { dmabroker_layout_new(c"nv12".as_ptr(), 0, 64, 0, &raw mut l) }, INVALID);
    expect(unsafe { dmabroker_layout_new(c"nv12".as_ptr(), 64, 64, 3, &raw mut l) }, INVALID);
    expect(unsafe { dmabroker_layout_new_padded(c"nv12".as_ptr(), 64, 64, 1, 1, 5, &raw mut l) }, INVALID);
    expect(unsafe { dmabroker_layout_new(c"nv12".as_ptr(), 64, 64, 0, ptr::null_mut()) }, INVALID);
    assert!(l.is_null());

    expect(unsafe { dmabroker_layout_new(c"nv12".as_ptr(), 1920, 1080, 0, &raw mut l) }, Status::DMABROKER_OK);
    assert_eq!(c_string_of(unsafe { dmabroker_layout_format_name(l) }), "NV12");
    assert_eq!(unsafe { dmabroker_layout_plane_count(l) }, 2);
    assert_eq!(unsafe { dmabroker_layout_buffer_count(l) }, 1);
    assert_eq!(unsafe { dmabroker_layout_total_size(l) }, 3_110_400);
    assert_eq!(unsafe { dmabroker_layout_buffer_size(l, 0) }, 3_110_400);
    assert_eq!(unsafe { dmabroker_layout_buffer_size(l, 1) }, 0);
    assert_eq!(unsafe { dmabroker_layout_width(l) }, 1920);
    assert_eq!(unsafe { dmabroker_layout_height(l) }, 1080);
    assert_eq!(unsafe { dmabroker_layout_v4l2_pixelformat(l) }, u32::from_le_bytes(*b"NV12"));
    assert_eq!(unsafe { dmabroker_layout_drm_fourcc(l) }, u32::from_le_bytes(*b"NV12"));
    let mut p = std::mem::MaybeUninit::<PlaneLayout>::uninit();
    expect(unsafe { dmabroker_layout_get_plane(l, 1, p.as_mut_ptr()) }, Status::DMABROKER_OK);
    let p = unsafe { p.assume_init() };
    assert_eq!(p, PlaneLayout { buffer: 0, lines: 540, offset: 1920 * 1080, bytesperline: 1920, size: 1920 * 540 });
    let mut q = p;
    expect(unsafe { dmabroker_layout_get_plane(l, 2, &raw mut q) }, INVALID);
    expect(unsafe { dmabroker_layout_get_plane(ptr::null(), 0, &raw mut q) }, INVALID);
    expect(unsafe { dmabroker_layout_get_plane(l, 0, ptr::null_mut()) }, INVALID);
    unsafe { dmabroker_layout_free(l) };

    // Padded: pitch to 256, sizes to pages.
    expect(
        unsafe { dmabroker_layout_new_padded(c"NV12".as_ptr(), 1918, 1080, 256, 0, 4096, &raw mut l) },
        Status::DMABROKER_OK,
    );
    assert_eq!(unsafe { dmabroker_layout_total_size(l) }, 3_317_760);
    unsafe { dmabroker_layout_free(l) };

    // NULL getters.
    assert_eq!(unsafe { dmabroker_layout_plane_count(ptr::null()) }, 0);
    assert_eq!(unsafe { dmabroker_layout_total_size(ptr::null()) }, 0);
    assert_eq!(unsafe { dmabroker_layout_buffer_count(ptr::null()) }, 0);
    assert_eq!(unsafe { dmabroker_layout_v4l2_pixelformat(ptr::null()) }, 0);
    assert_eq!(c_string_of(unsafe { dmabroker_layout_format_name(ptr::null()) }), "");
    unsafe { dmabroker_layout_free(ptr::null_mut()) };
}

#[test]
fn alloc_format_allocates_single_buffer_formats_only() {
    let mut b: *mut Buffer = ptr::dangling_mut::<Buffer>();
    let mut l: *mut Layout = ptr::dangling_mut::<Layout>();
    let alloc_format = |heap: &CStr, format: &CStr, b: &mut *mut Buffer, l: *mut *mut Layout| unsafe {
        dmabroker_alloc_format(ptr::null(), heap.as_ptr(), format.as_ptr(), 640, 480, 0, ptr::null(), b, l)
    };
    expect(alloc_format(c"memfd", c"NV12M", &mut b, &raw mut l), Status::DMABROKER_ERROR_UNSUPPORTED);
    assert!(b.is_null() && l.is_null());
    assert!(last_error().contains("NV12"), "{}", last_error());
    expect(alloc_format(c"nope", c"YUYV", &mut b, &raw mut l), Status::DMABROKER_ERROR_NO_SUCH_HEAP);
    assert!(b.is_null() && l.is_null());
    expect(alloc_format(c"memfd", c"BOGUS", &mut b, &raw mut l), INVALID);
    expect(
        unsafe {
            dmabroker_alloc_format(
                ptr::null(),
                c"memfd".as_ptr(),
                c"YUYV".as_ptr(),
                640,
                480,
                0,
                ptr::null(),
                ptr::null_mut(),
                &raw mut l,
            )
        },
        INVALID,
    );
    assert!(l.is_null());
    expect(alloc_format(c"memfd", c"YUYV", &mut b, &raw mut l), Status::DMABROKER_OK);
    assert_eq!(unsafe { dmabroker_layout_total_size(l) }, 640 * 480 * 2);
    assert!(unsafe { dmabroker_buffer_len(b) } >= 640 * 480 * 2);
    unsafe {
        dmabroker_buffer_free(b);
        dmabroker_layout_free(l);
    }
    // layout_out may be NULL.
    expect(alloc_format(c"memfd", c"I420", &mut b, ptr::null_mut()), Status::DMABROKER_OK);
    unsafe { dmabroker_buffer_free(b) };
}

// ---- pools ------------------------------------------------------------------

fn producer(buffers: u32, len: u64) -> *mut Producer {
    let mut p = ptr::null_mut();
    expect(
        unsafe { dmabroker_producer_new(ptr::null(), c"memfd".as_ptr(), buffers, len, ptr::null(), &raw mut p) },
        Status::DMABROKER_OK,
    );
    p
}

fn socket_path(tag: &str) -> std::ffi::CString {
    let dir = std::env::temp_dir().join(format!("dmabroker-capi-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::ffi::CString::new(dir.join("pool.sock").to_str().unwrap()).unwrap()
}

#[test]
fn pool_calls_refuse_bad_arguments_and_wrong_orders() {
    let mut p: *mut Producer = ptr::dangling_mut::<Producer>();
    let new = |heap: *const std::ffi::c_char, n: u32, len: u64, p: &mut *mut Producer| unsafe {
        dmabroker_producer_new(ptr::null(), heap, n, len, ptr::null(), p)
    };
    expect(new(ptr::null(), 2, 4096, &mut p), INVALID);
    assert!(p.is_null());
    expect(new(c"memfd".as_ptr(), 0, 4096, &mut p), INVALID);
    expect(new(c"memfd".as_ptr(), 65, 4096, &mut p), INVALID);
    expect(new(c"memfd".as_ptr(), 2, 0, &mut p), INVALID);
    expect(new(c"nope".as_ptr(), 2, 4096, &mut p), Status::DMABROKER_ERROR_NO_SUCH_HEAP);
    let options = PoolOptions { name: ptr::null(), release_timeout_ms: 0, max_consumers: 64, drop_oldest: false };
    expect(
        unsafe { dmabroker_producer_new(ptr::null(), c"memfd".as_ptr(), 2, 4096, &raw const options, &raw mut p) },
        INVALID,
    );
    assert!(p.is_null());
    expect(
        unsafe { dmabroker_producer_new(ptr::null(), c"memfd".as_ptr(), 2, 4096, ptr::null(), ptr::null_mut()) },
        INVALID,
    );

    // NULL handles.
    let (mut index, mut data, mut len, mut seq) = (0u32, ptr::null_mut::<c_void>(), 0usize, 0u64);
    expect(unsafe { dmabroker_producer_listen(ptr::null(), c"/tmp/x".as_ptr()) }, INVALID);
    expect(unsafe { dmabroker_producer_wait_for_consumers(ptr::null(), 1, 0) }, INVALID);
    expect(unsafe { dmabroker_producer_acquire(ptr::null(), 0, &raw mut index, &raw mut data, &raw mut len) }, INVALID);
    assert_eq!((index, data, len), (u32::MAX, ptr::null_mut(), 0));
    expect(unsafe { dmabroker_producer_submit(ptr::null(), 0, 0, 0, &raw mut seq) }, INVALID);
    expect(unsafe { dmabroker_producer_cancel(ptr::null()) }, INVALID);
    expect(unsafe { dmabroker_producer_close(ptr::null()) }, INVALID);
    assert_eq!(unsafe { dmabroker_producer_buffer_count(ptr::null()) }, 0);
    let mut stats = PoolStats::default();
    expect(unsafe { dmabroker_producer_get_stats(ptr::null(), &raw mut stats) }, INVALID);
    let mut b: *mut Buffer = ptr::dangling_mut::<Buffer>();
    expect(unsafe { dmabroker_producer_get_buffer(ptr::null(), 0, &raw mut b) }, INVALID);
    assert!(b.is_null());
    unsafe { dmabroker_producer_free(ptr::null_mut()) };

    let p = producer(2, 4096);
    assert_eq!(unsafe { dmabroker_producer_buffer_count(p) }, 2);
    expect(unsafe { dmabroker_producer_listen(p, ptr::null()) }, INVALID);
    let long = std::ffi::CString::new(format!("/tmp/{}", "x".repeat(200))).unwrap();
    expect(unsafe { dmabroker_producer_listen(p, long.as_ptr()) }, INVALID);
    assert!(last_error().contains("107"), "{}", last_error());
    expect(unsafe { dmabroker_producer_listen(p, c"".as_ptr()) }, INVALID);
    assert!(last_error().contains("empty"), "{}", last_error());
    expect(unsafe { dmabroker_producer_get_buffer(p, 2, &raw mut b) }, INVALID);
    expect(unsafe { dmabroker_producer_get_buffer(p, 1, &raw mut b) }, Status::DMABROKER_OK);
    assert!(unsafe { dmabroker_buffer_fd(b) } >= 0);
    unsafe { dmabroker_buffer_free(b) };
    expect(unsafe { dmabroker_producer_wait_for_consumers(p, 1, 10) }, Status::DMABROKER_ERROR_TIMEOUT);
    // Out of order.
    expect(unsafe { dmabroker_producer_submit(p, 1, 0, 0, &raw mut seq) }, Status::DMABROKER_ERROR_NOT_BEGUN);
    expect(unsafe { dmabroker_producer_cancel(p) }, Status::DMABROKER_ERROR_NOT_BEGUN);
    expect(unsafe { dmabroker_producer_acquire(p, 0, ptr::null_mut(), &raw mut data, &raw mut len) }, INVALID);
    // No consumer: acquire works (frames go to nobody).
    expect(
        unsafe { dmabroker_producer_acquire(p, 0, &raw mut index, &raw mut data, &raw mut len) },
        Status::DMABROKER_OK,
    );
    assert!(index < 2 && !data.is_null() && len >= 4096);
    expect(
        unsafe { dmabroker_producer_acquire(p, 0, &raw mut index, &raw mut data, &raw mut len) },
        Status::DMABROKER_ERROR_BUSY,
    );
    assert_eq!((index, data, len), (u32::MAX, ptr::null_mut(), 0));
    expect(unsafe { dmabroker_producer_get_stats(p, &raw mut stats) }, Status::DMABROKER_ERROR_BUSY);
    expect(unsafe { dmabroker_producer_wait_for_consumers(p, 0, 0) }, Status::DMABROKER_ERROR_BUSY);
    // Bad submits leave the slot acquired.
    expect(unsafe { dmabroker_producer_submit(p, 1 << 40, 0, 0, &raw mut seq) }, INVALID);
    expect(unsafe { dmabroker_producer_submit(p, 1, 1 << 17, 0, &raw mut seq) }, INVALID);
    expect(unsafe { dmabroker_producer_submit(p, 1, 1 << 5, 0, &raw mut seq) }, INVALID);
    expect(unsafe { dmabroker_producer_cancel(p) }, Status::DMABROKER_OK);
    // Without a CPU pointer (a device fills the buffer).
    expect(
        unsafe { dmabroker_producer_acquire(p, 0, &raw mut index, ptr::null_mut(), ptr::null_mut()) },
        Status::DMABROKER_OK,
    );
    expect(
        unsafe { dmabroker_producer_submit(p, 10, DMABROKER_FRAME_FLAG_KEY_FRAME, 7, &raw mut seq) },
        Status::DMABROKER_OK,
    );
    assert_eq!(seq, 0);
    expect(unsafe { dmabroker_producer_get_stats(p, &raw mut stats) }, Status::DMABROKER_OK);
    assert_eq!((stats.produced, stats.consumers, stats.attached), (1, 0, 0));
    let mut cs = ConsumerStats::default();
    expect(unsafe { dmabroker_producer_get_consumer_stats(p, 0, &raw mut cs) }, INVALID);
    expect(unsafe { dmabroker_producer_close(p) }, Status::DMABROKER_OK);
    expect(
        unsafe { dmabroker_producer_acquire(p, 0, &raw mut index, &raw mut data, &raw mut len) },
        Status::DMABROKER_ERROR_CLOSED,
    );
    // A slot still out when the producer is freed goes back quietly.
    unsafe { dmabroker_producer_free(p) };
    let p = producer(1, 4096);
    expect(
        unsafe { dmabroker_producer_acquire(p, 0, &raw mut index, &raw mut data, &raw mut len) },
        Status::DMABROKER_OK,
    );
    unsafe { dmabroker_producer_free(p) };

    // Consumer side.
    let mut c: *mut Consumer = ptr::dangling_mut::<Consumer>();
    expect(
        unsafe { dmabroker_consumer_connect(c"/nonexistent/pool.sock".as_ptr(), 0, &raw mut c) },
        Status::DMABROKER_ERROR_NO_PRODUCER,
    );
    assert!(c.is_null());
    expect(unsafe { dmabroker_consumer_connect(ptr::null(), 0, &raw mut c) }, INVALID);
    expect(unsafe { dmabroker_consumer_connect(c"/nonexistent/pool.sock".as_ptr(), 7, &raw mut c) }, INVALID);
    expect(unsafe { dmabroker_consumer_connect(c"/x".as_ptr(), 0, ptr::null_mut()) }, INVALID);
    expect(unsafe { dmabroker_consumer_connect(c"".as_ptr(), 0, &raw mut c) }, INVALID);
    expect(unsafe { dmabroker_consumer_connect(long.as_ptr(), 0, &raw mut c) }, INVALID);
    assert!(c.is_null());
    // connect_with: NULL options are the defaults; bad ones are refused.
    c = ptr::dangling_mut::<Consumer>();
    expect(
        unsafe { dmabroker_consumer_connect_with(c"/nonexistent/pool.sock".as_ptr(), ptr::null(), &raw mut c) },
        Status::DMABROKER_ERROR_NO_PRODUCER,
    );
    assert!(c.is_null());
    let bad_wait = ConsumerOptions { wait: 9, want_sync_files: true, attach_timeout_ms: 0 };
    expect(
        unsafe { dmabroker_consumer_connect_with(c"/nonexistent/pool.sock".as_ptr(), &raw const bad_wait, &raw mut c) },
        INVALID,
    );
    expect(unsafe { dmabroker_consumer_connect_with(ptr::null(), ptr::null(), &raw mut c) }, INVALID);
    expect(unsafe { dmabroker_consumer_connect_with(c"".as_ptr(), ptr::null(), &raw mut c) }, INVALID);
    expect(unsafe { dmabroker_consumer_connect_with(c"/x".as_ptr(), ptr::null(), ptr::null_mut()) }, INVALID);
    let mut held = 5usize;
    expect(unsafe { dmabroker_consumer_held_count(ptr::null(), &raw mut held) }, INVALID);
    assert_eq!(held, 0);
    let mut sync_fd = 5;
    expect(unsafe { dmabroker_frame_take_sync_file(ptr::null(), &raw mut sync_fd) }, INVALID);
    assert_eq!(sync_fd, -1);
    let mut f: *mut Frame = ptr::dangling_mut::<Frame>();
    expect(unsafe { dmabroker_consumer_recv(ptr::null(), 0, &raw mut f) }, INVALID);
    assert!(f.is_null());
    let mut self_stats = ConsumerSelfStats::default();
    expect(unsafe { dmabroker_consumer_get_stats(ptr::null(), &raw mut self_stats) }, INVALID);
    let mut fi = FrameInfo::default();
    expect(unsafe { dmabroker_frame_get_info(ptr::null(), &raw mut fi) }, INVALID);
    let (mut fdata, mut flen) = (ptr::dangling::<c_void>(), 1usize);
    expect(unsafe { dmabroker_frame_data(ptr::null(), &raw mut fdata, &raw mut flen) }, INVALID);
    assert!(fdata.is_null() && flen == 0);
    expect(unsafe { dmabroker_frame_get_buffer(ptr::null(), &raw mut b) }, INVALID);
    unsafe {
        dmabroker_consumer_free(ptr::null_mut());
        dmabroker_frame_free(ptr::null_mut());
    }
}

/// A raw handle moved to another thread (the handles are thread-safe).
struct Send_<T>(*mut T);
// SAFETY: (test) the C API's producer and consumer handles are thread-safe.
unsafe impl<T> Send for Send_<T> {}

#[test]
fn pool_round_trip_between_threads() {
    let path = socket_path("round-trip");
    let p = producer(2, 8192);
    expect(unsafe { dmabroker_producer_listen(p, path.as_ptr()) }, Status::DMABROKER_OK);
    let path2 = path.clone();
    let connecting = std::thread::spawn(move || {
        let mut c = ptr::null_mut();
        let status = unsafe { dmabroker_consumer_connect(path2.as_ptr(), 0, &raw mut c) };
        (status, Send_(c))
    });
    expect(unsafe { dmabroker_producer_wait_for_consumers(p, 1, 10_000) }, Status::DMABROKER_OK);
    let (status, c) = connecting.join().unwrap();
    expect(status, Status::DMABROKER_OK);
    let c = c.0;
    let mut self_stats = ConsumerSelfStats::default();
    expect(unsafe { dmabroker_consumer_get_stats(c, &raw mut self_stats) }, Status::DMABROKER_OK);
    assert_eq!(self_stats.buffer_count, 2);
    assert_eq!(self_stats.buffer_len, 8192);

    let mut f: *mut Frame = ptr::null_mut();
    expect(unsafe { dmabroker_consumer_recv(c, 0, &raw mut f) }, Status::DMABROKER_ERROR_TIMEOUT);
    assert!(f.is_null());

    for round in 0..3u8 {
        let (mut index, mut data, mut len, mut seq) = (0u32, ptr::null_mut::<c_void>(), 0usize, 0u64);
        expect(
            unsafe { dmabroker_producer_acquire(p, 5000, &raw mut index, &raw mut data, &raw mut len) },
            Status::DMABROKER_OK,
        );
        let bytes = unsafe { std::slice::from_raw_parts_mut(data.cast::<u8>(), len) };
        bytes[..100].fill(round + 1);
        expect(
            unsafe { dmabroker_producer_submit(p, 100, 0, u64::from(round) * 11, &raw mut seq) },
            Status::DMABROKER_OK,
        );
        assert_eq!(seq, u64::from(round));

        expect(unsafe { dmabroker_consumer_recv(c, 5000, &raw mut f) }, Status::DMABROKER_OK);
        // Holding a frame blocks nothing: nothing more to receive, stats readable.
        let mut second = ptr::dangling_mut::<Frame>();
        expect(unsafe { dmabroker_consumer_recv(c, 0, &raw mut second) }, Status::DMABROKER_ERROR_TIMEOUT);
        assert!(second.is_null());
        expect(unsafe { dmabroker_consumer_get_stats(c, &raw mut self_stats) }, Status::DMABROKER_OK);
        let mut held = 0usize;
        expect(unsafe { dmabroker_consumer_held_count(c, &raw mut held) }, Status::DMABROKER_OK);
        assert_eq!(held, 1);
        let mut sync_fd = 7;
        expect(unsafe { dmabroker_frame_take_sync_file(f, &raw mut sync_fd) }, Status::DMABROKER_OK);
        assert_eq!(sync_fd, -1, "memfd pools carry no sync_file");
        let mut info = FrameInfo::default();
        expect(unsafe { dmabroker_frame_get_info(f, &raw mut info) }, Status::DMABROKER_OK);
        assert_eq!((info.index, info.seq, info.bytes_used, info.meta), (index, seq, 100, u64::from(round) * 11));
        assert!(info.timestamp_ns > 0);
        let (mut fdata, mut flen) = (ptr::null::<c_void>(), 0usize);
        expect(unsafe { dmabroker_frame_data(f, &raw mut fdata, &raw mut flen) }, Status::DMABROKER_OK);
        assert_eq!(flen, 100);
        let seen = unsafe { std::slice::from_raw_parts(fdata.cast::<u8>(), flen) };
        assert!(seen.iter().all(|&x| x == round + 1));
        let (mut again, mut again_len) = (ptr::null::<c_void>(), 0usize);
        expect(unsafe { dmabroker_frame_data(f, &raw mut again, &raw mut again_len) }, Status::DMABROKER_OK);
        assert_eq!((again, again_len), (fdata, flen), "the same pointer");
        let mut fb = ptr::null_mut();
        expect(unsafe { dmabroker_frame_get_buffer(f, &raw mut fb) }, Status::DMABROKER_OK);
        assert!(unsafe { dmabroker_buffer_len(fb) } >= 8192);
        unsafe { dmabroker_buffer_free(fb) };
        if round == 2 {
            // The frame keeps its consumer alive (attached) until freed.
            unsafe { dmabroker_consumer_free(c) };
        }
        unsafe { dmabroker_frame_free(f) };
    }
    let mut stats = PoolStats::default();
    expect(unsafe { dmabroker_producer_get_stats(p, &raw mut stats) }, Status::DMABROKER_OK);
    assert_eq!(stats.produced, 3);
    unsafe { dmabroker_producer_free(p) };
    let _ = std::fs::remove_dir_all(std::path::Path::new(path.to_str().unwrap()).parent().unwrap());
}

#[test]
fn pool_consumer_sees_the_end_of_the_stream() {
    let path = socket_path("end");
    let p = producer(2, 4096);
    expect(unsafe { dmabroker_producer_listen(p, path.as_ptr()) }, Status::DMABROKER_OK);
    // A second producer on a live socket is refused.
    let q = producer(1, 4096);
    expect(unsafe { dmabroker_producer_listen(q, path.as_ptr()) }, Status::DMABROKER_ERROR_ALREADY_EXISTS);
    unsafe { dmabroker_producer_free(q) };
    let path2 = path.clone();
    let consumer = std::thread::spawn(move || {
        let mut c = ptr::null_mut();
        expect(
            unsafe { dmabroker_consumer_connect(path2.as_ptr(), WaitMode::BusyPoll as u32, &raw mut c) },
            Status::DMABROKER_OK,
        );
        let mut got = Vec::new();
        let end = loop {
            let mut f = ptr::null_mut();
            let status = unsafe { dmabroker_consumer_recv(c, 10_000, &raw mut f) };
            if status != Status::DMABROKER_OK {
                assert!(f.is_null());
                break status;
            }
            let mut info = FrameInfo::default();
            unsafe { dmabroker_frame_get_info(f, &raw mut info) };
            got.push(info.meta);
            unsafe { dmabroker_frame_free(f) };
        };
        unsafe { dmabroker_consumer_free(c) };
        (end, got)
    });
    expect(unsafe { dmabroker_producer_wait_for_consumers(p, 1, 10_000) }, Status::DMABROKER_OK);
    for i in 0..5u64 {
        let mut index = 0;
        expect(
            unsafe { dmabroker_producer_acquire(p, 10_000, &raw mut index, ptr::null_mut(), ptr::null_mut()) },
            Status::DMABROKER_OK,
        );
        expect(unsafe { dmabroker_producer_submit(p, 1, 0, i, ptr::null_mut()) }, Status::DMABROKER_OK);
    }
    expect(unsafe { dmabroker_producer_close(p) }, Status::DMABROKER_OK);
    let (end, got) = consumer.join().unwrap();
    assert_eq!(end, Status::DMABROKER_ERROR_CLOSED);
    assert_eq!(got, [0, 1, 2, 3, 4]);
    unsafe { dmabroker_producer_free(p) };
    let _ = std::fs::remove_dir_all(std::path::Path::new(path.to_str().unwrap()).parent().unwrap());
}

#[test]
fn pools_by_constraints_and_by_layout() {
    let c = constraints(c"cpu-only");
    expect(unsafe { dmabroker_constraints_set_dma_buf(c, false) }, Status::DMABROKER_OK);
    let mut layout = ptr::null_mut();
    expect(unsafe { dmabroker_layout_new(c"NV12".as_ptr(), 64, 32, 0, &raw mut layout) }, Status::DMABROKER_OK);
    let zeroed = || ChoiceInfo {
        heap: ptr::dangling_mut(),
        reasons: ptr::dangling_mut(),
        len: 1,
        allocated_len: 1,
        align: 1,
        contiguous: true,
        non_coherent: true,
        uncached: true,
    };

    // Bad arguments: out-parameters cleared, nothing allocated.
    let mut p: *mut Producer = ptr::dangling_mut();
    let mut info = zeroed();
    expect(
        unsafe {
            dmabroker_producer_new_for(ptr::null(), ptr::null(), 2, 4096, ptr::null(), &raw mut p, &raw mut info)
        },
        INVALID,
    );
    assert!(p.is_null() && info.heap.is_null() && info.reasons.is_null() && info.len == 0);
    expect(
        unsafe { dmabroker_producer_new_for(ptr::null(), c, 2, 4096, ptr::null(), ptr::null_mut(), &raw mut info) },
        INVALID,
    );
    expect(
        unsafe { dmabroker_producer_new_for(ptr::null(), c, 0, 4096, ptr::null(), &raw mut p, &raw mut info) },
        INVALID,
    );
    expect(
        unsafe { dmabroker_producer_new_for(ptr::null(), c, 65, 4096, ptr::null(), &raw mut p, &raw mut info) },
        INVALID,
    );
    expect(
        unsafe { dmabroker_producer_new_for(ptr::null(), c, 2, 0, ptr::null(), &raw mut p, &raw mut info) },
        INVALID,
    );
    let options = PoolOptions { name: ptr::null(), release_timeout_ms: 0, max_consumers: 64, drop_oldest: false };
    expect(
        unsafe { dmabroker_producer_new_for(ptr::null(), c, 2, 4096, &raw const options, &raw mut p, ptr::null_mut()) },
        INVALID,
    );
    assert!(p.is_null());
    p = ptr::dangling_mut();
    info = zeroed();
    expect(
        unsafe {
            dmabroker_producer_new_for_layout(ptr::null(), c, ptr::null(), 2, ptr::null(), &raw mut p, &raw mut info)
        },
        INVALID,
    );
    assert!(p.is_null() && info.heap.is_null());
    expect(
        unsafe {
            dmabroker_producer_new_for_layout(
                ptr::null(),
                ptr::null(),
                layout,
                2,
                ptr::null(),
                &raw mut p,
                &raw mut info,
            )
        },
        INVALID,
    );
    expect(
        unsafe {
            dmabroker_producer_new_for_layout(ptr::null(), c, layout, 2, ptr::null(), ptr::null_mut(), &raw mut info)
        },
        INVALID,
    );
    expect(
        unsafe { dmabroker_producer_new_for_layout(ptr::null(), c, layout, 0, ptr::null(), &raw mut p, &raw mut info) },
        INVALID,
    );

    // By constraints: CPU memory will do, so the cheapest heap, with reasons.
    expect(
        unsafe { dmabroker_producer_new_for(ptr::null(), c, 3, 5000, ptr::null(), &raw mut p, &raw mut info) },
        Status::DMABROKER_OK,
    );
    assert_eq!(c_string_of(info.heap), "memfd");
    assert!(!c_string_of(info.reasons).is_empty());
    assert!(info.len >= 5000 && info.allocated_len >= info.len);
    unsafe { dmabroker_choice_info_clear(&raw mut info) };
    assert_eq!(unsafe { dmabroker_producer_buffer_count(p) }, 3);
    let mut b = ptr::null_mut();
    expect(unsafe { dmabroker_producer_get_buffer(p, 2, &raw mut b) }, Status::DMABROKER_OK);
    assert!(unsafe { dmabroker_buffer_len(b) } >= 5000);
    unsafe { dmabroker_buffer_free(b) };
    unsafe { dmabroker_producer_free(p) };

    // By layout: one buffer per frame of the layout's total size; heaps
    // given, choice_info not wanted.
    let mut heaps = ptr::null_mut();
    expect(unsafe { dmabroker_heaps_discover(&raw mut heaps) }, Status::DMABROKER_OK);
    expect(
        unsafe { dmabroker_producer_new_for_layout(heaps, c, layout, 2, ptr::null(), &raw mut p, ptr::null_mut()) },
        Status::DMABROKER_OK,
    );
    let total = unsafe { dmabroker_layout_total_size(layout) };
    assert_eq!(total, 64 * 32 * 3 / 2);
    expect(unsafe { dmabroker_producer_get_buffer(p, 1, &raw mut b) }, Status::DMABROKER_OK);
    assert!(unsafe { dmabroker_buffer_len(b) } >= total);
    unsafe { dmabroker_buffer_free(b) };
    let (mut index, mut data, mut len) = (0u32, ptr::null_mut::<c_void>(), 0usize);
    expect(
        unsafe { dmabroker_producer_acquire(p, 0, &raw mut index, &raw mut data, &raw mut len) },
        Status::DMABROKER_OK,
    );
    assert!(len as u64 >= total);
    // A sync_file asked for on a memfd pool is no error: there is none to export.
    expect(
        unsafe { dmabroker_producer_submit(p, total, DMABROKER_FRAME_FLAG_SYNC_FILE, 0, ptr::null_mut()) },
        Status::DMABROKER_OK,
    );
    unsafe { dmabroker_producer_free(p) };

    // No heap meets an impossible requirement: UNSUPPORTED, with the reasons.
    let strict = constraints(c"needs-dma-buf-below-4g");
    expect(unsafe { dmabroker_constraints_set_dma_buf(strict, true) }, Status::DMABROKER_OK);
    expect(unsafe { dmabroker_constraints_set_contiguous(strict, true) }, Status::DMABROKER_OK);
    expect(unsafe { dmabroker_constraints_set_address_bits(strict, 12) }, Status::DMABROKER_OK);
    info = zeroed();
    let status =
        unsafe { dmabroker_producer_new_for(heaps, strict, 2, 1 << 20, ptr::null(), &raw mut p, &raw mut info) };
    assert_ne!(status, Status::DMABROKER_OK);
    assert!(p.is_null() && info.heap.is_null());
    assert!(last_error().contains("pool buffer 0"), "{}", last_error());
    unsafe {
        dmabroker_constraints_free(strict);
        dmabroker_heaps_free(heaps);
        dmabroker_layout_free(layout);
        dmabroker_constraints_free(c);
    }
}

/// Fill the acquired buffer's first `n` bytes with `byte` and submit it.
fn submit_filled(p: *mut Producer, byte: u8, n: usize) -> u32 {
    let (mut index, mut data, mut len) = (0u32, ptr::null_mut::<c_void>(), 0usize);
    expect(
        unsafe { dmabroker_producer_acquire(p, 5000, &raw mut index, &raw mut data, &raw mut len) },
        Status::DMABROKER_OK,
    );
    unsafe { std::slice::from_raw_parts_mut(data.cast::<u8>(), n) }.fill(byte);
    expect(
        unsafe { dmabroker_producer_submit(p, n as u64, 0, u64::from(byte), ptr::null_mut()) },
        Status::DMABROKER_OK,
    );
    index
}

/// The frame's bytes, checked to be `n` times its `meta` byte.
fn frame_bytes_ok(f: *mut Frame, n: usize) -> bool {
    let mut info = FrameInfo::default();
    expect(unsafe { dmabroker_frame_get_info(f, &raw mut info) }, Status::DMABROKER_OK);
    let (mut data, mut len) = (ptr::null::<c_void>(), 0usize);
    expect(unsafe { dmabroker_frame_data(f, &raw mut data, &raw mut len) }, Status::DMABROKER_OK);
    len == n && unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) }.iter().all(|&x| u64::from(x) == info.meta)
}

#[test]
fn a_consumer_holds_several_frames_and_frees_them_from_any_thread() {
    const N: usize = 1000;
    let path = socket_path("several");
    let p = producer(3, 8192);
    expect(unsafe { dmabroker_producer_listen(p, path.as_ptr()) }, Status::DMABROKER_OK);
    let path2 = path.clone();
    let connecting = std::thread::spawn(move || {
        let mut c = ptr::null_mut();
        let options = ConsumerOptions { wait: WaitMode::Block as u32, want_sync_files: true, attach_timeout_ms: -1 };
        let status = unsafe { dmabroker_consumer_connect_with(path2.as_ptr(), &raw const options, &raw mut c) };
        (status, Send_(c))
    });
    expect(unsafe { dmabroker_producer_wait_for_consumers(p, 1, 10_000) }, Status::DMABROKER_OK);
    let (status, c) = connecting.join().unwrap();
    expect(status, Status::DMABROKER_OK);
    let c = c.0;

    // Three frames held at once, each readable, none overwritten.
    let mut frames = Vec::new();
    for byte in 1..=3u8 {
        submit_filled(p, byte, N);
        let mut f = ptr::null_mut();
        expect(unsafe { dmabroker_consumer_recv(c, 5000, &raw mut f) }, Status::DMABROKER_OK);
        assert!(frame_bytes_ok(f, N));
        frames.push(f);
    }
    let mut held = 0usize;
    expect(unsafe { dmabroker_consumer_held_count(c, &raw mut held) }, Status::DMABROKER_OK);
    assert_eq!(held, 3);
    // Every buffer is held: the producer waits (blocking backpressure).
    let (mut index, mut data, mut len) = (0u32, ptr::null_mut::<c_void>(), 0usize);
    expect(
        unsafe { dmabroker_producer_acquire(p, 20, &raw mut index, &raw mut data, &raw mut len) },
        Status::DMABROKER_ERROR_TIMEOUT,
    );

    // A recv waits in another thread; the producer waits for a buffer in a
    // third; freeing a frame here neither waits for the recv nor is lost.
    let (pc, cc) = (Send_(p), Send_(c));
    let producing = std::thread::spawn(move || {
        let pc = pc;
        submit_filled(pc.0, 4, N)
    });
    let receiving = std::thread::spawn(move || {
        let cc = cc;
        let mut f = ptr::null_mut();
        let status = unsafe { dmabroker_consumer_recv(cc.0, 10_000, &raw mut f) };
        (status, Send_(f))
    });
    std::thread::sleep(std::time::Duration::from_millis(50));
    let mut first = FrameInfo::default();
    expect(unsafe { dmabroker_frame_get_info(frames[0], &raw mut first) }, Status::DMABROKER_OK);
    let started = std::time::Instant::now();
    unsafe { dmabroker_frame_free(frames.remove(0)) };
    assert!(started.elapsed() < std::time::Duration::from_millis(500), "frame_free waited for the recv");
    assert_eq!(producing.join().unwrap(), first.index, "the freed buffer was the one refilled");
    let (status, f4) = receiving.join().unwrap();
    expect(status, Status::DMABROKER_OK);
    let f4 = f4.0;
    assert!(frame_bytes_ok(f4, N));
    frames.push(f4);
    // The two frames held all along are intact.
    for &f in &frames {
        assert!(frame_bytes_ok(f, N));
    }
    // Freed in any order, all buffers go back.
    unsafe { dmabroker_frame_free(frames.remove(1)) };
    expect(unsafe { dmabroker_consumer_held_count(c, &raw mut held) }, Status::DMABROKER_OK);
    assert_eq!(held, 2);
    for f in frames {
        unsafe { dmabroker_frame_free(f) };
    }
    expect(unsafe { dmabroker_consumer_held_count(c, &raw mut held) }, Status::DMABROKER_OK);
    assert_eq!(held, 0);
    let mut cs = ConsumerStats::default();
    expect(unsafe { dmabroker_producer_get_consumer_stats(p, 0, &raw mut cs) }, Status::DMABROKER_OK);
    assert_eq!((cs.received, cs.released), (4, 4));
    unsafe { dmabroker_consumer_free(c) };
    unsafe { dmabroker_producer_free(p) };
    let _ = std::fs::remove_dir_all(std::path::Path::new(path.to_str().unwrap()).parent().unwrap());
}

/// The usual C design: one thread receives with no time limit, workers
/// read the frames and free them. With every buffer held the receiver is
/// inside recv while the workers call frame_data and frame_free: neither
/// may wait for the recv (a begun frame's data never locks the consumer;
/// recv lets other threads in between its wait slices).
#[test]
fn workers_read_and_free_frames_while_a_receiver_waits() {
    const N: usize = 512;
    const FRAMES: u8 = 40;
    let path = socket_path("workers");
    let p = producer(3, 4096);
    expect(unsafe { dmabroker_producer_listen(p, path.as_ptr()) }, Status::DMABROKER_OK);
    let path2 = path.clone();
    let connecting = std::thread::spawn(move || {
        let mut c = ptr::null_mut();
        let status = unsafe { dmabroker_consumer_connect(path2.as_ptr(), WaitMode::Block as u32, &raw mut c) };
        (status, Send_(c))
    });
    expect(unsafe { dmabroker_producer_wait_for_consumers(p, 1, 10_000) }, Status::DMABROKER_OK);
    let (status, c) = connecting.join().unwrap();
    expect(status, Status::DMABROKER_OK);

    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let pc = Send_(p);
    let run = std::thread::spawn(move || {
        let pc = pc;
        let producing = std::thread::spawn(move || {
            let pc = pc;
            for byte in 1..=FRAMES {
                submit_filled(pc.0, byte, N);
            }
            pc
        });
        let (work_tx, work_rx) = std::sync::mpsc::channel::<Send_<Frame>>();
        let work_rx = std::sync::Arc::new(std::sync::Mutex::new(work_rx));
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let work_rx = std::sync::Arc::clone(&work_rx);
                std::thread::spawn(move || {
                    let mut ok = 0;
                    loop {
                        let next = work_rx.lock().unwrap().recv();
                        let Ok(f) = next else { return ok };
                        // Every buffer is held by now: the receiver waits in recv.
                        std::thread::sleep(std::time::Duration::from_millis(5));
                        ok += usize::from(frame_bytes_ok(f.0, N));
                        ok += usize::from(frame_bytes_ok(f.0, N));
                        unsafe { dmabroker_frame_free(f.0) };
                    }
                })
            })
            .collect();
        let cc = c;
        let mut received = 0u8;
        while received < FRAMES {
            let mut f = ptr::null_mut();
            expect(unsafe { dmabroker_consumer_recv(cc.0, -1, &raw mut f) }, Status::DMABROKER_OK);
            received += 1;
            // Half the frames are begun here, before the hand-off.
            if received % 2 == 0 {
                assert!(frame_bytes_ok(f, N));
            }
            work_tx.send(Send_(f)).unwrap();
        }
        drop(work_tx);
        let read: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
        let _ = producing.join().unwrap();
        done_tx.send((read, cc)).unwrap();
    });
    let (read, c) = done_rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("deadlock: workers could not read or free frames while the receiver waited in recv");
    run.join().unwrap();
    assert_eq!(read, 2 * FRAMES as usize);
    let mut cs = ConsumerStats::default();
    expect(unsafe { dmabroker_producer_get_consumer_stats(p, 0, &raw mut cs) }, Status::DMABROKER_OK);
    assert_eq!((cs.received, cs.evicted), (u64::from(FRAMES), false));
    unsafe { dmabroker_consumer_free(c.0) };
    unsafe { dmabroker_producer_free(p) };
    let _ = std::fs::remove_dir_all(std::path::Path::new(path.to_str().unwrap()).parent().unwrap());
}

// ---- allocation by constraints through the broker -----------------------------

/// A one-client stand-in for the broker speaking `version`: it answers
/// `AllocateFor` with `answer` (a memfd of the asked length when `None`),
/// and hands the requests it got back when the client hangs up.
fn fake_broker(
    name: &str,
    version: u16,
    answer: Option<dmabroker_core::proto::Response>,
) -> (std::path::PathBuf, std::thread::JoinHandle<Vec<dmabroker_core::proto::Request>>) {
    use dmabroker_core::proto::{self, wire, ChoiceReport, Request, Response};
    use std::os::fd::AsFd;
    let dir = std::env::temp_dir().join(format!("dmabroker-capi-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("b.sock");
    let listener = rustix::net::socket_with(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    rustix::net::bind(&listener, &rustix::net::SocketAddrUnix::new(&path).unwrap()).unwrap();
    rustix::net::listen(&listener, 1).unwrap();
    let thread = std::thread::spawn(move || {
        let s = rustix::net::accept(&listener).unwrap();
        let mut buf = vec![0; proto::MAX_RESPONSE_LEN];
        let mut got = Vec::new();
        while let Ok(Some(r)) = wire::recv(s.as_fd(), &mut buf, false) {
            let request = proto::decode_request(&buf[..r.len]).unwrap();
            let (response, fd) = match &request {
                Request::Hello { .. } => (Response::Hello { version, server: "fake".into() }, None),
                Request::AllocateFor(a) => match &answer {
                    Some(r) => (r.clone(), None),
                    None => {
                        let fd = memfd(a.len);
                        let choice = ChoiceReport {
                            heap: "memfd".into(),
                            kind: "memfd".into(),
                            len: a.len,
                            allocated_len: a.len,
                            align: 4096,
                            contiguous: false,
                            cache: "cached".into(),
                            coherency: "non-coherent".into(),
                            reasons: vec!["memfd is the only heap".into(), "isp0 needs 4 KiB".into()],
                            candidates: vec!["memfd".into()],
                            passed_over: vec![],
                        };
                        (Response::AllocatedFor { id: 7, len: a.len, heap: "memfd".into(), choice }, Some(fd))
                    }
                },
                other => panic!("unexpected {other:?}"),
            };
            got.push(request);
            let bytes = proto::encode_response(&response).unwrap();
            wire::send(s.as_fd(), &bytes, fd.as_ref().map(|f| f.as_fd()), false).unwrap();
        }
        let _ = std::fs::remove_dir_all(&dir);
        got
    });
    (path, thread)
}

fn connect(path: &std::path::Path) -> *mut Client {
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut c = ptr::null_mut();
    expect(unsafe { dmabroker_client_connect(path.as_ptr(), &raw mut c) }, Status::DMABROKER_OK);
    c
}

#[test]
fn client_alloc_for_sends_each_device_and_reports_the_choice() {
    use dmabroker_core::proto::{ErrorCode, Request, Response};
    let (path, broker) = fake_broker("for", 2, None);
    let client = connect(&path);
    let isp = constraints(c"isp0");
    expect(unsafe { dmabroker_constraints_set_align(isp, 4096) }, Status::DMABROKER_OK);
    expect(
        unsafe { dmabroker_constraints_set_coherency(isp, Coherency::NeedsMaintenance as u32) },
        Status::DMABROKER_OK,
    );
    let mut b: *mut Buffer = ptr::dangling_mut::<Buffer>();
    let mut info = ChoiceInfo {
        heap: ptr::dangling_mut(),
        reasons: ptr::dangling_mut(),
        len: 1,
        allocated_len: 1,
        align: 1,
        contiguous: true,
        non_coherent: true,
        uncached: true,
    };
    // Bad arguments: nothing sent, out-parameters cleared.
    expect(
        unsafe { dmabroker_client_alloc_for(ptr::null(), isp, 4096, ptr::null(), &raw mut b, &raw mut info) },
        INVALID,
    );
    assert!(b.is_null() && info.heap.is_null() && info.reasons.is_null() && info.len == 0);
    expect(
        unsafe { dmabroker_client_alloc_for(client, ptr::null(), 4096, ptr::null(), &raw mut b, &raw mut info) },
        INVALID,
    );
    expect(unsafe { dmabroker_client_alloc_for(client, isp, 0, ptr::null(), &raw mut b, &raw mut info) }, INVALID);
    expect(
        unsafe { dmabroker_client_alloc_for(client, isp, 4096, ptr::null(), ptr::null_mut(), &raw mut info) },
        INVALID,
    );
    expect(
        unsafe { dmabroker_client_alloc_for(client, isp, 8192, c"frame".as_ptr(), &raw mut b, &raw mut info) },
        Status::DMABROKER_OK,
    );
    assert_eq!(unsafe { dmabroker_buffer_len(b) }, 8192);
    assert_eq!(c_string_of(info.heap), "memfd");
    assert_eq!(c_string_of(info.reasons), "memfd is the only heap; isp0 needs 4 KiB");
    assert!(info.non_coherent && !info.uncached && info.align == 4096);
    unsafe { dmabroker_choice_info_clear(&raw mut info) };
    unsafe { dmabroker_buffer_free(b) };
    unsafe { dmabroker_client_free(client) };
    unsafe { dmabroker_constraints_free(isp) };
    let requests = broker.join().unwrap();
    let Some(Request::AllocateFor(a)) = requests.get(1) else { panic!("{requests:?}") };
    assert_eq!((a.len, a.name.as_deref()), (8192, Some("frame")));
    assert_eq!(a.devices.len(), 1);
    assert_eq!((a.devices[0].device.as_str(), a.devices[0].align), ("isp0", Some(4096)));

    // No suitable heap: UNSUPPORTED with the broker's explanation.
    let refusal = Response::Error {
        code: ErrorCode::NoSuitableHeap,
        message: "no heap can allocate 4 KiB for isp0: memfd: not usable (not allowed by policy for uid 1)".into(),
    };
    let (path, broker) = fake_broker("for-none", 2, Some(refusal));
    let client = connect(&path);
    let any = constraints(c"any");
    let mut b = ptr::null_mut();
    expect(
        unsafe { dmabroker_client_alloc_for(client, any, 4096, ptr::null(), &raw mut b, ptr::null_mut()) },
        Status::DMABROKER_ERROR_UNSUPPORTED,
    );
    assert!(b.is_null() && last_error().contains("not allowed by policy"), "{}", last_error());
    unsafe { dmabroker_client_free(client) };
    broker.join().unwrap();

    // A version-1 broker is not asked at all.
    let (path, broker) = fake_broker("for-v1", 1, None);
    let client = connect(&path);
    expect(
        unsafe { dmabroker_client_alloc_for(client, any, 4096, ptr::null(), &raw mut b, ptr::null_mut()) },
        Status::DMABROKER_ERROR_UNSUPPORTED,
    );
    assert!(last_error().contains("version 1"), "{}", last_error());
    unsafe { dmabroker_client_free(client) };
    unsafe { dmabroker_constraints_free(any) };
    assert_eq!(broker.join().unwrap().len(), 1, "only Hello");
}

/// A frame held past the release timeout: the consumer is evicted, the
/// producer reuses the buffer, and frame_check says the bytes read may be
/// torn (before the eviction it says they are intact).
#[test]
fn frame_check_reports_an_eviction_while_the_frame_was_held() {
    const N: usize = 256;
    let path = socket_path("check");
    let options = PoolOptions { name: ptr::null(), release_timeout_ms: 200, max_consumers: 0, drop_oldest: false };
    let mut p = ptr::null_mut();
    expect(
        unsafe { dmabroker_producer_new(ptr::null(), c"memfd".as_ptr(), 2, 4096, &raw const options, &raw mut p) },
        Status::DMABROKER_OK,
    );
    expect(unsafe { dmabroker_producer_listen(p, path.as_ptr()) }, Status::DMABROKER_OK);
    let path2 = path.clone();
    let connecting = std::thread::spawn(move || {
        let mut c = ptr::null_mut();
        let status = unsafe { dmabroker_consumer_connect(path2.as_ptr(), WaitMode::Block as u32, &raw mut c) };
        (status, Send_(c))
    });
    expect(unsafe { dmabroker_producer_wait_for_consumers(p, 1, 10_000) }, Status::DMABROKER_OK);
    let (status, c) = connecting.join().unwrap();
    expect(status, Status::DMABROKER_OK);
    let c = c.0;
    submit_filled(p, 1, N);
    let mut f = ptr::null_mut();
    expect(unsafe { dmabroker_consumer_recv(c, 5000, &raw mut f) }, Status::DMABROKER_OK);
    assert!(frame_bytes_ok(f, N));
    expect(unsafe { dmabroker_frame_check(f) }, Status::DMABROKER_OK);
    expect(unsafe { dmabroker_frame_check(ptr::null()) }, INVALID);
    // The producer fills the other buffer, then waits for the held one
    // until it evicts the consumer, and refills it.
    let started = std::time::Instant::now();
    for byte in 2..=4 {
        submit_filled(p, byte, N);
    }
    assert!(started.elapsed() >= std::time::Duration::from_millis(200));
    expect(unsafe { dmabroker_frame_check(f) }, Status::DMABROKER_ERROR_EVICTED);
    unsafe { dmabroker_frame_free(f) };
    expect(unsafe { dmabroker_consumer_recv(c, 0, &raw mut f) }, Status::DMABROKER_ERROR_EVICTED);
    unsafe { dmabroker_consumer_free(c) };
    unsafe { dmabroker_producer_free(p) };
    let _ = std::fs::remove_dir_all(std::path::Path::new(path.to_str().unwrap()).parent().unwrap());
}

// ---- timeouts and the status of each broker refusal ---------------------------

impl ChildBroker {
    fn c_path(&self) -> std::ffi::CString {
        std::ffi::CString::new(self.path.as_os_str().as_encoded_bytes()).unwrap()
    }
}

/// Not a test: the broker process of [`ChildBroker`].
#[test]
#[ignore = "the broker process of other tests"]
fn broker_process() {
    child_broker::serve_if_asked();
}

/// The C client never hangs on a broker that does not answer: a broker
/// stopped with SIGSTOP makes a call and a new connection return
/// `DMABROKER_ERROR_TIMEOUT` within the bound, with a message that says
/// what a C caller does.
#[test]
fn a_stopped_broker_times_out_through_the_c_api() {
    use std::time::{Duration, Instant};
    let broker = ChildBroker::start("sigstop");
    let path = broker.c_path();
    let mut c = ptr::null_mut();
    expect(unsafe { dmabroker_client_connect(path.as_ptr(), &raw mut c) }, Status::DMABROKER_OK);
    expect(unsafe { dmabroker_client_set_timeout(c, 300) }, Status::DMABROKER_OK);
    expect(unsafe { dmabroker_client_set_timeout(ptr::null(), 300) }, INVALID);
    let mut b = ptr::null_mut();
    expect(
        unsafe { dmabroker_client_import(c, c"nothing".as_ptr(), &raw mut b, ptr::null_mut()) },
        Status::DMABROKER_ERROR_NOT_FOUND,
    );
    broker.signal(rustix::process::Signal::STOP);
    let start = Instant::now();
    expect(
        unsafe { dmabroker_client_import(c, c"nothing".as_ptr(), &raw mut b, ptr::null_mut()) },
        Status::DMABROKER_ERROR_TIMEOUT,
    );
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(2), "{took:?}");
    let message = last_error();
    assert!(message.contains("300 ms") && message.contains("dmabroker_client_free"), "{message}");
    assert!(!message.contains("Client::"), "{message}");
    // A new connection: connect() lands in the backlog, the hello times out.
    let mut c2 = ptr::dangling_mut::<Client>();
    let start = Instant::now();
    expect(
        unsafe { dmabroker_client_connect_timeout(path.as_ptr(), 300, &raw mut c2) },
        Status::DMABROKER_ERROR_TIMEOUT,
    );
    assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
    assert!(c2.is_null());
    assert!(last_error().contains("dmabroker_client_connect_timeout"), "{}", last_error());
    broker.signal(rustix::process::Signal::CONT);
    // The connection that timed out stays refused: a late reply would answer
    // the wrong request.
    expect(
        unsafe { dmabroker_client_import(c, c"nothing".as_ptr(), &raw mut b, ptr::null_mut()) },
        Status::DMABROKER_ERROR_TIMEOUT,
    );
    unsafe { dmabroker_client_free(c) };
}

/// A socket that listens and never accepts: `dmabroker_client_connect`
/// returns `DMABROKER_ERROR_TIMEOUT` after its default 5 s instead of
/// hanging (it hung for ever before).
#[test]
fn connect_to_a_silent_listener_times_out() {
    use std::time::{Duration, Instant};
    let dir = std::env::temp_dir().join(format!("dmabroker-capi-silent-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("silent.sock");
    let listener = rustix::net::socket_with(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    rustix::net::bind(&listener, &rustix::net::SocketAddrUnix::new(&path).unwrap()).unwrap();
    rustix::net::listen(&listener, 16).unwrap();
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut c = ptr::dangling_mut::<Client>();
    let start = Instant::now();
    expect(unsafe { dmabroker_client_connect(c_path.as_ptr(), &raw mut c) }, Status::DMABROKER_ERROR_TIMEOUT);
    let took = start.elapsed();
    assert!(took >= Duration::from_secs(5) && took < Duration::from_secs(8), "{took:?}");
    assert!(c.is_null());
    assert!(last_error().contains("5000 ms"), "{}", last_error());
    let start = Instant::now();
    expect(
        unsafe { dmabroker_client_connect_timeout(c_path.as_ptr(), 200, &raw mut c) },
        Status::DMABROKER_ERROR_TIMEOUT,
    );
    assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A stand-in broker that answers `Hello` (version 3) and then every
/// request with the next of `codes`; returns the requests it got.
fn refusing_broker(
    name: &str,
    codes: Vec<dmabroker_core::proto::ErrorCode>,
) -> (std::path::PathBuf, std::thread::JoinHandle<Vec<dmabroker_core::proto::Request>>) {
    use dmabroker_core::proto::{self, wire, Request, Response};
    use std::os::fd::AsFd;
    let dir = std::env::temp_dir().join(format!("dmabroker-capi-refuse-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("b.sock");
    let listener = rustix::net::socket_with(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    rustix::net::bind(&listener, &rustix::net::SocketAddrUnix::new(&path).unwrap()).unwrap();
    rustix::net::listen(&listener, 1).unwrap();
    let thread = std::thread::spawn(move || {
        let s = rustix::net::accept(&listener).unwrap();
        let mut buf = vec![0; proto::MAX_RESPONSE_LEN];
        let mut got = Vec::new();
        let mut codes = codes.into_iter();
        while let Ok(Some(r)) = wire::recv(s.as_fd(), &mut buf, false) {
            let request = proto::decode_request(&buf[..r.len]).unwrap();
            let response = match &request {
                Request::Hello { .. } => Response::Hello { version: 3, server: "fake".into() },
                _ => match codes.next() {
                    Some(code) => Response::Error { code, message: format!("refused with {code}") },
                    None => break,
                },
            };
            got.push(request);
            let bytes = proto::encode_response(&response).unwrap();
            wire::send(s.as_fd(), &bytes, None, false).unwrap();
        }
        let _ = std::fs::remove_dir_all(&dir);
        got
    });
    (path, thread)
}

/// Every error code of docs/PROTOCOL.md, and the status a C caller gets
/// for it from each broker call.
#[test]
fn each_broker_refusal_has_its_status() {
    use dmabroker_core::proto::ErrorCode as E;
    const TABLE: [(E, Status); 13] = [
        (E::BadRequest, INVALID),
        (E::UnsupportedVersion, Status::DMABROKER_ERROR_BROKER),
        (E::NotAllowed, Status::DMABROKER_ERROR_PERMISSION_DENIED),
        (E::QuotaExceeded, Status::DMABROKER_ERROR_QUOTA_EXCEEDED),
        (E::NoSuchHeap, Status::DMABROKER_ERROR_NO_SUCH_HEAP),
        (E::AllocationFailed, Status::DMABROKER_ERROR_OUT_OF_MEMORY),
        (E::NotFound, Status::DMABROKER_ERROR_NOT_FOUND),
        (E::AlreadyExists, Status::DMABROKER_ERROR_ALREADY_EXISTS),
        (E::NotABuffer, Status::DMABROKER_ERROR_NOT_A_BUFFER),
        (E::ReadOnlyUnsupported, Status::DMABROKER_ERROR_UNSUPPORTED),
        (E::Busy, Status::DMABROKER_ERROR_BUSY),
        (E::Internal, Status::DMABROKER_ERROR_BROKER),
        (E::NoSuitableHeap, Status::DMABROKER_ERROR_UNSUPPORTED),
    ];
    // Four calls per code: allocate, import, publish, unpublish.
    let codes: Vec<E> = TABLE.iter().flat_map(|(code, _)| [*code; 4]).collect();
    let (path, broker) = refusing_broker("codes", codes);
    let client = connect(&path);
    let own = alloc(4096);
    for (code, want) in TABLE {
        let mut b = ptr::dangling_mut::<Buffer>();
        let status = unsafe { dmabroker_client_alloc(client, c"memfd".as_ptr(), 4096, ptr::null(), &raw mut b) };
        assert_eq!(status, want, "allocate refused with {code}: {}", last_error());
        assert!(b.is_null());
        assert!(last_error().contains(&format!("refused with {code}")), "{}", last_error());
        if code == E::BadRequest {
            assert!(last_error().contains("connect again"), "{}", last_error());
        }
        let status = unsafe { dmabroker_client_import(client, c"key".as_ptr(), &raw mut b, ptr::null_mut()) };
        assert_eq!(status, want, "import refused with {code}: {}", last_error());
        let mut key = ptr::dangling_mut::<std::ffi::c_char>();
        let status = unsafe { dmabroker_client_publish(client, own, ptr::null(), &raw mut key) };
        assert_eq!(status, want, "publish refused with {code}: {}", last_error());
        assert!(key.is_null());
        let status = unsafe { dmabroker_client_unpublish(client, c"key".as_ptr()) };
        assert_eq!(status, want, "unpublish refused with {code}: {}", last_error());
    }
    unsafe { dmabroker_buffer_free(own) };
    unsafe { dmabroker_client_free(client) };
    assert_eq!(broker.join().unwrap().len(), 1 + 4 * TABLE.len());
}

/// A bad alignment or size through the broker is the caller's mistake
/// (`INVALID_ARGUMENT`), refused before anything is sent; the broker would
/// have said `AllocationFailed`, the code it shares with running out of
/// memory.
#[test]
fn a_bad_alignment_through_the_broker_is_an_invalid_argument() {
    let (path, broker) = refusing_broker("align", vec![]);
    let client = connect(&path);
    let options = AllocOptions { align: 3, name: ptr::null(), contiguous: false, non_coherent: false };
    let mut b = ptr::dangling_mut::<Buffer>();
    expect(unsafe { dmabroker_client_alloc(client, c"memfd".as_ptr(), 4096, &raw const options, &raw mut b) }, INVALID);
    assert!(b.is_null());
    assert!(last_error().contains("alignment 3 is not a power of two"), "{}", last_error());
    expect(unsafe { dmabroker_client_alloc(client, c"memfd".as_ptr(), 0, ptr::null(), &raw mut b) }, INVALID);
    unsafe { dmabroker_client_free(client) };
    let got = broker.join().unwrap();
    assert_eq!(got.len(), 1, "only the hello went to the broker: {got:?}");
}

/// `dmabroker_client_get_cgroup_stats`: the broker names this process's
/// cgroup and what is charged there; the info structs fill only the
/// `struct_size` bytes the caller declared and say how many they filled.
#[test]
fn cgroup_stats_through_the_c_api() {
    let broker = ChildBroker::start("cgroup-stats");
    let path = broker.c_path();
    let mut c = ptr::null_mut();
    expect(unsafe { dmabroker_client_connect(path.as_ptr(), &raw mut c) }, Status::DMABROKER_OK);
    let mut b = ptr::null_mut();
    expect(
        unsafe { dmabroker_client_alloc(c, c"memfd".as_ptr(), 8192, ptr::null(), &raw mut b) },
        Status::DMABROKER_OK,
    );
    let mut s = ptr::dangling_mut::<CgroupStats>();
    expect(unsafe { dmabroker_client_get_cgroup_stats(ptr::null(), &raw mut s) }, INVALID);
    assert!(s.is_null(), "a failed call leaves its handle NULL");
    expect(unsafe { dmabroker_client_get_cgroup_stats(c, ptr::null_mut()) }, INVALID);
    expect(unsafe { dmabroker_client_get_cgroup_stats(c, &raw mut s) }, Status::DMABROKER_OK);

    let mut info: CgroupInfo = unsafe { std::mem::zeroed() };
    info.struct_size = std::mem::size_of::<CgroupInfo>();
    expect(unsafe { dmabroker_cgroup_stats_get_info(s, &raw mut info) }, Status::DMABROKER_OK);
    assert_eq!(info.struct_size, std::mem::size_of::<CgroupInfo>());
    assert!(info.available, "a v4 broker reports the cgroup");
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let own = own.lines().find_map(|l| l.strip_prefix("0::")).map(str::to_owned);
    if let Some(own) = own {
        assert!(!info.path.is_null(), "{}", unsafe { CStr::from_ptr(info.unknown) }.to_string_lossy());
        assert_eq!(unsafe { CStr::from_ptr(info.path) }.to_str().unwrap(), own);
        assert!(info.unknown.is_null());
        assert!(info.used_bytes >= 8192 && info.used_buffers >= 1, "{} bytes, {}", info.used_bytes, info.used_buffers);
    }
    assert_eq!(info.rule_count, 0, "the built-in policy has no [[cgroup]] rule");
    let mut rule: CgroupRuleInfo = unsafe { std::mem::zeroed() };
    rule.struct_size = std::mem::size_of::<CgroupRuleInfo>();
    expect(unsafe { dmabroker_cgroup_stats_get_rule(s, 0, &raw mut rule) }, INVALID);
    assert!(last_error().contains("out of range"), "{}", last_error());

    // An older caller's smaller struct: only its bytes are written.
    let mut short: CgroupInfo = unsafe { std::mem::zeroed() };
    short.used_bytes = 77;
    short.struct_size = std::mem::offset_of!(CgroupInfo, used_bytes);
    expect(unsafe { dmabroker_cgroup_stats_get_info(s, &raw mut short) }, Status::DMABROKER_OK);
    assert_eq!(short.struct_size, std::mem::offset_of!(CgroupInfo, used_bytes));
    assert!(short.available);
    assert_eq!(short.used_bytes, 77, "a byte past struct_size was written");
    // No size set: refused, naming the field.
    let mut unset: CgroupInfo = unsafe { std::mem::zeroed() };
    expect(unsafe { dmabroker_cgroup_stats_get_info(s, &raw mut unset) }, INVALID);
    assert!(last_error().contains("struct_size"), "{}", last_error());
    expect(unsafe { dmabroker_cgroup_stats_get_info(ptr::null(), &raw mut info) }, INVALID);
    expect(unsafe { dmabroker_cgroup_stats_get_info(s, ptr::null_mut()) }, INVALID);

    unsafe { dmabroker_cgroup_stats_free(s) };
    unsafe { dmabroker_cgroup_stats_free(ptr::null_mut()) };
    unsafe { dmabroker_buffer_free(b) };
    unsafe { dmabroker_client_free(c) };
}
