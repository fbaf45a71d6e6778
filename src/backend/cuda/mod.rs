//! The `cuda` backend: a thin layer over the CUDA Driver API through cudarc's raw bindings,
//! with libcuda loaded at run time.
//!
//! One function per operation, every `CUresult` checked and turned into [`Error::Driver`](crate::Error::Driver) with
//! the call's name and the driver's error name. Policy lives above this module.
//!
//! The crate builds and links with no CUDA installed. Where no driver can be loaded,
//! [`CudaBackend::new`] returns [`Error::BackendUnavailable`](crate::Error::BackendUnavailable) instead of letting cudarc panic.
//! Setting `VRAMSWAP_CUDA_DRIVER` to a library path loads that library first (for the emulated
//! driver, whose soname is `libcuda.so`, so that cudarc's lookup of `libcuda.so` finds it).
//!
//! cudarc is built with the CUDA 13.0 bindings, but the driver may be older: cudarc resolves
//! each entry point by name on first use and panics where the driver lacks it. So every entry
//! point called through `sys::` here exists since CUDA [`MIN_DRIVER_VERSION`] (11.2:
//! `cuMemAllocAsync`, `cuMemFreeAsync` and `CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED` are the
//! newest), [`CudaBackend::new`] refuses an older driver with [`Error::BackendUnavailable`](crate::Error::BackendUnavailable),
//! and the one newer entry point used, `cuEventElapsedTime_v2` (CUDA 12.8), is looked up by
//! hand and replaced by `cuEventElapsedTime` on older drivers.
//!
//! The module follows cudarc's layers (its `sys` bindings are used directly):
//!
//! - `loader`: loading the driver, and entry points looked up by name;
//! - `version`: the version probe and [`MIN_DRIVER_VERSION`];
//! - `result`: checked calls, `CUresult` to [`crate::Error`];
//! - `device`: [`CudaBackend`], its primary context and the per-call binding;
//! - `handles`: the streams, events and physical allocations it made, checked before the
//!   driver sees a handle (the driver crashes on an invalid one);
//! - `ops`: the [`crate::Backend`] implementation, one method per driver operation.

mod device;
mod handles;
mod loader;
mod ops;
mod result;
mod version;

pub use device::CudaBackend;
pub(super) use result::check;
pub use version::MIN_DRIVER_VERSION;
