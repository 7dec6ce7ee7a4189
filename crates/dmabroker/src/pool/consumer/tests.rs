//! The consumer's unit tests.

use super::options::ConsumerOptions;
use super::*;
use crate::pool::layout::Geometry;
use crate::pool::AttachError;
use crate::pool::AttachFd;

use crate::heap::{AllocRequest, Heaps};
use rustix::fs::{MemfdFlags, SealFlags};

const G: Geometry = Geometry { nbuf: 2, max_consumers: 1, ring_cap: 2, policy: 1, buf_len: 4096 };

/// A control block for `g`, sealed or not; returns it and its length.
fn control(g: Geometry, sealed: bool) -> (OwnedFd, u64) {
    if sealed {
        let (fd, ctl) = super::super::producer::create_control(g).unwrap();
        ctl.init_header();
        return (fd, ctl.len() as u64);
    }
    let len = g.control_len().unwrap().next_multiple_of(rustix::param::page_size());
    // Same bytes as a sealed one (copied: an unsealed memfd cannot be
    // mapped safely, which is the point of the test using it).
    let (sealed, ctl) = super::super::producer::create_control(g).unwrap();
    ctl.init_header();
    let mut bytes = vec![0u8; len];
    rustix::io::pread(&sealed, &mut bytes, 0).unwrap();
    let fd = rustix::fs::memfd_create("ctl", MemfdFlags::CLOEXEC).unwrap();
    rustix::io::pwrite(&fd, &bytes, 0).unwrap();
    (fd, len as u64)
}

fn sealed_buffer(len: u64) -> OwnedFd {
    let b = Heaps::discover().allocate("memfd", &AllocRequest::new(len)).unwrap();
    assert!(b.is_size_sealed());
    b.try_clone_fd().unwrap()
}

fn memfd_with(seals: SealFlags) -> OwnedFd {
    let fd = rustix::fs::memfd_create("dmabroker:test", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
    rustix::fs::ftruncate(&fd, 4096).unwrap();
    rustix::fs::fcntl_add_seals(&fd, seals).unwrap();
    fd
}

/// Attach to a fake producer that sends this welcome.
fn attach_to(g: Geometry, ctl: OwnedFd, ctl_len: u64, buffers: Vec<OwnedFd>) -> Result<Consumer, AttachError> {
    let (a, b) = super::super::socket_pair().unwrap();
    let producer = std::thread::spawn(move || {
        let (bytes, _) = transport::recv(a.as_fd(), false).unwrap().unwrap();
        let hello = transport::decode(&bytes, Vec::new()).unwrap();
        assert_eq!(
            hello.words,
            [u64::from(transport::HELLO_WANT_PROPERTIES), u64::from(std::process::id())],
            "the HELLO asks for properties and carries our pid"
        );
        let words = [
            0,
            u64::from(g.nbuf),
            u64::from(g.ring_cap),
            u64::from(g.max_consumers),
            u64::from(g.policy),
            g.buf_len,
            ctl_len,
        ];
        let mut fds = vec![ctl.as_fd()];
        fds.extend(buffers.iter().map(|b| b.as_fd()));
        transport::send(a.as_fd(), &transport::encode(&words, transport::MSG_WELCOME), &fds, false).unwrap();
        a
    });
    let result = Consumer::attach(b, &ConsumerOptions::default());
    drop(producer.join().unwrap());
    result
}

#[test]
fn well_formed_welcome_attaches() {
    let (ctl, len) = control(G, true);
    let c = attach_to(G, ctl, len, vec![sealed_buffer(4096), sealed_buffer(4096)]).unwrap();
    assert_eq!(c.buffer_count(), 2);
}

#[test]
fn unsealed_buffers_are_refused_by_index_and_seal() {
    let cases = [
        (SealFlags::GROW, "F_SEAL_SHRINK"),
        (SealFlags::SHRINK, "F_SEAL_GROW"),
        (SealFlags::empty(), "F_SEAL_SHRINK and F_SEAL_GROW"),
        (SealFlags::WRITE.union(SealFlags::SEAL), "F_SEAL_SHRINK and F_SEAL_GROW"),
    ];
    for (seals, missing) in cases {
        let (ctl, len) = control(G, true);
        let err = attach_to(G, ctl, len, vec![sealed_buffer(4096), memfd_with(seals)]).unwrap_err();
        assert!(
            matches!(err, AttachError::Unsealed { fd: AttachFd::Buffer(1), missing: m } if m == missing),
            "{seals:?}: {err}"
        );
        assert!(err.to_string().contains("pool buffer 1"), "{err}");
    }
    // A memfd made without MFD_ALLOW_SEALING can never be sealed.
    let plain = rustix::fs::memfd_create("dmabroker:plain", MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&plain, 4096).unwrap();
    let (ctl, len) = control(G, true);
    let err = attach_to(G, ctl, len, vec![plain, sealed_buffer(4096)]).unwrap_err();
    assert!(matches!(err, AttachError::Unsealed { fd: AttachFd::Buffer(0), .. }), "{err}");
}

#[test]
fn unsealed_control_block_is_refused() {
    let (ctl, len) = control(G, false);
    let err = attach_to(G, ctl, len, vec![sealed_buffer(4096), sealed_buffer(4096)]).unwrap_err();
    assert!(
        matches!(err, AttachError::Unsealed { fd: AttachFd::ControlBlock, missing: "F_SEAL_SHRINK and F_SEAL_GROW" }),
        "{err}"
    );
}

#[test]
fn lengths_must_be_the_advertised_ones() {
    let (ctl, len) = control(G, true);
    let err = attach_to(G, ctl, len + 4096, vec![sealed_buffer(4096), sealed_buffer(4096)]).unwrap_err();
    assert!(
        matches!(err, AttachError::Length { fd: AttachFd::ControlBlock, len: l, expected } if l == len && expected == len + 4096),
        "{err}"
    );
    let big = Geometry { buf_len: 8192, ..G };
    let (ctl, len) = control(big, true);
    let err = attach_to(big, ctl, len, vec![sealed_buffer(8192), sealed_buffer(4096)]).unwrap_err();
    assert!(matches!(err, AttachError::Length { fd: AttachFd::Buffer(1), len: 4096, expected: 8192 }), "{err}");
}
