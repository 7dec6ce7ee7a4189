//! Device fences as sync_files: a [`SyncFile`] is an fd checked to be one
//! (`anon_inode:sync_file`: a Vulkan `SYNC_FD` semaphore or fence export, a
//! KMS `OUT_FENCE_PTR`, a V4L2 out-fence, a sw_sync timeline's fence, a
//! dma-buf's `DMA_BUF_IOCTL_EXPORT_SYNC_FILE`), waited on with a bound and
//! named by what the kernel says about it (`SYNC_IOC_FILE_INFO`).
//!
//! ```no_run
//! use dmabroker::fence::{SyncFile, WaitError};
//! use std::time::Duration;
//! # fn fence_from_device() -> std::os::fd::OwnedFd { unimplemented!() }
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let fence = SyncFile::new(fence_from_device())?;
//! match fence.wait(Duration::from_millis(100)) {
//!     Ok(waited) => println!("done after {waited:?}"),
//!     Err(WaitError::Timeout { fence, waited }) => println!("{fence} still busy after {waited:?}"),
//!     Err(e) => return Err(e.into()),
//! }
//! # Ok(()) }
//! ```
//!
//! # References
//! `drivers/dma-buf/sync_file.c`; `include/uapi/linux/sync_file.h`.

use dmabroker_sys::sync_file::{self as sys, SyncFenceInfo};
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

/// An fd known to be a sync_file. Dropping it closes the fd (the fence
/// itself lives on in whoever else holds it).
#[derive(Debug)]
pub struct SyncFile(OwnedFd);

/// [`SyncFile::new`] was given something else.
#[derive(Debug, thiserror::Error)]
#[error(
    "{what} is not a sync_file: pass a fence fd (a Vulkan SYNC_FD export, a KMS or V4L2 out-fence, a sw_sync fence)"
)]
pub struct NotASyncFile {
    /// What it is instead: its `/proc/self/fd` link (`/memfd:x (deleted)`,
    /// `anon_inode:dmabuf`, `socket:[123]`, a path).
    pub what: String,
}

/// Whether a fence signalled, as `SYNC_IOC_FILE_INFO` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceStatus {
    /// Not signalled yet.
    Pending,
    /// Signalled without error: the work it stands for is done.
    Signalled,
    /// Signalled with an error (`-ENOENT` from a sw_sync timeline closed
    /// before it got there, `-EIO`/`-ETIME` from a GPU hang or reset...):
    /// the work did not complete.
    Failed(Errno),
}

impl FenceStatus {
    fn from_raw(status: i32) -> Self {
        match status {
            0 => Self::Pending,
            s if s > 0 => Self::Signalled,
            s => Self::Failed(Errno::from_raw_os_error(-s)),
        }
    }
}

/// One fence of a sync_file (a merged sync_file holds several).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FencePoint {
    /// Its timeline's name (sw_sync: the command name of the process that
    /// opened the timeline).
    pub timeline: String,
    /// The driver that made it (`sw_sync`, `amdgpu`, `drm_sched`, `stub`...).
    /// Recent kernels (7.2) say `detached-driver` (and the timeline
    /// `signaled-timeline`) once the fence signalled.
    pub driver: String,
    /// Whether it signalled.
    pub status: FenceStatus,
    /// `CLOCK_MONOTONIC` ns when it signalled.
    pub signalled_ns: Option<u64>,
}

/// What the kernel says about a sync_file: enough to name it in an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceInfo {
    /// The sync_file's name (`driver-timeline<context>-<seqno>` unless a
    /// merge named it).
    pub name: String,
    /// The whole file's status.
    pub status: FenceStatus,
    /// Its fences.
    pub fences: Vec<FencePoint>,
}

impl FenceInfo {
    /// `SYNC_IOC_FILE_INFO` of `fence`.
    ///
    /// # Errors
    /// The ioctl's errno (`ENOTTY`: not a sync_file).
    pub fn read(fence: impl AsFd) -> Result<Self, Errno> {
        let (info, points) = sys::file_info(fence)?;
        Ok(Self {
            name: crate::kernel_text::nul_terminated(&info.name),
            status: FenceStatus::from_raw(info.status),
            fences: points_of(&points),
        })
    }

    /// A stand-in when even the ioctl fails, so an error still says why.
    fn unknown(e: Errno) -> Self {
        Self {
            name: format!("<unnamed: SYNC_IOC_FILE_INFO failed: {e}>"),
            status: FenceStatus::Pending,
            fences: vec![],
        }
    }
}

impl std::fmt::Display for FenceInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "\"{}\"", self.name)?;
        for (i, p) in self.fences.iter().enumerate() {
            let sep = if i == 0 { " (" } else { ", " };
            write!(f, "{sep}timeline \"{}\" of driver \"{}\"", p.timeline, p.driver)?;
        }
        if !self.fences.is_empty() {
            f.write_str(")")?;
        }
        Ok(())
    }
}

fn points_of(points: &[SyncFenceInfo]) -> Vec<FencePoint> {
    points
        .iter()
        .map(|p| FencePoint {
            timeline: crate::kernel_text::nul_terminated(&p.obj_name),
            driver: crate::kernel_text::nul_terminated(&p.driver_name),
            status: FenceStatus::from_raw(p.status),
            signalled_ns: (p.timestamp_ns != 0).then_some(p.timestamp_ns),
        })
        .collect()
}

/// Why [`SyncFile::wait`] returned without the fence signalled cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WaitError {
    /// The fence did not signal within the timeout.
    #[error("fence {fence} not signalled after {waited:?}: the device has not finished; wait longer or give up on it")]
    Timeout {
        /// The fence.
        fence: FenceInfo,
        /// How long it was waited on.
        waited: Duration,
    },
    /// The fence signalled with an error: the work did not complete.
    #[error("fence {fence} signalled with error {error} after {waited:?}: the device failed; do not use its output")]
    Failed {
        /// The fence.
        fence: FenceInfo,
        /// The error it carries.
        error: Errno,
        /// How long it was waited on.
        waited: Duration,
    },
    /// `poll` or `SYNC_IOC_FILE_INFO` failed.
    #[error("{op} on a sync_file failed: {source}")]
    Os {
        /// The call.
        op: &'static str,
        /// The errno.
        #[source]
        source: Errno,
    },
}

impl SyncFile {
    /// Take `fd` as a sync_file, told by its `/proc/self/fd` link
    /// (`anon_inode:sync_file`; [`crate::fdinfo::is_sync_file`], no call
    /// into the file's own driver).
    ///
    /// # Errors
    /// [`NotASyncFile`] naming what the fd is; the fd is closed.
    pub fn new(fd: OwnedFd) -> Result<Self, NotASyncFile> {
        if crate::fdinfo::is_sync_file(fd.as_fd()) {
            return Ok(Self(fd));
        }
        let what = crate::fdinfo::fd_link(None, fd.as_raw_fd())
            .unwrap_or_else(|e| format!("unreadable /proc/self/fd link: {e}"));
        // The refused fd may be a file whose release blocks (it came from
        // the caller): close it off this thread.
        crate::closer::close_later(fd);
        Err(NotASyncFile { what })
    }

    /// What the kernel says about it (name, timelines, drivers, status).
    ///
    /// # Errors
    /// The errno of `SYNC_IOC_FILE_INFO`.
    pub fn info(&self) -> Result<FenceInfo, Errno> {
        FenceInfo::read(&self.0)
    }

    /// Whether it signalled, without waiting.
    ///
    /// # Errors
    /// The errno of `SYNC_IOC_FILE_INFO`.
    pub fn status(&self) -> Result<FenceStatus, Errno> {
        status(self.0.as_fd())
    }

    /// Wait at most `timeout` for the fence (`poll(POLLIN)`, restarted
    /// after signals with the time left). Returns how long it waited.
    ///
    /// # Errors
    /// [`WaitError::Timeout`] when it is still pending at the deadline;
    /// [`WaitError::Failed`] when it signalled with an error;
    /// [`WaitError::Os`].
    pub fn wait(&self, timeout: Duration) -> Result<Duration, WaitError> {
        wait(self.0.as_fd(), timeout)
    }

    /// The fd, to hand to a device (a KMS `IN_FENCE_FD`, a Vulkan
    /// semaphore import).
    pub fn into_fd(self) -> OwnedFd {
        self.0
    }
}

impl AsFd for SyncFile {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl From<SyncFile> for OwnedFd {
    fn from(f: SyncFile) -> Self {
        f.0
    }
}

fn status(fence: BorrowedFd<'_>) -> Result<FenceStatus, Errno> {
    Ok(FenceStatus::from_raw(sys::file_status(fence)?.status))
}

/// Wait on a sync_file's fence with a bound.
///
/// The fence is named before the wait: recent kernels (7.2; not 6.12)
/// stop reporting a fence's driver and timeline once it signalled
/// (`detached-driver`, `signaled-timeline`), so a fence that fails while
/// we wait would be unnamed if asked only afterwards. An already signalled fence costs one
/// ioctl and no `poll`.
pub(crate) fn wait(fence: BorrowedFd<'_>, timeout: Duration) -> Result<Duration, WaitError> {
    let start = Instant::now();
    let os = |op| move |source| WaitError::Os { op, source };
    let named = match status(fence).map_err(os("SYNC_IOC_FILE_INFO"))? {
        FenceStatus::Signalled => return Ok(start.elapsed()),
        FenceStatus::Failed(error) => {
            let fence = FenceInfo::read(fence).unwrap_or_else(FenceInfo::unknown);
            return Err(WaitError::Failed { fence, error, waited: start.elapsed() });
        }
        FenceStatus::Pending => FenceInfo::read(fence).unwrap_or_else(FenceInfo::unknown),
    };
    loop {
        let waited = start.elapsed();
        let left = timeout.saturating_sub(waited);
        let t = Timespec { tv_sec: left.as_secs().min(i64::MAX as u64) as i64, tv_nsec: left.subsec_nanos().into() };
        let mut fds = [PollFd::from_borrowed_fd(fence, PollFlags::IN)];
        match poll(&mut fds, Some(&t)) {
            Ok(0) => {}
            Ok(_) if fds[0].revents().contains(PollFlags::NVAL) => return Err(os("poll")(Errno::BADF)),
            Ok(_) => {}
            Err(Errno::INTR) => continue,
            Err(source) => return Err(os("poll")(source)),
        }
        let waited = start.elapsed();
        match status(fence).map_err(os("SYNC_IOC_FILE_INFO"))? {
            FenceStatus::Signalled => return Ok(waited),
            FenceStatus::Failed(error) => {
                let fence = renamed(FenceInfo::read(fence).unwrap_or_else(FenceInfo::unknown), named);
                return Err(WaitError::Failed { fence, error, waited });
            }
            FenceStatus::Pending if waited >= timeout => {
                return Err(WaitError::Timeout { fence: named, waited });
            }
            // Woken early (or poll's rounding): wait out the rest.
            FenceStatus::Pending => {}
        }
    }
}

/// `now`'s statuses with the names `before` had while pending.
fn renamed(mut now: FenceInfo, before: FenceInfo) -> FenceInfo {
    if now.fences.len() == before.fences.len() {
        now.name = before.name;
        for (p, b) in now.fences.iter_mut().zip(before.fences) {
            p.timeline = b.timeline;
            p.driver = b.driver;
        }
    }
    now
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_memfd_is_refused_naming_it() {
        let memfd = rustix::fs::memfd_create("not-a-fence", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        let err = SyncFile::new(memfd).unwrap_err();
        assert!(err.what.contains("memfd:not-a-fence"), "{err}");
        assert!(err.to_string().contains("is not a sync_file"), "{err}");
    }

    #[test]
    fn statuses_from_the_kernel_words() {
        assert_eq!(FenceStatus::from_raw(0), FenceStatus::Pending);
        assert_eq!(FenceStatus::from_raw(1), FenceStatus::Signalled);
        assert_eq!(FenceStatus::from_raw(-2), FenceStatus::Failed(Errno::NOENT));
    }

    #[test]
    fn names_every_timeline() {
        let point = |t: &str| FencePoint {
            timeline: t.into(),
            driver: "sw_sync".into(),
            status: FenceStatus::Pending,
            signalled_ns: None,
        };
        let info =
            FenceInfo { name: "merged".into(), status: FenceStatus::Pending, fences: vec![point("a"), point("b")] };
        assert_eq!(
            info.to_string(),
            "\"merged\" (timeline \"a\" of driver \"sw_sync\", timeline \"b\" of driver \"sw_sync\")"
        );
    }
}
