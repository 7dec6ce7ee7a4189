//! A dma-buf becomes a `VkImage`: tiling `DRM_FORMAT_MODIFIER_EXT` with the
//! modifier and the layout's plane offsets and pitches
//! (`VkImageDrmFormatModifierExplicitCreateInfoEXT`), external memory of
//! type dma-buf, bound to memory imported from a duplicate of the fd
//! (`VkImportMemoryFdInfoKHR`, the memory type from
//! `vkGetMemoryFdPropertiesKHR`).

use crate::error::call;
use crate::format::vk_format;
use crate::{Usage, Vulkan, VulkanError};
use ash::vk;
use dmabroker::format::Layout;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd, OwnedFd};

/// An image bound to imported dma-buf memory; destroyed (and the memory's
/// fd closed by the driver) on drop.
#[derive(Debug)]
pub struct ImportedImage<'v> {
    pub(crate) vk: &'v Vulkan,
    pub(crate) image: vk::Image,
    memory: vk::DeviceMemory,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// The modifier it was created with.
    pub modifier: u64,
    /// The memory type index chosen.
    pub memory_type: u32,
}

impl Vulkan {
    /// Import `dmabuf` (`len` bytes, laid out as `layout`, with the layout's
    /// modifier, [`Layout::modifier`]) as an image for `usage`. The fd is duplicated: the caller keeps its
    /// own.
    pub fn import(
        &self,
        dmabuf: impl AsFd,
        len: u64,
        layout: &Layout,
        usage: Usage,
    ) -> Result<ImportedImage<'_>, VulkanError> {
        let fmt = layout.format();
        let modifier = layout.modifier();
        if layout.buffer_count() != 1 {
            return Err(VulkanError::BadImport(format!(
                "{fmt} keeps its planes in {} buffers: import the single-buffer variant ({})",
                layout.buffer_count(),
                fmt.to_single_buffer()
            )));
        }
        let drm = fmt.to_drm().ok_or_else(|| VulkanError::UnsupportedFormat(fmt.to_string()))?;
        let format = vk_format(drm as u32)?;
        if layout.total_size() > len {
            return Err(VulkanError::BadImport(format!(
                "the layout needs {} bytes but the dma-buf has {len}: allocate it for this layout",
                layout.total_size()
            )));
        }
        let planes: Vec<vk::SubresourceLayout> = layout
            .planes()
            .iter()
            .map(|p| vk::SubresourceLayout {
                offset: p.offset,
                size: 0,
                row_pitch: p.bytesperline,
                array_pitch: 0,
                depth_pitch: 0,
            })
            .collect();
        let mut explicit = vk::ImageDrmFormatModifierExplicitCreateInfoEXT::default()
            .drm_format_modifier(modifier)
            .plane_layouts(&planes);
        let mut external =
            vk::ExternalMemoryImageCreateInfo::default().handle_types(vk::ExternalMemoryHandleTypeFlags::DMA_BUF_EXT);
        let info = vk::ImageCreateInfo::default()
            .image_type(vk::ImageType::TYPE_2D)
            .format(format)
            .extent(vk::Extent3D { width: layout.width(), height: layout.height(), depth: 1 })
            .mip_levels(1)
            .array_layers(1)
            .samples(vk::SampleCountFlags::TYPE_1)
            .tiling(vk::ImageTiling::DRM_FORMAT_MODIFIER_EXT)
            .usage(usage.flags())
            .sharing_mode(vk::SharingMode::EXCLUSIVE)
            .initial_layout(vk::ImageLayout::UNDEFINED)
            .push_next(&mut explicit)
            .push_next(&mut external);
        // SAFETY: `info` chains structures alive for the call; `planes`
        // holds one layout per plane of the format, as the explicit create
        // info requires.
        let image = unsafe { self.device.create_image(&info, None) }.map_err(call("vkCreateImage"))?;
        match self.bind_imported(image, dmabuf.as_fd(), len) {
            Ok((memory, memory_type)) => Ok(ImportedImage {
                vk: self,
                image,
                memory,
                width: layout.width(),
                height: layout.height(),
                modifier,
                memory_type,
            }),
            Err(e) => {
                // SAFETY: the image was created above, is bound to nothing
                // that survives, and no command uses it.
                unsafe { self.device.destroy_image(image, None) };
                Err(e)
            }
        }
    }

    fn bind_imported(
        &self,
        image: vk::Image,
        fd: std::os::fd::BorrowedFd<'_>,
        len: u64,
    ) -> Result<(vk::DeviceMemory, u32), VulkanError> {
        let dup: OwnedFd = rustix::io::fcntl_dupfd_cloexec(fd, 0)
            .map_err(|errno| VulkanError::Os { call: "dup of the dma-buf", errno })?;
        let mut fd_props = vk::MemoryFdPropertiesKHR::default();
        // SAFETY: `dup` is an open dma-buf fd for the call's duration; the
        // call does not take it.
        unsafe {
            self.memory_fd.get_memory_fd_properties(
                vk::ExternalMemoryHandleTypeFlags::DMA_BUF_EXT,
                dup.as_raw_fd(),
                &mut fd_props,
            )
        }
        .map_err(call("vkGetMemoryFdPropertiesKHR"))?;
        // SAFETY: `image` is a live image of this device.
        let req = unsafe { self.device.get_image_memory_requirements(image) };
        let bits = req.memory_type_bits & fd_props.memory_type_bits;
        if bits == 0 {
            return Err(VulkanError::BadImport(format!(
                "no memory type fits both the image ({:#x}) and the dma-buf ({:#x})",
                req.memory_type_bits, fd_props.memory_type_bits
            )));
        }
        if req.size > len {
            return Err(VulkanError::BadImport(format!(
                "the image needs {} bytes of memory, the dma-buf has {len}: allocate more (or with the device's pitch)",
                req.size
            )));
        }
        let memory_type = bits.trailing_zeros();
        let raw = dup.into_raw_fd();
        let mut import =
            vk::ImportMemoryFdInfoKHR::default().handle_type(vk::ExternalMemoryHandleTypeFlags::DMA_BUF_EXT).fd(raw);
        let mut dedicated = vk::MemoryDedicatedAllocateInfo::default().image(image);
        let info = vk::MemoryAllocateInfo::default()
            .allocation_size(req.size)
            .memory_type_index(memory_type)
            .push_next(&mut import)
            .push_next(&mut dedicated);
        // SAFETY: `info` chains structures alive for the call; on success the
        // driver owns `raw` (the import transfers it).
        let memory = match unsafe { self.device.allocate_memory(&info, None) } {
            Ok(m) => m,
            Err(e) => {
                // SAFETY: a failed import leaves the fd with the
                // application (VK_KHR_external_memory_fd), and `raw` came
                // from `into_raw_fd` above, so this is its only owner.
                drop(unsafe { OwnedFd::from_raw_fd(raw) });
                return Err(call("vkAllocateMemory (dma-buf import)")(e));
            }
        };
        // SAFETY: `memory` was allocated for `image` (dedicated), offset 0.
        if let Err(e) = unsafe { self.device.bind_image_memory(image, memory, 0) } {
            // SAFETY: `memory` is bound to nothing and used by nothing.
            unsafe { self.device.free_memory(memory, None) };
            return Err(call("vkBindImageMemory")(e));
        }
        Ok((memory, memory_type))
    }
}

impl Drop for ImportedImage<'_> {
    fn drop(&mut self) {
        // SAFETY: a transfer's `Submission` borrows the images it uses and
        // waits for its fence when it goes, so no pending work refers to
        // this one; the image goes before the memory bound to it.
        unsafe {
            self.vk.device.destroy_image(self.image, None);
            self.vk.device.free_memory(self.memory, None);
        }
    }
}
