//! An emulated CUDA driver (`libcuda.so`) over vramswap's simulated device.
//!
//! Built as `libvramswap_cuda_emu.so` with the ELF soname `libcuda.so`: loading it before the
//! first driver call (the `cuda` backend does so when `VRAMSWAP_CUDA_DRIVER` names it) makes
//! cudarc's run-time lookup of `libcuda.so` resolve to it, so the `cuda` backend runs in CI
//! with no GPU. It exports, with their real C ABI and names, the driver functions the backend
//! calls, over the same [`vramswap_sim::SimDevice`] the `sim` backend uses, and enforces what
//! NVIDIA's CUDA Driver API reference documents (each rule cites it where it is enforced):
//!
//! - every call before `cuInit` gives `CUDA_ERROR_NOT_INITIALIZED`;
//! - contexts are per thread: a call that needs one with none current on the calling thread
//!   gives `CUDA_ERROR_INVALID_CONTEXT`;
//! - allocation errors, VMM granularity, `cuMemMap` offset 0, access only after
//!   `cuMemSetAccess`, unmap/free order, asynchronous copies stream-ordered whether the host
//!   side is pinned or pageable (a pageable one "might be synchronous": no more is given),
//!   `CUDA_ERROR_NOT_READY` from queries while work is pending;
//! - PTX modules: `.entry` kernels found by name, launches checked against the declared
//!   parameters, the project's kernels run by their Rust implementations.
//!
//! Functions it does not implement return `CUDA_ERROR_NOT_SUPPORTED`
//! ([`api::errors::NOT_SUPPORTED`]). Controls: `VRAMSWAP_EMU_CONF`, `VRAMSWAP_EMU_FAULTS`,
//! `VRAMSWAP_EMU_REPORT`, `VRAMSWAP_EMU_TRACE` (see the README, "Testing without a GPU").
//! What it cannot show: real timing, real kernels (PTX is parsed, not executed), driver bugs.

#![warn(missing_docs)]

pub mod api;
pub mod module;
pub mod report;
pub mod result;
pub mod state;
pub mod types;

pub use api::context::{
    attribute_value, init_with_device, init_with_device_and_options, DRIVER_VERSION,
};
pub use api::context::{
    cuCtxGetCurrent, cuCtxSetCurrent, cuCtxSynchronize, cuDeviceGet, cuDeviceGetAttribute,
    cuDeviceGetCount, cuDeviceGetName, cuDevicePrimaryCtxRelease_v2, cuDevicePrimaryCtxRetain,
    cuDeviceTotalMem_v2, cuDriverGetVersion, cuInit,
};
pub use api::errors::{cuGetErrorName, cuGetErrorString, NOT_SUPPORTED};
pub use api::memory::*;
pub use api::module::{
    cuLaunchKernel, cuModuleGetFunction, cuModuleLoadData, cuModuleLoadDataEx, cuModuleUnload,
};
pub use api::stream::*;
pub use report::{report_json, vramswap_emu_report};
pub use result::CUresult;
pub use state::{EmuOptions, SYMBOL_VERSIONS};
