//! V4L2 video devices: capabilities, formats, and buffer queues that capture
//! into imported dma-bufs (`V4L2_MEMORY_DMABUF`) or export the driver's own
//! buffers (`V4L2_MEMORY_MMAP` + `VIDIOC_EXPBUF`); memory-to-memory devices
//! (an `OUTPUT` and a `CAPTURE` queue on one fd) in [`m2m`], controls in
//! [`control`].
//!
//! ```no_run
//! use dmabroker::device::v4l2::{fourcc, BufType, Memory, V4l2Device};
//! use dmabroker::heap::{AllocRequest, Heaps};
//! use std::os::fd::AsFd;
//! use std::time::Duration;
//!
//! let dev = V4l2Device::open("/dev/video0")?;
//! let bt = dev.capture_type().expect("a capture node");
//! let fmt = dev.set_format(bt, 640, 480, fourcc(b"YUYV"))?;
//! let heaps = Heaps::discover();
//! let bufs: Vec<_> = (0..4)
//!     .map(|_| heaps.allocate("dma-heap/system", &AllocRequest::new(fmt.planes[0].sizeimage.into())))
//!     .collect::<Result<_, _>>()?;
//! let mut queue = dev.request_buffers(bt, Memory::DmaBuf, 4)?;
//! for (i, b) in bufs.iter().enumerate() {
//!     queue.queue_dmabuf(i as u32, &[b.as_fd()], &[fmt.planes[0].sizeimage])?;
//! }
//! queue.stream_on()?;
//! let frame = queue.dequeue(Some(Duration::from_secs(5)))?;
//! println!("frame {} in buffer {}", frame.sequence, frame.index);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # References
//! <https://docs.kernel.org/userspace-api/media/v4l/dmabuf.html>,
//! <https://docs.kernel.org/userspace-api/media/v4l/vidioc-expbuf.html>

use dmabroker_sys::v4l2 as sys;
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::fs::{open, Mode, OFlags};
use rustix::io::Errno;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use dmabroker_sys::v4l2::fourcc;

pub mod control;
pub mod m2m;
pub use control::{ControlError, ControlId};
pub use m2m::{find_mem2mem, find_mem2mem_by, FindError};

bitflags::bitflags! {
    /// `V4L2_CAP_*` of a device node (the subset dmabroker acts on).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct CapFlags: u32 {
        /// Single-planar video capture.
        const VIDEO_CAPTURE = sys::cap::VIDEO_CAPTURE;
        /// Single-planar video output.
        const VIDEO_OUTPUT = sys::cap::VIDEO_OUTPUT;
        /// Multi-planar video capture.
        const VIDEO_CAPTURE_MPLANE = sys::cap::VIDEO_CAPTURE_MPLANE;
        /// Multi-planar video output.
        const VIDEO_OUTPUT_MPLANE = sys::cap::VIDEO_OUTPUT_MPLANE;
        /// Multi-planar memory-to-memory.
        const VIDEO_M2M_MPLANE = sys::cap::VIDEO_M2M_MPLANE;
        /// Single-planar memory-to-memory.
        const VIDEO_M2M = sys::cap::VIDEO_M2M;
        /// `read()`/`write()` I/O.
        const READWRITE = sys::cap::READWRITE;
        /// Streaming I/O (buffer queues).
        const STREAMING = sys::cap::STREAMING;
    }
}

/// A queue's buffer type (`enum v4l2_buf_type`, the video subset).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BufType {
    /// `V4L2_BUF_TYPE_VIDEO_CAPTURE`: one buffer per frame.
    VideoCapture,
    /// `V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE`: one buffer per plane.
    VideoCaptureMplane,
    /// `V4L2_BUF_TYPE_VIDEO_OUTPUT`.
    VideoOutput,
    /// `V4L2_BUF_TYPE_VIDEO_OUTPUT_MPLANE`.
    VideoOutputMplane,
}

impl BufType {
    /// The kernel value.
    pub fn raw(self) -> u32 {
        match self {
            Self::VideoCapture => sys::buf_type::VIDEO_CAPTURE,
            Self::VideoCaptureMplane => sys::buf_type::VIDEO_CAPTURE_MPLANE,
            Self::VideoOutput => sys::buf_type::VIDEO_OUTPUT,
            Self::VideoOutputMplane => sys::buf_type::VIDEO_OUTPUT_MPLANE,
        }
    }

    /// Whether buffers of this type have a separate memory buffer per plane.
    pub fn is_multiplanar(self) -> bool {
        matches!(self, Self::VideoCaptureMplane | Self::VideoOutputMplane)
    }

    fn is_capture(self) -> bool {
        matches!(self, Self::VideoCapture | Self::VideoCaptureMplane)
    }
}

/// A queue's memory model (`enum v4l2_memory`); `USERPTR` is not offered
/// because it lets a device write into memory Rust owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Memory {
    /// `V4L2_MEMORY_MMAP`: the driver allocates; export with
    /// [`Queue::export_buffer`].
    Mmap,
    /// `V4L2_MEMORY_DMABUF`: the application queues dma-buf fds.
    DmaBuf,
}

impl Memory {
    fn raw(self) -> u32 {
        match self {
            Self::Mmap => sys::memory::MMAP,
            Self::DmaBuf => sys::memory::DMABUF,
        }
    }
}

/// What `VIDIOC_QUERYCAP` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// Driver name (`vivid`, `uvcvideo`, ...).
    pub driver: String,
    /// Device name.
    pub card: String,
    /// Bus location.
    pub bus_info: String,
    /// Capabilities of this node (the known subset; unknown bits are
    /// dropped: drivers report many features dmabroker does not use).
    pub device_caps: CapFlags,
}

/// One entry of `VIDIOC_ENUM_FMT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatDesc {
    /// Pixel format fourcc.
    pub pixelformat: u32,
    /// The driver's description.
    pub description: String,
    /// `V4L2_FMT_FLAG_*`.
    pub flags: u32,
}

/// The layout of one memory plane as the driver set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlaneLayout {
    /// Bytes per line, padding included.
    pub bytesperline: u32,
    /// Bytes the plane's buffer must hold.
    pub sizeimage: u32,
}

/// One entry of `VIDIOC_ENUMINPUT`: a video input a capture node can select
/// with [`V4l2Device::set_input`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// Its index (what [`V4l2Device::input`] returns and
    /// [`V4l2Device::set_input`] takes).
    pub index: u32,
    /// Its label (vivid: `Webcam 0`, `TV 1`, `S-Video 2`, `HDMI 3`).
    pub name: String,
    /// Whether it is an analog TV tuner (`V4L2_INPUT_TYPE_TUNER`); other
    /// video inputs are `V4L2_INPUT_TYPE_CAMERA`.
    pub tuner: bool,
    /// `V4L2_IN_ST_*` signal status bits (0: a signal is present).
    pub status: u32,
}

/// A format as the driver answered it (it may differ from what was asked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    /// The queue this format is for.
    pub buf_type: BufType,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Pixel format fourcc.
    pub pixelformat: u32,
    /// `enum v4l2_field`.
    pub field: u32,
    /// One entry per memory buffer: one for single-planar types.
    pub planes: Vec<PlaneLayout>,
}

impl Format {
    fn from_raw(buf_type: BufType, f: &sys::V4l2Format) -> Self {
        if buf_type.is_multiplanar() {
            let mp = f.pix_mp();
            let n = usize::from(mp.num_planes).min(sys::VIDEO_MAX_PLANES);
            let plane_fmt = mp.plane_fmt;
            Self {
                buf_type,
                width: mp.width,
                height: mp.height,
                pixelformat: mp.pixelformat,
                field: mp.field,
                planes: plane_fmt[..n]
                    .iter()
                    .map(|p| PlaneLayout { bytesperline: p.bytesperline, sizeimage: p.sizeimage })
                    .collect(),
            }
        } else {
            let p = f.pix();
            Self {
                buf_type,
                width: p.width,
                height: p.height,
                pixelformat: p.pixelformat,
                field: p.field,
                planes: vec![PlaneLayout { bytesperline: p.bytesperline, sizeimage: p.sizeimage }],
            }
        }
    }
}

/// Why a V4L2 device could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// `open` failed.
    #[error("cannot open {path}: {source} (does it exist, and may this user open it? see the 'video' group)")]
    Open {
        /// The node.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// `VIDIOC_QUERYCAP` failed: not a V4L2 node.
    #[error("{path} is not a V4L2 device (VIDIOC_QUERYCAP: {errno})")]
    NotV4l2 {
        /// The node.
        path: PathBuf,
        /// The errno.
        errno: Errno,
    },
}

/// Why a format could not be read, enumerated or set.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The node has no queue of this type.
    #[error("the device has no {0:?} queue (is it a capture device? multi-planar?)")]
    UnsupportedBufType(BufType),
    /// Buffers are allocated.
    #[error("the format cannot change while buffers are allocated: drop the queue first")]
    Busy,
    /// Another errno.
    #[error("V4L2 format ioctl failed: {0}")]
    Os(#[source] Errno),
}

/// Why a video input could not be listed, read or selected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// The node has no inputs (an output or memory-to-memory node).
    #[error("the device has no video inputs (VIDIOC_G_INPUT/S_INPUT unsupported)")]
    NoInputs,
    /// No input has this index.
    #[error("no video input {0} (see V4l2Device::inputs)")]
    NoSuchInput(u32),
    /// Buffers are allocated.
    #[error("the input cannot change while buffers are allocated: drop the queue first")]
    Busy,
    /// Another errno.
    #[error("V4L2 input ioctl failed: {0}")]
    Os(#[source] Errno),
}

/// Why `VIDIOC_REQBUFS` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestBuffersError {
    /// The node does not stream.
    #[error("not a V4L2 streaming device (no V4L2_CAP_STREAMING)")]
    NotStreaming,
    /// The node has no queue of this type.
    #[error("the device has no {0:?} queue")]
    UnsupportedBufType(BufType),
    /// The driver refused the memory model.
    #[error("driver refused {0:?} memory (check its V4L2_BUF_CAP_SUPPORTS_* bits)")]
    MemoryUnsupported(Memory),
    /// Buffers are still in use.
    #[error("the queue is busy: buffers are mapped, exported or streaming")]
    Busy,
    /// The driver granted no buffers.
    #[error("the driver granted 0 buffers")]
    NoBuffers,
    /// Another errno.
    #[error("VIDIOC_REQBUFS failed: {0}")]
    Os(#[source] Errno),
}

/// Why a buffer could not be queued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// Index past the allocated buffers.
    #[error("buffer index {index} out of range: the queue has {count} buffers")]
    IndexOutOfRange {
        /// The index.
        index: u32,
        /// Buffers in the queue.
        count: u32,
    },
    /// The number of fds or lengths does not match the format's planes.
    #[error("{got} planes given, the format has {expected} (fds and lengths must match one-to-one)")]
    PlaneCountMismatch {
        /// Planes of the current format.
        expected: usize,
        /// Planes passed.
        got: usize,
    },
    /// The call does not match the queue's memory model.
    #[error("this queue uses {0:?} memory")]
    WrongMemory(Memory),
    /// Only an `OUTPUT` queue takes frames with a payload.
    #[error("{0:?} is not an output queue: queue_dmabuf_output is for the OUTPUT queue of a mem2mem or output device")]
    NotOutput(BufType),
    /// A plane's `bytesused` exceeds its length.
    #[error("plane {plane}: {bytesused} bytes of data do not fit its {length}-byte buffer")]
    PayloadTooLarge {
        /// The plane.
        plane: usize,
        /// Bytes of data given.
        bytesused: u32,
        /// Its buffer's length.
        length: u32,
    },
    /// The driver rejected the buffer.
    #[error("the driver rejected the buffer (already queued, or a dma-buf smaller than the format needs): {0}")]
    Rejected(#[source] Errno),
    /// Another errno.
    #[error("VIDIOC_QBUF failed: {0}")]
    Os(#[source] Errno),
}

/// Why a buffer could not be dequeued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DequeueError {
    /// No buffer was ready in time.
    #[error("no frame within {0:?}: is the queue streaming with buffers queued?")]
    Timeout(Duration),
    /// Not streaming, or nothing queued.
    #[error("the queue is not streaming (call stream_on after queueing buffers)")]
    NotStreaming,
    /// The last buffer of a drained stream was already returned.
    #[error("the stream has ended (EPIPE)")]
    EndOfStream,
    /// Another errno.
    #[error("VIDIOC_DQBUF failed: {0}")]
    Os(#[source] Errno),
}

/// Why streaming could not start or stop.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// Another errno.
    #[error("VIDIOC_STREAMON/OFF failed: {0}")]
    Os(#[source] Errno),
}

/// Why `VIDIOC_EXPBUF` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// Only driver-allocated buffers can be exported.
    #[error("only MMAP queues can export buffers (this one imports dma-bufs)")]
    NotMmap,
    /// Index or plane out of range.
    #[error("buffer {index} plane {plane} does not exist")]
    OutOfRange {
        /// The index.
        index: u32,
        /// The plane.
        plane: u32,
    },
    /// The driver cannot export.
    #[error("the driver does not support VIDIOC_EXPBUF")]
    Unsupported,
    /// Another errno.
    #[error("VIDIOC_EXPBUF failed: {0}")]
    Os(#[source] Errno),
}

/// A frame returned by [`Queue::dequeue`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dequeued {
    /// Buffer index.
    pub index: u32,
    /// Frame sequence number.
    pub sequence: u32,
    /// Capture time (clock per the buffer flags, usually `CLOCK_MONOTONIC`).
    pub timestamp: Duration,
    /// Bytes of data per plane.
    pub bytesused: Vec<u32>,
    /// The driver flagged the frame as possibly corrupt (`V4L2_BUF_FLAG_ERROR`).
    pub error: bool,
}

/// An open V4L2 video node.
#[derive(Debug)]
pub struct V4l2Device {
    fd: OwnedFd,
    path: PathBuf,
    caps: Capabilities,
}

/// The `/dev/video*` nodes of this machine, sorted.
pub fn video_nodes() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir("/dev")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("video"))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    v.sort_by_key(|p| {
        let s = p.to_string_lossy();
        (s.len(), s.into_owned())
    });
    v
}

impl V4l2Device {
    /// Open a node read-write, non-blocking, and query its capabilities.
    ///
    /// # Errors
    /// [`OpenError::Open`] when the node cannot be opened,
    /// [`OpenError::NotV4l2`] when it is not a V4L2 device.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, OpenError> {
        let path = path.as_ref().to_path_buf();
        let fd = open(&path, OFlags::RDWR | OFlags::NONBLOCK | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| OpenError::Open { path: path.clone(), source: e.into() })?;
        let raw = sys::querycap(&fd).map_err(|errno| OpenError::NotV4l2 { path: path.clone(), errno })?;
        let bits = if raw.capabilities & sys::cap::DEVICE_CAPS != 0 { raw.device_caps } else { raw.capabilities };
        let caps = Capabilities {
            driver: crate::kernel_text::nul_terminated(&raw.driver),
            card: crate::kernel_text::nul_terminated(&raw.card),
            bus_info: crate::kernel_text::nul_terminated(&raw.bus_info),
            device_caps: CapFlags::from_bits_truncate(bits),
        };
        Ok(Self { fd, path, caps })
    }

    /// The node's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What `VIDIOC_QUERYCAP` said.
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// The node's capture queue type, multi-planar preferred; `None` for a
    /// node that does not capture video.
    pub fn capture_type(&self) -> Option<BufType> {
        let c = self.caps.device_caps;
        if c.intersects(CapFlags::VIDEO_CAPTURE_MPLANE | CapFlags::VIDEO_M2M_MPLANE) {
            Some(BufType::VideoCaptureMplane)
        } else if c.intersects(CapFlags::VIDEO_CAPTURE | CapFlags::VIDEO_M2M) {
            Some(BufType::VideoCapture)
        } else {
            None
        }
    }

    fn format_errno(buf_type: BufType, e: Errno) -> FormatError {
        match e {
            Errno::INVAL => FormatError::UnsupportedBufType(buf_type),
            Errno::BUSY => FormatError::Busy,
            e => FormatError::Os(e),
        }
    }

    /// `VIDIOC_ENUM_FMT`: every pixel format of a queue type.
    ///
    /// # Errors
    /// [`FormatError::UnsupportedBufType`] when the first entry is refused.
    pub fn formats(&self, buf_type: BufType) -> Result<Vec<FormatDesc>, FormatError> {
        let mut out = Vec::new();
        // Bounded: a buggy driver must not make this loop forever.
        for index in 0..1024 {
            match sys::enum_fmt(&self.fd, buf_type.raw(), index) {
                Ok(d) => out.push(FormatDesc {
                    pixelformat: d.pixelformat,
                    description: crate::kernel_text::nul_terminated(&d.description),
                    flags: d.flags,
                }),
                Err(Errno::INVAL) if index > 0 => break,
                Err(e) => return Err(Self::format_errno(buf_type, e)),
            }
        }
        Ok(out)
    }

    /// `VIDIOC_G_FMT`: the current format.
    ///
    /// # Errors
    /// [`FormatError::UnsupportedBufType`] for a queue the node lacks.
    pub fn format(&self, buf_type: BufType) -> Result<Format, FormatError> {
        let f = sys::g_fmt(&self.fd, buf_type.raw()).map_err(|e| Self::format_errno(buf_type, e))?;
        Ok(Format::from_raw(buf_type, &f))
    }

    fn request(buf_type: BufType, width: u32, height: u32, pixelformat: u32, bytesperline: &[u32]) -> sys::V4l2Format {
        if buf_type.is_multiplanar() {
            let mut mp =
                sys::V4l2PixFormatMplane { width, height, pixelformat, field: sys::FIELD_NONE, ..Default::default() };
            for (plane, &bpl) in mp.plane_fmt.iter_mut().zip(bytesperline) {
                plane.bytesperline = bpl;
            }
            // At most VIDEO_MAX_PLANES (8) entries were used: fits in u8.
            mp.num_planes = bytesperline.len().min(sys::VIDEO_MAX_PLANES) as u8;
            sys::V4l2Format::multi(buf_type.raw(), mp)
        } else {
            sys::V4l2Format::single(
                buf_type.raw(),
                sys::V4l2PixFormat {
                    width,
                    height,
                    pixelformat,
                    field: sys::FIELD_NONE,
                    bytesperline: bytesperline.first().copied().unwrap_or(0),
                    ..Default::default()
                },
            )
        }
    }

    /// `VIDIOC_S_FMT`: ask for a size and pixel format (progressive); returns
    /// what the driver set, which may differ: compare before relying on it.
    ///
    /// # Errors
    /// [`FormatError::Busy`] while buffers are allocated;
    /// [`FormatError::UnsupportedBufType`].
    pub fn set_format(
        &self,
        buf_type: BufType,
        width: u32,
        height: u32,
        pixelformat: u32,
    ) -> Result<Format, FormatError> {
        self.set_format_with_pitches(buf_type, width, height, pixelformat, &[])
    }

    /// [`set_format`](Self::set_format) asking for a `bytesperline` per
    /// memory plane (one entry for single-planar types; missing entries, or
    /// 0, leave the choice to the driver), e.g. the pitches of a
    /// [`Layout`](crate::format::Layout) padded with `stride_align`. Drivers
    /// that support padding (vivid, most DMA engines with a stride register)
    /// keep a larger pitch and grow `sizeimage` to match; others replace it
    /// with their own: compare the answer before relying on it.
    ///
    /// # Errors
    /// As [`set_format`](Self::set_format).
    pub fn set_format_with_pitches(
        &self,
        buf_type: BufType,
        width: u32,
        height: u32,
        pixelformat: u32,
        bytesperline: &[u32],
    ) -> Result<Format, FormatError> {
        let f = sys::s_fmt(&self.fd, Self::request(buf_type, width, height, pixelformat, bytesperline))
            .map_err(|e| Self::format_errno(buf_type, e))?;
        Ok(Format::from_raw(buf_type, &f))
    }

    /// `VIDIOC_TRY_FMT`: what [`set_format`](Self::set_format) would give,
    /// without changing anything.
    ///
    /// # Errors
    /// As [`set_format`](Self::set_format).
    pub fn try_format(
        &self,
        buf_type: BufType,
        width: u32,
        height: u32,
        pixelformat: u32,
    ) -> Result<Format, FormatError> {
        let f = sys::try_fmt(&self.fd, Self::request(buf_type, width, height, pixelformat, &[]))
            .map_err(|e| Self::format_errno(buf_type, e))?;
        Ok(Format::from_raw(buf_type, &f))
    }

    /// `VIDIOC_ENUMINPUT`: the node's video inputs; empty for a node
    /// without inputs.
    ///
    /// # Errors
    /// [`InputError::Os`] for an unexpected errno.
    pub fn inputs(&self) -> Result<Vec<Input>, InputError> {
        let mut out = Vec::new();
        // Bounded: a buggy driver must not make this loop forever.
        for index in 0..256 {
            match sys::enum_input(&self.fd, index) {
                Ok(i) => out.push(Input {
                    index: i.index,
                    name: crate::kernel_text::nul_terminated(&i.name),
                    tuner: i.type_ == sys::input_type::TUNER,
                    status: i.status,
                }),
                Err(Errno::INVAL | Errno::NOTTY) => break,
                Err(e) => return Err(InputError::Os(e)),
            }
        }
        Ok(out)
    }

    /// `VIDIOC_G_INPUT`: the index of the current video input.
    ///
    /// # Errors
    /// [`InputError::NoInputs`] for a node without inputs.
    pub fn input(&self) -> Result<u32, InputError> {
        sys::g_input(&self.fd).map_err(|e| match e {
            Errno::NOTTY => InputError::NoInputs,
            e => InputError::Os(e),
        })
    }

    /// `VIDIOC_S_INPUT`: select video input `index`. Drivers usually reset
    /// the format to the new input's default: set the format afterwards.
    ///
    /// # Errors
    /// [`InputError::NoSuchInput`], [`InputError::Busy`] while buffers are
    /// allocated, [`InputError::NoInputs`].
    pub fn set_input(&self, index: u32) -> Result<(), InputError> {
        sys::s_input(&self.fd, index).map_err(|e| match e {
            Errno::INVAL => InputError::NoSuchInput(index),
            Errno::BUSY => InputError::Busy,
            Errno::NOTTY => InputError::NoInputs,
            e => InputError::Os(e),
        })
    }

    /// `VIDIOC_REQBUFS`: allocate `count` buffer slots for a memory model.
    /// The returned [`Queue`] frees them (and stops streaming) on drop.
    ///
    /// # Errors
    /// [`RequestBuffersError::MemoryUnsupported`] when the driver refuses the
    /// memory model, [`RequestBuffersError::Busy`] when a queue exists already.
    pub fn request_buffers(
        &self,
        buf_type: BufType,
        memory: Memory,
        count: u32,
    ) -> Result<Queue<'_>, RequestBuffersError> {
        if !self.caps.device_caps.contains(CapFlags::STREAMING) {
            return Err(RequestBuffersError::NotStreaming);
        }
        let format = self.format(buf_type).map_err(|e| match e {
            FormatError::Os(e) => RequestBuffersError::Os(e),
            FormatError::Busy => RequestBuffersError::Busy,
            FormatError::UnsupportedBufType(t) => RequestBuffersError::UnsupportedBufType(t),
        })?;
        let req = sys::reqbufs(&self.fd, buf_type.raw(), memory.raw(), count).map_err(|e| match e {
            Errno::INVAL => RequestBuffersError::MemoryUnsupported(memory),
            Errno::BUSY => RequestBuffersError::Busy,
            e => RequestBuffersError::Os(e),
        })?;
        if req.count == 0 && count > 0 {
            return Err(RequestBuffersError::NoBuffers);
        }
        Ok(Queue { dev: self, buf_type, memory, count: req.count, planes: format.planes.len(), streaming: false })
    }
}

impl AsFd for V4l2Device {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The allocated buffers of one queue of a [`V4l2Device`]: queue, dequeue,
/// stream, export. Dropping it stops streaming and frees the buffers
/// (`VIDIOC_REQBUFS` with count 0); exported or imported dma-bufs stay valid.
#[derive(Debug)]
pub struct Queue<'d> {
    dev: &'d V4l2Device,
    buf_type: BufType,
    memory: Memory,
    count: u32,
    planes: usize,
    streaming: bool,
}

impl Queue<'_> {
    /// Buffers the driver allocated (may differ from what was asked).
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Memory planes per buffer, per the format when the queue was made.
    pub fn planes(&self) -> usize {
        self.planes
    }

    /// The queue's memory model.
    pub fn memory(&self) -> Memory {
        self.memory
    }

    fn check_index(&self, index: u32) -> Result<(), QueueError> {
        if index >= self.count {
            return Err(QueueError::IndexOutOfRange { index, count: self.count });
        }
        Ok(())
    }

    fn qbuf(&self, buffer: sys::V4l2Buffer, planes: &[sys::V4l2Plane]) -> Result<(), QueueError> {
        sys::qbuf(&self.dev.fd, buffer, planes).map_err(|e| match e {
            Errno::INVAL => QueueError::Rejected(e),
            e => QueueError::Os(e),
        })?;
        Ok(())
    }

    /// `VIDIOC_QBUF` of a `DMABUF` queue: give buffer slot `index` the
    /// dma-bufs to fill, one fd and one length per plane. The kernel keeps its
    /// own reference: the fds may be closed afterwards.
    ///
    /// # Errors
    /// [`QueueError::PlaneCountMismatch`], [`QueueError::IndexOutOfRange`],
    /// [`QueueError::Rejected`] for a dma-buf smaller than the plane needs.
    pub fn queue_dmabuf(&self, index: u32, fds: &[BorrowedFd<'_>], lengths: &[u32]) -> Result<(), QueueError> {
        if self.memory != Memory::DmaBuf {
            return Err(QueueError::WrongMemory(self.memory));
        }
        self.check_index(index)?;
        if fds.len() != self.planes || lengths.len() != self.planes {
            return Err(QueueError::PlaneCountMismatch { expected: self.planes, got: fds.len().max(lengths.len()) });
        }
        let mut b = sys::V4l2Buffer::new(self.buf_type.raw(), sys::memory::DMABUF, index);
        if self.buf_type.is_multiplanar() {
            let planes: Vec<sys::V4l2Plane> =
                fds.iter().zip(lengths).map(|(fd, &len)| sys::V4l2Plane::dmabuf(fd, len)).collect();
            self.qbuf(b, &planes)
        } else {
            b.m.fd = std::os::fd::AsRawFd::as_raw_fd(&fds[0]);
            b.length = lengths[0];
            self.qbuf(b, &[])
        }
    }

    /// `VIDIOC_QBUF` of an `MMAP` queue: hand buffer `index` back to the driver.
    ///
    /// # Errors
    /// [`QueueError::WrongMemory`] on a `DMABUF` queue;
    /// [`QueueError::IndexOutOfRange`]; [`QueueError::Rejected`].
    pub fn queue_mmap(&self, index: u32) -> Result<(), QueueError> {
        if self.memory != Memory::Mmap {
            return Err(QueueError::WrongMemory(self.memory));
        }
        self.check_index(index)?;
        let b = sys::V4l2Buffer::new(self.buf_type.raw(), sys::memory::MMAP, index);
        let planes = vec![sys::V4l2Plane::default(); if self.buf_type.is_multiplanar() { self.planes } else { 0 }];
        self.qbuf(b, &planes)
    }

    /// `VIDIOC_DQBUF`: wait (up to `timeout`, or forever with `None`) for a
    /// filled buffer and take it back; on an `OUTPUT` queue, a buffer the
    /// device has consumed. A mem2mem fd polls for both queues: dequeue
    /// consumed `OUTPUT` buffers too (while one waits undequeued, a wait on
    /// `CAPTURE` wakes for it and backs off 1 ms per wake-up).
    ///
    /// # Errors
    /// [`DequeueError::Timeout`], [`DequeueError::NotStreaming`],
    /// [`DequeueError::EndOfStream`].
    pub fn dequeue(&self, timeout: Option<Duration>) -> Result<Dequeued, DequeueError> {
        let start = Instant::now();
        let events = if self.buf_type.is_capture() { PollFlags::IN } else { PollFlags::OUT };
        loop {
            match sys::dqbuf(&self.dev.fd, self.buf_type.raw(), self.memory.raw()) {
                Ok(info) => {
                    let b = info.buffer;
                    let bytesused = if self.buf_type.is_multiplanar() {
                        info.planes().iter().map(|p| p.bytesused).collect()
                    } else {
                        vec![b.bytesused]
                    };
                    let ts = b.timestamp;
                    let timestamp =
                        Duration::new(ts.tv_sec.max(0) as u64, (ts.tv_usec.clamp(0, 999_999) * 1000) as u32);
                    return Ok(Dequeued {
                        index: b.index,
                        sequence: b.sequence,
                        timestamp,
                        bytesused,
                        error: b.flags & sys::buf_flag::ERROR != 0,
                    });
                }
                Err(Errno::AGAIN) => {}
                Err(Errno::INVAL) => return Err(DequeueError::NotStreaming),
                Err(Errno::PIPE) => return Err(DequeueError::EndOfStream),
                Err(e) => return Err(DequeueError::Os(e)),
            }
            let left = match timeout {
                Some(t) => match t.checked_sub(start.elapsed()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return Err(DequeueError::Timeout(t)),
                },
                None => None,
            };
            let ts = left.map(|d| Timespec {
                // A huge timeout (Duration::MAX as "forever") must not wrap
                // to a negative tv_sec, which poll refuses with EINVAL.
                tv_sec: d.as_secs().min(i64::MAX as u64) as _,
                tv_nsec: d.subsec_nanos().into(),
            });
            let mut fds = [PollFd::new(&self.dev.fd, events)];
            match poll(&mut fds, ts.as_ref()) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(e) => return Err(DequeueError::Os(e)),
            }
            let revents = fds[0].revents();
            if revents.contains(PollFlags::ERR) && !revents.intersects(events) {
                // vb2 reports POLLERR when not streaming or nothing is queued.
                return Err(DequeueError::NotStreaming);
            }
            if !revents.is_empty() && !revents.intersects(events) {
                // A mem2mem fd polls for both queues: the other queue's
                // event (a consumed OUTPUT buffer while this waits for
                // CAPTURE) stays raised until that queue is dequeued, so
                // poll would return at once again: back off instead of spinning.
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// `VIDIOC_STREAMON`.
    ///
    /// # Errors
    /// [`StreamError::Os`], e.g. `EINVAL` with too few buffers queued.
    pub fn stream_on(&mut self) -> Result<(), StreamError> {
        sys::streamon(&self.dev.fd, self.buf_type.raw()).map_err(StreamError::Os)?;
        self.streaming = true;
        Ok(())
    }

    /// `VIDIOC_STREAMOFF`: stop, and return every queued buffer to user space.
    ///
    /// # Errors
    /// [`StreamError::Os`].
    pub fn stream_off(&mut self) -> Result<(), StreamError> {
        sys::streamoff(&self.dev.fd, self.buf_type.raw()).map_err(StreamError::Os)?;
        self.streaming = false;
        Ok(())
    }

    /// `VIDIOC_EXPBUF`: export plane `plane` of `MMAP` buffer `index` as a new
    /// dma-buf (read-write, close-on-exec); adopt it with
    /// [`Buffer::from_fd`](crate::Buffer::from_fd).
    ///
    /// # Errors
    /// [`ExportError::NotMmap`] on a `DMABUF` queue, [`ExportError::OutOfRange`],
    /// [`ExportError::Unsupported`].
    pub fn export_buffer(&self, index: u32, plane: u32) -> Result<OwnedFd, ExportError> {
        if self.memory != Memory::Mmap {
            return Err(ExportError::NotMmap);
        }
        if index >= self.count || plane as usize >= self.planes.max(1) {
            return Err(ExportError::OutOfRange { index, plane });
        }
        sys::expbuf(&self.dev.fd, self.buf_type.raw(), index, plane).map_err(|e| match e {
            Errno::NOTTY => ExportError::Unsupported,
            Errno::INVAL => ExportError::OutOfRange { index, plane },
            e => ExportError::Os(e),
        })
    }
}

impl Drop for Queue<'_> {
    fn drop(&mut self) {
        if self.streaming {
            let _ = sys::streamoff(&self.dev.fd, self.buf_type.raw());
        }
        let _ = sys::reqbufs(&self.dev.fd, self.buf_type.raw(), self.memory.raw(), 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_rejects_non_v4l2() {
        match V4l2Device::open("/dev/null") {
            Err(OpenError::NotV4l2 { errno, .. }) => assert_eq!(errno, Errno::NOTTY),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(V4l2Device::open("/nonexistent/video9"), Err(OpenError::Open { .. })));
    }

    #[test]
    fn buf_types() {
        assert_eq!(BufType::VideoCapture.raw(), 1);
        assert_eq!(BufType::VideoCaptureMplane.raw(), 9);
        assert!(BufType::VideoCaptureMplane.is_multiplanar());
        assert!(!BufType::VideoOutput.is_multiplanar());
    }

    #[test]
    fn format_from_raw_multiplanar_clamps_plane_count() {
        let mut mp = sys::V4l2PixFormatMplane {
            width: 64,
            height: 48,
            num_planes: 200, // a lying driver
            ..Default::default()
        };
        mp.plane_fmt[1].sizeimage = 7;
        let f = Format::from_raw(BufType::VideoCaptureMplane, &sys::V4l2Format::multi(9, mp));
        assert_eq!(f.planes.len(), sys::VIDEO_MAX_PLANES);
        assert_eq!(f.planes[1].sizeimage, 7);
    }
}
