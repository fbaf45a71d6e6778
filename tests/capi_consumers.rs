//! The C and C++ programs of `ffi/examples/`, compiled with the system compiler (chosen by the
//! `cc` crate, so `CC` / `CXX` are honoured) against `ffi/include/vramswap.h` and the static
//! library `libvramswap.a`, and run on the simulated device; their exit status and output are
//! checked.
//!
//! The static library is brought up to date first with `cargo build --lib` for this test's
//! profile, so the programs link the code under test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use vramswap::weights::DType;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `target/<profile>`: this test binary lives in its `deps/`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    exe.parent()
        .and_then(Path::parent)
        .expect("the test binary lives in target/<profile>/deps")
        .to_path_buf()
}

/// Builds the static library for this profile (once per process) and returns its path.
fn static_lib() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let dir = profile_dir();
        let profile = dir.file_name().and_then(|n| n.to_str()).unwrap_or("debug");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(root())
            .args(["build", "-p", "vramswap", "--lib", "--quiet"]);
        if profile != "debug" {
            cmd.args([
                "--profile",
                if profile == "release" {
                    "release"
                } else {
                    profile
                },
            ]);
        }
        let out = cmd.output().expect("run cargo build --lib");
        assert!(
            out.status.success(),
            "cargo build --lib failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lib = dir.join("libvramswap.a");
        assert!(lib.is_file(), "{} was not built", lib.display());
        lib
    })
}

/// Compiles `ffi/examples/<source>` (C99, or C++17) with warnings as errors and links it
/// against the static library; returns the executable.
fn build(source: &str) -> PathBuf {
    let cpp = source.ends_with(".cpp");
    let target = env!("VRAMSWAP_BUILD_TARGET");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("capi_consumers");
    std::fs::create_dir_all(&dir).expect("create the programs' folder");
    // One file per build: tests build the same source concurrently, and each deletes its own.
    static BUILDS: AtomicUsize = AtomicUsize::new(0);
    let n = BUILDS.fetch_add(1, Ordering::Relaxed);
    let stem = source.replace('.', "_");
    let exe = dir.join(format!("{stem}_{}_{n}", std::process::id()));
    let compiler = cc::Build::new()
        .target(target)
        .host(target)
        .opt_level(0)
        .debug(true)
        .cargo_metadata(false)
        .cargo_warnings(false)
        .emit_rerun_if_env_changed(false)
        .out_dir(&dir)
        .cpp(cpp)
        .std(if cpp { "c++17" } else { "c99" })
        .warnings(true)
        .extra_warnings(true)
        .warnings_into_errors(true)
        .flag("-pedantic")
        .include(root().join("ffi/include"))
        .try_get_compiler()
        .expect("a C/C++ compiler for the host (set CC / CXX)");
    let out = compiler
        .to_command()
        .arg("-o")
        .arg(&exe)
        .arg(root().join("ffi/examples").join(source))
        .arg(static_lib())
        .args(["-lpthread", "-ldl", "-lm"])
        .output()
        .expect("run the C/C++ compiler");
    assert!(
        out.status.success(),
        "compiling ffi/examples/{source} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

/// Runs a program on the simulated device.
fn run(exe: &Path, args: &[&Path]) -> Output {
    let out = Command::new(exe)
        .args(args)
        .env("VRAMSWAP_BACKEND", "sim")
        .env_remove("VRAMSWAP_ALLOC_CONF")
        .env_remove("VRAMSWAP_SWAP_CONF")
        .output()
        .unwrap_or_else(|e| panic!("run {} (exists: {}): {e}", exe.display(), exe.exists()));
    let _ = std::fs::remove_file(exe);
    out
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The weights file both programs read: tensor `w` (F32 [4, 8]) whose byte i is `i * 3`.
fn weights() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.safetensors");
    let w: Vec<u8> = (0..128u32).map(|i| (i * 3) as u8).collect();
    let b = vec![1u8; 32];
    vramswap::load::save(
        &path,
        &[("w", DType::F32, &[4, 8], &w), ("b", DType::F32, &[8], &b)],
    )
    .unwrap();
    (dir, path)
}

#[test]
fn c_program_uses_the_allocator_and_the_engine() {
    let (_dir, path) = weights();
    let out = run(&build("alloc_and_engine.c"), &[&path]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    for want in [
        "\"backend\":\"sim\"",
        "malloc/copy/free ok: 4096 bytes",
        "tensor w: 128 bytes at offset",
        "tensor w contents ok",
        "\"name\":\"tiny\",\"state\":\"in_host\"",
        "\"loads\":1",
        "done",
    ] {
        assert!(t.contains(want), "the output lacks `{want}`:\n{t}");
    }
    assert!(
        t.contains("\"allocation\":{\"current\":0"),
        "all blocks freed:\n{t}"
    );
}

#[test]
fn cpp_program_uses_the_allocator_and_the_engine() {
    let (_dir, path) = weights();
    let out = run(&build("alloc_and_engine.cpp"), &[&path]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    for want in [
        "c++ tensor w: 128 bytes ok",
        "\"state\":\"in_host\"",
        "c++ done",
    ] {
        assert!(t.contains(want), "the output lacks `{want}`:\n{t}");
    }
    assert!(
        t.contains("\"allocation\":{\"current\":0"),
        "RAII freed both blocks:\n{t}"
    );
}

#[test]
fn c_program_reports_a_missing_weights_file() {
    let missing = Path::new("/nonexistent/vramswap/tiny.safetensors");
    let out = run(&build("alloc_and_engine.c"), &[missing]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("VRAMSWAP_IO") && t.contains("tiny.safetensors"),
        "{t}"
    );
}

#[test]
fn c_misuse_is_answered_with_statuses() {
    let out = run(&build("misuse.c"), &[]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(!t.contains("FAIL"), "{t}");
    let line = t
        .lines()
        .find(|l| l.starts_with("misuse: "))
        .unwrap_or_else(|| panic!("no summary line:\n{t}"));
    let checks: u32 = line["misuse: ".len()..]
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a count of checks");
    assert!(checks >= 60, "only {checks} checks ran:\n{t}");
    assert!(line.ends_with(" 0 failed"), "{t}");
}
