//! Pools allocated by device constraints ([`Producer::allocate_for`]) and
//! sized by a frame layout ([`Producer::allocate_for_layout`]).

use dmabroker::constraints::{AllocForError, ChooseError, Constraints};
use dmabroker::format::{Layout, LayoutOptions, PixelFormat};
use dmabroker::pool::{
    plane_offsets, socket_pair, Consumer, ConsumerOptions, CreateError, FrameMeta, PoolAllocError, PoolOptions,
    Producer,
};
use dmabroker::{BufferKind, Heaps};
use std::time::Duration;

/// One consumer attached over a socket pair.
fn consumer(p: &mut Producer) -> Consumer {
    let (a, b) = socket_pair().unwrap();
    p.attach(a).unwrap();
    let t = std::thread::spawn(move || Consumer::attach(b, &ConsumerOptions::default()).unwrap());
    assert!(p.wait_for_consumers(1, Duration::from_secs(5)));
    t.join().unwrap()
}

#[test]
fn unconstrained_pool_comes_from_the_cheapest_heap_and_says_why() {
    let mut p = Producer::allocate_for(&Heaps::discover(), &Constraints::none(), &PoolOptions::new(3, 10_000)).unwrap();
    let choice = p.choice().expect("allocated by constraints").clone();
    assert_eq!(choice.heap, "memfd");
    assert!(choice.reasons.iter().any(|r| r.contains("memfd")), "{:?}", choice.reasons);
    assert_eq!(p.buffers().count(), 3);
    assert!(p.buffers().all(|b| b.len() >= 10_000 && b.kind() == BufferKind::Memfd && b.is_size_sealed()));
    let mut c = consumer(&mut p);
    let mut slot = p.acquire(None).unwrap();
    slot.mapping().begin_write().unwrap()[..3].copy_from_slice(b"abc");
    slot.submit(FrameMeta::new(3)).unwrap();
    let mut frame = c.recv(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(&frame.read().unwrap()[..3], b"abc");
}

#[test]
fn unmet_constraints_name_the_buffer_and_the_requirement() {
    // 20-bit DMA without an IOMMU: no heap reaches that low.
    let tiny = Constraints::builder("dma20").address_bits(20).build().unwrap();
    let err = Producer::allocate_for(&Heaps::discover(), &tiny, &PoolOptions::new(2, 4096)).unwrap_err();
    assert!(
        matches!(err, PoolAllocError::Alloc { index: 0, source: AllocForError::Choose(ChooseError::NoHeap(_)) }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("buffer 0") && text.contains("dma20"), "{text}");
    // Counts are checked before anything is allocated.
    let err = Producer::allocate_for(&Heaps::discover(), &Constraints::none(), &PoolOptions::new(0, 4096));
    assert!(matches!(err, Err(PoolAllocError::Create(CreateError::BufferCount(0)))));
    let err = Producer::allocate_for(&Heaps::discover(), &Constraints::none(), &PoolOptions::new(1, 0));
    assert!(matches!(err, Err(PoolAllocError::Create(CreateError::ZeroLength))));
}

#[test]
fn dma_buf_constraint_gives_dma_bufs_or_says_why_not() {
    let heaps = Heaps::discover();
    let dev = Constraints::builder("importer").dma_buf(true).build().unwrap();
    let importable = heaps.infos().iter().any(|h| h.device_importable && h.usable);
    match Producer::allocate_for(&heaps, &dev, &PoolOptions::new(2, 4096)) {
        Ok(p) => assert!(p.buffers().all(|b| b.kind() == BufferKind::DmaBuf)),
        // A usable importable heap can still fail to allocate (quota, limits).
        Err(PoolAllocError::Alloc { index: 0, source }) => {
            assert!(!importable || matches!(source, AllocForError::Alloc { .. }), "{source}");
        }
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn multi_buffer_format_gets_one_pool_buffer_per_frame() {
    let heaps = Heaps::discover();
    let layout = Layout::new(PixelFormat::Nv12M, 64, 32, &LayoutOptions::default().with_size_align(4096)).unwrap();
    assert_eq!(layout.buffer_sizes(), [4096, 4096]);
    let opts = PoolOptions::new(2, 0);
    let mut p = Producer::allocate_for_layout(&heaps, &Constraints::none(), &opts, &layout).unwrap();
    assert_eq!(p.options().buffer_len, layout.total_size());
    assert!(p.buffers().all(|b| b.len() >= 8192));
    let offsets = plane_offsets(&layout);
    assert_eq!(offsets, [0, 4096]);
    let mut c = consumer(&mut p);
    let mut slot = p.acquire(None).unwrap();
    {
        let mut w = slot.mapping().begin_write().unwrap();
        w[offsets[0] as usize] = b'Y';
        w[offsets[1] as usize] = b'C';
    }
    slot.submit(FrameMeta::new(layout.total_size())).unwrap();
    let mut frame = c.recv(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(frame.info().bytes_used, 8192);
    let data = frame.read().unwrap();
    assert_eq!((data[0], data[4096]), (b'Y', b'C'));

    // One-buffer formats: the layout's own offsets.
    let nv12 = Layout::new(PixelFormat::Nv12, 64, 32, &LayoutOptions::default()).unwrap();
    assert_eq!(plane_offsets(&nv12), [0, 64 * 32]);
    let p = Producer::allocate_for_layout(&heaps, &Constraints::none(), &opts, &nv12).unwrap();
    assert_eq!(p.options().buffer_len, 64 * 32 * 3 / 2);
}

/// A pool allocated for a device that does not snoop the CPU's caches:
/// the consumer (over the real handshake) adopts its buffers non-coherent,
/// so its CPU reads do the cache maintenance too, as the producer's writes do.
#[test]
fn a_non_coherent_pool_keeps_its_maintenance_in_consumers() {
    use dmabroker::buffer::Coherency;
    use dmabroker::constraints::DeviceCoherency;
    let isp = Constraints::builder("isp0").dma_buf(false).coherency(DeviceCoherency::NeedsMaintenance).build().unwrap();
    let mut p = Producer::allocate_for(&Heaps::discover(), &isp, &PoolOptions::new(2, 4096)).unwrap();
    assert!(p.buffers().all(|b| b.properties().coherency == Coherency::NonCoherent));
    let mut c = consumer(&mut p);
    let mut slot = p.acquire(None).unwrap();
    slot.mapping().begin_write().unwrap()[..3].copy_from_slice(b"nc!");
    slot.submit(FrameMeta::new(3)).unwrap();
    let mut frame = c.recv(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(frame.buffer().properties().coherency, Coherency::NonCoherent, "lost in the handshake");
    assert_eq!(&frame.read().unwrap()[..3], b"nc!");
}
