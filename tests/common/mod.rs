//! Shared helpers of the integration tests.
#![allow(dead_code)]

pub mod capi;
#[cfg(target_os = "linux")]
pub mod store;

use std::sync::Arc;

use vramswap::backend::{cuda::CudaBackend, sim::SimBackend, SharedBackend};

/// The backend the tests run on: `sim` unless `VRAMSWAP_TEST_BACKEND=cuda`, in which case the
/// CUDA backend must open (a real driver, or the emulated one named by `VRAMSWAP_CUDA_DRIVER`):
/// a test that asked for CUDA never passes silently on the simulator.
pub fn test_backend() -> SharedBackend {
    match std::env::var("VRAMSWAP_TEST_BACKEND").as_deref() {
        Ok("cuda") => Arc::new(
            CudaBackend::new(0)
                .expect("VRAMSWAP_TEST_BACKEND=cuda but the cuda backend did not open"),
        ),
        // A 1 GiB simulated device, with `VRAMSWAP_SIM_CONF` applied over it (CI runs the
        // suites again with `host_visible:true`).
        Ok("sim") | Err(_) => {
            let base = vramswap_sim::SimConfig {
                capacity: 1 << 30,
                ..Default::default()
            };
            let conf = std::env::var("VRAMSWAP_SIM_CONF").unwrap_or_default();
            let config = vramswap_sim::parse_config(&conf, base)
                .unwrap_or_else(|e| panic!("VRAMSWAP_SIM_CONF={conf}: {e}"));
            Arc::new(SimBackend::new(config))
        }
        Ok(other) => panic!("VRAMSWAP_TEST_BACKEND={other}: expected sim or cuda"),
    }
}

/// Asserts that a simulated device ends clean: its queued work finishes, the stream-ordering
/// checker saw no violation, and nothing is left allocated (the one leak assertion of the
/// suites; `what` prefixes the failure, which prints what was found).
pub fn assert_device_clean(dev: &vramswap_sim::SimDevice, what: &str) {
    dev.synchronize().unwrap();
    let v = dev.violations();
    assert!(v.is_empty(), "{what}: stream-ordering violations: {v:?}");
    assert_no_leaks(dev, what);
}

/// Asserts that a simulated device holds nothing any more (device or pinned memory,
/// reservations, mappings, handles, registrations, streams, events), printing what it holds.
pub fn assert_no_leaks(dev: &vramswap_sim::SimDevice, what: &str) {
    let l = dev.leaks();
    assert!(l.is_clean(), "{what} leaked: {l:?}");
}

/// Runs a `vramswap` command that prints JSON: asserts it succeeded (showing its stderr when
/// not) and returns its stdout parsed.
pub fn json_output(cmd: &mut std::process::Command) -> serde_json::Value {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The emulated CUDA driver: `VRAMSWAP_CUDA_DRIVER`, or the one the workspace build put beside
/// the test binaries (`cargo test --workspace`, or `cargo build -p vramswap-cuda-emu`).
pub fn emulator() -> std::path::PathBuf {
    if let Ok(p) = std::env::var("VRAMSWAP_CUDA_DRIVER") {
        if !p.trim().is_empty() {
            return p.into();
        }
    }
    let exe = std::env::current_exe().unwrap();
    let lib = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("libvramswap_cuda_emu.so");
    assert!(
        lib.is_file(),
        "{} was not built: run `cargo build -p vramswap-cuda-emu` (`cargo test --workspace` \
         builds it)",
        lib.display()
    );
    lib
}
