//! The PyTorch entry points (`vramswap_torch_malloc` / `vramswap_torch_free`) on the simulated
//! device. One test, so that setting `VRAMSWAP_BACKEND` races with no other thread; their
//! process-wide contexts live until exit, so this file is not run over the emulated driver.

use std::ffi::{c_void, CStr};
use std::ptr::null_mut;

use vramswap::capi::vramswap_status::*;
use vramswap::capi::*;

fn last_error() -> String {
    // SAFETY: never NULL, NUL-terminated, valid until the next call on this thread.
    unsafe { CStr::from_ptr(vramswap_last_error_message()) }
        .to_string_lossy()
        .into_owned()
}

fn torch_stats(device: i32) -> serde_json::Value {
    let mut buf = vec![0u8; 4096];
    // SAFETY: `buf` has 4096 bytes.
    let st = unsafe {
        vramswap_torch_stats_json(device, buf.as_mut_ptr().cast(), buf.len(), null_mut())
    };
    assert_eq!(st, VRAMSWAP_OK, "{}", last_error());
    let text = CStr::from_bytes_until_nul(&buf).unwrap().to_str().unwrap();
    serde_json::from_str(text).unwrap()
}

#[test]
fn torch_entry_points_on_the_simulated_device() {
    // The only thread of this test binary that touches the environment.
    std::env::set_var("VRAMSWAP_BACKEND", "bogus");
    let p = vramswap_torch_malloc(256, 0, null_mut());
    assert!(p.is_null());
    assert!(last_error().contains("bogus"), "{}", last_error());

    std::env::set_var("VRAMSWAP_BACKEND", "sim");
    // Nothing allocated on device 0 yet: no context to report on.
    // SAFETY: a size query.
    let st = unsafe { vramswap_torch_stats_json(0, null_mut(), 0, null_mut()) };
    assert_eq!(st, VRAMSWAP_NOT_FOUND);
    assert_eq!(vramswap_torch_empty_cache(0), VRAMSWAP_NOT_FOUND);

    // Size 0 is NULL without an error; a negative size is NULL with one.
    assert!(vramswap_torch_malloc(0, 0, null_mut()).is_null());
    assert_eq!(last_error(), "");
    assert!(vramswap_torch_malloc(-1, 0, null_mut()).is_null());
    assert!(last_error().contains("negative"), "{}", last_error());
    assert!(vramswap_torch_malloc(1, -1, null_mut()).is_null());
    assert!(last_error().contains("device -1"), "{}", last_error());

    let a = vramswap_torch_malloc(1 << 20, 0, null_mut());
    let b = vramswap_torch_malloc(100, 0, null_mut());
    assert!(!a.is_null() && !b.is_null(), "{}", last_error());
    assert_ne!(a, b);
    assert_eq!(torch_stats(0)["allocation"]["current"], 2);
    vramswap_torch_free(a, 1 << 20, 0, null_mut());
    vramswap_torch_free(b, 100, 0, null_mut());
    assert_eq!(last_error(), "");
    assert_eq!(torch_stats(0)["allocation"]["current"], 0);
    // The same context serves the next request from its cache.
    let c = vramswap_torch_malloc(1 << 20, 0, null_mut());
    assert_eq!(c, a);
    vramswap_torch_free(c, 1 << 20, 0, null_mut());

    // Misuse is reported through the last error only; nothing crashes.
    vramswap_torch_free(null_mut(), 0, 0, null_mut());
    assert_eq!(last_error(), "");
    vramswap_torch_free(c, 1 << 20, 0, null_mut());
    assert!(last_error().contains("double free"), "{}", last_error());
    vramswap_torch_free(0x1234_0000usize as *mut c_void, 8, 0, null_mut());
    assert!(last_error().contains("not found"), "{}", last_error());
    vramswap_torch_free(a, 8, 3, null_mut());
    assert!(last_error().contains("device 3"), "{}", last_error());
    assert_eq!(vramswap_torch_empty_cache(0), VRAMSWAP_OK);
    assert_eq!(torch_stats(0)["reserved_bytes"]["current"], 0);
}
