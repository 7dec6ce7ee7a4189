//! [`Layout`]: where each plane of a frame lies, computed as V4L2 computes it.

use serde::{Deserialize, Serialize};

use super::pixel::{PixelFormat, PlaneInfo};

/// Padding requirements for [`Layout::new`]; every field must be a power of two.
/// The default, all 1, gives the kernel's unpadded layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct LayoutOptions {
    /// Every plane's `bytesperline` (pitch, stride) is a multiple of this.
    pub stride_align: u64,
    /// Every plane's offset within a single buffer is a multiple of this.
    pub plane_align: u64,
    /// Every buffer's size is a multiple of this.
    pub size_align: u64,
}

impl LayoutOptions {
    /// No padding: the kernel's layout (the same as [`Default`]).
    pub const UNPADDED: Self = Self { stride_align: 1, plane_align: 1, size_align: 1 };

    /// These options with `bytesperline` aligned to `align`.
    #[must_use]
    pub const fn with_stride_align(self, align: u64) -> Self {
        Self { stride_align: align, ..self }
    }

    /// These options with plane offsets aligned to `align`.
    #[must_use]
    pub const fn with_plane_align(self, align: u64) -> Self {
        Self { plane_align: align, ..self }
    }

    /// These options with buffer sizes aligned to `align`.
    #[must_use]
    pub const fn with_size_align(self, align: u64) -> Self {
        Self { size_align: align, ..self }
    }

    fn validate(&self) -> Result<(), LayoutError> {
        [("stride_align", self.stride_align), ("plane_align", self.plane_align), ("size_align", self.size_align)]
            .into_iter()
            .find(|&(_, value)| !value.is_power_of_two())
            .map_or(Ok(()), |(option, value)| Err(LayoutError::AlignmentNotPowerOfTwo { option, value }))
    }
}

impl Default for LayoutOptions {
    fn default() -> Self {
        Self::UNPADDED
    }
}

/// One plane of a [`Layout`]: where it lies and how its rows are spaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct PlaneLayout {
    /// Index of the buffer holding the plane: 0 for single-buffer formats, the
    /// plane's own index for the `…M` formats (V4L2 memory plane, DRM handle).
    pub buffer: usize,
    /// Byte offset of the plane's first row within its buffer.
    pub offset: u64,
    /// Bytes from the start of one row to the next (pitch, stride).
    pub bytesperline: u64,
    /// Number of rows.
    pub lines: u32,
    /// `bytesperline * lines`.
    pub size: u64,
}

impl PlaneLayout {
    /// Offset one past the plane's last byte within its buffer (exact for the
    /// planes of a [`Layout`], which checked it; saturating otherwise).
    #[must_use]
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.size)
    }
}

/// The planes of one frame of a [`PixelFormat`] at a given size, and the
/// buffer sizes they need. Serializes to JSON as the CLI prints it.
///
/// # Rules
///
/// With [`LayoutOptions::default()`] (every alignment 1) the layout is the
/// kernel's own: `v4l2_fill_pixfmt()` and `v4l2_fill_pixfmt_mp()` in
/// `drivers/media/v4l2-core/v4l2-common.c`. Plane `i` has
///
/// - `bytesperline = bpp[i] * ceil(width / hdiv[i])`, where plane 0 is never
///   subsampled: `width` for NV12 and YUV420, `2 * width` for YUYV,
///   `2 * ceil(width / 2)` for an NV chroma plane (interleaved U, V) and
///   `ceil(width / 2)` for each YUV420 chroma plane;
/// - `lines = ceil(height / vdiv[i])`: `ceil(height / 2)` for 4:2:0 chroma;
/// - `size = bytesperline * lines`, and a single buffer's size is the sum
///   (`sizeimage`), each plane starting where the previous one ends.
///
/// Odd widths keep the kernel's arithmetic: NV12 at 641 pixels has a 641-byte
/// luma pitch and a 642-byte chroma pitch. V4L2's single-planar API, which
/// passes only the luma `bytesperline`, cannot express such a frame exactly
/// (drivers derive the chroma pitch from it); most drivers round 4:2:x widths
/// to even (vivid's webcam input offers only even sizes).
/// [`Layout::matches_v4l2_implicit_planes`] says whether a layout survives
/// that derivation.
///
/// The options add padding:
///
/// - `stride_align`: every plane's `bytesperline` is a multiple of it. In a
///   single-buffer format the chroma pitch stays the one V4L2 derives from the
///   luma pitch (NV: equal; YUV420/YVU420: half), so for YUV420/YVU420 the luma
///   pitch is aligned to `2 * stride_align` to keep the halves aligned. The `…M`
///   formats align each plane's pitch on its own, as each has its own
///   `bytesperline` in `struct v4l2_plane_pix_format`.
/// - `plane_align`: the offset of every plane within a single buffer is a
///   multiple of it (no effect on the `…M` formats, whose planes start at 0).
///   Padding between planes is expressible in DRM (explicit offsets) and in the
///   V4L2 `…M` formats, not in V4L2's single-buffer formats.
/// - `size_align`: each buffer's size is a multiple of it (page size, huge page
///   size, a heap's granularity).
///
/// All alignments must be powers of two. Arithmetic is in `u64`, checked: an
/// overflow, or a total beyond what one process can address (`isize::MAX`),
/// is a [`LayoutError`], never a panic or a wrapped value. V4L2 and DRM carry
/// pitches and sizes in `u32`; converting is the device layer's concern.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Layout {
    format: PixelFormat,
    width: u32,
    height: u32,
    planes: Vec<PlaneLayout>,
    buffer_sizes: Vec<u64>,
    total_size: u64,
    /// The DRM format modifier the planes are laid out for: LINEAR (0)
    /// unless the devices' offers chose another
    /// ([`crate::constraints::modifier::choose_modifier`]).
    modifier: u64,
}

/// Why [`Layout::new`] could not lay out a frame.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LayoutError {
    /// Width or height is zero.
    #[error("{format} {width}x{height}: width and height must both be at least 1")]
    EmptyImage {
        /// The format asked for.
        format: PixelFormat,
        /// The width asked for.
        width: u32,
        /// The height asked for.
        height: u32,
    },
    /// An alignment in [`LayoutOptions`] is zero or not a power of two.
    #[error("{option} must be a power of two, not {value}")]
    AlignmentNotPowerOfTwo {
        /// The option's field name.
        option: &'static str,
        /// The value given.
        value: u64,
    },
    /// A pitch, offset or size does not fit in 64 bits.
    #[error("{format} {width}x{height}: the {quantity} overflows 64 bits")]
    Overflow {
        /// The format asked for.
        format: PixelFormat,
        /// The width asked for.
        width: u32,
        /// The height asked for.
        height: u32,
        /// Which quantity overflowed.
        quantity: &'static str,
    },
    /// The buffers would be larger than one process can address (`isize::MAX`).
    #[error("{format} {width}x{height}: {size} bytes exceed the address space ({max} bytes)", max = MAX_TOTAL)]
    ExceedsAddressSpace {
        /// The format asked for.
        format: PixelFormat,
        /// The width asked for.
        width: u32,
        /// The height asked for.
        height: u32,
        /// The total size of the buffers.
        size: u64,
    },
}

/// The largest total size: a mapping must fit in a Rust slice, so in `isize`.
// isize::MAX is positive and at most 2^63 - 1: the cast is lossless.
const MAX_TOTAL: u64 = isize::MAX as u64;

impl Layout {
    /// Lays out one `width` x `height` frame of `format` with the padding of
    /// `options`, following the [rules](Self#rules).
    ///
    /// ```
    /// use dmabroker::format::{Layout, LayoutOptions, PixelFormat};
    /// let layout = Layout::new(PixelFormat::Yuv420, 1280, 720, &LayoutOptions::default())?;
    /// let pitches: Vec<u64> = layout.planes().iter().map(|p| p.bytesperline).collect();
    /// let offsets: Vec<u64> = layout.planes().iter().map(|p| p.offset).collect();
    /// assert_eq!(pitches, [1280, 640, 640]);
    /// assert_eq!(offsets, [0, 921_600, 1_152_000]);
    /// assert_eq!(layout.total_size(), 1_382_400);
    /// # Ok::<(), dmabroker::format::LayoutError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`LayoutError::EmptyImage`] for a zero width or height,
    /// [`LayoutError::AlignmentNotPowerOfTwo`] for a bad option,
    /// [`LayoutError::Overflow`] or [`LayoutError::ExceedsAddressSpace`] for a
    /// frame too large to describe or to map.
    pub fn new(format: PixelFormat, width: u32, height: u32, options: &LayoutOptions) -> Result<Self, LayoutError> {
        if width == 0 || height == 0 {
            return Err(LayoutError::EmptyImage { format, width, height });
        }
        options.validate()?;
        let overflow = |quantity| LayoutError::Overflow { format, width, height, quantity };
        let info = format.plane_info();
        let pitches = pitches(info, width, options.stride_align).ok_or_else(|| overflow("bytes per line"))?;
        let chroma_lines = height.div_ceil(u32::from(info.vdiv));

        let mut planes = Vec::with_capacity(usize::from(info.planes));
        let mut buffer_sizes = Vec::with_capacity(format.buffer_count());
        let mut end = 0_u64;
        for (index, &bytesperline) in pitches[..usize::from(info.planes)].iter().enumerate() {
            let lines = if index == 0 { height } else { chroma_lines };
            let size = bytesperline.checked_mul(u64::from(lines)).ok_or_else(|| overflow("plane size"))?;
            let (buffer, offset) = if info.multi_buffer {
                let buffer_size = align_up(size, options.size_align).ok_or_else(|| overflow("buffer size"))?;
                buffer_sizes.push(buffer_size);
                (index, 0)
            } else {
                let offset = align_up(end, options.plane_align).ok_or_else(|| overflow("plane offset"))?;
                end = offset.checked_add(size).ok_or_else(|| overflow("buffer size"))?;
                (0, offset)
            };
            planes.push(PlaneLayout { buffer, offset, bytesperline, lines, size });
        }
        if !info.multi_buffer {
            buffer_sizes.push(align_up(end, options.size_align).ok_or_else(|| overflow("buffer size"))?);
        }
        let total_size = buffer_sizes
            .iter()
            .try_fold(0_u64, |sum, &size| sum.checked_add(size))
            .ok_or_else(|| overflow("total size"))?;
        if total_size > MAX_TOTAL {
            return Err(LayoutError::ExceedsAddressSpace { format, width, height, size: total_size });
        }
        Ok(Self { format, width, height, planes, buffer_sizes, total_size, modifier: 0 })
    }

    /// This layout, tagged with the DRM format modifier the devices agreed
    /// on ([`crate::constraints::modifier::ChosenModifier::modifier`]). The
    /// pitches and offsets stay the linear ones [`Layout::new`] computed:
    /// for a tiled modifier they are what the importer is told
    /// (`ADDFB2`, `VkImageDrmFormatModifierExplicitCreateInfoEXT`), and the
    /// tiling inside each plane is the device's business.
    #[must_use]
    pub fn with_modifier(self, modifier: u64) -> Self {
        Self { modifier, ..self }
    }

    /// The DRM format modifier: `DRM_FORMAT_MOD_LINEAR` (0) unless
    /// [`Layout::with_modifier`] set another.
    #[must_use]
    pub fn modifier(&self) -> u64 {
        self.modifier
    }

    /// The pixel format.
    #[must_use]
    pub fn format(&self) -> PixelFormat {
        self.format
    }

    /// Width in pixels.
    #[must_use]
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels (lines of plane 0).
    #[must_use]
    pub fn height(&self) -> u32 {
        self.height
    }

    /// The planes, in the format's order (Y before U before V, or Y before the
    /// interleaved chroma).
    #[must_use]
    pub fn planes(&self) -> &[PlaneLayout] {
        &self.planes
    }

    /// Plane 0's pitch: the `bytesperline` of V4L2's single-planar API.
    #[must_use]
    pub fn bytesperline(&self) -> u64 {
        self.planes[0].bytesperline
    }

    /// The size of each buffer: one for single-buffer formats (V4L2's
    /// `sizeimage`), one per plane for the `…M` formats (each memory plane's
    /// `sizeimage`).
    #[must_use]
    pub fn buffer_sizes(&self) -> &[u64] {
        &self.buffer_sizes
    }

    /// The number of buffers: `self.buffer_sizes().len()`.
    #[must_use]
    pub fn buffer_count(&self) -> usize {
        self.buffer_sizes.len()
    }

    /// The sum of the buffer sizes.
    #[must_use]
    pub fn total_size(&self) -> u64 {
        self.total_size
    }

    /// Whether a V4L2 driver told only the format, the height and plane 0's
    /// `bytesperline` (the single-planar API) would place every plane exactly
    /// here: chroma planes follow each other without gaps, with the pitch
    /// derived from the luma pitch (NV: equal; YUV420/YVU420: half).
    ///
    /// Always true for one-plane and `…M` formats. False when `plane_align`
    /// added gaps, or for an odd width with `stride_align` 1 (see the
    /// [rules](Self#rules)).
    #[must_use]
    pub fn matches_v4l2_implicit_planes(&self) -> bool {
        let info = self.format.plane_info();
        if info.multi_buffer || info.planes == 1 {
            return true;
        }
        // Drivers derive the chroma pitch with an integer division, as here.
        let derived = self.planes[0].bytesperline / chroma_ratio(info);
        self.planes[1..].iter().all(|p| p.bytesperline == derived)
            && self.planes.windows(2).all(|pair| pair[1].offset == pair[0].end())
    }
}

/// How many times the luma pitch is the chroma pitch V4L2 derives from it in
/// a single-buffer format: 1 for NV (half the samples, two bytes each), 2 for
/// YUV420/YVU420. Only meaningful for formats with chroma planes.
fn chroma_ratio(info: PlaneInfo) -> u64 {
    u64::from(info.bpp[0]) * u64::from(info.hdiv) / u64::from(info.bpp[1])
}

/// The `bytesperline` of each plane (unused entries 0), or `None` on overflow.
fn pitches(info: PlaneInfo, width: u32, stride_align: u64) -> Option<[u64; 3]> {
    let width = u64::from(width);
    let min_luma = width.checked_mul(u64::from(info.bpp[0]))?;
    if info.planes == 1 {
        return Some([align_up(min_luma, stride_align)?, 0, 0]);
    }
    let min_chroma = width.div_ceil(u64::from(info.hdiv)).checked_mul(u64::from(info.bpp[1]))?;
    let (luma, chroma) = if info.multi_buffer {
        (align_up(min_luma, stride_align)?, align_up(min_chroma, stride_align)?)
    } else {
        // The chroma pitch is derived from the luma pitch, so align the luma
        // pitch enough for the derived one to be aligned too. With no
        // alignment asked for, keep the kernel's minimal pitches, which for an
        // odd width makes the chroma pitch exceed the derived one.
        let ratio = chroma_ratio(info);
        let luma_align = if stride_align > 1 { stride_align.checked_mul(ratio)? } else { 1 };
        let luma = align_up(min_luma, luma_align)?;
        (luma, align_up(min_chroma.max(luma / ratio), stride_align)?)
    };
    Some([luma, chroma, if info.planes == 3 { chroma } else { 0 }])
}

/// `value` rounded up to a multiple of `align` (non-zero), or `None` on overflow.
fn align_up(value: u64, align: u64) -> Option<u64> {
    value.checked_next_multiple_of(align)
}

#[cfg(test)]
mod tests;
