//! Compiles a test-only C or C++ file from `kernels/` into a shared library with the system
//! compiler (chosen by the `cc` crate, so `CC`/`CXX` are honoured) and loads it.

use std::path::Path;

/// Compiles `kernels/<file>` (C99, or C++20 when `cpp`) with warnings as errors into a shared
/// library under the target's temporary folder and loads it.
pub fn load(file: &str, cpp: bool) -> libloading::Library {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kernels_host");
    std::fs::create_dir_all(&dir).expect("create the shim's folder");
    // One file per process and source: concurrent runs never load a half-written library.
    let stem = file.replace('.', "_");
    let lib = dir.join(format!("lib{stem}_{}.so", std::process::id()));
    let target = env!("VRAMSWAP_BUILD_TARGET");
    let compiler = cc::Build::new()
        .target(target)
        .host(target)
        .opt_level(2)
        .debug(false)
        .cargo_metadata(false)
        .cargo_warnings(false)
        .emit_rerun_if_env_changed(false)
        .out_dir(&dir)
        .pic(true)
        .cpp(cpp)
        .std(if cpp { "c++20" } else { "c99" })
        .warnings(true)
        .extra_warnings(true)
        .warnings_into_errors(true)
        .flag("-fno-strict-aliasing")
        .include(root.join("kernels"))
        .try_get_compiler()
        .expect("a C/C++ compiler for the host (set CC / CXX)");
    let out = compiler
        .to_command()
        .args(["-shared", "-pthread", "-o"])
        .arg(&lib)
        .arg(root.join("kernels").join(file))
        .output()
        .expect("run the C/C++ compiler");
    assert!(
        out.status.success(),
        "compiling kernels/{file} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // SAFETY: the library is our test shim, whose initialisers only set up the C/C++ runtime.
    let loaded = unsafe { libloading::Library::new(&lib) }.expect("load the compiled shim");
    let _ = std::fs::remove_file(&lib);
    loaded
}
