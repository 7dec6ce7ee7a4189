//! Who else holds a buffer: the accounting that decides when a charge ends.
//!
//! - **dma-bufs**: `count:` in `/proc/self/fdinfo/<broker's fd>` is the file's
//!   reference count minus the reader's own. Every fd in any process, every
//!   mmap, every device attachment and every fd in flight inside an
//!   `SCM_RIGHTS` message holds a reference, so `count: 1` means exactly
//!   "only the broker". Exact and cheap (one small read per buffer).
//! - **memfds** (and hugetlb memfds): fdinfo has no count, and `st_nlink` is
//!   0 for every memfd, so it tells nothing. The broker scans `/proc/*/fd`
//!   (links starting `/memfd:`, then `fdinfo` for mount and inode: never
//!   `stat`, which could reach a hostile FUSE file system), the tables of
//!   threads that have their own (`unshare(CLONE_FILES)`, found with
//!   `kcmp(KCMP_FILES)`) in `/proc/*/task/*/fd`, and `/proc/*/maps`
//!   (mappings outlive a closed fd) for the buffers' inodes.
//!   Limits, documented in docs/PROTOCOL.md: references inside in-flight
//!   `SCM_RIGHTS` messages are invisible to any scan (the broker pins a memfd
//!   until `SIOCOUTQ` says its reply was received, or the connection closed,
//!   so its own replies cannot be used to hide one; a client's own sockets can hide at most
//!   RLIMIT_NOFILE in-flight fds, the kernel's `unix_inflight` limit); files
//!   registered with an io_uring (fixed files) and then closed are held by
//!   the ring, not by any fd table, and are invisible too; a
//!   process whose `/proc/PID/fd` the broker cannot read (another user when
//!   the broker is not root) is assumed to hold every memfd that was handed
//!   to its user; a scan costs one `readlink` per fd on the machine, so it
//!   runs on pressure (quota), after disconnects and on an adaptive timer.

use crate::registry::FileId;
use dmabroker::fdinfo::FdInfo;
use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd};

/// Whether anyone but the broker holds this dma-buf; `None` when fdinfo
/// cannot be read (then it is treated as held: charges never end early).
pub fn dma_buf_held_elsewhere(fd: &impl AsFd) -> Option<bool> {
    let info = FdInfo::read(None, fd.as_fd().as_raw_fd()).ok()?;
    Some(info.file_count()? > 1)
}

pub use dmabroker::fdinfo::memfd_mounts;

/// Whether others hold a buffer, when that can be told without a `/proc`
/// scan: dma-bufs from their fdinfo count; memfds from the inode's open
/// counts ([`crate::registry::Counting`]), exactly for those the broker
/// created, and "held" for any. `None`: a scan must decide. A dma-buf
/// whose fdinfo cannot be read is held (charges never end early).
pub fn without_scan(entry: &crate::registry::Entry) -> Option<bool> {
    use crate::registry::Counting;
    if !entry.needs_scan() {
        return Some(dma_buf_held_elsewhere(&entry.buffer) != Some(false));
    }
    match (entry.opened_elsewhere(), entry.counting) {
        (Some(true), _) => Some(true),
        (Some(false), Counting::Exact) => Some(false),
        _ => None,
    }
}

/// Whether holders of a memfd the scan did not see may hide in processes
/// it could not read: the creator's (owner's) for an adopted memfd whose
/// other descriptions the counts saw; any recipient's otherwise. So a
/// former grantee whose processes the broker cannot read (a broker that is
/// not root, a process with too many fd tables) no longer keeps the
/// owner's buffer charged once it lets go (finding 5).
pub fn maybe_hidden(entry: &crate::registry::Entry, scan: &Scan) -> bool {
    use crate::registry::Counting;
    if entry.counting == Counting::CreatorUncounted && entry.opened_elsewhere() == Some(false) {
        return scan.unreadable_uids.contains(&entry.owner_uid);
    }
    entry.recipients.iter().any(|u| scan.unreadable_uids.contains(u))
}

/// The identity of another process's fd `/proc/PID/fd/N` when it lies on a
/// memfd mount, from `/proc/PID/fdinfo/N` (answered by the VFS alone). Never
/// `stat` the link blindly: that reaches the file's file system, and a
/// client can make a FUSE file (mounted in its own namespace) whose path
/// starts with `/memfd:` and never answer. Kernels without `ino:` in fdinfo
/// (before 5.14): the file is opened `O_PATH` (no file system call), checked
/// to be on a memfd mount through this process's own fdinfo, then `fstat`ed.
fn memfd_fd_identity(link: &std::path::Path, fdinfo: &std::path::Path) -> Option<FileId> {
    // FdInfo keeps the first occurrence of a key: a dma-buf's name, printed
    // last and free to hold newlines, cannot forge the fields before it.
    let info = FdInfo::parse(&std::fs::read_to_string(fdinfo).ok()?);
    let mnt = info.get_u64("mnt_id")?;
    let &(major, minor) = memfd_mounts().get(&mnt)?;
    let ino = match info.get("ino") {
        Some(ino) => ino.parse().ok()?,
        None => rustix::fs::fstat(dmabroker::fdinfo::open_memfd_path(link)?).ok()?.st_ino,
    };
    Some(FileId { major, minor, ino })
}

/// Tests: a scan for this file takes a second more (a slow `/proc`: many
/// processes, fds or threads, or an entry whose lock is held).
#[cfg(test)]
pub(crate) static SLOW_SCAN_FOR: std::sync::Mutex<Option<FileId>> = std::sync::Mutex::new(None);

/// What one `/proc` scan found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Files held by some process (fd or mapping), with how many fds this
    /// process itself has open on each.
    held: HashSet<FileId>,
    own_fds: HashMap<FileId, u32>,
    /// Users with processes whose fds could not be read.
    pub unreadable_uids: HashSet<u32>,
    /// Processes looked at.
    pub processes: usize,
}

impl Scan {
    /// Whether a process other than the broker holds `file`, or the broker
    /// process holds it more than through its own registry fd (a client
    /// running inside the broker's process, as in tests).
    pub fn held(&self, file: &FileId) -> bool {
        self.held.contains(file) || self.own_fds.get(file).copied().unwrap_or(0) > 1
    }
}

/// Scan every process for fds and mappings of the `wanted` files. The
/// broker's own process is skipped unless `include_self` (clients running
/// inside it, as in tests): its fd table is mostly the registry's own fds,
/// and reading it would make every sweep cost O(buffers held).
pub fn scan(wanted: &HashSet<FileId>, include_self: bool) -> Scan {
    #[cfg(test)]
    {
        let slow = *SLOW_SCAN_FOR.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if slow.is_some_and(|f| wanted.contains(&f)) {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
    let mut scan = Scan::default();
    if wanted.is_empty() {
        return scan;
    }
    let me = std::process::id();
    let Ok(procs) = std::fs::read_dir("/proc") else { return scan };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if pid == me && !include_self {
            continue;
        }
        scan.processes += 1;
        let base = p.path();
        match scan_fd_table(&mut scan, &base, pid == me, wanted) {
            Table::Read => {}
            Table::Denied => {
                if let Ok(st) = rustix::fs::stat(&base) {
                    scan.unreadable_uids.insert(st.st_uid);
                }
                continue;
            }
            Table::Gone => continue, // the process exited meanwhile
        }
        // Threads with a table of their own (unshare(CLONE_FILES)): their
        // fds are listed only under /proc/PID/task/TID/fd.
        // Where kcmp cannot tell, every thread's table is read, except in the
        // broker's own process, whose fds are counted: a table read twice
        // would count twice.
        // At most MAX_OWN_FD_TABLES tables are read per process and sweep
        // (the search costs O(threads + t log t) kcmp calls): a process with
        // more is treated like one whose fds cannot be read, so the memfds
        // handed to its user stay charged (a capped scan never ends a
        // charge early).
        let tables = dmabroker::accounting::threads_with_own_fd_table(pid, pid != me);
        let mut unreadable = !tables.complete;
        for tid in tables.tids {
            let task = base.join("task").join(tid.to_string());
            if scan_fd_table(&mut scan, &task, pid == me, wanted) == Table::Denied {
                unreadable = true;
            }
        }
        if unreadable {
            if let Ok(st) = rustix::fs::stat(&base) {
                scan.unreadable_uids.insert(st.st_uid);
            }
        }
        // Mappings keep the memory after the fd is closed. The broker itself
        // never maps its buffers, so its own mappings are clients' (tests).
        // Threads share the mappings (CLONE_THREAD implies CLONE_VM; tasks
        // with their own mm are processes of their own in /proc); when the
        // leader has exited, its maps are empty and a live thread's are read.
        // A line that names a memfd but cannot be parsed counts as held,
        // never as free: the user's memfds stay charged.
        if let Ok(maps) = dmabroker::accounting::process_maps(pid) {
            let mut unparsable = false;
            for line in maps.lines().filter(|l| l.contains("/memfd:")) {
                match parse_maps_line(line) {
                    Some(id) if wanted.contains(&id) => {
                        scan.held.insert(id);
                    }
                    Some(_) => {}
                    None => unparsable = true,
                }
            }
            if unparsable {
                if let Ok(st) = rustix::fs::stat(&base) {
                    scan.unreadable_uids.insert(st.st_uid);
                }
            }
        }
    }
    scan
}

/// How reading one fd table went.
#[derive(Debug, PartialEq, Eq)]
enum Table {
    Read,
    Denied,
    Gone,
}

/// Record the `wanted` memfds in the fd table of `task` (`/proc/PID` or
/// `/proc/PID/task/TID`). `own`: the broker's own process, whose fds are
/// counted (its registry holds one of each) rather than marked held.
fn scan_fd_table(scan: &mut Scan, task: &std::path::Path, own: bool, wanted: &HashSet<FileId>) -> Table {
    let fd_dir = match std::fs::read_dir(task.join("fd")) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Table::Denied,
        Err(_) => return Table::Gone,
    };
    for fd in fd_dir.flatten() {
        let path = fd.path();
        let Ok(link) = std::fs::read_link(&path) else { continue };
        if !link.as_os_str().as_encoded_bytes().starts_with(b"/memfd:") {
            continue;
        }
        let Some(id) = memfd_fd_identity(&path, &task.join("fdinfo").join(fd.file_name())) else { continue };
        if !wanted.contains(&id) {
            continue;
        }
        if own {
            *scan.own_fds.entry(id).or_default() += 1;
        } else {
            scan.held.insert(id);
        }
    }
    Table::Read
}

/// `start-end perms offset major:minor inode path` -> the file's identity.
fn parse_maps_line(line: &str) -> Option<FileId> {
    let mut fields = line.split_ascii_whitespace();
    let dev = fields.nth(3)?;
    let ino: u64 = fields.next()?.parse().ok()?;
    let (major, minor) = dev.split_once(':')?;
    Some(FileId { major: u32::from_str_radix(major, 16).ok()?, minor: u32::from_str_radix(minor, 16).ok()?, ino })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dmabroker::heap::{AllocRequest, Heap};

    #[test]
    fn a_dma_buf_name_cannot_forge_fdinfo_fields() {
        // `name:` comes last and may hold newlines (DMA_BUF_SET_NAME).
        let text = "pos:\t0\nflags:\t02\nmnt_id:\t15\nino:\t77\nsize:\t1048576\ncount:\t3\nexp_name:\tsystem\nname:\tx\ncount:\t1\n";
        let info = FdInfo::parse(text);
        assert_eq!(info.get("count"), Some("3"));
        assert_eq!(info.get("size"), Some("1048576"));
        assert_eq!(info.get("exp"), None);
    }

    #[test]
    fn memfd_identity_comes_from_fdinfo() {
        assert!(!memfd_mounts().is_empty());
        let heap = dmabroker::heap::memfd::MemfdHeap::new();
        let buffer = heap.allocate(&AllocRequest::new(4096)).unwrap();
        let fd = buffer.as_fd().as_raw_fd();
        let id = memfd_fd_identity(format!("/proc/self/fd/{fd}").as_ref(), format!("/proc/self/fdinfo/{fd}").as_ref());
        assert_eq!(id, FileId::of(&buffer));
        let file = std::fs::File::open("/proc/self/status").unwrap();
        let fd = file.as_raw_fd();
        assert_eq!(
            memfd_fd_identity(format!("/proc/self/fd/{fd}").as_ref(), format!("/proc/self/fdinfo/{fd}").as_ref()),
            None
        );
    }

    #[test]
    fn parses_maps() {
        let id = parse_maps_line("7f00-7f10 rw-s 00000000 00:01 4242 /memfd:dmabroker:x (deleted)").unwrap();
        assert_eq!(id, FileId { major: 0, minor: 1, ino: 4242 });
    }

    #[test]
    fn scan_sees_own_extra_fds_and_mappings() {
        let heap = dmabroker::heap::memfd::MemfdHeap::new();
        let buffer = heap.allocate(&AllocRequest::new(4096)).unwrap();
        let id = FileId::of(&buffer).unwrap();
        let wanted: HashSet<_> = [id].into();
        assert!(!scan(&wanted, true).held(&id), "one fd in this process is the registry's own");
        let extra = buffer.try_clone_fd().unwrap();
        assert!(scan(&wanted, true).held(&id));
        let map = buffer.map_read().unwrap();
        drop(extra);
        assert!(scan(&wanted, true).held(&id), "a mapping holds it");
        drop(map);
        assert!(!scan(&wanted, true).held(&id));
    }

    /// Finding 4: a memfd whose name is not UTF-8 made `/proc/PID/maps`
    /// unreadable as a string, so the scan skipped every mapping of the
    /// process and the charge of a buffer still mapped ended.
    #[test]
    fn a_mapping_with_a_name_that_is_not_utf8_holds() {
        let name = std::ffi::CString::new(b"dmabroker:\xff\xfe-not-utf8".to_vec()).unwrap();
        let memfd = rustix::fs::memfd_create(
            name.as_c_str(),
            rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING,
        )
        .unwrap();
        rustix::fs::ftruncate(&memfd, 4096).unwrap();
        rustix::fs::fcntl_add_seals(&memfd, rustix::fs::SealFlags::SHRINK | rustix::fs::SealFlags::GROW).unwrap();
        let buffer = dmabroker::Buffer::from_fd(memfd).unwrap();
        let id = FileId::of(&buffer).unwrap();
        let wanted: HashSet<_> = [id].into();
        assert!(!scan(&wanted, true).held(&id), "the registry's own fd alone");
        let map = buffer.map_read().unwrap();
        assert!(scan(&wanted, true).held(&id), "a mapping of a memfd with a non-UTF-8 name holds it");
        drop(map);
    }

    /// A C program with `threads` threads, each in a file descriptor table
    /// of its own (`unshare(CLONE_FILES)`), started and ready (a child
    /// process: threads of the test process itself would copy other tests'
    /// fds). `None` without a C compiler.
    pub(crate) fn own_tables_child(threads: usize) -> Option<std::process::Child> {
        const SRC: &str = include_str!("../../dmabroker/tests/data/own_fd_tables.c");
        // One directory per call: tests running in parallel in this process
        // would otherwise compile over each other's program.
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("dmabroker-holders-own-tables-{}-{call}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        let (src, exe) = (dir.join("own.c"), dir.join("own"));
        std::fs::write(&src, SRC).ok()?;
        let compiled = std::process::Command::new("cc").arg("-pthread").arg("-o").arg(&exe).arg(&src).status();
        if !compiled.is_ok_and(|s| s.success()) {
            return None;
        }
        let mut child = std::process::Command::new(&exe)
            .arg(threads.to_string())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .ok()?;
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take()?), &mut line).ok()?;
        assert_eq!(line, "ready\n");
        Some(child)
    }

    #[test]
    fn a_capped_fd_table_search_keeps_the_charge() {
        let me = std::process::id();
        if dmabroker_sys::kcmp::same_files(me, me).is_err() {
            crate::test_skip::skip("a_capped_fd_table_search_keeps_the_charge", "kcmp unavailable");
            return;
        }
        let Some(mut child) = own_tables_child(dmabroker::accounting::MAX_OWN_FD_TABLES + 8) else {
            crate::test_skip::skip_for_tool(
                "a_capped_fd_table_search_keeps_the_charge",
                "cc",
                "to build the helper program",
            );
            return;
        };
        let heap = dmabroker::heap::memfd::MemfdHeap::new();
        let buffer = heap.allocate(&AllocRequest::new(4096)).unwrap();
        let wanted: HashSet<_> = [FileId::of(&buffer).unwrap()].into();
        let scan = scan(&wanted, false);
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            scan.unreadable_uids.contains(&rustix::process::geteuid().as_raw()),
            "tables past the cap are unread: this user's memfds stay charged"
        );
    }

    #[test]
    fn a_mapping_in_a_process_whose_leader_exited_holds() {
        const SRC: &str = r#"
#define _GNU_SOURCE
#include <pthread.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>
static void *hold(void *p) { (void)p; for (;;) pause(); return 0; }
int main(void) {
    int fd = memfd_create("dmabroker:zombie-holder", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, 65536) < 0) return 1;
    char *m = mmap(0, 65536, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) return 1;
    close(fd);
    pthread_t t;
    if (pthread_create(&t, 0, hold, 0)) return 1;
    syscall(SYS_exit, 0);
    return 0;
}
"#;
        let dir = std::env::temp_dir().join(format!("dmabroker-holders-zombie-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (src, exe) = (dir.join("zombie.c"), dir.join("zombie"));
        std::fs::write(&src, SRC).unwrap();
        let compiled = std::process::Command::new("cc").arg("-pthread").arg("-o").arg(&exe).arg(&src).status();
        if !compiled.is_ok_and(|s| s.success()) {
            crate::test_skip::skip_for_tool(
                "a_mapping_in_a_process_whose_leader_exited_holds",
                "cc",
                "to build the helper program",
            );
            return;
        }
        let mut child = std::process::Command::new(&exe).spawn().unwrap();
        let pid = child.id();
        let mut id = None;
        for _ in 0..500 {
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .is_ok_and(|s| s.lines().any(|l| l.starts_with("State:\tZ")));
            let thread_maps = std::fs::read_dir(format!("/proc/{pid}/task"))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("maps")).ok())
                .find(|m| m.contains("dmabroker:zombie-holder"))
                .unwrap_or_default();
            if zombie {
                id = thread_maps.lines().find(|l| l.contains("dmabroker:zombie-holder")).and_then(parse_maps_line);
                if id.is_some() {
                    break;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let wanted: HashSet<_> = id.into_iter().collect();
        let held = id.map(|id| scan(&wanted, false).held(&id));
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(held, Some(true), "a live thread's mapping holds the memfd after the leader exited");
    }

    /// Finding 5: a grantee that imported the owner's buffer and let go of
    /// it kept it charged to the owner while the broker could not read one
    /// of the grantee's processes (here: a process with more fd tables than
    /// a sweep reads, which marks its uid unreadable; as well a broker that
    /// is not root and any process of the grantee). The open counts end the
    /// charge, whoever imported the buffer: for a buffer the broker
    /// allocated, and for one the owner published from its own memfd.
    #[test]
    fn a_former_grantee_does_not_pin_the_owners_quota() {
        use crate::peer::Peer;
        use crate::service::{Service, Session};
        use dmabroker::proto::{Access, AllocateRequest, Grant, Grantee, PublishRequest, Request, Response};
        const OWNER: u32 = 4242;
        let me = std::process::id();
        if dmabroker_sys::kcmp::same_files(me, me).is_err() {
            crate::test_skip::skip("a_former_grantee_does_not_pin_the_owners_quota", "kcmp unavailable");
            return;
        }
        // The grantee is this test's real uid: its processes are the ones
        // the scan finds unreadable.
        let grantee = rustix::process::geteuid().as_raw();
        let Some(mut child) = own_tables_child(dmabroker::accounting::MAX_OWN_FD_TABLES + 8) else {
            crate::test_skip::skip_for_tool(
                "a_former_grantee_does_not_pin_the_owners_quota",
                "cc",
                "to build the helper program",
            );
            return;
        };
        let policy = crate::Policy::parse("", OWNER).unwrap();
        let mut service = Service::new(policy, dmabroker::heap::Heaps::discover(), None, Default::default());
        service.scan_own_process = true; // the clients are this test
        let session = |service: &mut Service, uid: u32| {
            let peer = Peer { uid, gid: uid, pid: me, groups: vec![uid], pidfd: None };
            let mut s = Session::new(peer, &service.policy);
            let hello = service.handle(&mut s, Request::Hello { min_version: 1, max_version: 1 }, None);
            assert!(matches!(hello.response, Response::Hello { .. }));
            s
        };
        let mut owner = session(&mut service, OWNER);
        let mut other = session(&mut service, grantee);
        let mut results = Vec::new();
        for how in ["allocated by the broker", "published from the owner's memfd"] {
            let fd = if how.starts_with("allocated") {
                let alloc =
                    AllocateRequest { heap: "memfd".into(), len: 4096, align: 1, contiguous: false, name: None };
                service.handle(&mut owner, Request::Allocate(alloc), None).fd.expect("allocated")
            } else {
                let fd = rustix::fs::memfd_create(
                    "dmabroker:owners",
                    rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING,
                )
                .unwrap();
                rustix::fs::ftruncate(&fd, 4096).unwrap();
                rustix::fs::fcntl_add_seals(&fd, rustix::fs::SealFlags::SHRINK | rustix::fs::SealFlags::GROW).unwrap();
                fd
            };
            let keep = fd.try_clone().unwrap();
            let grants = vec![Grant { who: Grantee::Uid(grantee), access: Access::ReadWrite }];
            let p = PublishRequest { name: Some("x".into()), grants, one_shot: false, expires_in_secs: None };
            let published = service.handle(&mut owner, Request::Publish(p), Some(fd)).response;
            assert!(matches!(published, Response::Published { .. }), "{published:?}");
            let imported = service.handle(&mut other, Request::Import { key: "x".into() }, None);
            assert!(matches!(imported.response, Response::Imported { .. }), "{:?}", imported.response);
            // Replies received; the owner withdraws; everybody lets go.
            service.unpin_all(&mut owner);
            service.unpin_all(&mut other);
            assert!(matches!(
                service.handle(&mut owner, Request::Unpublish { key: "x".into() }, None).response,
                Response::Unpublished
            ));
            drop((imported, keep));
            // The fd sent with Publish is closed by a closer thread: soon.
            for _ in 0..100 {
                service.sweep(None);
                if service.registry().usage(OWNER).buffers == 0 {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            results.push((how, service.registry().usage(OWNER).buffers));
        }
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(
            results,
            [("allocated by the broker", 0), ("published from the owner's memfd", 0)],
            "nobody holds the buffer: its charge must end"
        );
    }

    /// Finding 2: the timer's sweep scanned `/proc` on the event loop, so a
    /// slow scan (any user can make one: many processes, fds, threads)
    /// delayed every request. The scan now runs on a thread; the tick that
    /// starts it returns at once. (The slowness is injected: a scan for
    /// this buffer takes a second more.)
    #[test]
    fn a_slow_scan_does_not_hold_up_the_loop() {
        use crate::peer::Peer;
        use crate::service::{Service, Session};
        use dmabroker::proto::{PublishRequest, Request, Response};
        use std::time::{Duration, Instant};
        const OWNER: u32 = 4242;
        let policy = crate::Policy::parse("", OWNER).unwrap();
        let timing = crate::SweepTiming { interval: Duration::from_millis(20), duty_factor: 1 };
        let mut service = Service::new(policy, dmabroker::heap::Heaps::discover(), None, timing);
        service.scan_own_process = true;
        let peer = Peer { uid: OWNER, gid: OWNER, pid: std::process::id(), groups: vec![OWNER], pidfd: None };
        let mut owner = Session::new(peer, &service.policy);
        service.handle(&mut owner, Request::Hello { min_version: 1, max_version: 1 }, None);
        // A memfd the client made: only a scan can tell its creator let go.
        let memfd = {
            use rustix::fs::{MemfdFlags, SealFlags};
            let fd = rustix::fs::memfd_create("slow-scan", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
            rustix::fs::ftruncate(&fd, 4096).unwrap();
            rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW).unwrap();
            fd
        };
        let st = rustix::fs::fstat(&memfd).unwrap();
        let file = FileId { major: rustix::fs::major(st.st_dev), minor: rustix::fs::minor(st.st_dev), ino: st.st_ino };
        let p =
            PublishRequest { name: Some("slow".into()), grants: Vec::new(), one_shot: false, expires_in_secs: None };
        let r = service.handle(&mut owner, Request::Publish(p), Some(memfd)).response;
        assert!(matches!(r, Response::Published { .. }), "{r:?}");
        service.unpin_all(&mut owner);
        service.handle(&mut owner, Request::Unpublish { key: "slow".into() }, None);
        *SLOW_SCAN_FOR.lock().unwrap() = Some(file);
        std::thread::sleep(Duration::from_millis(50)); // the sweep is due
        let start = Instant::now();
        service.tick();
        let tick = start.elapsed();
        // Requests are served meanwhile.
        let stats = service.handle(&mut owner, Request::Stats, None).response;
        assert!(matches!(stats, Response::Stats(_)));
        let mut released = None;
        while start.elapsed() < Duration::from_secs(10) {
            if service.registry().usage(OWNER).buffers == 0 {
                released = Some(start.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
            service.tick();
        }
        *SLOW_SCAN_FOR.lock().unwrap() = None;
        assert!(tick < Duration::from_millis(300), "the tick waited for the scan: {tick:?}");
        assert!(released.is_some_and(|r| r >= Duration::from_secs(1)), "released after the slow scan: {released:?}");
    }
}
