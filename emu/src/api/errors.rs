//! `cuGetErrorName` and `cuGetErrorString`, and the entry points exported only to say they are
//! not emulated.

use std::ffi::{c_char, CString};
use std::sync::OnceLock;

use crate::result::{
    describe, fail, guard, CUresult, CUDA_ERROR_INVALID_VALUE, CUDA_ERROR_NOT_SUPPORTED,
    CUDA_SUCCESS, ERRORS,
};

/// NUL-terminated names and descriptions, built once and kept for the life of the process (the
/// driver returns pointers to static strings).
fn strings() -> &'static Vec<(CUresult, CString, CString)> {
    static S: OnceLock<Vec<(CUresult, CString, CString)>> = OnceLock::new();
    S.get_or_init(|| {
        ERRORS
            .iter()
            .map(|(c, n, s)| {
                (
                    *c,
                    CString::new(*n).expect("no NUL in names"),
                    CString::new(*s).expect("no NUL in descriptions"),
                )
            })
            .collect()
    })
}

/// Shared body of the two lookups: "If the error code is not recognized,
/// CUDA_ERROR_INVALID_VALUE will be returned and *pStr will be set to the NULL address."
///
/// # Safety
/// `out` must be NULL or valid for a write.
unsafe fn lookup(call: &str, error: CUresult, out: *mut *const c_char, name: bool) -> CUresult {
    if out.is_null() {
        return fail(call, CUDA_ERROR_INVALID_VALUE, "pStr is NULL");
    }
    let found = describe(error).and_then(|_| strings().iter().find(|(c, _, _)| *c == error));
    let p = match found {
        Some((_, n, s)) => {
            if name {
                n.as_ptr()
            } else {
                s.as_ptr()
            }
        }
        None => std::ptr::null(),
    };
    // SAFETY: checked non-null.
    unsafe { *out = p };
    if p.is_null() {
        CUDA_ERROR_INVALID_VALUE
    } else {
        CUDA_SUCCESS
    }
}

/// `cuGetErrorName`: the `cuda.h` name of every code the emulator returns. Needs no
/// initialisation.
///
/// # Safety
/// `out` must be NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuGetErrorName(error: CUresult, out: *mut *const c_char) -> CUresult {
    // SAFETY: forwarded contract.
    guard("cuGetErrorName", || unsafe {
        lookup("cuGetErrorName", error, out, true)
    })
}

/// `cuGetErrorString`: a description of the code.
///
/// # Safety
/// `out` must be NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuGetErrorString(error: CUresult, out: *mut *const c_char) -> CUresult {
    // SAFETY: forwarded contract.
    guard("cuGetErrorString", || unsafe {
        lookup("cuGetErrorString", error, out, false)
    })
}

/// Exports driver entry points the emulator does not implement: each returns
/// `CUDA_ERROR_NOT_SUPPORTED`, never a silent success. They take no arguments in Rust: under
/// the C calling conventions of x86-64 and AArch64 the caller owns its arguments, so a callee
/// that ignores them is sound whatever the caller passed.
macro_rules! not_supported {
    ($($name:ident),* $(,)?) => {
        $(
            #[doc = concat!("`", stringify!($name), "`: not emulated; returns `CUDA_ERROR_NOT_SUPPORTED`.")]
            #[no_mangle]
            pub extern "C" fn $name() -> CUresult {
                guard(stringify!($name), || {
                    fail(stringify!($name), CUDA_ERROR_NOT_SUPPORTED, "not emulated")
                })
            }
        )*
        /// The names of the entry points exported only to return `CUDA_ERROR_NOT_SUPPORTED`.
        pub const NOT_SUPPORTED: &[&str] = &[$(stringify!($name)),*];
    };
}

not_supported![
    cuCtxCreate_v2,
    cuCtxCreate_v4,
    cuCtxDestroy_v2,
    cuCtxPushCurrent_v2,
    cuCtxPopCurrent_v2,
    cuCtxGetDevice,
    cuDevicePrimaryCtxReset_v2,
    cuDevicePrimaryCtxSetFlags_v2,
    cuDeviceGetUuid_v2,
    cuDeviceGetPCIBusId,
    cuMemAllocHost_v2,
    cuMemAllocManaged,
    cuMemAllocPitch_v2,
    cuMemcpy,
    cuMemcpyAsync,
    cuMemcpyDtoD_v2,
    cuMemcpyPeerAsync,
    cuMemsetD8_v2,
    cuMemsetD32_v2,
    cuMemsetD32Async,
    cuMemsetD16Async,
    cuMemPrefetchAsync_v2,
    cuMemHostGetDevicePointer_v2,
    cuMemRetainAllocationHandle,
    cuMemGetAccess,
    cuMemExportToShareableHandle,
    cuMemImportFromShareableHandle,
    cuMemPoolCreate,
    cuMemAllocFromPoolAsync,
    cuDeviceGetDefaultMemPool,
    cuStreamCreateWithPriority,
    cuStreamAddCallback,
    cuLaunchHostFunc,
    cuStreamBeginCapture_v2,
    cuStreamEndCapture,
    cuGraphLaunch,
    cuModuleLoad,
    cuModuleLoadFatBinary,
    cuModuleGetGlobal_v2,
    cuLibraryLoadData,
    cuLaunchCooperativeKernel,
    cuLaunchKernelEx,
    cuFuncGetAttribute,
    cuFuncSetAttribute,
    cuOccupancyMaxActiveBlocksPerMultiprocessor,
    cuPointerGetAttribute,
    cuIpcGetMemHandle,
];
