//! The `dmabrokersrc` element.

use super::attachment::{Attachment, Held};
use dmabroker::pool::{now_ns, NamedPoolError, PoolError};
use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::base_src::CreateSuccess;
use gst_base::subclass::prelude::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

pub(crate) static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new("dmabrokersrc", gst::DebugColorFlags::empty(), Some("dmabroker pool source"))
});

/// How long one wait for a frame holds the consumer's lock (downstream
/// releases frames under the same lock).
const RECV_SLICE: Duration = Duration::from_millis(10);
/// Between reconnect attempts.
const RECONNECT_PERIOD: Duration = Duration::from_millis(100);
const DEFAULT_RECONNECT: bool = true;
const DEFAULT_TIMEOUT_MS: u32 = 0;

#[derive(Debug, Clone)]
struct Settings {
    broker_socket: Option<String>,
    pool: Option<String>,
    reconnect: bool,
    verify: bool,
    timeout_ms: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            broker_socket: None,
            pool: None,
            reconnect: DEFAULT_RECONNECT,
            verify: false,
            timeout_ms: DEFAULT_TIMEOUT_MS,
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    frames: AtomicU64,
    lost: AtomicU64,
    verified: AtomicU64,
    reconnects: AtomicU64,
    copies: AtomicU64,
}

struct Attached {
    attachment: Arc<Attachment>,
    info: gst_video::VideoInfo,
    /// The frames' layout: `info`'s default, or the producer's padded
    /// strides and offsets (said downstream in a video meta).
    layout: gst_video::VideoInfo,
    caps: gst::Caps,
    last_seq: Option<u64>,
}

#[derive(Default)]
pub struct DmaBrokerSrc {
    settings: Mutex<Settings>,
    state: Mutex<Option<Attached>>,
    counters: Counters,
    unlocked: AtomicBool,
    copy_warned: AtomicBool,
    /// Downstream reads video metas (its allocation query said so).
    downstream_video_meta: AtomicBool,
}

impl DmaBrokerSrc {
    fn settings(&self) -> Settings {
        self.settings.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn attach(&self) -> Result<Attached, NamedPoolError> {
        let s = self.settings();
        let broker = s.broker_socket.map(Into::into).unwrap_or_else(dmabroker::proto::default_client_socket);
        let name = s.pool.unwrap_or_default();
        let attachment = Attachment::attach(&broker, &name)?;
        let description = attachment.info.description.clone();
        let plain = description.parse::<gst::Caps>();
        let (info, layout) = plain.as_ref().ok().and_then(|c| crate::videocaps::layout_of(c)).ok_or_else(|| {
            NamedPoolError::Refused {
                code: dmabroker::proto::ErrorCode::BadRequest,
                message: format!("pool `{name}` describes its frames as `{description}`, which are not video caps: is it a dmabrokersink pool?"),
            }
        })?;
        let caps = crate::videocaps::source_caps(&info, attachment.dmabuf);
        gst::info!(
            CAT,
            imp = self,
            "attached to pool `{name}` of uid {} ({} access, {} {} buffers, strides {:?}): {caps}",
            attachment.info.producer_uid,
            attachment.info.access,
            attachment.maps.len(),
            if attachment.dmabuf { "dma-buf" } else { "memfd" },
            layout.stride()
        );
        Ok(Attached { attachment, info, layout, caps, last_seq: None })
    }

    fn error_for(&self, e: &NamedPoolError) -> gst::ErrorMessage {
        let pool = self.settings().pool.unwrap_or_default();
        match e {
            NamedPoolError::NotAllowed(_) => {
                gst::error_msg!(gst::ResourceError::NotAuthorized, ["attaching to pool `{pool}`: {e}"])
            }
            NamedPoolError::NotFound(_) => {
                gst::error_msg!(gst::ResourceError::NotFound, ["attaching to pool `{pool}`: {e}"])
            }
            _ => gst::error_msg!(gst::ResourceError::OpenRead, ["attaching to pool `{pool}`: {e}"]),
        }
    }

    /// Attach again after the producer went away, until it is back or the
    /// element is unlocked. Pushes new caps when they changed.
    fn reattach(&self) -> Result<(), gst::FlowError> {
        gst::warning!(CAT, imp = self, "producer gone: reattaching until it is back");
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = None;
        loop {
            if self.unlocked.load(Ordering::Acquire) {
                return Err(gst::FlowError::Flushing);
            }
            match self.attach() {
                Ok(attached) => {
                    let caps = attached.caps.clone();
                    let old = self.obj().src_pad().current_caps();
                    *self.state.lock().unwrap_or_else(|p| p.into_inner()) = Some(attached);
                    self.counters.reconnects.fetch_add(1, Ordering::Relaxed);
                    if old.as_ref().is_none_or(|o| !o.can_intersect(&caps)) {
                        let mut fixed = caps;
                        fixed.fixate();
                        if self.obj().set_caps(&fixed).is_err() {
                            return Err(gst::FlowError::NotNegotiated);
                        }
                    }
                    return Ok(());
                }
                Err(e) => gst::debug!(CAT, imp = self, "reattach: {e}"),
            }
            std::thread::sleep(RECONNECT_PERIOD);
        }
    }

    fn post_stats(&self) {
        let c = &self.counters;
        let s = gst::Structure::builder("dmabrokersrc-stats")
            .field("frames", c.frames.load(Ordering::Relaxed))
            .field("lost", c.lost.load(Ordering::Relaxed))
            .field("verified", c.verified.load(Ordering::Relaxed))
            .field("reconnects", c.reconnects.load(Ordering::Relaxed))
            .field("copies", c.copies.load(Ordering::Relaxed))
            .build();
        gst::info!(CAT, imp = self, "{s}");
        let _ = self.obj().post_message(gst::message::Element::builder(s).src(&*self.obj()).build());
    }

    /// A copy of `buffer` (a padded frame with its video meta) in the caps'
    /// default layout, for downstream that reads no video meta.
    fn default_layout_copy(
        &self,
        buffer: &gst::Buffer,
        info: &gst_video::VideoInfo,
    ) -> Result<gst::Buffer, gst::FlowError> {
        if !self.copy_warned.swap(true, Ordering::AcqRel) {
            gst::warning!(
                CAT,
                imp = self,
                "downstream reads no GstVideoMeta and the pool's strides are padded: copying each frame into the default layout"
            );
        }
        let fail = |what: &str| {
            gst::element_imp_error!(self, gst::StreamError::Format, ["copying a padded frame: {what}"]);
            gst::FlowError::Error
        };
        let src = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer.as_ref(), info)
            .map_err(|_| fail("mapping the frame"))?;
        let mut out = gst::Buffer::with_size(info.size()).map_err(|_| fail("allocating"))?;
        {
            let mut dst = gst_video::VideoFrameRef::from_buffer_ref_writable(
                out.get_mut().ok_or_else(|| fail("a new buffer is not writable"))?,
                info,
            )
            .map_err(|_| fail("mapping the copy"))?;
            src.copy(&mut dst).map_err(|_| fail("copying"))?;
        }
        self.counters.copies.fetch_add(1, Ordering::Relaxed);
        Ok(out)
    }

    /// The pipeline running time of a frame the producer handed off at
    /// `mono_ns` (`CLOCK_MONOTONIC`): its age now, subtracted from now.
    fn running_time_of(&self, mono_ns: u64) -> Option<gst::ClockTime> {
        let obj = self.obj();
        let clock = obj.clock()?;
        let base = obj.base_time()?;
        let now = clock.time();
        let age = gst::ClockTime::from_nseconds(now_ns().saturating_sub(mono_ns));
        now.checked_sub(base)?.checked_sub(age).or(Some(gst::ClockTime::ZERO))
    }
}

#[glib::object_subclass]
impl ObjectSubclass for DmaBrokerSrc {
    const NAME: &'static str = "GstDmaBrokerSrc";
    type Type = super::DmaBrokerSrc;
    type ParentType = gst_base::PushSrc;
}

impl ObjectImpl for DmaBrokerSrc {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPS: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecString::builder("broker-socket")
                    .nick("Broker socket")
                    .blurb("The broker's socket (default: $DMABROKER_SOCKET, $XDG_RUNTIME_DIR/dmabroker.sock, /run/dmabroker/dmabroker.sock)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("pool")
                    .nick("Pool name")
                    .blurb("Name of the pool to attach to (required); the broker checks its ACL")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("reconnect")
                    .nick("Reconnect")
                    .blurb("When the producer stops or crashes, wait for it to come back instead of ending the stream")
                    .default_value(DEFAULT_RECONNECT)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("verify")
                    .nick("Verify")
                    .blurb("Check each frame against the checksum its producer put in the ring entry (dmabrokersink checksum=true); a mismatch is an error")
                    .default_value(false)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("timeout")
                    .nick("Timeout")
                    .blurb("Milliseconds to wait for the pool to be registered at start, and without a frame before the stream fails (0: no wait at start, wait forever for frames)")
                    .default_value(DEFAULT_TIMEOUT_MS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt64::builder("frames").nick("Frames").blurb("Frames pushed").read_only().build(),
                glib::ParamSpecUInt64::builder("lost")
                    .nick("Lost frames")
                    .blurb("Frames the producer published that this source never received (sequence gaps)")
                    .read_only()
                    .build(),
                glib::ParamSpecUInt64::builder("verified")
                    .nick("Verified frames")
                    .blurb("Frames whose checksum matched")
                    .read_only()
                    .build(),
                glib::ParamSpecUInt64::builder("copies")
                    .nick("Copies")
                    .blurb("Frames copied into the caps' default layout because the pool's strides are padded and downstream reads no GstVideoMeta")
                    .read_only()
                    .build(),
            ]
        });
        PROPS.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut s = self.settings.lock().unwrap_or_else(|p| p.into_inner());
        match pspec.name() {
            "broker-socket" => s.broker_socket = value.get().unwrap_or_default(),
            "pool" => s.pool = value.get().unwrap_or_default(),
            "reconnect" => s.reconnect = value.get().unwrap_or(DEFAULT_RECONNECT),
            "verify" => s.verify = value.get().unwrap_or(false),
            "timeout" => s.timeout_ms = value.get().unwrap_or(DEFAULT_TIMEOUT_MS),
            other => gst::warning!(CAT, imp = self, "no writable property {other}"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let s = self.settings();
        let c = &self.counters;
        match pspec.name() {
            "broker-socket" => s.broker_socket.to_value(),
            "pool" => s.pool.to_value(),
            "reconnect" => s.reconnect.to_value(),
            "verify" => s.verify.to_value(),
            "timeout" => s.timeout_ms.to_value(),
            "frames" => c.frames.load(Ordering::Relaxed).to_value(),
            "lost" => c.lost.load(Ordering::Relaxed).to_value(),
            "verified" => c.verified.load(Ordering::Relaxed).to_value(),
            "copies" => c.copies.load(Ordering::Relaxed).to_value(),
            _ => glib::Value::from_type(pspec.value_type()),
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        let obj = self.obj();
        obj.set_live(true);
        obj.set_format(gst::Format::Time);
    }
}

impl GstObjectImpl for DmaBrokerSrc {}

impl ElementImpl for DmaBrokerSrc {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static META: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "dmabroker pool source",
                "Source/Video",
                "Attaches to a named dmabroker pool through the broker (under its ACL) and pushes the shared frames without copying",
                "dmabroker developers",
            )
        });
        Some(&*META)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            vec![gst::PadTemplate::new(
                "src",
                gst::PadDirection::Src,
                gst::PadPresence::Always,
                &crate::videocaps::template_caps(),
            )
            .expect("a static pad template")]
        });
        TEMPLATES.as_ref()
    }
}

impl BaseSrcImpl for DmaBrokerSrc {
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        self.unlocked.store(false, Ordering::Release);
        if self.settings().pool.is_none() {
            return Err(gst::error_msg!(
                gst::ResourceError::Settings,
                ["no pool name: set the `pool` property (e.g. pool=cam0)"]
            ));
        }
        // The producer may not have registered yet: wait up to `timeout`.
        let wait = Duration::from_millis(self.settings().timeout_ms.into());
        let since = Instant::now();
        let attached = loop {
            match self.attach() {
                Ok(a) => break a,
                Err(NamedPoolError::NotFound(_))
                    if since.elapsed() < wait && !self.unlocked.load(Ordering::Acquire) =>
                {
                    std::thread::sleep(RECONNECT_PERIOD)
                }
                Err(e) => return Err(self.error_for(&e)),
            }
        };
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = Some(attached);
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = None;
        Ok(())
    }

    fn caps(&self, filter: Option<&gst::Caps>) -> Option<gst::Caps> {
        let caps = match &*self.state.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(a) => a.caps.clone(),
            None => crate::videocaps::template_caps(),
        };
        Some(match filter {
            Some(f) => f.intersect_with_mode(&caps, gst::CapsIntersectMode::First),
            None => caps,
        })
    }

    fn decide_allocation(&self, query: &mut gst::query::Allocation) -> Result<(), gst::LoggableError> {
        let reads_meta = query.find_allocation_meta::<gst_video::VideoMeta>().is_some();
        self.downstream_video_meta.store(reads_meta, Ordering::Release);
        self.parent_decide_allocation(query)
    }

    fn is_seekable(&self) -> bool {
        false
    }

    fn unlock(&self) -> Result<(), gst::ErrorMessage> {
        self.unlocked.store(true, Ordering::Release);
        Ok(())
    }

    fn unlock_stop(&self) -> Result<(), gst::ErrorMessage> {
        self.unlocked.store(false, Ordering::Release);
        Ok(())
    }
}

impl PushSrcImpl for DmaBrokerSrc {
    fn create(&self, _buffer: Option<&mut gst::BufferRef>) -> Result<CreateSuccess, gst::FlowError> {
        let s = self.settings();
        let started = Instant::now();
        loop {
            if self.unlocked.load(Ordering::Acquire) {
                return Err(gst::FlowError::Flushing);
            }
            let attachment = match &*self.state.lock().unwrap_or_else(|p| p.into_inner()) {
                Some(a) => a.attachment.clone(),
                None => return Err(gst::FlowError::Flushing),
            };
            let received = {
                let mut consumer = attachment.consumer();
                let result = match consumer.recv(Some(RECV_SLICE)) {
                    Ok(frame) => {
                        let info = *frame.info();
                        let verdict = if s.verify {
                            let map = &attachment.maps[info.index as usize];
                            let len = (info.bytes_used as usize).min(map.len());
                            let sum = crate::checksum::checksum(&map.as_slice()[..len]);
                            // Read first, then check the frame was not taken
                            // back meanwhile (eviction): only then do the
                            // bytes count.
                            Some((info.meta == 0, sum == info.meta && frame.is_valid()))
                        } else {
                            None
                        };
                        Ok((info, frame.keep(), verdict))
                    }
                    Err(e) => Err(e),
                };
                result
            };
            let (info, kept, verdict) = match received {
                Ok(r) => r,
                Err(PoolError::Timeout(_)) => {
                    if s.timeout_ms > 0 && started.elapsed() >= Duration::from_millis(s.timeout_ms.into()) {
                        gst::element_imp_error!(
                            self,
                            gst::ResourceError::Read,
                            ["no frame for {} ms (timeout)", s.timeout_ms]
                        );
                        return Err(gst::FlowError::Error);
                    }
                    continue;
                }
                Err(PoolError::Closed) if !s.reconnect => {
                    self.post_stats();
                    return Err(gst::FlowError::Eos);
                }
                Err(e) if s.reconnect => {
                    gst::info!(CAT, imp = self, "stream ended ({e})");
                    self.reattach()?;
                    continue;
                }
                Err(e) => {
                    self.post_stats();
                    gst::element_imp_error!(self, gst::ResourceError::Read, ["receiving a frame: {e}"]);
                    return Err(gst::FlowError::Error);
                }
            };
            match verdict {
                Some((true, _)) => {
                    gst::element_imp_error!(
                        self,
                        gst::StreamError::Failed,
                        ["frame {} carries no checksum: set checksum=true on the dmabrokersink, or verify=false here", info.seq]
                    );
                    return Err(gst::FlowError::Error);
                }
                Some((false, false)) => {
                    gst::element_imp_error!(
                        self,
                        gst::StreamError::Decode,
                        ["frame {} does not match its producer's checksum", info.seq]
                    );
                    return Err(gst::FlowError::Error);
                }
                Some((false, true)) => {
                    self.counters.verified.fetch_add(1, Ordering::Relaxed);
                }
                None => {}
            }
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let Some(st) = state.as_mut() else { return Err(gst::FlowError::Flushing) };
            let mut discont = false;
            if let Some(last) = st.last_seq {
                if info.seq > last + 1 {
                    let lost = info.seq - last - 1;
                    self.counters.lost.fetch_add(lost, Ordering::Relaxed);
                    gst::warning!(CAT, imp = self, "{lost} frame(s) lost before frame {}", info.seq);
                    discont = true;
                }
            }
            st.last_seq = Some(info.seq);
            let duration = (st.info.fps().numer() > 0).then(|| {
                gst::ClockTime::SECOND.mul_div_floor(st.info.fps().denom() as u64, st.info.fps().numer() as u64)
            });
            let map = attachment.maps[info.index as usize].clone();
            let len = (info.bytes_used as usize).min(map.len());
            let dmabuf = attachment.dmabuf;
            let (vinfo, layout) = (st.info.clone(), st.layout.clone());
            drop(state);
            let held = Held { frame: Some(kept), map, len, attachment: attachment.clone() };
            let padded = !crate::videocaps::is_default_layout(&vinfo, &layout);
            let mut buffer = if dmabuf {
                crate::src::imp::dmabuf_buffer(&attachment, info.index, len, held)?
            } else {
                gst::Buffer::from_slice(held)
            };
            if dmabuf || padded {
                // DMA_DRM caps carry no layout, nor do caps a padded one: a
                // video meta says it (the producer's strides and offsets).
                let _ = gst_video::VideoMeta::add_full(
                    buffer.make_mut(),
                    gst_video::VideoFrameFlags::empty(),
                    layout.format(),
                    layout.width(),
                    layout.height(),
                    layout.offset(),
                    layout.stride(),
                );
            }
            // DMA_DRM consumers must read the meta (those caps say no
            // layout); system memory goes to any element, so it gets the
            // default layout when downstream reads no meta.
            if padded && !dmabuf && !self.downstream_video_meta.load(Ordering::Acquire) {
                buffer = self.default_layout_copy(&buffer, &vinfo)?;
            }
            {
                let b = buffer.make_mut();
                b.set_pts(self.running_time_of(info.timestamp_ns));
                b.set_duration(duration.flatten());
                b.set_offset(info.seq);
                if discont {
                    b.set_flags(gst::BufferFlags::DISCONT);
                }
            }
            let pushed = self.counters.frames.fetch_add(1, Ordering::Relaxed) + 1;
            if i64::try_from(pushed).is_ok_and(|n| n == i64::from(self.obj().num_buffers())) {
                // num-buffers ends the stream in the base class: report now.
                self.post_stats();
            }
            return Ok(CreateSuccess::NewBuffer(buffer));
        }
    }
}

/// A buffer of dma-buf memory over frame `index` (a dup of its fd, mapped
/// by GStreamer on demand); the frame stays held until the buffer is freed
/// (through a parent-buffer meta over `held`).
pub(crate) fn dmabuf_buffer(
    attachment: &Attachment,
    index: u32,
    len: usize,
    held: Held,
) -> Result<gst::Buffer, gst::FlowError> {
    let fd = attachment.dup_fd(index).ok_or(gst::FlowError::Error)?;
    use gst_allocators::prelude::*;
    let allocator = gst_allocators::DmaBufAllocator::new();
    // SAFETY: `fd` is a dma-buf (the attachment checked each buffer's kind)
    // of at least `len` bytes (the pool checked every buffer holds a whole
    // frame), and ownership moves into the memory, which closes it.
    let memory = unsafe { allocator.alloc_dmabuf(fd, len) }.map_err(|_| gst::FlowError::Error)?;
    let mut buffer = gst::Buffer::new();
    {
        let b = buffer.make_mut();
        b.append_memory(memory);
        let guard = gst::Buffer::from_slice(held);
        gst::meta::ParentBufferMeta::add(b, &guard);
    }
    Ok(buffer)
}
