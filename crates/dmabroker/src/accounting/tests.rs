//! The accounting unit tests.

use super::fd_tables::{distinct_fd_tables, threads_with_own_fd_table, OwnFdTables, MAX_OWN_FD_TABLES};
use super::model::{BufferId, FileStat, ProcessHoldings, SizeSource};
use super::parse::{fd_holding, map_holdings};
use super::scan::{process_maps, scan_with, ScanOptions};
use super::snapshot::Snapshot;
use super::*;
use crate::buffer::BufferKind;
use crate::fdinfo::FdInfo;
use std::collections::BTreeMap;
use std::io;

const SHMEM: Option<(u32, u32)> = Some((0, 1));
const DMABUF_DEV: (u32, u32) = (0, 13);

// Real fdinfo of a system-heap dma-buf named with DMA_BUF_SET_NAME (Linux 6.12).
const CAM_FDINFO: &str =
    "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t52731\nsize:\t4194304\ncount:\t3\nexp_name:\tsystem\nname:\tcam0\n";
// A udmabuf without a name.
const UDMABUF_FDINFO: &str =
    "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t52740\nsize:\t1048576\ncount:\t1\nexp_name:\tudmabuf\n";

fn stat(dev: (u32, u32), inode: u64, size: u64) -> Option<FileStat> {
    Some(FileStat { dev_major: dev.0, dev_minor: dev.1, inode, size })
}

fn camera() -> ProcessHoldings {
    let cam = FdInfo::parse(CAM_FDINFO);
    let udma = FdInfo::parse(UDMABUF_FDINFO);
    let fds = vec![
        fd_holding(7, "/dmabuf:cam0", Some(&cam), stat(DMABUF_DEV, 52731, 4194304), SHMEM, false).unwrap(),
        // The same dma-buf through a second fd.
        fd_holding(9, "/dmabuf:cam0", Some(&cam), stat(DMABUF_DEV, 52731, 4194304), SHMEM, false).unwrap(),
        fd_holding(10, "anon_inode:dmabuf", Some(&udma), stat(DMABUF_DEV, 52740, 1048576), SHMEM, false).unwrap(),
        fd_holding(11, "/memfd:dmabroker:frames (deleted)", None, stat((0, 1), 1029, 2 << 20), SHMEM, false).unwrap(),
    ];
    // Foreign memfds, sockets and files are not buffers by default.
    assert!(fd_holding(12, "/memfd:wayland-shm (deleted)", None, stat((0, 1), 1030, 4096), SHMEM, false).is_none());
    assert!(fd_holding(13, "socket:[991]", None, stat((0, 8), 991, 0), SHMEM, true).is_none());
    let maps = map_holdings(
        "7fad5b800000-7fad5bc00000 rw-s 00000000 00:0d 52731                      /dmabuf:cam0\n\
         7fad5c000000-7fad5c100000 r--s 00000000 00:0d 52731                      /dmabuf:cam0\n\
         55d0c4a00000-55d0c4a28000 r--p 00000000 fd:01 1311742                    /usr/bin/cam\n",
        SHMEM,
        false,
    );
    ProcessHoldings { pid: 100, comm: "cam".into(), uid: 1000, fds, maps }
}

fn display() -> ProcessHoldings {
    // Holds cam0 only by mapping, and a hugetlb memfd (not on the shmem device) by fd.
    let maps = map_holdings(
        "7f0000000000-7f0000400000 rw-s 00000000 00:0d 52731                      /dmabuf:cam0\n\
         7f1000000000-7f1000200000 rw-s 00000000 00:0e 77                         /memfd:dmabroker:huge (deleted)\n\
         7f2000000000-7f2000001000 rw-s 00000000 00:01 1030                       /memfd:wayland-shm (deleted)\n",
        SHMEM,
        false,
    );
    assert_eq!(maps.len(), 2);
    ProcessHoldings { pid: 200, comm: "display".into(), uid: 0, fds: Vec::new(), maps }
}

fn snapshot(options: &ScanOptions) -> Snapshot {
    let names = procfs::parse_passwd("root:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n");
    Snapshot::from_holdings(&[camera(), display()], options, &names, &|_| None)
}

#[test]
fn fd_holdings_from_fixtures() {
    let p = camera();
    let cam = &p.fds[0];
    assert_eq!(cam.kind, BufferKind::DmaBuf);
    assert_eq!((cam.size, cam.size_source), (4 << 20, SizeSource::Fdinfo));
    assert_eq!(cam.exporter.as_deref(), Some("system"));
    assert_eq!(cam.name.as_deref(), Some("cam0"));
    assert_eq!(cam.file_count, Some(3));
    assert_eq!(p.fds[2].name, None);
    assert_eq!(p.fds[2].exporter.as_deref(), Some("udmabuf"));
    assert_eq!(p.fds[3].kind, BufferKind::Memfd);
    assert_eq!((p.fds[3].size, p.fds[3].size_source), (2 << 20, SizeSource::Stat));
    assert_eq!(p.maps.len(), 1);
    assert_eq!((p.maps[0].mappings, p.maps[0].mapped_bytes, p.maps[0].extent), (2, 5 << 20, 4 << 20));
    assert_eq!(display().maps[1].kind, BufferKind::HugetlbMemfd);
    // --all-memfd includes foreign memfds.
    assert!(fd_holding(12, "/memfd:wayland-shm (deleted)", None, stat((0, 1), 1030, 4096), SHMEM, true).is_some());
}

#[test]
fn aggregates_dedups_and_shares() {
    let s = snapshot(&ScanOptions::default());
    assert_eq!(s.buffers.len(), 4);
    assert_eq!(s.totals.buffers, 4);
    assert_eq!(s.totals.bytes, (4 << 20) + (1 << 20) + (2 << 20) + (2 << 20));
    let cam = s.buffer_by_inode(52731).unwrap();
    assert_eq!(cam.device, "0:13");
    assert_eq!(cam.holders.len(), 2);
    assert_eq!(cam.holders[0].fds, vec![7, 9]);
    assert_eq!(cam.holders[0].mappings, 2);
    assert_eq!(cam.holders[1].pid, 200);
    assert!(cam.holders[1].fds.is_empty());
    assert_eq!(cam.holders[1].mappings, 1);
    assert_eq!(cam.proportional_size, 2 << 20);
    assert_eq!(cam.size_source, SizeSource::Fdinfo);
    assert!(!cam.dmabroker);
    // Held only by mapping: size from the mapping extent.
    let huge = s.buffer_by_inode(77).unwrap();
    assert_eq!((huge.kind, huge.size, huge.size_source), (BufferKind::HugetlbMemfd, 2 << 20, SizeSource::Mapping));
    assert!(huge.dmabroker);
    assert_eq!(s.buffers[0].inode, 52731, "largest first");

    let cam_p = s.process(100).unwrap();
    assert_eq!((cam_p.buffers, cam_p.fds, cam_p.mappings), (3, 4, 2));
    assert_eq!(cam_p.bytes, 7 << 20);
    assert_eq!(cam_p.proportional_bytes, (2 << 20) + (1 << 20) + (2 << 20));
    assert_eq!(cam_p.user.as_deref(), Some("alice"));
    let disp = s.process(200).unwrap();
    assert_eq!((disp.bytes, disp.proportional_bytes), (6 << 20, 4 << 20));
    assert_eq!(s.users.len(), 2);
    assert_eq!(s.users[0].user.as_deref(), Some("alice"));
    assert_eq!(s.users[0].bytes, 7 << 20);
    // Proportional shares add up to the deduplicated total.
    let pss: u64 = s.processes.iter().map(|p| p.proportional_bytes).sum();
    assert_eq!(pss, s.totals.bytes);
    let dma = s.totals.by_kind.iter().find(|k| k.kind == BufferKind::DmaBuf).unwrap();
    assert_eq!((dma.buffers, dma.bytes), (2, 5 << 20));
}

#[test]
fn filters_keep_full_holder_lists() {
    let s = snapshot(&ScanOptions { pid: Some(200), ..ScanOptions::default() });
    assert_eq!(s.processes.len(), 1);
    assert_eq!(s.buffers.len(), 2);
    assert_eq!(s.buffer_by_inode(52731).unwrap().holders.len(), 2);
    assert_eq!(s.buffer_by_inode(52731).unwrap().proportional_size, 2 << 20);
    assert_eq!(s.totals.bytes, 6 << 20);
    let s = snapshot(&ScanOptions { uid: Some(1000), ..ScanOptions::default() });
    assert_eq!(s.processes.iter().map(|p| p.pid).collect::<Vec<_>>(), vec![100]);
    assert_eq!(s.users.len(), 1);
    let s = snapshot(&ScanOptions { uid: Some(4242), ..ScanOptions::default() });
    assert!(s.buffers.is_empty() && s.processes.is_empty() && s.users.is_empty());
}

#[test]
fn sysfs_fills_mapping_only_dma_bufs() {
    let names = BTreeMap::new();
    let s = Snapshot::from_holdings(&[display()], &ScanOptions::default(), &names, &|ino| {
        (ino == 52731).then(|| (8 << 20, "system".to_owned()))
    });
    let cam = s.buffer_by_inode(52731).unwrap();
    assert_eq!((cam.size, cam.size_source, cam.exporter.as_deref()), (8 << 20, SizeSource::Sysfs, Some("system")));
}

#[test]
fn buffer_id_round_trips() {
    let s = snapshot(&ScanOptions::default());
    assert_eq!(s.buffer_by_inode(52731).unwrap().id(), Some(BufferId { dev_major: 0, dev_minor: 13, inode: 52731 }));
}
#[test]
fn own_fd_tables_cost_linear_calls_and_are_capped() {
    let leader = 1;
    // 3,000 threads, each with a table of its own (unshare(CLONE_FILES)).
    let tables: BTreeMap<u32, u32> = (1..=3001).map(|t| (t, t * 7919 % 10007)).collect();
    let mut calls = 0usize;
    let mut cmp = |a: u32, b: u32| {
        calls += 1;
        Ok(tables[&a].cmp(&tables[&b]))
    };
    let found = distinct_fd_tables(leader, 1..=3001, true, MAX_OWN_FD_TABLES, &mut cmp);
    assert!(!found.complete, "more than the cap: scanned in part");
    assert_eq!(found.tids.len(), MAX_OWN_FD_TABLES);
    // The search stopped at the cap: about (cap + 1) * (1 + log2(cap)) calls.
    assert!(calls <= (MAX_OWN_FD_TABLES + 1) * 8, "{calls} kcmp calls");

    // 3,000 threads sharing 8 tables besides the leader's, the leader
    // among them: complete, one thread per table, O(n log t) calls.
    let tables: BTreeMap<u32, u32> = (1..=3001).map(|t| (t, t % 9)).collect();
    let mut calls = 0usize;
    let mut cmp = |a: u32, b: u32| {
        calls += 1;
        Ok(tables[&a].cmp(&tables[&b]))
    };
    let found = distinct_fd_tables(leader, 1..=3001, true, MAX_OWN_FD_TABLES, &mut cmp);
    assert!(found.complete);
    let mut seen: Vec<u32> = found.tids.iter().map(|t| tables[t]).collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..9).filter(|&t| t != tables[&leader]).collect::<Vec<_>>());
    assert!(calls <= 3000 * 5, "{calls} kcmp calls");
}

#[test]
fn own_fd_tables_when_kcmp_cannot_tell() {
    let mut denied = |_: u32, _: u32| Err(io::Error::from_raw_os_error(rustix::io::Errno::PERM.raw_os_error()));
    let found = distinct_fd_tables(1, 1..=10, true, MAX_OWN_FD_TABLES, &mut denied);
    assert_eq!((found.tids.len(), found.complete), (9, true), "every other thread is read");
    let found = distinct_fd_tables(1, 1..=10, false, MAX_OWN_FD_TABLES, &mut denied);
    assert_eq!((found.tids.len(), found.complete), (0, true));
    let found = distinct_fd_tables(1, 1..=1000, true, MAX_OWN_FD_TABLES, &mut denied);
    assert_eq!((found.tids.len(), found.complete), (MAX_OWN_FD_TABLES, false), "the cap holds");
    // Threads that exit during the search are skipped.
    let mut gone = |_: u32, _: u32| Err(io::Error::from_raw_os_error(rustix::io::Errno::SRCH.raw_os_error()));
    assert_eq!(distinct_fd_tables(1, 1..=10, true, 4, &mut gone), OwnFdTables { tids: vec![], complete: true });
}

/// A C program with `threads` threads, each in a file descriptor table
/// of its own (`unshare(CLONE_FILES)`), started and ready (a child
/// process: threads of the test process itself would copy other tests'
/// fds). `None` without a C compiler.
fn own_tables_child(threads: usize) -> Option<std::process::Child> {
    const SRC: &str = include_str!("../../tests/data/own_fd_tables.c");
    let dir = std::env::temp_dir().join(format!("dmabroker-own-tables-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let (src, exe) = (dir.join("own.c"), dir.join("own"));
    std::fs::write(&src, SRC).ok()?;
    let compiled = std::process::Command::new("cc").arg("-pthread").arg("-o").arg(&exe).arg(&src).status();
    if !compiled.is_ok_and(|s| s.success()) {
        return None;
    }
    let mut child =
        std::process::Command::new(&exe).arg(threads.to_string()).stdout(std::process::Stdio::piped()).spawn().ok()?;
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take()?), &mut line).ok()?;
    assert_eq!(line, "ready\n");
    Some(child)
}

#[test]
fn hundreds_of_own_fd_tables_are_capped() {
    let me = std::process::id();
    if dmabroker_sys::kcmp::same_files(me, me).is_err() {
        crate::test_skip::skip("hundreds_of_own_fd_tables_are_capped", "kcmp unavailable");
        return;
    }
    let Some(mut child) = own_tables_child(300) else {
        crate::test_skip::skip_for_tool("hundreds_of_own_fd_tables_are_capped", "cc", "to build the helper program");
        return;
    };
    let found = threads_with_own_fd_table(child.id(), true);
    let s = scan_with(&ScanOptions { pid: Some(child.id()), ..ScanOptions::default() });
    let _ = child.kill();
    let _ = child.wait();
    assert!(!found.complete, "300 tables are more than the cap");
    assert_eq!(found.tids.len(), MAX_OWN_FD_TABLES);
    assert!(s.unwrap().unreadable_processes >= 1, "a capped process counts as seen in part");
}

/// A C program whose main thread exits (raw `SYS_exit`, the process
/// lives on as a zombie leader) while another thread keeps a mapping of
/// a memfd named `dmabroker:zombie-leader` whose fd is closed. `None`
/// without a C compiler.
pub(crate) fn zombie_leader_child() -> Option<std::process::Child> {
    const SRC: &str = r#"
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>
static void *hold(void *p) { (void)p; for (;;) pause(); return 0; }
int main(void) {
int fd = memfd_create("dmabroker:zombie-leader", MFD_CLOEXEC);
if (fd < 0 || ftruncate(fd, 65536) < 0) return 1;
char *m = mmap(0, 65536, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
if (m == MAP_FAILED) return 1;
m[0] = 1;
close(fd);
pthread_t t;
if (pthread_create(&t, 0, hold, 0)) return 1;
syscall(SYS_exit, 0);
return 0;
}
"#;
    let dir =
        std::env::temp_dir().join(format!("dmabroker-zombie-{}-{:?}", std::process::id(), std::thread::current().id()));
    std::fs::create_dir_all(&dir).ok()?;
    let src = dir.join("zombie.c");
    let exe = dir.join("zombie");
    std::fs::write(&src, SRC).ok()?;
    let ok = std::process::Command::new("cc").arg("-pthread").arg("-o").arg(&exe).arg(&src).status().ok()?.success();
    if !ok {
        return None;
    }
    let child = std::process::Command::new(&exe).spawn().ok()?;
    let status = format!("/proc/{}/status", child.id());
    for _ in 0..500 {
        let zombie = std::fs::read_to_string(&status).is_ok_and(|s| s.lines().any(|l| l.starts_with("State:\tZ")));
        let mapped = std::fs::read_dir(format!("/proc/{}/task", child.id())).map_or(0, std::iter::Iterator::count) == 2;
        if zombie && mapped {
            return Some(child);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("the zombie-leader child did not get ready");
}

#[test]
fn mappings_of_a_process_whose_leader_exited_are_seen() {
    let Some(mut child) = zombie_leader_child() else {
        crate::test_skip::skip_for_tool(
            "mappings_of_a_process_whose_leader_exited_are_seen",
            "cc",
            "to build the helper program",
        );
        return;
    };
    let pid = child.id();
    assert_eq!(std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap(), "", "a zombie leader has no maps");
    let maps = process_maps(pid).unwrap();
    let s = scan_with(&ScanOptions { pid: Some(pid), ..ScanOptions::default() }).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(maps.contains("/memfd:dmabroker:zombie-leader"), "{maps}");
    let b = s.buffers.iter().find(|b| b.name.as_deref() == Some("dmabroker:zombie-leader")).expect("buffer listed");
    assert_eq!(b.holders[0].pid, pid);
    assert_eq!(b.holders[0].mappings, 1);
}

#[test]
fn memfds_held_by_the_broker_are_listed_whatever_their_name() {
    let me = std::process::id();
    let foreign = rustix::fs::memfd_create("wayland-shm-adopted", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&foreign, 8192).unwrap();
    let inode = rustix::fs::fstat(&foreign).unwrap().st_ino;
    let plain = scan_with(&ScanOptions { pid: Some(me), ..ScanOptions::default() }).unwrap();
    assert!(plain.buffer_by_inode(inode).is_none(), "a foreign memfd is no dmabroker buffer");
    let options = ScanOptions { pid: Some(me), broker_pids: vec![me], ..ScanOptions::default() };
    let s = scan_with(&options).unwrap();
    let b = s.buffer_by_inode(inode).expect("held by the broker: listed");
    assert!(b.dmabroker);
    assert_eq!((b.size, b.name.as_deref()), (8192, Some("wayland-shm-adopted")));
    assert_eq!(b.holders[0].pid, me);
}
