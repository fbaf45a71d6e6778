//! The device: [`CudaBackend`] opens it, holds its primary context and binds that context to
//! the calling thread for each call.

use std::ffi::CStr;
use std::ptr;
use std::sync::OnceLock;

use cudarc::driver::sys;

use super::loader::{driver_present, preload_driver, unavailable};
use super::result::check;
use super::version::{self, elapsed_time_fn, ElapsedTimeFn};
use crate::backend::cuda_kernels::KernelModule;
use crate::backend::{BackendKind, DeviceProperties, Event, Stream};
use crate::error::Result;

/// A CUDA device through the driver API. Contexts are per thread in CUDA, so every call makes
/// the device's primary context current on the calling thread first, unless the driver says it
/// already is (`cuCtxGetCurrent`: another library on the thread may have changed it).
#[derive(Debug)]
pub struct CudaBackend {
    ctx: usize,
    device: sys::CUdevice,
    pub(super) props: DeviceProperties,
    /// The elapsed-time entry point this driver has, with its name (see `elapsed_time_fn`).
    pub(super) elapsed_time: Option<(&'static str, ElapsedTimeFn)>,
    /// The kernels' module, loaded in this backend's context at the first kernel launch.
    kernels: OnceLock<KernelModule>,
    /// The handles it made and has not destroyed (see `handles`).
    pub(super) live: super::handles::LiveHandles,
}

// SAFETY: the primary context handle may be used from any thread once made current there,
// which `bind` does before every call.
unsafe impl Send for CudaBackend {}
// SAFETY: see `Send`; the struct holds no thread-affine state of its own.
unsafe impl Sync for CudaBackend {}

impl CudaBackend {
    /// Opens device `ordinal`: loads the driver, initialises it, retains the primary context.
    /// Fails with [`Error::BackendUnavailable`](crate::Error::BackendUnavailable) where there is no driver or no such device.
    pub fn new(ordinal: i32) -> Result<CudaBackend> {
        let preloaded = preload_driver()?;
        if !driver_present() {
            return Err(unavailable(
                "no CUDA driver found (libcuda.so could not be loaded); install the NVIDIA \
                 driver, or set VRAMSWAP_CUDA_DRIVER to the emulated driver for testing",
            ));
        }
        let version = version::probe()?;
        // SAFETY: plain driver calls with valid out-pointers.
        unsafe {
            check("cuInit", sys::cuInit(0)).map_err(|e| unavailable(format!("{e}")))?;
            let mut count = 0;
            check("cuDeviceGetCount", sys::cuDeviceGetCount(&mut count))
                .map_err(|e| unavailable(format!("{e}")))?;
            if count == 0 {
                return Err(unavailable("the CUDA driver reports no device"));
            }
            if ordinal < 0 || ordinal >= count {
                return Err(crate::Error::InvalidDevice {
                    backend: "cuda",
                    ordinal,
                    count: count as u32,
                });
            }
            let mut device = 0;
            check("cuDeviceGet", sys::cuDeviceGet(&mut device, ordinal))?;
            let mut ctx: sys::CUcontext = ptr::null_mut();
            check(
                "cuDevicePrimaryCtxRetain",
                sys::cuDevicePrimaryCtxRetain(&mut ctx, device),
            )?;
            let mut b = CudaBackend {
                ctx: ctx as usize,
                device,
                props: DeviceProperties {
                    backend: BackendKind::Cuda,
                    name: String::new(),
                    ordinal,
                    emulated: preloaded.is_some(),
                    total_memory: 0,
                    vmm_supported: false,
                    vmm_granularity: 0,
                    copy_engines: 0,
                    compute_capability: (0, 0),
                    driver_version: version,
                    memory_pools: false,
                    read_only_host_register: false,
                    host_visible: false,
                },
                elapsed_time: elapsed_time_fn(version),
                kernels: OnceLock::new(),
                live: Default::default(),
            };
            let _bound = b.bind()?;
            b.props = b.query_properties(ordinal, preloaded.is_some(), version)?;
            Ok(b)
        }
    }

    fn attribute(&self, attr: sys::CUdevice_attribute) -> Result<i32> {
        let mut v = 0;
        // SAFETY: valid out-pointer and device.
        check("cuDeviceGetAttribute", unsafe {
            sys::cuDeviceGetAttribute(&mut v, attr, self.device)
        })?;
        Ok(v)
    }

    fn query_properties(
        &self,
        ordinal: i32,
        preloaded: bool,
        version: i32,
    ) -> Result<DeviceProperties> {
        use sys::CUdevice_attribute as A;
        let mut name = [0 as std::ffi::c_char; 256];
        // SAFETY: the buffer holds 256 bytes and the driver NUL-terminates within that length.
        check("cuDeviceGetName", unsafe {
            sys::cuDeviceGetName(name.as_mut_ptr(), name.len() as i32, self.device)
        })?;
        // SAFETY: NUL-terminated by the driver (checked above).
        let name = unsafe { CStr::from_ptr(name.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        let mut total = 0usize;
        // SAFETY: valid out-pointer.
        check("cuDeviceTotalMem_v2", unsafe {
            sys::cuDeviceTotalMem_v2(&mut total, self.device)
        })?;
        let vmm = self.attribute(A::CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED)? != 0;
        let granularity = if vmm {
            let prop = self.alloc_prop();
            let mut g = 0usize;
            // SAFETY: `prop` describes pinned device memory on this device; valid out-pointer.
            check("cuMemGetAllocationGranularity", unsafe {
                sys::cuMemGetAllocationGranularity(
                    &mut g,
                    &prop,
                    sys::CUmemAllocationGranularity_flags::CU_MEM_ALLOC_GRANULARITY_MINIMUM,
                )
            })?;
            g as u64
        } else {
            0
        };
        let emulated = preloaded || name.to_ascii_lowercase().contains("emulated");
        Ok(DeviceProperties {
            backend: BackendKind::Cuda,
            name,
            ordinal,
            emulated,
            total_memory: total as u64,
            vmm_supported: vmm,
            vmm_granularity: granularity,
            copy_engines: self.attribute(A::CU_DEVICE_ATTRIBUTE_ASYNC_ENGINE_COUNT)? as u32,
            compute_capability: (
                self.attribute(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
                self.attribute(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
            ),
            driver_version: version,
            memory_pools: self.attribute(A::CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED)? != 0,
            read_only_host_register: self
                .attribute(A::CU_DEVICE_ATTRIBUTE_READ_ONLY_HOST_REGISTER_SUPPORTED)?
                != 0,
            host_visible: false,
        })
    }

    pub(super) fn alloc_prop(&self) -> sys::CUmemAllocationProp {
        // SAFETY: an all-zero `CUmemAllocationProp` is a valid value (plain C struct of
        // integers and a null pointer); the fields that matter are set below.
        let mut prop: sys::CUmemAllocationProp = unsafe { std::mem::zeroed() };
        prop.type_ = sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED;
        prop.location.type_ = sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE;
        prop.location.id = self.device;
        prop
    }

    /// Makes the primary context current on this thread (contexts are per thread) for one
    /// backend call, and puts back what was current before when the returned guard goes. The
    /// driver's current context is asked each time, not remembered: another library on the
    /// same thread (PyTorch, a user's own driver calls) may have set another context, or none,
    /// since our last call; and leaving ours current would switch theirs (the CUDA runtime
    /// uses whatever context is current, so PyTorch on another device would follow it).
    /// `cuCtxGetCurrent` and `cuCtxSetCurrent` are thread-local operations in the driver.
    pub(super) fn bind(&self) -> Result<Bound> {
        let mut cur: sys::CUcontext = ptr::null_mut();
        // SAFETY: valid out-pointer.
        check("cuCtxGetCurrent", unsafe { sys::cuCtxGetCurrent(&mut cur) })?;
        if cur as usize == self.ctx {
            return Ok(Bound { prev: None });
        }
        // SAFETY: `ctx` is the retained primary context of this device.
        check("cuCtxSetCurrent", unsafe {
            sys::cuCtxSetCurrent(self.ctx as sys::CUcontext)
        })?;
        Ok(Bound { prev: Some(cur) })
    }

    pub(super) fn stream(s: Stream) -> sys::CUstream {
        s.0 as sys::CUstream
    }

    pub(super) fn event(e: Event) -> sys::CUevent {
        e.0 as sys::CUevent
    }

    /// The kernels' module, loaded on first use (the context must be bound). Two threads racing
    /// here may both load it; the loser unloads its copy.
    pub(super) fn kernels(&self) -> Result<&KernelModule> {
        if let Some(k) = self.kernels.get() {
            return Ok(k);
        }
        if let Err(extra) = self
            .kernels
            .set(KernelModule::load(self.props.driver_version)?)
        {
            // The copy that lost the race was never launched from.
            extra.unload();
        }
        Ok(self.kernels.get().expect("set above"))
    }
}

/// The primary context bound for one backend call (see `CudaBackend::bind`); puts back the
/// context that was current before (another library's, or none) when it goes.
pub(super) struct Bound {
    prev: Option<sys::CUcontext>,
}

impl Drop for Bound {
    fn drop(&mut self) {
        if let Some(prev) = self.prev {
            // SAFETY: `prev` was current on this thread when the call began (NULL, or a context
            // its owner keeps alive while it is current); putting it back is a thread-local
            // driver operation. Nothing useful can be done with an error here.
            let _ = unsafe { sys::cuCtxSetCurrent(prev) };
        }
    }
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        if let Some(k) = self.kernels.take() {
            // The module belongs to the primary context, which must be current to unload it.
            // The reference does not promise that launches still queued keep the module, so
            // wait for the context's work first (launches may have used any stream, destroyed
            // ones included); an error of that work belongs to it, not to the unload.
            if let Ok(_bound) = self.bind() {
                // SAFETY: plain driver call with the context bound.
                let _ = unsafe { sys::cuCtxSynchronize() };
                k.unload();
            }
        }
        // SAFETY: releases the reference retained in `new`.
        unsafe {
            let _ = sys::cuDevicePrimaryCtxRelease_v2(self.device);
        }
    }
}
