//! vivid (the kernel's virtual V4L2 camera) capturing into dmabroker buffers
//! (`V4L2_MEMORY_DMABUF`), and exporting its own buffers (`VIDIOC_EXPBUF`)
//! for `Buffer::from_fd`. `vm/run.sh` loads vivid with a single-planar and a
//! multi-planar instance; on a host without vivid each test prints `SKIP`.

mod vm_common;

use dmabroker::device::v4l2::{fourcc, Dequeued, Memory, QueueError};
use dmabroker::heap::Heaps;
use dmabroker::{Buffer, BufferKind};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;
use vm_common::{allocate, vivid};

const FRAMES: usize = 6;
const SLOTS: u32 = 4;
const TIMEOUT: Duration = Duration::from_secs(20);

/// Capture `FRAMES` frames into buffers from `heap` and check them.
fn capture(test: &str, heap: &str, multiplanar: bool, pixfmt: &[u8; 4]) {
    let (dev, bt) = require!(test, vivid(multiplanar), "vivid");
    let heaps = Heaps::discover();
    require!(test, allocate(&heaps, heap, 4096), "heap {heap}");

    let code = fourcc(pixfmt);
    let formats = dev.formats(bt).expect("ENUM_FMT");
    assert!(formats.iter().any(|f| f.pixelformat == code), "vivid lacks {pixfmt:?}: {formats:?}");
    let fmt = dev.set_format(bt, 320, 180, code).expect("S_FMT");
    assert_eq!(fmt.pixelformat, code, "driver changed the pixel format: {fmt:?}");
    let expected_planes = if multiplanar && pixfmt == b"NM12" { 2 } else { 1 };
    assert_eq!(fmt.planes.len(), expected_planes, "{fmt:?}");
    assert!(fmt.planes.iter().all(|p| p.sizeimage > 0 && p.bytesperline >= fmt.width), "{fmt:?}");

    // One dmabroker buffer per plane per slot.
    let bufs: Vec<Vec<Buffer>> = (0..SLOTS)
        .map(|_| fmt.planes.iter().map(|p| allocate(&heaps, heap, p.sizeimage.into()).unwrap()).collect())
        .collect();
    let mut maps: Vec<Vec<_>> = bufs.iter().map(|s| s.iter().map(|b| b.map_read().unwrap()).collect()).collect();
    let lengths: Vec<u32> = bufs[0].iter().map(|b| b.len() as u32).collect();

    let mut queue = dev.request_buffers(bt, Memory::DmaBuf, SLOTS).expect("REQBUFS DMABUF");
    assert_eq!(queue.count(), SLOTS);
    assert_eq!(queue.planes(), fmt.planes.len());
    for (i, slot) in bufs.iter().enumerate() {
        let fds: Vec<BorrowedFd<'_>> = slot.iter().map(|b| b.as_fd()).collect();
        queue.queue_dmabuf(i as u32, &fds, &lengths).expect("QBUF");
    }
    queue.stream_on().expect("STREAMON");

    let mut frames: Vec<(Dequeued, Vec<Vec<u8>>)> = Vec::new();
    for _ in 0..FRAMES {
        let d = queue.dequeue(Some(TIMEOUT)).expect("DQBUF");
        assert!(!d.error, "frame flagged as corrupt: {d:?}");
        assert!(d.index < SLOTS);
        let slot = d.index as usize;
        let mut planes = Vec::new();
        for (p, map) in maps[slot].iter_mut().enumerate() {
            let used = d.bytesused[p] as usize;
            assert!(used > 0 && used <= fmt.planes[p].sizeimage as usize, "bytesused {used} plane {p}: {d:?}");
            let r = map.begin_read().expect("begin_read (SYNC)");
            planes.push(r[..used].to_vec());
        }
        let fds: Vec<BorrowedFd<'_>> = bufs[slot].iter().map(|b| b.as_fd()).collect();
        queue.queue_dmabuf(d.index, &fds, &lengths).expect("re-QBUF");
        frames.push((d, planes));
    }
    queue.stream_off().expect("STREAMOFF");

    for (d, planes) in &frames {
        for (p, data) in planes.iter().enumerate() {
            assert!(data.iter().any(|&b| b != 0), "frame {} plane {p} is all zeros", d.sequence);
        }
    }
    for w in frames.windows(2) {
        assert!(w[1].0.sequence > w[0].0.sequence, "sequence not increasing: {:?} {:?}", w[0].0, w[1].0);
        assert!(w[1].0.timestamp >= w[0].0.timestamp, "timestamps go back");
    }
    let changed = frames.windows(2).filter(|w| w[0].1 != w[1].1).count();
    assert!(changed > 0, "all {FRAMES} frames are identical: the test pattern did not move");
    eprintln!(
        "{test}: {}x{} {:?}, planes {:?}, sequences {:?}, {changed} of {} frame pairs differ",
        fmt.width,
        fmt.height,
        String::from_utf8_lossy(pixfmt),
        fmt.planes,
        frames.iter().map(|f| f.0.sequence).collect::<Vec<_>>(),
        FRAMES - 1
    );
}

#[test]
fn capture_yuyv_dma_heap_system() {
    capture("capture_yuyv_dma_heap_system", "dma-heap/system", false, b"YUYV");
}

#[test]
fn capture_yuyv_udmabuf() {
    capture("capture_yuyv_udmabuf", "udmabuf", false, b"YUYV");
}

#[test]
fn capture_nv12m_dma_heap_system() {
    capture("capture_nv12m_dma_heap_system", "dma-heap/system", true, b"NM12");
}

#[test]
fn capture_nv12m_udmabuf() {
    capture("capture_nv12m_udmabuf", "udmabuf", true, b"NM12");
}

/// MMAP buffers exported with EXPBUF, adopted as `Buffer`s, read after capture.
fn expbuf(test: &str, multiplanar: bool, pixfmt: &[u8; 4]) {
    let (dev, bt) = require!(test, vivid(multiplanar), "vivid");
    let fmt = dev.set_format(bt, 320, 180, fourcc(pixfmt)).expect("S_FMT");
    let mut queue = dev.request_buffers(bt, Memory::Mmap, 2).expect("REQBUFS MMAP");
    let mut slots: Vec<Vec<Buffer>> = Vec::new();
    for i in 0..queue.count() {
        let mut planes = Vec::new();
        for p in 0..fmt.planes.len() {
            let fd = queue.export_buffer(i, p as u32).expect("EXPBUF");
            let b = Buffer::from_fd(fd).expect("Buffer::from_fd of an EXPBUF dma-buf");
            assert_eq!(b.kind(), BufferKind::DmaBuf);
            assert!(
                b.len() >= u64::from(fmt.planes[p].sizeimage),
                "exported {} < sizeimage {:?}",
                b.len(),
                fmt.planes[p]
            );
            assert!(b.heap().contains("vb2") || b.heap().contains("videobuf2"), "exporter {}", b.heap());
            planes.push(b);
        }
        slots.push(planes);
    }
    // Out-of-range export is a typed error, not a panic.
    assert!(queue.export_buffer(queue.count(), 0).is_err());
    assert!(queue.export_buffer(0, 8).is_err());

    for i in 0..queue.count() {
        queue.queue_mmap(i).expect("QBUF MMAP");
    }
    queue.stream_on().expect("STREAMON");
    let d = queue.dequeue(Some(TIMEOUT)).expect("DQBUF");
    for (p, b) in slots[d.index as usize].iter().enumerate() {
        let mut map = b.map_read().expect("mmap of the exported dma-buf");
        let r = map.begin_read().expect("begin_read");
        assert!(r[..d.bytesused[p] as usize].iter().any(|&x| x != 0), "exported plane {p} is all zeros");
    }
    queue.stream_off().unwrap();
    drop(queue); // REQBUFS 0: the exported buffers stay valid (orphaned)
    let mut map = slots[0][0].map_read().expect("map after the queue is gone");
    assert!(map.begin_read().unwrap().len() >= fmt.planes[0].sizeimage as usize);
}

#[test]
fn expbuf_yuyv() {
    expbuf("expbuf_yuyv", false, b"YUYV");
}

#[test]
fn expbuf_nv12m() {
    expbuf("expbuf_nv12m", true, b"NM12");
}

/// Bad input gives typed errors, never a panic or a kernel call with garbage.
#[test]
fn dmabuf_queue_rejects_bad_input() {
    let test = "dmabuf_queue_rejects_bad_input";
    let (dev, bt) = require!(test, vivid(false), "vivid");
    let heaps = Heaps::discover();
    let fmt = dev.set_format(bt, 320, 180, fourcc(b"YUYV")).expect("S_FMT");
    let small = require!(test, allocate(&heaps, "dma-heap/system", 4096), "dma-heap/system");
    let queue = dev.request_buffers(bt, Memory::DmaBuf, 2).expect("REQBUFS");
    assert!(matches!(
        queue.queue_dmabuf(queue.count(), &[small.as_fd()], &[4096]),
        Err(QueueError::IndexOutOfRange { .. })
    ));
    assert!(matches!(queue.queue_dmabuf(0, &[], &[]), Err(QueueError::PlaneCountMismatch { .. })));
    assert!(matches!(queue.queue_mmap(0), Err(QueueError::WrongMemory(Memory::DmaBuf))));
    assert!(queue.export_buffer(0, 0).is_err());
    // A dma-buf smaller than sizeimage: vb2 refuses it (at QBUF or at the
    // latest STREAMON); either way an error, not a crash.
    assert!(fmt.planes[0].sizeimage > 4096);
    let r = queue.queue_dmabuf(0, &[small.as_fd()], &[4096]);
    assert!(matches!(r, Err(QueueError::Rejected(_))), "{r:?}");
}
