//! PyTorch's `CUDAPluggableAllocator` entry points, over one process-wide context per device.
//!
//! ```python
//! alloc = torch.cuda.memory.CUDAPluggableAllocator(
//!     "libvramswap.so", "vramswap_torch_malloc", "vramswap_torch_free")
//! torch.cuda.memory.change_current_allocator(alloc)
//! ```
//!
//! PyTorch declares the functions as `void *alloc(ssize_t size, int device, cudaStream_t
//! stream)` and `void free(void *ptr, ssize_t size, int device, cudaStream_t stream)` (its C++
//! side uses `size_t`, which has the same size and passing convention).

use std::ffi::{c_char, c_int, c_void};
use std::sync::{Arc, Mutex};

use super::context::{allocate, device_ptr_arg, device_ptr_out, stream_arg, Context};
use super::vramswap_status;
use super::{guarded, guarded_value, write_json, CResult, Failure};
use crate::backend::BackendChoice;

/// POSIX `ssize_t` (from `<sys/types.h>` in the header), the size type of PyTorch's pluggable
/// allocator functions.
pub type ssize_t = isize;

/// The process-wide contexts of the PyTorch entry points, one per device, created on first
/// use and kept for the life of the process (PyTorch may free blocks until exit).
static CONTEXTS: Mutex<Vec<(c_int, Arc<Context>)>> = Mutex::new(Vec::new());

/// The backend of the process-wide contexts: `VRAMSWAP_BACKEND` (`auto`, `cuda`, `sim`, parsed
/// as [`BackendChoice`] parses every backend name), CUDA when it is unset or empty.
fn torch_backend() -> CResult<BackendChoice> {
    match std::env::var("VRAMSWAP_BACKEND") {
        Ok(v) if !v.trim().is_empty() => v
            .parse()
            .map_err(|e| Failure::invalid(format!("VRAMSWAP_BACKEND=`{}`: {e}", v.trim()))),
        _ => Ok(BackendChoice::Cuda),
    }
}

/// The process-wide context of `device`, created on first use. `create` false returns NOT_FOUND
/// instead of creating one.
fn device_context(device: c_int, create: bool) -> CResult<Arc<Context>> {
    // A panic elsewhere while holding the lock leaves the list itself intact.
    let mut list = CONTEXTS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, c)) = list.iter().find(|(d, _)| *d == device) {
        return Ok(c.clone());
    }
    if !create {
        return Err(Failure::new(
            vramswap_status::VRAMSWAP_NOT_FOUND,
            format!("no PyTorch context for device {device}: nothing was allocated on it"),
        ));
    }
    let c = Arc::new(Context::open(torch_backend()?, device, 0, None, None)?);
    list.push((device, c.clone()));
    Ok(c)
}

/// PyTorch's allocation function: `size` bytes on `device` for `stream` (a `cudaStream_t`,
/// NULL for the default stream), from the process-wide context of `device` (created on first
/// use on the CUDA backend, or the one `VRAMSWAP_BACKEND` names, configured by
/// `VRAMSWAP_ALLOC_CONF` and `VRAMSWAP_SWAP_CONF`). Returns NULL for size 0, and NULL with the
/// reason in `vramswap_last_error_message()` on failure (a negative size, out of memory, no
/// backend). Never panics.
#[no_mangle]
pub extern "C" fn vramswap_torch_malloc(
    size: ssize_t,
    device: c_int,
    stream: *mut c_void,
) -> *mut c_void {
    guarded_value("vramswap_torch_malloc", std::ptr::null_mut(), || {
        let size = u64::try_from(size)
            .map_err(|_| Failure::invalid(format!("size {size} is negative")))?;
        if size == 0 {
            return Ok(std::ptr::null_mut());
        }
        let c = device_context(device, true)?;
        Ok(device_ptr_out(allocate(&c, size, stream_arg(stream))?))
    })
}

/// PyTorch's free function: returns `ptr` (from `vramswap_torch_malloc` on `device`) to the
/// allocator. `size` and `stream` are not needed (the allocator remembers both). NULL is
/// ignored; an unknown pointer or a double free only sets `vramswap_last_error_message()`.
/// Never panics.
#[no_mangle]
pub extern "C" fn vramswap_torch_free(
    ptr: *mut c_void,
    size: ssize_t,
    device: c_int,
    stream: *mut c_void,
) {
    let _ = (size, stream);
    guarded("vramswap_torch_free", || {
        if ptr.is_null() {
            return Ok(());
        }
        let c = device_context(device, false)?;
        Ok(c.alloc.free(device_ptr_arg(ptr))?)
    });
}

/// Writes the statistics of the PyTorch allocator of `device` as JSON, like
/// `vramswap_stats_json`. `VRAMSWAP_NOT_FOUND` before the first `vramswap_torch_malloc` on
/// that device.
///
/// # Safety
/// `buf` is NULL or valid for `buf_len` bytes; `needed` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn vramswap_torch_stats_json(
    device: c_int,
    buf: *mut c_char,
    buf_len: usize,
    needed: *mut usize,
) -> vramswap_status {
    guarded("vramswap_torch_stats_json", || {
        let c = device_context(device, false)?;
        // SAFETY: forwarded from the caller's contract.
        unsafe { write_json(&c.alloc.stats(), buf, buf_len, needed) }
    })
}

/// Returns the cached, unused blocks of the PyTorch allocator of `device` to the device.
#[no_mangle]
pub extern "C" fn vramswap_torch_empty_cache(device: c_int) -> vramswap_status {
    guarded("vramswap_torch_empty_cache", || {
        let c = device_context(device, false)?;
        Ok(c.alloc.empty_cache()?)
    })
}
