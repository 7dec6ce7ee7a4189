//! `GstDmaBrokerAllocator` and `GstDmaBrokerBufferPool`: memory allocated
//! by the broker, for applications that may not open `/dev/dma_heap` or
//! `/dev/udmabuf` themselves (sandboxes). The broker allocates under its
//! policy and quotas (`Client::allocate`) and hands back the fd:
//!
//! - a dma-buf (dma-heap, udmabuf) becomes `GstDmaBufMemory` (allocated by
//!   a `GstDmaBufAllocator`, so `gst_is_dmabuf_memory` holds and
//!   downstream can import it);
//! - a memfd becomes `GstFdMemory` of this allocator (a `GstFdAllocator`).
//!
//! The plugin registers one instance as `"dmabroker"`
//! (`gst_allocator_find("dmabroker")` from C), using the broker of
//! `$DMABROKER_SOCKET` (or the default paths) and the heap of
//! `$DMABROKER_GST_HEAP` (default `dma-heap/system`). The pool uses an
//! allocator with its own `heap` when the configuration names none.

use dmabroker::client::Client;
use dmabroker::BufferKind;
use gst::glib;
use gst::glib::translate::IntoGlibPtr;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_allocators::prelude::*;
use std::os::fd::IntoRawFd;
use std::sync::{LazyLock, Mutex};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new("dmabrokerallocator", gst::DebugColorFlags::empty(), Some("dmabroker broker allocator"))
});

/// The heap of the registered `"dmabroker"` allocator without `$DMABROKER_GST_HEAP`.
pub const DEFAULT_HEAP: &str = "dma-heap/system";

glib::wrapper! {
    /// An allocator whose memory the broker allocates.
    pub struct DmaBrokerAllocator(ObjectSubclass<imp::DmaBrokerAllocator>) @extends gst_allocators::FdAllocator, gst::Allocator, gst::Object;
}

impl DmaBrokerAllocator {
    /// An allocator asking the broker at `broker_socket` (None: the default
    /// paths) for buffers from `heap`.
    pub fn new(broker_socket: Option<&str>, heap: &str) -> Self {
        glib::Object::builder().property("broker-socket", broker_socket).property("heap", heap).build()
    }
}

glib::wrapper! {
    /// A buffer pool whose buffers' memory the broker allocates.
    pub struct DmaBrokerBufferPool(ObjectSubclass<imp::DmaBrokerBufferPool>) @extends gst::BufferPool, gst::Object;
}

impl DmaBrokerBufferPool {
    /// A pool allocating from `heap` through the broker at `broker_socket`.
    pub fn new(broker_socket: Option<&str>, heap: &str) -> Self {
        glib::Object::builder().property("broker-socket", broker_socket).property("heap", heap).build()
    }
}

/// Register the types and the `"dmabroker"` allocator.
pub fn register(_plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    let heap = std::env::var("DMABROKER_GST_HEAP").unwrap_or_else(|_| DEFAULT_HEAP.into());
    gst::Allocator::register("dmabroker", DmaBrokerAllocator::new(None, &heap));
    let _ = DmaBrokerBufferPool::static_type();
    Ok(())
}

fn string_props() -> Vec<glib::ParamSpec> {
    vec![
        glib::ParamSpecString::builder("broker-socket")
            .nick("Broker socket")
            .blurb("The broker's socket (default: $DMABROKER_SOCKET, $XDG_RUNTIME_DIR/dmabroker.sock, /run/dmabroker/dmabroker.sock)")
            .construct()
            .build(),
        glib::ParamSpecString::builder("heap")
            .nick("Heap")
            .blurb("The heap the broker allocates from (dma-heap/system, udmabuf, memfd, ...)")
            .default_value(Some(DEFAULT_HEAP))
            .construct()
            .build(),
    ]
}

mod imp {
    use super::*;

    #[derive(Default)]
    struct Settings {
        broker_socket: Option<String>,
        heap: Option<String>,
    }

    #[derive(Default)]
    pub struct DmaBrokerAllocator {
        settings: Mutex<Settings>,
        client: Mutex<Option<Client>>,
        dmabuf: LazyLock<gst_allocators::DmaBufAllocator>,
    }

    impl DmaBrokerAllocator {
        fn allocate(&self, size: usize, params: &gst::AllocationParams) -> Result<gst::Memory, String> {
            let (broker, heap) = {
                let s = self.settings.lock().unwrap_or_else(|p| p.into_inner());
                (
                    s.broker_socket.clone().map(Into::into).unwrap_or_else(dmabroker::proto::default_client_socket),
                    s.heap.clone().unwrap_or_else(|| DEFAULT_HEAP.into()),
                )
            };
            let total = size
                .checked_add(params.prefix())
                .and_then(|n| n.checked_add(params.padding()))
                .ok_or("size overflows")?;
            let mut client = self.client.lock().unwrap_or_else(|p| p.into_inner());
            if client.is_none() {
                *client = Some(Client::connect(&broker).map_err(|e| format!("broker {}: {e}", broker.display()))?);
            }
            let Some(c) = client.as_mut() else { return Err("no broker connection".into()) };
            let buffer = match c.allocate(&heap, total as u64, Some("gst")) {
                Ok(b) => b,
                Err(e) => {
                    // A broken connection is not kept for the next allocation.
                    *client = None;
                    return Err(format!("allocating {total} bytes from {heap} through the broker: {e}"));
                }
            };
            drop(client);
            let kind = buffer.kind();
            let len = usize::try_from(buffer.len()).map_err(|_| "buffer too large")?;
            let fd = buffer.into_fd().map_err(|_| "the buffer is shared")?;
            let mut memory = if kind == BufferKind::DmaBuf {
                // SAFETY: `fd` is a dma-buf of `len` bytes we own; the memory
                // takes it over and closes it.
                unsafe { self.dmabuf.alloc_dmabuf(fd, len) }.map_err(|e| e.to_string())?
            } else {
                // SAFETY: `fd` is a sealed memfd of `len` bytes we own
                // (released here); the memory closes it when freed.
                unsafe { self.obj().alloc_fd(fd.into_raw_fd(), len, gst_allocators::FdMemoryFlags::NONE) }
                    .map_err(|e| e.to_string())?
            };
            memory.make_mut().resize(params.prefix()..params.prefix() + size);
            gst::debug!(CAT, imp = self, "{len} bytes from {heap} ({kind})");
            Ok(memory)
        }
    }

    #[glib::object_subclass]
    impl ObjectSubclass for DmaBrokerAllocator {
        const NAME: &'static str = "GstDmaBrokerAllocator";
        type Type = super::DmaBrokerAllocator;
        type ParentType = gst_allocators::FdAllocator;
    }

    impl ObjectImpl for DmaBrokerAllocator {
        fn properties() -> &'static [glib::ParamSpec] {
            static PROPS: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(string_props);
            PROPS.as_ref()
        }

        fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
            let mut s = self.settings.lock().unwrap_or_else(|p| p.into_inner());
            match pspec.name() {
                "broker-socket" => s.broker_socket = value.get().unwrap_or_default(),
                _ => s.heap = value.get().unwrap_or_default(),
            }
            // Settings changed: the next allocation reconnects.
            *self.client.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }

        fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
            let s = self.settings.lock().unwrap_or_else(|p| p.into_inner());
            match pspec.name() {
                "broker-socket" => s.broker_socket.to_value(),
                _ => s.heap.to_value(),
            }
        }
    }

    impl GstObjectImpl for DmaBrokerAllocator {}

    // SAFETY: `alloc` returns a new full reference to a memory of at least
    // `size` bytes (after `params.prefix`), or null on failure, as
    // GstAllocator's vfunc must; freeing is the parent's (GstFdAllocator's,
    // or GstDmaBufAllocator's for the memories it made).
    unsafe impl AllocatorImpl for DmaBrokerAllocator {
        unsafe fn alloc(&self, size: usize, params: &gst::AllocationParams) -> *mut gst::ffi::GstMemory {
            match self.allocate(size, params) {
                // A new full reference is what GstAllocator::alloc returns.
                Ok(memory) => memory.into_glib_ptr(),
                Err(e) => {
                    gst::error!(CAT, imp = self, "{e}");
                    std::ptr::null_mut()
                }
            }
        }
    }

    impl gst_allocators::subclass::prelude::FdAllocatorImpl for DmaBrokerAllocator {}

    #[derive(Default)]
    pub struct DmaBrokerBufferPool {
        settings: Mutex<Settings>,
    }

    #[glib::object_subclass]
    impl ObjectSubclass for DmaBrokerBufferPool {
        const NAME: &'static str = "GstDmaBrokerBufferPool";
        type Type = super::DmaBrokerBufferPool;
        type ParentType = gst::BufferPool;
    }

    impl ObjectImpl for DmaBrokerBufferPool {
        fn properties() -> &'static [glib::ParamSpec] {
            static PROPS: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(string_props);
            PROPS.as_ref()
        }

        fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
            let mut s = self.settings.lock().unwrap_or_else(|p| p.into_inner());
            match pspec.name() {
                "broker-socket" => s.broker_socket = value.get().unwrap_or_default(),
                _ => s.heap = value.get().unwrap_or_default(),
            }
        }

        fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
            let s = self.settings.lock().unwrap_or_else(|p| p.into_inner());
            match pspec.name() {
                "broker-socket" => s.broker_socket.to_value(),
                _ => s.heap.to_value(),
            }
        }
    }

    impl GstObjectImpl for DmaBrokerBufferPool {}

    impl BufferPoolImpl for DmaBrokerBufferPool {
        fn set_config(&self, config: &mut gst::BufferPoolConfigRef) -> bool {
            if config.allocator().is_none_or(|(a, _)| a.is_none()) {
                let s = self.settings.lock().unwrap_or_else(|p| p.into_inner());
                let allocator = super::DmaBrokerAllocator::new(
                    s.broker_socket.as_deref(),
                    s.heap.as_deref().unwrap_or(DEFAULT_HEAP),
                );
                config.set_allocator(Some(&allocator), None);
            }
            self.parent_set_config(config)
        }
    }
}
