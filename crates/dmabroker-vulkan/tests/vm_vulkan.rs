//! Vulkan (lavapipe in the VM's trixie userland) as a dmabroker device:
//! modifier offers, vivid capturing into a buffer allocated for vivid +
//! vulkan:0, that buffer imported as a `VkImage` and copied (flipped) on the
//! device into a second dmabroker buffer, the CPU checking both through the
//! buffers' sync guards; a modifier only one side has fails naming the
//! device. Without Vulkan (the static host build cannot load libvulkan)
//! each test prints `SKIP`; in the VM (`DMABROKER_VM=1`) that is a failure.
//! Run in the VM by scripts/vulkan-vm-tests.sh.

#[path = "../../dmabroker/tests/vm_common/mod.rs"]
mod vm_common;

use dmabroker::constraints::modifier::{choose_modifier, modifier_name, ModifierError, ModifierOffer, MOD_LINEAR};
use dmabroker::constraints::{allocate_for, Constraints};
use dmabroker::device::v4l2::Memory;
use dmabroker::format::{Layout, LayoutOptions, PixelFormat};
use dmabroker::heap::Heaps;
use dmabroker_vulkan::{Usage, Vulkan};
use std::os::fd::AsFd;
use std::time::Duration;
use vm_common::vivid;

/// `I915_FORMAT_MOD_X_TILED`: a modifier lavapipe does not have.
const X_TILED: u64 = 0x0100_0000_0000_0001;
const W: u32 = 320;
const H: u32 = 180;

fn fourcc(b: &[u8; 4]) -> u32 {
    u32::from_le_bytes(*b)
}

#[test]
fn modifier_offers() {
    let test = "modifier_offers";
    let vk = require!(test, Vulkan::open(0), "Vulkan device 0");
    eprintln!("{test}: {}, sync_file export: {}", vk.provenance(), vk.can_export_sync_file());
    for usage in ["transfer", "sampled", "storage", "color"] {
        let u = Usage::parse(usage).unwrap();
        for f in [b"XR24", b"AR24", b"XB24", b"AB24", b"R8  ", b"GR88", b"YUYV", b"NV12"] {
            let offer = vk.modifier_offer(fourcc(f), u).expect("modifier query");
            eprintln!("{test}: usage {usage}: {}", Vulkan::describe_offer(&offer));
            for (m, why) in &offer.refused {
                eprintln!("{test}:   refused {}: {why}", modifier_name(*m));
            }
        }
    }
    let xr24 = vk.modifier_offer(fourcc(b"XR24"), Usage::TRANSFER).unwrap();
    assert!(xr24.offers(MOD_LINEAR).is_some(), "{} does not import LINEAR XR24: {xr24:?}", vk.provenance());
    assert!(xr24.device.starts_with("vulkan:0 ("), "{xr24:?}");
    assert!(Usage::parse("sampled,bogus").is_err());
    assert!(Usage::parse("").is_err());
}

#[test]
fn missing_device_is_a_typed_error() {
    let test = "missing_device_is_a_typed_error";
    require!(test, Vulkan::open(0), "Vulkan device 0");
    let e = Vulkan::open(99).unwrap_err();
    assert!(e.to_string().contains("no Vulkan device 99"), "{e}");
}

#[test]
fn modifier_only_one_side_has_fails_naming_the_device() {
    let test = "modifier_only_one_side_has_fails_naming_the_device";
    let vk = require!(test, Vulkan::open(0), "Vulkan device 0");
    let offer = vk.modifier_offer(fourcc(b"XR24"), Usage::TRANSFER).unwrap();
    // A device (a tiled display engine, described in code) that offers
    // only X-tiled: lavapipe lacks it.
    let display = ModifierOffer {
        device: "display0".into(),
        fourcc: fourcc(b"XR24"),
        modifiers: vec![dmabroker::constraints::modifier::ModifierCaps { modifier: X_TILED, planes: 1 }],
        refused: vec![],
    };
    let e = choose_modifier(&[offer.clone(), display.clone()], Some(X_TILED)).unwrap_err();
    let text = e.to_string();
    eprintln!("{test}: {text}");
    assert!(matches!(e, ModifierError::Refused { .. }), "{e:?}");
    assert!(text.contains(&format!("{} refuses it", vk.provenance())), "{text}");
    assert!(!text.contains("display0 refuses"), "{text}");
    let e = choose_modifier(&[offer, display], None).unwrap_err();
    assert!(matches!(e, ModifierError::NoCommon { .. }), "{e:?}");
    eprintln!("{test}: {e}");
}

#[test]
fn vivid_capture_imported_and_copied_by_vulkan() {
    let test = "vivid_capture_imported_and_copied_by_vulkan";
    let vk = require!(test, Vulkan::open(0), "Vulkan device 0");
    let (dev, bt) = require!(test, vivid(false), "vivid");
    let format = PixelFormat::Xbgr32; // V4L2 XR24 = DRM XRGB8888 = VK B8G8R8A8
    let drm = format.to_drm().unwrap() as u32;
    let linear = Layout::new(format, W, H, &LayoutOptions::default()).unwrap();

    // Constraints: vivid from sysfs/profiles, vulkan:0 from the driver.
    let camera = Constraints::probe(dev.path()).expect("probe vivid");
    let both = camera.merge(&vk.constraints()).expect("merge");
    assert!(both.devices().iter().any(|d| d.starts_with("vulkan:0")), "{:?}", both.devices());
    let offers = [
        ModifierOffer::linear(dev.path().display().to_string(), drm, 1),
        vk.modifier_offer(drm, Usage::TRANSFER).unwrap(),
    ];
    let chosen = choose_modifier(&offers, None).expect("a modifier both take");
    assert_eq!(chosen.modifier, MOD_LINEAR, "{chosen}");
    // The layout carries the modifier the devices agreed on.
    let layout = linear.with_modifier(chosen.modifier);
    let heaps = Heaps::discover();
    let (src, choice) = allocate_for(&heaps, &both, layout.total_size(), Some("vivid+vulkan")).expect("allocate_for");
    let (dst, _) = allocate_for(&heaps, &both, layout.total_size(), Some("vulkan-out")).expect("allocate_for");
    eprintln!("{test}: {} for {:?}, modifier {chosen}, {}", choice.heap, both.devices(), choice.reasons.join("; "));

    // vivid captures one frame into `src`.
    let fmt = dev.set_format(bt, W, H, format.to_v4l2()).expect("S_FMT");
    assert_eq!((fmt.width, fmt.height, fmt.pixelformat), (W, H, format.to_v4l2()), "{fmt:?}");
    assert_eq!(u64::from(fmt.planes[0].bytesperline), layout.bytesperline(), "vivid's pitch differs: {fmt:?}");
    let mut queue = dev.request_buffers(bt, Memory::DmaBuf, 1).expect("REQBUFS DMABUF");
    queue.queue_dmabuf(0, &[src.as_fd()], &[src.len() as u32]).expect("QBUF");
    queue.stream_on().expect("STREAMON");
    let d = queue.dequeue(Some(Duration::from_secs(20))).expect("DQBUF");
    queue.stream_off().expect("STREAMOFF");
    assert!(!d.error && u64::from(d.bytesused[0]) >= layout.total_size(), "{d:?}");
    drop(queue);

    // Vulkan imports both and copies src into dst flipped, no CPU copy.
    let a = vk.import(&src, src.len(), &layout, Usage::TRANSFER).expect("import the capture");
    let b = vk.import(&dst, dst.len(), &layout, Usage::TRANSFER).expect("import the output");
    let outcome = vk.copy_flipped(&a, &b).expect("vkCmdCopyImage");
    match &outcome.sync_file {
        Some(fd) => {
            let kind = std::fs::read_link(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(fd))).unwrap();
            eprintln!(
                "{test}: completion exported as a sync_file ({}), signalled: {}",
                kind.display(),
                outcome.sync_file_signalled
            );
            assert!(outcome.sync_file_signalled);
        }
        None => eprintln!("{test}: no sync_file: {}", outcome.no_sync_file.as_deref().unwrap_or("?")),
    }
    drop((a, b));

    // The CPU checks both through the sync guards.
    let mut ma = src.map_read().unwrap();
    let mut mb = dst.map_read().unwrap();
    let ra = ma.begin_read().expect("begin_read src");
    let rb = mb.begin_read().expect("begin_read dst");
    let pitch = layout.bytesperline() as usize;
    let row = W as usize * 4;
    assert!(ra[..layout.total_size() as usize].iter().any(|&x| x != 0), "vivid's frame is all zeros");
    let mut distinct_rows = 0;
    for y in 0..H as usize {
        let s = &ra[(H as usize - 1 - y) * pitch..][..row];
        let t = &rb[y * pitch..][..row];
        assert_eq!(s, t, "row {y} of the Vulkan copy is not row {} of the capture", H as usize - 1 - y);
        if y > 0 && ra[y * pitch..][..row] != ra[(y - 1) * pitch..][..row] {
            distinct_rows += 1;
        }
    }
    assert!(distinct_rows > 0, "every captured row is the same: the flip would not show");
    eprintln!(
        "{test}: {W}x{H} XR24 captured by vivid (sequence {}), flipped by {} into a second {} buffer; {H} rows verified, {distinct_rows} distinct",
        d.sequence,
        vk.provenance(),
        choice.heap
    );
}

/// `submit_copy_flipped` returns before the device is done, with the
/// completion as a sync_file: what a pool frame carries. Waiting on that
/// sync_file (no Vulkan call) is enough for the CPU to see the copy.
#[test]
fn submitted_copy_returns_a_sync_file_that_signals_when_it_is_done() {
    let test = "submitted_copy_returns_a_sync_file_that_signals_when_it_is_done";
    let vk = require!(test, Vulkan::open(0), "Vulkan device 0");
    let layout = Layout::new(PixelFormat::Xbgr32, W, H, &LayoutOptions::default()).unwrap().with_modifier(MOD_LINEAR);
    let (heap, bufs) = require!(test, vm_common::dma_bufs(2, layout.total_size()), "two dma-bufs");
    let pattern = vm_common::pattern(20, layout.total_size() as usize);
    {
        let mut m = bufs[0].map_read_write().unwrap();
        let mut w = m.begin_read_write().expect("begin_write");
        w[..pattern.len()].copy_from_slice(&pattern);
    }
    let a = vk.import(&bufs[0], bufs[0].len(), &layout, Usage::TRANSFER).expect("import the source");
    let b = vk.import(&bufs[1], bufs[1].len(), &layout, Usage::TRANSFER).expect("import the destination");
    let mut submission = vk.submit_copy_flipped(&a, &b).expect("submit");
    let Some(fence) = submission.take_sync_file() else {
        panic!("{} gave no sync_file for the copy: {}", vk.provenance(), submission.no_sync_file().unwrap_or("?"))
    };
    assert!(submission.take_sync_file().is_none(), "the sync_file is taken once");
    let info = fence.info().expect("SYNC_IOC_FILE_INFO");
    let waited = fence.wait(Duration::from_secs(20)).expect("the copy's sync_file signals");
    assert!(submission.is_done().expect("vkGetFenceStatus"), "the sync_file signalled before the fence");
    drop(submission);
    drop((a, b));
    let mut m = bufs[1].map_read().unwrap();
    let r = m.begin_read().expect("begin_read");
    let pitch = layout.bytesperline() as usize;
    for y in 0..H as usize {
        let want = &pattern[(H as usize - 1 - y) * pitch..][..W as usize * 4];
        assert_eq!(&r[y * pitch..][..W as usize * 4], want, "row {y}");
    }
    eprintln!(
        "{test}: {W}x{H} flipped on {} between two {heap} buffers; sync_file {info}, waited {waited:?}",
        vk.provenance()
    );
}
