//! The `cuda` backend: a thin layer over the CUDA Driver API through cudarc's raw bindings,
//! with libcuda loaded at run time.
//!
//! One function per operation, every `CUresult` checked and turned into [`Error::Driver`] with
//! the call's name and the driver's error name. Policy lives above this module.
//!
//! The crate builds and links with no CUDA installed. Where no driver can be loaded,
//! [`CudaBackend::new`] returns [`Error::BackendUnavailable`] instead of letting cudarc panic.
//! Setting `VRAMSWAP_CUDA_DRIVER` to a library path loads that library first (for the emulated
//! driver, whose soname is `libcuda.so`, so that cudarc's lookup of `libcuda.so` finds it).
//!
//! cudarc is built with the CUDA 13.0 bindings, but the driver may be older: cudarc resolves
//! each entry point by name on first use and panics where the driver lacks it. So every entry
//! point called through `sys::` here exists since CUDA [`MIN_DRIVER_VERSION`] (11.2:
//! `cuMemAllocAsync`, `cuMemFreeAsync` and `CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED` are the
//! newest), [`CudaBackend::new`] refuses an older driver with [`Error::BackendUnavailable`],
//! and the one newer entry point used, `cuEventElapsedTime_v2` (CUDA 12.8), is looked up by
//! hand and replaced by `cuEventElapsedTime` on older drivers.

use std::ffi::{c_void, CStr};
use std::ptr;
use std::sync::OnceLock;

use cudarc::driver::sys::{self, CUresult};

use super::cuda_kernels::KernelModule;
use super::{
    Backend, BackendKind, CastType, DeviceProperties, DevicePtr, Event, MemInfo, PhysHandle, Stream,
};
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
pub(super) fn check(call: &'static str, r: CUresult) -> Result<()> {
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
fn check_alloc(b: &CudaBackend, call: &'static str, requested: u64, r: CUresult) -> Result<()> {
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

fn unavailable(reason: impl Into<String>) -> Error {
    Error::BackendUnavailable {
        backend: "cuda",
        reason: reason.into(),
    }
}

/// Loads the library named by `VRAMSWAP_CUDA_DRIVER`, once, and keeps it loaded for the life of
/// the process, so that the dynamic loader resolves cudarc's later `dlopen("libcuda.so")` to it
/// by soname.
fn preload_driver() -> Result<Option<String>> {
    static PRELOADED: OnceLock<std::result::Result<Option<String>, String>> = OnceLock::new();
    PRELOADED
        .get_or_init(|| {
            let Ok(path) = std::env::var("VRAMSWAP_CUDA_DRIVER") else {
                return Ok(None);
            };
            if path.trim().is_empty() {
                return Ok(None);
            }
            // SAFETY: loading a shared library runs its initialisers; the user named this
            // library as their CUDA driver. RTLD_GLOBAL makes its soname visible to later
            // lookups.
            let lib = unsafe {
                libloading::os::unix::Library::open(
                    Some(&path),
                    libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL,
                )
            }
            .map_err(|e| format!("VRAMSWAP_CUDA_DRIVER={path} could not be loaded: {e}"))?;
            // Never unloaded: cudarc caches function pointers into it.
            std::mem::forget(lib);
            Ok(Some(path))
        })
        .clone()
        .map_err(unavailable)
}

/// The oldest driver the backend runs on, as `cuDriverGetVersion` reports it
/// (1000 * major + 10 * minor): CUDA 11.2, for `cuMemAllocAsync` / `cuMemFreeAsync` and the
/// device attribute `CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED` (queried when the backend
/// opens). NVIDIA drivers of branch R460 and later support it.
pub const MIN_DRIVER_VERSION: i32 = 11020;

/// The driver version that added `cuEventElapsedTime_v2`.
const ELAPSED_TIME_V2_VERSION: i32 = 12080;

/// `12080` as `12.8`.
fn version_text(v: i32) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

/// The C signature shared by `cuEventElapsedTime` and `cuEventElapsedTime_v2`.
type ElapsedTimeFn = unsafe extern "C" fn(*mut f32, sys::CUevent, sys::CUevent) -> CUresult;

/// Looks a driver entry point up by name in the loaded driver: `None` where the driver has no
/// such symbol (cudarc's own bindings would panic there).
///
/// # Safety
/// `F` must be the entry point's C function-pointer type.
unsafe fn driver_symbol<F: Copy>(name: &CStr) -> Option<F> {
    #[cfg(feature = "dynamic-loading")]
    {
        // SAFETY: `culib` is the driver cudarc loaded (its presence was checked in `new` before
        // any driver call); the caller guarantees `F` is the symbol's type.
        unsafe { sys::culib().get::<F>(name.to_bytes_with_nul()) }
            .ok()
            .map(|f| *f)
    }
    #[cfg(not(feature = "dynamic-loading"))]
    {
        // A build that links libcuda: look in the process's global scope, which holds it.
        let this = libloading::os::unix::Library::this();
        // SAFETY: as above; libcuda stays linked for the life of the process, so the pointer
        // outlives the handle.
        unsafe { this.get::<F>(name.to_bytes_with_nul()) }
            .ok()
            .map(|f| *f)
    }
}

/// The elapsed-time entry point for a driver of `version`: `cuEventElapsedTime_v2` from CUDA
/// 12.8 on, `cuEventElapsedTime` before (every driver has it), with its name.
fn elapsed_time_fn(version: i32) -> Option<(&'static str, ElapsedTimeFn)> {
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

/// A CUDA device through the driver API. Contexts are per thread in CUDA, so every call makes
/// the device's primary context current on the calling thread first, unless the driver says it
/// already is (`cuCtxGetCurrent`: another library on the thread may have changed it).
#[derive(Debug)]
pub struct CudaBackend {
    ctx: usize,
    device: sys::CUdevice,
    props: DeviceProperties,
    /// The elapsed-time entry point this driver has, with its name (see `elapsed_time_fn`).
    elapsed_time: Option<(&'static str, ElapsedTimeFn)>,
    /// The kernels' module, loaded in this backend's context at the first kernel launch.
    kernels: OnceLock<KernelModule>,
}

// SAFETY: the primary context handle may be used from any thread once made current there,
// which `bind` does before every call.
unsafe impl Send for CudaBackend {}
// SAFETY: see `Send`; the struct holds no thread-affine state of its own.
unsafe impl Sync for CudaBackend {}

/// Whether libcuda can be opened (with run-time loading; a build that links CUDA has it).
#[cfg(feature = "dynamic-loading")]
fn driver_present() -> bool {
    // SAFETY: only probes whether the library can be opened.
    unsafe { sys::is_culib_present() }
}

/// Whether libcuda can be opened: a build that links CUDA (the `cuda` feature without
/// `dynamic-loading`) has it.
#[cfg(not(feature = "dynamic-loading"))]
fn driver_present() -> bool {
    true
}

impl CudaBackend {
    /// Opens device `ordinal`: loads the driver, initialises it, retains the primary context.
    /// Fails with [`Error::BackendUnavailable`] where there is no driver or no such device.
    pub fn new(ordinal: i32) -> Result<CudaBackend> {
        let preloaded = preload_driver()?;
        if !driver_present() {
            return Err(unavailable(
                "no CUDA driver found (libcuda.so could not be loaded); install the NVIDIA \
                 driver, or set VRAMSWAP_CUDA_DRIVER to the emulated driver for testing",
            ));
        }
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
                return Err(unavailable(format!(
                    "device {ordinal} requested, but the driver reports {count} device(s)"
                )));
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

    fn alloc_prop(&self) -> sys::CUmemAllocationProp {
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
    fn bind(&self) -> Result<Bound> {
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

    fn stream(s: Stream) -> sys::CUstream {
        s.0 as sys::CUstream
    }

    fn event(e: Event) -> sys::CUevent {
        e.0 as sys::CUevent
    }

    /// The kernels' module, loaded on first use (the context must be bound). Two threads racing
    /// here may both load it; the loser unloads its copy.
    fn kernels(&self) -> Result<&KernelModule> {
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
struct Bound {
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

impl Backend for CudaBackend {
    fn properties(&self) -> &DeviceProperties {
        &self.props
    }

    fn mem_info(&self) -> Result<MemInfo> {
        let _bound = self.bind()?;
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: valid out-pointers; context bound.
        check("cuMemGetInfo_v2", unsafe {
            sys::cuMemGetInfo_v2(&mut free, &mut total)
        })?;
        Ok(MemInfo {
            free: free as u64,
            total: total as u64,
        })
    }

    fn alloc(&self, bytes: u64) -> Result<DevicePtr> {
        let _bound = self.bind()?;
        let mut p = 0;
        // SAFETY: valid out-pointer; context bound.
        let r = unsafe { sys::cuMemAlloc_v2(&mut p, bytes as usize) };
        check_alloc(self, "cuMemAlloc_v2", bytes, r)?;
        Ok(DevicePtr(p))
    }

    fn free(&self, ptr: DevicePtr) -> Result<()> {
        let _bound = self.bind()?;
        // SAFETY: the driver validates the pointer and reports an error for a bad one.
        check("cuMemFree_v2", unsafe { sys::cuMemFree_v2(ptr.0) })
    }

    fn alloc_async(&self, bytes: u64, stream: Stream) -> Result<DevicePtr> {
        let _bound = self.bind()?;
        let mut p = 0;
        // SAFETY: valid out-pointer; the stream handle is the caller's.
        let r = unsafe { sys::cuMemAllocAsync(&mut p, bytes as usize, Self::stream(stream)) };
        check_alloc(self, "cuMemAllocAsync", bytes, r)?;
        Ok(DevicePtr(p))
    }

    fn free_async(&self, ptr: DevicePtr, stream: Stream) -> Result<()> {
        let _bound = self.bind()?;
        // SAFETY: the driver validates the pointer.
        check("cuMemFreeAsync", unsafe {
            sys::cuMemFreeAsync(ptr.0, Self::stream(stream))
        })
    }

    fn reserve(&self, bytes: u64) -> Result<DevicePtr> {
        let _bound = self.bind()?;
        let mut p = 0;
        // SAFETY: valid out-pointer; alignment 0 = granularity, no fixed address.
        check("cuMemAddressReserve", unsafe {
            sys::cuMemAddressReserve(&mut p, bytes as usize, 0, 0, 0)
        })?;
        Ok(DevicePtr(p))
    }

    fn free_reservation(&self, va: DevicePtr, bytes: u64) -> Result<()> {
        let _bound = self.bind()?;
        // SAFETY: the driver validates the range.
        check("cuMemAddressFree", unsafe {
            sys::cuMemAddressFree(va.0, bytes as usize)
        })
    }

    fn create_physical(&self, bytes: u64) -> Result<PhysHandle> {
        let _bound = self.bind()?;
        let prop = self.alloc_prop();
        let mut h = 0;
        // SAFETY: `prop` is a valid pinned-device description; valid out-pointer.
        let r = unsafe { sys::cuMemCreate(&mut h, bytes as usize, &prop, 0) };
        check_alloc(self, "cuMemCreate", bytes, r)?;
        Ok(PhysHandle(h))
    }

    fn release_physical(&self, handle: PhysHandle) -> Result<()> {
        let _bound = self.bind()?;
        // SAFETY: the driver validates the handle.
        check("cuMemRelease", unsafe { sys::cuMemRelease(handle.0) })
    }

    fn map(&self, va: DevicePtr, bytes: u64, handle: PhysHandle) -> Result<()> {
        let _bound = self.bind()?;
        // SAFETY: the driver validates the range and handle; offset must be 0.
        check("cuMemMap", unsafe {
            sys::cuMemMap(va.0, bytes as usize, 0, handle.0, 0)
        })?;
        let desc = sys::CUmemAccessDesc {
            location: self.alloc_prop().location,
            flags: sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
        };
        // SAFETY: one valid descriptor for the range just mapped.
        let r = unsafe { sys::cuMemSetAccess(va.0, bytes as usize, &desc, 1) };
        if let Err(e) = check("cuMemSetAccess", r) {
            // SAFETY: undoes the mapping made above so no half-made state remains.
            unsafe {
                let _ = sys::cuMemUnmap(va.0, bytes as usize);
            }
            return Err(e);
        }
        Ok(())
    }

    fn unmap(&self, va: DevicePtr, bytes: u64) -> Result<()> {
        let _bound = self.bind()?;
        // SAFETY: the driver validates the range.
        check("cuMemUnmap", unsafe {
            sys::cuMemUnmap(va.0, bytes as usize)
        })
    }

    fn host_alloc_pinned(&self, bytes: u64) -> Result<*mut u8> {
        let _bound = self.bind()?;
        let mut p: *mut c_void = ptr::null_mut();
        // SAFETY: valid out-pointer; PORTABLE makes it pinned for all contexts.
        let r =
            unsafe { sys::cuMemHostAlloc(&mut p, bytes as usize, sys::CU_MEMHOSTALLOC_PORTABLE) };
        check("cuMemHostAlloc", r)?;
        Ok(p as *mut u8)
    }

    unsafe fn host_free_pinned(&self, ptr: *mut u8) -> Result<()> {
        let _bound = self.bind()?;
        // SAFETY: the caller passes a pointer from `host_alloc_pinned` no copy still uses.
        check("cuMemFreeHost", unsafe {
            sys::cuMemFreeHost(ptr as *mut c_void)
        })
    }

    unsafe fn host_register(&self, ptr: *mut u8, bytes: u64, read_only: bool) -> Result<()> {
        // "Using this flag with a current context associated with a device that does not have
        // this attribute set will cause cuMemHostRegister to error with
        // CUDA_ERROR_NOT_SUPPORTED" (CU_MEMHOSTREGISTER_READ_ONLY): say why before asking.
        if read_only && !self.props.read_only_host_register {
            return Err(Error::Unsupported(format!(
                "{} cannot register host memory read-only \
                 (CU_DEVICE_ATTRIBUTE_READ_ONLY_HOST_REGISTER_SUPPORTED is 0), which direct \
                 loading of mapped weight files needs; load without `direct` (into the pinned \
                 arena) instead",
                self.props.name
            )));
        }
        let _bound = self.bind()?;
        let mut flags = sys::CU_MEMHOSTREGISTER_PORTABLE;
        if read_only {
            flags |= sys::CU_MEMHOSTREGISTER_READ_ONLY;
        }
        // SAFETY: the caller guarantees the range is a valid mapping for as long as registered.
        check("cuMemHostRegister_v2", unsafe {
            sys::cuMemHostRegister_v2(ptr as *mut c_void, bytes as usize, flags)
        })
    }

    unsafe fn host_unregister(&self, ptr: *mut u8) -> Result<()> {
        let _bound = self.bind()?;
        // SAFETY: the caller guarantees no copy still uses the range.
        check("cuMemHostUnregister", unsafe {
            sys::cuMemHostUnregister(ptr as *mut c_void)
        })
    }

    fn stream_create(&self) -> Result<Stream> {
        let _bound = self.bind()?;
        let mut s: sys::CUstream = ptr::null_mut();
        // SAFETY: valid out-pointer.
        check("cuStreamCreate", unsafe {
            sys::cuStreamCreate(&mut s, sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32)
        })?;
        Ok(Stream(s as u64))
    }

    fn stream_destroy(&self, stream: Stream) -> Result<()> {
        let _bound = self.bind()?;
        // SAFETY: the driver validates the handle.
        check("cuStreamDestroy_v2", unsafe {
            sys::cuStreamDestroy_v2(Self::stream(stream))
        })
    }

    fn stream_synchronize(&self, stream: Stream) -> Result<()> {
        let _bound = self.bind()?;
        // SAFETY: the driver validates the handle.
        check("cuStreamSynchronize", unsafe {
            sys::cuStreamSynchronize(Self::stream(stream))
        })
    }

    fn stream_query(&self, stream: Stream) -> Result<bool> {
        let _bound = self.bind()?;
        // SAFETY: the driver validates the handle.
        let r = unsafe { sys::cuStreamQuery(Self::stream(stream)) };
        if r == CUresult::CUDA_ERROR_NOT_READY {
            return Ok(false);
        }
        check("cuStreamQuery", r)?;
        Ok(true)
    }

    fn event_create(&self, timing: bool) -> Result<Event> {
        let _bound = self.bind()?;
        let flags = if timing {
            sys::CUevent_flags::CU_EVENT_DEFAULT as u32
        } else {
            sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32
        };
        let mut e: sys::CUevent = ptr::null_mut();
        // SAFETY: valid out-pointer.
        check("cuEventCreate", unsafe {
            sys::cuEventCreate(&mut e, flags)
        })?;
        Ok(Event(e as u64))
    }

    fn event_destroy(&self, event: Event) -> Result<()> {
        let _bound = self.bind()?;
        // SAFETY: the driver validates the handle.
        check("cuEventDestroy_v2", unsafe {
            sys::cuEventDestroy_v2(Self::event(event))
        })
    }

    fn event_record(&self, event: Event, stream: Stream) -> Result<()> {
        let _bound = self.bind()?;
        // SAFETY: the driver validates the handles.
        check("cuEventRecord", unsafe {
            sys::cuEventRecord(Self::event(event), Self::stream(stream))
        })
    }

    fn event_query(&self, event: Event) -> Result<bool> {
        let _bound = self.bind()?;
        // SAFETY: the driver validates the handle.
        let r = unsafe { sys::cuEventQuery(Self::event(event)) };
        if r == CUresult::CUDA_ERROR_NOT_READY {
            return Ok(false);
        }
        check("cuEventQuery", r)?;
        Ok(true)
    }

    fn event_synchronize(&self, event: Event) -> Result<()> {
        let _bound = self.bind()?;
        // SAFETY: the driver validates the handle.
        check("cuEventSynchronize", unsafe {
            sys::cuEventSynchronize(Self::event(event))
        })
    }

    fn stream_wait_event(&self, stream: Stream, event: Event) -> Result<()> {
        let _bound = self.bind()?;
        // SAFETY: the driver validates the handles.
        check("cuStreamWaitEvent", unsafe {
            sys::cuStreamWaitEvent(Self::stream(stream), Self::event(event), 0)
        })
    }

    fn event_elapsed_ms(&self, start: Event, end: Event) -> Result<f32> {
        let Some((name, f)) = self.elapsed_time else {
            return Err(Error::Unsupported(format!(
                "the CUDA driver (CUDA {}) exports neither cuEventElapsedTime_v2 nor \
                 cuEventElapsedTime",
                version_text(self.props.driver_version)
            )));
        };
        let _bound = self.bind()?;
        let mut ms = 0f32;
        // SAFETY: `f` is the driver's cuEventElapsedTime(_v2), looked up with its C signature;
        // valid out-pointer; the driver validates the handles.
        check(name, unsafe {
            f(&mut ms, Self::event(start), Self::event(end))
        })?;
        Ok(ms)
    }

    fn synchronize(&self) -> Result<()> {
        let _bound = self.bind()?;
        // SAFETY: plain driver call with the context bound.
        check("cuCtxSynchronize", unsafe { sys::cuCtxSynchronize() })
    }

    unsafe fn copy_htod_async(
        &self,
        dst: DevicePtr,
        src: *const u8,
        bytes: u64,
        stream: Stream,
    ) -> Result<()> {
        let _bound = self.bind()?;
        // SAFETY: the caller keeps `src` valid until the copy completes.
        check("cuMemcpyHtoDAsync_v2", unsafe {
            sys::cuMemcpyHtoDAsync_v2(
                dst.0,
                src as *const c_void,
                bytes as usize,
                Self::stream(stream),
            )
        })
    }

    unsafe fn copy_dtoh_async(
        &self,
        dst: *mut u8,
        src: DevicePtr,
        bytes: u64,
        stream: Stream,
    ) -> Result<()> {
        let _bound = self.bind()?;
        // SAFETY: the caller keeps `dst` valid and untouched until the copy completes.
        check("cuMemcpyDtoHAsync_v2", unsafe {
            sys::cuMemcpyDtoHAsync_v2(
                dst as *mut c_void,
                src.0,
                bytes as usize,
                Self::stream(stream),
            )
        })
    }

    fn copy_dtod_async(
        &self,
        dst: DevicePtr,
        src: DevicePtr,
        bytes: u64,
        stream: Stream,
    ) -> Result<()> {
        let _bound = self.bind()?;
        // SAFETY: device addresses are validated by the driver.
        check("cuMemcpyDtoDAsync_v2", unsafe {
            sys::cuMemcpyDtoDAsync_v2(dst.0, src.0, bytes as usize, Self::stream(stream))
        })
    }

    fn memset_d8_async(&self, dst: DevicePtr, value: u8, bytes: u64, stream: Stream) -> Result<()> {
        let _bound = self.bind()?;
        // SAFETY: device addresses are validated by the driver.
        check("cuMemsetD8Async", unsafe {
            sys::cuMemsetD8Async(dst.0, value, bytes as usize, Self::stream(stream))
        })
    }

    fn checksum_async(
        &self,
        src: DevicePtr,
        bytes: u64,
        out: DevicePtr,
        stream: Stream,
    ) -> Result<()> {
        let _bound = self.bind()?;
        self.kernels()?.checksum(src, bytes, out, stream)
    }

    fn fill_u32_async(
        &self,
        dst: DevicePtr,
        bytes: u64,
        pattern: u32,
        stream: Stream,
    ) -> Result<()> {
        let _bound = self.bind()?;
        self.kernels()?.fill_u32(dst, bytes, pattern, stream)
    }

    fn cast_async(
        &self,
        src: DevicePtr,
        from: CastType,
        dst: DevicePtr,
        to: CastType,
        count: u64,
        stream: Stream,
    ) -> Result<()> {
        let _bound = self.bind()?;
        self.kernels()?.cast(src, from, dst, to, count, stream)
    }
}
