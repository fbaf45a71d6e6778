//! The `cuda` backend's kernels: the embedded image of `kernels/vramswap_kernels.cu`, its
//! module (loaded once per backend with `cuModuleLoadData`) and the launches.
//!
//! `build.rs` embeds PTX for `compute_80` when nvcc was found at build time, and otherwise the
//! CUDA source, which is compiled here at run time with NVRTC (libnvrtc loaded dynamically).
//! [`embedded_kernel_image`] says which. The kernels compute exactly what
//! [`vramswap_sim::kernels`] computes; `tests/kernels_host.rs` checks their shared header
//! against it bit for bit.
//!
//! Every driver result is checked; errors name the call and the kernel.

use std::borrow::Cow;
use std::ffi::{c_void, CString};
use std::ptr;

use cudarc::driver::sys;

use super::cuda::check;
use super::{CastType, DevicePtr, Stream};
use crate::error::{Error, Result};

/// How the kernels were embedded at build time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelImage {
    /// PTX text compiled by nvcc at build time for `compute_80` (A100 and newer).
    Ptx(&'static str),
    /// Self-contained CUDA C++ source (header pasted in), compiled at run time with NVRTC.
    Source(&'static str),
}

impl KernelImage {
    /// A short description for reports: `"PTX (nvcc, compute_80)"` or `"source (NVRTC)"`.
    pub fn describe(self) -> &'static str {
        match self {
            KernelImage::Ptx(_) => "PTX (nvcc, compute_80)",
            KernelImage::Source(_) => "source (NVRTC at run time)",
        }
    }
}

/// The kernel image embedded in this build (see [`KernelImage`]).
///
/// ```
/// use vramswap::backend::cuda_kernels::{embedded_kernel_image, KernelImage};
/// match embedded_kernel_image() {
///     KernelImage::Ptx(ptx) => assert!(ptx.contains(".entry vramswap_cast")),
///     KernelImage::Source(cu) => assert!(cu.contains("vramswap_cast")),
/// }
/// ```
pub fn embedded_kernel_image() -> KernelImage {
    #[cfg(vramswap_kernels_ptx)]
    {
        KernelImage::Ptx(include_str!(concat!(
            env!("OUT_DIR"),
            "/vramswap_kernels.ptx"
        )))
    }
    #[cfg(not(vramswap_kernels_ptx))]
    {
        KernelImage::Source(NVRTC_SOURCE)
    }
}

/// The self-contained source for NVRTC (build.rs writes it in every build).
#[cfg_attr(vramswap_kernels_ptx, allow(dead_code))]
const NVRTC_SOURCE: &str = include_str!(concat!(env!("OUT_DIR"), "/vramswap_kernels_nvrtc.cu"));

/// Threads per block of every launch (a multiple of 32, as the checksum's reduction needs).
const THREADS: u32 = 256;
/// Most blocks per launch; the kernels' grid-stride loops cover any range with fewer.
const MAX_BLOCKS: u64 = 4096;

/// Blocks for `items` work items, one per thread, at least 1, at most [`MAX_BLOCKS`].
fn blocks_for(items: u64) -> u32 {
    items.div_ceil(THREADS as u64).clamp(1, MAX_BLOCKS) as u32
}

/// The PTX to load: the embedded PTX, or the embedded source compiled with NVRTC.
fn ptx() -> Result<Cow<'static, str>> {
    match embedded_kernel_image() {
        KernelImage::Ptx(ptx) => Ok(Cow::Borrowed(ptx)),
        KernelImage::Source(src) => compile_with_nvrtc(src).map(Cow::Owned),
    }
}

/// Whether libnvrtc can be opened (with run-time loading; a build that links CUDA has it).
#[cfg(feature = "dynamic-loading")]
fn nvrtc_present() -> bool {
    // SAFETY: only probes whether libnvrtc can be opened; cudarc would panic on the first
    // NVRTC call without it.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Whether libnvrtc can be opened: a build that links CUDA has it.
#[cfg(not(feature = "dynamic-loading"))]
fn nvrtc_present() -> bool {
    true
}

/// Compiles CUDA source to PTX for `compute_80` with NVRTC, loaded at run time.
fn compile_with_nvrtc(src: &str) -> Result<String> {
    if !nvrtc_present() {
        return Err(Error::Unsupported(
            "the cuda backend's kernels were embedded as source (no nvcc at build time) and \
             NVRTC (libnvrtc.so) could not be loaded: install CUDA's NVRTC library, or rebuild \
             vramswap with nvcc available (set NVCC, or run scripts/ensure-nvcc.sh) to embed PTX"
                .into(),
        ));
    }
    let opts = cudarc::nvrtc::CompileOptions {
        arch: Some("compute_80"),
        name: Some("vramswap_kernels.cu".into()),
        ..Default::default()
    };
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(src, opts).map_err(|e| {
        Error::Unsupported(format!("NVRTC could not compile vramswap's kernels: {e}"))
    })?;
    Ok(ptx.to_src())
}

/// The kernels' module and its four functions, in the context that loaded it. Handles are
/// stored as integers: they are plain driver handles, usable from any thread on which that
/// context is current.
#[derive(Debug)]
pub(super) struct KernelModule {
    module: usize,
    checksum_partial: usize,
    checksum_finish: usize,
    fill_u32: usize,
    cast: usize,
}

/// The `.version` directive of PTX text (`"9.0"`), for messages.
fn ptx_isa(ptx: &str) -> &str {
    ptx.find(".version")
        .and_then(|p| ptx[p + ".version".len()..].split_whitespace().next())
        .unwrap_or("?")
}

impl KernelModule {
    /// Loads the kernels into the context current on this thread, of a driver that reports
    /// `driver_version` (for the message when it cannot load the PTX).
    pub(super) fn load(driver_version: i32) -> Result<KernelModule> {
        let ptx = ptx()?;
        let image = CString::new(ptx.as_bytes())
            .map_err(|_| Error::InvalidState("the kernels' PTX contains a NUL byte".into()))?;
        let mut module: sys::CUmodule = ptr::null_mut();
        // SAFETY: `image` is NUL-terminated PTX text that outlives the call; valid out-pointer.
        let r = unsafe { sys::cuModuleLoadData(&mut module, image.as_ptr() as *const c_void) };
        if r == sys::CUresult::CUDA_ERROR_UNSUPPORTED_PTX_VERSION {
            // A driver JIT-compiles PTX up to its own CUDA version's ISA only.
            return Err(Error::Unsupported(format!(
                "the CUDA driver (CUDA {}.{}) cannot load vramswap's kernels: their PTX ({}) \
                 is of ISA {}, newer than the driver compiles; update the NVIDIA driver, or \
                 build vramswap with an nvcc no newer than the driver (NVCC=...). Only the \
                 kernels need it: checksums (verify), poisoning and casts",
                driver_version / 1000,
                (driver_version % 1000) / 10,
                match embedded_kernel_image() {
                    KernelImage::Ptx(_) => "embedded by nvcc at build time",
                    KernelImage::Source(_) => "compiled by NVRTC",
                },
                ptx_isa(&ptx),
            )));
        }
        check("cuModuleLoadData", r)?;
        let mut m = KernelModule {
            module: module as usize,
            checksum_partial: 0,
            checksum_finish: 0,
            fill_u32: 0,
            cast: 0,
        };
        // On an error `m` is unloaded by `unload_on_error` below.
        let found = (|| -> Result<()> {
            m.checksum_partial = m.function(c"vramswap_checksum_partial")?;
            m.checksum_finish = m.function(c"vramswap_checksum_finish")?;
            m.fill_u32 = m.function(c"vramswap_fill_u32")?;
            m.cast = m.function(c"vramswap_cast")?;
            Ok(())
        })();
        match found {
            Ok(()) => Ok(m),
            Err(e) => {
                m.unload();
                Err(e)
            }
        }
    }

    fn function(&self, name: &std::ffi::CStr) -> Result<usize> {
        let mut f: sys::CUfunction = ptr::null_mut();
        // SAFETY: `module` is the live module loaded above; `name` is NUL-terminated.
        check("cuModuleGetFunction", unsafe {
            sys::cuModuleGetFunction(&mut f, self.module as sys::CUmodule, name.as_ptr())
        })?;
        Ok(f as usize)
    }

    /// Unloads the module. Its context must be current on this thread, and no launch of its
    /// kernels may still be queued (the caller synchronises first: the reference does not
    /// promise that queued launches keep the module alive).
    pub(super) fn unload(self) {
        // SAFETY: the module was loaded by `load`; no new launch can use it after this (the
        // value is consumed) and the caller waited for the queued ones.
        unsafe {
            let _ = sys::cuModuleUnload(self.module as sys::CUmodule);
        }
    }

    /// Writes the checksum of `[src, src + bytes)` as a `u64` at `out`, on `stream`.
    pub(super) fn checksum(
        &self,
        src: DevicePtr,
        bytes: u64,
        out: DevicePtr,
        stream: Stream,
    ) -> Result<()> {
        let s = stream.0 as sys::CUstream;
        // SAFETY: `out` names 8 bytes of device memory (the trait's contract); the driver
        // validates the address.
        check("cuMemsetD8Async", unsafe {
            sys::cuMemsetD8Async(out.0, 0, 8, s)
        })?;
        let words = bytes.div_ceil(8);
        if words > 0 {
            let (mut a, mut b, mut c) = (src.0, bytes, out.0);
            let mut params = [arg(&mut a), arg(&mut b), arg(&mut c)];
            launch(
                "cuLaunchKernel(vramswap_checksum_partial)",
                self.checksum_partial,
                blocks_for(words),
                stream,
                &mut params,
            )?;
        }
        let (mut a, mut b) = (out.0, bytes);
        let mut params = [arg(&mut a), arg(&mut b)];
        launch(
            "cuLaunchKernel(vramswap_checksum_finish)",
            self.checksum_finish,
            1,
            stream,
            &mut params,
        )
    }

    /// Fills `bytes` at `dst` with the little-endian bytes of `pattern`, on `stream`.
    pub(super) fn fill_u32(
        &self,
        dst: DevicePtr,
        bytes: u64,
        pattern: u32,
        stream: Stream,
    ) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        let (mut a, mut b, mut c) = (dst.0, bytes, pattern);
        let mut params = [arg(&mut a), arg(&mut b), arg(&mut c)];
        launch(
            "cuLaunchKernel(vramswap_fill_u32)",
            self.fill_u32,
            blocks_for(bytes.div_ceil(4)),
            stream,
            &mut params,
        )
    }

    /// Converts `count` elements from `src` (type `from`) into `dst` (type `to`), on `stream`.
    pub(super) fn cast(
        &self,
        src: DevicePtr,
        from: CastType,
        dst: DevicePtr,
        to: CastType,
        count: u64,
        stream: Stream,
    ) -> Result<()> {
        let too_large = |t: CastType| count.checked_mul(t.size() as u64).is_none();
        if too_large(from) || too_large(to) {
            return Err(Error::InvalidArgument(format!(
                "cast of {count} elements overflows the address space"
            )));
        }
        if count == 0 {
            return Ok(());
        }
        let (mut a, mut b, mut c, mut d, mut n) = (src.0, from.code(), dst.0, to.code(), count);
        let mut params = [
            arg(&mut a),
            arg(&mut b),
            arg(&mut c),
            arg(&mut d),
            arg(&mut n),
        ];
        launch(
            "cuLaunchKernel(vramswap_cast)",
            self.cast,
            blocks_for(count),
            stream,
            &mut params,
        )
    }
}

/// A kernel parameter for `cuLaunchKernel`: a pointer to the argument's value.
fn arg<T>(v: &mut T) -> *mut c_void {
    v as *mut T as *mut c_void
}

/// Launches `function` with `blocks` x [`THREADS`] threads on `stream`.
fn launch(
    call: &'static str,
    function: usize,
    blocks: u32,
    stream: Stream,
    params: &mut [*mut c_void],
) -> Result<()> {
    // SAFETY: `function` comes from the loaded module; `params` holds one pointer per kernel
    // parameter, in order, each to a live local of the parameter's exact type and size (the
    // kernels' ABI in kernels/vramswap_kernels.cu); the driver copies the values before
    // returning, so the locals need not outlive the call. No `extra` block.
    check(call, unsafe {
        sys::cuLaunchKernel(
            function as sys::CUfunction,
            blocks,
            1,
            1,
            THREADS,
            1,
            1,
            0,
            stream.0 as sys::CUstream,
            params.as_mut_ptr(),
            ptr::null_mut(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cover_small_ranges_and_are_capped_for_large_ones() {
        assert_eq!(blocks_for(0), 1);
        assert_eq!(blocks_for(1), 1);
        assert_eq!(blocks_for(256), 1);
        assert_eq!(blocks_for(257), 2);
        assert_eq!(blocks_for(u64::MAX), MAX_BLOCKS as u32);
    }

    #[test]
    fn embedded_image_holds_all_four_kernels() {
        let text = match embedded_kernel_image() {
            KernelImage::Ptx(t) | KernelImage::Source(t) => t,
        };
        for name in [
            "vramswap_checksum_partial",
            "vramswap_checksum_finish",
            "vramswap_fill_u32",
            "vramswap_cast",
        ] {
            assert!(text.contains(name), "{name} missing from the kernel image");
        }
        if let KernelImage::Source(src) = embedded_kernel_image() {
            assert!(
                !src.contains("#include \""),
                "NVRTC source must be self-contained"
            );
        }
    }

    /// Run with `LD_LIBRARY_PATH=<CUDA lib folder> cargo test -p vramswap --lib nvrtc --
    /// --ignored` (the PyPI wheel `nvidia-cuda-nvrtc==13.0.*` provides libnvrtc.so.13).
    #[test]
    #[ignore = "needs CUDA's NVRTC library (libnvrtc.so) on the library path"]
    fn nvrtc_compiles_the_embedded_source_to_all_four_entries() {
        let ptx = compile_with_nvrtc(NVRTC_SOURCE).expect("NVRTC compiles the kernels");
        for name in [
            ".entry vramswap_checksum_partial(",
            ".entry vramswap_checksum_finish(",
            ".entry vramswap_fill_u32(",
            ".entry vramswap_cast(",
        ] {
            assert!(ptx.contains(name), "{name} missing from NVRTC's PTX");
        }
        if let Ok(path) = std::env::var("VRAMSWAP_NVRTC_PTX_OUT") {
            std::fs::write(&path, &ptx).expect("write the PTX");
        }
    }
}
