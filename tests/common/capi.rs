//! Helpers of the C ABI tests (`capi.rs`, `capi_engine.rs`): contexts on the backend that
//! `VRAMSWAP_TEST_BACKEND` names, the last error, JSON reports, a small weights file.

use std::ffi::{c_char, c_void, CStr, CString};
use std::ptr::{null, null_mut};

use vramswap::capi::vramswap_status::*;
use vramswap::capi::*;
use vramswap::weights::DType;

pub fn backend_kind() -> vramswap_backend_kind {
    match std::env::var("VRAMSWAP_TEST_BACKEND").as_deref() {
        Ok("cuda") => VRAMSWAP_BACKEND_CUDA,
        Ok("sim") | Err(_) => VRAMSWAP_BACKEND_SIM,
        Ok(other) => panic!("VRAMSWAP_TEST_BACKEND={other}: expected sim or cuda"),
    }
}

/// A context destroyed on drop.
pub struct Ctx(pub *mut vramswap_context);

impl Drop for Ctx {
    fn drop(&mut self) {
        // SAFETY: a live context from vramswap_context_create, destroyed once.
        unsafe { vramswap_context_destroy(self.0) };
    }
}

pub fn context_with(alloc_conf: Option<&str>, swap_conf: Option<&str>) -> Ctx {
    let a = alloc_conf.map(|s| CString::new(s).unwrap());
    let s = swap_conf.map(|s| CString::new(s).unwrap());
    let mut ctx = null_mut();
    // SAFETY: valid out-pointer and NUL-terminated (or NULL) strings.
    let st = unsafe {
        vramswap_context_create_with_config(
            backend_kind(),
            0,
            1 << 30,
            a.as_ref().map_or(null(), |c| c.as_ptr()),
            s.as_ref().map_or(null(), |c| c.as_ptr()),
            &mut ctx,
        )
    };
    assert_eq!(st, VRAMSWAP_OK, "{}", last_error());
    assert!(!ctx.is_null());
    Ctx(ctx)
}

pub fn context() -> Ctx {
    context_with(Some(""), Some(""))
}

pub fn last_error() -> String {
    // SAFETY: never NULL, NUL-terminated, valid until the next call on this thread.
    unsafe { CStr::from_ptr(vramswap_last_error_message()) }
        .to_string_lossy()
        .into_owned()
}

pub fn malloc(c: &Ctx, size: usize) -> *mut c_void {
    let mut p = null_mut();
    // SAFETY: live context, valid out-pointer.
    let st = unsafe { vramswap_malloc(c.0, size, null_mut(), &mut p) };
    assert_eq!(st, VRAMSWAP_OK, "{}", last_error());
    p
}

/// Asserts a C call succeeded, showing the last error when it did not.
#[track_caller]
pub fn ok(st: vramswap_status) {
    assert_eq!(st, VRAMSWAP_OK, "{}", last_error());
}

/// Allocates `size` bytes on the default stream and frees them: the allocator still serves.
pub fn malloc_and_free(c: &Ctx, size: usize) {
    let q = malloc(c, size);
    // SAFETY: live context; `q` was just allocated by it.
    let st = unsafe { vramswap_free(c.0, q) };
    assert_eq!(st, VRAMSWAP_OK, "{}", last_error());
}

pub type JsonFn =
    unsafe extern "C" fn(*mut vramswap_context, *mut c_char, usize, *mut usize) -> vramswap_status;

pub fn json(c: &Ctx, f: JsonFn) -> serde_json::Value {
    let mut needed = 0;
    // SAFETY: a size query: NULL buffer of length 0, valid `needed`.
    assert_eq!(
        unsafe { f(c.0, null_mut(), 0, &mut needed) },
        VRAMSWAP_BUFFER_TOO_SMALL
    );
    // The text may grow between calls (the engine's idle times do): ask again until it fits.
    for _ in 0..5 {
        let mut buf = vec![0u8; needed];
        // SAFETY: `buf` has `needed` bytes.
        let st = unsafe { f(c.0, buf.as_mut_ptr().cast(), buf.len(), &mut needed) };
        if st == VRAMSWAP_BUFFER_TOO_SMALL {
            continue;
        }
        assert_eq!(st, VRAMSWAP_OK, "{}", last_error());
        let text = CStr::from_bytes_until_nul(&buf).expect("NUL-terminated");
        assert_eq!(
            text.to_bytes().len() + 1,
            needed,
            "`needed` counts the text and its NUL"
        );
        return serde_json::from_str(text.to_str().unwrap()).expect("valid JSON");
    }
    panic!("the JSON never fit");
}

pub fn stats(c: &Ctx) -> serde_json::Value {
    json(c, vramswap_stats_json)
}

/// Writes a small safetensors file with two tensors; returns its directory and path.
pub fn weights_file() -> (tempfile::TempDir, CString, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.safetensors");
    let w: Vec<u8> = (0..4 * 8 * 4).map(|i| (i * 3) as u8).collect();
    let b = vec![9u8; 8 * 4];
    vramswap::load::save(
        &path,
        &[("w", DType::F32, &[4, 8], &w), ("b", DType::F32, &[8], &b)],
    )
    .unwrap();
    let c = CString::new(path.to_str().unwrap()).unwrap();
    (dir, c, w)
}

pub fn cstr(s: &str) -> CString {
    CString::new(s).unwrap()
}

pub fn acquire(c: &Ctx, name: &CStr) -> *mut vramswap_guard {
    let mut g = null_mut();
    // SAFETY: live context, NUL-terminated name, valid out-pointer.
    let st = unsafe { vramswap_engine_acquire(c.0, name.as_ptr(), &mut g) };
    assert_eq!(st, VRAMSWAP_OK, "{}", last_error());
    g
}
