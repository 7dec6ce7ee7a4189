//! The `dmabrokersink` element.

use super::pool::SinkPool;
use super::stream::Stream;
use super::Backpressure;
use dmabroker::constraints::Constraints;
use dmabroker::pool::{FrameMeta, PoolOptions, PoolRegistration, Producer};
use dmabroker::proto::Grant;
use dmabroker::Heaps;
use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::prelude::*;
use gst_video::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

pub(crate) static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new("dmabrokersink", gst::DebugColorFlags::empty(), Some("dmabroker pool sink"))
});

const DEFAULT_BUFFERS: u32 = 4;
const DEFAULT_HEAP: &str = "memfd";
const DEFAULT_RELEASE_TIMEOUT_MS: u32 = 5000;
const DEFAULT_CONSUMER_TIMEOUT_MS: u32 = 10_000;

#[derive(Debug, Clone)]
struct Settings {
    broker_socket: Option<String>,
    pool: Option<String>,
    heap: String,
    devices: Option<String>,
    buffers: u32,
    grants: Option<String>,
    backpressure: Backpressure,
    release_timeout_ms: u32,
    checksum: bool,
    wait_for_consumers: u32,
    consumer_timeout_ms: u32,
    stride_align: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            broker_socket: None,
            pool: None,
            heap: DEFAULT_HEAP.into(),
            devices: None,
            buffers: DEFAULT_BUFFERS,
            grants: None,
            backpressure: Backpressure::Block,
            release_timeout_ms: DEFAULT_RELEASE_TIMEOUT_MS,
            checksum: false,
            wait_for_consumers: 0,
            consumer_timeout_ms: DEFAULT_CONSUMER_TIMEOUT_MS,
            stride_align: 0,
        }
    }
}

/// What the sink publishes: the stream, the caps' video info, and the
/// frames' layout (the caps' default, or padded strides: `stride-align`).
#[derive(Clone)]
struct Published {
    stream: Arc<Stream>,
    info: gst_video::VideoInfo,
    layout: gst_video::VideoInfo,
}

#[derive(Default)]
pub struct DmaBrokerSink {
    settings: Mutex<Settings>,
    stream: Mutex<Option<Published>>,
    unlocked: AtomicBool,
    waited: AtomicBool,
}

impl DmaBrokerSink {
    fn stream(&self) -> Option<Published> {
        self.stream.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn settings(&self) -> Settings {
        self.settings.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn parse_grants(text: &str) -> Result<Vec<Grant>, String> {
        text.split([',', ' ']).filter(|s| !s.is_empty()).map(str::parse::<Grant>).collect()
    }

    /// Allocate the pool for `info` in `layout` and register it.
    fn publish(
        &self,
        info: &gst_video::VideoInfo,
        layout: &gst_video::VideoInfo,
    ) -> Result<Arc<Stream>, gst::ErrorMessage> {
        let s = self.settings();
        let Some(name) = s.pool.clone() else {
            return Err(gst::error_msg!(
                gst::ResourceError::Settings,
                ["no pool name: set the `pool` property (e.g. pool=cam0)"]
            ));
        };
        let grants = Self::parse_grants(s.grants.as_deref().unwrap_or(""))
            .map_err(|e| gst::error_msg!(gst::ResourceError::Settings, ["grants: {e}"]))?;
        let frame_len = layout.size();
        let Some(description) = crate::videocaps::describe(info, layout) else {
            return Err(gst::error_msg!(
                gst::ResourceError::Settings,
                [
                    "the layout of {:?} {}x{} (strides {:?}, offsets {:?}) does not fit the broker's {}-byte pool description: use stride-align=0",
                    info.format(),
                    info.width(),
                    info.height(),
                    layout.stride(),
                    layout.offset(),
                    crate::videocaps::MAX_DESCRIPTION
                ]
            ));
        };
        let release = (s.release_timeout_ms > 0).then(|| Duration::from_millis(s.release_timeout_ms.into()));
        let options = PoolOptions::new(s.buffers as usize, frame_len as u64)
            .backpressure(match s.backpressure {
                Backpressure::Block => dmabroker::pool::Backpressure::Block,
                Backpressure::DropOldest => dmabroker::pool::Backpressure::DropOldest,
            })
            .release_timeout(release)
            .name(format!("gst-{name}"));
        let heaps = Heaps::discover();
        let producer = match s.devices.as_deref().filter(|d| !d.is_empty()) {
            None => Producer::allocate(&heaps, &s.heap, &options).map_err(|e| {
                gst::error_msg!(
                    gst::ResourceError::NoSpaceLeft,
                    ["allocating {} frames from heap `{}`: {e}", s.buffers, s.heap]
                )
            })?,
            Some(devices) => {
                let mut all = Vec::new();
                for d in devices.split(',').filter(|d| !d.is_empty()) {
                    all.push(
                        Constraints::probe(d)
                            .map_err(|e| gst::error_msg!(gst::ResourceError::Settings, ["probing device {d}: {e}"]))?,
                    );
                }
                let merged = Constraints::merge_all(&all)
                    .map_err(|e| gst::error_msg!(gst::ResourceError::Settings, ["devices {devices}: {e}"]))?;
                Producer::allocate_for(&heaps, &merged, &options).map_err(|e| {
                    gst::error_msg!(gst::ResourceError::NoSpaceLeft, ["allocating frames for {devices}: {e}"])
                })?
            }
        };
        let broker = s.broker_socket.clone().map(Into::into).unwrap_or_else(dmabroker::proto::default_client_socket);
        let registration = PoolRegistration::register(&broker, &name, &grants, &description).map_err(|e| {
            gst::error_msg!(gst::ResourceError::OpenWrite, ["registering pool `{name}` with {}: {e}", broker.display()])
        })?;
        let heap = producer.buffers().next().map(|b| b.heap().to_owned()).unwrap_or_default();
        let stream = Stream::new(producer, registration, frame_len)
            .map_err(|e| gst::error_msg!(gst::ResourceError::Failed, ["mapping the pool's frames: {e}"]))?;
        gst::info!(
            CAT,
            imp = self,
            "pool `{name}`: {} frames of {frame_len} bytes from {heap} (strides {:?}, offsets {:?}), grants {:?}",
            s.buffers,
            layout.stride(),
            layout.offset(),
            grants
        );
        Ok(stream)
    }

    fn post_stats(&self) {
        let Some(Published { stream, .. }) = self.stream() else { return };
        let c = &stream.counters;
        let (frames, zero, copies) =
            (c.frames.load(Ordering::Relaxed), c.zero_copy.load(Ordering::Relaxed), c.copies.load(Ordering::Relaxed));
        gst::info!(CAT, imp = self, "{frames} frames published: {zero} zero-copy, {copies} copied");
        let s = gst::Structure::builder("dmabrokersink-stats")
            .field("frames", frames)
            .field("zero-copy", zero)
            .field("copies", copies)
            .field("consumers", c.consumers_seen.load(Ordering::Relaxed))
            .build();
        let _ = self.obj().post_message(gst::message::Element::builder(s).src(&*self.obj()).build());
    }
}

#[glib::object_subclass]
impl ObjectSubclass for DmaBrokerSink {
    const NAME: &'static str = "GstDmaBrokerSink";
    type Type = super::DmaBrokerSink;
    type ParentType = gst_base::BaseSink;
}

impl ObjectImpl for DmaBrokerSink {
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
                    .blurb("Name the pool is registered under with the broker (required)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("heap")
                    .nick("Heap")
                    .blurb("Heap the frames come from (memfd, memfd-hugetlb, dma-heap/system, udmabuf, ...)")
                    .default_value(Some(DEFAULT_HEAP))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("devices")
                    .nick("Devices")
                    .blurb("Comma-separated device nodes whose constraints the frames must meet (overrides heap)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("buffers")
                    .nick("Buffers")
                    .blurb("Frames in the pool")
                    .minimum(1)
                    .maximum(dmabroker::pool::MAX_BUFFERS)
                    .default_value(DEFAULT_BUFFERS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("grants")
                    .nick("Grants")
                    .blurb("Who else may attach, comma-separated: uid=N[:ro|rw], gid=N[:ro|rw], any[:ro] (the owner's uid and root always may)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("backpressure", Backpressure::Block)
                    .nick("Backpressure")
                    .blurb("What happens when consumers hold every frame")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("release-timeout")
                    .nick("Release timeout")
                    .blurb("Milliseconds a consumer may hold a frame before it is evicted (0 = never)")
                    .default_value(DEFAULT_RELEASE_TIMEOUT_MS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("checksum")
                    .nick("Checksum")
                    .blurb("Put a checksum of each frame in its ring entry (for dmabrokersrc verify=true)")
                    .default_value(false)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("wait-for-consumers")
                    .nick("Wait for consumers")
                    .blurb("Hold the first frame until this many consumers attached")
                    .default_value(0)
                    .maximum(dmabroker::pool::MAX_CONSUMERS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("consumer-timeout")
                    .nick("Consumer timeout")
                    .blurb("Milliseconds to wait for wait-for-consumers before failing")
                    .default_value(DEFAULT_CONSUMER_TIMEOUT_MS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("stride-align")
                    .nick("Stride alignment")
                    .blurb("Align every plane's stride in the pool's frames to this many bytes (a power of two, e.g. 64 or 256 for devices that need pitch alignment; 0: the caps' default layout). A padded layout reaches upstream and consumers as GstVideoMeta")
                    .default_value(0)
                    .maximum(1 << 16)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt64::builder("frames")
                    .nick("Frames")
                    .blurb("Frames published")
                    .read_only()
                    .build(),
                glib::ParamSpecUInt64::builder("copies")
                    .nick("Copies")
                    .blurb("Frames copied into the pool because upstream did not use the proposed buffer pool")
                    .read_only()
                    .build(),
                glib::ParamSpecUInt64::builder("zero-copy")
                    .nick("Zero-copy frames")
                    .blurb("Frames upstream wrote straight into the pool (no copy)")
                    .read_only()
                    .build(),
                glib::ParamSpecUInt::builder("consumers")
                    .nick("Consumers")
                    .blurb("Consumers attached now")
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
            "heap" => s.heap = value.get::<Option<String>>().ok().flatten().unwrap_or_else(|| DEFAULT_HEAP.into()),
            "devices" => s.devices = value.get().unwrap_or_default(),
            "buffers" => s.buffers = value.get().unwrap_or(DEFAULT_BUFFERS),
            "grants" => s.grants = value.get().unwrap_or_default(),
            "backpressure" => s.backpressure = value.get().unwrap_or_default(),
            "release-timeout" => s.release_timeout_ms = value.get().unwrap_or(DEFAULT_RELEASE_TIMEOUT_MS),
            "checksum" => s.checksum = value.get().unwrap_or(false),
            "wait-for-consumers" => s.wait_for_consumers = value.get().unwrap_or(0),
            "consumer-timeout" => s.consumer_timeout_ms = value.get().unwrap_or(DEFAULT_CONSUMER_TIMEOUT_MS),
            "stride-align" => s.stride_align = value.get().unwrap_or(0),
            other => gst::warning!(CAT, imp = self, "no writable property {other}"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let s = self.settings();
        let counter =
            |f: fn(&super::stream::Counters) -> u64| self.stream().map(|p| f(&p.stream.counters)).unwrap_or(0);
        match pspec.name() {
            "broker-socket" => s.broker_socket.to_value(),
            "pool" => s.pool.to_value(),
            "heap" => s.heap.to_value(),
            "devices" => s.devices.to_value(),
            "buffers" => s.buffers.to_value(),
            "grants" => s.grants.to_value(),
            "backpressure" => s.backpressure.to_value(),
            "release-timeout" => s.release_timeout_ms.to_value(),
            "checksum" => s.checksum.to_value(),
            "wait-for-consumers" => s.wait_for_consumers.to_value(),
            "consumer-timeout" => s.consumer_timeout_ms.to_value(),
            "stride-align" => s.stride_align.to_value(),
            "frames" => counter(|c| c.frames.load(Ordering::Relaxed)).to_value(),
            "copies" => counter(|c| c.copies.load(Ordering::Relaxed)).to_value(),
            "zero-copy" => counter(|c| c.zero_copy.load(Ordering::Relaxed)).to_value(),
            "consumers" => (self.stream().map(|p| p.stream.attached()).unwrap_or(0) as u32).to_value(),
            _ => glib::Value::from_type(pspec.value_type()),
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        // A held last sample would keep a frame lent for a whole frame period.
        self.obj().set_enable_last_sample(false);
        self.obj().set_sync(false);
    }
}

impl GstObjectImpl for DmaBrokerSink {}

impl ElementImpl for DmaBrokerSink {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static META: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "dmabroker pool sink",
                "Sink/Video",
                "Publishes video into a named dmabroker pool, shared zero-copy with consumers the broker's ACL admits",
                "dmabroker developers",
            )
        });
        Some(&*META)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            let caps = gst::Caps::builder("video/x-raw").build();
            vec![gst::PadTemplate::new("sink", gst::PadDirection::Sink, gst::PadPresence::Always, &caps)
                .expect("a static pad template")]
        });
        TEMPLATES.as_ref()
    }
}

impl BaseSinkImpl for DmaBrokerSink {
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        self.unlocked.store(false, Ordering::Release);
        self.waited.store(false, Ordering::Release);
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        if let Some(p) = self.stream.lock().unwrap_or_else(|p| p.into_inner()).take() {
            p.stream.close();
        }
        Ok(())
    }

    fn set_caps(&self, caps: &gst::Caps) -> Result<(), gst::LoggableError> {
        let info =
            gst_video::VideoInfo::from_caps(caps).map_err(|_| gst::loggable_error!(CAT, "not video caps: {caps}"))?;
        if let Some(current) = self.stream() {
            if current.info == info {
                return Ok(());
            }
            gst::info!(CAT, imp = self, "caps changed to {caps}: publishing a new pool (consumers reattach)");
            if let Some(old) = self.stream.lock().unwrap_or_else(|p| p.into_inner()).take() {
                old.stream.close();
            }
        }
        let layout = crate::videocaps::aligned(&info, self.settings().stride_align).map_err(|e| {
            self.post_error_message(gst::error_msg!(gst::ResourceError::Settings, ["{e}"]));
            gst::loggable_error!(CAT, "no layout for {caps}")
        })?;
        let stream = self.publish(&info, &layout).map_err(|e| {
            self.post_error_message(e);
            gst::loggable_error!(CAT, "publishing the pool failed")
        })?;
        *self.stream.lock().unwrap_or_else(|p| p.into_inner()) = Some(Published { stream, info, layout });
        Ok(())
    }

    fn propose_allocation(&self, query: &mut gst::query::Allocation) -> Result<(), gst::LoggableError> {
        let (caps, need_pool) = query.get_owned();
        let Some(Published { stream, info, layout }) = self.stream() else { return Ok(()) };
        // Render reads any layout a video meta gives (copying when it is
        // not the pool's): upstream may add one.
        query.add_allocation_meta::<gst_video::VideoMeta>(None);
        let matches = caps.as_ref().and_then(|c| gst_video::VideoInfo::from_caps(c).ok()).is_some_and(|i| i == info);
        if need_pool && matches {
            let padded = !crate::videocaps::is_default_layout(&info, &layout);
            let size = layout.size() as u32;
            let pool = SinkPool::new(stream.clone(), padded.then(|| layout.clone()));
            let mut config = pool.config();
            config.set_params(caps.as_ref(), size, 0, self.settings().buffers);
            if pool.set_config(config).is_ok() {
                query.add_allocation_pool(Some(&pool), size, 0, self.settings().buffers);
                gst::debug!(
                    CAT,
                    imp = self,
                    "proposed the dmabroker pool ({size} bytes per frame, strides {:?}{})",
                    layout.stride(),
                    if padded { ", in a video meta" } else { "" }
                );
            }
        }
        Ok(())
    }

    fn render(&self, buffer: &gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        let Some(Published { stream, info, layout }) = self.stream() else {
            gst::element_imp_error!(self, gst::CoreError::Negotiation, ["no caps before the first buffer"]);
            return Err(gst::FlowError::NotNegotiated);
        };
        let s = self.settings();
        if s.wait_for_consumers > 0 && !self.waited.swap(true, Ordering::AcqRel) {
            let timeout = Duration::from_millis(s.consumer_timeout_ms.into());
            if !stream.wait_for_consumers(s.wait_for_consumers as usize, timeout, &self.unlocked) {
                if self.unlocked.load(Ordering::Acquire) {
                    return Err(gst::FlowError::Flushing);
                }
                gst::element_imp_error!(
                    self,
                    gst::ResourceError::Busy,
                    ["{} consumer(s) did not attach within {timeout:?} (wait-for-consumers)", s.wait_for_consumers]
                );
                return Err(gst::FlowError::Error);
            }
        }
        let checksum = s.checksum;
        let meta_for = |bytes: &[u8]| {
            let m = FrameMeta::new(bytes.len() as u64);
            if checksum {
                m.meta(crate::checksum::checksum(bytes))
            } else {
                m
            }
        };
        // Ours when it is one memory over a lent frame in the pool's layout
        // (a buffer without a video meta is in the caps' default layout).
        let video_meta = buffer.meta::<gst_video::VideoMeta>();
        let (offsets, strides) =
            video_meta.as_ref().map_or((info.offset(), info.stride()), |m| (m.offset(), m.stride()));
        let in_pool_layout = offsets == &layout.offset()[..offsets.len().min(layout.offset().len())]
            && strides == &layout.stride()[..strides.len().min(layout.stride().len())];
        if buffer.n_memory() == 1 && in_pool_layout {
            for (lease, dmabuf) in lent_views(&stream, buffer) {
                let view = lease.as_ref().map_or_else(|| buffer.peek_memory(0), |l| l.peek_memory(0));
                let Ok(map) = view.map_readable() else { continue };
                let addr = map.as_ptr() as usize;
                let len = map.len().min(stream.frame_len);
                let meta = meta_for(&map[..len]);
                drop(map);
                match stream.submit_lent(addr, dmabuf, meta) {
                    Ok(true) => {
                        stream.counters.zero_copy.fetch_add(1, Ordering::Relaxed);
                        stream.counters.frames.fetch_add(1, Ordering::Relaxed);
                        return Ok(gst::FlowSuccess::Ok);
                    }
                    Ok(false) => {}
                    Err(e) => {
                        gst::element_imp_error!(self, gst::ResourceError::Write, ["submitting a frame: {e}"]);
                        return Err(gst::FlowError::Error);
                    }
                }
            }
        }
        // Copy once, into the pool's layout.
        let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer.as_ref(), &info).map_err(|_| {
            gst::element_imp_error!(
                self,
                gst::StreamError::Format,
                ["cannot map the input frame as {:?}", info.format()]
            );
            gst::FlowError::Error
        })?;
        let result = stream.submit_copy(meta_for, |dst| {
            for plane in 0..frame.n_planes() {
                let src = frame.plane_data(plane).map_err(|e| e.to_string())?;
                let src_stride = frame.plane_stride()[plane as usize] as usize;
                let dst_stride = layout.stride()[plane as usize] as usize;
                let offset = layout.offset()[plane as usize];
                let rows = frame.comp_height(plane) as usize;
                let row = src_stride.min(dst_stride);
                for r in 0..rows {
                    let (s0, d0) = (r * src_stride, offset + r * dst_stride);
                    if s0 + row > src.len() || d0 + row > dst.len() {
                        break;
                    }
                    dst[d0..d0 + row].copy_from_slice(&src[s0..s0 + row]);
                }
            }
            Ok(())
        });
        match result {
            Ok(()) => {
                let n = stream.counters.copies.fetch_add(1, Ordering::Relaxed);
                stream.counters.frames.fetch_add(1, Ordering::Relaxed);
                if n == 0 {
                    gst::warning!(
                        CAT,
                        imp = self,
                        "upstream does not use the proposed dmabroker buffer pool: copying each frame once"
                    );
                }
                Ok(gst::FlowSuccess::Ok)
            }
            Err(_) if self.unlocked.load(Ordering::Acquire) || stream.flushing.load(Ordering::Acquire) => {
                Err(gst::FlowError::Flushing)
            }
            Err(e) => {
                gst::element_imp_error!(self, gst::ResourceError::Write, ["publishing a copied frame: {e}"]);
                Err(gst::FlowError::Error)
            }
        }
    }

    fn event(&self, event: gst::Event) -> bool {
        if let gst::EventView::Eos(_) = event.view() {
            self.post_stats();
            if let Some(Published { stream, .. }) = self.stream() {
                // Consumers see an orderly end once they read what is queued.
                stream.lock().producer.close();
            }
        }
        self.parent_event(event)
    }

    fn unlock(&self) -> Result<(), gst::ErrorMessage> {
        self.unlocked.store(true, Ordering::Release);
        if let Some(Published { stream, .. }) = self.stream() {
            stream.flushing.store(true, Ordering::Release);
        }
        Ok(())
    }

    fn unlock_stop(&self) -> Result<(), gst::ErrorMessage> {
        self.unlocked.store(false, Ordering::Release);
        if let Some(Published { stream, .. }) = self.stream() {
            stream.flushing.store(false, Ordering::Release);
        }
        Ok(())
    }
}

/// A place a lent frame may be mapped (see [`lent_views`]).
type LentView = (Option<gst::Buffer>, Option<(u64, u64)>);

/// Where a rendered buffer may hold a lent frame: its memory itself (system
/// memory over a lease's mapping: `None`), or, for dma-buf frames, the
/// buffer of a parent-buffer meta (whose memory is the lease's mapping),
/// with the identity of the dma-buf the rendered memory holds, which must
/// be that frame's.
fn lent_views(stream: &Stream, buffer: &gst::BufferRef) -> Vec<LentView> {
    let memory = buffer.peek_memory(0);
    if !stream.dmabuf {
        return vec![(None, None)];
    }
    let Some(dmabuf) = memory.downcast_memory_ref::<gst_allocators::DmaBufMemory>() else {
        gst::debug!(CAT, "rendered memory is no dma-buf ({:?}): not one of the pool's frames", memory.allocator());
        return Vec::new();
    };
    // SAFETY: the fd is the memory's own, open while `buffer` (which
    // holds the memory) is borrowed here; it is only fstat()ed.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(dmabuf.fd()) };
    let Some(id) = super::stream::identity(fd) else { return Vec::new() };
    // (parent_owned is a new reference; to_owned() on a MemoryRef would copy.)
    buffer
        .iter_meta::<gst::meta::ParentBufferMeta>()
        .map(|m| m.parent_owned())
        .filter(|p| p.n_memory() == 1)
        .map(|p| (Some(p), Some(id)))
        .collect()
}
