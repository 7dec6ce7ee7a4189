//! A second process cannot shrink or grow a sealed buffer (which would make
//! every process that maps it die of SIGBUS), but can read and write it.

mod common;

use dmabroker::{AllocRequest, Heaps};
use std::os::fd::{AsFd, AsRawFd};

#[test]
fn second_process_cannot_resize_a_sealed_buffer() {
    let buffer = Heaps::discover().allocate("memfd", &AllocRequest::new(1 << 20)).unwrap();
    let mut map = buffer.map_read_write().unwrap();
    map.begin_write().unwrap().fill(7);
    let path = format!("/proc/{}/fd/{}", std::process::id(), buffer.as_fd().as_raw_fd());
    let out = common::run_child("child_tries_to_resize", &[("BUFFER_PATH", path)]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("CHILD shrink refused"), "{stdout}");
    assert!(stdout.contains("CHILD grow refused"), "{stdout}");
    assert!(stdout.contains("CHILD wrote"), "{stdout}");
    // Size unchanged, data still there, including the child's write.
    assert_eq!(rustix::fs::fstat(&buffer).unwrap().st_size, 1 << 20);
    let r = map.begin_read().unwrap();
    assert_eq!(r[0], 42, "child's write not visible");
    assert!(r[1..].iter().all(|&b| b == 7));
}

/// The second process's role (runs only when spawned by the test above).
#[test]
fn child_tries_to_resize() {
    if !common::is_child() {
        return;
    }
    let path = std::env::var("BUFFER_PATH").unwrap();
    let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).expect("reopen the memfd");
    match rustix::fs::ftruncate(&file, 4096) {
        Err(rustix::io::Errno::PERM) => println!("CHILD shrink refused"),
        other => panic!("shrink not refused: {other:?}"),
    }
    match rustix::fs::ftruncate(&file, 2 << 20) {
        Err(rustix::io::Errno::PERM) => println!("CHILD grow refused"),
        other => panic!("grow not refused: {other:?}"),
    }
    match rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, 4 << 20) {
        Err(_) => {}
        Ok(()) => panic!("fallocate beyond the end must fail"),
    }
    std::os::unix::fs::FileExt::write_at(&file, &[42], 0).expect("writing is allowed");
    println!("CHILD wrote");
}
