//! Build script: embeds the CUDA kernels of `kernels/` for the `cuda` backend.
//!
//! - When `nvcc` is found, the kernels are compiled to PTX for `compute_80` (A100 and newer,
//!   Hopper included; the driver JIT-compiles PTX for the device at module load) and the PTX
//!   is embedded; the crate is built with `--cfg vramswap_kernels_ptx`. A kernel that does not
//!   compile fails the build.
//! - Otherwise the CUDA source, with the header pasted in, is embedded and compiled at run
//!   time with NVRTC. The build never needs CUDA, and without nvcc it runs no program at all.
//!
//! nvcc is looked up in this order: `$NVCC`, `$CUDA_HOME/bin/nvcc`, `$CUDA_PATH/bin/nvcc`,
//! then `PATH`. `VRAMSWAP_NO_NVCC=1` forces source embedding. Changes to `NVCC`, `CUDA_HOME`,
//! `CUDA_PATH` and `VRAMSWAP_NO_NVCC` rebuild; a change of `PATH` alone does not (it changes
//! for unrelated reasons and would rebuild the crate every time), so after installing nvcc on
//! `PATH`, set `NVCC` or touch `build.rs`.
//!
//! Outputs in `OUT_DIR`: `vramswap_kernels_nvrtc.cu` always, `vramswap_kernels.ptx` with nvcc.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const KERNEL_SOURCE: &str = "kernels/vramswap_kernels.cu";
const KERNEL_HEADER: &str = "kernels/vramswap_kernels.cuh";
const INCLUDE_LINE: &str = "#include \"vramswap_kernels.cuh\"";
/// The virtual architecture the PTX targets: runs on compute capability 8.0 and newer.
const PTX_ARCH: &str = "compute_80";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={KERNEL_SOURCE}");
    println!("cargo:rerun-if-changed={KERNEL_HEADER}");
    for var in ["NVCC", "CUDA_HOME", "CUDA_PATH", "VRAMSWAP_NO_NVCC"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo::rustc-check-cfg=cfg(vramswap_kernels_ptx)");
    // The host kernel check (tests/kernels_host.rs) compiles C for this target with `cc`.
    if let Ok(target) = env::var("TARGET") {
        println!("cargo:rustc-env=VRAMSWAP_BUILD_TARGET={target}");
    }

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let source = read(KERNEL_SOURCE);
    let header = read(KERNEL_HEADER);
    if !source.contains(INCLUDE_LINE) {
        fail(&format!(
            "{KERNEL_SOURCE} must contain the line `{INCLUDE_LINE}`"
        ));
    }
    // NVRTC gets one self-contained source: no include paths, no files at run time.
    let nvrtc_source = source.replacen(INCLUDE_LINE, &header, 1);
    write(&out_dir.join("vramswap_kernels_nvrtc.cu"), &nvrtc_source);

    let ptx = out_dir.join("vramswap_kernels.ptx");
    let Some(nvcc) = find_nvcc() else {
        // No stale PTX from an earlier build with nvcc: its presence means it is embedded.
        let _ = fs::remove_file(&ptx);
        return;
    };
    println!("cargo:rerun-if-changed={}", nvcc.display());
    let output = Command::new(&nvcc)
        .args(["-ptx", &format!("-arch={PTX_ARCH}"), "-o"])
        .arg(&ptx)
        .arg(KERNEL_SOURCE)
        .output();
    match output {
        Ok(o) if o.status.success() => {}
        Ok(o) => fail(&format!(
            "{} failed to compile {KERNEL_SOURCE} ({}):\n{}{}\n(set VRAMSWAP_NO_NVCC=1 to embed \
             the source for NVRTC instead)",
            nvcc.display(),
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )),
        Err(e) => fail(&format!(
            "could not run {}: {e} (set VRAMSWAP_NO_NVCC=1 to embed the source for NVRTC \
             instead)",
            nvcc.display()
        )),
    }
    let text = read(&ptx.to_string_lossy());
    if !text.contains(".entry vramswap_checksum_partial") {
        fail(&format!("{} holds no vramswap kernels", ptx.display()));
    }
    println!("cargo:rustc-cfg=vramswap_kernels_ptx");
}

/// The nvcc to use, if any (see the module documentation for the order).
fn find_nvcc() -> Option<PathBuf> {
    if env::var("VRAMSWAP_NO_NVCC").is_ok_and(|v| !v.is_empty() && v != "0") {
        return None;
    }
    if let Some(p) = env::var_os("NVCC").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            fail(&format!("NVCC={} is not a file", p.display()));
        }
        return Some(p);
    }
    let homes = ["CUDA_HOME", "CUDA_PATH"]
        .into_iter()
        .filter_map(env::var_os)
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join("bin"));
    let path = env::var_os("PATH").unwrap_or_default();
    homes
        .chain(env::split_paths(&path))
        .map(|dir| dir.join("nvcc"))
        .find(|p| p.is_file())
}

fn read(path: &str) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| fail(&format!("cannot read {path}: {e}")))
}

fn write(path: &Path, text: &str) {
    if let Err(e) = fs::write(path, text) {
        fail(&format!("cannot write {}: {e}", path.display()));
    }
}

fn fail(message: &str) -> ! {
    panic!("vramswap build script: {message}");
}
