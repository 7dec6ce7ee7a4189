//! Caps in both directions: the short caps string a sink registers as the
//! pool's description (the broker carries at most 128 bytes), and the caps
//! a source offers for the pool's memory (system memory, `memory:DMABuf`,
//! and `DMA_DRM` on GStreamer 1.24 and later, whose caps 1.22's headers do
//! not know: added as strings at run time).

use gst_video::VideoFormat;

/// Longest description the broker takes.
pub const MAX_DESCRIPTION: usize = dmabroker::proto::MAX_NAME_LEN;

/// The caps feature of dma-buf memory.
pub const DMABUF_FEATURE: &str = "memory:DMABuf";

/// A description of `info` for the broker: the fields a consumer needs to
/// compute the same layout (`gst_video_info_from_caps` of it gives the
/// producer's strides and offsets), shortened to fit.
pub fn describe(info: &gst_video::VideoInfo) -> String {
    let fps = info.fps();
    let par = info.par();
    let full = format!(
        "video/x-raw, format=(string){}, width=(int){}, height=(int){}, framerate=(fraction){}/{}, pixel-aspect-ratio=(fraction){}/{}, colorimetry=(string){}",
        info.format().to_str(),
        info.width(),
        info.height(),
        fps.numer(),
        fps.denom(),
        par.numer(),
        par.denom(),
        info.colorimetry()
    );
    if full.len() <= MAX_DESCRIPTION {
        return full;
    }
    format!(
        "video/x-raw,format={},width={},height={},framerate={}/{}",
        info.format().to_str(),
        info.width(),
        info.height(),
        fps.numer(),
        fps.denom()
    )
}

/// The DRM fourcc name of a GStreamer format, for `drm-format` (linear
/// modifier), or `None` when the table does not know it.
pub fn drm_fourcc(format: VideoFormat) -> Option<&'static str> {
    Some(match format {
        VideoFormat::Nv12 => "NV12",
        VideoFormat::Nv21 => "NV21",
        VideoFormat::Nv16 => "NV16",
        VideoFormat::I420 => "YU12",
        VideoFormat::Yv12 => "YV12",
        VideoFormat::Yuy2 => "YUYV",
        VideoFormat::Uyvy => "UYVY",
        VideoFormat::Bgra => "AR24",
        VideoFormat::Bgrx => "XR24",
        VideoFormat::Rgba => "AB24",
        VideoFormat::Rgbx => "XB24",
        VideoFormat::P01010le => "P010",
        VideoFormat::Gray8 => "R8  ",
        _ => return None,
    })
}

/// Whether the running GStreamer has `DMA_DRM` caps (1.24 and later).
pub fn has_dma_drm() -> bool {
    let (major, minor, _, _) = gst::version();
    (major, minor) >= (1, 24)
}

/// The caps a source offers for frames of `info` in `dmabuf` or system
/// memory: with dma-bufs on GStreamer 1.24+, `DMA_DRM` first (with
/// `drm-format`), then the format itself under `memory:DMABuf`.
pub fn source_caps(info: &gst_video::VideoInfo, dmabuf: bool) -> gst::Caps {
    let plain = info.to_caps().unwrap_or_else(|_| gst::Caps::new_empty_simple("video/x-raw"));
    if !dmabuf {
        return plain;
    }
    let mut caps = gst::Caps::new_empty();
    {
        let caps = caps.make_mut();
        if has_dma_drm() {
            if let Some(fourcc) = drm_fourcc(info.format()) {
                let mut s = plain
                    .structure(0)
                    .map(|s| s.to_owned())
                    .unwrap_or_else(|| gst::Structure::new_empty("video/x-raw"));
                s.set("format", "DMA_DRM");
                s.set("drm-format", fourcc);
                caps.append_structure_full(s, Some(gst::CapsFeatures::new([DMABUF_FEATURE])));
            }
        }
        for s in plain.iter() {
            caps.append_structure_full(s.to_owned(), Some(gst::CapsFeatures::new([DMABUF_FEATURE])));
        }
    }
    caps
}

/// The pad template caps of the source: every raw format in system memory
/// and under `memory:DMABuf` (plus `DMA_DRM` at run time on 1.24+).
pub fn template_caps() -> gst::Caps {
    let mut caps = gst::Caps::builder("video/x-raw").build();
    {
        let c = caps.make_mut();
        c.append_structure_full(
            gst::Structure::new_empty("video/x-raw"),
            Some(gst::CapsFeatures::new([DMABUF_FEATURE])),
        );
    }
    caps
}
