//! `--sink /dev/dri/cardN`: consumer 0 shows every frame it receives on a
//! KMS display, zero copy. Each pool buffer is imported into the card once
//! (PRIME + `ADDFB2` with the layout's pitch, framebuffers cached per
//! buffer); the first atomic commit sets the mode (`ALLOW_MODESET`:
//! `MODE_ID`, `ACTIVE`, the connector's `CRTC_ID`), then one blocking commit
//! per frame puts it on the primary plane. A frame goes back to the pool
//! only once the next one replaced it on screen: the display reads it until
//! then.

use super::histogram::LatencyHistogram;

use dmabroker::device::kms::{DisplayMode, Framebuffer, FramebufferSpec, KmsDevice, PlaneKind, PropertyBlob};
use dmabroker::format::{Layout, LayoutOptions, PixelFormat};
use std::collections::HashMap;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Instant;

/// What the sink measured (consumer 0's report line carries it).
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(super) struct SinkReport {
    /// The card, driver, connector, mode and plane, in words.
    pub(super) target: String,
    /// Frames put on screen (commits that succeeded).
    pub(super) shown: u64,
    /// From the end of the first commit to the end of the last, ns.
    pub(super) span_ns: u64,
    pub(super) commit_p50_ns: u64,
    pub(super) commit_max_ns: u64,
}

impl SinkReport {
    /// Frames shown over the time between the first and the last commit.
    pub(super) fn scanout_fps(&self) -> f64 {
        if self.shown < 2 || self.span_ns == 0 {
            0.0
        } else {
            (self.shown - 1) as f64 / (self.span_ns as f64 / 1e9)
        }
    }
}

/// The frame format the producer tells consumer 0 (hidden arguments).
#[derive(Debug, Clone, Copy)]
pub(super) struct SinkFrame {
    pub(super) format: PixelFormat,
    pub(super) width: u32,
    pub(super) height: u32,
    /// The capture device's `bytesperline`.
    pub(super) pitch: u32,
}

/// The pipe chosen on the card: connector, CRTC, primary plane, mode.
pub(super) struct KmsSink<'d> {
    kms: &'d KmsDevice,
    spec: FramebufferSpec,
    connector: u32,
    crtc: u32,
    plane: u32,
    mode: DisplayMode,
    mode_blob: Option<PropertyBlob<'d>>,
    /// One framebuffer per pool buffer index, made on first use.
    fbs: HashMap<u32, Framebuffer<'d>>,
    commits: LatencyHistogram,
    first: Option<Instant>,
    last: Option<Instant>,
    pub(super) report: SinkReport,
}

/// The framebuffer spec of `frame`: its layout with the device's pitch.
fn spec_of(frame: &SinkFrame) -> anyhow::Result<FramebufferSpec> {
    // The largest power of two dividing the pitch gives the same pitch
    // when the device pads lines (it pads to an alignment).
    let align = 1u64 << frame.pitch.trailing_zeros().min(12);
    let layout =
        Layout::new(frame.format, frame.width, frame.height, &LayoutOptions::default().with_stride_align(align))?;
    if layout.bytesperline() != u64::from(frame.pitch) {
        anyhow::bail!(
            "{} {}x{} with a pitch of {} bytes: no layout gives that pitch (unpadded: {})",
            frame.format,
            frame.width,
            frame.height,
            frame.pitch,
            layout.bytesperline()
        );
    }
    Ok(FramebufferSpec::from_layout(&layout, None)?)
}

impl<'d> KmsSink<'d> {
    /// Choose the pipe on `kms` for frames of `frame`: the first connected
    /// display connector, one of its CRTCs, that CRTC's primary plane, and
    /// a mode of the frame's size (else the preferred mode, the plane
    /// scaled to it where the driver scales).
    pub(super) fn new(kms: &'d KmsDevice, frame: &SinkFrame) -> anyhow::Result<Self> {
        let card = kms.path().display().to_string();
        let spec = spec_of(frame)?;
        let connectors = kms.connectors()?;
        let connector = connectors
            .iter()
            .find(|c| !c.writeback && c.connected && !c.modes.is_empty())
            .ok_or_else(|| anyhow::anyhow!("{card} ({}): no connected display connector", kms.driver_name()))?;
        let planes = kms.planes()?;
        let (crtc, plane) = connector
            .possible_crtcs
            .iter()
            .find_map(|&c| {
                planes.iter().find(|p| p.kind == PlaneKind::Primary && p.possible_crtcs.contains(&c)).map(|p| (c, p.id))
            })
            .ok_or_else(|| anyhow::anyhow!("{card}: no CRTC with a primary plane drives {}", connector.name))?;
        let mode = connector
            .mode(frame.width, frame.height)
            .or_else(|| connector.modes.iter().copied().find(DisplayMode::preferred))
            .or_else(|| connector.modes.first().copied())
            .ok_or_else(|| anyhow::anyhow!("{card}: {} offers no mode", connector.name))?;
        let scaled = if mode.size() == (frame.width, frame.height) { "" } else { ", scaled" };
        let report = SinkReport {
            target: format!(
                "{card} ({}), {} mode {mode}, primary plane {plane} of CRTC {crtc}{scaled}",
                kms.driver_name(),
                connector.name
            ),
            ..SinkReport::default()
        };
        Ok(Self {
            kms,
            spec,
            connector: connector.id,
            crtc,
            plane,
            mode,
            mode_blob: None,
            fbs: HashMap::new(),
            commits: LatencyHistogram::new(),
            first: None,
            last: None,
            report,
        })
    }

    /// Put buffer `index` (`buffer`, a dma-buf) on screen; blocks until
    /// the commit is done (the previous frame is no longer read after it).
    pub(super) fn show(&mut self, index: u32, buffer: &dmabroker::Buffer) -> anyhow::Result<()> {
        if !self.fbs.contains_key(&index) {
            let fb = self.kms.add_framebuffer(&[buffer.as_fd()], &self.spec)?;
            self.fbs.insert(index, fb);
        }
        let fb = &self.fbs[&index];
        let mut req = self.kms.atomic_request();
        let modeset = self.mode_blob.is_none();
        if modeset {
            self.mode_blob = Some(self.kms.mode_blob(&self.mode)?);
        }
        if let Some(blob) = self.mode_blob.as_ref().filter(|_| modeset) {
            req.enable(self.connector, self.crtc, blob)?;
        }
        let (mw, mh) = self.mode.size();
        req.show_at(self.plane, self.crtc, fb, (mw, mh))?;
        let t = Instant::now();
        req.commit(modeset).map_err(|e| {
            anyhow::anyhow!(
                "showing {} on {}: {e}{}",
                self.spec,
                self.report.target,
                if (mw, mh) == (self.spec.width, self.spec.height) {
                    String::new()
                } else {
                    format!(" (the card has no {}x{} mode; pass --size {mw}x{mh})", self.spec.width, self.spec.height)
                }
            )
        })?;
        let done = Instant::now();
        self.commits.record(u64::try_from(done.duration_since(t).as_nanos()).unwrap_or(u64::MAX));
        let first = *self.first.get_or_insert(done);
        self.last = Some(done);
        self.report.shown += 1;
        self.report.span_ns = u64::try_from(done.duration_since(first).as_nanos()).unwrap_or(u64::MAX);
        self.report.commit_p50_ns = self.commits.quantile(0.5);
        self.report.commit_max_ns = self.commits.max;
        Ok(())
    }

    /// Take the plane off the CRTC and turn the pipe off (the
    /// framebuffers go on drop).
    pub(super) fn off(&mut self) {
        if self.mode_blob.is_none() {
            return;
        }
        let mut req = self.kms.atomic_request();
        let built = req.disable(self.plane, &[self.connector], self.crtc);
        if built.is_ok() {
            if let Err(e) = req.commit(true) {
                eprintln!("dmabroker demo: turning {} off: {e}", self.report.target);
            }
        }
    }
}

/// The formats the demo captures, checked against what `card`'s primary
/// planes scan out linearly (their `IN_FORMATS`): the ones both take, in
/// the demo's order.
pub(super) fn scanout_formats(card: &Path, camera: &[PixelFormat]) -> anyhow::Result<Vec<PixelFormat>> {
    let kms = KmsDevice::open(card)?;
    let mut both = Vec::new();
    let mut takes = String::new();
    for &f in camera {
        let Some(code) = f.to_drm() else { continue };
        let offer = kms.modifier_offer(PlaneKind::Primary, code as u32, 1)?;
        if offer.modifiers.iter().any(|m| m.modifier == dmabroker::constraints::modifier::MOD_LINEAR) {
            both.push(f);
        } else if takes.is_empty() {
            takes = offer.refused.first().map(|(_, why)| why.clone()).unwrap_or_default();
        }
    }
    if both.is_empty() {
        let names: Vec<String> = camera.iter().map(|f| f.v4l2_fourcc().to_string()).collect();
        anyhow::bail!(
            "{} ({}) scans out none of the formats the demo can capture ({}): {takes}",
            card.display(),
            kms.driver_name(),
            names.join(", ")
        );
    }
    Ok(both)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scanout_rate_counts_intervals_between_commits() {
        let r = SinkReport { shown: 31, span_ns: 3_000_000_000, ..SinkReport::default() };
        assert!((r.scanout_fps() - 10.0).abs() < 1e-9);
        assert_eq!(SinkReport { shown: 1, span_ns: 0, ..SinkReport::default() }.scanout_fps(), 0.0);
    }

    #[test]
    fn spec_keeps_the_devices_pitch() {
        let f = SinkFrame { format: PixelFormat::Nv12, width: 640, height: 480, pitch: 768 };
        let s = spec_of(&f).unwrap();
        assert_eq!((s.planes[0].pitch, s.planes[1].offset), (768, 768 * 480));
        let x = SinkFrame { format: PixelFormat::Xbgr32, width: 640, height: 480, pitch: 2560 };
        assert_eq!(spec_of(&x).unwrap().to_string(), "640x480 XR24 [buffer 0 offset 0 pitch 2560]");
        // A pitch below the line's bytes is no layout.
        assert!(spec_of(&SinkFrame { pitch: 1024, ..x }).is_err());
    }
}
