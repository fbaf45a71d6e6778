//! The `sim` backend: the simulated device of the `vramswap-sim` crate behind the
//! [`Backend`] trait.
//!
//! Its errors carry the same CUDA error names the `cuda` backend reports, so code above the
//! backend handles both alike.

use vramswap_sim::{FaultOp, Kernel, SimConfig, SimDevice, SimError};

use super::{
    Backend, BackendKind, CastType, DeviceProperties, DevicePtr, Event, MemInfo, PhysHandle, Stream,
};
use crate::error::{Error, Result};

/// The simulated device as a [`Backend`].
#[derive(Debug)]
pub struct SimBackend {
    dev: SimDevice,
    props: DeviceProperties,
}

/// The operation a driver call stands for, as errors on `sim` name it: a user who asked for the
/// simulated device reads `simulated map`, not `cuMemMap` (the error's CUDA name and code stay:
/// the simulator models them). Calls not listed keep their name.
pub fn sim_operation(call: &'static str) -> &'static str {
    match call {
        "cuCtxSynchronize" => "simulated device synchronize",
        "cuEventCreate" => "simulated event creation",
        "cuEventDestroy_v2" => "simulated event destruction",
        "cuEventElapsedTime_v2" => "simulated elapsed time",
        "cuEventQuery" => "simulated event query",
        "cuEventRecord" => "simulated event record",
        "cuEventSynchronize" => "simulated event synchronize",
        "cuLaunchKernel" => "simulated kernel",
        "cuMemAddressFree" => "simulated address release",
        "cuMemAddressReserve" => "simulated address reservation",
        "cuMemAllocAsync" => "simulated stream-ordered alloc",
        "cuMemAlloc_v2" => "simulated alloc",
        "cuMemCreate" => "simulated physical allocation",
        "cuMemFreeAsync" => "simulated stream-ordered free",
        "cuMemFreeHost" => "simulated pinned host free",
        "cuMemFree_v2" => "simulated free",
        "cuMemHostAlloc" => "simulated pinned host alloc",
        "cuMemHostRegister_v2" => "simulated host registration",
        "cuMemHostUnregister" => "simulated host unregistration",
        "cuMemMap" => "simulated map",
        "cuMemRelease" => "simulated physical release",
        "cuMemSetAccess" => "simulated access change",
        "cuMemUnmap" => "simulated unmap",
        "cuMemcpyDtoDAsync_v2" => "simulated device-to-device copy",
        "cuMemcpyDtoHAsync_v2" => "simulated device-to-host copy",
        "cuMemcpyHtoDAsync_v2" => "simulated host-to-device copy",
        "cuMemsetD8Async" => "simulated memset",
        "cuStreamCreate" => "simulated stream creation",
        "cuStreamDestroy_v2" => "simulated stream destruction",
        "cuStreamQuery" => "simulated stream query",
        "cuStreamSynchronize" => "simulated stream synchronize",
        "cuStreamWaitEvent" => "simulated stream wait",
        other => other,
    }
}

/// Converts a simulator error into the crate's error, naming the simulated operation that
/// `call`, the driver call it stands for, does ([`sim_operation`]).
pub fn sim_error(call: &'static str, e: SimError) -> Error {
    let call = sim_operation(call);
    match e {
        SimError::OutOfMemory {
            requested,
            free,
            capacity,
        } => Error::DeviceOutOfMemory {
            call,
            requested,
            free,
            total: capacity,
        },
        other => Error::Driver {
            call,
            code: other.cuda_code(),
            name: other.cuda_name().to_string(),
            detail: other.to_string(),
        },
    }
}

fn config_error(problem: impl Into<String>) -> Error {
    Error::Config {
        key: "VRAMSWAP_SIM_CONF".into(),
        problem: problem.into(),
    }
}

/// Parses a simulator configuration (`VRAMSWAP_SIM_CONF`): `key:value` pairs separated by
/// commas, with the syntax of [`vramswap_sim::parse_config`] (the one parser the `sim` backend
/// and the emulated CUDA driver share). Unknown keys and bad values are errors.
pub fn parse_sim_config(spec: &str) -> Result<SimConfig> {
    vramswap_sim::parse_config(spec, SimConfig::default()).map_err(config_error)
}

impl SimBackend {
    /// A simulated device with `config`.
    pub fn new(config: SimConfig) -> SimBackend {
        let props = DeviceProperties {
            backend: BackendKind::Sim,
            name: config.name.clone(),
            ordinal: 0,
            emulated: true,
            total_memory: config.capacity,
            vmm_supported: true,
            vmm_granularity: config.granularity,
            copy_engines: config.copy_engines,
            compute_capability: (9, 0),
            driver_version: 0,
            memory_pools: true,
            read_only_host_register: true,
            host_visible: config.host_visible,
        };
        SimBackend {
            dev: SimDevice::new(config),
            props,
        }
    }

    /// A simulated device of `capacity` bytes, otherwise default.
    pub fn with_capacity(capacity: u64) -> SimBackend {
        SimBackend::new(SimConfig {
            capacity,
            ..SimConfig::default()
        })
    }

    /// A simulated device configured by `VRAMSWAP_SIM_CONF` (see [`parse_sim_config`]), with
    /// faults planted from `VRAMSWAP_SIM_FAULTS` (`op:N,...`, see
    /// [`vramswap_sim::parse_faults`]).
    pub fn from_env() -> Result<SimBackend> {
        SimBackend::from_env_with_capacity(None)
    }

    /// [`SimBackend::from_env`] with the capacity an argument gives, if any, over the one
    /// `VRAMSWAP_SIM_CONF` gives (arguments before the environment): the rest of the
    /// configuration and the fault plan still come from the environment.
    pub fn from_env_with_capacity(capacity: Option<u64>) -> Result<SimBackend> {
        let conf = std::env::var("VRAMSWAP_SIM_CONF").unwrap_or_default();
        let mut config = parse_sim_config(&conf)?;
        if let Some(c) = capacity {
            config.capacity = c;
        }
        let b = SimBackend::new(config);
        if let Ok(f) = std::env::var("VRAMSWAP_SIM_FAULTS") {
            let plan = vramswap_sim::parse_faults(&f).map_err(|problem| Error::Config {
                key: "VRAMSWAP_SIM_FAULTS".into(),
                problem,
            })?;
            for (op, n) in plan {
                b.dev.inject_fault(op, n);
            }
        }
        Ok(b)
    }

    /// The same device, reporting `ordinal` as its device ordinal (one of several simulated
    /// devices of a process, `VRAMSWAP_SIM_DEVICES`).
    pub fn with_ordinal(mut self, ordinal: i32) -> SimBackend {
        self.props.ordinal = ordinal;
        self
    }

    /// The simulated device.
    pub fn device(&self) -> &SimDevice {
        &self.dev
    }

    /// Makes the `nth` next call of `op` fail.
    pub fn inject_fault(&self, op: FaultOp, nth: u64) {
        self.dev.inject_fault(op, nth)
    }
}

impl Backend for SimBackend {
    fn properties(&self) -> &DeviceProperties {
        &self.props
    }

    fn mem_info(&self) -> Result<MemInfo> {
        let (free, total) = self.dev.mem_info();
        Ok(MemInfo { free, total })
    }

    fn alloc(&self, bytes: u64) -> Result<DevicePtr> {
        self.dev
            .alloc(bytes)
            .map(DevicePtr)
            .map_err(|e| sim_error("cuMemAlloc_v2", e))
    }

    fn free(&self, ptr: DevicePtr) -> Result<()> {
        self.dev
            .free(ptr.0)
            .map_err(|e| sim_error("cuMemFree_v2", e))
    }

    fn alloc_async(&self, bytes: u64, stream: Stream) -> Result<DevicePtr> {
        self.dev
            .alloc_async(bytes, stream.0)
            .map(DevicePtr)
            .map_err(|e| sim_error("cuMemAllocAsync", e))
    }

    fn free_async(&self, ptr: DevicePtr, stream: Stream) -> Result<()> {
        self.dev
            .free_async(ptr.0, stream.0)
            .map_err(|e| sim_error("cuMemFreeAsync", e))
    }

    fn reserve(&self, bytes: u64) -> Result<DevicePtr> {
        self.dev
            .reserve(bytes, 0)
            .map(DevicePtr)
            .map_err(|e| sim_error("cuMemAddressReserve", e))
    }

    fn free_reservation(&self, va: DevicePtr, bytes: u64) -> Result<()> {
        self.dev
            .address_free(va.0, bytes)
            .map_err(|e| sim_error("cuMemAddressFree", e))
    }

    fn create_physical(&self, bytes: u64) -> Result<PhysHandle> {
        self.dev
            .create(bytes)
            .map(PhysHandle)
            .map_err(|e| sim_error("cuMemCreate", e))
    }

    fn release_physical(&self, handle: PhysHandle) -> Result<()> {
        self.dev
            .release(handle.0)
            .map_err(|e| sim_error("cuMemRelease", e))
    }

    fn map(&self, va: DevicePtr, bytes: u64, handle: PhysHandle) -> Result<()> {
        self.dev
            .map(va.0, bytes, handle.0, 0)
            .map_err(|e| sim_error("cuMemMap", e))?;
        if let Err(e) = self.dev.set_access(va.0, bytes) {
            // Leave no half-made mapping behind.
            let _ = self.dev.unmap(va.0, bytes);
            return Err(sim_error("cuMemSetAccess", e));
        }
        Ok(())
    }

    fn unmap(&self, va: DevicePtr, bytes: u64) -> Result<()> {
        self.dev
            .unmap(va.0, bytes)
            .map_err(|e| sim_error("cuMemUnmap", e))
    }

    fn host_alloc_pinned(&self, bytes: u64) -> Result<*mut u8> {
        self.dev
            .host_alloc(bytes)
            .map_err(|e| sim_error("cuMemHostAlloc", e))
    }

    unsafe fn host_free_pinned(&self, ptr: *mut u8) -> Result<()> {
        self.dev
            .host_free(ptr)
            .map_err(|e| sim_error("cuMemFreeHost", e))
    }

    unsafe fn host_register(&self, ptr: *mut u8, bytes: u64, read_only: bool) -> Result<()> {
        self.dev
            .host_register(ptr, bytes, read_only)
            .map_err(|e| sim_error("cuMemHostRegister_v2", e))
    }

    unsafe fn host_unregister(&self, ptr: *mut u8) -> Result<()> {
        self.dev
            .host_unregister(ptr)
            .map_err(|e| sim_error("cuMemHostUnregister", e))
    }

    fn stream_create(&self) -> Result<Stream> {
        self.dev
            .stream_create(false)
            .map(Stream)
            .map_err(|e| sim_error("cuStreamCreate", e))
    }

    fn stream_destroy(&self, stream: Stream) -> Result<()> {
        self.dev
            .stream_destroy(stream.0)
            .map_err(|e| sim_error("cuStreamDestroy_v2", e))
    }

    fn stream_synchronize(&self, stream: Stream) -> Result<()> {
        self.dev
            .stream_synchronize(stream.0)
            .map_err(|e| sim_error("cuStreamSynchronize", e))
    }

    fn stream_query(&self, stream: Stream) -> Result<bool> {
        self.dev
            .stream_query(stream.0)
            .map_err(|e| sim_error("cuStreamQuery", e))
    }

    fn event_create(&self, timing: bool) -> Result<Event> {
        self.dev
            .event_create(timing)
            .map(Event)
            .map_err(|e| sim_error("cuEventCreate", e))
    }

    fn event_destroy(&self, event: Event) -> Result<()> {
        self.dev
            .event_destroy(event.0)
            .map_err(|e| sim_error("cuEventDestroy_v2", e))
    }

    fn event_record(&self, event: Event, stream: Stream) -> Result<()> {
        self.dev
            .event_record(event.0, stream.0)
            .map_err(|e| sim_error("cuEventRecord", e))
    }

    fn event_query(&self, event: Event) -> Result<bool> {
        self.dev
            .event_query(event.0)
            .map_err(|e| sim_error("cuEventQuery", e))
    }

    fn event_synchronize(&self, event: Event) -> Result<()> {
        self.dev
            .event_synchronize(event.0)
            .map_err(|e| sim_error("cuEventSynchronize", e))
    }

    fn stream_wait_event(&self, stream: Stream, event: Event) -> Result<()> {
        self.dev
            .stream_wait_event(stream.0, event.0)
            .map_err(|e| sim_error("cuStreamWaitEvent", e))
    }

    fn event_elapsed_ms(&self, start: Event, end: Event) -> Result<f32> {
        self.dev
            .event_elapsed_ms(start.0, end.0)
            .map_err(|e| sim_error("cuEventElapsedTime_v2", e))
    }

    fn synchronize(&self) -> Result<()> {
        self.dev
            .synchronize()
            .map_err(|e| sim_error("cuCtxSynchronize", e))
    }

    unsafe fn copy_htod_async(
        &self,
        dst: DevicePtr,
        src: *const u8,
        bytes: u64,
        stream: Stream,
    ) -> Result<()> {
        // SAFETY: forwarded contract: `src` stays valid until the copy completes.
        unsafe { self.dev.copy_htod(dst.0, src, bytes, stream.0) }
            .map_err(|e| sim_error("cuMemcpyHtoDAsync_v2", e))
    }

    unsafe fn copy_dtoh_async(
        &self,
        dst: *mut u8,
        src: DevicePtr,
        bytes: u64,
        stream: Stream,
    ) -> Result<()> {
        // SAFETY: forwarded contract: `dst` stays valid and untouched until the copy completes.
        unsafe { self.dev.copy_dtoh(dst, src.0, bytes, stream.0) }
            .map_err(|e| sim_error("cuMemcpyDtoHAsync_v2", e))
    }

    fn copy_dtod_async(
        &self,
        dst: DevicePtr,
        src: DevicePtr,
        bytes: u64,
        stream: Stream,
    ) -> Result<()> {
        self.dev
            .copy_dtod(dst.0, src.0, bytes, stream.0)
            .map_err(|e| sim_error("cuMemcpyDtoDAsync_v2", e))
    }

    fn memset_d8_async(&self, dst: DevicePtr, value: u8, bytes: u64, stream: Stream) -> Result<()> {
        self.dev
            .memset_d8(dst.0, value, bytes, stream.0)
            .map_err(|e| sim_error("cuMemsetD8Async", e))
    }

    fn checksum_async(
        &self,
        src: DevicePtr,
        bytes: u64,
        out: DevicePtr,
        stream: Stream,
    ) -> Result<()> {
        self.dev
            .launch(
                Kernel::Checksum {
                    src: src.0,
                    len: bytes,
                    out: out.0,
                },
                stream.0,
            )
            .map_err(|e| sim_error("cuLaunchKernel", e))
    }

    fn fill_u32_async(
        &self,
        dst: DevicePtr,
        bytes: u64,
        pattern: u32,
        stream: Stream,
    ) -> Result<()> {
        self.dev
            .launch(
                Kernel::Fill {
                    dst: dst.0,
                    len: bytes,
                    pattern,
                },
                stream.0,
            )
            .map_err(|e| sim_error("cuLaunchKernel", e))
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
        self.dev
            .launch(
                Kernel::Cast {
                    src: src.0,
                    from,
                    dst: dst.0,
                    to,
                    count,
                },
                stream.0,
            )
            .map_err(|e| sim_error("cuLaunchKernel", e))
    }
}

impl dyn Backend {
    /// The simulated device behind this backend when it is the `sim` backend, for tests and
    /// reports (leaks, faults, races); `None` for any other backend (the emulated driver's
    /// device lives in its own library and reports through `VRAMSWAP_EMU_REPORT`).
    ///
    /// Found by downcasting, so the [`Backend`] trait itself carries no test hook.
    ///
    /// ```
    /// use vramswap::backend::{sim::SimBackend, SharedBackend};
    /// let b: SharedBackend = std::sync::Arc::new(SimBackend::with_capacity(1 << 20));
    /// assert!(b.sim_device().unwrap().leaks().is_clean());
    /// ```
    pub fn sim_device(&self) -> Option<&SimDevice> {
        let any: &dyn std::any::Any = self;
        any.downcast_ref::<SimBackend>().map(SimBackend::device)
    }
}
