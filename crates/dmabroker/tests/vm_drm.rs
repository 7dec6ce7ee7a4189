//! vgem (the kernel's virtual GEM driver) importing dmabroker buffers
//! (PRIME fd -> handle) and exporting dumb buffers (handle -> fd), with the
//! CPU content round-tripping both ways. On a host without vgem each test
//! prints `SKIP`.

mod vm_common;

use dmabroker::device::drm::{DrmDevice, PrimeError};
use dmabroker::heap::Heaps;
use dmabroker::{Buffer, BufferKind};
use vm_common::{allocate, pattern};

fn vgem() -> Result<DrmDevice, String> {
    DrmDevice::find("vgem").ok_or_else(|| "no vgem node under /dev/dri (modprobe vgem)".to_owned())
}

/// Import a buffer into vgem, export the handle again: the same dma-buf
/// comes back, with the bytes the CPU wrote.
fn import(test: &str, heap: &str) {
    let drm = require!(test, vgem(), "vgem");
    let heaps = Heaps::discover();
    let buffer = require!(test, allocate(&heaps, heap, 1 << 20), "heap {heap}");
    let data = pattern(9, buffer.len() as usize);
    buffer.map_read_write().unwrap().begin_write().unwrap().copy_from_slice(&data);

    let caps = drm.prime_caps().expect("DRM_CAP_PRIME");
    assert!(caps.import && caps.export, "{caps:?}");
    let handle = drm.prime_import(&buffer).expect("PRIME_FD_TO_HANDLE");
    assert_eq!(drm.prime_import(&buffer).expect("second import"), handle, "same dma-buf, same handle");
    let fd = drm.prime_export(handle).expect("PRIME_HANDLE_TO_FD");
    let back = Buffer::from_fd(fd).expect("Buffer::from_fd");
    assert_eq!(back.inode(), buffer.inode(), "re-export of an import must be the original dma-buf");
    assert_eq!(back.len(), buffer.len());
    let mut map = back.map_read().unwrap();
    assert!(map.begin_read().unwrap()[..] == data[..], "{heap}: content changed through vgem");
    drm.gem_close(handle).expect("GEM_CLOSE");
    assert!(drm.gem_close(handle).is_err(), "closing twice must fail");
}

#[test]
fn vgem_imports_dma_heap_system() {
    import("vgem_imports_dma_heap_system", "dma-heap/system");
}

#[test]
fn vgem_imports_udmabuf() {
    import("vgem_imports_udmabuf", "udmabuf");
}

/// A memfd is not a dma-buf: a typed error, naming udmabuf as the way.
#[test]
fn vgem_refuses_memfd() {
    let test = "vgem_refuses_memfd";
    let drm = require!(test, vgem(), "vgem");
    let heaps = Heaps::discover();
    let buffer = require!(test, allocate(&heaps, "memfd", 4096), "memfd");
    match drm.prime_import(&buffer) {
        Err(PrimeError::NotADmaBuf) => {}
        other => panic!("importing a memfd gave {other:?}"),
    }
    assert!(matches!(drm.prime_export(dmabroker::device::drm::GemHandle(0xdead)), Err(PrimeError::NoSuchHandle(_))));
}

/// A vgem dumb buffer exported as a dma-buf: writes through either mapping
/// are seen through the other.
#[test]
fn vgem_dumb_export_round_trip() {
    let test = "vgem_dumb_export_round_trip";
    let drm = require!(test, vgem(), "vgem");
    let dumb = drm.create_dumb(256, 64, 32).expect("MODE_CREATE_DUMB");
    assert!(dumb.pitch >= 256 * 4 && dumb.size >= u64::from(dumb.pitch) * 64, "{dumb:?}");
    let mut dmap = drm.map_dumb(&dumb).expect("MODE_MAP_DUMB + mmap");
    let a = pattern(1, dmap.as_slice().len());
    dmap.as_mut_slice().copy_from_slice(&a);

    let fd = drm.prime_export(dumb.handle).expect("PRIME_HANDLE_TO_FD");
    let buffer = Buffer::from_fd(fd).expect("Buffer::from_fd of a vgem export");
    assert_eq!(buffer.kind(), BufferKind::DmaBuf);
    assert_eq!(buffer.len(), dumb.size);
    let mut map = buffer.map_read_write().expect("mmap the exported dma-buf");
    assert!(map.begin_read().unwrap()[..] == a[..], "dma-buf view differs from the dumb mapping");
    let b = pattern(2, a.len());
    map.begin_write().unwrap().copy_from_slice(&b);
    assert!(dmap.as_slice() == &b[..], "dumb mapping does not see the dma-buf write");

    // Importing our own export gives back the same handle.
    assert_eq!(drm.prime_import(&buffer).expect("import own export"), dumb.handle);
    drm.destroy_dumb(dumb.handle).expect("MODE_DESTROY_DUMB");
    // The memory lives on through the dma-buf.
    assert!(map.begin_read().unwrap()[..] == b[..]);
    assert!(drm.create_dumb(0, 64, 32).is_err(), "zero width must be refused");
}
