//! The version probe: the oldest driver the backend runs on, and the entry points chosen by
//! the driver's version.

use std::ffi::CStr;

use cudarc::driver::sys::{self, CUresult};

use super::loader::{driver_symbol, unavailable};
use super::result::check;
use crate::error::Result;

/// The oldest driver the backend runs on, as `cuDriverGetVersion` reports it
/// (1000 * major + 10 * minor): CUDA 11.2, for `cuMemAllocAsync` / `cuMemFreeAsync` and the
/// device attribute `CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED` (queried when the backend
/// opens). NVIDIA drivers of branch R460 and later support it.
pub const MIN_DRIVER_VERSION: i32 = 11020;

/// The driver version that added `cuEventElapsedTime_v2`.
const ELAPSED_TIME_V2_VERSION: i32 = 12080;

/// `12080` as `12.8`.
pub(super) fn version_text(v: i32) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

/// The C signature shared by `cuEventElapsedTime` and `cuEventElapsedTime_v2`.
pub(super) type ElapsedTimeFn =
    unsafe extern "C" fn(*mut f32, sys::CUevent, sys::CUevent) -> CUresult;

/// The driver's version (`cuDriverGetVersion`), refused with [`crate::Error::BackendUnavailable`]
/// below [`MIN_DRIVER_VERSION`]. Needs no `cuInit`.
pub(super) fn probe() -> Result<i32> {
    let mut version = 0;
    // SAFETY: valid out-pointer; cuDriverGetVersion needs no cuInit.
    check("cuDriverGetVersion", unsafe {
        sys::cuDriverGetVersion(&mut version)
    })
    .map_err(|e| unavailable(format!("{e}")))?;
    if version < MIN_DRIVER_VERSION {
        return Err(unavailable(format!(
            "the CUDA driver supports CUDA {} (cuDriverGetVersion {version}), and the cuda \
             backend needs CUDA {} or newer (cuDriverGetVersion {MIN_DRIVER_VERSION}, an \
             NVIDIA driver of branch R460 or later): update the NVIDIA driver",
            version_text(version),
            version_text(MIN_DRIVER_VERSION)
        )));
    }
    Ok(version)
}

/// The elapsed-time entry point for a driver of `version`: `cuEventElapsedTime_v2` from CUDA
/// 12.8 on, `cuEventElapsedTime` before (every driver has it), with its name.
pub(super) fn elapsed_time_fn(version: i32) -> Option<(&'static str, ElapsedTimeFn)> {
    let candidates: &[(&'static str, &CStr)] = if version >= ELAPSED_TIME_V2_VERSION {
        &[
            ("cuEventElapsedTime_v2", c"cuEventElapsedTime_v2"),
            ("cuEventElapsedTime", c"cuEventElapsedTime"),
        ]
    } else {
        &[("cuEventElapsedTime", c"cuEventElapsedTime")]
    };
    candidates.iter().find_map(|(name, sym)| {
        // SAFETY: both entry points have the signature `ElapsedTimeFn`
        // (`CUresult (float*, CUevent, CUevent)`).
        unsafe { driver_symbol::<ElapsedTimeFn>(sym) }.map(|f| (*name, f))
    })
}
