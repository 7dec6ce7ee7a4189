//! Kernel devices that import and export buffers: V4L2 and DRM.
