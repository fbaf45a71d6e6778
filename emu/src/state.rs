//! The emulated driver's process-wide state: initialisation, the device, the primary context
//! (current per thread), and the handle encoding of streams, events, modules and functions.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use vramswap_sim::{SimConfig, SimDevice};

use crate::module::Module;
use crate::result::{
    fail, Res, CUDA_ERROR_INVALID_CONTEXT, CUDA_ERROR_INVALID_DEVICE, CUDA_ERROR_INVALID_HANDLE,
    CUDA_ERROR_INVALID_VALUE, CUDA_ERROR_NOT_INITIALIZED, CUDA_ERROR_NOT_SUPPORTED,
};

/// Name of the emulated device unless `VRAMSWAP_EMU_CONF` sets `name`.
pub const DEVICE_NAME: &str = "vramswap emulated GPU (Hopper-like)";

/// The value of the primary context handle (`CUcontext`) of device 0. Opaque to callers; never
/// dereferenced.
pub const PRIMARY_CONTEXT: usize = 0x00c0_a7e0_0000_0001;

const STREAM_TAG: u64 = 0x5354 << 48;
const EVENT_TAG: u64 = 0x4556 << 48;
const MODULE_TAG: u64 = 0x4d4f << 48;
const FUNCTION_TAG: u64 = 0x4655 << 48;
const TAG_MASK: u64 = 0xffff << 48;

/// The initialised driver.
pub(crate) struct Driver {
    /// The simulated device behind device ordinal 0.
    pub(crate) dev: SimDevice,
    /// Retain count of the primary context; it is active while this is positive.
    pub(crate) primary_refs: AtomicU32,
    /// Loaded modules by id.
    pub(crate) modules: Mutex<HashMap<u64, Module>>,
    /// Function handles: id -> (module id, entry index).
    pub(crate) functions: Mutex<HashMap<u64, (u64, usize)>>,
    /// Next module or function id.
    pub(crate) next_id: AtomicU64,
}

static DRIVER: OnceLock<Result<Driver, u32>> = OnceLock::new();

thread_local! {
    /// The context current on the calling thread (0: none). Contexts are per thread in CUDA:
    /// "cuCtxSetCurrent: Binds the specified CUDA context to the calling CPU thread."
    static CURRENT: Cell<usize> = const { Cell::new(0) };
}

/// The base configuration of the emulated device: the simulated device's defaults with the
/// emulator's name.
pub fn base_config() -> SimConfig {
    SimConfig {
        name: DEVICE_NAME.into(),
        ..SimConfig::default()
    }
}

/// Initialises the driver once with `make`; later calls return the first outcome.
pub(crate) fn init_with(make: impl FnOnce() -> Result<SimDevice, u32>) -> u32 {
    let r = DRIVER.get_or_init(|| {
        make().map(|dev| Driver {
            dev,
            primary_refs: AtomicU32::new(0),
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        })
    });
    match r {
        Ok(_) => crate::result::CUDA_SUCCESS,
        Err(c) => *c,
    }
}

/// The driver, if `cuInit` succeeded.
pub(crate) fn driver_if_initialised() -> Option<&'static Driver> {
    DRIVER.get().and_then(|r| r.as_ref().ok())
}

/// The driver, or `CUDA_ERROR_NOT_INITIALIZED`: "If cuInit() has not been called, any function
/// from the driver API will return CUDA_ERROR_NOT_INITIALIZED" (Driver API, Initialization).
pub(crate) fn driver(call: &str) -> Res<&'static Driver> {
    driver_if_initialised()
        .ok_or_else(|| fail(call, CUDA_ERROR_NOT_INITIALIZED, "cuInit has not succeeded"))
}

/// The driver, provided the calling thread has a live current context: a call that needs a
/// context with none current gives `CUDA_ERROR_INVALID_CONTEXT` ("CUDA_ERROR_INVALID_CONTEXT:
/// This most frequently indicates that there is no context bound to the current thread").
pub(crate) fn with_context(call: &str) -> Res<&'static Driver> {
    let d = driver(call)?;
    let cur = current();
    if cur == 0 {
        return Err(fail(
            call,
            CUDA_ERROR_INVALID_CONTEXT,
            "no context is current on the calling thread (call cuCtxSetCurrent on this thread)",
        ));
    }
    if cur != PRIMARY_CONTEXT || d.primary_refs.load(Ordering::SeqCst) == 0 {
        return Err(fail(
            call,
            CUDA_ERROR_INVALID_CONTEXT,
            "the current context was released (primary context reference count is 0)",
        ));
    }
    Ok(d)
}

/// The context current on this thread (0: none).
pub(crate) fn current() -> usize {
    CURRENT.with(|c| c.get())
}

/// Binds `ctx` to this thread (0 unbinds).
pub(crate) fn set_current(ctx: usize) {
    CURRENT.with(|c| c.set(ctx));
}

/// Checks a device ordinal: the emulator has one device, ordinal 0.
pub(crate) fn check_device(call: &str, dev: i32) -> Res<()> {
    if dev != 0 {
        return Err(fail(
            call,
            CUDA_ERROR_INVALID_DEVICE,
            &format!("device {dev}: the emulator has one device, 0"),
        ));
    }
    Ok(())
}

/// Checks an out-pointer argument.
pub(crate) fn non_null<T>(call: &str, p: *const T, what: &str) -> Res<()> {
    if p.is_null() {
        return Err(fail(
            call,
            CUDA_ERROR_INVALID_VALUE,
            &format!("{what} is NULL"),
        ));
    }
    Ok(())
}

/// `CU_STREAM_LEGACY`: the legacy default stream, same as handle 0.
const CU_STREAM_LEGACY: u64 = 0x1;
/// `CU_STREAM_PER_THREAD`.
const CU_STREAM_PER_THREAD: u64 = 0x2;

/// The `CUstream` value of a simulated stream id.
pub(crate) fn stream_handle(id: u64) -> u64 {
    STREAM_TAG | id
}

/// The simulated stream id of a `CUstream`. 0 and `CU_STREAM_LEGACY` are the NULL stream with
/// legacy semantics; the per-thread default stream is not emulated.
pub(crate) fn stream_id(call: &str, h: *mut std::ffi::c_void) -> Res<u64> {
    let h = h as u64;
    match h {
        0 | CU_STREAM_LEGACY => Ok(0),
        CU_STREAM_PER_THREAD => Err(fail(
            call,
            CUDA_ERROR_NOT_SUPPORTED,
            "CU_STREAM_PER_THREAD is not emulated",
        )),
        _ if h & TAG_MASK == STREAM_TAG => Ok(h & !TAG_MASK),
        _ => Err(fail(
            call,
            CUDA_ERROR_INVALID_HANDLE,
            &format!("{h:#x} is not a stream handle"),
        )),
    }
}

/// The `CUevent` value of a simulated event id.
pub(crate) fn event_handle(id: u64) -> u64 {
    EVENT_TAG | id
}

/// The simulated event id of a `CUevent`.
pub(crate) fn event_id(call: &str, h: *mut std::ffi::c_void) -> Res<u64> {
    let h = h as u64;
    if h != 0 && h & TAG_MASK == EVENT_TAG {
        Ok(h & !TAG_MASK)
    } else {
        Err(fail(
            call,
            CUDA_ERROR_INVALID_HANDLE,
            &format!("{h:#x} is not an event handle"),
        ))
    }
}

/// The `CUmodule` value of a module id.
pub(crate) fn module_handle(id: u64) -> u64 {
    MODULE_TAG | id
}

/// The module id of a `CUmodule` (not checked for liveness).
pub(crate) fn module_id(call: &str, h: *mut std::ffi::c_void) -> Res<u64> {
    let h = h as u64;
    if h != 0 && h & TAG_MASK == MODULE_TAG {
        Ok(h & !TAG_MASK)
    } else {
        Err(fail(
            call,
            CUDA_ERROR_INVALID_HANDLE,
            &format!("{h:#x} is not a module handle"),
        ))
    }
}

/// The `CUfunction` value of a function id.
pub(crate) fn function_handle(id: u64) -> u64 {
    FUNCTION_TAG | id
}

/// The function id of a `CUfunction` (not checked for liveness).
pub(crate) fn function_id(call: &str, h: *mut std::ffi::c_void) -> Res<u64> {
    let h = h as u64;
    if h != 0 && h & TAG_MASK == FUNCTION_TAG {
        Ok(h & !TAG_MASK)
    } else {
        Err(fail(
            call,
            CUDA_ERROR_INVALID_HANDLE,
            &format!("{h:#x} is not a function handle"),
        ))
    }
}
