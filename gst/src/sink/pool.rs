//! `GstDmaBrokerSinkPool`: the buffer pool `dmabrokersink` proposes in the
//! allocation query. Each acquire lends upstream one free frame of the
//! dmabroker pool, wrapped as writable system memory over a persistent
//! mapping; rendering it submits that very frame (zero copy). The pool
//! keeps no free list of its own: a buffer that comes back is freed, which
//! returns its frame to the dmabroker pool unless it was submitted.
//!
//! Frames that are dma-bufs are lent as `GstDmaBufMemory` over a dup of the
//! frame's fd, the lease riding along in a `GstParentBufferMeta` (whose
//! parent's memory is the lease's mapping): elements that import dma-bufs
//! (`v4l2src io-mode=dmabuf-import`) queue the frame itself to their
//! device, the others map it through the fd.
//!
//! When the frames' layout is not the caps' default (`stride-align`), each
//! buffer carries a `GstVideoMeta` with the layout's strides and offsets,
//! if upstream enabled `GST_BUFFER_POOL_OPTION_VIDEO_META` (it reads the
//! meta); without it upstream gets the frame with no meta and writes the
//! default layout, which render then copies into a frame of the pool's.

use super::stream::{Lease, LendError, Stream};
use gst::glib;
use gst::subclass::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

glib::wrapper! {
    /// The pool.
    pub struct SinkPool(ObjectSubclass<imp::SinkPool>) @extends gst::BufferPool, gst::Object;
}

impl SinkPool {
    /// A pool lending the frames of `stream`, in `padded` (a layout other
    /// than the caps' default, given to upstream as a video meta) or the
    /// default layout (`None`).
    pub(crate) fn new(stream: Arc<Stream>, padded: Option<gst_video::VideoInfo>) -> Self {
        let pool: Self = glib::Object::new();
        *pool.imp().stream.lock().unwrap_or_else(|p| p.into_inner()) = Some(stream);
        let _ = pool.imp().padded.set(padded);
        pool
    }
}

mod imp {
    use super::*;

    #[derive(Default)]
    pub struct SinkPool {
        pub(super) stream: Mutex<Option<Arc<Stream>>>,
        pub(super) padded: OnceLock<Option<gst_video::VideoInfo>>,
        /// Upstream reads video metas (the configuration's option).
        video_meta: AtomicBool,
        dmabuf_allocator: OnceLock<gst_allocators::DmaBufAllocator>,
    }

    impl SinkPool {
        fn stream(&self) -> Option<Arc<Stream>> {
            self.stream.lock().unwrap_or_else(|p| p.into_inner()).clone()
        }
    }

    #[glib::object_subclass]
    impl ObjectSubclass for SinkPool {
        const NAME: &'static str = "GstDmaBrokerSinkPool";
        type Type = super::SinkPool;
        type ParentType = gst::BufferPool;
    }

    impl ObjectImpl for SinkPool {}

    impl SinkPool {
        /// Say the padded layout in a video meta, when upstream reads one.
        fn add_layout(&self, buffer: &mut gst::Buffer) -> Result<(), gst::FlowError> {
            let Some(Some(layout)) = self.padded.get() else { return Ok(()) };
            if !self.video_meta.load(Ordering::Acquire) {
                return Ok(());
            }
            gst_video::VideoMeta::add_full(
                buffer.make_mut(),
                gst_video::VideoFrameFlags::empty(),
                layout.format(),
                layout.width(),
                layout.height(),
                layout.offset(),
                layout.stride(),
            )
            .map(|_| ())
            .map_err(|e| {
                gst::error!(crate::sink::imp::CAT, "adding the pool's video meta: {e}");
                gst::FlowError::Error
            })
        }
    }
    impl GstObjectImpl for SinkPool {}

    impl SinkPool {
        /// A buffer of one `GstDmaBufMemory` over the lent frame, the lease
        /// in a parent-buffer meta (render finds the frame through it).
        fn dmabuf_buffer(&self, stream: &Stream, lease: Lease) -> Result<gst::Buffer, gst::FlowError> {
            use gst_allocators::prelude::*;
            let Some(fd) = stream.dup_fd(lease.index()) else {
                gst::error!(crate::sink::imp::CAT, "duplicating the fd of frame {}", lease.index());
                return Err(gst::FlowError::Error);
            };
            let allocator = self.dmabuf_allocator.get_or_init(gst_allocators::DmaBufAllocator::new);
            // SAFETY: `fd` is a dup of a dma-buf of the pool (every frame is
            // one: `Stream::dmabuf`) holding at least `frame_len` bytes (the
            // pool allocated whole frames); the memory takes it over and
            // closes it when freed.
            let memory = unsafe { allocator.alloc_dmabuf(fd, stream.frame_len) }.map_err(|e| {
                gst::error!(crate::sink::imp::CAT, "wrapping frame {} as dma-buf memory: {e}", lease.index());
                gst::FlowError::Error
            })?;
            let mut buffer = gst::Buffer::new();
            {
                let b = buffer.make_mut();
                b.append_memory(memory);
                let guard = gst::Buffer::from_slice(lease);
                gst::meta::ParentBufferMeta::add(b, &guard);
            }
            Ok(buffer)
        }
    }

    impl BufferPoolImpl for SinkPool {
        fn start(&self) -> bool {
            // No preallocation: the frames live in the dmabroker pool.
            if let Some(s) = self.stream() {
                s.flushing.store(false, Ordering::Release);
            }
            true
        }

        fn stop(&self) -> bool {
            if let Some(s) = self.stream() {
                s.flushing.store(true, Ordering::Release);
            }
            true
        }

        fn flush_start(&self) {
            if let Some(s) = self.stream() {
                s.flushing.store(true, Ordering::Release);
            }
        }

        fn flush_stop(&self) {
            if let Some(s) = self.stream() {
                s.flushing.store(false, Ordering::Release);
            }
        }

        fn set_config(&self, config: &mut gst::BufferPoolConfigRef) -> bool {
            let Some(stream) = self.stream() else { return false };
            let Some((_, size, _, _)) = config.params() else { return false };
            if size as usize > stream.frame_len {
                gst::warning!(
                    crate::sink::imp::CAT,
                    "upstream asks {size}-byte buffers, the pool's frames hold {}",
                    stream.frame_len
                );
                return false;
            }
            let video_meta = config.has_option(gst_video::BUFFER_POOL_OPTION_VIDEO_META.as_str());
            self.video_meta.store(video_meta, Ordering::Release);
            self.parent_set_config(config)
        }

        fn options() -> &'static [&'static str] {
            static OPTIONS: std::sync::LazyLock<[&'static str; 1]> =
                std::sync::LazyLock::new(|| [gst_video::BUFFER_POOL_OPTION_VIDEO_META.as_str()]);
            &*OPTIONS
        }

        fn acquire_buffer(
            &self,
            _params: Option<&gst::BufferPoolAcquireParams>,
        ) -> Result<gst::Buffer, gst::FlowError> {
            let stream = self.stream().ok_or(gst::FlowError::Flushing)?;
            let (lease, _) = match stream.lend() {
                Ok(l) => l,
                Err(LendError::Flushing) => return Err(gst::FlowError::Flushing),
                Err(LendError::Closed) => return Err(gst::FlowError::Eos),
                Err(LendError::Map(e)) => {
                    gst::error!(crate::sink::imp::CAT, "mapping a pool frame: {e}");
                    return Err(gst::FlowError::Error);
                }
            };
            let mut buffer = if stream.dmabuf {
                self.dmabuf_buffer(&stream, lease)?
            } else {
                let mut memory = gst::Memory::from_mut_slice(lease);
                memory.make_mut().resize(0..stream.frame_len);
                let mut buffer = gst::Buffer::new();
                buffer.make_mut().append_memory(memory);
                buffer
            };
            self.add_layout(&mut buffer)?;
            Ok(buffer)
        }

        fn release_buffer(&self, buffer: gst::Buffer) {
            // Freed, not queued: the frame goes back to the dmabroker pool
            // (or stays with consumers if it was submitted).
            drop(buffer);
        }
    }
}
