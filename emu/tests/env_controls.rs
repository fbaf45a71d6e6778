//! `VRAMSWAP_EMU_CONF` and `VRAMSWAP_EMU_FAULTS`, read at `cuInit` (a test binary of its own:
//! the variables are set before the process's only `cuInit`).

use std::ffi::c_void;

use vramswap_cuda_emu as emu;
use vramswap_cuda_emu::result::*;

#[test]
fn configuration_and_faults_come_from_the_environment() {
    std::env::set_var(
        "VRAMSWAP_EMU_CONF",
        "capacity_mb:64,copy_engines:1,name:test emulated GPU",
    );
    std::env::set_var("VRAMSWAP_EMU_FAULTS", "alloc:2");
    // SAFETY: plain driver calls with valid out-pointers.
    unsafe {
        assert_eq!(emu::cuInit(0), CUDA_SUCCESS);
        let mut ctx: *mut c_void = std::ptr::null_mut();
        assert_eq!(emu::cuDevicePrimaryCtxRetain(&mut ctx, 0), CUDA_SUCCESS);
        assert_eq!(emu::cuCtxSetCurrent(ctx), CUDA_SUCCESS);
        let (mut total, mut engines) = (0usize, 0);
        assert_eq!(emu::cuDeviceTotalMem_v2(&mut total, 0), CUDA_SUCCESS);
        assert_eq!(total, 64 << 20);
        assert_eq!(emu::cuDeviceGetAttribute(&mut engines, 40, 0), CUDA_SUCCESS);
        assert_eq!(engines, 1);
        let mut name = [0 as std::ffi::c_char; 64];
        assert_eq!(emu::cuDeviceGetName(name.as_mut_ptr(), 64, 0), CUDA_SUCCESS);
        let name = std::ffi::CStr::from_ptr(name.as_ptr()).to_string_lossy();
        assert_eq!(name, "test emulated GPU");
        // The second allocation fails as planted; the ones around it succeed.
        let (mut a, mut b, mut c) = (0u64, 0u64, 0u64);
        assert_eq!(emu::cuMemAlloc_v2(&mut a, 4096), CUDA_SUCCESS);
        assert_eq!(emu::cuMemAlloc_v2(&mut b, 4096), CUDA_ERROR_OUT_OF_MEMORY);
        assert_eq!(emu::cuMemAlloc_v2(&mut c, 4096), CUDA_SUCCESS);
        assert_eq!(
            emu::cuMemAlloc_v2(&mut b, 65 << 20),
            CUDA_ERROR_OUT_OF_MEMORY
        );
        assert_eq!(emu::cuMemFree_v2(a), CUDA_SUCCESS);
        assert_eq!(emu::cuMemFree_v2(c), CUDA_SUCCESS);
        assert_eq!(emu::cuDevicePrimaryCtxRelease_v2(0), CUDA_SUCCESS);
        // Released to zero: the context is gone for this thread too.
        assert_eq!(emu::cuMemAlloc_v2(&mut a, 4096), CUDA_ERROR_INVALID_CONTEXT);
        assert_eq!(
            emu::cuDevicePrimaryCtxRelease_v2(0),
            CUDA_ERROR_INVALID_CONTEXT
        );
    }
    assert!(emu::report_json().contains("\"clean\":true"));
}
