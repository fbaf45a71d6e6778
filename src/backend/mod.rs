//! The backend: one trait over the few driver operations vramswap needs, with a `cuda`
//! implementation (cudarc's driver API, libcuda loaded at run time) and a `sim` implementation
//! (a simulated device in host memory).
//!
//! Handles are plain numbers: a [`DevicePtr`] is a device address, a [`Stream`] or [`Event`] is
//! the driver's handle value (`CUstream`, `CUevent` on CUDA; 0 is the NULL/default stream), a
//! [`PhysHandle`] is a `CUmemGenericAllocationHandle`. Everything above this module is written
//! against `Arc<dyn Backend>` and tested on `sim`.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use crate::error::{Error, Result};

pub mod cuda;
pub mod cuda_kernels;
pub mod sim;

pub use vramswap_sim::CastType;

/// A device address. Never dereferenced on the host.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
pub struct DevicePtr(pub u64);

impl DevicePtr {
    /// The address `bytes` past this one.
    pub fn offset(self, bytes: u64) -> DevicePtr {
        DevicePtr(self.0 + bytes)
    }
}

impl fmt::Debug for DevicePtr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DevicePtr({:#x})", self.0)
    }
}

impl fmt::Display for DevicePtr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// A stream handle; [`Stream::DEFAULT`] is the NULL stream.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize)]
pub struct Stream(pub u64);

impl Stream {
    /// The NULL (default) stream.
    pub const DEFAULT: Stream = Stream(0);
}

/// An event handle.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize)]
pub struct Event(pub u64);

/// A physical device allocation of the virtual-memory API.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize)]
pub struct PhysHandle(pub u64);

/// Which implementation a backend is.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// The CUDA driver (real, or the emulated driver).
    Cuda,
    /// The simulated device.
    Sim,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Cuda => "cuda",
            BackendKind::Sim => "sim",
        })
    }
}

/// What a user asks for: a backend kind, or `auto`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// CUDA when a device answers, `sim` otherwise.
    #[default]
    Auto,
    /// The CUDA driver.
    Cuda,
    /// The simulated device.
    Sim,
}

impl std::str::FromStr for BackendChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Ok(BackendChoice::Auto),
            "cuda" => Ok(BackendChoice::Cuda),
            "sim" => Ok(BackendChoice::Sim),
            other => Err(Error::Config {
                key: "backend".into(),
                problem: format!("`{other}` is not one of auto, cuda, sim"),
            }),
        }
    }
}

/// Device facts a user or a policy needs.
#[derive(Clone, Debug, Serialize)]
pub struct DeviceProperties {
    /// Which backend.
    pub backend: BackendKind,
    /// Device name (the emulated driver and the simulator say so in it).
    pub name: String,
    /// Device ordinal.
    pub ordinal: i32,
    /// True when this is not real hardware (the simulator, or the emulated driver).
    pub emulated: bool,
    /// Device memory in bytes.
    pub total_memory: u64,
    /// Whether the virtual-memory management API is supported.
    pub vmm_supported: bool,
    /// Granularity of reservations, physical allocations and mappings.
    pub vmm_granularity: u64,
    /// Asynchronous copy engines.
    pub copy_engines: u32,
    /// Compute capability (major, minor).
    pub compute_capability: (i32, i32),
    /// Driver version as `cuDriverGetVersion` reports it (e.g. 13000); 0 for `sim`.
    pub driver_version: i32,
    /// Whether stream-ordered allocation (`cuMemAllocAsync`) is supported.
    pub memory_pools: bool,
    /// Whether [`Backend::host_register`] with `read_only` is supported
    /// (`CU_DEVICE_ATTRIBUTE_READ_ONLY_HOST_REGISTER_SUPPORTED`); where it is not, such a
    /// registration is [`Error::Unsupported`].
    pub read_only_host_register: bool,
    /// Whether device addresses are host addresses that CPU code may read and write while
    /// mapped (the `sim` backend with `host_visible:true`): frameworks then view weight sets as
    /// CPU tensors (DLPack `kDLCPU`). False on CUDA.
    pub host_visible: bool,
}

/// Free and total device memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct MemInfo {
    /// Bytes free.
    pub free: u64,
    /// Bytes in all.
    pub total: u64,
}

/// The driver operations vramswap needs. Implemented by [`cuda::CudaBackend`] and
/// [`sim::SimBackend`]; used as `Arc<dyn Backend>`. (`Any` lets tests reach the simulated
/// device behind a `dyn Backend`: `<dyn Backend>::sim_device`, in [`sim`].)
///
/// Semantics follow the CUDA Driver API: work on one stream runs in order, work on different
/// streams is unordered unless an event orders it, copies between device memory and host
/// memory are stream-ordered. With pinned host memory they are asynchronous; with pageable host
/// memory the reference says only that the call "might be synchronous", so callers must treat
/// them as asynchronous too (synchronise before reading a pageable destination or reusing a
/// pageable source); `sim` and the emulated driver never complete them early.
pub trait Backend: std::any::Any + Send + Sync + fmt::Debug {
    /// Device facts.
    fn properties(&self) -> &DeviceProperties;
    /// Which implementation this is.
    fn kind(&self) -> BackendKind {
        self.properties().backend
    }
    /// Free and total device memory now.
    fn mem_info(&self) -> Result<MemInfo>;

    /// Allocates `bytes` of device memory (`cuMemAlloc`).
    fn alloc(&self, bytes: u64) -> Result<DevicePtr>;
    /// Frees memory from [`Backend::alloc`] (`cuMemFree`).
    fn free(&self, ptr: DevicePtr) -> Result<()>;
    /// Stream-ordered allocation (`cuMemAllocAsync`).
    fn alloc_async(&self, bytes: u64, stream: Stream) -> Result<DevicePtr>;
    /// Stream-ordered free (`cuMemFreeAsync`).
    fn free_async(&self, ptr: DevicePtr, stream: Stream) -> Result<()>;

    /// Reserves `bytes` (a multiple of the granularity) of virtual address space.
    fn reserve(&self, bytes: u64) -> Result<DevicePtr>;
    /// Frees a whole reservation; all its mappings must be unmapped first.
    fn free_reservation(&self, va: DevicePtr, bytes: u64) -> Result<()>;
    /// Creates `bytes` (a multiple of the granularity) of physical device memory.
    fn create_physical(&self, bytes: u64) -> Result<PhysHandle>;
    /// Releases a physical allocation handle; memory still mapped stays until unmapped.
    fn release_physical(&self, handle: PhysHandle) -> Result<()>;
    /// Maps all `bytes` of `handle` at `va` inside a reservation and grants the device
    /// read-write access (`cuMemMap` + `cuMemSetAccess`).
    fn map(&self, va: DevicePtr, bytes: u64, handle: PhysHandle) -> Result<()>;
    /// Unmaps `[va, va + bytes)`, which must be whole mappings (`cuMemUnmap`).
    fn unmap(&self, va: DevicePtr, bytes: u64) -> Result<()>;

    /// Allocates `bytes` of page-locked host memory (`cuMemHostAlloc`).
    fn host_alloc_pinned(&self, bytes: u64) -> Result<*mut u8>;
    /// Frees memory from [`Backend::host_alloc_pinned`].
    ///
    /// # Safety
    /// `ptr` must come from `host_alloc_pinned` of this backend, with no copy still using it.
    unsafe fn host_free_pinned(&self, ptr: *mut u8) -> Result<()>;
    /// Page-locks an existing host range (`cuMemHostRegister`); with `read_only` the device may
    /// only read it (for mapped files), which is [`Error::Unsupported`] on a device without
    /// [`DeviceProperties::read_only_host_register`].
    ///
    /// # Safety
    /// `[ptr, ptr + bytes)` must be a valid mapping that stays valid until unregistered.
    unsafe fn host_register(&self, ptr: *mut u8, bytes: u64, read_only: bool) -> Result<()>;
    /// Unregisters a range registered with [`Backend::host_register`].
    ///
    /// # Safety
    /// No copy may still be using the range.
    unsafe fn host_unregister(&self, ptr: *mut u8) -> Result<()>;

    /// Creates a non-blocking stream.
    fn stream_create(&self) -> Result<Stream>;
    /// Destroys a stream; queued work still runs.
    fn stream_destroy(&self, stream: Stream) -> Result<()>;
    /// Waits for all work on `stream`.
    fn stream_synchronize(&self, stream: Stream) -> Result<()>;
    /// True when all work on `stream` has completed.
    fn stream_query(&self, stream: Stream) -> Result<bool>;
    /// Creates an event; `timing` enables [`Backend::event_elapsed_ms`].
    fn event_create(&self, timing: bool) -> Result<Event>;
    /// Destroys an event.
    fn event_destroy(&self, event: Event) -> Result<()>;
    /// Records `event` at the current end of `stream`.
    fn event_record(&self, event: Event, stream: Stream) -> Result<()>;
    /// True when the work before the event's latest record has completed.
    fn event_query(&self, event: Event) -> Result<bool>;
    /// Waits for the event's latest record.
    fn event_synchronize(&self, event: Event) -> Result<()>;
    /// Makes later work on `stream` wait for `event` without blocking the host.
    fn stream_wait_event(&self, stream: Stream, event: Event) -> Result<()>;
    /// Milliseconds between two completed timing events.
    fn event_elapsed_ms(&self, start: Event, end: Event) -> Result<f32>;
    /// Waits for all work on the device.
    fn synchronize(&self) -> Result<()>;

    /// Copies host to device on `stream`.
    ///
    /// # Safety
    /// `src` must be valid for `bytes` reads until the copy completes.
    unsafe fn copy_htod_async(
        &self,
        dst: DevicePtr,
        src: *const u8,
        bytes: u64,
        stream: Stream,
    ) -> Result<()>;
    /// Copies device to host on `stream`.
    ///
    /// # Safety
    /// `dst` must be valid for `bytes` writes, untouched by the host, until the copy completes.
    unsafe fn copy_dtoh_async(
        &self,
        dst: *mut u8,
        src: DevicePtr,
        bytes: u64,
        stream: Stream,
    ) -> Result<()>;
    /// Copies device to device on `stream`.
    fn copy_dtod_async(
        &self,
        dst: DevicePtr,
        src: DevicePtr,
        bytes: u64,
        stream: Stream,
    ) -> Result<()>;
    /// Sets `bytes` bytes at `dst` to `value` on `stream`.
    fn memset_d8_async(&self, dst: DevicePtr, value: u8, bytes: u64, stream: Stream) -> Result<()>;

    /// Writes the checksum of `[src, src + bytes)` (see [`vramswap_sim::kernels::checksum`]) as
    /// a little-endian `u64` at `out` (8 bytes of device memory), on `stream`.
    fn checksum_async(
        &self,
        src: DevicePtr,
        bytes: u64,
        out: DevicePtr,
        stream: Stream,
    ) -> Result<()>;
    /// Fills `bytes` at `dst` with the little-endian bytes of `pattern`, on `stream`.
    fn fill_u32_async(
        &self,
        dst: DevicePtr,
        bytes: u64,
        pattern: u32,
        stream: Stream,
    ) -> Result<()>;
    /// Converts `count` elements from `src` (type `from`) into `dst` (type `to`), rounding to
    /// nearest-even, on `stream`.
    fn cast_async(
        &self,
        src: DevicePtr,
        from: CastType,
        dst: DevicePtr,
        to: CastType,
        count: u64,
        stream: Stream,
    ) -> Result<()>;
}

/// A shared backend.
pub type SharedBackend = Arc<dyn Backend>;

/// Opens the backend a user chose. `Auto` picks CUDA when a device answers and `sim` otherwise;
/// the second value says which was picked and why.
///
/// The choice defaults to `VRAMSWAP_BACKEND` when the caller passes `Auto` and that variable is
/// set.
pub fn open(choice: BackendChoice, device: i32) -> Result<(SharedBackend, String)> {
    let choice = match (choice, std::env::var("VRAMSWAP_BACKEND")) {
        (BackendChoice::Auto, Ok(v)) if !v.trim().is_empty() => v.parse()?,
        (c, _) => c,
    };
    match choice {
        BackendChoice::Cuda => {
            let b = cuda::CudaBackend::new(device)?;
            let why = "cuda backend requested".to_string();
            Ok((Arc::new(b), why))
        }
        BackendChoice::Sim => Ok((
            Arc::new(sim::SimBackend::from_env()?),
            "sim backend requested".into(),
        )),
        BackendChoice::Auto => match cuda::CudaBackend::new(device) {
            Ok(b) => Ok((Arc::new(b), "auto: a CUDA device answered".into())),
            Err(e) => Ok((
                Arc::new(sim::SimBackend::from_env()?),
                format!("auto: using the simulated device ({e})"),
            )),
        },
    }
}

/// Releases a physical allocation, trying once more where the first call fails: the handle of
/// a page just mapped, or of a set just unmapped, is reachable from nowhere else, so giving up
/// at once would lose its memory for the life of the process (issue 19). The second failure is
/// returned.
pub fn release_physical_retrying(b: &dyn Backend, h: PhysHandle) -> Result<()> {
    b.release_physical(h).or_else(|_| b.release_physical(h))
}

/// Computes the checksum of a device range, waiting for the result. Uses 8 bytes of scratch
/// device memory and `stream`.
pub fn checksum(backend: &dyn Backend, src: DevicePtr, bytes: u64, stream: Stream) -> Result<u64> {
    let out = backend.alloc(8)?;
    let result = (|| -> Result<u64> {
        backend.checksum_async(src, bytes, out, stream)?;
        let mut v = [0u8; 8];
        // SAFETY: `v` is a live local buffer; the copy is waited for below before it is read.
        unsafe { backend.copy_dtoh_async(v.as_mut_ptr(), out, 8, stream)? };
        backend.stream_synchronize(stream)?;
        Ok(u64::from_le_bytes(v))
    })();
    let freed = backend.free(out);
    let v = result?;
    freed?;
    Ok(v)
}

/// Copies `data` to `dst` and waits for it.
pub fn upload(backend: &dyn Backend, dst: DevicePtr, data: &[u8], stream: Stream) -> Result<()> {
    // SAFETY: `data` outlives the copy, which is waited for before returning.
    unsafe { backend.copy_htod_async(dst, data.as_ptr(), data.len() as u64, stream)? };
    backend.stream_synchronize(stream)
}

/// Copies `out.len()` bytes from `src` into `out` and waits for it.
pub fn download(
    backend: &dyn Backend,
    out: &mut [u8],
    src: DevicePtr,
    stream: Stream,
) -> Result<()> {
    // SAFETY: `out` outlives the copy, which is waited for before returning.
    unsafe { backend.copy_dtoh_async(out.as_mut_ptr(), src, out.len() as u64, stream)? };
    backend.stream_synchronize(stream)
}
