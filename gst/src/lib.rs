//! GStreamer elements that share video through dmabroker pools.
//!
//! - `dmabrokersink` publishes a video stream into a dmabroker pool
//!   registered under a name with the broker (with an ACL). In the
//!   allocation query it proposes a buffer pool whose memory is the pool's
//!   own frames, so upstream writes straight into what consumers read;
//!   otherwise it copies each frame once and counts the copies.
//! - `dmabrokersrc` attaches to a pool by name through the broker (which
//!   checks the ACL) and pushes buffers that wrap the shared frames without
//!   copying: system memory for memfd pools, `memory:DMABuf` for dma-buf
//!   pools (with `DMA_DRM` caps on GStreamer 1.24 and later).
//!
//! See `gst/README.md` for pipelines, properties and tests.

#![deny(missing_docs, unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

use gst::glib;

pub mod allocator;
pub mod checksum;
mod sink;
mod src;
mod videocaps;

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    sink::register(plugin)?;
    src::register(plugin)?;
    allocator::register(plugin)?;
    Ok(())
}

#[allow(missing_docs)]
mod plugin {
    use super::plugin_init;
    gst::plugin_define!(
        dmabroker,
        env!("CARGO_PKG_DESCRIPTION"),
        plugin_init,
        concat!(env!("CARGO_PKG_VERSION"), "-", env!("COMMIT_ID")),
        "MIT/X11",
        env!("CARGO_PKG_NAME"),
        env!("CARGO_PKG_NAME"),
        env!("CARGO_PKG_REPOSITORY"),
        env!("BUILD_REL_DATE")
    );
}
