//! Received frames: one at a time ([`Frame`]) or kept ([`KeptFrame`]).

use super::{Consumer, FrameInfo};

use crate::buffer::{Buffer, BufferMapping, CpuRead, SyncError};
use crate::pool::FenceError;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

/// A received frame; the buffer goes back to the producer when it drops,
/// unless [`Frame::keep`] detaches it to hold several at once.
#[derive(Debug)]
#[must_use = "dropping the frame gives its buffer back to the producer at once"]
pub struct Frame<'c> {
    pub(super) consumer: &'c mut Consumer,
    pub(super) info: FrameInfo,
    pub(super) sync_file: Option<OwnedFd>,
}

impl Frame<'_> {
    /// What the producer said about it.
    pub fn info(&self) -> &FrameInfo {
        &self.info
    }

    /// The buffer (to import it into a device).
    pub fn buffer(&self) -> &Buffer {
        self.consumer.maps[self.info.index as usize].buffer()
    }

    /// The buffer's read-only CPU mapping.
    pub fn mapping(&mut self) -> &mut BufferMapping {
        &mut self.consumer.maps[self.info.index as usize]
    }

    /// Begin CPU reads of the whole buffer (the frame is the first
    /// [`FrameInfo::bytes_used`] bytes); `DMA_BUF_IOCTL_SYNC` for dma-bufs.
    ///
    /// # Errors
    /// [`SyncError`] when the sync ioctl fails.
    pub fn read(&mut self) -> Result<CpuRead<'_>, SyncError> {
        self.mapping().begin_read()
    }

    /// The frame's sync_file, when the producer sent one (its device's
    /// fence, or one exported from the buffer) and this consumer asked for
    /// them ([`ConsumerOptions::want_sync_files`]).
    pub fn take_sync_file(&mut self) -> Option<OwnedFd> {
        self.sync_file.take()
    }

    /// The frame's sync_file, borrowed (e.g. for a KMS `IN_FENCE_FD`).
    pub fn fence(&self) -> Option<BorrowedFd<'_>> {
        self.sync_file.as_ref().map(|f| f.as_fd())
    }

    /// Wait at most `timeout` for the frame's fence: `Ok` with the time
    /// waited once it signalled (at once, zero, when the frame has no
    /// fence: none was sent, or it was taken). Never blocks past `timeout`.
    ///
    /// ```no_run
    /// # use dmabroker::pool::{Consumer, ConsumerOptions, FenceError};
    /// # use std::time::Duration;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let options = ConsumerOptions { want_sync_files: true, ..Default::default() };
    /// let mut consumer = Consumer::connect_with("/tmp/camera.pool", &options)?;
    /// let mut frame = consumer.recv(None)?;
    /// match frame.wait_fence(Duration::from_millis(100)) {
    ///     Ok(_) => println!("{} bytes ready", frame.read()?.len()),
    ///     Err(e @ FenceError::Timeout { .. }) => eprintln!("skipping: {e}"),
    ///     Err(e) => return Err(e.into()),
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`FenceError::Timeout`] (the frame stays held: wait again or drop
    /// it), [`FenceError::Failed`] (the fence signalled with an error),
    /// [`FenceError::Os`]; each names the frame and the fence.
    pub fn wait_fence(&self, timeout: Duration) -> Result<Duration, FenceError> {
        wait(self.sync_file.as_ref(), self.info.seq, timeout)
    }

    /// Whether the buffer still holds this frame, to check **after**
    /// reading it: true when the consumer was not evicted since it received
    /// the frame, so no byte read before this call was overwritten by the
    /// producer. False after an eviction (the frame was held past the
    /// release timeout): the producer may have reused the buffer, and the
    /// bytes read may be torn or another frame's; discard them (the next
    /// [`Consumer::recv`] fails with [`PoolError::Evicted`]).
    ///
    /// ```no_run
    /// # use dmabroker::pool::{Consumer, WaitMode};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let mut consumer = Consumer::connect("/tmp/camera.pool", WaitMode::default())?;
    /// let mut frame = consumer.recv(None)?;
    /// let copy = frame.read()?.to_vec();
    /// if !frame.is_valid() {
    ///     return Err("evicted while reading: the copy may be torn".into());
    /// }
    /// # Ok(()) }
    /// ```
    pub fn is_valid(&self) -> bool {
        self.consumer.still_active()
    }

    /// Give the buffer back now (same as dropping the frame).
    pub fn release(self) {}

    /// Keep the frame past this borrow of the consumer, so that the next
    /// [`Consumer::recv`] can run while the buffer stays held. Read it with
    /// [`Consumer::read_kept`], give it back with [`Consumer::release_kept`].
    /// A sync_file not taken yet goes with it.
    pub fn keep(mut self) -> KeptFrame {
        let kept =
            KeptFrame { attachment: self.consumer.attachment, info: self.info, sync_file: self.sync_file.take() };
        // The buffer stays held: skip the release in `Drop`. Nothing else
        // in the frame needs dropping (a reference, plain data, `None`).
        std::mem::forget(self);
        kept
    }
}

/// A frame detached from the borrow of its [`Consumer`] by [`Frame::keep`]:
/// its buffer stays held (the producer cannot reuse it) until
/// [`Consumer::release_kept`].
///
/// It names the attachment that received it: the consumer methods that
/// take it refuse a kept frame of another consumer, or of an earlier
/// attachment of the same process ([`KeptError::Foreign`], [`ForeignFrame`]).
///
/// Dropping it does **not** release the buffer (no reference to the
/// consumer is kept): the buffer stays held until the consumer is dropped,
/// or until the producer evicts the consumer for holding it past
/// [`PoolOptions::release_timeout`](crate::pool::PoolOptions::release_timeout).
#[derive(Debug)]
#[must_use = "a kept frame holds its buffer until Consumer::release_kept (dropping it does not release it)"]
pub struct KeptFrame {
    pub(super) attachment: u64,
    pub(super) info: FrameInfo,
    pub(super) sync_file: Option<OwnedFd>,
}

impl KeptFrame {
    /// What the producer said about it.
    pub fn info(&self) -> &FrameInfo {
        &self.info
    }

    /// The frame's sync_file, when the producer sent one and the
    /// consumer asked for them ([`ConsumerOptions::want_sync_files`]).
    pub fn take_sync_file(&mut self) -> Option<OwnedFd> {
        self.sync_file.take()
    }

    /// The frame's sync_file, borrowed.
    pub fn fence(&self) -> Option<BorrowedFd<'_>> {
        self.sync_file.as_ref().map(|f| f.as_fd())
    }

    /// Wait at most `timeout` for the frame's fence, as [`Frame::wait_fence`].
    ///
    /// # Errors
    /// As [`Frame::wait_fence`].
    pub fn wait_fence(&self, timeout: Duration) -> Result<Duration, FenceError> {
        wait(self.sync_file.as_ref(), self.info.seq, timeout)
    }
}

/// The bounded wait of both frame kinds.
fn wait(fence: Option<&OwnedFd>, seq: u64, timeout: Duration) -> Result<Duration, FenceError> {
    match fence {
        // Received fds were checked to be sync_files (Consumer::take_sync_file).
        Some(fd) => crate::fence::wait(fd.as_fd(), timeout).map_err(|e| FenceError::of(seq, e)),
        None => Ok(Duration::ZERO),
    }
}

/// Why a [`KeptFrame`] could not be used with a consumer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeptError {
    /// The frame was received by another consumer, or by an earlier
    /// attachment: only the consumer that received it can use it.
    #[error(
        "the kept frame of buffer {index} belongs to another consumer attachment: use the consumer that received it"
    )]
    Foreign {
        /// The frame's buffer index.
        index: u32,
    },
    /// The producer evicted this consumer and took the buffer back: it
    /// may hold another frame now.
    #[error("evicted by the producer: the kept frame was held longer than the pool's release timeout")]
    Evicted,
    /// CPU access could not begin.
    #[error(transparent)]
    Sync(#[from] SyncError),
}

/// [`Consumer::release_kept`] was given a frame another consumer (or an
/// earlier attachment) received; the frame is handed back untouched.
#[derive(Debug)]
pub struct ForeignFrame(pub KeptFrame);

impl ForeignFrame {
    /// The kept frame, to release on the consumer that received it.
    pub fn into_frame(self) -> KeptFrame {
        self.0
    }
}

impl std::fmt::Display for ForeignFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the kept frame of buffer {} belongs to another consumer attachment: release it on the consumer that received it",
            self.0.info.index
        )
    }
}

impl std::error::Error for ForeignFrame {}

impl Drop for Frame<'_> {
    fn drop(&mut self) {
        self.consumer.release(self.info.index);
    }
}
