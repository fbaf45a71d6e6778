//! `vramswap info` on each backend, as a user runs it.

mod common;

use std::process::Command;

fn vramswap() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vramswap"));
    c.env_remove("VRAMSWAP_BACKEND")
        .env_remove("VRAMSWAP_CUDA_DRIVER");
    c
}

#[test]
fn info_on_sim_reports_the_simulated_device_as_json() {
    let v = common::json_output(vramswap().args(["info", "--backend", "sim", "--json"]));
    assert_eq!(v["backend"], "sim");
    assert_eq!(v["device"]["emulated"], true);
    assert_eq!(v["device"]["vmm_granularity"], 2 << 20);
    assert!(v["memory"]["total"].as_u64().unwrap() > 0);
}

#[test]
fn info_on_cuda_without_a_driver_fails_cleanly() {
    // SAFETY: only probes whether libcuda can be opened.
    let have_driver = unsafe { cudarc::driver::sys::is_culib_present() };
    let out = vramswap()
        .args(["info", "--backend", "cuda"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if have_driver {
        // A machine with a real driver: info either works or explains itself.
        assert!(out.status.success() || err.starts_with("error: "), "{err}");
        return;
    }
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("error: cuda backend unavailable: no CUDA driver found"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_driver_path_that_cannot_be_loaded_is_a_clean_error() {
    let out = vramswap()
        .args(["info", "--backend", "cuda"])
        .env("VRAMSWAP_CUDA_DRIVER", "/nonexistent/libcuda-emu.so")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("VRAMSWAP_CUDA_DRIVER=/nonexistent/libcuda-emu.so could not be loaded"),
        "{err}"
    );
}

#[test]
fn auto_falls_back_to_sim_and_says_why() {
    // SAFETY: as above.
    if unsafe { cudarc::driver::sys::is_culib_present() } {
        return; // a real driver answers here; auto picks it.
    }
    let out = vramswap().args(["info"]).output().unwrap();
    assert!(out.status.success());
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("auto: using the simulated device"), "{s}");
}

#[test]
fn unknown_backend_name_is_rejected() {
    let out = vramswap()
        .args(["info", "--backend", "opencl"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    // `vramswap info | head -0`: the reader is gone before the first write. `println!` used to
    // panic there ("failed printing to stdout: Broken pipe", exit 101, a backtrace).
    for args in [
        &["info", "--backend", "sim"][..],
        &["replay", "--backend", "sim", "--generate", "small"],
    ] {
        let mut child = vramswap()
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_ne!(out.status.code(), Some(101), "{args:?}: {err}");
    }
}
