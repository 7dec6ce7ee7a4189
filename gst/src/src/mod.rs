//! `dmabrokersrc`: attaches to a named dmabroker pool through the broker
//! and pushes the shared frames without copying. [`attachment`] owns the
//! consumer and its mappings, [`imp`] the element.

use gst::glib;
use gst::prelude::*;

mod attachment;
mod imp;

glib::wrapper! {
    /// The element.
    pub struct DmaBrokerSrc(ObjectSubclass<imp::DmaBrokerSrc>) @extends gst_base::PushSrc, gst_base::BaseSrc, gst::Element, gst::Object;
}

/// Register the element.
pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(Some(plugin), "dmabrokersrc", gst::Rank::NONE, DmaBrokerSrc::static_type())
}
