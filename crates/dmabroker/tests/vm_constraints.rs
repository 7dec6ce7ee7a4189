//! The whole device-aware path on real drivers: probe vivid (`/dev/video0`)
//! and vgem (`/dev/dri/card0`) through sysfs, merge their constraints,
//! choose a heap and allocate with `allocate_for`, lay out NV12 and YUYV
//! frames with `Layout`, capture into those buffers with vivid
//! (`V4L2_MEMORY_DMABUF`), then import the same buffers into vgem (PRIME)
//! and read them back through vgem's export. Also: a requirement no heap of
//! the VM meets gives the explanatory error naming the device.

mod vm_common;

use dmabroker::constraints::{allocate_for, AllocForError, ChooseError, Constraints, Profiles, RequirementKind};
use dmabroker::device::drm::DrmDevice;
use dmabroker::device::v4l2::{video_nodes, BufType, Memory, V4l2Device};
use dmabroker::format::{Layout, LayoutOptions, PixelFormat};
use dmabroker::heap::HeapKind;
use dmabroker::{Buffer, BufferKind, Heaps};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Duration;

const SLOTS: usize = 4;
const FRAMES: usize = 6;
const TIMEOUT: Duration = Duration::from_secs(20);

/// vivid's single-planar capture node.
fn vivid() -> Result<V4l2Device, String> {
    let nodes = video_nodes();
    nodes
        .iter()
        .filter_map(|p| V4l2Device::open(p).ok())
        .find(|d| d.capabilities().driver == "vivid" && d.capture_type() == Some(BufType::VideoCapture))
        .ok_or_else(|| format!("no single-planar vivid node among {nodes:?} (modprobe vivid)"))
}

fn vgem() -> Result<DrmDevice, String> {
    DrmDevice::find("vgem").ok_or_else(|| "no vgem node under /dev/dri (modprobe vgem)".to_owned())
}

/// The node's file name (`video0`, `card0`): what its requirements are named after.
fn node_name(path: &std::path::Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

/// Probe both devices through sysfs and merge.
fn probe_both(video: &std::path::Path, card: &std::path::Path, profiles: &Profiles) -> Constraints {
    let cam = Constraints::probe_with(video, profiles).expect("probe the vivid node");
    let gpu = Constraints::probe_with(card, profiles).expect("probe the vgem node");
    let (v, c) = (node_name(video), node_name(card));
    assert!(cam.devices().len() == 1 && cam.devices()[0].starts_with(&v), "{v}: {:?}", cam.devices());
    assert!(gpu.devices().len() == 1 && gpu.devices()[0].starts_with(&c), "{c}: {:?}", gpu.devices());
    // Both import dma-bufs; sysfs shows no IOMMU for these virtual devices.
    assert!(cam.needs_dma_buf() && gpu.needs_dma_buf());
    assert!(cam.notes().iter().any(|n| n.contains("no IOMMU")), "{:?}", cam.notes());
    let merged = Constraints::merge_all([&cam, &gpu]).expect("merge");
    assert_eq!(merged, gpu.merge(&cam).unwrap(), "merging is commutative");
    let dma_buf = merged.dma_buf().expect("a dma-buf requirement");
    assert_eq!(dma_buf.from.len(), 2, "both devices ask for a dma-buf: {dma_buf:?}");
    assert!(dma_buf.from.iter().any(|d| d.starts_with(&v)));
    assert!(dma_buf.from.iter().any(|d| d.starts_with(&c)));
    merged
}

/// Capture `FRAMES` frames of `format` at 640x480 into buffers that
/// `allocate_for` chose for vivid + vgem, and read them back through vgem.
fn capture_and_share(test: &str, format: PixelFormat) {
    let dev = require!(test, vivid(), "vivid");
    let drm = require!(test, vgem(), "vgem");
    let video = dev.path().to_path_buf();
    let card = drm.path().to_path_buf();
    let merged = probe_both(&video, &card, &Profiles::new());

    // The frame: the input vivid starts with (the webcam) offers 640x480.
    let (w, h) = (640, 480);
    let layout = Layout::new(format, w, h, &LayoutOptions::default()).unwrap();
    let fmt = dev.set_format(BufType::VideoCapture, w, h, format.to_v4l2()).expect("S_FMT");
    assert_eq!((fmt.pixelformat, fmt.width, fmt.height), (format.to_v4l2(), w, h), "{fmt:?}");
    assert_eq!(u64::from(fmt.planes[0].bytesperline), layout.bytesperline());
    assert_eq!(u64::from(fmt.planes[0].sizeimage), layout.total_size());

    // Buffers for both devices.
    let heaps = Heaps::discover();
    let mut slots: Vec<Buffer> = Vec::new();
    let mut heap = String::new();
    for i in 0..SLOTS {
        let (buffer, choice) = allocate_for(&heaps, &merged, layout.total_size(), Some(test))
            .unwrap_or_else(|e| panic!("allocate_for {format} {w}x{h}: {e}"));
        assert_eq!(buffer.kind(), BufferKind::DmaBuf, "{choice:?}");
        assert!(matches!(choice.kind, HeapKind::DmaHeap | HeapKind::Udmabuf), "{choice:?}");
        assert!(buffer.len() >= layout.total_size());
        assert_eq!(buffer.len(), choice.allocated_len);
        // memfd and hugetlb give no dma-buf: passed over, naming both devices.
        for cpu_only in ["memfd", "hugetlb"] {
            if let Some(r) = choice.passed_over.iter().find(|r| r.heap.starts_with(cpu_only)) {
                let lack = r
                    .lacks
                    .iter()
                    .find(|l| l.requirement == Some(RequirementKind::DmaBuf))
                    .unwrap_or_else(|| panic!("{r:?}"));
                assert_eq!(lack.from.len(), 2, "{lack:?}");
            }
        }
        assert!(
            choice.candidates.iter().any(|c| c == "dma-heap/system"),
            "dma-heap/system meets vivid + vgem: {choice:?}"
        );
        if i == 0 {
            eprintln!(
                "{test}: {} x {} bytes from {} ({})",
                SLOTS,
                buffer.len(),
                choice.heap,
                choice.reasons.join("; ")
            );
        }
        heap = choice.heap;
        slots.push(buffer);
    }

    // Capture into them.
    let mut maps: Vec<_> = slots.iter().map(|b| b.map_read().unwrap()).collect();
    let mut queue = dev.request_buffers(BufType::VideoCapture, Memory::DmaBuf, SLOTS as u32).expect("REQBUFS DMABUF");
    assert_eq!(queue.count() as usize, SLOTS);
    let length = u32::try_from(slots[0].len()).unwrap();
    for (i, b) in slots.iter().enumerate() {
        queue.queue_dmabuf(i as u32, &[b.as_fd()], &[length]).expect("QBUF");
    }
    queue.stream_on().expect("STREAMON");
    let mut frames: Vec<(u32, Vec<u8>)> = Vec::new();
    for _ in 0..FRAMES {
        let d = queue.dequeue(Some(TIMEOUT)).expect("DQBUF");
        assert!(!d.error, "{d:?}");
        let used = d.bytesused[0] as usize;
        assert!(used > 0 && used as u64 <= layout.total_size(), "bytesused {used}: {d:?}");
        let data = maps[d.index as usize].begin_read().expect("begin_read")[..layout.total_size() as usize].to_vec();
        // Every plane where the layout puts it holds picture data.
        for (p, plane) in layout.planes().iter().enumerate() {
            let bytes = &data[plane.offset as usize..plane.end() as usize];
            assert!(bytes.iter().any(|&b| b != 0), "{format} frame {} plane {p} ({plane:?}) is all zeros", d.sequence);
        }
        frames.push((d.sequence, data));
        queue.queue_dmabuf(d.index, &[slots[d.index as usize].as_fd()], &[length]).expect("re-QBUF");
    }
    queue.stream_off().expect("STREAMOFF");
    drop(queue);
    assert!(frames.windows(2).all(|w| w[1].0 > w[0].0), "sequence numbers must increase");
    let changed = frames.windows(2).filter(|w| w[0].1 != w[1].1).count();
    assert!(changed > 0, "all {FRAMES} frames are identical");

    // The same buffers in vgem: import, export again, read.
    for (i, buffer) in slots.iter().enumerate() {
        let handle = drm.prime_import(buffer).expect("PRIME_FD_TO_HANDLE");
        let back = Buffer::from_fd(drm.prime_export(handle).expect("PRIME_HANDLE_TO_FD")).expect("Buffer::from_fd");
        assert_eq!(back.inode(), buffer.inode(), "vgem re-exports the same dma-buf");
        assert_eq!(back.kind(), BufferKind::DmaBuf);
        let ours = maps[i].begin_read().unwrap()[..].to_vec();
        let theirs = back.map_read().unwrap().begin_read().unwrap()[..].to_vec();
        assert!(ours == theirs, "slot {i}: vgem's view differs from ours");
        assert!(ours[..layout.total_size() as usize].iter().any(|&b| b != 0), "slot {i} holds no frame");
        drm.gem_close(handle).expect("GEM_CLOSE");
    }
    eprintln!(
        "{test}: {format} {w}x{h} ({} bytes, planes {:?}) from {heap}: {FRAMES} frames, \
         {changed} changes, seen identically through vgem",
        layout.total_size(),
        layout.planes().iter().map(|p| (p.offset, p.bytesperline)).collect::<Vec<_>>()
    );
}

#[test]
fn nv12_allocated_for_vivid_and_vgem() {
    capture_and_share("nv12_allocated_for_vivid_and_vgem", PixelFormat::Nv12);
}

#[test]
fn yuyv_allocated_for_vivid_and_vgem() {
    capture_and_share("yuyv_allocated_for_vivid_and_vgem", PixelFormat::Yuyv);
}

/// A profile saying the camera needs contiguous memory, and a 64 MiB frame:
/// without a CMA heap nothing qualifies, and the error says which device
/// asked for what, what each heap lacks, and how to fix it.
#[test]
fn impossible_contiguity_names_the_device() {
    let test = "impossible_contiguity_names_the_device";
    let dev = require!(test, vivid(), "vivid");
    let drm = require!(test, vgem(), "vgem");
    let video: PathBuf = dev.path().to_path_buf();
    let card = drm.path().to_path_buf();
    let heaps = Heaps::discover();
    let cma: Vec<String> = heaps
        .infos()
        .into_iter()
        .filter(|h| h.kind == HeapKind::DmaHeap && h.contiguous_up_to.is_none())
        .map(|h| h.name)
        .collect();
    assert!(
        cma.is_empty() || !vm_common::in_vm(),
        "the VM's kernel has no CMA area, yet heaps {cma:?} claim contiguity"
    );
    if !cma.is_empty() {
        vm_common::skip(test, &format!("a CMA heap exists here: {cma:?}"));
        return;
    }

    let mut profiles = Profiles::new();
    profiles
        .add_str(
            &format!(
                "[[device]]\npath = \"{}\"\ndescription = \"test: an ISP without IOMMU\"\ncontiguous = true\n",
                video.display()
            ),
            "vm_constraints.toml",
        )
        .expect("profile");
    let merged = probe_both(&video, &card, &profiles);
    let v = node_name(&video);
    let seg = merged.max_segments().expect("the profile's contiguity");
    assert_eq!(seg.value, 1);
    assert!(seg.from.len() == 1 && seg.from[0].starts_with(&v), "{seg:?}");

    let len = 64 << 20;
    let err = match allocate_for(&heaps, &merged, len, Some(test)) {
        Ok((b, c)) => panic!("{} bytes from {}: {c:?}", b.len(), c.heap),
        Err(AllocForError::Choose(ChooseError::NoHeap(e))) => e,
        Err(e) => panic!("expected NoHeap, got {e}"),
    };
    let text = err.to_string();
    eprintln!("{test}: {text}");
    assert!(text.starts_with("no heap can allocate 64 MiB for "), "{text}");
    assert!(text.contains(&format!("{} needs physically contiguous memory", seg.from[0])), "{text}");
    assert!(text.contains("dma-heap/system"), "{text}");
    assert!(text.contains("contiguous only to"), "{text}");
    assert!(text.contains("hint: no CMA heap"), "{text}");
    assert_eq!(err.devices, merged.devices());
    assert!(err.rejected.iter().any(
        |r| r.heap == "dma-heap/system" && r.lacks.iter().any(|l| l.requirement == Some(RequirementKind::Segments))
    ));

    // Without the profile the same request succeeds: the requirement, not
    // the size, was the obstacle.
    let plain = probe_both(&video, &card, &Profiles::new());
    let (b, choice) = allocate_for(&heaps, &plain, len, Some(test)).expect("64 MiB dma-buf");
    assert!(b.len() >= len && b.kind() == BufferKind::DmaBuf, "{choice:?}");
}
