//! Checked calls (cudarc's `result` layer): every `CUresult` becomes `Ok(())` or an
//! [`Error::Driver`] naming the call and the driver's error name and text.

use std::ffi::CStr;
use std::ptr;

use cudarc::driver::sys::{self, CUresult};

use super::CudaBackend;
use crate::backend::Backend;
use crate::error::{Error, Result};

/// The name of a `CUresult`, asked of the driver (`cuGetErrorName`).
fn error_name(r: CUresult) -> String {
    let mut p: *const std::ffi::c_char = ptr::null();
    // SAFETY: `cuGetErrorName` writes a pointer to a static string or leaves it null.
    let ok = unsafe { sys::cuGetErrorName(r, &mut p) };
    if ok == CUresult::CUDA_SUCCESS && !p.is_null() {
        // SAFETY: the driver returned a NUL-terminated static string.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    } else {
        format!("{r:?}")
    }
}

fn error_string(r: CUresult) -> String {
    let mut p: *const std::ffi::c_char = ptr::null();
    // SAFETY: as in `error_name`.
    let ok = unsafe { sys::cuGetErrorString(r, &mut p) };
    if ok == CUresult::CUDA_SUCCESS && !p.is_null() {
        // SAFETY: the driver returned a NUL-terminated static string.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    } else {
        String::new()
    }
}

/// Checks a driver result.
pub(in crate::backend) fn check(call: &'static str, r: CUresult) -> Result<()> {
    if r == CUresult::CUDA_SUCCESS {
        return Ok(());
    }
    Err(Error::Driver {
        call,
        code: r as u32,
        name: error_name(r),
        detail: error_string(r),
    })
}

/// Checks an allocation's result, turning `CUDA_ERROR_OUT_OF_MEMORY` into
/// [`Error::DeviceOutOfMemory`] with the free and total memory at the time.
pub(super) fn check_alloc(
    b: &CudaBackend,
    call: &'static str,
    requested: u64,
    r: CUresult,
) -> Result<()> {
    if r == CUresult::CUDA_ERROR_OUT_OF_MEMORY {
        let (free, total) = b.mem_info().map(|m| (m.free, m.total)).unwrap_or((0, 0));
        return Err(Error::DeviceOutOfMemory {
            call,
            requested,
            free,
            total,
        });
    }
    check(call, r)
}
