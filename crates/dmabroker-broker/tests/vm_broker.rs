//! The broker on real dma-bufs (the test VM: `vm/run.sh`): it allocates from
//! `dma-heap/system` and `udmabuf` for a client, publishes by name and by
//! token, and a second client running as another uid imports and reads
//! exactly what the first wrote, through the `DMA_BUF_IOCTL_SYNC` guards.
//! Read-only grants are refused for dma-bufs; a dma-buf's charge ends when
//! its last holder closes it (`count:` in fdinfo).
//!
//! The broker runs in a thread of this process; the other user is a thread
//! that changes its own uid (credentials are per thread on Linux, and
//! `SO_PEERCRED` records the connecting thread's). On a host without
//! `/dev/dma_heap/system` each test prints `SKIP <test>: <reason>` and
//! passes, unless `DMABROKER_VM=1` (set inside the VM), where it fails.

use dmabroker::client::{AllocateError, Client, ImportError, PublishError, PublishOptions};
use dmabroker::fdinfo::FdInfo;
use dmabroker::proto::{Access, Grant};
use dmabroker::{Buffer, BufferKind};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::time::{Duration, Instant};

mod common;

use common::{as_user, eventually, TestBroker, NOBODY};

const SYSTEM_HEAP: &str = "/dev/dma_heap/system";

/// Whether this run is inside the test VM, where skipping is a failure.
fn in_vm() -> bool {
    std::env::var("DMABROKER_VM").as_deref() == Ok("1")
}

/// `false` (after printing `SKIP`) when the test cannot run here; a panic
/// inside the VM, where everything must be present.
fn can_run(test: &str, device: &str) -> bool {
    let mut missing = vec![SYSTEM_HEAP, device];
    missing.dedup();
    missing.retain(|d| !Path::new(d).exists());
    let reason = if !missing.is_empty() {
        format!("no {} (the test VM has it: vm/run.sh)", missing.join(", "))
    } else if !rustix::process::geteuid().is_root() {
        format!("needs root to act as uid {NOBODY}")
    } else {
        return true;
    };
    assert!(!in_vm(), "{test}: needed in the VM but unavailable: {reason}");
    let _ = writeln!(std::io::stderr().lock(), "SKIP {test}: {reason}");
    false
}

/// A deterministic byte pattern for `seed`.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Write through a mapping, inside `DMA_BUF_IOCTL_SYNC` start/end (CpuWrite).
fn write_all(buffer: &Buffer, bytes: &[u8]) {
    let mut map = buffer.map_read_write().unwrap();
    let mut w = map.begin_write().unwrap();
    w.copy_from_slice(bytes);
}

/// Read through a mapping, inside `DMA_BUF_IOCTL_SYNC` start/end (CpuRead).
fn read_all(buffer: &Buffer) -> Vec<u8> {
    let mut map = buffer.map_read().unwrap();
    let r = map.begin_read().unwrap();
    r.to_vec()
}

fn fdinfo(buffer: &Buffer) -> FdInfo {
    FdInfo::read(None, buffer.as_fd().as_raw_fd()).unwrap()
}

fn rw(uid: u32) -> Grant {
    format!("uid={uid}:rw").parse().unwrap()
}

/// fdinfo once the file count has settled at `expected` (or after 5 s): the
/// broker's event loop may still hold the dup it sent for a moment after
/// our receive returned.
fn settled_fdinfo(buffer: &Buffer, expected: u64) -> FdInfo {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut info = fdinfo(buffer);
    while info.file_count() != Some(expected) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
        info = fdinfo(buffer);
    }
    info
}

/// Allocate through the broker, publish by name and by token, import as
/// another uid, read what the publisher wrote, write back.
fn share_across_users(test: &str, heap: &'static str, device: &str, exporter: &'static str) {
    if !can_run(test, device) {
        return;
    }
    const LEN: usize = 1 << 20;
    let broker = TestBroker::start(test, None);
    let mut c = broker.client();
    let buffer = c.allocate(heap, LEN as u64, Some("vmtest")).unwrap();
    assert_eq!(buffer.kind(), BufferKind::DmaBuf, "{heap} gave a {}", buffer.kind());
    assert_eq!(buffer.len(), LEN as u64);
    let info = settled_fdinfo(&buffer, 2);
    assert_eq!(info.exporter(), Some(exporter), "{info:?}");
    assert_eq!(info.file_count(), Some(2), "the broker keeps its own reference besides ours: {info:?}");
    let first = pattern(1, LEN);
    write_all(&buffer, &first);

    // Read-only grants cannot be enforced on a dma-buf: refused, documented message.
    for ro in [format!("uid={NOBODY}:ro"), "any:ro".to_owned()] {
        let e = c.publish(&buffer, PublishOptions::named(format!("{test}-ro")).grant(ro.parse().unwrap())).unwrap_err();
        assert!(matches!(e, PublishError::ReadOnlyUnsupported(_)), "{ro}: {e}");
        assert!(e.to_string().contains("read-only grants are refused for dma-bufs"), "{e}");
    }
    let name = format!("cam/{test}");
    assert_eq!(c.publish(&buffer, PublishOptions::named(&name).grant(rw(NOBODY))).unwrap(), name);
    let token = c.publish(&buffer, PublishOptions::token().grant(rw(NOBODY))).unwrap();
    assert!(token.starts_with('@') && token.len() == 33, "{token}");
    let (list, _) = c.list().unwrap();
    assert!(list.iter().any(|e| e.key == name && e.heap == heap && e.len == LEN as u64), "{list:?}");

    let path = broker.path.clone();
    let inode = buffer.inode();
    let (n, t) = (name.clone(), token.clone());
    let second = pattern(2, LEN);
    let back = second.clone();
    as_user(NOBODY, move || {
        let mut other = Client::connect(&path).unwrap();
        assert!(matches!(other.allocate(heap, 4096, None), Err(AllocateError::NotAllowed(_))));
        let (list, _) = other.list().unwrap();
        let keys: Vec<_> = list.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, [n.as_str()], "tokens are listed to their publisher only");
        let imported = other.import(&n).unwrap();
        assert_eq!((imported.access, imported.publisher_uid), (Access::ReadWrite, 0));
        let b = &imported.buffer;
        assert_eq!((b.kind(), b.len(), b.inode()), (BufferKind::DmaBuf, LEN as u64, inode));
        // What the kernel says of the importer's fd.
        let info = fdinfo(b);
        assert_eq!(info.exporter(), Some(exporter), "{info:?}");
        assert_eq!(info.dma_buf_size(), Some(LEN as u64), "{info:?}");
        assert!(info.file_count().unwrap() >= 3, "broker + publisher + importer: {info:?}");
        assert!(read_all(b) == first, "the importer did not read what the publisher wrote");
        let by_token = other.import(&t).unwrap();
        assert_eq!(by_token.buffer.inode(), inode);
        assert!(read_all(&by_token.buffer) == first);
        write_all(&by_token.buffer, &back);
        assert!(matches!(other.import("cam/nothing"), Err(ImportError::NotFound(_))));
    });
    assert!(read_all(&buffer) == second, "the publisher did not read what the importer wrote");
}

#[test]
fn dma_heap_system_shared_across_users() {
    share_across_users("dma_heap_system_shared_across_users", "dma-heap/system", SYSTEM_HEAP, "system");
}

#[test]
fn udmabuf_shared_across_users() {
    share_across_users("udmabuf_shared_across_users", "udmabuf", "/dev/udmabuf", "udmabuf");
}

/// Poll the broker's view of this uid until `used_buffers == want`.
fn wait_for_usage(c: &mut Client, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = c.stats().unwrap();
        if s.used_buffers == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "usage stayed at {} buffers / {} bytes, expected {want} buffers",
            s.used_buffers,
            s.used_bytes
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The quota is charged per dma-buf and the charge ends only when the last
/// holder (publisher, importer of another uid) has closed it.
fn quota_follows_last_holder(test: &str, heap: &str, device: &str) {
    if !can_run(test, device) {
        return;
    }
    const LEN: u64 = 256 << 10;
    let uid = rustix::process::getuid().as_raw();
    let policy =
        format!("[[user]]\nuid = {uid}\nheaps = [\"{heap}\"]\nmax_bytes = \"1MiB\"\nmax_buffers = 2\npublish = true\n");
    let broker = TestBroker::start(test, Some(&policy));
    let mut c = broker.client();
    let a = c.allocate(heap, LEN, None).unwrap();
    let b = c.allocate(heap, LEN, None).unwrap();
    assert_eq!(a.kind(), BufferKind::DmaBuf);
    let s = c.stats().unwrap();
    assert_eq!((s.used_buffers, s.used_bytes, s.max_buffers), (2, 2 * LEN, 2));
    let e = c.allocate(heap, LEN, None).unwrap_err();
    assert!(matches!(e, AllocateError::QuotaExceeded(_)), "{e}");
    assert!(e.to_string().contains("quota of 1 MiB / 2 buffers"), "{e}");

    // Hand `a` to another uid, then let the publisher let go of it entirely.
    let key = format!("q/{test}");
    c.publish(&a, PublishOptions::named(&key).grant(rw(NOBODY))).unwrap();
    let path = broker.path.clone();
    let k = key.clone();
    let held = as_user(NOBODY, move || Client::connect(&path).unwrap().import(&k).unwrap().buffer);
    assert_eq!(held.inode(), a.inode());
    write_all(&held, &pattern(3, LEN as usize));
    drop(a);
    c.unpublish(&key).unwrap();
    assert_eq!(settled_fdinfo(&held, 2).file_count(), Some(2), "only the broker and the importer are left");
    // The importer of another uid still holds it: still charged to us.
    std::thread::sleep(Duration::from_millis(300));
    let e = c.allocate(heap, LEN, None).unwrap_err();
    assert!(matches!(e, AllocateError::QuotaExceeded(_)), "a buffer held by another user must stay charged: {e}");
    assert_eq!(c.stats().unwrap().used_buffers, 2);
    // Its last holder closes it: the charge ends (the quota check sweeps).
    drop(held);
    let d = eventually("allocating after the last holder closed", || c.allocate(heap, LEN, None));
    assert_eq!(c.stats().unwrap().used_buffers, 2);
    // And the background sweep releases what nobody holds.
    drop((b, d));
    wait_for_usage(&mut c, 0);
    assert_eq!(c.stats().unwrap().used_bytes, 0);
}

#[test]
fn dma_heap_system_quota_released_by_last_holder() {
    quota_follows_last_holder("dma_heap_system_quota_released_by_last_holder", "dma-heap/system", SYSTEM_HEAP);
}

#[test]
fn udmabuf_quota_released_by_last_holder() {
    quota_follows_last_holder("udmabuf_quota_released_by_last_holder", "udmabuf", "/dev/udmabuf");
}

/// Allocation by constraints (`AllocateFor`) for a device that imports a
/// dma-buf: the broker chooses a dma-buf heap, and only among those the
/// policy allows.
#[test]
fn allocate_for_a_dma_buf_importer_chooses_a_dma_buf_heap() {
    let test = "allocate_for_a_dma_buf_importer_chooses_a_dma_buf_heap";
    if !can_run(test, SYSTEM_HEAP) {
        return;
    }
    let gpu = dmabroker::constraints::Constraints::builder("gpu0").dma_buf(true).build().unwrap();
    // Every heap allowed: udmabuf (cheaper) or dma-heap/system.
    let broker = TestBroker::start(test, None);
    let got = broker.client().allocate_for(&gpu, 64 << 10, Some("for-gpu")).unwrap();
    assert_eq!(got.buffer.kind(), BufferKind::DmaBuf);
    assert!(["udmabuf", "dma-heap/system"].contains(&got.choice.heap.as_str()), "{:?}", got.choice);
    assert!(got.choice.reasons.iter().any(|r| r.contains("gpu0 needs a dma-buf")), "{:?}", got.choice);
    drop(broker);
    // The policy allows memfd and the system heap only: the system heap,
    // with udmabuf (where present) passed over for the policy.
    let uid = rustix::process::getuid().as_raw();
    let policy = format!(
        "[[user]]\nuid = {uid}\nheaps = [\"memfd\", \"dma-heap/system\"]\nmax_bytes = \"1MiB\"\nmax_buffers = 2\n"
    );
    let broker = TestBroker::start(&format!("{test}-policy"), Some(&policy));
    let mut c = broker.client();
    let got = c.allocate_for(&gpu, 64 << 10, None).unwrap();
    assert_eq!(got.choice.heap, "dma-heap/system", "{:?}", got.choice);
    assert_eq!(got.buffer.kind(), BufferKind::DmaBuf);
    if Path::new("/dev/udmabuf").exists() {
        assert!(
            got.choice.passed_over.iter().any(|p| p.starts_with("udmabuf") && p.contains("not allowed by policy")),
            "{:?}",
            got.choice
        );
    }
    assert_eq!(c.stats().unwrap().used_bytes, 64 << 10, "charged as Allocate");
}
