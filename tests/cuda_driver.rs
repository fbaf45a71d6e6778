//! The `cuda` backend over the emulated driver configured as a particular driver would be: an
//! older driver version, another library changing the current context, a device without
//! read-only host registration.
//!
//! The emulator reads `VRAMSWAP_EMU_CONF` once, at `cuInit`, and the backend loads the driver
//! once per process, so each test runs its body in a child process of this test binary (the
//! `#[ignore]`d test of the same name with a `_child` suffix), over the emulator named by
//! `VRAMSWAP_CUDA_DRIVER`, or else `target/<profile>/libvramswap_cuda_emu.so` (built by
//! `cargo test --workspace`, or `cargo build -p vramswap-cuda-emu`).

mod common;

use std::process::Command;

use common::emulator;

use vramswap::backend::cuda::{CudaBackend, MIN_DRIVER_VERSION};
use vramswap::backend::cuda_kernels::{embedded_kernel_image, KernelImage};
use vramswap::backend::Backend;
use vramswap::conformance;
use vramswap::Error;

/// Set in the child processes; the `_child` tests do nothing without it.
const CHILD: &str = "VRAMSWAP_CUDA_DRIVER_TEST_CHILD";

/// What a child process printed, and the emulator's exit report (empty when the driver was
/// never initialised).
struct Child {
    output: String,
    report: String,
}

/// Runs `<name>_child` in a child process over the emulator configured with `conf`, and
/// asserts it passed.
fn in_child(name: &str, conf: &str) -> Child {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            &format!("{name}_child"),
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .env("VRAMSWAP_CUDA_DRIVER", emulator())
        .env("VRAMSWAP_EMU_CONF", conf)
        .env("VRAMSWAP_EMU_REPORT", &report)
        .env_remove("VRAMSWAP_EMU_FAULTS")
        .env_remove("VRAMSWAP_BACKEND")
        .output()
        .unwrap();
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{name} failed in its child:\n{output}"
    );
    assert!(
        output.contains("1 passed"),
        "{name}_child did not run:\n{output}"
    );
    let report = std::fs::read_to_string(&report).unwrap_or_default();
    Child { output, report }
}

fn is_child() -> bool {
    std::env::var_os(CHILD).is_some()
}

fn assert_clean(c: &Child) {
    assert!(
        c.report.contains("\"clean\":true"),
        "the emulator reports misuse, leaks or races:\n{}\n{}",
        c.report,
        c.output
    );
}

// ----- the driver version ------------------------------------------------------------------

/// A CUDA 12.4 driver (R550) has no `cuEventElapsedTime_v2` (added in 12.8): timing events
/// must use `cuEventElapsedTime`, never the missing entry point (cudarc panics on a real one).
#[test]
fn a_cuda_12_4_driver_times_events_without_the_12_8_entry_point() {
    let c = in_child(
        "a_cuda_12_4_driver_times_events_without_the_12_8_entry_point",
        "driver_version:12040",
    );
    assert_clean(&c);
    assert!(
        c.report.contains("\"driver_version\":12040"),
        "{}",
        c.report
    );
}

#[test]
#[ignore = "run in a child process by the test without the suffix"]
fn a_cuda_12_4_driver_times_events_without_the_12_8_entry_point_child() {
    if !is_child() {
        return;
    }
    let b = CudaBackend::new(0).expect("a CUDA 12.4 driver is supported");
    assert_eq!(b.properties().driver_version, 12040);
    let check = conformance::checks()
        .into_iter()
        .find(|c| c.name == "event_elapsed_time_is_non_negative")
        .unwrap();
    let out = conformance::run_one(&b, &check);
    assert!(out.passed, "{:?}", out.message);
    // The same through the trait directly, with work between the events.
    let s = b.stream_create().unwrap();
    let (t0, t1) = (b.event_create(true).unwrap(), b.event_create(true).unwrap());
    let x = b.alloc(1 << 20).unwrap();
    b.event_record(t0, s).unwrap();
    b.memset_d8_async(x, 1, 1 << 20, s).unwrap();
    b.event_record(t1, s).unwrap();
    b.event_synchronize(t1).unwrap();
    let ms = b
        .event_elapsed_ms(t0, t1)
        .expect("cuEventElapsedTime times the events");
    assert!(ms >= 0.0 && ms.is_finite(), "{ms}");
    b.event_destroy(t0).unwrap();
    b.event_destroy(t1).unwrap();
    b.free(x).unwrap();
    b.stream_destroy(s).unwrap();
}

/// A driver older than the minimum is refused when the backend opens, with a message naming
/// both versions, instead of a panic at the first missing entry point.
#[test]
fn a_driver_older_than_the_minimum_is_refused_naming_both_versions() {
    let c = in_child(
        "a_driver_older_than_the_minimum_is_refused_naming_both_versions",
        "driver_version:11000",
    );
    assert!(c.output.contains("CUDA 11.0"), "{}", c.output);
}

#[test]
#[ignore = "run in a child process by the test without the suffix"]
fn a_driver_older_than_the_minimum_is_refused_naming_both_versions_child() {
    if !is_child() {
        return;
    }
    assert_eq!(MIN_DRIVER_VERSION, 11020);
    match CudaBackend::new(0) {
        Err(Error::BackendUnavailable { backend, reason }) => {
            assert_eq!(backend, "cuda");
            assert!(
                reason.contains("CUDA 11.0") && reason.contains("CUDA 11.2"),
                "{reason}"
            );
            println!("refused: {reason}");
        }
        other => panic!("a CUDA 11.0 driver was not refused: {other:?}"),
    }
}

/// The oldest supported driver opens and passes the conformance suite, except the kernels:
/// their PTX (ISA 9.0 from nvcc 13.0, or NVRTC's) is newer than a CUDA 11.2 driver compiles,
/// and loading it is a clear `unsupported` error, as on a real driver of that age.
#[test]
fn the_oldest_supported_driver_passes_the_conformance_suite_but_the_kernels() {
    let c = in_child(
        "the_oldest_supported_driver_passes_the_conformance_suite_but_the_kernels",
        "driver_version:11020",
    );
    assert_clean(&c);
}

#[test]
#[ignore = "run in a child process by the test without the suffix"]
fn the_oldest_supported_driver_passes_the_conformance_suite_but_the_kernels_child() {
    if !is_child() {
        return;
    }
    let b = CudaBackend::new(0).expect("CUDA 11.2 is supported");
    for o in conformance::run_all(&b) {
        let msg = o.message.clone().unwrap_or_default();
        if o.name.contains("kernel") {
            let clear = msg.contains("cannot load vramswap's kernels")
                || (matches!(embedded_kernel_image(), KernelImage::Source(_))
                    && msg.contains("NVRTC"));
            assert!(!o.passed && clear, "{}: {msg}", o.name);
        } else {
            assert!(o.passed, "{}: {msg}", o.name);
        }
    }
}

// ----- the current context ------------------------------------------------------------------

/// Another library on the same thread unbinds the context (`cuCtxSetCurrent(NULL)`) between
/// two backend calls: the backend must notice through the driver and bind again, not trust
/// what it remembers (the call would fail with `CUDA_ERROR_INVALID_CONTEXT`).
#[test]
fn the_backend_binds_again_after_another_library_unbinds_the_context() {
    let c = in_child(
        "the_backend_binds_again_after_another_library_unbinds_the_context",
        "",
    );
    assert_clean(&c);
}

#[test]
#[ignore = "run in a child process by the test without the suffix"]
fn the_backend_binds_again_after_another_library_unbinds_the_context_child() {
    if !is_child() {
        return;
    }
    use cudarc::driver::sys;
    let unbind = || {
        // SAFETY: a plain driver call; NULL unbinds the calling thread's context.
        let r = unsafe { sys::cuCtxSetCurrent(std::ptr::null_mut()) };
        assert_eq!(r, sys::CUresult::CUDA_SUCCESS);
    };
    let current = || {
        let mut c: sys::CUcontext = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        assert_eq!(
            unsafe { sys::cuCtxGetCurrent(&mut c) },
            sys::CUresult::CUDA_SUCCESS
        );
        c
    };
    let b = CudaBackend::new(0).unwrap();
    let x = b.alloc(4096).unwrap();
    // What was current before a call (here: nothing) is current after it: the backend does
    // not leave its context bound for the next library on the thread.
    assert!(current().is_null(), "the backend left its context current");
    unbind();
    let y = b
        .alloc(4096)
        .expect("alloc after another library unbound the context");
    unbind();
    b.free(x).unwrap();
    unbind();
    b.free(y).unwrap();
    // The same on another thread, whose first call binds it.
    std::thread::scope(|s| {
        s.spawn(|| {
            let z = b.alloc(4096).unwrap();
            unbind();
            b.free(z).unwrap();
            unbind();
            b.synchronize().unwrap();
        });
    });
}

// ----- read-only host registration -----------------------------------------------------------

/// A device without `CU_DEVICE_ATTRIBUTE_READ_ONLY_HOST_REGISTER_SUPPORTED`: the backend reports
/// it and refuses a read-only registration with a clear `unsupported` error, before the driver
/// would answer `CUDA_ERROR_NOT_SUPPORTED`; a read-write registration still works.
#[test]
fn read_only_registration_is_a_clear_error_where_the_device_lacks_it() {
    let c = in_child(
        "read_only_registration_is_a_clear_error_where_the_device_lacks_it",
        "read_only_host_register:0",
    );
    assert_clean(&c);
}

#[test]
#[ignore = "run in a child process by the test without the suffix"]
fn read_only_registration_is_a_clear_error_where_the_device_lacks_it_child() {
    if !is_child() {
        return;
    }
    let b = CudaBackend::new(0).unwrap();
    assert!(!b.properties().read_only_host_register);
    let mut buf = vec![0u8; 1 << 16];
    // SAFETY: `buf` outlives the registration, which is undone below; no copy uses it.
    match unsafe { b.host_register(buf.as_mut_ptr(), buf.len() as u64, true) } {
        Err(Error::Unsupported(m)) => assert!(
            m.contains("READ_ONLY_HOST_REGISTER_SUPPORTED") && m.contains("direct"),
            "{m}"
        ),
        other => panic!("a read-only registration was not refused clearly: {other:?}"),
    }
    // SAFETY: as above.
    unsafe {
        b.host_register(buf.as_mut_ptr(), buf.len() as u64, false)
            .unwrap();
        b.host_unregister(buf.as_mut_ptr()).unwrap();
    }
}

/// Where the device has it (the emulator's default), both kinds of registration work.
#[test]
fn read_only_registration_works_where_the_device_has_it() {
    let c = in_child("read_only_registration_works_where_the_device_has_it", "");
    assert_clean(&c);
}

#[test]
#[ignore = "run in a child process by the test without the suffix"]
fn read_only_registration_works_where_the_device_has_it_child() {
    if !is_child() {
        return;
    }
    let b = CudaBackend::new(0).unwrap();
    assert!(b.properties().read_only_host_register);
    let mut buf = vec![0u8; 1 << 16];
    // SAFETY: `buf` outlives the registration, undone below; no copy uses it.
    unsafe {
        b.host_register(buf.as_mut_ptr(), buf.len() as u64, true)
            .unwrap();
        b.host_unregister(buf.as_mut_ptr()).unwrap();
    }
}

// ----- the kernels' module --------------------------------------------------------------------

/// Dropping the backend while a kernel launch is still queued (behind a slow copy, on a stream
/// already destroyed): the module must be unloaded only after that work, since the reference
/// does not promise that queued launches keep it. The emulator reports an unload under queued
/// launches as misuse.
#[test]
fn the_kernels_module_is_unloaded_only_after_queued_launches() {
    let c = in_child(
        "the_kernels_module_is_unloaded_only_after_queued_launches",
        "d2d_gbps:0.01",
    );
    if c.output.contains("skipped: no kernels") {
        eprintln!(
            "the_kernels_module_is_unloaded_only_after_queued_launches: {}",
            c.output
        );
        return;
    }
    assert_clean(&c);
}

#[test]
#[ignore = "run in a child process by the test without the suffix"]
fn the_kernels_module_is_unloaded_only_after_queued_launches_child() {
    if !is_child() {
        return;
    }
    let b = CudaBackend::new(0).unwrap();
    let s = b.stream_create().unwrap();
    let n = 4u64 << 20; // 400 ms at the configured 0.01 GB/s
    let x = b.alloc_async(n, s).unwrap();
    let y = b.alloc_async(n, s).unwrap();
    b.copy_dtod_async(y, x, n, s).unwrap();
    match b.fill_u32_async(x, n, 0x5a5a_5a5a, s) {
        Ok(()) => {}
        Err(Error::Unsupported(m)) if m.contains("NVRTC") => {
            // A build without nvcc and no libnvrtc: there is no module to unload.
            println!("skipped: no kernels in this build ({m})");
            b.synchronize().unwrap();
            b.free_async(x, s).unwrap();
            b.free_async(y, s).unwrap();
            b.stream_destroy(s).unwrap();
            return;
        }
        Err(e) => panic!("{e}"),
    }
    b.free_async(x, s).unwrap();
    b.free_async(y, s).unwrap();
    b.stream_destroy(s).unwrap();
    drop(b);
}
