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
/// producer's strides and offsets), shortened to fit. A `layout` other
/// than the caps' default (padded strides) adds `stride=<...>` and
/// `offset=<...>` arrays, which [`layout_of`] reads back; `None` when even
/// the short form does not fit.
pub fn describe(info: &gst_video::VideoInfo, layout: &gst_video::VideoInfo) -> Option<String> {
    let fps = info.fps();
    let par = info.par();
    let extra = if is_default_layout(info, layout) {
        String::new()
    } else {
        let list = |v: Vec<String>| v.join(",");
        format!(
            ",stride=<{}>,offset=<{}>",
            list(layout.stride().iter().map(ToString::to_string).collect()),
            list(layout.offset().iter().map(ToString::to_string).collect())
        )
    };
    let full = format!(
        "video/x-raw, format=(string){}, width=(int){}, height=(int){}, framerate=(fraction){}/{}, pixel-aspect-ratio=(fraction){}/{}, colorimetry=(string){}{extra}",
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
        return Some(full);
    }
    let short = format!(
        "video/x-raw,format={},width={},height={},framerate={}/{}{extra}",
        info.format().to_str(),
        info.width(),
        info.height(),
        fps.numer(),
        fps.denom()
    );
    (short.len() <= MAX_DESCRIPTION).then_some(short)
}

/// Whether `layout` has the strides and offsets `info` (the caps'
/// default layout) has.
pub fn is_default_layout(info: &gst_video::VideoInfo, layout: &gst_video::VideoInfo) -> bool {
    info.stride() == layout.stride() && info.offset() == layout.offset()
}

/// The pool layout for `info`: every plane's stride a multiple of
/// `stride_align` bytes (a power of two; 0 or 1: the caps' default).
pub fn aligned(info: &gst_video::VideoInfo, stride_align: u32) -> Result<gst_video::VideoInfo, String> {
    let mut layout = info.clone();
    if stride_align <= 1 {
        return Ok(layout);
    }
    if !stride_align.is_power_of_two() {
        return Err(format!("stride-align={stride_align} is not a power of two"));
    }
    let mut align = gst_video::VideoAlignment::new(0, 0, 0, 0, &[stride_align - 1; gst_video::VIDEO_MAX_PLANES]);
    layout.align(&mut align).map_err(|e| format!("aligning {:?} strides to {stride_align}: {e}", info.format()))?;
    Ok(layout)
}

/// The caps' video info and the frames' layout from a pool's description
/// (see [`describe`]): the layout is the caps' default unless the
/// description carries `stride` and `offset` arrays.
pub fn layout_of(description: &gst::CapsRef) -> Option<(gst_video::VideoInfo, gst_video::VideoInfo)> {
    let info = gst_video::VideoInfo::from_caps(description).ok()?;
    let s = description.structure(0)?;
    let (Ok(stride), Ok(offset)) = (s.get::<gst::Array>("stride"), s.get::<gst::Array>("offset")) else {
        return Some((info.clone(), info));
    };
    let stride: Vec<i32> = stride.iter().map(|v| v.get::<i32>().ok()).collect::<Option<_>>()?;
    let offset: Vec<usize> =
        offset.iter().map(|v| v.get::<i32>().ok().and_then(|o| usize::try_from(o).ok())).collect::<Option<_>>()?;
    if stride.len() != info.n_planes() as usize || offset.len() != stride.len() {
        return None;
    }
    let layout = gst_video::VideoInfo::builder_from_info(&info).stride(&stride).offset(&offset).build().ok()?;
    Some((info, layout))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_layout_round_trips_through_the_description() {
        gst::init().expect("GStreamer init");
        let info = gst_video::VideoInfo::builder(VideoFormat::Nv12, 1918, 1080).fps(gst::Fraction::new(30, 1)).build();
        let info = info.expect("NV12 1918x1080");
        assert_eq!(info.stride(), &[1920, 1920]);
        let layout = aligned(&info, 256).expect("aligned");
        assert_eq!(layout.stride(), &[2048, 2048]);
        assert_eq!(layout.offset(), &[0, 2048 * 1080]);
        let description = describe(&info, &layout).expect("fits");
        assert!(description.len() <= MAX_DESCRIPTION, "{description}");
        let caps: gst::Caps = description.parse().expect("caps");
        let (read_info, read_layout) = layout_of(&caps).expect("layout");
        assert_eq!(read_info.stride(), info.stride());
        assert_eq!((read_layout.stride(), read_layout.offset()), (layout.stride(), layout.offset()));
        // The default layout adds nothing to the description.
        let plain = describe(&info, &info).expect("fits");
        assert!(!plain.contains("stride"), "{plain}");
        let (_, same) = layout_of(&plain.parse::<gst::Caps>().expect("caps")).expect("layout");
        assert!(is_default_layout(&info, &same));
        assert!(aligned(&info, 96).is_err());
    }
}
