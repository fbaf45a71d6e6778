//! Streams, events, copies and memset.
//!
//! Reference: NVIDIA CUDA Driver API, "Stream Management", "Event Management", "Memory
//! Management" and "API synchronization behavior"
//! (<https://docs.nvidia.com/cuda/cuda-driver-api/api-sync-behavior.html>).

use std::ffi::{c_uint, c_void};

use crate::api::context::ctx;
use crate::result::{
    code, fail, guard, sim_fail, CUresult, Res, CUDA_ERROR_INVALID_VALUE, CUDA_ERROR_NOT_READY,
    CUDA_ERROR_NOT_SUPPORTED, CUDA_SUCCESS,
};
use crate::state::{event_handle, event_id, non_null, stream_handle, stream_id};

macro_rules! export {
    ($call:literal, $body:block) => {
        guard($call, || code((|| -> Res<()> { $body })()))
    };
}

/// `CU_STREAM_NON_BLOCKING`.
const STREAM_NON_BLOCKING: c_uint = 1;

/// `cuStreamCreate`: flags 0 (`CU_STREAM_DEFAULT`) make a stream that synchronises with the
/// legacy NULL stream; `CU_STREAM_NON_BLOCKING` "Specifies that work running in the created
/// stream may run concurrently with work in stream 0 (the NULL stream), and that the created
/// stream should perform no implicit synchronization with stream 0".
///
/// # Safety
/// `stream` must be NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuStreamCreate(stream: *mut *mut c_void, flags: c_uint) -> CUresult {
    export!("cuStreamCreate", {
        let d = ctx("cuStreamCreate")?;
        non_null("cuStreamCreate", stream, "phStream")?;
        if flags & !STREAM_NON_BLOCKING != 0 {
            return Err(fail(
                "cuStreamCreate",
                CUDA_ERROR_INVALID_VALUE,
                "unknown flags",
            ));
        }
        let id = d
            .dev
            .stream_create(flags & STREAM_NON_BLOCKING == 0)
            .map_err(|e| sim_fail("cuStreamCreate", e))?;
        // SAFETY: checked non-null.
        unsafe { *stream = stream_handle(id) as *mut c_void };
        Ok(())
    })
}

/// `cuStreamDestroy_v2`: "In case the device is still doing work in the stream hStream when
/// cuStreamDestroy() is called, the function will return immediately and the resources
/// associated with hStream will be released automatically once the device has completed all
/// work in hStream."
///
/// # Safety
/// Callable from any thread with a current context.
#[no_mangle]
pub unsafe extern "C" fn cuStreamDestroy_v2(stream: *mut c_void) -> CUresult {
    export!("cuStreamDestroy_v2", {
        let d = ctx("cuStreamDestroy_v2")?;
        let s = stream_id("cuStreamDestroy_v2", stream)?;
        d.dev
            .stream_destroy(s)
            .map_err(|e| sim_fail("cuStreamDestroy_v2", e))
    })
}

/// `cuStreamSynchronize`: waits for the stream's work; returns the first error of that work.
///
/// # Safety
/// Callable from any thread with a current context.
#[no_mangle]
pub unsafe extern "C" fn cuStreamSynchronize(stream: *mut c_void) -> CUresult {
    export!("cuStreamSynchronize", {
        let d = ctx("cuStreamSynchronize")?;
        let s = stream_id("cuStreamSynchronize", stream)?;
        d.dev
            .stream_synchronize(s)
            .map_err(|e| sim_fail("cuStreamSynchronize", e))
    })
}

/// `cuStreamQuery`: "Returns CUDA_SUCCESS if all operations in the stream specified by hStream
/// have completed, or CUDA_ERROR_NOT_READY if not."
///
/// # Safety
/// Callable from any thread with a current context.
#[no_mangle]
pub unsafe extern "C" fn cuStreamQuery(stream: *mut c_void) -> CUresult {
    guard("cuStreamQuery", || {
        let r = (|| -> Res<bool> {
            let d = ctx("cuStreamQuery")?;
            let s = stream_id("cuStreamQuery", stream)?;
            d.dev
                .stream_query(s)
                .map_err(|e| sim_fail("cuStreamQuery", e))
        })();
        match r {
            Ok(true) => CUDA_SUCCESS,
            Ok(false) => CUDA_ERROR_NOT_READY,
            Err(c) => c,
        }
    })
}

/// `cuStreamWaitEvent`: future work on the stream waits for the event's latest record. "Flags
/// - See CUevent_capture_flags"; only `CU_EVENT_WAIT_DEFAULT` (0) is emulated.
///
/// # Safety
/// Callable from any thread with a current context.
#[no_mangle]
pub unsafe extern "C" fn cuStreamWaitEvent(
    stream: *mut c_void,
    event: *mut c_void,
    flags: c_uint,
) -> CUresult {
    export!("cuStreamWaitEvent", {
        let d = ctx("cuStreamWaitEvent")?;
        let s = stream_id("cuStreamWaitEvent", stream)?;
        let e = event_id("cuStreamWaitEvent", event)?;
        // CU_EVENT_WAIT_DEFAULT (0) and CU_EVENT_WAIT_EXTERNAL (1) are the defined flags.
        if flags > 1 {
            return Err(fail(
                "cuStreamWaitEvent",
                CUDA_ERROR_INVALID_VALUE,
                "unknown flags",
            ));
        }
        if flags != 0 {
            return Err(fail(
                "cuStreamWaitEvent",
                CUDA_ERROR_NOT_SUPPORTED,
                "CU_EVENT_WAIT_EXTERNAL is not emulated",
            ));
        }
        d.dev
            .stream_wait_event(s, e)
            .map_err(|err| sim_fail("cuStreamWaitEvent", err))
    })
}

/// `CU_EVENT_BLOCKING_SYNC | CU_EVENT_DISABLE_TIMING`.
const EVENT_FLAGS: c_uint = 1 | 2;
/// `CU_EVENT_DISABLE_TIMING`.
const EVENT_DISABLE_TIMING: c_uint = 2;

/// `cuEventCreate`: `CU_EVENT_DISABLE_TIMING` events cannot be timed; interprocess events are
/// not emulated.
///
/// # Safety
/// `event` must be NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuEventCreate(event: *mut *mut c_void, flags: c_uint) -> CUresult {
    export!("cuEventCreate", {
        let d = ctx("cuEventCreate")?;
        non_null("cuEventCreate", event, "phEvent")?;
        if flags & !EVENT_FLAGS != 0 {
            return Err(fail(
                "cuEventCreate",
                CUDA_ERROR_NOT_SUPPORTED,
                "only BLOCKING_SYNC and DISABLE_TIMING are emulated",
            ));
        }
        let id = d
            .dev
            .event_create(flags & EVENT_DISABLE_TIMING == 0)
            .map_err(|e| sim_fail("cuEventCreate", e))?;
        // SAFETY: checked non-null.
        unsafe { *event = event_handle(id) as *mut c_void };
        Ok(())
    })
}

/// `cuEventDestroy_v2`.
///
/// # Safety
/// Callable from any thread with a current context.
#[no_mangle]
pub unsafe extern "C" fn cuEventDestroy_v2(event: *mut c_void) -> CUresult {
    export!("cuEventDestroy_v2", {
        let d = ctx("cuEventDestroy_v2")?;
        let e = event_id("cuEventDestroy_v2", event)?;
        d.dev
            .event_destroy(e)
            .map_err(|err| sim_fail("cuEventDestroy_v2", err))
    })
}

/// `cuEventRecord`: captures the stream's work queued so far.
///
/// # Safety
/// Callable from any thread with a current context.
#[no_mangle]
pub unsafe extern "C" fn cuEventRecord(event: *mut c_void, stream: *mut c_void) -> CUresult {
    export!("cuEventRecord", {
        let d = ctx("cuEventRecord")?;
        let e = event_id("cuEventRecord", event)?;
        let s = stream_id("cuEventRecord", stream)?;
        d.dev
            .event_record(e, s)
            .map_err(|err| sim_fail("cuEventRecord", err))
    })
}

/// `cuEventQuery`: "Returns CUDA_SUCCESS if all captured work has been completed, or
/// CUDA_ERROR_NOT_READY if any captured work is incomplete"; an event never recorded is
/// complete.
///
/// # Safety
/// Callable from any thread with a current context.
#[no_mangle]
pub unsafe extern "C" fn cuEventQuery(event: *mut c_void) -> CUresult {
    guard("cuEventQuery", || {
        let r = (|| -> Res<bool> {
            let d = ctx("cuEventQuery")?;
            let e = event_id("cuEventQuery", event)?;
            d.dev
                .event_query(e)
                .map_err(|err| sim_fail("cuEventQuery", err))
        })();
        match r {
            Ok(true) => CUDA_SUCCESS,
            Ok(false) => CUDA_ERROR_NOT_READY,
            Err(c) => c,
        }
    })
}

/// `cuEventSynchronize`: waits for the captured work.
///
/// # Safety
/// Callable from any thread with a current context.
#[no_mangle]
pub unsafe extern "C" fn cuEventSynchronize(event: *mut c_void) -> CUresult {
    export!("cuEventSynchronize", {
        let d = ctx("cuEventSynchronize")?;
        let e = event_id("cuEventSynchronize", event)?;
        d.dev
            .event_synchronize(e)
            .map_err(|err| sim_fail("cuEventSynchronize", err))
    })
}

/// Shared body of `cuEventElapsedTime` and `cuEventElapsedTime_v2`, which the reference
/// describes alike: milliseconds between two completed timing events; "If cuEventRecord() has
/// been called on both events but one or both of them has not yet been completed ...
/// CUDA_ERROR_NOT_READY is returned. If either event was created with the
/// CU_EVENT_DISABLE_TIMING flag, then this function will return CUDA_ERROR_INVALID_HANDLE."
/// The figure is host time of the simulated work, not GPU time.
///
/// # Safety
/// `ms` must be NULL or valid for a write.
unsafe fn elapsed_time(
    call: &'static str,
    ms: *mut f32,
    start: *mut c_void,
    end: *mut c_void,
) -> Res<()> {
    let d = ctx(call)?;
    non_null(call, ms, "pMilliseconds")?;
    let a = event_id(call, start)?;
    let b = event_id(call, end)?;
    let v = d
        .dev
        .event_elapsed_ms(a, b)
        .map_err(|err| sim_fail(call, err))?;
    // SAFETY: checked non-null.
    unsafe { *ms = v };
    Ok(())
}

/// `cuEventElapsedTime`: the entry point every driver has (`cuda.h` of CUDA 13 declares only
/// the `_v2`, but drivers keep exporting the first version for programs built against older
/// headers). See `elapsed_time`.
///
/// # Safety
/// `ms` must be NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuEventElapsedTime(
    ms: *mut f32,
    start: *mut c_void,
    end: *mut c_void,
) -> CUresult {
    guard("cuEventElapsedTime", || {
        // SAFETY: forwarded contract.
        code(unsafe { elapsed_time("cuEventElapsedTime", ms, start, end) })
    })
}

/// `cuEventElapsedTime_v2`: added in CUDA 12.8; on an older emulated driver version
/// (`VRAMSWAP_EMU_CONF` `driver_version`) it behaves as missing. See `elapsed_time`.
///
/// # Safety
/// `ms` must be NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuEventElapsedTime_v2(
    ms: *mut f32,
    start: *mut c_void,
    end: *mut c_void,
) -> CUresult {
    guard("cuEventElapsedTime_v2", || {
        // SAFETY: forwarded contract.
        code(unsafe { elapsed_time("cuEventElapsedTime_v2", ms, start, end) })
    })
}

/// `cuMemcpyHtoDAsync_v2`: stream-ordered and asynchronous. From pageable memory the reference
/// says only that "the function might be synchronous with respect to host" (API
/// synchronization behavior, asynchronous memcpy) and that undocumented behaviour must not be
/// relied upon, so the emulator gives no more than stream order there either: the source must
/// stay untouched until the stream has passed the copy.
///
/// # Safety
/// `src` must be valid for `bytes` bytes until the copy has completed.
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyHtoDAsync_v2(
    dst: u64,
    src: *const c_void,
    bytes: usize,
    stream: *mut c_void,
) -> CUresult {
    export!("cuMemcpyHtoDAsync_v2", {
        let d = ctx("cuMemcpyHtoDAsync_v2")?;
        let s = stream_id("cuMemcpyHtoDAsync_v2", stream)?;
        // SAFETY: forwarded contract.
        unsafe { d.dev.copy_htod(dst, src as *const u8, bytes as u64, s) }
            .map_err(|e| sim_fail("cuMemcpyHtoDAsync_v2", e))
    })
}

/// `cuMemcpyDtoHAsync_v2`: stream-ordered and asynchronous, into pinned and pageable memory
/// alike ("For transfers between device memory and pageable host memory, the function might be
/// synchronous with respect to host"): the destination is ready once the stream has passed the
/// copy (a synchronisation), not when the call returns.
///
/// # Safety
/// `dst` must be valid for `bytes` bytes and untouched until the copy has completed.
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoHAsync_v2(
    dst: *mut c_void,
    src: u64,
    bytes: usize,
    stream: *mut c_void,
) -> CUresult {
    export!("cuMemcpyDtoHAsync_v2", {
        let d = ctx("cuMemcpyDtoHAsync_v2")?;
        let s = stream_id("cuMemcpyDtoHAsync_v2", stream)?;
        // SAFETY: forwarded contract.
        unsafe { d.dev.copy_dtoh(dst as *mut u8, src, bytes as u64, s) }
            .map_err(|e| sim_fail("cuMemcpyDtoHAsync_v2", e))
    })
}

/// `cuMemcpyDtoDAsync_v2`.
///
/// # Safety
/// Callable from any thread with a current context.
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoDAsync_v2(
    dst: u64,
    src: u64,
    bytes: usize,
    stream: *mut c_void,
) -> CUresult {
    export!("cuMemcpyDtoDAsync_v2", {
        let d = ctx("cuMemcpyDtoDAsync_v2")?;
        let s = stream_id("cuMemcpyDtoDAsync_v2", stream)?;
        d.dev
            .copy_dtod(dst, src, bytes as u64, s)
            .map_err(|e| sim_fail("cuMemcpyDtoDAsync_v2", e))
    })
}

/// `cuMemcpyHtoD_v2`: the synchronous copy, on the NULL stream, returning once it completed.
///
/// # Safety
/// `src` must be valid for `bytes` bytes.
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyHtoD_v2(dst: u64, src: *const c_void, bytes: usize) -> CUresult {
    export!("cuMemcpyHtoD_v2", {
        let d = ctx("cuMemcpyHtoD_v2")?;
        // SAFETY: forwarded contract; the copy completes before returning.
        unsafe { d.dev.copy_htod(dst, src as *const u8, bytes as u64, 0) }
            .map_err(|e| sim_fail("cuMemcpyHtoD_v2", e))?;
        d.dev
            .stream_synchronize(0)
            .map_err(|e| sim_fail("cuMemcpyHtoD_v2", e))
    })
}

/// `cuMemcpyDtoH_v2`: "the function returns only once the copy has completed".
///
/// # Safety
/// `dst` must be valid for `bytes` bytes.
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoH_v2(dst: *mut c_void, src: u64, bytes: usize) -> CUresult {
    export!("cuMemcpyDtoH_v2", {
        let d = ctx("cuMemcpyDtoH_v2")?;
        // SAFETY: forwarded contract; the copy completes before returning.
        unsafe { d.dev.copy_dtoh(dst as *mut u8, src, bytes as u64, 0) }
            .map_err(|e| sim_fail("cuMemcpyDtoH_v2", e))?;
        d.dev
            .stream_synchronize(0)
            .map_err(|e| sim_fail("cuMemcpyDtoH_v2", e))
    })
}

/// `cuMemsetD8Async`.
///
/// # Safety
/// Callable from any thread with a current context.
#[no_mangle]
pub unsafe extern "C" fn cuMemsetD8Async(
    dst: u64,
    value: u8,
    n: usize,
    stream: *mut c_void,
) -> CUresult {
    export!("cuMemsetD8Async", {
        let d = ctx("cuMemsetD8Async")?;
        let s = stream_id("cuMemsetD8Async", stream)?;
        d.dev
            .memset_d8(dst, value, n as u64, s)
            .map_err(|e| sim_fail("cuMemsetD8Async", e))
    })
}
