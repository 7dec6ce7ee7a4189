//! Real-kernel heap tests: every allocator, CPU access bracketed by
//! `DMA_BUF_IOCTL_SYNC`, `/proc/self/fdinfo` accounting, and a buffer handed to
//! a second process over `SCM_RIGHTS`. Run in the VM by `vm/run.sh`; on a host
//! without the feature each test prints `SKIP` and passes.

mod vm_common;

use dmabroker::fdinfo::FdInfo;
use dmabroker::heap::Heaps;
use dmabroker::{Buffer, BufferKind};
use rustix::net::{
    recvmsg, sendmsg, socketpair, AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::{Command, Stdio};
use vm_common::{allocate, pattern};

/// Allocate, write a pattern through a write guard, read it back through a
/// fresh mapping's read guard, and check what the kernel accounts.
fn heap_round_trip(test: &str, heap: &str, len: u64) {
    let heaps = Heaps::discover();
    let buffer = require!(test, allocate(&heaps, heap, len), "heap {heap}");
    assert!(buffer.len() >= len, "{heap}: {} bytes, asked {len}", buffer.len());
    let data = pattern(len ^ 0x5a, buffer.len() as usize);
    {
        let mut map = buffer.map_read_write().expect("map read-write");
        let mut w = map.begin_write().expect("begin_write (SYNC_START|WRITE)");
        w.copy_from_slice(&data);
    } // SYNC_END, munmap
    let mut map = buffer.map_read().expect("map read-only");
    let r = map.begin_read().expect("begin_read (SYNC_START|READ)");
    assert!(r[..] == data[..], "{heap}: read back differs from what was written");
    drop(r);

    let info = FdInfo::read(None, buffer.as_fd().as_raw_fd()).expect("fdinfo");
    match buffer.kind() {
        BufferKind::DmaBuf => {
            assert!(info.is_dma_buf(), "{heap}: fdinfo lacks exp_name: {info:?}");
            assert_eq!(info.dma_buf_size(), Some(buffer.len()), "{heap}: fdinfo size");
            let want = if heap == "udmabuf" { "udmabuf" } else { heap.trim_start_matches("dma-heap/") };
            assert_eq!(info.exporter(), Some(want), "{heap}: fdinfo exp_name");
            assert_eq!(info.dma_buf_name(), Some("vmtest"), "{heap}: DMA_BUF_SET_NAME not visible in fdinfo");
        }
        BufferKind::Memfd | BufferKind::HugetlbMemfd => {
            assert!(!info.is_dma_buf(), "{heap}: a memfd reported as dma-buf");
            assert_eq!(rustix::fs::fstat(&buffer).unwrap().st_size as u64, buffer.len());
        }
    }
    // Adopting a duplicate of the fd must recognise the same kind and length.
    let adopted = Buffer::from_fd(buffer.try_clone_fd().unwrap()).expect("Buffer::from_fd of our own buffer");
    assert_eq!(adopted.kind(), buffer.kind(), "{heap}: adopted kind");
    assert_eq!(adopted.len(), buffer.len(), "{heap}: adopted length");
}

#[test]
fn heap_dma_heap_system() {
    heap_round_trip("heap_dma_heap_system", "dma-heap/system", 3 << 20);
}

#[test]
fn heap_udmabuf() {
    heap_round_trip("heap_udmabuf", "udmabuf", 1 << 20);
}

#[test]
fn heap_memfd() {
    heap_round_trip("heap_memfd", "memfd", 1 << 20);
}

#[test]
fn heap_hugetlb() {
    heap_round_trip("heap_hugetlb", "hugetlb", 4 << 20);
}

/// Many live buffers: fdinfo must account each one separately and in full.
#[test]
fn fdinfo_accounts_every_allocation() {
    let test = "fdinfo_accounts_every_allocation";
    let heaps = Heaps::discover();
    let sizes = [4096u64, 1 << 20, 5 << 20];
    let mut bufs = Vec::new();
    for heap in ["dma-heap/system", "udmabuf"] {
        for len in sizes {
            bufs.push(require!(test, allocate(&heaps, heap, len), "heap {heap}"));
        }
    }
    let mut total = 0;
    for b in &bufs {
        let info = FdInfo::read(None, b.as_fd().as_raw_fd()).unwrap();
        assert_eq!(info.dma_buf_size(), Some(b.len()));
        assert_eq!(info.file_count(), Some(1), "one file reference per fresh buffer: {info:?}");
        total += info.dma_buf_size().unwrap();
    }
    assert_eq!(total, 2 * sizes.iter().sum::<u64>());
}

const CHILD_ENV: &str = "DMABROKER_VM_SCM_CHILD";

fn send_fd(sock: impl AsFd, fd: impl AsFd, bytes: &[u8]) {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut cmsg = SendAncillaryBuffer::new(&mut space);
    let fds = [fd.as_fd()];
    assert!(cmsg.push(SendAncillaryMessage::ScmRights(&fds)));
    let n = sendmsg(sock, &[IoSlice::new(bytes)], &mut cmsg, SendFlags::empty()).expect("sendmsg");
    assert_eq!(n, bytes.len());
}

fn recv_fd(sock: impl AsFd, bytes: &mut [u8]) -> OwnedFd {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut cmsg = RecvAncillaryBuffer::new(&mut space);
    let msg = recvmsg(sock, &mut [IoSliceMut::new(bytes)], &mut cmsg, RecvFlags::CMSG_CLOEXEC).expect("recvmsg");
    assert_eq!(msg.bytes, bytes.len(), "short message");
    let mut got = None;
    for m in cmsg.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = m {
            got = fds.next();
        }
    }
    got.expect("no fd in SCM_RIGHTS")
}

/// The child half of [`scm_rights_to_second_process`]: only active when
/// spawned by it (the socket is its stdin).
#[test]
fn scm_rights_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let stdin = std::io::stdin();
    let sock = stdin.as_fd();
    let mut header = [0u8; 16];
    let fd = recv_fd(sock, &mut header);
    let seed = u64::from_le_bytes(header[..8].try_into().unwrap());
    let len = u64::from_le_bytes(header[8..].try_into().unwrap());
    let buffer = Buffer::from_fd(fd).expect("child: Buffer::from_fd");
    assert_eq!(buffer.len(), len, "child: length of the received buffer");
    let mut map = buffer.map_read_write().expect("child: map");
    {
        let r = map.begin_read().expect("child: begin_read");
        assert!(r[..] == pattern(seed, len as usize)[..], "child: content differs from what the parent wrote");
    }
    // Answer through the same memory: the parent checks it sees this.
    map.begin_write().expect("child: begin_write").copy_from_slice(&pattern(seed + 1, len as usize));
    rustix::io::write(sock, b"ok").expect("child: ack");
}

/// A second process receives the buffer over a Unix socket (`SCM_RIGHTS`),
/// reads exactly what the first wrote, and writes an answer the first sees.
fn scm_rights_round_trip(test: &str, heap: &str) {
    let heaps = Heaps::discover();
    let buffer = require!(test, allocate(&heaps, heap, 2 << 20), "heap {heap}");
    let seed = 77;
    let len = buffer.len();
    let mut map = buffer.map_read_write().unwrap();
    map.begin_write().unwrap().copy_from_slice(&pattern(seed, len as usize));

    let (ours, theirs) =
        socketpair(AddressFamily::UNIX, SocketType::STREAM, SocketFlags::CLOEXEC, None).expect("socketpair");
    let exe = std::fs::read_link("/proc/self/exe").expect("/proc/self/exe");
    let child = Command::new(exe)
        .args(["scm_rights_child", "--exact", "--test-threads=1", "--nocapture"])
        .env(CHILD_ENV, "1")
        .stdin(Stdio::from(theirs))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the child");
    let mut header = [0u8; 16];
    header[..8].copy_from_slice(&seed.to_le_bytes());
    header[8..].copy_from_slice(&len.to_le_bytes());
    send_fd(&ours, &buffer, &header);
    let out = child.wait_with_output().expect("wait for the child");
    assert!(
        out.status.success(),
        "{heap}: child failed: {}\n--- child stdout:\n{}\n--- child stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut ack = [0u8; 2];
    rustix::io::read(&ours, &mut ack).expect("read ack");
    assert_eq!(&ack, b"ok");
    let r = map.begin_read().unwrap();
    assert!(r[..] == pattern(seed + 1, len as usize)[..], "{heap}: parent does not see the child's write");
}

#[test]
fn scm_rights_dma_heap_system() {
    scm_rights_round_trip("scm_rights_dma_heap_system", "dma-heap/system");
}

#[test]
fn scm_rights_udmabuf() {
    scm_rights_round_trip("scm_rights_udmabuf", "udmabuf");
}

#[test]
fn scm_rights_memfd() {
    scm_rights_round_trip("scm_rights_memfd", "memfd");
}
