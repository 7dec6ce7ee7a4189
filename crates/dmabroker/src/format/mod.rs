//! Pixel formats and plane layouts (V4L2 and DRM fourcc codes). No knowledge of heaps.
