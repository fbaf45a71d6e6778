//! `CUresult` codes, their names and descriptions (`cuGetErrorName`, `cuGetErrorString`), and
//! the guard that keeps panics from crossing the C ABI.

use std::panic::{catch_unwind, AssertUnwindSafe};

use vramswap_sim::SimError;

/// The driver's result type (`enum cudaError_enum` in `cuda.h`, an `unsigned int` in the ABI).
pub type CUresult = u32;

/// `CUDA_SUCCESS`.
pub const CUDA_SUCCESS: CUresult = 0;
/// `CUDA_ERROR_INVALID_VALUE`.
pub const CUDA_ERROR_INVALID_VALUE: CUresult = 1;
/// `CUDA_ERROR_OUT_OF_MEMORY`.
pub const CUDA_ERROR_OUT_OF_MEMORY: CUresult = 2;
/// `CUDA_ERROR_NOT_INITIALIZED`.
pub const CUDA_ERROR_NOT_INITIALIZED: CUresult = 3;
/// `CUDA_ERROR_INVALID_DEVICE`.
pub const CUDA_ERROR_INVALID_DEVICE: CUresult = 101;
/// `CUDA_ERROR_INVALID_IMAGE`.
pub const CUDA_ERROR_INVALID_IMAGE: CUresult = 200;
/// `CUDA_ERROR_INVALID_CONTEXT`.
pub const CUDA_ERROR_INVALID_CONTEXT: CUresult = 201;
/// `CUDA_ERROR_INVALID_PTX`.
pub const CUDA_ERROR_INVALID_PTX: CUresult = 218;
/// `CUDA_ERROR_UNSUPPORTED_PTX_VERSION`.
pub const CUDA_ERROR_UNSUPPORTED_PTX_VERSION: CUresult = 222;
/// `CUDA_ERROR_INVALID_HANDLE`.
pub const CUDA_ERROR_INVALID_HANDLE: CUresult = 400;
/// `CUDA_ERROR_NOT_FOUND`.
pub const CUDA_ERROR_NOT_FOUND: CUresult = 500;
/// `CUDA_ERROR_NOT_READY`.
pub const CUDA_ERROR_NOT_READY: CUresult = 600;
/// `CUDA_ERROR_ILLEGAL_ADDRESS`.
pub const CUDA_ERROR_ILLEGAL_ADDRESS: CUresult = 700;
/// `CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED`.
pub const CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED: CUresult = 712;
/// `CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED`.
pub const CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED: CUresult = 713;
/// `CUDA_ERROR_NOT_PERMITTED`.
pub const CUDA_ERROR_NOT_PERMITTED: CUresult = 800;
/// `CUDA_ERROR_NOT_SUPPORTED`.
pub const CUDA_ERROR_NOT_SUPPORTED: CUresult = 801;
/// `CUDA_ERROR_UNKNOWN`.
pub const CUDA_ERROR_UNKNOWN: CUresult = 999;

/// Every `CUresult` the emulator can return (and a few more), with its `cuda.h` name and the
/// description `cuGetErrorString` gives.
pub const ERRORS: &[(CUresult, &str, &str)] = &[
    (0, "CUDA_SUCCESS", "no error"),
    (1, "CUDA_ERROR_INVALID_VALUE", "invalid argument"),
    (2, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory"),
    (3, "CUDA_ERROR_NOT_INITIALIZED", "initialization error"),
    (4, "CUDA_ERROR_DEINITIALIZED", "driver shutting down"),
    (
        100,
        "CUDA_ERROR_NO_DEVICE",
        "no CUDA-capable device is detected",
    ),
    (101, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"),
    (
        200,
        "CUDA_ERROR_INVALID_IMAGE",
        "device kernel image is invalid",
    ),
    (201, "CUDA_ERROR_INVALID_CONTEXT", "invalid device context"),
    (
        218,
        "CUDA_ERROR_INVALID_PTX",
        "a PTX JIT compilation failed",
    ),
    (
        222,
        "CUDA_ERROR_UNSUPPORTED_PTX_VERSION",
        "the provided PTX was compiled with an unsupported toolchain.",
    ),
    (400, "CUDA_ERROR_INVALID_HANDLE", "invalid resource handle"),
    (
        401,
        "CUDA_ERROR_ILLEGAL_STATE",
        "the operation cannot be performed in the present state",
    ),
    (500, "CUDA_ERROR_NOT_FOUND", "named symbol not found"),
    (600, "CUDA_ERROR_NOT_READY", "device not ready"),
    (
        700,
        "CUDA_ERROR_ILLEGAL_ADDRESS",
        "an illegal memory access was encountered",
    ),
    (
        712,
        "CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED",
        "part or all of the requested memory range is already mapped",
    ),
    (
        713,
        "CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED",
        "pointer does not correspond to a registered memory region",
    ),
    (
        719,
        "CUDA_ERROR_LAUNCH_FAILED",
        "unspecified launch failure",
    ),
    (800, "CUDA_ERROR_NOT_PERMITTED", "operation not permitted"),
    (801, "CUDA_ERROR_NOT_SUPPORTED", "operation not supported"),
    (999, "CUDA_ERROR_UNKNOWN", "unknown error"),
];

/// Name and description of `code`, if the table knows it.
pub fn describe(code: CUresult) -> Option<(&'static str, &'static str)> {
    ERRORS
        .iter()
        .find(|(c, _, _)| *c == code)
        .map(|(_, n, s)| (*n, *s))
}

/// Whether `VRAMSWAP_EMU_TRACE` asks for every failing call to be described on stderr.
fn tracing_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("VRAMSWAP_EMU_TRACE").is_ok_and(|v| !v.is_empty() && v != "0"))
}

/// Reports a failing call (when tracing) and returns its code.
pub(crate) fn fail(call: &str, code: CUresult, detail: &str) -> CUresult {
    if tracing_enabled() {
        let name = describe(code).map_or("?", |d| d.0);
        eprintln!("[vramswap-cuda-emu] {call} -> {name} ({code}): {detail}");
    }
    code
}

/// The `CUresult` of a simulated-device error.
pub(crate) fn sim_fail(call: &str, e: SimError) -> CUresult {
    fail(call, e.cuda_code(), &e.to_string())
}

/// Runs the body of an exported function, turning a panic into `CUDA_ERROR_UNKNOWN`: no panic
/// may unwind into C.
pub(crate) fn guard(call: &str, body: impl FnOnce() -> CUresult) -> CUresult {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(r) => r,
        Err(_) => fail(call, CUDA_ERROR_UNKNOWN, "internal panic in the emulator"),
    }
}

/// `Ok` for `CUDA_SUCCESS`, so results chain with `?` inside the emulator.
pub(crate) type Res<T> = Result<T, CUresult>;

/// Collapses a [`Res`] into the code an exported function returns.
pub(crate) fn code(r: Res<()>) -> CUresult {
    match r {
        Ok(()) => CUDA_SUCCESS,
        Err(c) => c,
    }
}
