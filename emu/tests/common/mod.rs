//! Shared setup of the emulator's tests: one emulated driver per test process (its state is
//! process-wide, like a real driver's), initialised with a slow bandwidth model so that pending
//! work is observable, and the primary context made current on each test's thread.
#![allow(dead_code)]

use std::ffi::c_void;
use std::sync::OnceLock;

use vramswap_cuda_emu as emu;
use vramswap_cuda_emu::result::CUDA_SUCCESS;
use vramswap_sim::{Bandwidth, SimConfig, SimDevice};

/// Host-to-device bandwidth of the test device: slow enough that a few MiB stay pending for a
/// visible while, so "not ready" states can be observed without timing assertions.
pub const H2D_BYTES_PER_SEC: f64 = 10e6;

/// Capacity of the test device.
pub const CAPACITY: u64 = 1 << 30;

/// Initialises the driver (once) and binds the primary context to the calling thread.
pub fn setup() {
    static CTX: OnceLock<usize> = OnceLock::new();
    let ctx = *CTX.get_or_init(|| {
        let config = SimConfig {
            capacity: CAPACITY,
            bandwidth: Some(Bandwidth {
                h2d: H2D_BYTES_PER_SEC,
                ..Bandwidth::default()
            }),
            ..emu::state::base_config()
        };
        assert_eq!(emu::init_with_device(SimDevice::new(config)), CUDA_SUCCESS);
        // SAFETY: plain driver calls with valid out-pointers.
        unsafe {
            assert_eq!(emu::cuInit(0), CUDA_SUCCESS);
            let mut ctx: *mut c_void = std::ptr::null_mut();
            assert_eq!(emu::cuDevicePrimaryCtxRetain(&mut ctx, 0), CUDA_SUCCESS);
            ctx as usize
        }
    });
    // SAFETY: binds the retained primary context to this thread.
    assert_eq!(
        unsafe { emu::cuCtxSetCurrent(ctx as *mut c_void) },
        CUDA_SUCCESS
    );
}

/// Allocates `n` bytes of device memory.
pub fn alloc(n: usize) -> u64 {
    let mut p = 0;
    // SAFETY: valid out-pointer.
    assert_eq!(unsafe { emu::cuMemAlloc_v2(&mut p, n) }, CUDA_SUCCESS);
    p
}

/// Frees device memory.
pub fn free(p: u64) {
    // SAFETY: plain call; the emulator validates the pointer.
    assert_eq!(unsafe { emu::cuMemFree_v2(p) }, CUDA_SUCCESS);
}

/// A non-blocking stream.
pub fn stream() -> *mut c_void {
    let mut s = std::ptr::null_mut();
    // SAFETY: valid out-pointer.
    assert_eq!(unsafe { emu::cuStreamCreate(&mut s, 1) }, CUDA_SUCCESS);
    s
}

/// Waits for and destroys a stream.
pub fn destroy(s: *mut c_void) {
    // SAFETY: a stream made by `stream`.
    unsafe {
        assert_eq!(emu::cuStreamSynchronize(s), CUDA_SUCCESS);
        assert_eq!(emu::cuStreamDestroy_v2(s), CUDA_SUCCESS);
    }
}

/// The `cuda.h` name of a result, through the emulator's `cuGetErrorName`.
pub fn name(r: u32) -> String {
    let mut p = std::ptr::null();
    // SAFETY: valid out-pointer; the result is a static string or NULL.
    unsafe {
        if emu::cuGetErrorName(r, &mut p) != CUDA_SUCCESS || p.is_null() {
            return format!("unknown {r}");
        }
        std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

/// Asserts a call returned the named result.
#[macro_export]
macro_rules! assert_cu {
    ($call:expr, $want:expr) => {{
        let got = $call;
        assert_eq!(
            common::name(got),
            common::name($want),
            "{} returned {}",
            stringify!($call),
            common::name(got)
        );
    }};
}
