//! Framebuffers over dma-bufs: PRIME import (`PRIME_FD_TO_HANDLE`), then
//! `DRM_IOCTL_MODE_ADDFB2` with each plane's buffer, pitch and offset (and a
//! modifier when one is given), the GEM handles closed again at once (the
//! framebuffer holds its own reference); `DRM_IOCTL_MODE_RMFB` on drop.

use super::KmsDevice;
use crate::format::{Layout, PixelFormat};
use dmabroker_sys::kms::drm;
use drm::buffer::{DrmFourcc, DrmModifier, PlanarBuffer};
use drm::control::{framebuffer, Device as _, FbCmd2Flags};
use rustix::io::Errno;
use std::fmt;
use std::os::fd::BorrowedFd;

/// One plane of a framebuffer: which of the buffers holds it, where, and
/// its pitch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlaneSpec {
    /// Index into the buffers passed to [`KmsDevice::add_framebuffer`].
    pub buffer: usize,
    /// Byte offset of the plane's first row.
    pub offset: u32,
    /// Bytes from one row to the next.
    pub pitch: u32,
}

/// What `ADDFB2` is told about a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FramebufferSpec {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// The DRM fourcc.
    pub fourcc: u32,
    /// An explicit modifier (`DRM_MODE_FB_MODIFIERS`), or `None`: the
    /// driver's implicit layout (linear for every dumb-buffer driver).
    pub modifier: Option<u64>,
    /// Up to four planes.
    pub planes: Vec<PlaneSpec>,
}

impl fmt::Display for FramebufferSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = self.fourcc.to_le_bytes();
        write!(f, "{}x{} {}", self.width, self.height, String::from_utf8_lossy(&code))?;
        if let Some(m) = self.modifier {
            write!(f, " modifier {}", crate::constraints::modifier::modifier_name(m))?;
        }
        for p in &self.planes {
            write!(f, " [buffer {} offset {} pitch {}]", p.buffer, p.offset, p.pitch)?;
        }
        Ok(())
    }
}

/// Why a [`Layout`] cannot be described to `ADDFB2`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FramebufferSpecError {
    /// The format has no DRM fourcc.
    #[error("{0} has no DRM format code: KMS cannot scan it out")]
    NoDrmFormat(PixelFormat),
    /// A pitch or offset beyond `u32` (ADDFB2's field width).
    #[error("{what} {value} does not fit ADDFB2's 32-bit field")]
    TooLarge {
        /// `pitch` or `offset`.
        what: &'static str,
        /// The value.
        value: u64,
    },
}

impl FramebufferSpec {
    /// The spec of a frame laid out by `layout`: the layout's DRM fourcc,
    /// every plane's buffer index, offset and pitch, as computed.
    ///
    /// # Errors
    /// [`FramebufferSpecError`].
    pub fn from_layout(layout: &Layout, modifier: Option<u64>) -> Result<Self, FramebufferSpecError> {
        let format = layout.format();
        let fourcc = format.to_drm().ok_or(FramebufferSpecError::NoDrmFormat(format))? as u32;
        let planes = layout
            .planes()
            .iter()
            .map(|p| {
                let offset = u32::try_from(p.offset)
                    .map_err(|_| FramebufferSpecError::TooLarge { what: "offset", value: p.offset })?;
                let pitch = u32::try_from(p.bytesperline)
                    .map_err(|_| FramebufferSpecError::TooLarge { what: "pitch", value: p.bytesperline })?;
                Ok(PlaneSpec { buffer: p.buffer, offset, pitch })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { width: layout.width(), height: layout.height(), fourcc, modifier, planes })
    }
}

/// Why `ADDFB2` of dma-bufs failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AddFbError {
    /// No planes, more than four, or a plane naming a buffer not passed.
    #[error("framebuffer {spec}: {why}")]
    BadSpec {
        /// The spec.
        spec: String,
        /// What is wrong with it.
        why: String,
    },
    /// A fourcc drm-rs does not know.
    #[error("unknown DRM fourcc {0:#010x}")]
    UnknownFourcc(u32),
    /// PRIME import of a buffer failed.
    #[error(
        "driver {driver} cannot import buffer {buffer} as a dma-buf ({errno}): \
         not a dma-buf, or memory the display cannot reach (contiguity, address limit)"
    )]
    Import {
        /// The driver.
        driver: String,
        /// Index of the buffer.
        buffer: usize,
        /// The errno.
        errno: Errno,
    },
    /// The driver refused the framebuffer.
    #[error(
        "driver {driver} refused ADDFB2 of {spec} ({errno}): a format, modifier, pitch or offset it does \
         not take, or a buffer smaller than offset + pitch x height (boot with drm.debug=0x2 for its reason)"
    )]
    Rejected {
        /// The driver.
        driver: String,
        /// The spec.
        spec: String,
        /// The errno.
        errno: Errno,
    },
}

/// A framebuffer this file added, removed (`RMFB`) on drop. Removing a
/// framebuffer a plane still shows turns that plane off.
#[derive(Debug)]
#[must_use = "dropping the framebuffer removes it at once"]
pub struct Framebuffer<'d> {
    dev: &'d KmsDevice,
    handle: framebuffer::Handle,
    spec: FramebufferSpec,
}

impl Framebuffer<'_> {
    /// The framebuffer id: the value of `FB_ID` and `WRITEBACK_FB_ID`.
    pub fn id(&self) -> u32 {
        self.handle.into()
    }

    /// What it was created with.
    pub fn spec(&self) -> &FramebufferSpec {
        &self.spec
    }
}

impl Drop for Framebuffer<'_> {
    fn drop(&mut self) {
        // Fails only for an id already gone; the file's close removes it too.
        let _ = self.dev.control().destroy_framebuffer(self.handle);
    }
}

/// drm-rs's view of the frame: GEM handles per plane.
struct Planar {
    size: (u32, u32),
    format: DrmFourcc,
    modifier: Option<DrmModifier>,
    handles: [Option<drm::buffer::Handle>; 4],
    pitches: [u32; 4],
    offsets: [u32; 4],
}

impl PlanarBuffer for Planar {
    fn size(&self) -> (u32, u32) {
        self.size
    }
    fn format(&self) -> DrmFourcc {
        self.format
    }
    fn modifier(&self) -> Option<DrmModifier> {
        self.modifier
    }
    fn pitches(&self) -> [u32; 4] {
        self.pitches
    }
    fn handles(&self) -> [Option<drm::buffer::Handle>; 4] {
        self.handles
    }
    fn offsets(&self) -> [u32; 4] {
        self.offsets
    }
}

fn errno(e: &std::io::Error) -> Errno {
    Errno::from_io_error(e).unwrap_or(Errno::IO)
}

impl KmsDevice {
    /// Import `buffers` (dma-bufs, by PRIME) and add a framebuffer over them
    /// as `spec` says (`ADDFB2`, with `DRM_MODE_FB_MODIFIERS` when
    /// `spec.modifier` is set). The GEM handles are closed before returning:
    /// the framebuffer keeps the buffers alive.
    ///
    /// # Errors
    /// [`AddFbError`]: a bad spec, a refused import, or the driver's refusal.
    pub fn add_framebuffer(
        &self,
        buffers: &[BorrowedFd<'_>],
        spec: &FramebufferSpec,
    ) -> Result<Framebuffer<'_>, AddFbError> {
        let bad = |why: String| AddFbError::BadSpec { spec: spec.to_string(), why };
        if spec.planes.is_empty() || spec.planes.len() > 4 {
            return Err(bad(format!("{} planes (ADDFB2 takes 1 to 4)", spec.planes.len())));
        }
        if let Some(p) = spec.planes.iter().find(|p| p.buffer >= buffers.len()) {
            return Err(bad(format!("plane in buffer {} but {} buffers given", p.buffer, buffers.len())));
        }
        let format = DrmFourcc::try_from(spec.fourcc).map_err(|_| AddFbError::UnknownFourcc(spec.fourcc))?;
        let mut imported: Vec<drm::buffer::Handle> = Vec::with_capacity(buffers.len());
        let result = (|| {
            for (i, b) in buffers.iter().enumerate() {
                let h = self.control().prime_fd_to_buffer(*b).map_err(|e| AddFbError::Import {
                    driver: self.driver.clone(),
                    buffer: i,
                    errno: errno(&e),
                })?;
                imported.push(h);
            }
            let mut planar = Planar {
                size: (spec.width, spec.height),
                format,
                modifier: spec.modifier.map(DrmModifier::from),
                handles: [None; 4],
                pitches: [0; 4],
                offsets: [0; 4],
            };
            for (i, p) in spec.planes.iter().enumerate() {
                planar.handles[i] = Some(imported[p.buffer]);
                planar.pitches[i] = p.pitch;
                planar.offsets[i] = p.offset;
            }
            let flags = if spec.modifier.is_some() { FbCmd2Flags::MODIFIERS } else { FbCmd2Flags::empty() };
            self.control().add_planar_framebuffer(&planar, flags).map_err(|e| AddFbError::Rejected {
                driver: self.driver.clone(),
                spec: spec.to_string(),
                errno: errno(&e),
            })
        })();
        // The same dma-buf imported twice gives the same handle: close each once.
        imported.sort_by_key(|&h| u32::from(h));
        imported.dedup();
        for h in imported {
            let _ = self.control().close_buffer(h);
        }
        Ok(Framebuffer { dev: self, handle: result?, spec: spec.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::LayoutOptions;

    #[test]
    fn spec_from_layout_carries_pitches_and_offsets() {
        let l = Layout::new(PixelFormat::Nv12, 640, 480, &LayoutOptions::default().with_stride_align(256)).unwrap();
        let s = FramebufferSpec::from_layout(&l, Some(0)).unwrap();
        assert_eq!(s.fourcc, u32::from_le_bytes(*b"NV12"));
        assert_eq!(
            s.planes,
            vec![
                PlaneSpec { buffer: 0, offset: 0, pitch: 768 },
                PlaneSpec { buffer: 0, offset: 768 * 480, pitch: 768 },
            ]
        );
        let x = Layout::new(PixelFormat::Xbgr32, 640, 480, &LayoutOptions::default()).unwrap();
        let s = FramebufferSpec::from_layout(&x, None).unwrap();
        assert_eq!(s.fourcc, u32::from_le_bytes(*b"XR24"));
        assert_eq!(s.to_string(), "640x480 XR24 [buffer 0 offset 0 pitch 2560]");
    }
}
