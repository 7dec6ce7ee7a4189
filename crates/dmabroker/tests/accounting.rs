//! `accounting::scan` against real memfd buffers held by this process and by
//! child processes (by fd and by mapping only).

use dmabroker::accounting::{self, BufferRecord, ScanOptions, SizeSource};
use dmabroker::{AllocRequest, Buffer, BufferKind, Heaps};
use std::io::{BufRead, BufReader};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

/// Children inherit fds whose CLOEXEC we clear: one test at a time, so no
/// other test's child picks up an fd by accident.
static SERIAL: Mutex<()> = Mutex::new(());

const MIB: u64 = 1 << 20;

fn alloc(name: &str, len: u64) -> Buffer {
    Heaps::discover().allocate("memfd", &AllocRequest::new(len).name(name)).expect("memfd allocation")
}

fn find(snapshot: &accounting::Snapshot, buffer_inode: u64) -> &BufferRecord {
    snapshot
        .buffers
        .iter()
        .find(|b| b.inode == buffer_inode && b.kind == BufferKind::Memfd)
        .unwrap_or_else(|| panic!("inode {buffer_inode} not in the scan"))
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `sleep` that inherits `fd` (CLOEXEC cleared on a duplicate).
fn sleeper_holding(buffer: &Buffer) -> (KillOnDrop, i32) {
    let dup: OwnedFd = buffer.try_clone_fd().unwrap();
    rustix::io::fcntl_setfd(&dup, rustix::io::FdFlags::empty()).unwrap();
    let raw = dup.as_raw_fd();
    let child = Command::new("sleep").arg("60").stdin(Stdio::null()).spawn().expect("spawn sleep");
    drop(dup);
    (KillOnDrop(child), raw)
}

#[test]
fn sees_own_fds_and_mappings_with_sizes() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let me = std::process::id();
    let held = alloc("pstest-fd", MIB);
    let mapped = alloc("pstest-mapped", 3 * MIB);
    let _map = mapped.map_read_write().unwrap();
    let foreign = rustix::fs::memfd_create("not-ours", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&foreign, 4096).unwrap();

    let s = accounting::scan().unwrap();
    assert!(s.scanned_processes >= 1);
    let b = find(&s, held.inode());
    assert_eq!(b.size, MIB);
    assert_eq!(b.size_source, SizeSource::Stat);
    assert!(b.dmabroker);
    assert_eq!(b.name.as_deref(), Some("dmabroker:pstest-fd"));
    let h = b.holders.iter().find(|h| h.pid == me).expect("we hold it");
    assert_eq!(h.fds, vec![held.as_fd().as_raw_fd()]);
    assert_eq!(h.mappings, 0);

    let m = find(&s, mapped.inode());
    assert_eq!(m.size, 3 * MIB);
    let h = m.holders.iter().find(|h| h.pid == me).unwrap();
    assert_eq!(h.fds, vec![mapped.as_fd().as_raw_fd()]);
    assert_eq!((h.mappings, h.mapped_bytes), (1, 3 * MIB));

    // Foreign memfds only with all_memfds.
    let foreign_ino = rustix::fs::fstat(&foreign).unwrap().st_ino;
    assert!(!s.buffers.iter().any(|b| b.inode == foreign_ino && b.device == m.device));
    let all = accounting::scan_with(&ScanOptions { all_memfds: true, ..ScanOptions::default() }).unwrap();
    let f = find(&all, foreign_ino);
    assert_eq!((f.size, f.dmabroker), (4096, false));

    let p = accounting::scan_with(&ScanOptions { pid: Some(me), ..ScanOptions::default() }).unwrap();
    assert_eq!(p.processes.len(), 1);
    let totals = &p.processes[0];
    assert_eq!(totals.pid, me);
    assert!(totals.buffers >= 2 && totals.bytes >= 4 * MIB);
    assert!(p.buffers.iter().all(|b| b.holders.iter().any(|h| h.pid == me)));
    let uid = rustix::process::geteuid().as_raw();
    assert!(p.users.iter().any(|u| u.uid == uid && u.bytes >= 4 * MIB));
}

#[test]
fn dedups_a_buffer_shared_with_a_child() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let me = std::process::id();
    let shared = alloc("pstest-shared", 2 * MIB);
    let (child, child_fd) = sleeper_holding(&shared);
    let child_pid = child.0.id();

    let s = accounting::scan().unwrap();
    let b = find(&s, shared.inode());
    let pids: Vec<u32> = b.holders.iter().map(|h| h.pid).collect();
    assert!(pids.contains(&me) && pids.contains(&child_pid), "holders {pids:?}");
    assert_eq!(b.holders.len(), 2, "holders {pids:?}");
    assert_eq!(b.proportional_size, MIB);
    let ch = b.holders.iter().find(|h| h.pid == child_pid).unwrap();
    assert_eq!(ch.fds, vec![child_fd]);
    assert_eq!(ch.comm, "sleep");
    // Counted once in the totals, fully for each holder, half in each proportional share.
    assert_eq!(s.buffers.iter().filter(|r| r.inode == b.inode && r.device == b.device).count(), 1);
    let child_totals = s.process(child_pid).unwrap();
    assert_eq!((child_totals.buffers, child_totals.bytes, child_totals.proportional_bytes), (1, 2 * MIB, MIB));

    let only_child = accounting::scan_with(&ScanOptions { pid: Some(child_pid), ..ScanOptions::default() }).unwrap();
    assert_eq!(only_child.processes.len(), 1);
    assert_eq!(only_child.totals.bytes, 2 * MIB);
    assert_eq!(only_child.buffers[0].holders.len(), 2, "holder lists stay complete");
    drop(child);
}

#[test]
fn sees_a_buffer_held_only_by_a_mapping() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let buffer = alloc("pstest-maponly", MIB);
    let inode = buffer.inode();
    let path = format!("/proc/{}/fd/{}", std::process::id(), buffer.as_fd().as_raw_fd());
    // CPython's mmap module keeps a dup of the fd: map with libc's mmap instead.
    let script = "import ctypes, os, sys, time\n\
                  libc = ctypes.CDLL(None, use_errno=True)\n\
                  libc.mmap.restype = ctypes.c_void_p\n\
                  libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]\n\
                  f = os.open(sys.argv[1], os.O_RDWR)\n\
                  addr = libc.mmap(None, os.fstat(f).st_size, 3, 1, f, 0)\n\
                  assert addr not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()\n\
                  os.close(f)\n\
                  print('ready', flush=True)\n\
                  time.sleep(60)\n";
    let spawned = Command::new("python3").arg("-c").arg(script).arg(&path).stdout(Stdio::piped()).spawn();
    let Ok(mut child) = spawned else {
        eprintln!("python3 not available: skipping the mapping-only test");
        return;
    };
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let child = KillOnDrop(child);
    assert_eq!(line.trim(), "ready");
    drop(buffer); // Now only the child's mapping keeps it alive.

    let s = accounting::scan().unwrap();
    let b = find(&s, inode);
    assert_eq!(b.holders.len(), 1);
    let h = &b.holders[0];
    assert_eq!(h.pid, child.0.id());
    assert!(h.fds.is_empty());
    assert_eq!((h.mappings, h.mapped_bytes), (1, MIB));
    // Root reads the size through map_files; others get the mapped extent.
    assert_eq!(b.size, MIB);
    assert!(matches!(b.size_source, SizeSource::Stat | SizeSource::Mapping));
    assert_eq!(s.process(child.0.id()).unwrap().bytes, MIB);
}
