//! Loading the driver: `VRAMSWAP_CUDA_DRIVER` preloaded by path, libcuda's presence, and entry
//! points looked up by name where cudarc's bindings would panic on a missing one.

use std::ffi::CStr;
use std::sync::OnceLock;

#[cfg(feature = "dynamic-loading")]
use cudarc::driver::sys;

use crate::error::{Error, Result};

/// [`Error::BackendUnavailable`] of the `cuda` backend.
pub(super) fn unavailable(reason: impl Into<String>) -> Error {
    Error::BackendUnavailable {
        backend: "cuda",
        reason: reason.into(),
    }
}

/// Loads the library named by `VRAMSWAP_CUDA_DRIVER`, once, and keeps it loaded for the life of
/// the process, so that the dynamic loader resolves cudarc's later `dlopen("libcuda.so")` to it
/// by soname.
pub(super) fn preload_driver() -> Result<Option<String>> {
    static PRELOADED: OnceLock<std::result::Result<Option<String>, String>> = OnceLock::new();
    PRELOADED
        .get_or_init(|| {
            let Ok(path) = std::env::var("VRAMSWAP_CUDA_DRIVER") else {
                return Ok(None);
            };
            if path.trim().is_empty() {
                return Ok(None);
            }
            // SAFETY: loading a shared library runs its initialisers; the user named this
            // library as their CUDA driver. RTLD_GLOBAL makes its soname visible to later
            // lookups.
            let lib = unsafe {
                libloading::os::unix::Library::open(
                    Some(&path),
                    libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL,
                )
            }
            .map_err(|e| format!("VRAMSWAP_CUDA_DRIVER={path} could not be loaded: {e}"))?;
            // Never unloaded: cudarc caches function pointers into it.
            std::mem::forget(lib);
            Ok(Some(path))
        })
        .clone()
        .map_err(unavailable)
}

/// Looks a driver entry point up by name in the loaded driver: `None` where the driver has no
/// such symbol (cudarc's own bindings would panic there).
///
/// # Safety
/// `F` must be the entry point's C function-pointer type.
pub(super) unsafe fn driver_symbol<F: Copy>(name: &CStr) -> Option<F> {
    #[cfg(feature = "dynamic-loading")]
    {
        // SAFETY: `culib` is the driver cudarc loaded (its presence was checked in `new` before
        // any driver call); the caller guarantees `F` is the symbol's type.
        unsafe { sys::culib().get::<F>(name.to_bytes_with_nul()) }
            .ok()
            .map(|f| *f)
    }
    #[cfg(not(feature = "dynamic-loading"))]
    {
        // A build that links libcuda: look in the process's global scope, which holds it.
        let this = libloading::os::unix::Library::this();
        // SAFETY: as above; libcuda stays linked for the life of the process, so the pointer
        // outlives the handle.
        unsafe { this.get::<F>(name.to_bytes_with_nul()) }
            .ok()
            .map(|f| *f)
    }
}

/// Whether libcuda can be opened (with run-time loading; a build that links CUDA has it).
#[cfg(feature = "dynamic-loading")]
pub(super) fn driver_present() -> bool {
    // SAFETY: only probes whether the library can be opened.
    unsafe { sys::is_culib_present() }
}

/// Whether libcuda can be opened: a build that links CUDA (the `cuda` feature without
/// `dynamic-loading`) has it.
#[cfg(not(feature = "dynamic-loading"))]
pub(super) fn driver_present() -> bool {
    true
}
