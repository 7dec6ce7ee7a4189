//! Pixel formats and plane layouts (V4L2 and DRM fourcc codes). No knowledge of heaps.
//!
//! A [`Buffer`](crate::Buffer) is bytes; this module says what a frame of a
//! given [`PixelFormat`] and size needs of those bytes:
//!
//! - [`PixelFormat`]: packed RGB, packed 4:2:2, NV12/NV21/NV16/NV61,
//!   YUV420/YVU420 and their one-buffer-per-plane `…M` forms; conversion to and
//!   from V4L2 `pixelformat` codes and [`DrmFourcc`] by memory layout (V4L2
//!   `RGB24` is DRM `BGR888`: see [the rule](PixelFormat#v4l2-and-drm-names-of-the-same-memory-layout));
//!   parsing from names (`"nv12"`, `"I420"`, `"XRGB8888"`) and fourccs (`"NM12"`).
//! - [`Layout`]: per plane the buffer, offset, `bytesperline`, lines and size,
//!   and the size of each buffer, exactly as the kernel's `v4l2_fill_pixfmt()`
//!   computes them, with optional stride, plane-offset and size alignment
//!   ([`LayoutOptions`]).
//! - [`Fourcc`]: a four-character code that prints as text.
//!
//! ```
//! use dmabroker::format::{DrmFourcc, Layout, LayoutOptions, PixelFormat};
//!
//! let nv12: PixelFormat = "nv12".parse()?;
//! assert_eq!(nv12.to_drm(), Some(DrmFourcc::Nv12));
//! assert_eq!(PixelFormat::from_v4l2(nv12.to_v4l2()), Some(nv12));
//!
//! let layout = Layout::new(nv12, 1920, 1080, &LayoutOptions::default())?;
//! assert_eq!(layout.total_size(), 3_110_400);
//! assert_eq!(layout.planes()[1].offset, 1920 * 1080);
//!
//! // Pitches a multiple of 256 bytes, buffer size a multiple of the page size.
//! let options = LayoutOptions::default().with_stride_align(256).with_size_align(4096);
//! let padded = Layout::new(nv12, 1918, 1080, &options)?;
//! assert_eq!(padded.bytesperline(), 2048);
//! assert_eq!(padded.buffer_sizes(), [3_317_760]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod fourcc;
mod layout;
mod pixel;

pub use drm_fourcc::DrmFourcc;
pub use fourcc::{v4l2_fourcc, Fourcc};
pub use layout::{Layout, LayoutError, LayoutOptions, PlaneLayout};
pub use pixel::{ParseFormatError, PixelFormat};
