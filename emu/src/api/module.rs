//! Modules and kernel launches.
//!
//! Reference: NVIDIA CUDA Driver API, "Module Management" and "Execution Control"
//! (`cuLaunchKernel`) (<https://docs.nvidia.com/cuda/cuda-driver-api/>). The emulator loads
//! PTX text only and runs the project's kernels through their Rust implementations in
//! `vramswap_sim` (the same ones the `sim` backend uses); any other kernel is listed and can
//! be looked up, but launching it gives `CUDA_ERROR_NOT_SUPPORTED`.

use std::ffi::{c_char, c_uint, c_void, CStr};
use std::sync::atomic::Ordering;

use vramswap_sim::{CastType, Kernel};

use crate::api::context::ctx;
use crate::module::{driver_for_ptx_isa, parse_ptx, ptx_isa_version, Entry};
use crate::result::{
    code, fail, guard, sim_fail, CUresult, Res, CUDA_ERROR_INVALID_HANDLE,
    CUDA_ERROR_INVALID_IMAGE, CUDA_ERROR_INVALID_PTX, CUDA_ERROR_INVALID_VALUE,
    CUDA_ERROR_NOT_FOUND, CUDA_ERROR_NOT_SUPPORTED, CUDA_ERROR_UNSUPPORTED_PTX_VERSION,
};
use crate::state::{
    function_handle, function_id, module_handle, module_id, non_null, stream_id, version_text,
};

macro_rules! export {
    ($call:literal, $body:block) => {
        guard($call, || code((|| -> Res<()> { $body })()))
    };
}

/// `cuModuleLoadData`: loads a NUL-terminated PTX text image. A cubin or fatbin (binary) image
/// gives `CUDA_ERROR_NOT_SUPPORTED`; text that is not PTX `CUDA_ERROR_INVALID_IMAGE`; a
/// project kernel whose parameters disagree with the kernel ABI `CUDA_ERROR_INVALID_PTX`.
///
/// # Safety
/// `image` must be NULL or a NUL-terminated string; `module` NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuModuleLoadData(
    module: *mut *mut c_void,
    image: *const c_void,
) -> CUresult {
    export!("cuModuleLoadData", {
        let d = ctx("cuModuleLoadData")?;
        non_null("cuModuleLoadData", module, "module")?;
        non_null("cuModuleLoadData", image, "image")?;
        // SAFETY: non-null; the caller passes an image whose first bytes are readable.
        let head = unsafe { std::slice::from_raw_parts(image as *const u8, 4) };
        if head == b"\x7fELF" || head == [0x50, 0xed, 0x55, 0xba] {
            return Err(fail(
                "cuModuleLoadData",
                CUDA_ERROR_NOT_SUPPORTED,
                "cubin/fatbin images are not emulated; load PTX text",
            ));
        }
        // SAFETY: the caller passes a NUL-terminated PTX string.
        let text = unsafe { CStr::from_ptr(image as *const c_char) };
        let text = text.to_str().map_err(|_| {
            fail(
                "cuModuleLoadData",
                CUDA_ERROR_INVALID_IMAGE,
                "image is not UTF-8 text",
            )
        })?;
        let m = parse_ptx(text).map_err(|e| {
            let c = if text.contains(".version") {
                CUDA_ERROR_INVALID_PTX
            } else {
                CUDA_ERROR_INVALID_IMAGE
            };
            fail("cuModuleLoadData", c, &e)
        })?;
        // "CUDA_ERROR_UNSUPPORTED_PTX_VERSION: This indicates that the provided PTX was compiled
        // with an unsupported toolchain": PTX of an ISA newer than the driver's CUDA version.
        if let Some(isa) = ptx_isa_version(text) {
            let have = d.opts.driver_version;
            let refuse =
                |why: String| fail("cuModuleLoadData", CUDA_ERROR_UNSUPPORTED_PTX_VERSION, &why);
            match driver_for_ptx_isa(isa) {
                Some(need) if need <= have => {}
                Some(need) => {
                    return Err(refuse(format!(
                        "PTX ISA {}.{} needs a CUDA {} driver; this is a CUDA {} driver",
                        isa.0,
                        isa.1,
                        version_text(need),
                        version_text(have)
                    )))
                }
                None => {
                    return Err(refuse(format!(
                        "PTX ISA {}.{} is newer than this CUDA {} driver",
                        isa.0,
                        isa.1,
                        version_text(have)
                    )))
                }
            }
        }
        let id = d.next_id.fetch_add(1, Ordering::SeqCst);
        d.modules.lock().expect("modules lock").insert(id, m);
        // SAFETY: checked non-null.
        unsafe { *module = module_handle(id) as *mut c_void };
        Ok(())
    })
}

/// `cuModuleLoadDataEx`: as `cuModuleLoadData`; the JIT options are accepted and ignored, since
/// the emulator compiles nothing (log buffers are left as the caller initialised them).
///
/// # Safety
/// As `cuModuleLoadData`; `options`/`values` are not read.
#[no_mangle]
pub unsafe extern "C" fn cuModuleLoadDataEx(
    module: *mut *mut c_void,
    image: *const c_void,
    _num_options: c_uint,
    _options: *mut c_uint,
    _values: *mut *mut c_void,
) -> CUresult {
    // SAFETY: forwarded contract.
    unsafe { cuModuleLoadData(module, image) }
}

/// `cuModuleGetFunction`: the kernel named `name`; `CUDA_ERROR_NOT_FOUND` if the module has no
/// such `.entry`.
///
/// # Safety
/// `name` must be NULL or NUL-terminated; `func` NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn cuModuleGetFunction(
    func: *mut *mut c_void,
    module: *mut c_void,
    name: *const c_char,
) -> CUresult {
    export!("cuModuleGetFunction", {
        let d = ctx("cuModuleGetFunction")?;
        non_null("cuModuleGetFunction", func, "hfunc")?;
        non_null("cuModuleGetFunction", name, "name")?;
        let mid = module_id("cuModuleGetFunction", module)?;
        // SAFETY: checked non-null; the caller passes a NUL-terminated name.
        let name = unsafe { CStr::from_ptr(name) }.to_string_lossy();
        let index = {
            let mods = d.modules.lock().expect("modules lock");
            let m = mods.get(&mid).ok_or_else(|| {
                fail(
                    "cuModuleGetFunction",
                    CUDA_ERROR_INVALID_HANDLE,
                    "module was unloaded",
                )
            })?;
            m.entries
                .iter()
                .position(|e| e.name == name)
                .ok_or_else(|| {
                    fail(
                        "cuModuleGetFunction",
                        CUDA_ERROR_NOT_FOUND,
                        &format!("no .entry {name} in the module"),
                    )
                })?
        };
        let fid = d.next_id.fetch_add(1, Ordering::SeqCst);
        d.functions
            .lock()
            .expect("functions lock")
            .insert(fid, (mid, index));
        // SAFETY: checked non-null.
        unsafe { *func = function_handle(fid) as *mut c_void };
        Ok(())
    })
}

/// `cuModuleUnload`: its functions become invalid handles. Unloading a module while launches of
/// its kernels are still queued is recorded as misuse in the report: the reference does not
/// promise that queued launches keep the module alive.
///
/// # Safety
/// Callable from any thread with a current context.
#[no_mangle]
pub unsafe extern "C" fn cuModuleUnload(module: *mut c_void) -> CUresult {
    export!("cuModuleUnload", {
        let d = ctx("cuModuleUnload")?;
        let mid = module_id("cuModuleUnload", module)?;
        d.modules
            .lock()
            .expect("modules lock")
            .remove(&mid)
            .ok_or_else(|| {
                fail(
                    "cuModuleUnload",
                    CUDA_ERROR_INVALID_HANDLE,
                    "module not loaded",
                )
            })?;
        d.functions
            .lock()
            .expect("functions lock")
            .retain(|_, (m, _)| *m != mid);
        let marks = d
            .launches
            .lock()
            .expect("launches lock")
            .remove(&mid)
            .unwrap_or_default();
        let queued = marks.iter().filter(|m| !m.is_done()).count();
        if queued > 0 {
            // The reference promises nothing for launches still queued when their module is
            // unloaded ("Use of the handle after this call is undefined behavior"): the caller
            // must wait for them first (cuCtxSynchronize, or the streams they used).
            d.record_misuse(format!(
                "cuModuleUnload of module {:#x} while {queued} stream(s) still had launches \
                 of its kernels queued; synchronise before unloading",
                module as u64
            ));
        }
        Ok(())
    })
}

/// `CU_LAUNCH_PARAM_END`, `CU_LAUNCH_PARAM_BUFFER_POINTER`, `CU_LAUNCH_PARAM_BUFFER_SIZE`.
const PARAM_END: usize = 0;
const PARAM_BUFFER_POINTER: usize = 1;
const PARAM_BUFFER_SIZE: usize = 2;

/// Reads a little-endian scalar argument of `size` bytes.
///
/// # Safety
/// `p` must be valid for reads of `size` bytes.
unsafe fn read_arg(p: *const u8, size: usize) -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: the caller guarantees `size` readable bytes; `size <= 8` for scalar parameters.
    unsafe { std::ptr::copy_nonoverlapping(p, b.as_mut_ptr(), size.min(8)) };
    u64::from_le_bytes(b)
}

/// The arguments of a launch, from `kernelParams` or `extra`, checked against the parameter
/// sizes the PTX declares.
///
/// # Safety
/// `params` and `extra` follow `cuLaunchKernel`'s contract.
unsafe fn read_args(
    entry: &Entry,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> Res<Vec<u64>> {
    const CALL: &str = "cuLaunchKernel";
    let bad = |m: &str| fail(CALL, CUDA_ERROR_INVALID_VALUE, m);
    if entry.params.iter().any(|&s| s > 8) {
        return Err(fail(
            CALL,
            CUDA_ERROR_NOT_SUPPORTED,
            "aggregate parameters are not emulated",
        ));
    }
    // "Kernel parameters can be specified via kernelParams ... or via extra"; "It is an
    // error to specify both" - CUDA_ERROR_INVALID_VALUE.
    if !params.is_null() && !extra.is_null() {
        return Err(bad("both kernelParams and extra were given"));
    }
    if !params.is_null() {
        let mut out = Vec::with_capacity(entry.params.len());
        for (i, &size) in entry.params.iter().enumerate() {
            // SAFETY: "kernelParams is an array of N pointers" where N is the kernel's
            // parameter count from its image.
            let p = unsafe { *params.add(i) };
            if p.is_null() {
                return Err(bad(&format!("kernelParams[{i}] is NULL")));
            }
            // SAFETY: each pointer points to a value of the parameter's size.
            out.push(unsafe { read_arg(p as *const u8, size) });
        }
        return Ok(out);
    }
    if !extra.is_null() {
        let (mut buf, mut len) = (std::ptr::null::<u8>(), None::<usize>);
        let mut i = 0;
        loop {
            // SAFETY: `extra` is a list of key/value pointer pairs ending in
            // CU_LAUNCH_PARAM_END.
            let key = unsafe { *extra.add(i) } as usize;
            if key == PARAM_END {
                break;
            }
            // SAFETY: as above; a key is followed by its value.
            let value = unsafe { *extra.add(i + 1) };
            match key {
                PARAM_BUFFER_POINTER => buf = value as *const u8,
                PARAM_BUFFER_SIZE => {
                    if value.is_null() {
                        return Err(bad("CU_LAUNCH_PARAM_BUFFER_SIZE value is NULL"));
                    }
                    // SAFETY: the value of BUFFER_SIZE points to a size_t.
                    len = Some(unsafe { *(value as *const usize) });
                }
                _ => return Err(bad(&format!("unknown extra key {key}"))),
            }
            i += 2;
        }
        let (Some(len), false) = (len, buf.is_null()) else {
            return Err(bad("extra needs both BUFFER_POINTER and BUFFER_SIZE"));
        };
        let mut off = 0usize;
        let mut out = Vec::new();
        for (&size, &align) in entry.params.iter().zip(&entry.aligns) {
            off = off.next_multiple_of(align.max(1));
            if off + size > len {
                return Err(bad(&format!(
                    "argument buffer of {len} bytes is too small for the kernel's parameters"
                )));
            }
            // SAFETY: `off + size <= len`, the buffer's size as the caller declared it.
            out.push(unsafe { read_arg(buf.add(off), size) });
            off += size;
        }
        if off.next_multiple_of(8) < len.next_multiple_of(8) {
            return Err(bad(&format!(
                "argument buffer of {len} bytes, the kernel's parameters take {off}"
            )));
        }
        return Ok(out);
    }
    if entry.params.is_empty() {
        Ok(Vec::new())
    } else {
        Err(bad(
            "the kernel takes parameters but neither kernelParams nor extra was given",
        ))
    }
}

/// The simulated kernel for an entry of the project's kernel ABI.
fn kernel_of(name: &str, a: &[u64]) -> Res<Kernel> {
    let cast = |code: u64| {
        CastType::from_code(code as u32).ok_or_else(|| {
            fail(
                "cuLaunchKernel",
                CUDA_ERROR_INVALID_VALUE,
                &format!("cast type code {code} (0=f32, 1=f16, 2=bf16)"),
            )
        })
    };
    Ok(match name {
        "vramswap_checksum_partial" => Kernel::ChecksumPartial {
            src: a[0],
            len: a[1],
            sum: a[2],
        },
        "vramswap_checksum_finish" => Kernel::ChecksumFinish {
            sum: a[0],
            len: a[1],
        },
        "vramswap_fill_u32" => Kernel::Fill {
            dst: a[0],
            len: a[1],
            pattern: a[2] as u32,
        },
        "vramswap_cast" => Kernel::Cast {
            src: a[0],
            from: cast(a[1])?,
            dst: a[2],
            to: cast(a[3])?,
            count: a[4],
        },
        other => {
            return Err(fail(
                "cuLaunchKernel",
                CUDA_ERROR_NOT_SUPPORTED,
                &format!("kernel {other} has no emulated implementation"),
            ))
        }
    })
}

/// `cuLaunchKernel`: checks the grid and block ("gridDimX ... blockDimZ" must be non-zero and
/// the block within the device's limits: 1024 threads, 1024 x 1024 x 64), reads the arguments
/// with the sizes the PTX declares, and queues the kernel's Rust implementation on the stream.
///
/// # Safety
/// `params`/`extra` follow `cuLaunchKernel`'s contract; device pointers among the arguments
/// are checked by the simulated device.
#[no_mangle]
pub unsafe extern "C" fn cuLaunchKernel(
    f: *mut c_void,
    grid_x: c_uint,
    grid_y: c_uint,
    grid_z: c_uint,
    block_x: c_uint,
    block_y: c_uint,
    block_z: c_uint,
    shared_mem: c_uint,
    stream: *mut c_void,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CUresult {
    export!("cuLaunchKernel", {
        const CALL: &str = "cuLaunchKernel";
        let d = ctx(CALL)?;
        let fid = function_id(CALL, f)?;
        let s = stream_id(CALL, stream)?;
        let (mid, entry) = {
            let funcs = d.functions.lock().expect("functions lock");
            let (mid, idx) = *funcs.get(&fid).ok_or_else(|| {
                fail(
                    CALL,
                    CUDA_ERROR_INVALID_HANDLE,
                    "function's module was unloaded",
                )
            })?;
            let mods = d.modules.lock().expect("modules lock");
            let entry = mods
                .get(&mid)
                .map(|m| m.entries[idx].clone())
                .ok_or_else(|| fail(CALL, CUDA_ERROR_INVALID_HANDLE, "module was unloaded"))?;
            (mid, entry)
        };
        let dims = [grid_x, grid_y, grid_z, block_x, block_y, block_z];
        if dims.contains(&0) {
            return Err(fail(
                CALL,
                CUDA_ERROR_INVALID_VALUE,
                &format!("grid/block dimension 0 in {dims:?}"),
            ));
        }
        let threads = block_x as u64 * block_y as u64 * block_z as u64;
        if threads > 1024
            || block_x > 1024
            || block_y > 1024
            || block_z > 64
            || grid_y > 65535
            || grid_z > 65535
        {
            return Err(fail(
                CALL,
                CUDA_ERROR_INVALID_VALUE,
                &format!("launch dimensions {dims:?} exceed the device's limits"),
            ));
        }
        if shared_mem > 48 * 1024 {
            return Err(fail(
                CALL,
                CUDA_ERROR_INVALID_VALUE,
                "more than 48 KiB of dynamic shared memory",
            ));
        }
        // SAFETY: forwarded contract.
        let args = unsafe { read_args(&entry, params, extra)? };
        let k = kernel_of(&entry.name, &args)?;
        d.dev.launch(k, s).map_err(|e| sim_fail(CALL, e))?;
        // Remember where the launch sits in its stream, for cuModuleUnload's check.
        if let Ok(mark) = d.dev.work_mark(s) {
            let mut launches = d.launches.lock().expect("launches lock");
            let marks = launches.entry(mid).or_default();
            marks.retain(|m| !m.is_done());
            marks.push(mark);
        }
        Ok(())
    })
}
