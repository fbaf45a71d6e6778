//! The C ABI called from Rust: the swap engine and guard entry points with good and bad
//! arguments, on the backend `VRAMSWAP_TEST_BACKEND` names (see `capi.rs`).

mod common;

use std::ffi::CStr;
use std::ptr::{null, null_mut};

use common::capi::*;
use vramswap::capi::vramswap_status::*;
use vramswap::capi::*;

#[test]
fn engine_register_acquire_read_offload() {
    let c = context();
    let (_dir, path, w) = weights_file();
    let name = cstr("tiny");
    // SAFETY: live context and guard, NUL-terminated strings, valid out-pointers and buffers.
    unsafe {
        assert_eq!(
            vramswap_engine_register(c.0, name.as_ptr(), path.as_ptr()),
            VRAMSWAP_OK
        );
        let g = acquire(&c, &name);
        let (mut base, mut bytes) = (null_mut(), 0u64);
        assert_eq!(vramswap_guard_base(g, &mut base), VRAMSWAP_OK);
        assert_eq!(vramswap_guard_bytes(g, &mut bytes), VRAMSWAP_OK);
        assert!(!base.is_null());
        assert!(bytes >= 128 + 32);
        let (mut tp, mut tlen) = (null_mut(), 0usize);
        let tw = cstr("w");
        assert_eq!(
            vramswap_guard_tensor_ptr(g, tw.as_ptr(), &mut tp, &mut tlen),
            VRAMSWAP_OK
        );
        assert_eq!(tlen, 128);
        assert!(tp as usize >= base as usize && (tp as usize) < base as usize + bytes as usize);
        assert_eq!(
            vramswap_guard_tensor_ptr(g, tw.as_ptr(), &mut tp, null_mut()),
            VRAMSWAP_OK
        );
        // The device bytes, through the guard and through the pointer.
        let mut got = vec![0u8; 128];
        let mut needed = 0;
        let st =
            vramswap_guard_read_tensor(g, tw.as_ptr(), got.as_mut_ptr().cast(), 128, &mut needed);
        assert_eq!(st, VRAMSWAP_OK, "{}", last_error());
        assert_eq!(got, w);
        let mut via_ptr = vec![0u8; 128];
        let st = vramswap_copy_to_host(c.0, via_ptr.as_mut_ptr().cast(), tp, 128, null_mut());
        assert_eq!(st, VRAMSWAP_OK, "{}", last_error());
        assert_eq!(via_ptr, w);
        let st =
            vramswap_guard_read_tensor(g, tw.as_ptr(), got.as_mut_ptr().cast(), 127, &mut needed);
        assert_eq!(st, VRAMSWAP_BUFFER_TOO_SMALL);
        assert_eq!(needed, 128);
        let mut tj = vec![0u8; 512];
        let st = vramswap_guard_tensors_json(g, tj.as_mut_ptr().cast(), tj.len(), null_mut());
        assert_eq!(st, VRAMSWAP_OK, "{}", last_error());
        let tj = CStr::from_ptr(tj.as_ptr().cast())
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            tj.contains("\"name\":\"b\"") && tj.contains("\"shape\":[4,8]"),
            "{tj}"
        );
        // A guard keeps the set on the device.
        assert_eq!(
            vramswap_engine_offload(c.0, name.as_ptr()),
            VRAMSWAP_INVALID_STATE
        );
        assert_eq!(
            vramswap_engine_release(c.0, name.as_ptr()),
            VRAMSWAP_INVALID_STATE
        );
        vramswap_guard_release(g);
        assert_eq!(
            vramswap_engine_offload(c.0, name.as_ptr()),
            VRAMSWAP_OK,
            "{}",
            last_error()
        );
    }
    let st = json(&c, vramswap_engine_status_json);
    assert_eq!(st["sets"][0]["name"], "tiny", "{st}");
    assert_eq!(st["sets"][0]["state"], "in_host", "{st}");
    assert_eq!(st["counters"]["loads"], 1, "{st}");
    // SAFETY: as above.
    unsafe {
        assert_eq!(
            vramswap_engine_prefetch(c.0, name.as_ptr()),
            VRAMSWAP_OK,
            "{}",
            last_error()
        );
        let g = acquire(&c, &name);
        vramswap_guard_release(g);
        assert_eq!(
            vramswap_engine_release(c.0, name.as_ptr()),
            VRAMSWAP_OK,
            "{}",
            last_error()
        );
        assert_eq!(
            vramswap_engine_unregister(c.0, name.as_ptr()),
            VRAMSWAP_OK,
            "{}",
            last_error()
        );
        let mut g = null_mut();
        assert_eq!(
            vramswap_engine_acquire(c.0, name.as_ptr(), &mut g),
            VRAMSWAP_NOT_FOUND
        );
        assert!(g.is_null());
    }
}

#[test]
fn engine_errors_are_statuses() {
    let c = context();
    let (dir, path, _) = weights_file();
    let name = cstr("tiny");
    let missing = cstr(dir.path().join("nope.safetensors").to_str().unwrap());
    let garbage_path = dir.path().join("garbage.safetensors");
    std::fs::write(
        &garbage_path,
        b"\xff\xff\xff\xff\xff\xff\xff\x7fnot a header",
    )
    .unwrap();
    let garbage = cstr(garbage_path.to_str().unwrap());
    let bad_utf8 = [0xffu8, 0xfe, 0];
    let mut g = null_mut();
    // SAFETY: live context; NUL-terminated strings; NULL pointers are reported.
    unsafe {
        assert_eq!(
            vramswap_engine_register(c.0, name.as_ptr(), path.as_ptr()),
            VRAMSWAP_OK
        );
        assert_eq!(
            vramswap_engine_register(c.0, name.as_ptr(), path.as_ptr()),
            VRAMSWAP_ALREADY_EXISTS
        );
        let other = cstr("other");
        assert_eq!(
            vramswap_engine_register(c.0, other.as_ptr(), missing.as_ptr()),
            VRAMSWAP_IO
        );
        assert_eq!(
            vramswap_engine_register(c.0, cstr("").as_ptr(), path.as_ptr()),
            VRAMSWAP_INVALID_ARGUMENT
        );
        assert_eq!(
            vramswap_engine_register(c.0, bad_utf8.as_ptr().cast(), path.as_ptr()),
            VRAMSWAP_INVALID_UTF8
        );
        assert_eq!(
            vramswap_engine_register(c.0, null(), path.as_ptr()),
            VRAMSWAP_NULL_POINTER
        );
        assert_eq!(
            vramswap_engine_register(c.0, name.as_ptr(), null()),
            VRAMSWAP_NULL_POINTER
        );
        assert_eq!(
            vramswap_engine_register(null_mut(), name.as_ptr(), path.as_ptr()),
            VRAMSWAP_NULL_POINTER
        );
        let bad = cstr("bad");
        assert_eq!(
            vramswap_engine_register(c.0, bad.as_ptr(), garbage.as_ptr()),
            VRAMSWAP_OK
        );
        assert_eq!(
            vramswap_engine_acquire(c.0, bad.as_ptr(), &mut g),
            VRAMSWAP_MALFORMED_FILE
        );
        assert!(g.is_null());
        assert_eq!(
            vramswap_engine_acquire(c.0, cstr("ghost").as_ptr(), &mut g),
            VRAMSWAP_NOT_FOUND
        );
        assert_eq!(
            vramswap_engine_acquire(c.0, name.as_ptr(), null_mut()),
            VRAMSWAP_NULL_POINTER
        );
        assert_eq!(
            vramswap_engine_offload(c.0, cstr("ghost").as_ptr()),
            VRAMSWAP_NOT_FOUND
        );
        assert_eq!(vramswap_engine_prefetch(c.0, null()), VRAMSWAP_NULL_POINTER);
        assert_eq!(
            vramswap_engine_release(null_mut(), name.as_ptr()),
            VRAMSWAP_NULL_POINTER
        );
        assert_eq!(
            vramswap_engine_unregister(c.0, cstr("ghost").as_ptr()),
            VRAMSWAP_NOT_FOUND
        );
        assert_eq!(
            vramswap_engine_status_json(null_mut(), null_mut(), 0, null_mut()),
            VRAMSWAP_NULL_POINTER
        );
        let g = acquire(&c, &name);
        let mut p = std::ptr::dangling_mut();
        let mut n = 0u64;
        assert_eq!(
            vramswap_guard_tensor_ptr(g, cstr("ghost").as_ptr(), &mut p, null_mut()),
            VRAMSWAP_NOT_FOUND
        );
        assert!(p.is_null(), "a pointer out-parameter is NULL on failure");
        assert_eq!(
            vramswap_guard_tensor_ptr(g, null(), &mut p, null_mut()),
            VRAMSWAP_NULL_POINTER
        );
        assert_eq!(
            vramswap_guard_tensor_ptr(g, cstr("w").as_ptr(), null_mut(), null_mut()),
            VRAMSWAP_NULL_POINTER
        );
        assert_eq!(
            vramswap_guard_tensor_ptr(null(), cstr("w").as_ptr(), &mut p, null_mut()),
            VRAMSWAP_NULL_POINTER
        );
        assert_eq!(vramswap_guard_base(null(), &mut p), VRAMSWAP_NULL_POINTER);
        assert_eq!(vramswap_guard_base(g, null_mut()), VRAMSWAP_NULL_POINTER);
        assert_eq!(vramswap_guard_bytes(null(), &mut n), VRAMSWAP_NULL_POINTER);
        assert_eq!(
            vramswap_guard_tensors_json(null(), null_mut(), 0, null_mut()),
            VRAMSWAP_NULL_POINTER
        );
        assert_eq!(
            vramswap_guard_read_tensor(g, cstr("w").as_ptr(), null_mut(), 128, null_mut()),
            VRAMSWAP_NULL_POINTER
        );
        vramswap_guard_release(g);
        vramswap_guard_release(null_mut());
    }
}
