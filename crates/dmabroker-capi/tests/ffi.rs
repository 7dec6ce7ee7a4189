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

fn last_error() -> String {
    unsafe { CStr::from_ptr(dmabroker_last_error()) }
        .to_string_lossy()
        .into_owned()
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
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// A memfd with a name no other test uses, so `target` tells it apart.
fn memfd(len: u64) -> OwnedFd {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let name = format!(
        "capi-test-{}",
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let fd = rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&fd, len).unwrap();
    fd
}

fn alloc(len: u64) -> *mut Buffer {
    let mut b = ptr::null_mut();
    expect(
        unsafe { dmabroker_alloc(ptr::null(), c"memfd".as_ptr(), len, ptr::null(), &mut b) },
        Status::DMABROKER_OK,
    );
    b
}

#[test]
fn heaps_reject_null_and_out_of_range() {
    expect(
        unsafe { dmabroker_heaps_discover(ptr::null_mut()) },
        INVALID,
    );
    let mut heaps = ptr::null_mut();
    expect(
        unsafe { dmabroker_heaps_discover(&mut heaps) },
        Status::DMABROKER_OK,
    );
    let n = unsafe { dmabroker_heaps_count(heaps) };
    assert!(n >= 1, "memfd is always there");
    assert_eq!(unsafe { dmabroker_heaps_count(ptr::null()) }, 0);
    let mut info = std::mem::MaybeUninit::<HeapInfo>::uninit();
    expect(
        unsafe { dmabroker_heaps_get_info(heaps, n, info.as_mut_ptr()) },
        INVALID,
    );
    expect(
        unsafe { dmabroker_heaps_get_info(ptr::null(), 0, info.as_mut_ptr()) },
        INVALID,
    );
    expect(
        unsafe { dmabroker_heaps_get_info(heaps, 0, ptr::null_mut()) },
        INVALID,
    );
    let names: Vec<String> = (0..n)
        .map(|i| {
            expect(
                unsafe { dmabroker_heaps_get_info(heaps, i, info.as_mut_ptr()) },
                Status::DMABROKER_OK,
            );
            let info = unsafe { info.assume_init() };
            assert!(info.page_size >= 4096);
            unsafe { CStr::from_ptr(info.name) }
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert!(names.iter().any(|n| n == "memfd"), "{names:?}");
    unsafe { dmabroker_heaps_free(heaps) };
    unsafe { dmabroker_heaps_free(ptr::null_mut()) };
}

#[test]
fn alloc_rejects_bad_requests() {
    let mut b: *mut Buffer = ptr::dangling_mut::<Buffer>();
    expect(
        unsafe { dmabroker_alloc(ptr::null(), ptr::null(), 4096, ptr::null(), &mut b) },
        INVALID,
    );
    assert!(b.is_null(), "out is cleared on failure");
    expect(
        unsafe { dmabroker_alloc(ptr::null(), c"memfd".as_ptr(), 0, ptr::null(), &mut b) },
        INVALID,
    );
    expect(
        unsafe { dmabroker_alloc(ptr::null(), c"nope".as_ptr(), 4096, ptr::null(), &mut b) },
        Status::DMABROKER_ERROR_NO_SUCH_HEAP,
    );
    assert!(
        last_error().contains("memfd"),
        "the message lists the heaps: {}",
        last_error()
    );
    expect(
        unsafe {
            dmabroker_alloc(
                ptr::null(),
                c"memfd".as_ptr(),
                4096,
                ptr::null(),
                ptr::null_mut(),
            )
        },
        INVALID,
    );
    let bad_utf8 = [0xffu8, 0xfe, 0];
    expect(
        unsafe {
            dmabroker_alloc(
                ptr::null(),
                bad_utf8.as_ptr().cast(),
                4096,
                ptr::null(),
                &mut b,
            )
        },
        INVALID,
    );
    let options = AllocOptions {
        align: 3,
        name: ptr::null(),
        contiguous: false,
        non_coherent: false,
    };
    expect(
        unsafe { dmabroker_alloc(ptr::null(), c"memfd".as_ptr(), 4096, &options, &mut b) },
        INVALID,
    );
    let options = AllocOptions {
        align: 0,
        name: ptr::null(),
        contiguous: true,
        non_coherent: false,
    };
    expect(
        unsafe { dmabroker_alloc(ptr::null(), c"memfd".as_ptr(), 1 << 24, &options, &mut b) },
        Status::DMABROKER_ERROR_UNSUPPORTED,
    );
    expect(
        unsafe {
            dmabroker_alloc(
                ptr::null(),
                c"memfd".as_ptr(),
                u64::MAX,
                ptr::null(),
                &mut b,
            )
        },
        INVALID,
    );
    assert!(b.is_null());
}

#[test]
fn named_allocation_reports_its_info() {
    let options = AllocOptions {
        align: 4096,
        name: c"capi-info".as_ptr(),
        contiguous: false,
        non_coherent: false,
    };
    let mut b = ptr::null_mut();
    expect(
        unsafe { dmabroker_alloc(ptr::null(), c"memfd".as_ptr(), 5000, &options, &mut b) },
        Status::DMABROKER_OK,
    );
    let mut info = std::mem::MaybeUninit::<BufferInfo>::uninit();
    expect(
        unsafe { dmabroker_buffer_get_info(b, info.as_mut_ptr()) },
        Status::DMABROKER_OK,
    );
    let info = unsafe { info.assume_init() };
    assert_eq!(info.len, 8192, "rounded up to pages");
    assert_eq!(info.kind, BufferKind::Memfd);
    assert_eq!(unsafe { CStr::from_ptr(info.heap) }, c"memfd");
    assert!(unsafe { CStr::from_ptr(info.name) }
        .to_string_lossy()
        .contains("capi-info"));
    assert!(info.inode != 0 && info.size_sealed && !info.device_importable);
    assert_eq!(unsafe { dmabroker_buffer_len(b) }, 8192);
    expect(
        unsafe { dmabroker_buffer_get_info(b, ptr::null_mut()) },
        INVALID,
    );
    expect(
        unsafe { dmabroker_buffer_get_info(ptr::null(), &mut std::mem::zeroed()) },
        INVALID,
    );
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
    expect(
        unsafe { dmabroker_buffer_dup_fd(b, &mut fd) },
        Status::DMABROKER_OK,
    );
    assert!(fd >= 0 && fd != borrowed);
    let mut bad_fd = 0;
    expect(
        unsafe { dmabroker_buffer_dup_fd(ptr::null(), &mut bad_fd) },
        INVALID,
    );
    assert_eq!(bad_fd, -1, "fd_out is -1 on failure");
    expect(
        unsafe { dmabroker_buffer_dup_fd(b, ptr::null_mut()) },
        INVALID,
    );

    // Bad fd numbers are refused and nothing is closed.
    let mut out: *mut Buffer = ptr::dangling_mut::<Buffer>();
    expect(
        unsafe { dmabroker_buffer_from_fd(-1, TAKE, &mut out) },
        INVALID,
    );
    assert!(out.is_null());
    expect(
        unsafe { dmabroker_buffer_from_fd(999_999, TAKE, &mut out) },
        INVALID,
    );
    expect(
        unsafe { dmabroker_buffer_from_fd(999_999, DUP, &mut out) },
        INVALID,
    );
    expect(
        unsafe { dmabroker_buffer_from_fd(borrowed, 7, &mut out) },
        INVALID,
    );
    assert_eq!(
        target(borrowed),
        borrowed_target,
        "an unknown ownership value touches nothing"
    );

    // A pipe: DUP leaves it open, TAKE closes it even though the call fails.
    let (r, w) = rustix::pipe::pipe().unwrap();
    let r = r.into_raw_fd();
    let pipe = target(r);
    expect(
        unsafe { dmabroker_buffer_from_fd(r, DUP, &mut out) },
        Status::DMABROKER_ERROR_NOT_A_BUFFER,
    );
    assert_eq!(target(r), pipe);
    expect(
        unsafe { dmabroker_buffer_from_fd(r, TAKE, &mut out) },
        Status::DMABROKER_ERROR_NOT_A_BUFFER,
    );
    assert_ne!(target(r), pipe, "TAKE owns the fd even on failure");
    drop(w);
    // An empty memfd is not a buffer either.
    let empty = memfd(0).into_raw_fd();
    expect(
        unsafe { dmabroker_buffer_from_fd(empty, TAKE, &mut out) },
        Status::DMABROKER_ERROR_NOT_A_BUFFER,
    );
    // A NULL out with TAKE still takes (and closes) the fd.
    let m = memfd(4096).into_raw_fd();
    let m_target = target(m);
    expect(
        unsafe { dmabroker_buffer_from_fd(m, TAKE, ptr::null_mut()) },
        INVALID,
    );
    assert_ne!(target(m), m_target);

    // The dup imports as the same buffer.
    expect(
        unsafe { dmabroker_buffer_from_fd(fd, TAKE, &mut out) },
        Status::DMABROKER_OK,
    );
    let (mut a, mut c) = unsafe {
        (
            std::mem::zeroed::<BufferInfo>(),
            std::mem::zeroed::<BufferInfo>(),
        )
    };
    expect(
        unsafe { dmabroker_buffer_get_info(b, &mut a) },
        Status::DMABROKER_OK,
    );
    expect(
        unsafe { dmabroker_buffer_get_info(out, &mut c) },
        Status::DMABROKER_OK,
    );
    assert_eq!(a.inode, c.inode);
    unsafe { dmabroker_buffer_free(out) };
    assert_eq!(
        target(borrowed),
        borrowed_target,
        "the original handle's fd is untouched"
    );
    unsafe { dmabroker_buffer_free(b) };
}

#[test]
fn mapping_brackets_access_and_refuses_a_second_begin() {
    let b = alloc(8192);
    let mut m: *mut Mapping = ptr::dangling_mut::<Mapping>();
    expect(
        unsafe { dmabroker_buffer_map(ptr::null(), MapMode::Read as u32, &mut m) },
        INVALID,
    );
    assert!(m.is_null());
    expect(unsafe { dmabroker_buffer_map(b, 42, &mut m) }, INVALID);
    expect(
        unsafe { dmabroker_buffer_map(b, MapMode::Read as u32, ptr::null_mut()) },
        INVALID,
    );
    expect(
        unsafe { dmabroker_buffer_map(b, MapMode::ReadWrite as u32, &mut m) },
        Status::DMABROKER_OK,
    );
    assert_eq!(unsafe { dmabroker_mapping_len(m) }, 8192);
    assert_eq!(unsafe { dmabroker_mapping_len(ptr::null()) }, 0);

    let (mut data, mut len): (*mut c_void, usize) = (ptr::null_mut(), 0);
    expect(
        unsafe { dmabroker_mapping_end(m) },
        Status::DMABROKER_ERROR_NOT_BEGUN,
    );
    expect(
        unsafe { dmabroker_mapping_begin(m, 3, &mut data, &mut len) },
        INVALID,
    );
    expect(
        unsafe { dmabroker_mapping_begin(m, Access::Write as u32, ptr::null_mut(), &mut len) },
        INVALID,
    );
    expect(
        unsafe { dmabroker_mapping_begin(m, Access::Write as u32, &mut data, ptr::null_mut()) },
        INVALID,
    );
    expect(
        unsafe { dmabroker_mapping_begin(ptr::null(), Access::Write as u32, &mut data, &mut len) },
        INVALID,
    );
    expect(
        unsafe { dmabroker_mapping_begin(m, Access::Write as u32, &mut data, &mut len) },
        Status::DMABROKER_OK,
    );
    assert_eq!(len, 8192);
    unsafe { std::slice::from_raw_parts_mut(data.cast::<u8>(), len) }.fill(0x5a);
    let (mut d2, mut l2): (*mut c_void, usize) = (ptr::dangling_mut::<c_void>(), 1);
    expect(
        unsafe { dmabroker_mapping_begin(m, Access::Read as u32, &mut d2, &mut l2) },
        Status::DMABROKER_ERROR_BUSY,
    );
    assert!(d2.is_null() && l2 == 0);
    expect(unsafe { dmabroker_mapping_end(m) }, Status::DMABROKER_OK);
    expect(
        unsafe { dmabroker_mapping_end(m) },
        Status::DMABROKER_ERROR_NOT_BEGUN,
    );
    expect(unsafe { dmabroker_mapping_end(ptr::null()) }, INVALID);
    // Freed with an access active: the free ends it.
    expect(
        unsafe { dmabroker_mapping_begin(m, Access::ReadWrite as u32, &mut data, &mut len) },
        Status::DMABROKER_OK,
    );
    unsafe { dmabroker_mapping_free(m) };

    // A read-only mapping refuses write access; the buffer handle can go first.
    expect(
        unsafe { dmabroker_buffer_map(b, MapMode::Read as u32, &mut m) },
        Status::DMABROKER_OK,
    );
    unsafe { dmabroker_buffer_free(b) };
    expect(
        unsafe { dmabroker_mapping_begin(m, Access::Write as u32, &mut data, &mut len) },
        Status::DMABROKER_ERROR_READ_ONLY,
    );
    expect(
        unsafe { dmabroker_mapping_begin(m, Access::Read as u32, &mut data, &mut len) },
        Status::DMABROKER_OK,
    );
    let bytes = unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) };
    assert!(
        bytes.iter().all(|&x| x == 0x5a),
        "the mapping kept the buffer alive"
    );
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
    expect(
        unsafe { dmabroker_buffer_from_fd(ro.into_raw_fd(), TAKE, &mut b) },
        Status::DMABROKER_OK,
    );
    let mut m = ptr::null_mut();
    expect(
        unsafe { dmabroker_buffer_map(b, MapMode::ReadWrite as u32, &mut m) },
        Status::DMABROKER_ERROR_READ_ONLY,
    );
    unsafe { dmabroker_buffer_free(b) };
}

#[test]
fn segments_use_the_two_call_protocol() {
    let b = alloc(4096);
    let mut count = 7;
    expect(
        unsafe { dmabroker_buffer_segments(ptr::null(), ptr::null_mut(), 0, &mut count) },
        INVALID,
    );
    assert_eq!(count, 0);
    expect(
        unsafe { dmabroker_buffer_segments(b, ptr::null_mut(), 0, ptr::null_mut()) },
        INVALID,
    );
    expect(
        unsafe { dmabroker_buffer_segments(b, ptr::null_mut(), 4, &mut count) },
        INVALID,
    );
    match unsafe { dmabroker_buffer_segments(b, ptr::null_mut(), 0, &mut count) } {
        Status::DMABROKER_ERROR_PERMISSION_DENIED => {
            println!("SKIP segments: {} (needs CAP_SYS_ADMIN)", last_error());
        }
        Status::DMABROKER_ERROR_BUFFER_TOO_SMALL => {
            assert_eq!(count, 1, "one page is one segment");
            let mut segs = [Segment {
                phys_addr: 0,
                len: 0,
            }; 1];
            expect(
                unsafe { dmabroker_buffer_segments(b, segs.as_mut_ptr(), 1, &mut count) },
                Status::DMABROKER_OK,
            );
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
    expect(
        unsafe { dmabroker_buffer_clone(ptr::null(), &mut c) },
        INVALID,
    );
    assert!(c.is_null());
    expect(
        unsafe { dmabroker_buffer_clone(b, ptr::null_mut()) },
        INVALID,
    );
    expect(
        unsafe { dmabroker_buffer_clone(b, &mut c) },
        Status::DMABROKER_OK,
    );
    assert_eq!(unsafe { dmabroker_buffer_fd(b) }, unsafe {
        dmabroker_buffer_fd(c)
    });
    unsafe { dmabroker_buffer_free(b) };
    assert_eq!(unsafe { dmabroker_buffer_len(c) }, 4096);
    unsafe { dmabroker_buffer_free(c) };
}

#[test]
fn panics_become_a_status_and_messages_are_per_thread() {
    expect(
        dmabroker_private_test_panic(),
        Status::DMABROKER_ERROR_PANIC,
    );
    assert!(last_error().contains("panic"));
    // Another thread has its own message.
    let other = std::thread::spawn(|| {
        let before = last_error();
        expect(
            unsafe { dmabroker_heaps_discover(ptr::null_mut()) },
            INVALID,
        );
        (before, last_error())
    })
    .join()
    .unwrap();
    assert_eq!(other.0, "", "a fresh thread starts with no message");
    assert!(other.1.contains("NULL"));
    assert!(
        last_error().contains("panic"),
        "this thread's message is untouched"
    );
}

#[test]
fn status_names_and_version() {
    let name = |s: u32| {
        unsafe { CStr::from_ptr(dmabroker_status_name(s)) }
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(name(0), "DMABROKER_OK");
    assert_eq!(
        name(Status::DMABROKER_ERROR_NOT_BEGUN as u32),
        "DMABROKER_ERROR_NOT_BEGUN"
    );
    assert_eq!(name(12345), "DMABROKER_UNKNOWN_STATUS");
    let version = unsafe { CStr::from_ptr(dmabroker_version()) }
        .to_str()
        .unwrap();
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
}

#[test]
fn client_calls_refuse_null_and_report_a_missing_broker() {
    let mut c: *mut Client = ptr::dangling_mut::<Client>();
    expect(
        unsafe { dmabroker_client_connect(c"/nonexistent/dmabroker.sock".as_ptr(), &mut c) },
        Status::DMABROKER_ERROR_NO_BROKER,
    );
    assert!(c.is_null());
    assert!(last_error().contains("dmabroker serve"), "{}", last_error());
    expect(
        unsafe { dmabroker_client_connect(ptr::null(), ptr::null_mut()) },
        INVALID,
    );
    let mut b = ptr::null_mut();
    expect(
        unsafe {
            dmabroker_client_alloc(ptr::null(), c"memfd".as_ptr(), 4096, ptr::null(), &mut b)
        },
        INVALID,
    );
    let mut key = ptr::dangling_mut::<std::ffi::c_char>();
    expect(
        unsafe { dmabroker_client_publish(ptr::null(), ptr::null(), ptr::null(), &mut key) },
        INVALID,
    );
    assert!(key.is_null());
    expect(
        unsafe { dmabroker_client_import(ptr::null(), c"x".as_ptr(), &mut b, ptr::null_mut()) },
        INVALID,
    );
    expect(
        unsafe { dmabroker_client_unpublish(ptr::null(), c"x".as_ptr()) },
        INVALID,
    );
    unsafe { dmabroker_client_free(ptr::null_mut()) };
    unsafe { dmabroker_string_free(ptr::null_mut()) };
}
