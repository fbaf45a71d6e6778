//! The leak and stream-ordering report: through the exported `vramswap_emu_report`, and at
//! process exit when `VRAMSWAP_EMU_REPORT` names a file (`-` for stderr).

use std::ffi::c_char;
use std::sync::atomic::Ordering;
use std::sync::Once;

use serde::Serialize;
use vramswap_sim::LeakReport;

use crate::state::driver_if_initialised;

/// The emulator's report: the device's [`LeakReport`] flattened beside what only the driver
/// holds.
#[derive(Serialize)]
struct Report<'a> {
    initialized: bool,
    clean: bool,
    device: &'a str,
    #[serde(flatten)]
    leaks: LeakReport,
    modules: usize,
    primary_context_refs: u32,
    driver_version: i32,
    violations: Vec<String>,
}

/// The report as one JSON object: `initialized`, `clean` (no leaks and no violations), the
/// leaked resources (`device_bytes`, `allocations`, `reservations`, `mappings`,
/// `physical_handles`, `pinned_bytes`, `registered_ranges`, `streams`, `events`, `modules`),
/// `primary_context_refs`, `driver_version`, and `violations` (messages of the stream-ordering
/// checker, then misuse the emulator caught: an entry point the emulated driver version lacks,
/// a module unloaded while launches of it were queued). It waits
/// for nothing: a stream-ordered free still queued counts as not yet freed.
pub fn report_json() -> String {
    let Some(d) = driver_if_initialised() else {
        return "{\"initialized\":false,\"clean\":true}".into();
    };
    let l = d.dev.leaks();
    let v = d.dev.violations();
    let misuse = d.misuse.lock().map(|m| m.clone()).unwrap_or_default();
    let modules = d.modules.lock().map(|m| m.len()).unwrap_or(0);
    let clean = l.is_clean() && v.is_empty() && misuse.is_empty() && modules == 0;
    let report = Report {
        initialized: true,
        clean,
        device: &d.dev.config().name,
        leaks: l,
        modules,
        primary_context_refs: d.primary_refs.load(Ordering::SeqCst),
        driver_version: d.opts.driver_version,
        violations: v.into_iter().map(|x| x.message).chain(misuse).collect(),
    };
    serde_json::to_string(&report).unwrap_or_else(|e| {
        format!("{{\"initialized\":true,\"clean\":false,\"error\":\"report failed: {e}\"}}")
    })
}

/// Writes the JSON report (see [`report_json`]) into `buf` as a NUL-terminated string,
/// truncated to `len - 1` bytes, and returns the report's full length in bytes (without the
/// NUL), as `snprintf` does: call with `len` 0 to size the buffer. Usable before `cuInit`.
///
/// # Safety
/// `buf` must be NULL (with `len` 0) or valid for writes of `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn vramswap_emu_report(buf: *mut c_char, len: usize) -> usize {
    let r = std::panic::catch_unwind(report_json).unwrap_or_else(|_| {
        "{\"initialized\":true,\"clean\":false,\"error\":\"report failed\"}".into()
    });
    if !buf.is_null() && len > 0 {
        let n = r.len().min(len - 1);
        // SAFETY: the caller's buffer holds `len` bytes; we write `n + 1 <= len`.
        unsafe {
            std::ptr::copy_nonoverlapping(r.as_ptr(), buf as *mut u8, n);
            *buf.add(n) = 0;
        }
    }
    r.len()
}

extern "C" {
    /// C library `atexit`.
    fn atexit(cb: extern "C" fn()) -> std::ffi::c_int;
}

extern "C" fn write_exit_report() {
    let _ = std::panic::catch_unwind(|| {
        let Ok(path) = std::env::var("VRAMSWAP_EMU_REPORT") else {
            return;
        };
        if let Some(d) = driver_if_initialised() {
            // Let queued work (stream-ordered frees included) finish before counting leaks.
            let _ = d.dev.synchronize();
        }
        let r = report_json();
        if path == "-" {
            eprintln!("[vramswap-cuda-emu] report: {r}");
        } else if let Err(e) = std::fs::write(&path, r + "\n") {
            eprintln!("[vramswap-cuda-emu] could not write VRAMSWAP_EMU_REPORT={path}: {e}");
        }
    });
}

/// Registers the exit report once, if `VRAMSWAP_EMU_REPORT` is set.
pub(crate) fn install_exit_report() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("VRAMSWAP_EMU_REPORT").is_some() {
            // SAFETY: registers a plain function that catches its own panics; the emulator is
            // never unloaded (the cuda backend keeps it loaded), so the function outlives exit.
            unsafe { atexit(write_exit_report) };
        }
    });
}
