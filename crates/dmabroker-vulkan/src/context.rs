//! The Vulkan loader, an instance, and a logical device on physical device N
//! with what dma-buf import needs.

use crate::error::call;
use crate::VulkanError;
use ash::{khr, vk};
use std::ffi::CStr;

/// Device extensions dma-buf import with explicit modifiers needs.
const REQUIRED: [(&CStr, &str); 3] = [
    (vk::KHR_EXTERNAL_MEMORY_FD_NAME, "VK_KHR_external_memory_fd"),
    (vk::EXT_EXTERNAL_MEMORY_DMA_BUF_NAME, "VK_EXT_external_memory_dma_buf"),
    (vk::EXT_IMAGE_DRM_FORMAT_MODIFIER_NAME, "VK_EXT_image_drm_format_modifier"),
];

/// An open Vulkan device: instance, physical device N, a logical device with
/// one queue that can transfer.
pub struct Vulkan {
    // Field order is drop order of nothing here: Drop below destroys the
    // device before the instance; `_entry` keeps libvulkan loaded until then.
    pub(crate) instance: ash::Instance,
    pub(crate) physical: vk::PhysicalDevice,
    pub(crate) device: ash::Device,
    pub(crate) queue: vk::Queue,
    pub(crate) queue_family: u32,
    pub(crate) memory_fd: khr::external_memory_fd::Device,
    pub(crate) semaphore_fd: Option<khr::external_semaphore_fd::Device>,
    name: String,
    index: usize,
    _entry: ash::Entry,
}

impl std::fmt::Debug for Vulkan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vulkan").field("device", &self.provenance()).finish()
    }
}

fn load() -> Result<ash::Entry, VulkanError> {
    if cfg!(target_feature = "crt-static") {
        return Err(VulkanError::NoLoader(
            "this binary is linked statically (+crt-static) and cannot load libvulkan.so.1; build it without \
             crt-static (scripts/vulkan-vm-tests.sh builds a dynamic one in the trixie root)"
                .into(),
        ));
    }
    // SAFETY: loading libvulkan.so.1 runs its initialisers; the Khronos loader
    // is the library the name promises, and `Entry` keeps it loaded for as
    // long as any object from it lives (it is stored in `Vulkan`).
    unsafe { ash::Entry::load() }.map_err(|e| VulkanError::NoLoader(e.to_string()))
}

impl Vulkan {
    /// Open physical device `index` (as `vulkaninfo` numbers them) with the
    /// dma-buf import extensions and, where it has them, sync_file export of
    /// semaphores.
    pub fn open(index: usize) -> Result<Self, VulkanError> {
        let entry = load()?;
        let app = vk::ApplicationInfo::default().application_name(c"dmabroker").api_version(vk::API_VERSION_1_2);
        let info = vk::InstanceCreateInfo::default().application_info(&app);
        // SAFETY: `info` and `app` are valid, fully initialised structures
        // that outlive the call; no allocation callbacks.
        let instance = unsafe { entry.create_instance(&info, None) }.map_err(call("vkCreateInstance"))?;
        match Self::with_instance(&entry, instance.clone(), index) {
            Ok(v) => Ok(v),
            Err(e) => {
                // SAFETY: the instance was created above and nothing made
                // from it survives the failed `with_instance` (it destroys
                // what it created before returning an error); `entry` still
                // holds libvulkan loaded.
                unsafe { instance.destroy_instance(None) };
                Err(e)
            }
        }
    }

    fn with_instance(entry: &ash::Entry, instance: ash::Instance, index: usize) -> Result<Self, VulkanError> {
        // SAFETY: `instance` is a live instance.
        let physicals = unsafe { instance.enumerate_physical_devices() }.map_err(call("vkEnumeratePhysicalDevices"))?;
        let physical = *physicals.get(index).ok_or(VulkanError::NoDevice { index, count: physicals.len() })?;
        // SAFETY: `physical` was just enumerated from this instance.
        let props = unsafe { instance.get_physical_device_properties(physical) };
        let name = props.device_name_as_c_str().map(|c| c.to_string_lossy().into_owned()).unwrap_or_default();
        let provenance = format!("vulkan:{index} ({name})");
        // SAFETY: as above.
        let exts = unsafe { instance.enumerate_device_extension_properties(physical) }
            .map_err(call("vkEnumerateDeviceExtensionProperties"))?;
        let has = |want: &CStr| exts.iter().any(|e| e.extension_name_as_c_str() == Ok(want));
        if let Some((_, extension)) = REQUIRED.iter().find(|(want, _)| !has(want)) {
            return Err(VulkanError::MissingExtension { device: provenance, extension });
        }
        let sync_fd = has(vk::KHR_EXTERNAL_SEMAPHORE_FD_NAME);
        let mut enabled: Vec<*const std::ffi::c_char> = REQUIRED.iter().map(|(c, _)| c.as_ptr()).collect();
        if sync_fd {
            enabled.push(vk::KHR_EXTERNAL_SEMAPHORE_FD_NAME.as_ptr());
        }
        // SAFETY: as above.
        let families = unsafe { instance.get_physical_device_queue_family_properties(physical) };
        let queue_family = families
            .iter()
            .position(|f| {
                f.queue_flags.intersects(vk::QueueFlags::GRAPHICS | vk::QueueFlags::COMPUTE | vk::QueueFlags::TRANSFER)
            })
            .ok_or_else(|| VulkanError::BadImport(format!("{provenance} has no queue that can transfer")))?
            as u32;
        let priorities = [1.0f32];
        let queues =
            [vk::DeviceQueueCreateInfo::default().queue_family_index(queue_family).queue_priorities(&priorities)];
        let info = vk::DeviceCreateInfo::default().queue_create_infos(&queues).enabled_extension_names(&enabled);
        // SAFETY: `info` points at `queues`, `priorities` and `enabled`
        // (static C strings), all alive for the call; the extensions were
        // checked to be present above.
        let device = unsafe { instance.create_device(physical, &info, None) }.map_err(call("vkCreateDevice"))?;
        // SAFETY: the queue family and index 0 were requested at creation.
        let queue = unsafe { device.get_device_queue(queue_family, 0) };
        let memory_fd = khr::external_memory_fd::Device::new(&instance, &device);
        let semaphore_fd = sync_fd.then(|| khr::external_semaphore_fd::Device::new(&instance, &device));
        Ok(Self {
            instance,
            physical,
            device,
            queue,
            queue_family,
            memory_fd,
            semaphore_fd,
            name,
            index,
            _entry: entry.clone(),
        })
    }

    /// The driver's device name (`llvmpipe (LLVM 19.1.7, 256 bits)`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The device as constraint provenance: `vulkan:0 (llvmpipe ...)`.
    pub fn provenance(&self) -> String {
        format!("vulkan:{} ({})", self.index, self.name)
    }

    /// Whether a semaphore can be exported as a sync_file here.
    pub fn can_export_sync_file(&self) -> bool {
        if self.semaphore_fd.is_none() {
            return false;
        }
        let info = vk::PhysicalDeviceExternalSemaphoreInfo::default()
            .handle_type(vk::ExternalSemaphoreHandleTypeFlags::SYNC_FD);
        let mut out = vk::ExternalSemaphoreProperties::default();
        // SAFETY: valid physical device, input and output structures.
        unsafe { self.instance.get_physical_device_external_semaphore_properties(self.physical, &info, &mut out) };
        out.external_semaphore_features.contains(vk::ExternalSemaphoreFeatureFlags::EXPORTABLE)
    }
}

impl Drop for Vulkan {
    fn drop(&mut self) {
        // SAFETY: every object made from the device (images, memory, pools,
        // semaphores) borrows `Vulkan` and so is gone; waiting idle first
        // lets no submitted work outlive it; the instance goes last.
        unsafe {
            let _ = self.device.device_wait_idle();
            self.device.destroy_device(None);
            self.instance.destroy_instance(None);
        }
    }
}
