//! The emulated driver's process-wide state: initialisation, the device, the primary context
//! (current per thread), and the handle encoding of streams, events, modules and functions.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use vramswap_sim::{SimConfig, SimDevice, WorkMark};

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

/// What the emulated driver reports about itself, beyond the simulated device: set by the
/// emulator's own `VRAMSWAP_EMU_CONF` keys (see [`parse_emu_conf`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmuOptions {
    /// What `cuDriverGetVersion` reports (1000 * major + 10 * minor). Entry points and device
    /// attributes that a driver of this version does not have behave as missing (see
    /// [`SYMBOL_VERSIONS`]).
    pub driver_version: i32,
    /// `CU_DEVICE_ATTRIBUTE_READ_ONLY_HOST_REGISTER_SUPPORTED`; without it
    /// `CU_MEMHOSTREGISTER_READ_ONLY` gives `CUDA_ERROR_NOT_SUPPORTED`.
    pub read_only_host_register: bool,
}

impl Default for EmuOptions {
    fn default() -> Self {
        EmuOptions {
            driver_version: crate::api::context::DRIVER_VERSION,
            read_only_host_register: true,
        }
    }
}

/// The oldest driver version `driver_version` may name: the virtual-memory calls the emulator
/// exports exist from CUDA 10.2 on, and older drivers are not modelled.
pub const OLDEST_DRIVER_VERSION: i32 = 10020;

/// The exported entry points newer than [`OLDEST_DRIVER_VERSION`], with the driver version
/// (1000 * major + 10 * minor) that added each. On a real driver older than that the symbol
/// does not exist at all: a program that looks it up fails to find it (cudarc panics,
/// "Missing symbol"). A shared library cannot hide an exported symbol at run time, so the
/// emulator answers a call to one with `CUDA_ERROR_NOT_SUPPORTED` and records the misuse in
/// its report (`violations`, `clean: false`): a backend that calls an entry point its driver
/// lacks fails its tests here instead of panicking on a user's machine.
pub const SYMBOL_VERSIONS: &[(&str, i32)] = &[
    ("cuDevicePrimaryCtxRelease_v2", 11000),
    ("cuMemAllocAsync", 11020),
    ("cuMemFreeAsync", 11020),
    ("cuEventElapsedTime_v2", 12080),
];

/// The driver version that added `call`, when it is newer than [`OLDEST_DRIVER_VERSION`].
pub fn symbol_version(call: &str) -> Option<i32> {
    SYMBOL_VERSIONS
        .iter()
        .find(|(n, _)| *n == call)
        .map(|(_, v)| *v)
}

/// `12080` as `12.8`.
pub fn version_text(v: i32) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

/// The emulator's own keys of `VRAMSWAP_EMU_CONF`.
pub const EMU_CONF_KEYS: &str = "driver_version, read_only_host_register";

/// Splits the emulator's own keys out of a `VRAMSWAP_EMU_CONF` value: returns the options they
/// set (over the defaults) and the remaining `key:value` pairs, for
/// `vramswap_sim::parse_config`.
///
/// - `driver_version:12040`: what `cuDriverGetVersion` reports, from
///   [`OLDEST_DRIVER_VERSION`] to the emulator's own [`crate::DRIVER_VERSION`]; entry points
///   added after it behave as missing ([`SYMBOL_VERSIONS`]).
/// - `read_only_host_register:0` (or `1`): the device attribute
///   `CU_DEVICE_ATTRIBUTE_READ_ONLY_HOST_REGISTER_SUPPORTED`.
///
/// ```
/// use vramswap_cuda_emu::state::parse_emu_conf;
/// let (o, rest) = parse_emu_conf("capacity_mb:64, driver_version:12040").unwrap();
/// assert_eq!(o.driver_version, 12040);
/// assert_eq!(rest, "capacity_mb:64");
/// assert!(parse_emu_conf("driver_version:14000").is_err());
/// ```
pub fn parse_emu_conf(spec: &str) -> Result<(EmuOptions, String), String> {
    let mut o = EmuOptions::default();
    let mut rest = Vec::new();
    for pair in vramswap_sim::kv::pairs("VRAMSWAP_EMU_CONF", spec) {
        let (k, v) = pair.map_err(|e| e.problem)?;
        match k {
            "driver_version" => {
                let newest = crate::api::context::DRIVER_VERSION;
                let n: i32 = vramswap_sim::kv::parse_int_in(k, v, OLDEST_DRIVER_VERSION..=newest)
                    .map_err(|e| {
                    format!(
                        "{e} (1000 * major + 10 * minor, CUDA {} to {})",
                        version_text(OLDEST_DRIVER_VERSION),
                        version_text(newest)
                    )
                })?;
                o.driver_version = n;
            }
            "read_only_host_register" => {
                o.read_only_host_register =
                    vramswap_sim::kv::parse_bool(k, v).map_err(|e| e.to_string())?
            }
            _ => rest.push(format!("{k}:{v}")),
        }
    }
    Ok((o, rest.join(",")))
}

/// The initialised driver.
pub(crate) struct Driver {
    /// The simulated device behind device ordinal 0.
    pub(crate) dev: SimDevice,
    /// What the driver reports about itself.
    pub(crate) opts: EmuOptions,
    /// Misuse the emulator caught beyond the stream-ordering checker (an entry point called
    /// that the emulated driver version lacks, a module unloaded under queued launches): part
    /// of the report's `violations`.
    pub(crate) misuse: Mutex<Vec<String>>,
    /// Retain count of the primary context; it is active while this is positive.
    pub(crate) primary_refs: AtomicU32,
    /// Loaded modules by id.
    pub(crate) modules: Mutex<HashMap<u64, Module>>,
    /// Function handles: id -> (module id, entry index).
    pub(crate) functions: Mutex<HashMap<u64, (u64, usize)>>,
    /// Per module id, where its latest launches sit in their streams (completed ones are
    /// dropped at the next launch): `cuModuleUnload` reports unloading under queued launches.
    pub(crate) launches: Mutex<HashMap<u64, Vec<WorkMark>>>,
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
pub(crate) fn init_with(make: impl FnOnce() -> Result<(SimDevice, EmuOptions), u32>) -> u32 {
    let r = DRIVER.get_or_init(|| {
        make().map(|(dev, opts)| Driver {
            dev,
            opts,
            misuse: Mutex::new(Vec::new()),
            primary_refs: AtomicU32::new(0),
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            launches: Mutex::new(HashMap::new()),
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
///
/// An entry point newer than the emulated driver version ([`SYMBOL_VERSIONS`]) is refused
/// here, for every exported function alike, and recorded as misuse.
pub(crate) fn driver(call: &str) -> Res<&'static Driver> {
    let d = driver_if_initialised()
        .ok_or_else(|| fail(call, CUDA_ERROR_NOT_INITIALIZED, "cuInit has not succeeded"))?;
    if let Some(added) = symbol_version(call) {
        if d.opts.driver_version < added {
            let msg = format!(
                "{call} was called, but a CUDA {} driver has no such entry point (added in \
                 CUDA {}): on a real driver of this version looking the symbol up fails",
                version_text(d.opts.driver_version),
                version_text(added)
            );
            d.record_misuse(msg.clone());
            return Err(fail(call, CUDA_ERROR_NOT_SUPPORTED, &msg));
        }
    }
    Ok(d)
}

impl Driver {
    /// Records misuse for the report (and on stderr, which a test's output shows).
    pub(crate) fn record_misuse(&self, msg: String) {
        eprintln!("[vramswap-cuda-emu] misuse: {msg}");
        self.misuse.lock().expect("misuse lock").push(msg);
    }
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
