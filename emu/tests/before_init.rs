//! Calls before `cuInit` (a test binary of its own: the driver's state is process-wide).

use std::ffi::c_void;

use vramswap_cuda_emu as emu;
use vramswap_cuda_emu::result::*;

#[test]
fn every_call_before_cuinit_is_not_initialized_and_error_names_still_work() {
    // SAFETY: plain calls with valid out-pointers.
    unsafe {
        let (mut n, mut dev, mut p) = (0, 0, 0u64);
        let mut ctx: *mut c_void = std::ptr::null_mut();
        assert_eq!(emu::cuDeviceGetCount(&mut n), CUDA_ERROR_NOT_INITIALIZED);
        assert_eq!(emu::cuDeviceGet(&mut dev, 0), CUDA_ERROR_NOT_INITIALIZED);
        assert_eq!(
            emu::cuDevicePrimaryCtxRetain(&mut ctx, 0),
            CUDA_ERROR_NOT_INITIALIZED
        );
        assert_eq!(emu::cuCtxSetCurrent(ctx), CUDA_ERROR_NOT_INITIALIZED);
        assert_eq!(emu::cuMemAlloc_v2(&mut p, 4096), CUDA_ERROR_NOT_INITIALIZED);
        assert_eq!(emu::cuCtxSynchronize(), CUDA_ERROR_NOT_INITIALIZED);
        // Needs no initialisation, as on the real driver.
        let mut v = 0;
        assert_eq!(emu::cuDriverGetVersion(&mut v), CUDA_SUCCESS);
        assert_eq!(v, 13000);
        let mut s = std::ptr::null();
        assert_eq!(
            emu::cuGetErrorName(CUDA_ERROR_NOT_INITIALIZED, &mut s),
            CUDA_SUCCESS
        );
        assert_eq!(
            std::ffi::CStr::from_ptr(s).to_str().unwrap(),
            "CUDA_ERROR_NOT_INITIALIZED"
        );
        // Flags other than 0 are refused and leave the driver uninitialised.
        assert_eq!(emu::cuInit(1), CUDA_ERROR_INVALID_VALUE);
        assert_eq!(emu::cuDeviceGetCount(&mut n), CUDA_ERROR_NOT_INITIALIZED);
    }
    assert!(emu::report_json().contains("\"initialized\":false"));
}
