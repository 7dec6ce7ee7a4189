//! One attachment of `dmabrokersrc` to a pool: the [`Consumer`], a
//! read-only mapping of every frame buffer (made once at attach, so that a
//! frame costs no `mmap`), and the frames downstream still holds.
//!
//! A pushed GstBuffer owns a [`Held`]: the kept frame and the mapping it
//! reads. Freeing the buffer releases the frame back to the producer.

use dmabroker::pool::{attach_by_name, AttachedPool, Consumer, ConsumerOptions, KeptFrame, NamedPoolError, WaitMode};
use dmabroker::BufferKind;
use dmabroker_sys::mmap::{MapError, Mapping, Protection};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

/// The consumer and what the element learnt at attach.
#[derive(Debug)]
pub(crate) struct Attachment {
    consumer: Mutex<Consumer>,
    pub maps: Vec<Arc<Mapping>>,
    pub info: AttachedPool,
    pub dmabuf: bool,
}

impl Attachment {
    /// Attach to `name` through the broker at `broker`.
    pub fn attach(broker: &Path, name: &str) -> Result<Arc<Self>, NamedPoolError> {
        let options = ConsumerOptions { wait: WaitMode::default(), ..ConsumerOptions::default() };
        let (consumer, info) = attach_by_name(broker, name, &options)?;
        let mut maps = Vec::new();
        let mut dmabuf = false;
        for buffer in consumer.buffers() {
            dmabuf |= buffer.kind() == BufferKind::DmaBuf;
            let len = usize::try_from(buffer.len())
                .map_err(|_| NamedPoolError::Os { op: "mmap", source: rustix::io::Errno::FBIG })?;
            let map = Mapping::map(buffer.as_fd(), 0, len, Protection::Read, true)
                .map_err(|e| NamedPoolError::Os { op: "mmap", source: map_errno(e) })?;
            maps.push(Arc::new(map));
        }
        Ok(Arc::new(Self { consumer: Mutex::new(consumer), maps, info, dmabuf }))
    }

    pub fn consumer(&self) -> MutexGuard<'_, Consumer> {
        self.consumer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A dup of buffer `index`'s fd (for dma-buf memory).
    pub fn dup_fd(&self, index: u32) -> Option<OwnedFd> {
        self.consumer().buffers().nth(index as usize)?.try_clone_fd().ok()
    }
}

/// A frame downstream holds: released when the GstMemory is freed.
pub(crate) struct Held {
    pub frame: Option<KeptFrame>,
    pub map: Arc<Mapping>,
    pub len: usize,
    pub attachment: Arc<Attachment>,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        let s = self.map.as_slice();
        &s[..self.len.min(s.len())]
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(frame) = self.frame.take() {
            // A frame of an earlier attachment (the producer restarted) is
            // refused as foreign: nothing to release then.
            let _ = self.attachment.consumer().release_kept(frame);
        }
    }
}

/// The errno a failed frame mapping reports. A pool's frames are dma-bufs or
/// size-sealed memfds (the consumer refuses anything else at attach), so
/// `NotSizeSealed` means a producer broke the pool protocol: `EPERM`.
fn map_errno(e: MapError) -> rustix::io::Errno {
    match e {
        MapError::Os(errno) => errno,
        MapError::NotSizeSealed => rustix::io::Errno::PERM,
        _ => rustix::io::Errno::INVAL,
    }
}
