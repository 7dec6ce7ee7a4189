//! Zero-copy streaming pools: buffers shared once, frames handed off by index through a shared ring.
