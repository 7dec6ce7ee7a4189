//! Accounting: who holds which buffers on this machine, per process and per
//! user, like Android's `dmabuf_dump`.
//!
//! [`scan`] walks `/proc`, not the broker: it sees every dma-buf (whoever
//! exported it) and every dmabroker memfd (named `dmabroker:<name>`, see
//! [`crate::heap::memfd`]), held through a file descriptor
//! (`/proc/<pid>/fd`, `/proc/<pid>/fdinfo`; for threads with a file
//! descriptor table of their own, `unshare(CLONE_FILES)`, also
//! `/proc/<pid>/task/<tid>/fd`, listed under the process with the fd numbers
//! of that table) or only through a mapping (`/proc/<pid>/maps`). Other memfds are included with
//! [`ScanOptions::all_memfds`], except that every memfd a broker process
//! holds (`dmabroker serve`, or [`ScanOptions::broker_pids`]) is a dmabroker
//! buffer whatever its name (the broker adopts published memfds as they
//! are), and so is listed, with all its holders.
//!
//! Buffers are identified by filesystem device and inode ([`BufferId`]), so a
//! buffer held by several fds and mappings in several processes is counted
//! once in the totals. A process's `bytes` counts each buffer it holds in
//! full; its `proportional_bytes` charges a buffer held by `n` processes
//! `size / n` to each (like PSS).
//!
//! Processes that exit during the scan, or whose files this user may not read
//! (another user's process without `CAP_SYS_PTRACE`), are skipped and counted
//! in [`Snapshot::unreadable_processes`]; they never fail the scan.
//!
//! Not visible from `/proc`: dma-bufs referenced only by drivers (a V4L2 queue,
//! a DRM framebuffer) once every process has closed them, and CPU mappings
//! that an exporter redirects to another file (some DRM drivers' mmap).
//! Where the kernel has `/sys/kernel/dmabuf/buffers` it fills in the size and
//! exporter of dma-bufs that are only mapped.
//!
//! ```no_run
//! let snapshot = dmabroker::accounting::scan().unwrap();
//! for p in &snapshot.processes {
//!     println!("{} {} {} bytes", p.pid, p.comm, p.bytes);
//! }
//! ```

pub mod bpf_iter;
mod fd_tables;
pub mod ledger;
mod model;
mod parse;
mod scan;
mod snapshot;
pub use fd_tables::{threads_with_own_fd_table, OwnFdTables, MAX_OWN_FD_TABLES};
pub use model::{
    BufferId, BufferRecord, FdHolding, FileStat, Holder, KindTotals, MapHolding, ProcessHoldings, ProcessTotals,
    SizeSource, Totals, UserTotals,
};
pub use parse::{fd_holding, map_holdings};
pub use scan::{process_maps, scan, scan_with, ScanError, ScanOptions};
pub use snapshot::Snapshot;

pub mod procfs;

/// The prefix of every memfd name the library creates.
pub const DMABROKER_PREFIX: &str = "dmabroker:";

#[cfg(test)]
mod tests;
