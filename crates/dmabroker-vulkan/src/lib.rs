//! Vulkan as a dmabroker device, through `ash` (libvulkan loaded at run time).
//!
//! - [`context`]: the loader, an instance and a logical device on physical
//!   device N with the dma-buf import extensions ([`Vulkan::open`]).
//! - [`format`]: DRM fourcc to `VkFormat`, usage flags.
//! - [`modifiers`]: the constraint source: which DRM modifiers the device
//!   imports from a dma-buf for a fourcc and usage, as a
//!   [`dmabroker::constraints::modifier::ModifierOffer`] with provenance
//!   (`vulkan:0 (llvmpipe)`), plus the [`dmabroker::Constraints`] a GPU import
//!   needs (a real dma-buf).
//! - [`import`]: a dma-buf (any dmabroker heap) becomes a `VkImage` with an
//!   explicit modifier and the layout's plane offsets and pitches, bound to
//!   the imported memory.
//! - [`transfer`]: a transfer on the device between two imported images, its
//!   completion exported as a sync_file (`VK_KHR_external_semaphore_fd`,
//!   `SYNC_FD`) where the driver can; submitted without waiting
//!   ([`Vulkan::submit_copy_flipped`], a [`Submission`] whose sync_file a
//!   pool frame carries) or submitted and waited.
//!
//! This crate is the Vulkan FFI edge: the library (`dmabroker`) forbids
//! `unsafe`, every `ash` call is `unsafe`, so they live here, each block with
//! a `// SAFETY:` line.

pub mod context;
pub mod error;
pub mod format;
pub mod import;
pub mod modifiers;
pub mod transfer;

pub use context::Vulkan;
pub use error::VulkanError;
pub use format::Usage;
pub use import::ImportedImage;
pub use transfer::{Submission, TransferOutcome};
