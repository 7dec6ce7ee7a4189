//! A transfer on the device between two imported images (a vertically
//! flipped copy: one region per row), with the images acquired from and
//! released to the external queue family around it, completion signalled on
//! a fence and, where the driver can, on a semaphore exported as a sync_file.
//!
//! [`Vulkan::submit_copy_flipped`] returns at once with a [`Submission`]:
//! its sync_file goes to whoever reads the destination next (a pool frame,
//! `WriteSlot::submit_with_fence`), while the submission itself, which
//! borrows both images so neither can go while the device uses it, is kept
//! until [`Submission::is_done`] (or waited, or dropped: drop waits).
//! [`Vulkan::copy_flipped`] is submit-and-wait.

use crate::error::call;
use crate::{ImportedImage, Vulkan, VulkanError};
use ash::vk;
use dmabroker::fence::SyncFile;
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// Longest a drop (or [`Vulkan::copy_flipped`]) waits for the device.
const DEVICE_TIMEOUT: Duration = Duration::from_secs(20);

/// What a finished transfer left behind.
#[derive(Debug)]
pub struct TransferOutcome {
    /// The completion as a sync_file (`SYNC_FD` semaphore export), for a
    /// pool to carry; `None` where the driver cannot export one.
    pub sync_file: Option<OwnedFd>,
    /// Why there is no sync_file, when there is none.
    pub no_sync_file: Option<String>,
    /// The sync_file polled readable (signalled) before the fence was waited.
    pub sync_file_signalled: bool,
}

/// Everything a submission created, destroyed on drop after its fence (so
/// nothing pending refers to it).
struct Scratch<'v> {
    vk: &'v Vulkan,
    pool: vk::CommandPool,
    fence: vk::Fence,
    semaphore: vk::Semaphore,
    /// The fence has a signal pending (the queue submission succeeded).
    submitted: bool,
}

impl Scratch<'_> {
    fn wait(&self, timeout: Duration) -> Result<(), VulkanError> {
        if !self.submitted {
            return Ok(());
        }
        let ns = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        // SAFETY: the fence belongs to this device and was submitted.
        unsafe { self.vk.device.wait_for_fences(&[self.fence], true, ns) }.map_err(call("vkWaitForFences"))
    }
}

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        // A submitted fence is waited first, so no command buffer, fence or
        // semaphore is still in use; should that wait fail (device lost,
        // timeout), the whole device is waited instead.
        if self.wait(DEVICE_TIMEOUT).is_err() {
            // SAFETY: a live device; waiting idle has no other precondition.
            let _ = unsafe { self.vk.device.device_wait_idle() };
        }
        // SAFETY: the objects belong to this device and no pending work uses
        // them (above); null handles are ignored by the destroy calls.
        unsafe {
            self.vk.device.destroy_semaphore(self.semaphore, None);
            self.vk.device.destroy_fence(self.fence, None);
            self.vk.device.destroy_command_pool(self.pool, None);
        }
    }
}

/// A transfer submitted to the device and perhaps still running. It
/// borrows the images it reads and writes, so they outlive it; dropping it
/// waits for the device (bounded, then device idle).
pub struct Submission<'a> {
    scratch: Scratch<'a>,
    sync_file: Option<SyncFile>,
    no_sync_file: Option<String>,
    submitted_at: Instant,
    export_time: Duration,
    _images: std::marker::PhantomData<&'a ImportedImage<'a>>,
}

impl std::fmt::Debug for Submission<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Submission")
            .field("sync_file", &self.sync_file.is_some())
            .field("no_sync_file", &self.no_sync_file)
            .finish()
    }
}

impl Submission<'_> {
    /// The completion as a sync_file (taken: a second call gets `None`);
    /// `None` where the driver cannot export one ([`Self::no_sync_file`]).
    pub fn take_sync_file(&mut self) -> Option<SyncFile> {
        self.sync_file.take()
    }

    /// Why there is no sync_file, when the driver gave none.
    pub fn no_sync_file(&self) -> Option<&str> {
        self.no_sync_file.as_deref()
    }

    /// When it was submitted.
    pub fn submitted_at(&self) -> Instant {
        self.submitted_at
    }

    /// How long the sync_file export (`vkGetSemaphoreFdKHR`) took: a driver
    /// that cannot hand out a pending fence waits for the work there and
    /// returns a signalled one (lavapipe gives the kernel's stub fence).
    pub fn export_time(&self) -> Duration {
        self.export_time
    }

    /// Whether the device finished it (`vkGetFenceStatus`, no waiting).
    pub fn is_done(&self) -> Result<bool, VulkanError> {
        // SAFETY: the fence belongs to this device.
        unsafe { self.scratch.vk.device.get_fence_status(self.scratch.fence) }.map_err(call("vkGetFenceStatus"))
    }

    /// Wait at most `timeout` for the device; on success the images are
    /// free for the CPU and for other devices.
    pub fn wait(&self, timeout: Duration) -> Result<(), VulkanError> {
        self.scratch.wait(timeout)
    }
}

fn color() -> vk::ImageSubresourceRange {
    vk::ImageSubresourceRange::default().aspect_mask(vk::ImageAspectFlags::COLOR).level_count(1).layer_count(1)
}

impl Vulkan {
    /// Copy `src` into `dst` flipped vertically (row y of `dst` = row
    /// `height - 1 - y` of `src`) with `vkCmdCopyImage`, and wait for it.
    /// Both images must have one plane and the same size.
    pub fn copy_flipped(
        &self,
        src: &ImportedImage<'_>,
        dst: &ImportedImage<'_>,
    ) -> Result<TransferOutcome, VulkanError> {
        let mut submission = self.submit_copy_flipped(src, dst)?;
        let mut outcome = TransferOutcome {
            sync_file: None,
            no_sync_file: submission.no_sync_file().map(str::to_owned),
            sync_file_signalled: false,
        };
        if let Some(fence) = submission.take_sync_file() {
            outcome.sync_file_signalled = fence.wait(DEVICE_TIMEOUT).is_ok();
            outcome.sync_file = Some(fence.into_fd());
        } else if outcome.no_sync_file.as_deref().is_some_and(|w| w.contains("already signalled")) {
            outcome.sync_file_signalled = true;
        }
        submission.wait(DEVICE_TIMEOUT)?;
        Ok(outcome)
    }

    /// [`copy_flipped`](Self::copy_flipped) without the wait: submit the
    /// copy and return. The [`Submission`] carries its completion as a
    /// sync_file where the driver exports one; it must be kept (it borrows
    /// both images) until done.
    pub fn submit_copy_flipped<'a>(
        &'a self,
        src: &'a ImportedImage<'a>,
        dst: &'a ImportedImage<'a>,
    ) -> Result<Submission<'a>, VulkanError> {
        if (src.width, src.height) != (dst.width, dst.height) {
            return Err(VulkanError::BadImport(format!(
                "copy {}x{} into {}x{}: the images differ in size",
                src.width, src.height, dst.width, dst.height
            )));
        }
        let mut scratch = Scratch {
            vk: self,
            pool: vk::CommandPool::null(),
            fence: vk::Fence::null(),
            semaphore: vk::Semaphore::null(),
            submitted: false,
        };
        let info = vk::CommandPoolCreateInfo::default().queue_family_index(self.queue_family);
        // SAFETY: valid device and create info.
        scratch.pool = unsafe { self.device.create_command_pool(&info, None) }.map_err(call("vkCreateCommandPool"))?;
        let alloc = vk::CommandBufferAllocateInfo::default()
            .command_pool(scratch.pool)
            .level(vk::CommandBufferLevel::PRIMARY)
            .command_buffer_count(1);
        // SAFETY: the pool is live; one primary buffer is asked for.
        let cmd = unsafe { self.device.allocate_command_buffers(&alloc) }.map_err(call("vkAllocateCommandBuffers"))?[0];
        // SAFETY: valid device and create info.
        scratch.fence = unsafe { self.device.create_fence(&vk::FenceCreateInfo::default(), None) }
            .map_err(call("vkCreateFence"))?;
        let mut no_sync_file = None;
        if self.can_export_sync_file() {
            let mut export =
                vk::ExportSemaphoreCreateInfo::default().handle_types(vk::ExternalSemaphoreHandleTypeFlags::SYNC_FD);
            let info = vk::SemaphoreCreateInfo::default().push_next(&mut export);
            // SAFETY: the device has VK_KHR_external_semaphore_fd and reports
            // SYNC_FD exportable (checked above).
            scratch.semaphore =
                unsafe { self.device.create_semaphore(&info, None) }.map_err(call("vkCreateSemaphore (SYNC_FD)"))?;
        } else {
            no_sync_file = Some(format!(
                "{} cannot export a semaphore as a sync_file (no VK_KHR_external_semaphore_fd with SYNC_FD export)",
                self.provenance()
            ));
        }
        self.record_flip(cmd, src, dst)?;
        let cmds = [cmd];
        let signal = [scratch.semaphore];
        let mut submit = vk::SubmitInfo::default().command_buffers(&cmds);
        if scratch.semaphore != vk::Semaphore::null() {
            submit = submit.signal_semaphores(&signal);
        }
        let submitted_at = Instant::now();
        // SAFETY: the command buffer is recorded; the fence is unsignalled
        // and the semaphore (if any) unsignalled with no pending signal; the
        // queue belongs to this device.
        unsafe { self.device.queue_submit(self.queue, &[submit], scratch.fence) }.map_err(call("vkQueueSubmit"))?;
        scratch.submitted = true;

        let mut sync_file = None;
        let exporting = Instant::now();
        if let (Some(sem_fd), true) = (&self.semaphore_fd, scratch.semaphore != vk::Semaphore::null()) {
            let info = vk::SemaphoreGetFdInfoKHR::default()
                .semaphore(scratch.semaphore)
                .handle_type(vk::ExternalSemaphoreHandleTypeFlags::SYNC_FD);
            // SAFETY: the semaphore was created exportable as SYNC_FD and
            // has a signal operation pending (the submission above), as
            // SYNC_FD export requires.
            let raw = unsafe { sem_fd.get_semaphore_fd(&info) }.map_err(call("vkGetSemaphoreFdKHR (SYNC_FD)"))?;
            if raw >= 0 {
                // SAFETY: a successful export returns a new fd that the
                // caller owns.
                let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                sync_file = Some(SyncFile::new(fd).map_err(VulkanError::NotASyncFile)?);
            } else {
                // -1: already signalled, the spec allows it for SYNC_FD.
                no_sync_file = Some("the driver returned -1 (an already signalled SYNC_FD payload)".into());
            }
        }
        Ok(Submission {
            scratch,
            sync_file,
            no_sync_file,
            submitted_at,
            export_time: exporting.elapsed(),
            _images: std::marker::PhantomData,
        })
    }

    /// Record the flipped copy into `cmd`, with the images acquired from
    /// and released to the external queue family around it.
    fn record_flip(
        &self,
        cmd: vk::CommandBuffer,
        src: &ImportedImage<'_>,
        dst: &ImportedImage<'_>,
    ) -> Result<(), VulkanError> {
        let acquire = |image: vk::Image, layout: vk::ImageLayout, access: vk::AccessFlags| {
            vk::ImageMemoryBarrier::default()
                .src_access_mask(vk::AccessFlags::empty())
                .dst_access_mask(access)
                .old_layout(vk::ImageLayout::GENERAL)
                .new_layout(layout)
                .src_queue_family_index(vk::QUEUE_FAMILY_EXTERNAL)
                .dst_queue_family_index(self.queue_family)
                .image(image)
                .subresource_range(color())
        };
        let release = |image: vk::Image, layout: vk::ImageLayout, access: vk::AccessFlags| {
            vk::ImageMemoryBarrier::default()
                .src_access_mask(access)
                .dst_access_mask(vk::AccessFlags::empty())
                .old_layout(layout)
                .new_layout(vk::ImageLayout::GENERAL)
                .src_queue_family_index(self.queue_family)
                .dst_queue_family_index(vk::QUEUE_FAMILY_EXTERNAL)
                .image(image)
                .subresource_range(color())
        };
        let src_l = vk::ImageLayout::TRANSFER_SRC_OPTIMAL;
        let dst_l = vk::ImageLayout::TRANSFER_DST_OPTIMAL;
        let before = [
            acquire(src.image, src_l, vk::AccessFlags::TRANSFER_READ),
            acquire(dst.image, dst_l, vk::AccessFlags::TRANSFER_WRITE),
        ];
        let after = [
            release(src.image, src_l, vk::AccessFlags::TRANSFER_READ),
            release(dst.image, dst_l, vk::AccessFlags::TRANSFER_WRITE),
        ];
        let layer = vk::ImageSubresourceLayers::default().aspect_mask(vk::ImageAspectFlags::COLOR).layer_count(1);
        let regions: Vec<vk::ImageCopy> = (0..src.height)
            .map(|y| vk::ImageCopy {
                src_subresource: layer,
                src_offset: vk::Offset3D { x: 0, y: (src.height - 1 - y) as i32, z: 0 },
                dst_subresource: layer,
                dst_offset: vk::Offset3D { x: 0, y: y as i32, z: 0 },
                extent: vk::Extent3D { width: src.width, height: 1, depth: 1 },
            })
            .collect();
        // SAFETY: `cmd` is a fresh primary command buffer of this device; the
        // barriers and regions name live images of this device, in bounds
        // (rows 0..height of images height rows tall); recording ends before
        // submission.
        unsafe {
            let begin = vk::CommandBufferBeginInfo::default().flags(vk::CommandBufferUsageFlags::ONE_TIME_SUBMIT);
            self.device.begin_command_buffer(cmd, &begin).map_err(call("vkBeginCommandBuffer"))?;
            self.device.cmd_pipeline_barrier(
                cmd,
                vk::PipelineStageFlags::TOP_OF_PIPE,
                vk::PipelineStageFlags::TRANSFER,
                vk::DependencyFlags::empty(),
                &[],
                &[],
                &before,
            );
            self.device.cmd_copy_image(cmd, src.image, src_l, dst.image, dst_l, &regions);
            self.device.cmd_pipeline_barrier(
                cmd,
                vk::PipelineStageFlags::TRANSFER,
                vk::PipelineStageFlags::BOTTOM_OF_PIPE,
                vk::DependencyFlags::empty(),
                &[],
                &[],
                &after,
            );
            self.device.end_command_buffer(cmd).map_err(call("vkEndCommandBuffer"))?;
        }
        Ok(())
    }
}
