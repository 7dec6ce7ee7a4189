//! `dmabrokersink`: publishes a video stream into a dmabroker pool under a
//! name. [`stream`] owns the pool and its registration, [`pool`] is the
//! `GstBufferPool` that hands upstream the pool's own frames, [`imp`] the
//! element.

use gst::glib;
use gst::prelude::*;

mod imp;
pub(crate) mod pool;
pub(crate) mod stream;

glib::wrapper! {
    /// The element.
    pub struct DmaBrokerSink(ObjectSubclass<imp::DmaBrokerSink>) @extends gst_base::BaseSink, gst::Element, gst::Object;
}

/// What the sink does when consumers hold every frame.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum, Default)]
#[repr(u32)]
#[enum_type(name = "GstDmaBrokerBackpressure")]
pub enum Backpressure {
    /// Wait for a consumer to release a frame (lossless).
    #[default]
    #[enum_value(name = "Block: wait until a consumer releases a frame (lossless)", nick = "block")]
    Block = 0,
    /// Take back the oldest frame consumers have not started reading.
    #[enum_value(name = "Drop oldest: take back the oldest unread frame (live video)", nick = "drop-oldest")]
    DropOldest = 1,
}

/// Register the element.
pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(Some(plugin), "dmabrokersink", gst::Rank::NONE, DmaBrokerSink::static_type())
}
