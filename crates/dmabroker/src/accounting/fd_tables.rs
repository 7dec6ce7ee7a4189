//! Threads with fd tables of their own (`CLONE_FILES` unshared): found
//! with `kcmp`, capped so a process with thousands of threads stays cheap.

use std::io;

/// The most fd tables besides the process's own that one scan reads in one
/// process. Threads that called `unshare(CLONE_FILES)` cost the scanner one
/// table read each; beyond this many distinct tables the process is reported
/// as scanned in part ([`OwnFdTables::complete`] false), so a process cannot
/// make every sweep slow by creating thousands of them.
pub const MAX_OWN_FD_TABLES: usize = 64;

/// The fd tables of a process other than its leader's (`/proc/<pid>/fd`),
/// as found by [`threads_with_own_fd_table`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnFdTables {
    /// One thread per distinct table (plus, when kcmp could not tell and the
    /// caller asked for it, threads whose table may be a duplicate).
    pub tids: Vec<u32>,
    /// False when more than [`MAX_OWN_FD_TABLES`] tables were found: the
    /// tables of the threads not listed were not looked at, and a caller
    /// must treat whatever they might hold as held.
    pub complete: bool,
}

/// Threads of process `pid` whose file descriptor table is not the
/// process's own (`/proc/<pid>/fd`): threads that called
/// `unshare(CLONE_FILES)`, one per distinct table (a zombie leader has no
/// table: then every live thread's table is "own", deduplicated among
/// themselves).
///
/// Each thread is compared with the leader (`kcmp(KCMP_FILES)`, one system
/// call); the others are kept sorted by kcmp's order of the tables and
/// deduplicated by binary search, so the cost is `O(threads + t log t)`
/// calls for `t` distinct tables, and at most [`MAX_OWN_FD_TABLES`]
/// distinct tables are collected (then `complete` is false). When kcmp
/// cannot tell (`ENOSYS`: a kernel without `CONFIG_KCMP`; `EPERM`), the
/// thread is included if `when_unsure` (its table is read as well: callers
/// that collect buffers in a set lose nothing by reading a table twice; the
/// cap applies to those too) and left out otherwise.
pub fn threads_with_own_fd_table(pid: u32, when_unsure: bool) -> OwnFdTables {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return OwnFdTables { tids: Vec::new(), complete: true };
    };
    let tids = tasks.flatten().filter_map(|t| t.file_name().to_str().and_then(|s| s.parse::<u32>().ok()));
    distinct_fd_tables(pid, tids, when_unsure, MAX_OWN_FD_TABLES, &mut dmabroker_sys::kcmp::compare_files)
}

/// [`threads_with_own_fd_table`] over given thread ids, with `compare` in
/// place of kcmp (tests count its calls).
pub(super) fn distinct_fd_tables(
    leader: u32,
    tids: impl Iterator<Item = u32>,
    when_unsure: bool,
    max: usize,
    compare: &mut dyn FnMut(u32, u32) -> io::Result<std::cmp::Ordering>,
) -> OwnFdTables {
    use std::cmp::Ordering;
    let gone = |e: &io::Error| e.raw_os_error() == Some(rustix::io::Errno::SRCH.raw_os_error());
    // Representatives of distinct tables, in kcmp's order of their tables.
    let mut sorted: Vec<u32> = Vec::new();
    // Threads kcmp could not place (read as well when `when_unsure`).
    let mut unsure: Vec<u32> = Vec::new();
    for tid in tids {
        if tid == leader {
            continue;
        }
        match compare(leader, tid) {
            Ok(Ordering::Equal) => continue,
            Ok(_) => {}
            // The thread (or the whole process) exited meanwhile.
            Err(e) if gone(&e) => continue,
            Err(_) => {
                if when_unsure {
                    unsure.push(tid);
                }
                if sorted.len() + unsure.len() > max {
                    return OwnFdTables { tids: capped(sorted, unsure, max), complete: false };
                }
                continue;
            }
        }
        let (mut lo, mut hi) = (0, sorted.len());
        let mut new_table = true;
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match compare(sorted[mid], tid) {
                Ok(Ordering::Equal) => {
                    new_table = false;
                    break;
                }
                Ok(Ordering::Less) => lo = mid + 1,
                Ok(Ordering::Greater) => hi = mid,
                Err(_) => {
                    // Either thread may have exited: its table cannot be
                    // placed, so it is read on its own when `when_unsure`.
                    new_table = false;
                    if when_unsure {
                        unsure.push(tid);
                    }
                    break;
                }
            }
        }
        if new_table {
            sorted.insert(lo, tid);
        }
        if sorted.len() + unsure.len() > max {
            return OwnFdTables { tids: capped(sorted, unsure, max), complete: false };
        }
    }
    sorted.extend(unsure);
    OwnFdTables { tids: sorted, complete: true }
}

pub(super) fn capped(mut sorted: Vec<u32>, unsure: Vec<u32>, max: usize) -> Vec<u32> {
    sorted.extend(unsure);
    sorted.truncate(max);
    sorted
}
