//! The swap engine's calls and `vramswap_guard`.

use std::ffi::{c_char, c_void};

use super::context::{context, device_ptr_out, stale, vramswap_context};
use super::handles::HandleTable;
use super::{check_non_null, guarded, str_arg, vramswap_status, write_json, CResult, Failure};
use crate::load::LoadOptions;
use crate::swap::{SwapEngine, WeightGuard};

/// A weight set held on the device (opaque): while it lives the set is not offloaded or
/// evicted, and its device addresses are valid. Release it with `vramswap_guard_release`.
pub struct vramswap_guard {
    _opaque: [u8; 0],
}

/// The live guards; a `*mut vramswap_guard` is a handle into this table, never an address.
static GUARDS: HandleTable<WeightGuard> = HandleTable::new();

/// The guard behind a handle: a released (or never issued) guard is
/// `VRAMSWAP_INVALID_STATE`, not undefined behaviour.
///
/// # Safety
/// None beyond the C contract: kept `unsafe` so every entry point reads alike.
unsafe fn guard_ref(guard: *const vramswap_guard) -> CResult<std::sync::Arc<WeightGuard>> {
    check_non_null(guard, "guard")?;
    GUARDS
        .get(guard as usize)
        .ok_or_else(|| stale("guard", guard as usize))
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
        unsafe { out.write(std::ptr::without_provenance_mut(GUARDS.insert(guard))) };
        Ok(())
    })
}

/// Releases a guard: the set stays resident but may now be offloaded or evicted. NULL is
/// ignored (`VRAMSWAP_OK`). Handles are checked: releasing a guard twice, or using it after,
/// is `VRAMSWAP_INVALID_STATE`, never undefined behaviour.
///
/// # Safety
/// None beyond the C contract (the handle is checked).
#[no_mangle]
pub unsafe extern "C" fn vramswap_guard_release(guard: *mut vramswap_guard) -> vramswap_status {
    guarded("vramswap_guard_release", || {
        if guard.is_null() {
            return Ok(());
        }
        GUARDS
            .remove(guard as usize)
            .map(drop)
            .ok_or_else(|| stale("guard", guard as usize))
    })
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
        let len = g.tensor(name)?.len;
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
/// `*needed` when `needed` is not NULL; a buffer too small is `VRAMSWAP_BUFFER_TOO_SMALL` and
/// copies nothing. Call with `dst` NULL and `dst_len` 0 to ask for the size (nothing is read
/// from the device); `dst` NULL with `dst_len` > 0 is `VRAMSWAP_NULL_POINTER`.
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
        if dst.is_null() && dst_len != 0 {
            return Err(Failure::new(
                vramswap_status::VRAMSWAP_NULL_POINTER,
                format!("`dst` is NULL but `dst_len` is {dst_len}"),
            ));
        }
        // The length from the guard's table: a size query reads nothing from the device.
        let len = g.tensor(name)?.len;
        let len = usize::try_from(len)
            .map_err(|_| Failure::invalid(format!("tensor `{name}` has {len} bytes")))?;
        // `*needed` is written on success and on BUFFER_TOO_SMALL only, as every out-parameter.
        let write_needed = || {
            if !needed.is_null() {
                // SAFETY: not NULL and valid for a write (caller's contract).
                unsafe { needed.write(len) };
            }
        };
        if dst_len < len {
            write_needed();
            return Err(Failure::new(
                vramswap_status::VRAMSWAP_BUFFER_TOO_SMALL,
                format!("tensor `{name}` has {len} bytes, the buffer {dst_len}"),
            ));
        }
        if len == 0 {
            write_needed();
            return Ok(());
        }
        let data = g.read_tensor(name)?;
        if data.len() != len {
            return Err(Failure::new(
                vramswap_status::VRAMSWAP_INVALID_STATE,
                format!("tensor `{name}` read {} bytes, not {len}", data.len()),
            ));
        }
        // SAFETY: `dst` is not NULL (dst_len >= len > 0) and valid for dst_len >= data.len()
        // bytes; `data` is a distinct allocation.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst.cast::<u8>(), data.len()) };
        write_needed();
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

#[cfg(test)]
mod tests {
    use std::ptr::null_mut;

    use super::*;
    use crate::capi::{vramswap_context_create, vramswap_context_destroy, VRAMSWAP_BACKEND_SIM};
    use crate::weights::DType;
    use vramswap_sim::FaultOp;

    #[test]
    fn a_size_query_reads_nothing_from_the_device() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let w: Vec<u8> = (0..64u8).collect();
        crate::load::save(&path, &[("w", DType::F32, &[16], &w)]).unwrap();
        let path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        let (set, tensor) = (c"set", c"w");
        let mut ctx = null_mut();
        let mut g = null_mut();
        // SAFETY: valid out-pointers and NUL-terminated strings; the context and guard are
        // live until released and destroyed at the end.
        unsafe {
            let st = vramswap_context_create(VRAMSWAP_BACKEND_SIM, 0, 64 << 20, &mut ctx);
            assert_eq!(st, vramswap_status::VRAMSWAP_OK);
            let st = vramswap_engine_register(ctx, set.as_ptr(), path.as_ptr());
            assert_eq!(st, vramswap_status::VRAMSWAP_OK);
            let st = vramswap_engine_acquire(ctx, set.as_ptr(), &mut g);
            assert_eq!(st, vramswap_status::VRAMSWAP_OK);
            let c = context(ctx).unwrap();
            let dev = c.backend.sim_device().unwrap();
            let copies = dev.calls(FaultOp::Copy);
            let mut needed = 0;
            let st = vramswap_guard_read_tensor(g, tensor.as_ptr(), null_mut(), 0, &mut needed);
            assert_eq!(st, vramswap_status::VRAMSWAP_BUFFER_TOO_SMALL);
            assert_eq!(needed, 64);
            assert_eq!(
                dev.calls(FaultOp::Copy),
                copies,
                "a size query reads nothing"
            );
            let mut small = [0u8; 8];
            let st = vramswap_guard_read_tensor(
                g,
                tensor.as_ptr(),
                small.as_mut_ptr().cast(),
                8,
                &mut needed,
            );
            assert_eq!(st, vramswap_status::VRAMSWAP_BUFFER_TOO_SMALL);
            assert_eq!(small, [0; 8], "a buffer too small is untouched");
            // NULL `dst` with a length: reported before `*needed` is written.
            let mut untouched = 7;
            let st = vramswap_guard_read_tensor(g, tensor.as_ptr(), null_mut(), 64, &mut untouched);
            assert_eq!(st, vramswap_status::VRAMSWAP_NULL_POINTER);
            assert_eq!(untouched, 7);
            let st = vramswap_guard_read_tensor(g, c"nope".as_ptr(), null_mut(), 0, &mut untouched);
            assert_eq!(st, vramswap_status::VRAMSWAP_NOT_FOUND);
            assert_eq!(untouched, 7);
            assert_eq!(dev.calls(FaultOp::Copy), copies, "no device read so far");
            let mut all = [0u8; 64];
            let st = vramswap_guard_read_tensor(
                g,
                tensor.as_ptr(),
                all.as_mut_ptr().cast(),
                64,
                null_mut(),
            );
            assert_eq!(st, vramswap_status::VRAMSWAP_OK);
            assert_eq!(all.as_slice(), w.as_slice());
            assert!(dev.calls(FaultOp::Copy) > copies);
            // A read that fails on the device writes no out-parameter.
            dev.inject_fault(FaultOp::Copy, 1);
            let st = vramswap_guard_read_tensor(
                g,
                tensor.as_ptr(),
                all.as_mut_ptr().cast(),
                64,
                &mut untouched,
            );
            assert_eq!(st, vramswap_status::VRAMSWAP_DRIVER_ERROR);
            assert_eq!(untouched, 7);
            vramswap_guard_release(g);
            vramswap_context_destroy(ctx);
        }
    }
}
