//! Where frames come from: a V4L2 capture device filling the pool's
//! dma-bufs, or the synthetic pattern; and the embedded broker.

use super::sink::{scanout_formats, SinkFrame};
use super::{BrokerArg, DemoArgs, SourceArg};

use dmabroker::constraints::{allocate_for, Constraints};
use dmabroker::device::v4l2::{video_nodes, BufType, CapFlags, V4l2Device};
use dmabroker::format::{Layout, LayoutOptions, PixelFormat};
use dmabroker::pool::{PoolOptions, Producer};
use dmabroker::Heaps;
use std::io::Write;
use std::path::PathBuf;

/// Where the frames of a run come from, once set up.
pub(super) enum Source {
    /// The producer writes a test pattern.
    Synthetic,
    /// A V4L2 capture device fills the pool's buffers.
    V4l2(V4l2Source),
    /// A V4L2 capture device fills its own buffers; Vulkan writes the
    /// pool's from them (`--through vulkan`).
    #[cfg(feature = "vulkan")]
    Through(Box<super::through_vulkan::VulkanSource>),
}

/// A V4L2 capture device with its format set.
pub(super) struct V4l2Source {
    pub(super) dev: V4l2Device,
    pub(super) buf_type: BufType,
    /// Bytes the device fills per frame (`sizeimage`).
    pub(super) frame_len: u64,
}

/// What the producer streams, whatever the source.
pub(super) struct Setup {
    pub(super) source: Source,
    pub(super) producer: Producer,
    pub(super) width: u32,
    pub(super) height: u32,
    pub(super) format: PixelFormat,
    pub(super) frame_len: u64,
    pub(super) heap: String,
    /// One line saying where frames come from, for the banner and summary.
    pub(super) description: String,
    /// With `--sink`: the frame as consumer 0 shows it.
    pub(super) sink: Option<SinkFrame>,
}

/// Capture pixel formats the demo asks a device for, preferred first.
pub(super) const CAPTURE_FORMATS: [PixelFormat; 2] = [PixelFormat::Nv12, PixelFormat::Yuyv];

/// With `--sink`: the capture formats, then XRGB8888 (V4L2 `XR24`), which
/// every KMS primary plane scans out; the first that the camera captures
/// and the card's primary plane scans out linearly wins.
pub(super) const SINK_FORMATS: [PixelFormat; 3] = [PixelFormat::Nv12, PixelFormat::Yuyv, PixelFormat::Xbgr32];

/// The capture queue type of a node, single-planar preferred (the demo
/// queues one dma-buf per frame either way); `None` for nodes that do not
/// capture video by streaming (memory-to-memory nodes included).
pub(super) fn capture_queue(dev: &V4l2Device) -> Option<BufType> {
    let caps = dev.capabilities().device_caps;
    if !caps.contains(CapFlags::STREAMING) {
        None
    } else if caps.contains(CapFlags::VIDEO_CAPTURE) {
        Some(BufType::VideoCapture)
    } else if caps.contains(CapFlags::VIDEO_CAPTURE_MPLANE) {
        Some(BufType::VideoCaptureMplane)
    } else {
        None
    }
}

/// The first capture node: `--device`, else `/dev/video*` in order,
/// single-planar nodes before multi-planar ones. `Ok(None)`: none at all.
pub(super) fn find_capture_device(args: &DemoArgs) -> anyhow::Result<Option<(V4l2Device, BufType)>> {
    if let Some(path) = &args.device {
        let dev = V4l2Device::open(path)?;
        let bt = capture_queue(&dev)
            .ok_or_else(|| anyhow::anyhow!("{} is not a streaming video capture device", path.display()))?;
        return Ok(Some((dev, bt)));
    }
    let mut mplane = None;
    for path in video_nodes() {
        let Ok(dev) = V4l2Device::open(&path) else { continue };
        match capture_queue(&dev) {
            Some(BufType::VideoCapture) => return Ok(Some((dev, BufType::VideoCapture))),
            Some(bt) if mplane.is_none() => mplane = Some((dev, bt)),
            _ => {}
        }
    }
    Ok(mplane)
}

/// A capture device with its format set.
pub(super) struct Capture {
    pub(super) dev: V4l2Device,
    pub(super) buf_type: BufType,
    pub(super) format: PixelFormat,
    /// What the device set (`VIDIOC_S_FMT`).
    pub(super) fmt: dmabroker::device::v4l2::Format,
    /// The frame as V4L2 lays it out (the driver may pad lines further).
    pub(super) layout: Layout,
}

/// Open the capture device and set the first of `wanted` that it captures,
/// at `--size` (or the nearest size it picks). `Ok(None)`: no capture device.
pub(super) fn open_capture(args: &DemoArgs, wanted: &[PixelFormat]) -> anyhow::Result<Option<Capture>> {
    let Some((dev, buf_type)) = find_capture_device(args)? else { return Ok(None) };
    let path = dev.path().to_path_buf();
    let offered: Vec<u32> = dev.formats(buf_type)?.iter().map(|f| f.pixelformat).collect();
    let format = wanted.iter().copied().find(|f| offered.contains(&f.to_v4l2())).ok_or_else(|| {
        let names: Vec<String> = offered
            .iter()
            .map(|&c| PixelFormat::from_v4l2(c).map_or(format!("{c:#x}"), |f| f.name().to_owned()))
            .collect();
        let want: Vec<String> = wanted.iter().map(|f| f.v4l2_fourcc().to_string()).collect();
        let also = match (&args.sink, &args.through) {
            (Some(c), _) => format!(" (the ones {} scans out)", c.display()),
            (None, Some(t)) => format!(" (the ones --through {t} transforms)"),
            (None, None) => String::new(),
        };
        anyhow::anyhow!("{} captures none of {}{also}; it offers {}", path.display(), want.join(", "), names.join(", "))
    })?;
    let (w, h) = args.size;
    let fmt = dev.set_format(buf_type, w, h, format.to_v4l2())?;
    if fmt.pixelformat != format.to_v4l2() || fmt.planes.len() != 1 {
        anyhow::bail!("{} did not accept {format} as one buffer per frame (it set {fmt:?})", path.display());
    }
    if (fmt.width, fmt.height) != (w, h) {
        eprintln!("dmabroker demo: {} does not capture {w}x{h}; it chose {}x{}", path.display(), fmt.width, fmt.height);
    }
    let layout = Layout::new(format, fmt.width, fmt.height, &LayoutOptions::default())?;
    if u64::from(fmt.planes[0].bytesperline) != layout.bytesperline() {
        eprintln!(
            "dmabroker demo: {} pads lines to {} bytes (unpadded: {})",
            path.display(),
            fmt.planes[0].bytesperline,
            layout.bytesperline()
        );
    }
    Ok(Some(Capture { dev, buf_type, format, fmt, layout }))
}

/// Open the capture device, set the format, allocate dma-bufs for it from
/// its probed constraints and make the pool of them. `Ok(None)` when there
/// is no capture device.
pub(super) fn setup_v4l2(args: &DemoArgs, options: &PoolOptions, heaps: &Heaps) -> anyhow::Result<Option<Setup>> {
    let wanted: Vec<PixelFormat> = match &args.sink {
        Some(card) => scanout_formats(card, &SINK_FORMATS)?,
        None => CAPTURE_FORMATS.to_vec(),
    };
    let Some(Capture { dev, buf_type, format, fmt, layout }) = open_capture(args, &wanted)? else { return Ok(None) };
    let path = dev.path().to_path_buf();
    let frame_len = layout.total_size().max(u64::from(fmt.planes[0].sizeimage));
    let options = PoolOptions { buffer_len: frame_len, ..options.clone() };
    let mut constraints = capture_constraints(&path)?;
    // The display reads the same buffers: its needs (contiguity without an
    // IOMMU, an address limit) join the camera's.
    if let Some(card) = &args.sink {
        let display =
            Constraints::probe(card).map_err(|e| anyhow::anyhow!("probing the sink {}: {e}", card.display()))?;
        constraints = constraints.merge(&display)?;
    }
    let (buffers, heap, why) =
        allocate_buffers(heaps, args.heap.as_deref(), &constraints, options.buffers, frame_len, "demo")?;
    let producer = Producer::new(buffers, &options)?;
    let caps = dev.capabilities();
    let description = format!(
        "V4L2 capture {} ({} \"{}\", {}, V4L2_MEMORY_DMABUF into {heap} buffers: {why})",
        path.display(),
        caps.driver,
        caps.card,
        if buf_type.is_multiplanar() { "multi-planar" } else { "single-planar" }
    );
    Ok(Some(Setup {
        source: Source::V4l2(V4l2Source {
            dev,
            buf_type,
            frame_len: u64::from(fmt.planes[0].sizeimage).min(frame_len),
        }),
        producer,
        width: fmt.width,
        height: fmt.height,
        format,
        frame_len,
        heap,
        description,
        sink: args.sink.as_ref().map(|_| SinkFrame {
            format,
            width: fmt.width,
            height: fmt.height,
            pitch: fmt.planes[0].bytesperline,
        }),
    }))
}

/// What sysfs and the device profiles say the capture device needs (a
/// dma-buf, an address limit...); without a sysfs entry, at least a
/// dma-buf: V4L2_MEMORY_DMABUF imports nothing else.
pub(super) fn capture_constraints(path: &std::path::Path) -> anyhow::Result<Constraints> {
    Ok(Constraints::probe(path).or_else(|e| {
        tracing::debug!("probing {}: {e}; assuming it needs a dma-buf", path.display());
        Constraints::builder(path.display().to_string()).dma_buf(true).build()
    })?)
}

/// `count` dma-bufs of `len` bytes named `{name}-{i}`: from `--heap` when
/// given, else from the cheapest heap that meets `constraints`. Returns
/// them with the heap and why it was chosen.
pub(super) fn allocate_buffers(
    heaps: &Heaps,
    heap: Option<&str>,
    constraints: &Constraints,
    count: usize,
    len: u64,
    name: &str,
) -> anyhow::Result<(Vec<dmabroker::Buffer>, String, String)> {
    let mut buffers = Vec::with_capacity(count);
    let (heap, why) = match heap {
        Some(heap) => {
            for i in 0..count {
                let request = dmabroker::AllocRequest::new(len).name(format!("{name}-{i}"));
                buffers.push(heaps.allocate(heap, &request)?);
            }
            (heap.to_owned(), "--heap".to_owned())
        }
        None => {
            let mut chosen = None;
            for i in 0..count {
                let (buffer, choice) = allocate_for(heaps, constraints, len, Some(&format!("{name}-{i}")))?;
                buffers.push(buffer);
                chosen.get_or_insert(choice);
            }
            let choice = chosen.ok_or_else(|| anyhow::anyhow!("a pool needs at least one buffer"))?;
            // The first reason says why this heap; the rest (what was
            // passed over) is `dmabroker alloc --for`'s business.
            (choice.heap.clone(), choice.reasons.first().cloned().unwrap_or_default())
        }
    };
    if let Some(i) = buffers.iter().position(|b| b.kind() != dmabroker::BufferKind::DmaBuf) {
        anyhow::bail!(
            "buffer {i} from {heap} is not a dma-buf: V4L2_MEMORY_DMABUF and device imports need dma-bufs \
             (choose a dma-heap or udmabuf)"
        );
    }
    Ok((buffers, heap, why))
}

/// A broker serving on a temporary socket from a thread of this process,
/// stopped (and its socket removed) on drop.
pub(super) struct EmbeddedBroker {
    pub(super) path: PathBuf,
    pub(super) stop: Option<std::os::unix::net::UnixStream>,
    pub(super) thread: Option<std::thread::JoinHandle<()>>,
}

impl EmbeddedBroker {
    fn start() -> anyhow::Result<Self> {
        use dmabroker_broker::{Broker, Config, Listener};
        let dir = std::env::var_os("XDG_RUNTIME_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
        let path = dir.join(format!("dmabroker-demo-broker-{}.sock", std::process::id()));
        let (shutdown, stop) = std::os::unix::net::UnixStream::pair()?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let listen = path.clone();
        let thread = std::thread::Builder::new().name("broker".into()).spawn(move || {
            let mut config = Config::new(Listener::Path(listen));
            config.notify = false;
            // Its clients (this demo) share its process: count their holds.
            config.clients_in_process = true;
            match Broker::start(config, Vec::new(), shutdown.into()) {
                Ok(mut broker) => {
                    let _ = ready_tx.send(Ok(()));
                    if let Err(e) = broker.run() {
                        tracing::warn!("embedded broker stopped: {e}");
                    }
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })?;
        let started = ready_rx.recv().map_err(|_| anyhow::anyhow!("the embedded broker thread died while starting"));
        let broker = Self { path, stop: Some(stop), thread: Some(thread) };
        started??;
        Ok(broker)
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        // One byte makes the shutdown socket readable: the event loop ends.
        if let Some(mut stop) = self.stop.take() {
            let _ = stop.write_all(b"x");
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub(super) fn setup_synthetic(args: &DemoArgs, options: &PoolOptions, heaps: &Heaps) -> anyhow::Result<Setup> {
    let (width, height) = args.size;
    let frame_len = u64::from(width) * u64::from(height) * 3 / 2;
    let heap = args.heap.clone().unwrap_or_else(|| "memfd".to_owned());
    let options = PoolOptions { buffer_len: frame_len, ..options.clone() };
    let mut description = "synthetic NV12 test pattern".to_owned();
    let producer = if args.broker == BrokerArg::Embedded && heaps.get(&heap).is_some() {
        let broker = EmbeddedBroker::start()
            .map_err(|e| anyhow::anyhow!("starting the embedded broker: {e:#} (or pass --broker none)"))?;
        let mut client = dmabroker::client::Client::connect(&broker.path)?;
        let buffers = (0..options.buffers)
            .map(|i| client.allocate(&heap, frame_len, Some(&format!("{}-{i}", options.name))))
            .collect::<Result<Vec<_>, _>>()?;
        description.push_str(&format!(
            ", buffers allocated through the embedded dmabroker broker ({} protocol v{}) at {}",
            client.server(),
            client.version(),
            broker.path.display()
        ));
        // The buffers are ours now: the broker is not needed to stream.
        drop(client);
        drop(broker);
        Producer::new(buffers, &options)?
    } else {
        // (An unknown heap fails here, with the list of heaps.)
        Producer::allocate(heaps, &heap, &options)?
    };
    Ok(Setup {
        source: Source::Synthetic,
        producer,
        width,
        height,
        format: PixelFormat::Nv12,
        frame_len,
        heap,
        description,
        sink: None,
    })
}

pub(super) fn setup(args: &DemoArgs, options: &PoolOptions) -> anyhow::Result<Setup> {
    let heaps = Heaps::discover();
    if let (Some(card), Some(through)) = (&args.sink, args.through) {
        anyhow::bail!("--sink {} with --through {through}: not supported together yet; use one", card.display());
    }
    if let Some(card) = &args.sink {
        // The synthetic pattern is NV12 in memfd buffers: no display imports those.
        if args.source == SourceArg::Synthetic {
            anyhow::bail!("--sink {} needs a V4L2 source (--source v4l2): camera to screen", card.display());
        }
        return setup_v4l2(args, options, &heaps)?.ok_or_else(|| {
            anyhow::anyhow!("--sink {}: no V4L2 capture device (no /dev/video* node captures video)", card.display())
        });
    }
    #[cfg(feature = "vulkan")]
    if let Some(through) = args.through {
        if args.source == SourceArg::Synthetic {
            anyhow::bail!("--through {through} needs a V4L2 source (--source v4l2): camera to GPU to consumers");
        }
        return super::through_vulkan::setup(args, options, &heaps, through);
    }
    match args.source {
        SourceArg::Synthetic => setup_synthetic(args, options, &heaps),
        SourceArg::V4l2 => setup_v4l2(args, options, &heaps)?.ok_or_else(|| {
            anyhow::anyhow!("no V4L2 capture device: no /dev/video* node captures video (use --source synthetic)")
        }),
        SourceArg::Auto => match setup_v4l2(args, options, &heaps) {
            Ok(Some(s)) => Ok(s),
            Ok(None) => setup_synthetic(args, options, &heaps),
            Err(e) => {
                eprintln!("dmabroker demo: V4L2 capture unavailable ({e:#}); using the synthetic source");
                setup_synthetic(args, options, &heaps)
            }
        },
    }
}
