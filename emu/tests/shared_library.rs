//! The built shared library: its soname, its exports, and calls through `dlopen`, as cudarc
//! makes them.

use std::path::PathBuf;
use std::process::Command;

/// `target/<profile>/libvramswap_cuda_emu.so`, built with this test (the cdylib of the crate).
fn library() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let lib = dir.join("libvramswap_cuda_emu.so");
    assert!(lib.is_file(), "{} was not built", lib.display());
    lib
}

#[test]
fn the_soname_is_libcuda_so_and_no_file_in_target_is_named_libcuda() {
    let lib = library();
    let out = Command::new("readelf")
        .arg("-d")
        .arg(&lib)
        .output()
        .expect("readelf (binutils) runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Library soname: [libcuda.so]"), "{text}");
    for entry in std::fs::read_dir(lib.parent().unwrap()).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            !name.starts_with("libcuda.so"),
            "{name} would shadow a real driver"
        );
    }
}

#[test]
fn every_driver_function_of_the_issue_is_exported_and_unimplemented_ones_say_so() {
    // SAFETY: loading the emulator runs no initialiser with side effects.
    let lib = unsafe { libloading::Library::new(library()) }.unwrap();
    let required = [
        "cuInit",
        "cuDriverGetVersion",
        "cuDeviceGetCount",
        "cuDeviceGet",
        "cuDeviceGetName",
        "cuDeviceGetAttribute",
        "cuDeviceTotalMem_v2",
        "cuDevicePrimaryCtxRetain",
        "cuDevicePrimaryCtxRelease_v2",
        "cuCtxSetCurrent",
        "cuCtxGetCurrent",
        "cuCtxSynchronize",
        "cuMemGetInfo_v2",
        "cuMemAlloc_v2",
        "cuMemFree_v2",
        "cuMemAllocAsync",
        "cuMemFreeAsync",
        "cuMemcpyHtoD_v2",
        "cuMemcpyDtoH_v2",
        "cuMemcpyHtoDAsync_v2",
        "cuMemcpyDtoHAsync_v2",
        "cuMemcpyDtoDAsync_v2",
        "cuMemsetD8Async",
        "cuMemHostAlloc",
        "cuMemFreeHost",
        "cuMemHostRegister_v2",
        "cuMemHostUnregister",
        "cuStreamCreate",
        "cuStreamDestroy_v2",
        "cuStreamSynchronize",
        "cuStreamQuery",
        "cuStreamWaitEvent",
        "cuEventCreate",
        "cuEventRecord",
        "cuEventQuery",
        "cuEventSynchronize",
        "cuEventElapsedTime",
        "cuEventElapsedTime_v2",
        "cuEventDestroy_v2",
        "cuMemGetAllocationGranularity",
        "cuMemAddressReserve",
        "cuMemAddressFree",
        "cuMemCreate",
        "cuMemRelease",
        "cuMemMap",
        "cuMemUnmap",
        "cuMemSetAccess",
        "cuModuleLoadData",
        "cuModuleGetFunction",
        "cuModuleUnload",
        "cuLaunchKernel",
        "cuGetErrorName",
        "cuGetErrorString",
        "vramswap_emu_report",
    ];
    for name in required {
        // SAFETY: only the symbol's presence is checked.
        let s = unsafe { lib.get::<unsafe extern "C" fn()>(name.as_bytes()) };
        assert!(s.is_ok(), "{name} is not exported");
    }
    for name in vramswap_cuda_emu::NOT_SUPPORTED {
        // SAFETY: these entry points take no arguments and return a CUresult.
        let f = unsafe { lib.get::<unsafe extern "C" fn() -> u32>(name.as_bytes()) }.unwrap();
        // SAFETY: as above.
        assert_eq!(
            unsafe { f() },
            801,
            "{name} must return CUDA_ERROR_NOT_SUPPORTED"
        );
    }
    // cuMemcpy(dst, src, n) called with its real arguments, as a C caller would.
    // SAFETY: the symbol is a C function returning a CUresult; its arguments are ignored.
    let memcpy =
        unsafe { lib.get::<unsafe extern "C" fn(u64, u64, usize) -> u32>(b"cuMemcpy") }.unwrap();
    // SAFETY: as above.
    assert_eq!(unsafe { memcpy(1, 2, 3) }, 801);
    // Through the library, before its cuInit: not initialised.
    // SAFETY: valid out-pointer.
    let count =
        unsafe { lib.get::<unsafe extern "C" fn(*mut i32) -> u32>(b"cuDeviceGetCount") }.unwrap();
    let mut n = 0;
    // SAFETY: valid out-pointer.
    assert_eq!(unsafe { count(&mut n) }, 3);
}
