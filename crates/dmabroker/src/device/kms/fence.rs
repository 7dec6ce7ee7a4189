//! Waiting on a sync_file (a dma-fence as an fd, `drivers/dma-buf/sync_file.c`):
//! `poll(POLLIN)` reports it signalled; the wait is always bounded.

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

/// A sync_file and what it stands for (named in errors).
#[derive(Debug)]
pub struct SyncFile {
    fd: OwnedFd,
    what: String,
}

/// Why waiting on a sync_file failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FenceWaitError {
    /// It did not signal in time.
    #[error(
        "the fence for {what} did not signal within {} ms: the device or timeline behind it has not \
         finished (for a KMS writeback: is the CRTC active and its vblank running?)",
        .timeout.as_millis()
    )]
    Timeout {
        /// What the fence stands for.
        what: String,
        /// How long was waited.
        timeout: Duration,
    },
    /// `poll` failed.
    #[error("poll on the fence for {what}: {errno}")]
    Os {
        /// What the fence stands for.
        what: String,
        /// The errno.
        errno: Errno,
    },
}

impl SyncFile {
    /// Adopt a sync_file fd; `what` names it in errors ("writeback of
    /// connector 37").
    pub fn new(fd: OwnedFd, what: impl Into<String>) -> Self {
        Self { fd, what: what.into() }
    }

    /// What the fence stands for.
    pub fn what(&self) -> &str {
        &self.what
    }

    /// Wait at most `timeout` for the fence to signal; returns how long it took.
    ///
    /// # Errors
    /// [`FenceWaitError::Timeout`] naming the fence, or [`FenceWaitError::Os`].
    pub fn wait(&self, timeout: Duration) -> Result<Duration, FenceWaitError> {
        let start = Instant::now();
        loop {
            let left = timeout.saturating_sub(start.elapsed());
            let ts = Timespec { tv_sec: left.as_secs() as i64, tv_nsec: i64::from(left.subsec_nanos()) };
            let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
            match poll(&mut fds, Some(&ts)) {
                Ok(n) if n > 0 => return Ok(start.elapsed()),
                Ok(_) if left.is_zero() || start.elapsed() >= timeout => {
                    return Err(FenceWaitError::Timeout { what: self.what.clone(), timeout })
                }
                Ok(_) | Err(Errno::INTR) => continue,
                Err(errno) => return Err(FenceWaitError::Os { what: self.what.clone(), errno }),
            }
        }
    }

    /// Whether it has signalled, without waiting.
    ///
    /// # Errors
    /// [`FenceWaitError::Os`].
    pub fn is_signalled(&self) -> Result<bool, FenceWaitError> {
        match self.wait(Duration::ZERO) {
            Ok(_) => Ok(true),
            Err(FenceWaitError::Timeout { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The fd.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

impl AsFd for SyncFile {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pipe stands in for a fence that never signals: the wait ends in
    /// the typed timeout naming it, and a readable pipe counts as signalled.
    #[test]
    fn wait_is_bounded_and_names_the_fence() {
        let (r, w) = rustix::pipe::pipe().unwrap();
        let f = SyncFile::new(r, "test fence");
        let t0 = Instant::now();
        match f.wait(Duration::from_millis(50)) {
            Err(FenceWaitError::Timeout { what, timeout }) => {
                assert_eq!(what, "test fence");
                assert_eq!(timeout, Duration::from_millis(50));
            }
            other => panic!("{other:?}"),
        }
        assert!(t0.elapsed() >= Duration::from_millis(50));
        assert!(!f.is_signalled().unwrap());
        rustix::io::write(&w, b"x").unwrap();
        assert!(f.is_signalled().unwrap());
        let msg = FenceWaitError::Timeout { what: "writeback of connector 37".into(), timeout: Duration::from_secs(2) }
            .to_string();
        assert!(msg.contains("writeback of connector 37") && msg.contains("2000 ms"), "{msg}");
    }
}
