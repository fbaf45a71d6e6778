//! The swap engine's calls and `vramswap_guard`.

use std::ffi::{c_char, c_void};

use super::context::{context, device_ptr_out, vramswap_context};
use super::{check_non_null, guarded, str_arg, vramswap_status, write_json, CResult};
use crate::load::LoadOptions;
use crate::swap::{SwapEngine, WeightGuard};

/// A weight set held on the device (opaque): while it lives the set is not offloaded or
/// evicted, and its device addresses are valid. Release it with `vramswap_guard_release`.
pub struct vramswap_guard {
    guard: WeightGuard,
}

/// The guard behind a handle.
///
/// # Safety
/// `guard`, when not NULL, was returned by `vramswap_engine_acquire` and not released.
unsafe fn guard_ref<'a>(guard: *const vramswap_guard) -> CResult<&'a WeightGuard> {
    check_non_null(guard, "guard")?;
    // SAFETY: not NULL, and the caller promises a live guard from Box::into_raw.
    Ok(unsafe { &(*guard).guard })
}

/// Registers the weight set `name` to load lazily from `path` (a `.safetensors` file or a model
/// directory): nothing is read until the first acquire or prefetch. A name already registered
/// is `VRAMSWAP_ALREADY_EXISTS`; a missing path is `VRAMSWAP_IO`.
///
/// # Safety
/// `ctx` is NULL or live; `name` and `path` are NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn vramswap_engine_register(
    ctx: *mut vramswap_context,
    name: *const c_char,
    path: *const c_char,
) -> vramswap_status {
    guarded("vramswap_engine_register", || {
        // SAFETY: NULL-checked inside; live / NUL-terminated otherwise (caller's contract).
        let (c, name, path) = unsafe {
            (
                context(ctx)?,
                str_arg(name, "name")?,
                str_arg(path, "path")?,
            )
        };
        Ok(c.engine.register_path(name, path, LoadOptions::default())?)
    })
}

/// Makes the set `name` resident (loading it first if needed, evicting least recently used
/// idle sets to fit the device budget), waits until every byte has arrived, and returns a guard
/// in `*out` that keeps it on the device. On failure `*out` is NULL.
///
/// # Safety
/// `ctx` is NULL or live; `name` is NULL or NUL-terminated; `out` is NULL or valid for writing
/// a pointer.
#[no_mangle]
pub unsafe extern "C" fn vramswap_engine_acquire(
    ctx: *mut vramswap_context,
    name: *const c_char,
    out: *mut *mut vramswap_guard,
) -> vramswap_status {
    guarded("vramswap_engine_acquire", || {
        check_non_null(out, "out")?;
        // SAFETY: not NULL and valid for a pointer write (caller's contract).
        unsafe { out.write(std::ptr::null_mut()) };
        // SAFETY: NULL-checked inside; live / NUL-terminated otherwise (caller's contract).
        let (c, name) = unsafe { (context(ctx)?, str_arg(name, "name")?) };
        let guard = c.engine.acquire(name)?;
        // SAFETY: as above.
        unsafe { out.write(Box::into_raw(Box::new(vramswap_guard { guard }))) };
        Ok(())
    })
}

/// Releases a guard: the set stays resident but may now be offloaded or evicted. NULL is
/// ignored.
///
/// # Safety
/// `guard` is NULL or a live guard; it must not be used again.
#[no_mangle]
pub unsafe extern "C" fn vramswap_guard_release(guard: *mut vramswap_guard) {
    guarded("vramswap_guard_release", || {
        if !guard.is_null() {
            // SAFETY: a live guard from Box::into_raw, given up by the caller.
            drop(unsafe { Box::from_raw(guard) });
        }
        Ok(())
    });
}

/// The device address of the set's first byte, into `*out`.
///
/// # Safety
/// `guard` is NULL or live; `out` is NULL or valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn vramswap_guard_base(
    guard: *const vramswap_guard,
    out: *mut *mut c_void,
) -> vramswap_status {
    guarded("vramswap_guard_base", || {
        check_non_null(out, "out")?;
        // SAFETY: not NULL and valid for a pointer write (caller's contract).
        unsafe { out.write(std::ptr::null_mut()) };
        // SAFETY: NULL-checked inside; live otherwise (caller's contract).
        let g = unsafe { guard_ref(guard) }?;
        // SAFETY: not NULL and valid for a pointer write (caller's contract).
        unsafe { out.write(device_ptr_out(g.base())) };
        Ok(())
    })
}

/// The set's size in bytes, into `*out`.
///
/// # Safety
/// `guard` is NULL or live; `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn vramswap_guard_bytes(
    guard: *const vramswap_guard,
    out: *mut u64,
) -> vramswap_status {
    guarded("vramswap_guard_bytes", || {
        check_non_null(out, "out")?;
        // SAFETY: NULL-checked inside; live otherwise (caller's contract).
        let g = unsafe { guard_ref(guard) }?;
        // SAFETY: not NULL and valid for a write (caller's contract).
        unsafe { out.write(g.bytes()) };
        Ok(())
    })
}

/// The device address of tensor `name` into `*out`, and its size in bytes into `*bytes` when
/// `bytes` is not NULL. An unknown tensor is `VRAMSWAP_NOT_FOUND`.
///
/// # Safety
/// `guard` is NULL or live; `name` is NULL or NUL-terminated; `out` is NULL or valid for
/// writing a pointer; `bytes` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn vramswap_guard_tensor_ptr(
    guard: *const vramswap_guard,
    name: *const c_char,
    out: *mut *mut c_void,
    bytes: *mut usize,
) -> vramswap_status {
    guarded("vramswap_guard_tensor_ptr", || {
        check_non_null(out, "out")?;
        // SAFETY: not NULL and valid for a pointer write (caller's contract).
        unsafe { out.write(std::ptr::null_mut()) };
        // SAFETY: NULL-checked inside; live / NUL-terminated otherwise (caller's contract).
        let (g, name) = unsafe { (guard_ref(guard)?, str_arg(name, "name")?) };
        let p = g.tensor_ptr(name)?;
        let len = g
            .tensors()
            .iter()
            .find(|t| t.name == name)
            .map_or(0, |t| t.len);
        // SAFETY: `out` is not NULL; both are valid for writes when not NULL (caller's
        // contract).
        unsafe {
            out.write(device_ptr_out(p));
            if !bytes.is_null() {
                bytes.write(len as usize);
            }
        }
        Ok(())
    })
}

/// Writes the set's tensors as a JSON array (`name`, `dtype`, `shape`, `offset`, `len` each)
/// into `buf`, like `vramswap_stats_json`.
///
/// # Safety
/// `guard` is NULL or live; `buf` is NULL or valid for `buf_len` bytes; `needed` is NULL or
/// valid for a write.
#[no_mangle]
pub unsafe extern "C" fn vramswap_guard_tensors_json(
    guard: *const vramswap_guard,
    buf: *mut c_char,
    buf_len: usize,
    needed: *mut usize,
) -> vramswap_status {
    guarded("vramswap_guard_tensors_json", || {
        // SAFETY: NULL-checked inside; live otherwise (caller's contract).
        let g = unsafe { guard_ref(guard) }?;
        // SAFETY: forwarded from the caller's contract.
        unsafe { write_json(&g.tensors(), buf, buf_len, needed) }
    })
}

/// Copies tensor `name`'s bytes from the device into `dst` of `dst_len` bytes, and its size into
/// `*needed` when `needed` is not NULL; a buffer too small is `VRAMSWAP_BUFFER_TOO_SMALL`.
///
/// # Safety
/// `guard` is NULL or live; `name` is NULL or NUL-terminated; `dst` is NULL or valid for
/// writing `dst_len` bytes; `needed` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn vramswap_guard_read_tensor(
    guard: *const vramswap_guard,
    name: *const c_char,
    dst: *mut c_void,
    dst_len: usize,
    needed: *mut usize,
) -> vramswap_status {
    guarded("vramswap_guard_read_tensor", || {
        // SAFETY: NULL-checked inside; live / NUL-terminated otherwise (caller's contract).
        let (g, name) = unsafe { (guard_ref(guard)?, str_arg(name, "name")?) };
        let data = g.read_tensor(name)?;
        if !needed.is_null() {
            // SAFETY: not NULL and valid for a write (caller's contract).
            unsafe { needed.write(data.len()) };
        }
        if dst_len < data.len() {
            return Err(super::Failure::new(
                vramswap_status::VRAMSWAP_BUFFER_TOO_SMALL,
                format!(
                    "tensor `{name}` has {} bytes, the buffer {dst_len}",
                    data.len()
                ),
            ));
        }
        check_non_null(dst, "dst")?;
        // SAFETY: `dst` is not NULL and valid for dst_len >= data.len() bytes; `data` is a
        // distinct allocation.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst.cast::<u8>(), data.len()) };
        Ok(())
    })
}

/// The body of the calls that take a set's name.
///
/// # Safety
/// `ctx` is NULL or live; `name` is NULL or NUL-terminated.
unsafe fn by_name(
    call: &str,
    ctx: *mut vramswap_context,
    name: *const c_char,
    op: impl FnOnce(&SwapEngine, &str) -> crate::Result<()>,
) -> vramswap_status {
    guarded(call, || {
        // SAFETY: NULL-checked inside; live / NUL-terminated otherwise (caller's contract).
        let (c, name) = unsafe { (context(ctx)?, str_arg(name, "name")?) };
        Ok(op(&c.engine, name)?)
    })
}

/// Moves the set `name` off the device (its host copy stays; a clean set is unmapped with
/// no copy). A set a guard holds is `VRAMSWAP_INVALID_STATE`.
///
/// # Safety
/// `ctx` is NULL or live; `name` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn vramswap_engine_offload(
    ctx: *mut vramswap_context,
    name: *const c_char,
) -> vramswap_status {
    // SAFETY: the caller's contract is by_name's.
    unsafe { by_name("vramswap_engine_offload", ctx, name, |e, n| e.offload(n)) }
}

/// Starts loading and uploading the set `name` in the background and returns at once; a
/// later acquire waits for what is still in flight.
///
/// # Safety
/// `ctx` is NULL or live; `name` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn vramswap_engine_prefetch(
    ctx: *mut vramswap_context,
    name: *const c_char,
) -> vramswap_status {
    // SAFETY: the caller's contract is by_name's.
    unsafe { by_name("vramswap_engine_prefetch", ctx, name, |e, n| e.prefetch(n)) }
}

/// Drops the set `name` from the device and the host arena; it reloads from its file on
/// the next acquire. A set a guard holds is `VRAMSWAP_INVALID_STATE`.
///
/// # Safety
/// `ctx` is NULL or live; `name` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn vramswap_engine_release(
    ctx: *mut vramswap_context,
    name: *const c_char,
) -> vramswap_status {
    // SAFETY: the caller's contract is by_name's.
    unsafe { by_name("vramswap_engine_release", ctx, name, |e, n| e.release(n)) }
}

/// Forgets the set `name` entirely (after offloading and releasing it).
///
/// # Safety
/// `ctx` is NULL or live; `name` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn vramswap_engine_unregister(
    ctx: *mut vramswap_context,
    name: *const c_char,
) -> vramswap_status {
    // SAFETY: the caller's contract is by_name's.
    unsafe {
        by_name("vramswap_engine_unregister", ctx, name, |e, n| {
            e.unregister(n)
        })
    }
}

/// Writes the engine's status as JSON (each set's state, bytes, guards; the counters of loads,
/// swaps and bytes moved) into `buf`, like `vramswap_stats_json`. The text changes between
/// calls (idle times grow), so after a size query allow some slack, or ask again while the
/// result is `VRAMSWAP_BUFFER_TOO_SMALL`.
///
/// # Safety
/// `ctx` is NULL or live; `buf` is NULL or valid for `buf_len` bytes; `needed` is NULL or
/// valid for a write.
#[no_mangle]
pub unsafe extern "C" fn vramswap_engine_status_json(
    ctx: *mut vramswap_context,
    buf: *mut c_char,
    buf_len: usize,
    needed: *mut usize,
) -> vramswap_status {
    guarded("vramswap_engine_status_json", || {
        // SAFETY: NULL-checked inside; live otherwise (caller's contract).
        let c = unsafe { context(ctx) }?;
        // SAFETY: forwarded from the caller's contract.
        unsafe { write_json(&c.engine.status(), buf, buf_len, needed) }
    })
}
