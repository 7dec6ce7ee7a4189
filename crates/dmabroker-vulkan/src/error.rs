//! Typed errors, each with its cause and what to do.

use ash::vk;

/// Why a Vulkan step failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VulkanError {
    /// libvulkan could not be loaded.
    #[error("no Vulkan loader: {0}; install libvulkan1 and a driver (mesa-vulkan-drivers gives lavapipe on the CPU)")]
    NoLoader(String),
    /// No physical device with this index.
    #[error("no Vulkan device {index}: the loader lists {count} (install a driver, e.g. mesa-vulkan-drivers for lavapipe, or pick vulkan:0..{count})")]
    NoDevice {
        /// The index asked for.
        index: usize,
        /// How many there are.
        count: usize,
    },
    /// The device lacks an extension dma-buf import needs.
    #[error("{device} lacks {extension}: it cannot import dma-bufs with explicit modifiers (needs a driver with VK_EXT_external_memory_dma_buf and VK_EXT_image_drm_format_modifier, e.g. Mesa >= 24)")]
    MissingExtension {
        /// The device.
        device: String,
        /// The extension.
        extension: &'static str,
    },
    /// A fourcc without a Vulkan format here.
    #[error("{0}: no Vulkan format for this DRM fourcc in dmabroker-vulkan (supported: XR24, AR24, XB24, AB24, R8, GR88, YUYV, NV12)")]
    UnsupportedFormat(String),
    /// The image does not fit the memory it is imported from.
    #[error("{0}")]
    BadImport(String),
    /// A Vulkan call failed.
    #[error("{call} failed: {result}")]
    Call {
        /// The Vulkan function.
        call: &'static str,
        /// Its result code.
        result: vk::Result,
    },
    /// The driver's `SYNC_FD` export is not a sync_file.
    #[error("the driver's SYNC_FD semaphore export is not a sync_file: {0}")]
    NotASyncFile(#[source] dmabroker::fence::NotASyncFile),
    /// A dma-buf or sync_file system call failed.
    #[error("{call}: {errno}")]
    Os {
        /// What was called.
        call: &'static str,
        /// The error.
        errno: rustix::io::Errno,
    },
}

/// `map_err` helper: a failed Vulkan call, named.
pub(crate) fn call(name: &'static str) -> impl FnOnce(vk::Result) -> VulkanError {
    move |result| VulkanError::Call { call: name, result }
}
