//! V4L2 (`/dev/video*`): the subset of `videodev2.h` dmabroker uses to capture
//! into imported dma-bufs and to export a driver's own buffers.
//!
//! `VIDIOC_QUERYCAP`, `VIDIOC_ENUM_FMT`, `VIDIOC_G_FMT`/`S_FMT`/`TRY_FMT`,
//! `VIDIOC_REQBUFS`, `VIDIOC_QUERYBUF`, `VIDIOC_QBUF`, `VIDIOC_DQBUF`,
//! `VIDIOC_STREAMON`/`STREAMOFF`, `VIDIOC_EXPBUF`, and the input selection
//! `VIDIOC_ENUMINPUT`/`G_INPUT`/`S_INPUT`; controls (`VIDIOC_G_CTRL`/`S_CTRL`)
//! in [`control`]. A mem2mem node (`cap::VIDEO_M2M`) has an `OUTPUT` queue
//! (frames in, `bytesused` set by the caller) and a `CAPTURE` queue (frames
//! out) on one fd: the same wrappers serve both.
//!
//! Memory safety: `V4L2_MEMORY_USERPTR` is refused by every wrapper here,
//! because a queued user pointer lets the device write into memory that Rust
//! believes it owns; only `MMAP` (driver memory, reached through `mmap`) and
//! `DMABUF` (file descriptors) are accepted: any other value (`USERPTR`,
//! `OVERLAY`, a future model) fails with `EINVAL` before the syscall. The multi-planar `planes`
//! pointer is always set by these wrappers to an array they own for the call.
//!
//! # References
//! `include/uapi/linux/videodev2.h`, `drivers/media/common/videobuf2/`,
//! <https://docs.kernel.org/userspace-api/media/v4l/dmabuf.html>

use rustix::fs::OFlags;
use rustix::io::{Errno, Result};
use rustix::ioctl::{ioctl, opcode, Getter, Opcode, Setter, Updater};
use std::ffi::c_ulong;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};

pub mod control;

/// `VIDEO_MAX_PLANES`: the most planes a multi-planar buffer can have.
pub const VIDEO_MAX_PLANES: usize = 8;

/// `v4l2_fourcc(a, b, c, d)`: a pixel format code.
pub const fn fourcc(code: &[u8; 4]) -> u32 {
    u32::from_le_bytes(*code)
}

/// `enum v4l2_buf_type` values used here.
pub mod buf_type {
    /// `V4L2_BUF_TYPE_VIDEO_CAPTURE`.
    pub const VIDEO_CAPTURE: u32 = 1;
    /// `V4L2_BUF_TYPE_VIDEO_OUTPUT`.
    pub const VIDEO_OUTPUT: u32 = 2;
    /// `V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE`.
    pub const VIDEO_CAPTURE_MPLANE: u32 = 9;
    /// `V4L2_BUF_TYPE_VIDEO_OUTPUT_MPLANE`.
    pub const VIDEO_OUTPUT_MPLANE: u32 = 10;

    /// `V4L2_TYPE_IS_MULTIPLANAR(type)` for the video types.
    pub const fn is_multiplanar(t: u32) -> bool {
        t == VIDEO_CAPTURE_MPLANE || t == VIDEO_OUTPUT_MPLANE
    }
}

/// `enum v4l2_memory`.
pub mod memory {
    /// `V4L2_MEMORY_MMAP`: buffers the driver allocates.
    pub const MMAP: u32 = 1;
    /// `V4L2_MEMORY_USERPTR`: refused by this module (see the module docs).
    pub const USERPTR: u32 = 2;
    /// `V4L2_MEMORY_DMABUF`: buffers imported as dma-buf fds.
    pub const DMABUF: u32 = 4;

    /// The models this module passes to the kernel: `MMAP` and `DMABUF`,
    /// in which the kernel follows no user pointer.
    pub const fn is_accepted(memory: u32) -> bool {
        memory == MMAP || memory == DMABUF
    }
}

/// `V4L2_CAP_*` bits of [`V4l2Capability`].
pub mod cap {
    /// `V4L2_CAP_VIDEO_CAPTURE`.
    pub const VIDEO_CAPTURE: u32 = 0x0000_0001;
    /// `V4L2_CAP_VIDEO_OUTPUT`.
    pub const VIDEO_OUTPUT: u32 = 0x0000_0002;
    /// `V4L2_CAP_VIDEO_CAPTURE_MPLANE`.
    pub const VIDEO_CAPTURE_MPLANE: u32 = 0x0000_1000;
    /// `V4L2_CAP_VIDEO_OUTPUT_MPLANE`.
    pub const VIDEO_OUTPUT_MPLANE: u32 = 0x0000_2000;
    /// `V4L2_CAP_VIDEO_M2M_MPLANE`.
    pub const VIDEO_M2M_MPLANE: u32 = 0x0000_4000;
    /// `V4L2_CAP_VIDEO_M2M`.
    pub const VIDEO_M2M: u32 = 0x0000_8000;
    /// `V4L2_CAP_READWRITE`.
    pub const READWRITE: u32 = 0x0100_0000;
    /// `V4L2_CAP_STREAMING`.
    pub const STREAMING: u32 = 0x0400_0000;
    /// `V4L2_CAP_DEVICE_CAPS`: `device_caps` is valid.
    pub const DEVICE_CAPS: u32 = 0x8000_0000;
}

/// `V4L2_BUF_CAP_*` bits of [`V4l2RequestBuffers::capabilities`].
pub mod buf_cap {
    /// `V4L2_BUF_CAP_SUPPORTS_MMAP`.
    pub const SUPPORTS_MMAP: u32 = 1 << 0;
    /// `V4L2_BUF_CAP_SUPPORTS_USERPTR`.
    pub const SUPPORTS_USERPTR: u32 = 1 << 1;
    /// `V4L2_BUF_CAP_SUPPORTS_DMABUF`.
    pub const SUPPORTS_DMABUF: u32 = 1 << 2;
    /// `V4L2_BUF_CAP_SUPPORTS_REQUESTS`.
    pub const SUPPORTS_REQUESTS: u32 = 1 << 3;
    /// `V4L2_BUF_CAP_SUPPORTS_ORPHANED_BUFS`.
    pub const SUPPORTS_ORPHANED_BUFS: u32 = 1 << 4;
    /// `V4L2_BUF_CAP_SUPPORTS_M2M_HOLD_CAPTURE_BUF`.
    pub const SUPPORTS_M2M_HOLD_CAPTURE_BUF: u32 = 1 << 5;
    /// `V4L2_BUF_CAP_SUPPORTS_MMAP_CACHE_HINTS`.
    pub const SUPPORTS_MMAP_CACHE_HINTS: u32 = 1 << 6;
    /// `V4L2_BUF_CAP_SUPPORTS_MAX_NUM_BUFFERS`.
    pub const SUPPORTS_MAX_NUM_BUFFERS: u32 = 1 << 7;
    /// `V4L2_BUF_CAP_SUPPORTS_REMOVE_BUFS`.
    pub const SUPPORTS_REMOVE_BUFS: u32 = 1 << 8;
}

/// `V4L2_BUF_FLAG_*` bits of [`V4l2Buffer::flags`].
pub mod buf_flag {
    /// `V4L2_BUF_FLAG_MAPPED`.
    pub const MAPPED: u32 = 0x0000_0001;
    /// `V4L2_BUF_FLAG_QUEUED`.
    pub const QUEUED: u32 = 0x0000_0002;
    /// `V4L2_BUF_FLAG_DONE`.
    pub const DONE: u32 = 0x0000_0004;
    /// `V4L2_BUF_FLAG_KEYFRAME`.
    pub const KEYFRAME: u32 = 0x0000_0008;
    /// `V4L2_BUF_FLAG_ERROR`: the frame may be corrupt.
    pub const ERROR: u32 = 0x0000_0040;
    /// `V4L2_BUF_FLAG_TIMESTAMP_MONOTONIC`.
    pub const TIMESTAMP_MONOTONIC: u32 = 0x0000_2000;
    /// `V4L2_BUF_FLAG_LAST`: the last buffer of a drained stream.
    pub const LAST: u32 = 0x0010_0000;
}

/// `V4L2_FIELD_NONE`: progressive frames.
pub const FIELD_NONE: u32 = 1;

/// `struct v4l2_capability` (104 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct V4l2Capability {
    /// Driver name, NUL-terminated.
    pub driver: [u8; 16],
    /// Device name, NUL-terminated.
    pub card: [u8; 32],
    /// Bus location, NUL-terminated.
    pub bus_info: [u8; 32],
    /// `KERNEL_VERSION` of the driver.
    pub version: u32,
    /// Capabilities of the physical device as a whole (`cap`).
    pub capabilities: u32,
    /// Capabilities of this node (`cap`), valid with `cap::DEVICE_CAPS`.
    pub device_caps: u32,
    /// Reserved, zero.
    pub reserved: [u32; 3],
}

/// `struct v4l2_fmtdesc` (64 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct V4l2Fmtdesc {
    /// Index in the enumeration.
    pub index: u32,
    /// Buffer type (`buf_type`).
    pub type_: u32,
    /// `V4L2_FMT_FLAG_*`.
    pub flags: u32,
    /// Human-readable name, NUL-terminated.
    pub description: [u8; 32],
    /// Pixel format fourcc.
    pub pixelformat: u32,
    /// Media bus code filter (0: any).
    pub mbus_code: u32,
    /// Reserved, zero.
    pub reserved: [u32; 3],
}

/// `struct v4l2_pix_format` (48 bytes): a single-planar image format.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct V4l2PixFormat {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Pixel format fourcc.
    pub pixelformat: u32,
    /// `enum v4l2_field`.
    pub field: u32,
    /// Bytes per line, padding included.
    pub bytesperline: u32,
    /// Bytes of the whole image.
    pub sizeimage: u32,
    /// `enum v4l2_colorspace`.
    pub colorspace: u32,
    /// Private; `V4L2_PIX_FMT_PRIV_MAGIC` enables the fields below.
    pub priv_: u32,
    /// `V4L2_PIX_FMT_FLAG_*`.
    pub flags: u32,
    /// `ycbcr_enc` (or `hsv_enc`).
    pub ycbcr_enc: u32,
    /// `enum v4l2_quantization`.
    pub quantization: u32,
    /// `enum v4l2_xfer_func`.
    pub xfer_func: u32,
}

/// `struct v4l2_plane_pix_format` (20 bytes, packed).
#[repr(C, packed)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct V4l2PlanePixFormat {
    /// Bytes of this plane.
    pub sizeimage: u32,
    /// Bytes per line of this plane.
    pub bytesperline: u32,
    /// Reserved, zero.
    pub reserved: [u16; 6],
}

/// `struct v4l2_pix_format_mplane` (192 bytes, packed): a multi-planar format.
#[repr(C, packed)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct V4l2PixFormatMplane {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Pixel format fourcc.
    pub pixelformat: u32,
    /// `enum v4l2_field`.
    pub field: u32,
    /// `enum v4l2_colorspace`.
    pub colorspace: u32,
    /// Per-plane layout; the first `num_planes` are valid.
    pub plane_fmt: [V4l2PlanePixFormat; VIDEO_MAX_PLANES],
    /// Number of memory planes.
    pub num_planes: u8,
    /// `V4L2_PIX_FMT_FLAG_*`.
    pub flags: u8,
    /// `ycbcr_enc` (or `hsv_enc`).
    pub ycbcr_enc: u8,
    /// `enum v4l2_quantization`.
    pub quantization: u8,
    /// `enum v4l2_xfer_func`.
    pub xfer_func: u8,
    /// Reserved, zero.
    pub reserved: [u8; 7],
}

/// The `fmt` union of `struct v4l2_format` (200 bytes, 8-byte aligned
/// because its `v4l2_window` member holds pointers).
#[repr(C)]
#[derive(Clone, Copy)]
pub union V4l2FormatUnion {
    /// For `VIDEO_CAPTURE` / `VIDEO_OUTPUT`.
    pub pix: V4l2PixFormat,
    /// For the `_MPLANE` types.
    pub pix_mp: V4l2PixFormatMplane,
    /// Raw bytes.
    pub raw_data: [u8; 200],
    align: [u64; 25],
}

/// `struct v4l2_format` (208 bytes).
///
/// Built with [`new`](Self::new), [`single`](Self::single) or
/// [`multi`](Self::multi) and read with [`pix`](Self::pix) /
/// [`pix_mp`](Self::pix_mp): the union is private so that all 200 of its
/// bytes are always initialised (a union built from `pix` alone leaves 152
/// bytes uninitialised, and reading `pix_mp` from it would be undefined
/// behaviour in safe code).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct V4l2Format {
    /// Buffer type (`buf_type`), selects the union member.
    pub type_: u32,
    /// The format, per `type_`; every byte initialised (see above).
    fmt: V4l2FormatUnion,
}

impl V4l2Format {
    /// A zeroed format of the given buffer type.
    pub fn new(type_: u32) -> Self {
        Self { type_, fmt: V4l2FormatUnion { align: [0; 25] } }
    }

    /// A single-planar format.
    pub fn single(type_: u32, pix: V4l2PixFormat) -> Self {
        let mut f = Self::new(type_);
        f.fmt.pix = pix;
        f
    }

    /// A multi-planar format.
    pub fn multi(type_: u32, pix_mp: V4l2PixFormatMplane) -> Self {
        let mut f = Self::new(type_);
        f.fmt.pix_mp = pix_mp;
        f
    }

    /// The union read as `v4l2_pix_format`.
    pub fn pix(&self) -> V4l2PixFormat {
        // SAFETY: every member is plain integers, so any bit pattern is a
        // valid V4l2PixFormat; all 200 bytes are initialised because `fmt` is
        // private and only `new` (zeroing all of it) creates one, later
        // writes (single/multi, the kernel) only overwrite initialised bytes.
        unsafe { self.fmt.pix }
    }

    /// The union read as `v4l2_pix_format_mplane`.
    pub fn pix_mp(&self) -> V4l2PixFormatMplane {
        // SAFETY: as in `pix`: plain integers (packed, so no alignment
        // requirement), all 200 bytes initialised since `fmt` is private.
        unsafe { self.fmt.pix_mp }
    }
}

impl std::fmt::Debug for V4l2Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("V4l2Format");
        d.field("type_", &self.type_);
        if buf_type::is_multiplanar(self.type_) {
            d.field("pix_mp", &self.pix_mp());
        } else {
            d.field("pix", &self.pix());
        }
        d.finish()
    }
}

/// `struct v4l2_requestbuffers` (20 bytes).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct V4l2RequestBuffers {
    /// Buffers wanted; on return, buffers allocated.
    pub count: u32,
    /// Buffer type (`buf_type`).
    pub type_: u32,
    /// Memory model (`memory`).
    pub memory: u32,
    /// On return, `buf_cap` bits of the queue.
    pub capabilities: u32,
    /// `V4L2_MEMORY_FLAG_*`.
    pub flags: u8,
    /// Reserved, zero.
    pub reserved: [u8; 3],
}

/// `struct timeval` as the 64-bit V4L2 ABI lays it out.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Timeval {
    /// Seconds.
    pub tv_sec: i64,
    /// Microseconds.
    pub tv_usec: i64,
}

/// `struct v4l2_timecode` (16 bytes).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct V4l2Timecode {
    /// `V4L2_TC_TYPE_*`.
    pub type_: u32,
    /// `V4L2_TC_FLAG_*`.
    pub flags: u32,
    /// Frames.
    pub frames: u8,
    /// Seconds.
    pub seconds: u8,
    /// Minutes.
    pub minutes: u8,
    /// Hours.
    pub hours: u8,
    /// User bits.
    pub userbits: [u8; 4],
}

/// The `m` union of `struct v4l2_plane`.
#[repr(C)]
#[derive(Clone, Copy)]
pub union V4l2PlaneM {
    /// `MMAP`: offset to pass to `mmap`.
    pub mem_offset: u32,
    /// `USERPTR`: refused by this module.
    pub userptr: c_ulong,
    /// `DMABUF`: the dma-buf fd.
    pub fd: i32,
}

/// `struct v4l2_plane` (64 bytes).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct V4l2Plane {
    /// Bytes of data in the plane (set by the driver for capture).
    pub bytesused: u32,
    /// Size of the plane's memory.
    pub length: u32,
    /// Where the memory is, per the memory model.
    pub m: V4l2PlaneM,
    /// Offset of the data from the start of the memory.
    pub data_offset: u32,
    /// Reserved, zero.
    pub reserved: [u32; 11],
}

impl Default for V4l2Plane {
    fn default() -> Self {
        Self { bytesused: 0, length: 0, m: V4l2PlaneM { userptr: 0 }, data_offset: 0, reserved: [0; 11] }
    }
}

impl V4l2Plane {
    /// A plane backed by a dma-buf fd for `QBUF` with `memory::DMABUF`.
    pub fn dmabuf(fd: impl AsFd, length: u32) -> Self {
        use std::os::fd::AsRawFd;
        Self { length, m: V4l2PlaneM { fd: fd.as_fd().as_raw_fd() }, ..Self::default() }
    }

    /// `m.mem_offset` (meaningful for `MMAP` buffers).
    pub fn mem_offset(&self) -> u32 {
        // SAFETY: the union is at least 8 initialised bytes of integers
        // (zeroed by `Default` or written by the kernel); any value is valid.
        unsafe { self.m.mem_offset }
    }
}

impl std::fmt::Debug for V4l2Plane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("V4l2Plane")
            .field("bytesused", &self.bytesused)
            .field("length", &self.length)
            .field("m", &self.mem_offset())
            .field("data_offset", &self.data_offset)
            .finish()
    }
}

/// The `m` union of `struct v4l2_buffer`.
#[repr(C)]
#[derive(Clone, Copy)]
pub union V4l2BufferM {
    /// `MMAP` single-planar: offset to pass to `mmap`.
    pub offset: u32,
    /// `USERPTR`: refused by this module.
    pub userptr: c_ulong,
    /// Multi-planar: the plane array, set by this module's wrappers only.
    pub planes: *mut V4l2Plane,
    /// `DMABUF` single-planar: the dma-buf fd.
    pub fd: i32,
}

/// `struct v4l2_buffer` (88 bytes on 64-bit).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct V4l2Buffer {
    /// Buffer index in the queue.
    pub index: u32,
    /// Buffer type (`buf_type`).
    pub type_: u32,
    /// Bytes of data (single-planar).
    pub bytesused: u32,
    /// `buf_flag` bits.
    pub flags: u32,
    /// `enum v4l2_field`.
    pub field: u32,
    /// When the frame was captured.
    pub timestamp: Timeval,
    /// Timecode, with `V4L2_BUF_FLAG_TIMECODE`.
    pub timecode: V4l2Timecode,
    /// Frame sequence number.
    pub sequence: u32,
    /// Memory model (`memory`).
    pub memory: u32,
    /// Memory location, per the memory model and planarity.
    pub m: V4l2BufferM,
    /// Single-planar: buffer size; multi-planar: number of planes.
    pub length: u32,
    /// Reserved, zero.
    pub reserved2: u32,
    /// `request_fd` with `V4L2_BUF_FLAG_REQUEST_FD`, else reserved.
    pub request_fd: i32,
}

impl V4l2Buffer {
    /// A zeroed buffer descriptor.
    pub fn new(type_: u32, memory: u32, index: u32) -> Self {
        Self {
            index,
            type_,
            bytesused: 0,
            flags: 0,
            field: 0,
            timestamp: Timeval::default(),
            timecode: V4l2Timecode::default(),
            sequence: 0,
            memory,
            m: V4l2BufferM { userptr: 0 },
            length: 0,
            reserved2: 0,
            request_fd: 0,
        }
    }

    /// `m.offset` (meaningful for single-planar `MMAP` buffers).
    pub fn offset(&self) -> u32 {
        // SAFETY: all 8 bytes of the union are initialised integers (zeroed
        // in `new`, or a pointer value, or kernel-written); reading u32 is valid.
        unsafe { self.m.offset }
    }
}

impl std::fmt::Debug for V4l2Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("V4l2Buffer")
            .field("index", &self.index)
            .field("type_", &self.type_)
            .field("bytesused", &self.bytesused)
            .field("flags", &format_args!("{:#x}", self.flags))
            .field("timestamp", &self.timestamp)
            .field("sequence", &self.sequence)
            .field("memory", &self.memory)
            .field("length", &self.length)
            .finish_non_exhaustive()
    }
}

/// A `v4l2_buffer` as the kernel returned it, with its planes copied out.
///
/// `buffer.m.planes` is reset to null: the array it pointed at was local to
/// the call; the planes are in `planes`.
#[derive(Debug, Clone, Copy)]
pub struct BufferInfo {
    /// The buffer descriptor.
    pub buffer: V4l2Buffer,
    /// The planes (multi-planar types only; the first `buffer.length` count).
    pub planes: [V4l2Plane; VIDEO_MAX_PLANES],
}

impl BufferInfo {
    /// The valid planes: `buffer.length` of them for a multi-planar type,
    /// none for a single-planar one.
    pub fn planes(&self) -> &[V4l2Plane] {
        if buf_type::is_multiplanar(self.buffer.type_) {
            let n = (self.buffer.length as usize).min(VIDEO_MAX_PLANES);
            &self.planes[..n]
        } else {
            &[]
        }
    }
}

/// `struct v4l2_exportbuffer` (64 bytes).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct V4l2ExportBuffer {
    /// Buffer type (`buf_type`).
    pub type_: u32,
    /// Buffer index.
    pub index: u32,
    /// Plane index (0 for single-planar).
    pub plane: u32,
    /// Flags for the new fd (`O_CLOEXEC`, `O_ACCMODE`).
    pub flags: u32,
    /// The returned dma-buf fd.
    pub fd: i32,
    /// Reserved, zero.
    pub reserved: [u32; 11],
}

/// `V4L2_INPUT_TYPE_*` values of [`V4l2Input::type_`].
pub mod input_type {
    /// `V4L2_INPUT_TYPE_TUNER`: an analog TV tuner.
    pub const TUNER: u32 = 1;
    /// `V4L2_INPUT_TYPE_CAMERA`: any other video input (camera, S-Video, HDMI).
    pub const CAMERA: u32 = 2;
    /// `V4L2_INPUT_TYPE_TOUCH`: a touch sensor.
    pub const TOUCH: u32 = 3;
}

/// `struct v4l2_input` (80 bytes): one video input of a device.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct V4l2Input {
    /// Which input (the enumeration index).
    pub index: u32,
    /// Its label, NUL-terminated.
    pub name: [u8; 32],
    /// `input_type`.
    pub type_: u32,
    /// Associated audio inputs (bit mask).
    pub audioset: u32,
    /// Tuner index, for `input_type::TUNER`.
    pub tuner: u32,
    /// `v4l2_std_id`: the analog standards it supports.
    pub std: u64,
    /// `V4L2_IN_ST_*`: signal status.
    pub status: u32,
    /// `V4L2_IN_CAP_*`.
    pub capabilities: u32,
    /// Reserved, zero.
    pub reserved: [u32; 3],
}

/// `VIDIOC_QUERYCAP = _IOR('V', 0, struct v4l2_capability)`.
pub const VIDIOC_QUERYCAP: Opcode = opcode::read::<V4l2Capability>(b'V', 0);
/// `VIDIOC_ENUM_FMT = _IOWR('V', 2, struct v4l2_fmtdesc)`.
pub const VIDIOC_ENUM_FMT: Opcode = opcode::read_write::<V4l2Fmtdesc>(b'V', 2);
/// `VIDIOC_G_FMT = _IOWR('V', 4, struct v4l2_format)`.
pub const VIDIOC_G_FMT: Opcode = opcode::read_write::<V4l2Format>(b'V', 4);
/// `VIDIOC_S_FMT = _IOWR('V', 5, struct v4l2_format)`.
pub const VIDIOC_S_FMT: Opcode = opcode::read_write::<V4l2Format>(b'V', 5);
/// `VIDIOC_REQBUFS = _IOWR('V', 8, struct v4l2_requestbuffers)`.
pub const VIDIOC_REQBUFS: Opcode = opcode::read_write::<V4l2RequestBuffers>(b'V', 8);
/// `VIDIOC_QUERYBUF = _IOWR('V', 9, struct v4l2_buffer)`.
pub const VIDIOC_QUERYBUF: Opcode = opcode::read_write::<V4l2Buffer>(b'V', 9);
/// `VIDIOC_QBUF = _IOWR('V', 15, struct v4l2_buffer)`.
pub const VIDIOC_QBUF: Opcode = opcode::read_write::<V4l2Buffer>(b'V', 15);
/// `VIDIOC_EXPBUF = _IOWR('V', 16, struct v4l2_exportbuffer)`.
pub const VIDIOC_EXPBUF: Opcode = opcode::read_write::<V4l2ExportBuffer>(b'V', 16);
/// `VIDIOC_DQBUF = _IOWR('V', 17, struct v4l2_buffer)`.
pub const VIDIOC_DQBUF: Opcode = opcode::read_write::<V4l2Buffer>(b'V', 17);
/// `VIDIOC_STREAMON = _IOW('V', 18, int)`.
pub const VIDIOC_STREAMON: Opcode = opcode::write::<i32>(b'V', 18);
/// `VIDIOC_STREAMOFF = _IOW('V', 19, int)`.
pub const VIDIOC_STREAMOFF: Opcode = opcode::write::<i32>(b'V', 19);
/// `VIDIOC_ENUMINPUT = _IOWR('V', 26, struct v4l2_input)`.
pub const VIDIOC_ENUMINPUT: Opcode = opcode::read_write::<V4l2Input>(b'V', 26);
/// `VIDIOC_G_INPUT = _IOR('V', 38, int)`.
pub const VIDIOC_G_INPUT: Opcode = opcode::read::<i32>(b'V', 38);
/// `VIDIOC_S_INPUT = _IOWR('V', 39, int)`.
pub const VIDIOC_S_INPUT: Opcode = opcode::read_write::<i32>(b'V', 39);
/// `VIDIOC_TRY_FMT = _IOWR('V', 64, struct v4l2_format)`.
pub const VIDIOC_TRY_FMT: Opcode = opcode::read_write::<V4l2Format>(b'V', 64);

/// `ioctl(fd, VIDIOC_QUERYCAP)`: what the driver and this node can do.
///
/// # Errors
/// `ENOTTY` when `fd` is not a V4L2 device.
pub fn querycap(fd: impl AsFd) -> Result<V4l2Capability> {
    // SAFETY: VIDIOC_QUERYCAP writes exactly one v4l2_capability, which
    // V4l2Capability mirrors (size asserted in the tests).
    unsafe { ioctl(fd, Getter::<VIDIOC_QUERYCAP, V4l2Capability>::new()) }
}

/// `ioctl(fd, VIDIOC_ENUM_FMT)`: the `index`-th pixel format of a buffer type.
///
/// # Errors
/// `EINVAL` past the last format (the end of the enumeration) or for a buffer
/// type the node does not have.
pub fn enum_fmt(fd: impl AsFd, type_: u32, index: u32) -> Result<V4l2Fmtdesc> {
    let mut desc =
        V4l2Fmtdesc { index, type_, flags: 0, description: [0; 32], pixelformat: 0, mbus_code: 0, reserved: [0; 3] };
    // SAFETY: VIDIOC_ENUM_FMT reads and writes one v4l2_fmtdesc.
    unsafe { ioctl(fd, Updater::<VIDIOC_ENUM_FMT, _>::new(&mut desc))? };
    Ok(desc)
}

/// `ioctl(fd, VIDIOC_G_FMT)`: the current format of a buffer type.
///
/// # Errors
/// `EINVAL` for a buffer type the node does not have.
pub fn g_fmt(fd: impl AsFd, type_: u32) -> Result<V4l2Format> {
    let mut f = V4l2Format::new(type_);
    // SAFETY: VIDIOC_G_FMT reads and writes one v4l2_format (208 bytes).
    unsafe { ioctl(fd, Updater::<VIDIOC_G_FMT, _>::new(&mut f))? };
    Ok(f)
}

/// `ioctl(fd, VIDIOC_S_FMT)`: ask for a format; returns what the driver set,
/// which may differ (sizes rounded, an unsupported fourcc replaced).
///
/// # Errors
/// `EBUSY` while buffers are allocated; `EINVAL` for a wrong buffer type.
pub fn s_fmt(fd: impl AsFd, format: V4l2Format) -> Result<V4l2Format> {
    let mut f = format;
    // SAFETY: VIDIOC_S_FMT reads and writes one v4l2_format.
    unsafe { ioctl(fd, Updater::<VIDIOC_S_FMT, _>::new(&mut f))? };
    Ok(f)
}

/// `ioctl(fd, VIDIOC_TRY_FMT)`: what [`s_fmt`] would set, without setting it.
///
/// # Errors
/// `EINVAL` for a wrong buffer type.
pub fn try_fmt(fd: impl AsFd, format: V4l2Format) -> Result<V4l2Format> {
    let mut f = format;
    // SAFETY: VIDIOC_TRY_FMT reads and writes one v4l2_format.
    unsafe { ioctl(fd, Updater::<VIDIOC_TRY_FMT, _>::new(&mut f))? };
    Ok(f)
}

/// `ioctl(fd, VIDIOC_ENUMINPUT)`: the `index`-th video input.
///
/// # Errors
/// `EINVAL` past the last input (the end of the enumeration); `ENOTTY` for a
/// node without inputs (an output or memory-to-memory device).
pub fn enum_input(fd: impl AsFd, index: u32) -> Result<V4l2Input> {
    let mut input = V4l2Input { index, ..V4l2Input::default() };
    // SAFETY: VIDIOC_ENUMINPUT reads and writes one v4l2_input, which
    // V4l2Input mirrors (size asserted in the tests).
    unsafe { ioctl(fd, Updater::<VIDIOC_ENUMINPUT, _>::new(&mut input))? };
    Ok(input)
}

/// `ioctl(fd, VIDIOC_G_INPUT)`: the index of the current video input.
///
/// # Errors
/// `ENOTTY` for a node without inputs.
pub fn g_input(fd: impl AsFd) -> Result<u32> {
    // SAFETY: VIDIOC_G_INPUT writes one int, which Getter provides.
    let index = unsafe { ioctl(fd, Getter::<VIDIOC_G_INPUT, i32>::new())? };
    u32::try_from(index).map_err(|_| Errno::INVAL)
}

/// `ioctl(fd, VIDIOC_S_INPUT)`: select video input `index`. Drivers usually
/// reset the format to the input's default.
///
/// # Errors
/// `EINVAL` for an index past the last input; `EBUSY` while buffers are
/// allocated; `ENOTTY` for a node without inputs.
pub fn s_input(fd: impl AsFd, index: u32) -> Result<()> {
    let mut value = i32::try_from(index).map_err(|_| Errno::INVAL)?;
    // SAFETY: VIDIOC_S_INPUT reads (and may write back) one int, which
    // Updater passes by pointer to `value`, live for the call.
    unsafe { ioctl(fd, Updater::<VIDIOC_S_INPUT, i32>::new(&mut value)) }
}

/// `ioctl(fd, VIDIOC_REQBUFS)`: allocate (or, with `count == 0`, free) the
/// queue's buffers for a memory model; returns the count granted and the
/// queue's `buf_cap` bits.
///
/// # Errors
/// `EINVAL` when the driver does not support `memory` (or a model other than
/// `MMAP`/`DMABUF` was asked, which this module refuses); `EBUSY` while
/// buffers are mapped or streaming.
pub fn reqbufs(fd: impl AsFd, type_: u32, memory: u32, count: u32) -> Result<V4l2RequestBuffers> {
    if !memory::is_accepted(memory) {
        return Err(Errno::INVAL);
    }
    let mut req = V4l2RequestBuffers { count, type_, memory, ..V4l2RequestBuffers::default() };
    // SAFETY: VIDIOC_REQBUFS reads and writes one v4l2_requestbuffers.
    unsafe { ioctl(fd, Updater::<VIDIOC_REQBUFS, _>::new(&mut req))? };
    Ok(req)
}

/// Runs a `v4l2_buffer` ioctl with a plane array owned by this call.
fn buffer_ioctl<const OPCODE: Opcode>(
    fd: impl AsFd,
    mut buffer: V4l2Buffer,
    planes: &[V4l2Plane],
) -> Result<BufferInfo> {
    if !memory::is_accepted(buffer.memory) {
        return Err(Errno::INVAL);
    }
    let mut info = BufferInfo { buffer, planes: [V4l2Plane::default(); VIDEO_MAX_PLANES] };
    let multi = buf_type::is_multiplanar(buffer.type_);
    if multi {
        if planes.len() > VIDEO_MAX_PLANES {
            return Err(Errno::INVAL);
        }
        info.planes[..planes.len()].copy_from_slice(planes);
        // The kernel copies `length` entries in and out: give it the whole
        // array when querying (planes empty), the caller's count when queueing.
        buffer.length = if planes.is_empty() { VIDEO_MAX_PLANES as u32 } else { planes.len() as u32 };
        buffer.m.planes = info.planes.as_mut_ptr();
    }
    // SAFETY: OPCODE is one of QUERYBUF/QBUF/DQBUF (private fn, callers
    // below), each of which reads and writes one v4l2_buffer; for a
    // multi-planar type `m.planes` points at `info.planes`, which holds
    // VIDEO_MAX_PLANES >= `length` entries and outlives the call; only MMAP
    // and DMABUF pass (checked above), in which the kernel follows no other
    // pointer (USERPTR, where it would, is refused).
    unsafe { ioctl(fd, Updater::<OPCODE, _>::new(&mut buffer))? };
    if multi {
        buffer.m.planes = std::ptr::null_mut();
    }
    info.buffer = buffer;
    Ok(info)
}

/// `ioctl(fd, VIDIOC_QUERYBUF)`: the state, size and (for `MMAP`) mmap offset
/// of buffer `index`, with its planes for a multi-planar type.
///
/// # Errors
/// `EINVAL` for an index past the allocated buffers or a wrong type/memory.
pub fn querybuf(fd: impl AsFd, type_: u32, memory: u32, index: u32) -> Result<BufferInfo> {
    buffer_ioctl::<VIDIOC_QUERYBUF>(fd, V4l2Buffer::new(type_, memory, index), &[])
}

/// `ioctl(fd, VIDIOC_QBUF)`: hand buffer `buffer.index` to the driver.
///
/// For single-planar `DMABUF`, set `buffer.m.fd` and `buffer.length`; for a
/// multi-planar type pass the planes (built with [`V4l2Plane::dmabuf`]) in
/// `planes`; `buffer.m` and `buffer.length` are then set here.
///
/// # Errors
/// `EINVAL` for a bad index, a buffer already queued, a dma-buf smaller than
/// the format needs, more than [`VIDEO_MAX_PLANES`] planes or a memory model
/// other than `MMAP`/`DMABUF`;
/// `EBADF` for a bad dma-buf fd.
pub fn qbuf(fd: impl AsFd, buffer: V4l2Buffer, planes: &[V4l2Plane]) -> Result<BufferInfo> {
    if buf_type::is_multiplanar(buffer.type_) && planes.is_empty() {
        return Err(Errno::INVAL);
    }
    buffer_ioctl::<VIDIOC_QBUF>(fd, buffer, planes)
}

/// `ioctl(fd, VIDIOC_DQBUF)`: take back a filled buffer.
///
/// # Errors
/// `EAGAIN` on a non-blocking fd when no buffer is ready; `EPIPE` after the
/// last buffer of a drained stream; `EINVAL` when not streaming.
pub fn dqbuf(fd: impl AsFd, type_: u32, memory: u32) -> Result<BufferInfo> {
    buffer_ioctl::<VIDIOC_DQBUF>(fd, V4l2Buffer::new(type_, memory, 0), &[])
}

/// `ioctl(fd, VIDIOC_STREAMON)`: start the queue of a buffer type.
///
/// # Errors
/// `EINVAL` without buffers or for a wrong type; `ENOLINK`/`EPIPE` for a
/// misconfigured media pipeline.
pub fn streamon(fd: impl AsFd, type_: u32) -> Result<()> {
    // SAFETY: VIDIOC_STREAMON reads one int, which Setter passes by pointer.
    unsafe { ioctl(fd, Setter::<VIDIOC_STREAMON, i32>::new(type_ as i32)) }
}

/// `ioctl(fd, VIDIOC_STREAMOFF)`: stop the queue and return every buffer to
/// user space (dequeued state).
///
/// # Errors
/// `EINVAL` for a wrong type.
pub fn streamoff(fd: impl AsFd, type_: u32) -> Result<()> {
    // SAFETY: VIDIOC_STREAMOFF reads one int, which Setter passes by pointer.
    unsafe { ioctl(fd, Setter::<VIDIOC_STREAMOFF, i32>::new(type_ as i32)) }
}

/// `ioctl(fd, VIDIOC_EXPBUF)`: export plane `plane` of `MMAP` buffer `index`
/// as a new dma-buf, read-write and close-on-exec.
///
/// # Errors
/// `EINVAL` when the queue is not `MMAP` or the index/plane is out of range;
/// `ENOTTY` when the driver cannot export.
pub fn expbuf(fd: impl AsFd, type_: u32, index: u32, plane: u32) -> Result<OwnedFd> {
    let mut e = V4l2ExportBuffer {
        type_,
        index,
        plane,
        flags: OFlags::CLOEXEC.bits() | OFlags::RDWR.bits(),
        ..V4l2ExportBuffer::default()
    };
    // SAFETY: VIDIOC_EXPBUF reads and writes one v4l2_exportbuffer.
    unsafe { ioctl(fd, Updater::<VIDIOC_EXPBUF, _>::new(&mut e))? };
    if e.fd < 0 {
        return Err(Errno::BADF);
    }
    // SAFETY: on success the kernel installed a new fd in `e.fd` that nobody
    // else owns; it is adopted in this statement.
    Ok(unsafe { OwnedFd::from_raw_fd(e.fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    /// Sizes and offsets from gcc on x86_64 against `linux/videodev2.h`.
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn abi_layout_matches_videodev2_h() {
        assert_eq!(size_of::<V4l2Format>(), 208);
        assert_eq!(offset_of!(V4l2Format, fmt), 8);
        assert_eq!(size_of::<V4l2Buffer>(), 88);
        assert_eq!(offset_of!(V4l2Buffer, timestamp), 24);
        assert_eq!(offset_of!(V4l2Buffer, timecode), 40);
        assert_eq!(offset_of!(V4l2Buffer, sequence), 56);
        assert_eq!(offset_of!(V4l2Buffer, memory), 60);
        assert_eq!(offset_of!(V4l2Buffer, m), 64);
        assert_eq!(offset_of!(V4l2Buffer, length), 72);
        assert_eq!(offset_of!(V4l2Buffer, request_fd), 80);
        assert_eq!(size_of::<V4l2Plane>(), 64);
        assert_eq!(offset_of!(V4l2Plane, m), 8);
        assert_eq!(offset_of!(V4l2Plane, data_offset), 16);
        assert_eq!(size_of::<V4l2RequestBuffers>(), 20);
        assert_eq!(size_of::<V4l2Capability>(), 104);
        assert_eq!(size_of::<V4l2ExportBuffer>(), 64);
        assert_eq!(offset_of!(V4l2ExportBuffer, fd), 16);
        assert_eq!(size_of::<V4l2Fmtdesc>(), 64);
        assert_eq!(size_of::<V4l2PixFormat>(), 48);
        assert_eq!(size_of::<V4l2PixFormatMplane>(), 192);
        assert_eq!(offset_of!(V4l2PixFormatMplane, num_planes), 180);
        assert_eq!(size_of::<V4l2PlanePixFormat>(), 20);
        assert_eq!(size_of::<V4l2Timecode>(), 16);
        assert_eq!(size_of::<V4l2Input>(), 80);
        assert_eq!(offset_of!(V4l2Input, type_), 36);
        assert_eq!(offset_of!(V4l2Input, std), 48);
        assert_eq!(offset_of!(V4l2Input, capabilities), 60);
    }

    /// Opcodes from gcc on x86_64 against `linux/videodev2.h`.
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn opcodes_match_videodev2_h() {
        assert_eq!(VIDIOC_QUERYCAP, 0x8068_5600);
        assert_eq!(VIDIOC_ENUM_FMT, 0xc040_5602);
        assert_eq!(VIDIOC_G_FMT, 0xc0d0_5604);
        assert_eq!(VIDIOC_S_FMT, 0xc0d0_5605);
        assert_eq!(VIDIOC_TRY_FMT, 0xc0d0_5640);
        assert_eq!(VIDIOC_REQBUFS, 0xc014_5608);
        assert_eq!(VIDIOC_QUERYBUF, 0xc058_5609);
        assert_eq!(VIDIOC_QBUF, 0xc058_560f);
        assert_eq!(VIDIOC_DQBUF, 0xc058_5611);
        assert_eq!(VIDIOC_STREAMON, 0x4004_5612);
        assert_eq!(VIDIOC_STREAMOFF, 0x4004_5613);
        assert_eq!(VIDIOC_EXPBUF, 0xc040_5610);
        assert_eq!(VIDIOC_ENUMINPUT, 0xc050_561a);
        assert_eq!(VIDIOC_G_INPUT, 0x8004_5626);
        assert_eq!(VIDIOC_S_INPUT, 0xc004_5627);
    }

    #[test]
    fn fourcc_codes() {
        assert_eq!(fourcc(b"YUYV"), 0x5659_5559);
        assert_eq!(fourcc(b"NM12"), 0x3231_4d4e); // V4L2_PIX_FMT_NV12M
    }

    #[test]
    fn userptr_is_refused_without_a_syscall() {
        let f = std::fs::File::open("/dev/null").unwrap();
        assert_eq!(reqbufs(&f, buf_type::VIDEO_CAPTURE, memory::USERPTR, 1).unwrap_err(), Errno::INVAL);
        let b = V4l2Buffer::new(buf_type::VIDEO_CAPTURE, memory::USERPTR, 0);
        assert_eq!(qbuf(&f, b, &[]).unwrap_err(), Errno::INVAL);
        let b = V4l2Buffer::new(buf_type::VIDEO_CAPTURE_MPLANE, memory::DMABUF, 0);
        assert_eq!(qbuf(&f, b, &[]).unwrap_err(), Errno::INVAL);
        let too_many = [V4l2Plane::default(); VIDEO_MAX_PLANES + 1];
        assert_eq!(qbuf(&f, b, &too_many).unwrap_err(), Errno::INVAL);
        // V4L2_MEMORY_OVERLAY (3) and unknown models never reach the kernel.
        for memory in [0, 3, 5, u32::MAX] {
            assert_eq!(reqbufs(&f, buf_type::VIDEO_CAPTURE, memory, 1).unwrap_err(), Errno::INVAL);
            let b = V4l2Buffer::new(buf_type::VIDEO_CAPTURE, memory, 0);
            assert_eq!(qbuf(&f, b, &[]).unwrap_err(), Errno::INVAL);
        }
    }

    #[test]
    fn format_union_is_fully_initialised() {
        // Reading the larger member after writing the smaller one must see
        // zeroes, not uninitialised bytes.
        let pix = V4l2PixFormat { width: 640, height: 480, ..Default::default() };
        let f = V4l2Format::single(buf_type::VIDEO_CAPTURE, pix);
        let mp = f.pix_mp();
        assert_eq!((mp.width, mp.height), (640, 480));
        assert_eq!({ mp.plane_fmt }[7], V4l2PlanePixFormat::default());
        assert_eq!(mp.num_planes, 0);
    }

    #[test]
    fn non_v4l2_fd_gives_enotty() {
        let f = std::fs::File::open("/dev/null").unwrap();
        assert_eq!(querycap(&f).unwrap_err(), Errno::NOTTY);
    }
}
