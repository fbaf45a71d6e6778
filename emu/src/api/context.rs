//! Initialisation, version, device queries and contexts.
//!
//! Reference: NVIDIA CUDA Driver API, sections "Initialization", "Version Management", "Device
//! Management", "Primary Context Management", "Context Management"
//! (<https://docs.nvidia.com/cuda/cuda-driver-api/>).

use std::ffi::{c_char, c_int, c_uint, c_void};
use std::sync::atomic::Ordering;

use vramswap_sim::SimDevice;

use crate::result::{
    code, fail, guard, sim_fail, CUresult, Res, CUDA_ERROR_INVALID_CONTEXT,
    CUDA_ERROR_INVALID_VALUE, CUDA_ERROR_NOT_SUPPORTED, CUDA_SUCCESS,
};
use crate::state::{
    check_device, current, driver, non_null, set_current, version_text, with_context, EmuOptions,
    EMU_CONF_KEYS, PRIMARY_CONTEXT,
};

/// The driver version the emulator reports (CUDA 13.0).
pub const DRIVER_VERSION: c_int = 13000;

/// The emulator's own options from `VRAMSWAP_EMU_CONF`, and the rest of it for the device.
fn options_from_env() -> Result<(EmuOptions, String), String> {
    let conf = std::env::var("VRAMSWAP_EMU_CONF").unwrap_or_default();
    crate::state::parse_emu_conf(&conf)
        .map_err(|e| format!("VRAMSWAP_EMU_CONF: {e} (emulator keys: {EMU_CONF_KEYS})"))
}

/// Builds the device from `VRAMSWAP_EMU_CONF` and plants `VRAMSWAP_EMU_FAULTS`.
fn device_from_env() -> Result<(SimDevice, EmuOptions), CUresult> {
    let (opts, conf) =
        options_from_env().map_err(|e| fail("cuInit", CUDA_ERROR_INVALID_VALUE, &e))?;
    let config = vramswap_sim::parse_config(&conf, crate::state::base_config()).map_err(|e| {
        fail(
            "cuInit",
            CUDA_ERROR_INVALID_VALUE,
            &format!("VRAMSWAP_EMU_CONF: {e}; emulator keys: {EMU_CONF_KEYS}"),
        )
    })?;
    let faults = std::env::var("VRAMSWAP_EMU_FAULTS").unwrap_or_default();
    let plan = vramswap_sim::parse_faults(&faults).map_err(|e| {
        fail(
            "cuInit",
            CUDA_ERROR_INVALID_VALUE,
            &format!("VRAMSWAP_EMU_FAULTS: {e}"),
        )
    })?;
    let dev = SimDevice::new(config);
    for (op, n) in plan {
        dev.inject_fault(op, n);
    }
    Ok((dev, opts))
}

/// Initialises the emulated driver with a given device instead of reading the environment (for
/// tests that need a particular configuration). Like `cuInit`, only the first initialisation
/// counts; returns the `CUresult` of the first one.
pub fn init_with_device(dev: SimDevice) -> CUresult {
    init_with_device_and_options(dev, EmuOptions::default())
}

/// [`init_with_device`] with the emulator's own options (driver version, read-only host
/// registration) too.
pub fn init_with_device_and_options(dev: SimDevice, opts: EmuOptions) -> CUresult {
    crate::state::init_with(|| Ok((dev, opts)))
}

/// `cuInit`: initialises the driver. "Currently, the Flags parameter must be 0."
///
/// Reads `VRAMSWAP_EMU_CONF`, `VRAMSWAP_EMU_FAULTS` and `VRAMSWAP_EMU_REPORT` (see the README).
///
/// # Safety
/// Callable from any thread.
#[no_mangle]
pub unsafe extern "C" fn cuInit(flags: c_uint) -> CUresult {
    guard("cuInit", || {
        if flags != 0 {
            return fail("cuInit", CUDA_ERROR_INVALID_VALUE, "Flags must be 0");
        }
        let r = crate::state::init_with(device_from_env);
        if r == CUDA_SUCCESS {
            crate::report::install_exit_report();
        }
        r
    })
}

/// `cuDriverGetVersion`: 13000, or the `driver_version` of `VRAMSWAP_EMU_CONF`. Needs no
/// initialisation, as on the real driver ("Returns in *driverVersion the version of CUDA
/// supported by the driver ... (1000 major + 10 minor)").
///
/// # Safety
/// `version` must be NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuDriverGetVersion(version: *mut c_int) -> CUresult {
    guard("cuDriverGetVersion", || {
        code((|| {
            non_null("cuDriverGetVersion", version, "driverVersion")?;
            let v = match crate::state::driver_if_initialised() {
                Some(d) => d.opts.driver_version,
                // Before cuInit: what cuInit will configure (a bad value fails cuInit).
                None => options_from_env()
                    .map(|(o, _)| o.driver_version)
                    .unwrap_or(DRIVER_VERSION),
            };
            // SAFETY: checked non-null; the caller passes a writable int.
            unsafe { *version = v };
            Ok(())
        })())
    })
}

/// `cuDeviceGetCount`: one device.
///
/// # Safety
/// `count` must be NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetCount(count: *mut c_int) -> CUresult {
    guard("cuDeviceGetCount", || {
        code((|| {
            driver("cuDeviceGetCount")?;
            non_null("cuDeviceGetCount", count, "count")?;
            // SAFETY: checked non-null; the caller passes a writable int.
            unsafe { *count = 1 };
            Ok(())
        })())
    })
}

/// `cuDeviceGet`: ordinal 0 is the emulated device; others give `CUDA_ERROR_INVALID_DEVICE`.
///
/// # Safety
/// `device` must be NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuDeviceGet(device: *mut c_int, ordinal: c_int) -> CUresult {
    guard("cuDeviceGet", || {
        code((|| {
            driver("cuDeviceGet")?;
            non_null("cuDeviceGet", device, "device")?;
            check_device("cuDeviceGet", ordinal)?;
            // SAFETY: checked non-null.
            unsafe { *device = 0 };
            Ok(())
        })())
    })
}

/// `cuDeviceGetName`: the configured name, truncated to `len - 1` bytes and NUL-terminated.
///
/// # Safety
/// `name` must be NULL or valid for writes of `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetName(name: *mut c_char, len: c_int, dev: c_int) -> CUresult {
    guard("cuDeviceGetName", || {
        code((|| {
            let d = driver("cuDeviceGetName")?;
            non_null("cuDeviceGetName", name, "name")?;
            check_device("cuDeviceGetName", dev)?;
            if len <= 0 {
                return Err(fail(
                    "cuDeviceGetName",
                    CUDA_ERROR_INVALID_VALUE,
                    "len <= 0",
                ));
            }
            let s = d.dev.config().name.as_bytes();
            let n = s.len().min(len as usize - 1);
            // SAFETY: the caller's buffer holds `len` bytes; we write `n + 1 <= len`.
            unsafe {
                std::ptr::copy_nonoverlapping(s.as_ptr(), name as *mut u8, n);
                *name.add(n) = 0;
            }
            Ok(())
        })())
    })
}

/// `cuDeviceTotalMem_v2`: the configured capacity.
///
/// # Safety
/// `bytes` must be NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: c_int) -> CUresult {
    guard("cuDeviceTotalMem_v2", || {
        code((|| {
            let d = driver("cuDeviceTotalMem_v2")?;
            non_null("cuDeviceTotalMem_v2", bytes, "bytes")?;
            check_device("cuDeviceTotalMem_v2", dev)?;
            // SAFETY: checked non-null.
            unsafe { *bytes = d.dev.config().capacity as usize };
            Ok(())
        })())
    })
}

/// Device attributes newer than CUDA 10.2 that the emulator models, with the driver version
/// that added each: a driver older than that does not know the number and answers
/// `CUDA_ERROR_INVALID_VALUE`, as for any number outside its `CUdevice_attribute`.
pub const ATTRIBUTE_VERSIONS: &[(c_int, i32)] = &[
    (113, 11010), // READ_ONLY_HOST_REGISTER_SUPPORTED
    (115, 11020), // MEMORY_POOLS_SUPPORTED
];

/// The value of a device attribute of the emulated Hopper-like device (attribute numbers from
/// `cuda.h`, `CUdevice_attribute`), or `None` for attributes the emulator does not model.
/// `READ_ONLY_HOST_REGISTER_SUPPORTED` (113) is 1 here; `VRAMSWAP_EMU_CONF`'s
/// `read_only_host_register:0` makes `cuDeviceGetAttribute` report 0.
pub fn attribute_value(attr: c_int, copy_engines: u32) -> Option<c_int> {
    Some(match attr {
        1 => 1024,                   // MAX_THREADS_PER_BLOCK
        2 | 3 => 1024,               // MAX_BLOCK_DIM_X / Y
        4 => 64,                     // MAX_BLOCK_DIM_Z
        5 => i32::MAX,               // MAX_GRID_DIM_X
        6 | 7 => 65535,              // MAX_GRID_DIM_Y / Z
        8 => 48 * 1024,              // MAX_SHARED_MEMORY_PER_BLOCK
        10 => 32,                    // WARP_SIZE
        16 => 132,                   // MULTIPROCESSOR_COUNT
        18 => 0,                     // INTEGRATED
        19 => 1,                     // CAN_MAP_HOST_MEMORY
        31 => 1,                     // CONCURRENT_KERNELS
        40 => copy_engines as c_int, // ASYNC_ENGINE_COUNT
        41 => 1,                     // UNIFIED_ADDRESSING
        75 => 9,                     // COMPUTE_CAPABILITY_MAJOR
        76 => 0,                     // COMPUTE_CAPABILITY_MINOR
        99 => 1,                     // HOST_REGISTER_SUPPORTED
        102 => 1,                    // VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED
        113 => 1,                    // READ_ONLY_HOST_REGISTER_SUPPORTED
        115 => 1,                    // MEMORY_POOLS_SUPPORTED
        _ => return None,
    })
}

/// `cuDeviceGetAttribute`: a Hopper-like device (compute capability 9.0, VMM and memory pools
/// supported, the configured number of copy engines). Attributes outside `cuda.h`'s range give
/// `CUDA_ERROR_INVALID_VALUE`; attributes the emulator does not model give
/// `CUDA_ERROR_NOT_SUPPORTED`, never a made-up value.
///
/// # Safety
/// `value` must be NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetAttribute(
    value: *mut c_int,
    attr: c_int,
    dev: c_int,
) -> CUresult {
    guard("cuDeviceGetAttribute", || {
        code((|| {
            let d = driver("cuDeviceGetAttribute")?;
            non_null("cuDeviceGetAttribute", value, "pi")?;
            check_device("cuDeviceGetAttribute", dev)?;
            if !(1..162).contains(&attr) {
                return Err(fail(
                    "cuDeviceGetAttribute",
                    CUDA_ERROR_INVALID_VALUE,
                    &format!("attribute {attr} is not a CUdevice_attribute"),
                ));
            }
            if let Some((_, added)) = ATTRIBUTE_VERSIONS.iter().find(|(a, _)| *a == attr) {
                if d.opts.driver_version < *added {
                    return Err(fail(
                        "cuDeviceGetAttribute",
                        CUDA_ERROR_INVALID_VALUE,
                        &format!(
                            "attribute {attr} was added in CUDA {}; this is a CUDA {} driver",
                            version_text(*added),
                            version_text(d.opts.driver_version)
                        ),
                    ));
                }
            }
            let mut v = attribute_value(attr, d.dev.config().copy_engines).ok_or_else(|| {
                fail(
                    "cuDeviceGetAttribute",
                    CUDA_ERROR_NOT_SUPPORTED,
                    &format!("attribute {attr} is not modelled by the emulator"),
                )
            })?;
            if attr == 113 && !d.opts.read_only_host_register {
                v = 0;
            }
            // SAFETY: checked non-null.
            unsafe { *value = v };
            Ok(())
        })())
    })
}

/// `cuDevicePrimaryCtxRetain`: retains the device's primary context and returns its handle.
/// It does not make it current: "Unlike cuCtxCreate() the newly retained context is not pushed
/// onto the stack"; callers bind it to each thread with `cuCtxSetCurrent`.
///
/// # Safety
/// `ctx` must be NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxRetain(ctx: *mut *mut c_void, dev: c_int) -> CUresult {
    guard("cuDevicePrimaryCtxRetain", || {
        code((|| {
            let d = driver("cuDevicePrimaryCtxRetain")?;
            non_null("cuDevicePrimaryCtxRetain", ctx, "pctx")?;
            check_device("cuDevicePrimaryCtxRetain", dev)?;
            d.primary_refs.fetch_add(1, Ordering::SeqCst);
            // SAFETY: checked non-null.
            unsafe { *ctx = PRIMARY_CONTEXT as *mut c_void };
            Ok(())
        })())
    })
}

/// `cuDevicePrimaryCtxRelease_v2`: releases one reference; "The context is automatically reset
/// once the last reference to it is released." At zero the context is destroyed:
/// threads that still have it current get `CUDA_ERROR_INVALID_CONTEXT` from then on. (The
/// emulator keeps the device's memory; what was not freed shows in the leak report.)
///
/// # Safety
/// Callable from any thread.
#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxRelease_v2(dev: c_int) -> CUresult {
    guard("cuDevicePrimaryCtxRelease_v2", || {
        code((|| {
            let d = driver("cuDevicePrimaryCtxRelease_v2")?;
            check_device("cuDevicePrimaryCtxRelease_v2", dev)?;
            d.primary_refs
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .map_err(|_| {
                    fail(
                        "cuDevicePrimaryCtxRelease_v2",
                        CUDA_ERROR_INVALID_CONTEXT,
                        "the primary context is not retained",
                    )
                })?;
            Ok(())
        })())
    })
}

/// `cuCtxSetCurrent`: "Binds the specified CUDA context to the calling CPU thread. ... If ctx
/// is NULL then the CUDA context previously bound to the calling CPU thread is unbound."
///
/// # Safety
/// Callable from any thread.
#[no_mangle]
pub unsafe extern "C" fn cuCtxSetCurrent(ctx: *mut c_void) -> CUresult {
    guard("cuCtxSetCurrent", || {
        code((|| {
            let d = driver("cuCtxSetCurrent")?;
            let ctx = ctx as usize;
            if ctx != 0 && (ctx != PRIMARY_CONTEXT || d.primary_refs.load(Ordering::SeqCst) == 0) {
                return Err(fail(
                    "cuCtxSetCurrent",
                    CUDA_ERROR_INVALID_CONTEXT,
                    &format!("{ctx:#x} is not a live context"),
                ));
            }
            set_current(ctx);
            Ok(())
        })())
    })
}

/// `cuCtxGetCurrent`: the context bound to the calling thread, or NULL.
///
/// # Safety
/// `ctx` must be NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuCtxGetCurrent(ctx: *mut *mut c_void) -> CUresult {
    guard("cuCtxGetCurrent", || {
        code((|| {
            driver("cuCtxGetCurrent")?;
            non_null("cuCtxGetCurrent", ctx, "pctx")?;
            // SAFETY: checked non-null.
            unsafe { *ctx = current() as *mut c_void };
            Ok(())
        })())
    })
}

/// `cuCtxSynchronize`: waits for all work of the current context; returns the first error of
/// that work ("may also return error codes from previous, asynchronous launches").
///
/// # Safety
/// Callable from any thread with a current context.
#[no_mangle]
pub unsafe extern "C" fn cuCtxSynchronize() -> CUresult {
    guard("cuCtxSynchronize", || {
        code((|| {
            let d = with_context("cuCtxSynchronize")?;
            d.dev
                .synchronize()
                .map_err(|e| sim_fail("cuCtxSynchronize", e))
        })())
    })
}

/// `Ok` with the current context's driver, for the other modules.
pub(crate) fn ctx(call: &str) -> Res<&'static crate::state::Driver> {
    with_context(call)
}
