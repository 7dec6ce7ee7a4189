//! Memory-to-memory V4L2 devices (`V4L2_CAP_VIDEO_M2M`: scalers, colour
//! converters, codecs): one fd with two queues. The application fills
//! `OUTPUT` buffers (frames in, with `bytesused` and a timestamp) and the
//! device writes `CAPTURE` buffers (frames out, carrying the timestamp of
//! the `OUTPUT` buffer they were made from). Both queues are [`Queue`]s of
//! the same [`V4l2Device`]; with `V4L2_MEMORY_DMABUF` on both, a frame
//! goes from one dma-buf to another with no CPU copy.
//!
//! ```no_run
//! use dmabroker::device::v4l2::{find_mem2mem, fourcc, Memory};
//! use std::os::fd::AsFd;
//! use std::time::Duration;
//! # let (input, output): (dmabroker::Buffer, dmabroker::Buffer) = unimplemented!();
//! let dev = find_mem2mem("vim2m")?;
//! let (out_t, cap_t) = (dev.output_type().unwrap(), dev.capture_type().unwrap());
//! let src = dev.set_format(out_t, 640, 480, fourcc(b"RGB3"))?;
//! let dst = dev.set_format(cap_t, 640, 480, fourcc(b"BGR3"))?;
//! let mut outq = dev.request_buffers(out_t, Memory::DmaBuf, 1)?;
//! let mut capq = dev.request_buffers(cap_t, Memory::DmaBuf, 1)?;
//! let used = src.planes[0].sizeimage;
//! outq.queue_dmabuf_output(0, &[input.as_fd()], &[input.len() as u32], &[used], Duration::from_secs(1))?;
//! capq.queue_dmabuf(0, &[output.as_fd()], &[output.len() as u32])?;
//! outq.stream_on()?;
//! capq.stream_on()?;
//! outq.dequeue(Some(Duration::from_secs(5)))?; // the input, consumed
//! let done = capq.dequeue(Some(Duration::from_secs(5)))?; // `dst`, converted
//! assert_eq!(done.timestamp, Duration::from_secs(1));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # References
//! <https://docs.kernel.org/userspace-api/media/v4l/dev-mem2mem.html>,
//! `drivers/media/v4l2-core/v4l2-mem2mem.c`, `drivers/media/test-drivers/vim2m.c`

use super::{video_nodes, BufType, CapFlags, Memory, Queue, QueueError, V4l2Device};
use dmabroker_sys::v4l2 as sys;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

/// Why no mem2mem node of a driver was found.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FindError {
    /// No `/dev/video*` node is a mem2mem device of this driver.
    #[error(
        "no memory-to-memory V4L2 node of driver {driver} (seen: {}); is the driver loaded \
         (modprobe {driver}), and may this user open /dev/video* (the 'video' group)?",
        if seen.is_empty() { "no /dev/video* nodes".to_owned() } else { seen.join(", ") }
    )]
    NotFound {
        /// The driver asked for.
        driver: String,
        /// Each node looked at: `path: driver` and whether it is mem2mem,
        /// or why it could not be opened.
        seen: Vec<String>,
    },
}

/// The first memory-to-memory node (`V4L2_CAP_VIDEO_M2M` or `_MPLANE`)
/// whose driver (`VIDIOC_QUERYCAP`) is `driver`, over `/dev/video*` in
/// order. Node numbers depend on probe order, so this is how to find
/// `vim2m`, `vicodec` or a SoC's scaler.
///
/// # Errors
/// [`FindError::NotFound`], listing every node seen.
pub fn find_mem2mem(driver: &str) -> Result<V4l2Device, FindError> {
    find_mem2mem_by(driver, |_| true)
}

/// [`find_mem2mem`] taking the first node `accept` also takes: a driver
/// with several mem2mem nodes (vicodec: an encoder and two decoders, all
/// named `vicodec`) is told apart by its formats.
///
/// # Errors
/// [`FindError::NotFound`], listing every node seen.
pub fn find_mem2mem_by(driver: &str, mut accept: impl FnMut(&V4l2Device) -> bool) -> Result<V4l2Device, FindError> {
    let mut seen = Vec::new();
    for path in video_nodes() {
        match V4l2Device::open(&path) {
            Ok(dev) => {
                let caps = dev.capabilities();
                let m2m = dev.is_mem2mem();
                if caps.driver == driver && m2m && accept(&dev) {
                    return Ok(dev);
                }
                let kind = if m2m { "mem2mem" } else { "not mem2mem" };
                seen.push(format!("{}: {} ({kind})", path.display(), caps.driver));
            }
            Err(e) => seen.push(format!("{}: {e}", path.display())),
        }
    }
    Err(FindError::NotFound { driver: driver.to_owned(), seen })
}

impl V4l2Device {
    /// Whether this node is memory-to-memory: an `OUTPUT` queue the
    /// application fills and a `CAPTURE` queue the device writes, on this fd.
    pub fn is_mem2mem(&self) -> bool {
        self.caps.device_caps.intersects(CapFlags::VIDEO_M2M | CapFlags::VIDEO_M2M_MPLANE)
    }

    /// The node's output queue type, multi-planar preferred; `None` for a
    /// node that takes no video output (a camera).
    pub fn output_type(&self) -> Option<BufType> {
        let c = self.caps.device_caps;
        if c.intersects(CapFlags::VIDEO_OUTPUT_MPLANE | CapFlags::VIDEO_M2M_MPLANE) {
            Some(BufType::VideoOutputMplane)
        } else if c.intersects(CapFlags::VIDEO_OUTPUT | CapFlags::VIDEO_M2M) {
            Some(BufType::VideoOutput)
        } else {
            None
        }
    }
}

impl Queue<'_> {
    /// `VIDIOC_QBUF` of a `DMABUF` `OUTPUT` queue: hand the device a filled
    /// frame, per plane a dma-buf, its length and the bytes of data in it
    /// (`bytesused`: a codec's compressed frame is shorter than its buffer),
    /// with a timestamp. Mem2mem drivers copy that timestamp to the
    /// `CAPTURE` buffer made from this one (`V4L2_BUF_FLAG_TIMESTAMP_COPY`):
    /// it is how results are paired with their inputs. The kernel keeps its
    /// own reference to each dma-buf: the fds may be closed afterwards.
    ///
    /// # Errors
    /// [`QueueError::NotOutput`] on a capture queue,
    /// [`QueueError::WrongMemory`], [`QueueError::IndexOutOfRange`],
    /// [`QueueError::PlaneCountMismatch`], [`QueueError::PayloadTooLarge`],
    /// [`QueueError::Rejected`] for a dma-buf smaller than the format needs.
    pub fn queue_dmabuf_output(
        &self,
        index: u32,
        fds: &[BorrowedFd<'_>],
        lengths: &[u32],
        bytesused: &[u32],
        timestamp: Duration,
    ) -> Result<(), QueueError> {
        if self.buf_type.is_capture() {
            return Err(QueueError::NotOutput(self.buf_type));
        }
        if self.memory != Memory::DmaBuf {
            return Err(QueueError::WrongMemory(self.memory));
        }
        self.check_index(index)?;
        let got = fds.len().max(lengths.len()).max(bytesused.len());
        if fds.len() != self.planes || lengths.len() != self.planes || bytesused.len() != self.planes {
            return Err(QueueError::PlaneCountMismatch { expected: self.planes, got });
        }
        if let Some(plane) = (0..self.planes).find(|&p| bytesused[p] > lengths[p]) {
            return Err(QueueError::PayloadTooLarge { plane, bytesused: bytesused[plane], length: lengths[plane] });
        }
        let mut b = sys::V4l2Buffer::new(self.buf_type.raw(), sys::memory::DMABUF, index);
        b.field = sys::FIELD_NONE;
        b.timestamp = sys::Timeval {
            tv_sec: timestamp.as_secs().min(i64::MAX as u64) as i64,
            tv_usec: i64::from(timestamp.subsec_micros()),
        };
        if self.buf_type.is_multiplanar() {
            let planes: Vec<sys::V4l2Plane> = (0..self.planes)
                .map(|p| sys::V4l2Plane { bytesused: bytesused[p], ..sys::V4l2Plane::dmabuf(fds[p], lengths[p]) })
                .collect();
            self.qbuf(b, &planes)
        } else {
            b.m.fd = fds[0].as_raw_fd();
            b.length = lengths[0];
            b.bytesused = bytesused[0];
            self.qbuf(b, &[])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_names_the_nodes_it_saw() {
        // No V4L2 driver is called this: every node (if any) is listed.
        match find_mem2mem("no-such-driver") {
            Err(e @ FindError::NotFound { .. }) => {
                let text = e.to_string();
                assert!(text.contains("no-such-driver") && text.contains("modprobe"), "{text}");
            }
            Ok(d) => panic!("found {d:?}"),
        }
    }
}
