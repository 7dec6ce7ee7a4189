//! `dmabroker_constraints_vulkan` (feature `vulkan`), called as C would, in
//! the VM's trixie userland on lavapipe: the device's constraints describe
//! it and allocate a dma-buf; merged with vivid's; a format it cannot
//! import, a missing device and a bad usage are typed errors naming it.
//! Built dynamically in the userland root by scripts/vulkan-vm-tests.sh;
//! elsewhere it prints `SKIP`, and in the VM (`DMABROKER_VM=1`) that is a
//! failure.
#![allow(clippy::undocumented_unsafe_blocks)] // tests: every call passes valid or deliberately NULL pointers

// vm_common names the core library `dmabroker`; this crate calls it dmabroker_core.
extern crate dmabroker_core as dmabroker;

#[path = "../../dmabroker/tests/vm_common/mod.rs"]
mod vm_common;

#[cfg(feature = "vulkan")]
#[test]
fn vulkan_constraints_from_c() {
    use dmabroker_capi::*;
    use std::ffi::CStr;
    use std::ptr;
    let test = "vulkan_constraints_from_c";
    let last_error = || unsafe { CStr::from_ptr(dmabroker_last_error()) }.to_string_lossy().into_owned();
    let xr24 = u32::from_le_bytes(*b"XR24");
    let mut vk: *mut Constraints = ptr::null_mut();
    let status = unsafe { dmabroker_constraints_vulkan(0, xr24, c"transfer".as_ptr(), &raw mut vk) };
    if status != Status::DMABROKER_OK {
        vm_common::skip(test, &format!("Vulkan device 0: {status:?}: {}", last_error()));
        return;
    }
    let mut text: *mut std::ffi::c_char = ptr::null_mut();
    assert_eq!(unsafe { dmabroker_constraints_describe(vk, &raw mut text) }, Status::DMABROKER_OK, "{}", last_error());
    let described = unsafe { CStr::from_ptr(text) }.to_string_lossy().into_owned();
    unsafe { dmabroker_string_free(text) };
    assert!(described.contains("vulkan:0 (") && described.contains("dma-buf"), "{described}");
    eprintln!("{test}: {}", described.replace('\n', "; "));

    // Merged with vivid (when here), then a buffer for both.
    if let Ok((dev, _)) = vm_common::vivid(false) {
        let path = std::ffi::CString::new(dev.path().display().to_string()).unwrap();
        let mut cam: *mut Constraints = ptr::null_mut();
        assert_eq!(
            unsafe { dmabroker_constraints_probe(path.as_ptr(), &raw mut cam) },
            Status::DMABROKER_OK,
            "{}",
            last_error()
        );
        assert_eq!(unsafe { dmabroker_constraints_merge(vk, cam) }, Status::DMABROKER_OK, "{}", last_error());
        unsafe { dmabroker_constraints_free(cam) };
    }
    let mut buf: *mut Buffer = ptr::null_mut();
    let mut why: ChoiceInfo = unsafe { std::mem::zeroed() };
    let status =
        unsafe { dmabroker_alloc_for(ptr::null(), vk, 640 * 480 * 4, c"vk".as_ptr(), &raw mut buf, &raw mut why) };
    assert_eq!(status, Status::DMABROKER_OK, "{}", last_error());
    let heap = unsafe { CStr::from_ptr(why.heap) }.to_string_lossy().into_owned();
    let reasons = unsafe { CStr::from_ptr(why.reasons) }.to_string_lossy().into_owned();
    assert!(heap == "udmabuf" || heap.starts_with("dma-heap/"), "a dma-buf heap, not {heap}");
    eprintln!("{test}: {heap}: {reasons}");
    unsafe {
        dmabroker_choice_info_clear(&raw mut why);
        dmabroker_buffer_free(buf);
        dmabroker_constraints_free(vk);
    }

    // Refusals: a format lavapipe cannot import for sampling, a device that
    // is not there, a usage that does not exist.
    let nv12 = u32::from_le_bytes(*b"NV12");
    let mut out: *mut Constraints = ptr::null_mut();
    let status = unsafe { dmabroker_constraints_vulkan(0, nv12, c"sampled".as_ptr(), &raw mut out) };
    assert_eq!(status, Status::DMABROKER_ERROR_UNSUPPORTED, "{}", last_error());
    assert!(out.is_null());
    assert!(last_error().contains("vulkan:0 (") && last_error().contains("refuses"), "{}", last_error());
    eprintln!("{test}: NV12 sampled: {}", last_error());
    let status = unsafe { dmabroker_constraints_vulkan(7, xr24, ptr::null(), &raw mut out) };
    assert_eq!(status, Status::DMABROKER_ERROR_NOT_FOUND, "{}", last_error());
    assert!(last_error().contains("no Vulkan device 7"), "{}", last_error());
    let status = unsafe { dmabroker_constraints_vulkan(0, xr24, c"sampeld".as_ptr(), &raw mut out) };
    assert_eq!(status, Status::DMABROKER_ERROR_INVALID_ARGUMENT, "{}", last_error());
    assert!(last_error().contains("unknown Vulkan usage"), "{}", last_error());
    assert_eq!(
        unsafe { dmabroker_constraints_vulkan(0, xr24, ptr::null(), ptr::null_mut()) },
        Status::DMABROKER_ERROR_INVALID_ARGUMENT
    );
}

#[cfg(not(feature = "vulkan"))]
#[test]
fn vulkan_constraints_from_c() {
    vm_common::skip(
        "vulkan_constraints_from_c",
        "dmabroker-capi built without the `vulkan` feature (scripts/vulkan-vm-tests.sh builds it with)",
    );
}
