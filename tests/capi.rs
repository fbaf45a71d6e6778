//! The C ABI called from Rust: the context and allocator entry points with good and bad
//! arguments (the engine's are in `capi_engine.rs`).
//!
//! Runs on `sim` by default and on the CUDA backend with `VRAMSWAP_TEST_BACKEND=cuda` (the
//! emulated driver in CI), through the context's backend kind: every test destroys what it
//! creates, so the emulator's leak report stays clean. The PyTorch entry points, whose contexts
//! live for the whole process, are tested in `capi_torch.rs`.

mod common;

use std::ffi::{c_void, CStr, CString};
use std::ptr::{null, null_mut};

use common::capi::*;
use vramswap::capi::vramswap_status::*;
use vramswap::capi::*;

#[test]
fn create_checks_its_arguments() {
    let mut ctx = null_mut();
    // SAFETY: NULL out-pointer: reported, not written.
    assert_eq!(
        unsafe { vramswap_context_create(VRAMSWAP_BACKEND_SIM, 0, 0, null_mut()) },
        VRAMSWAP_NULL_POINTER
    );
    assert!(last_error().contains("out"), "{}", last_error());
    // SAFETY: valid out-pointer in each call below.
    assert_eq!(
        unsafe { vramswap_context_create(7, 0, 0, &mut ctx) },
        VRAMSWAP_INVALID_ARGUMENT
    );
    assert!(last_error().contains("backend kind 7"), "{}", last_error());
    assert!(ctx.is_null());
    assert_eq!(
        unsafe { vramswap_context_create(-1, 0, 0, &mut ctx) },
        VRAMSWAP_INVALID_ARGUMENT
    );
    assert_eq!(
        unsafe { vramswap_context_create(backend_kind(), -3, 0, &mut ctx) },
        VRAMSWAP_INVALID_ARGUMENT
    );
    let bad = CString::new("no_such_key:1").unwrap();
    let st = unsafe {
        vramswap_context_create_with_config(backend_kind(), 0, 0, bad.as_ptr(), null(), &mut ctx)
    };
    assert_eq!(st, VRAMSWAP_INVALID_ARGUMENT);
    assert!(last_error().contains("no_such_key"), "{}", last_error());
    let st = unsafe {
        vramswap_context_create_with_config(backend_kind(), 0, 0, null(), bad.as_ptr(), &mut ctx)
    };
    assert_eq!(st, VRAMSWAP_INVALID_ARGUMENT);
    assert!(ctx.is_null());
    // NULL is ignored.
    unsafe { vramswap_context_destroy(null_mut()) };
}

#[test]
fn device_json_names_the_backend() {
    let c = context();
    let d = json(&c, vramswap_device_json);
    let want = if backend_kind() == VRAMSWAP_BACKEND_CUDA {
        "cuda"
    } else {
        "sim"
    };
    assert_eq!(d["backend"], want, "{d}");
}

#[test]
fn malloc_copy_and_free_round_trip() {
    let c = context();
    let p = malloc(&c, 1000);
    assert!(!p.is_null());
    let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
    let mut back = vec![0u8; 1000];
    // SAFETY: `p` has 1000 device bytes; host buffers have 1000 bytes each.
    unsafe {
        assert_eq!(
            vramswap_copy_to_device(c.0, p, data.as_ptr().cast(), 1000, null_mut()),
            VRAMSWAP_OK
        );
        assert_eq!(
            vramswap_copy_to_host(c.0, back.as_mut_ptr().cast(), p, 1000, null_mut()),
            VRAMSWAP_OK
        );
    }
    assert_eq!(back, data);
    assert_eq!(stats(&c)["allocated_bytes"]["current"], 1024);
    // SAFETY: live context; `p` from vramswap_malloc.
    assert_eq!(unsafe { vramswap_free(c.0, p) }, VRAMSWAP_OK);
    assert_eq!(last_error(), "", "a success clears the last error");
    assert_eq!(stats(&c)["allocated_bytes"]["current"], 0);
}

#[test]
fn freed_block_is_reused_without_a_new_segment() {
    let c = context();
    let p = malloc(&c, 4096);
    // SAFETY: live context; `p` is live.
    assert_eq!(unsafe { vramswap_free(c.0, p) }, VRAMSWAP_OK);
    let q = malloc(&c, 4096);
    assert_eq!(p, q);
    assert_eq!(stats(&c)["cache_hits"], 1);
    // SAFETY: as above.
    assert_eq!(unsafe { vramswap_free(c.0, q) }, VRAMSWAP_OK);
}

#[test]
fn malloc_rejects_zero_overflowing_and_negative_sizes() {
    let c = context();
    let mut p = std::ptr::dangling_mut::<c_void>();
    for size in [0, usize::MAX, (-5isize) as usize, isize::MAX as usize + 1] {
        // SAFETY: live context, valid out-pointer.
        let st = unsafe { vramswap_malloc(c.0, size, null_mut(), &mut p) };
        assert_eq!(st, VRAMSWAP_INVALID_ARGUMENT, "size {size}");
        assert!(p.is_null(), "the out-pointer is NULL on failure");
        assert!(
            last_error().starts_with("vramswap_malloc: "),
            "{}",
            last_error()
        );
    }
    // A size that rounds within range but exceeds the device: out of memory.
    // SAFETY: as above.
    let st = unsafe { vramswap_malloc(c.0, 1 << 50, null_mut(), &mut p) };
    assert_eq!(st, VRAMSWAP_OUT_OF_MEMORY, "{}", last_error());
    assert!(stats(&c)["allocated_bytes"]["current"] == 0);
}

#[test]
fn malloc_and_free_reject_null_pointers() {
    let c = context();
    let mut p = null_mut();
    // SAFETY: NULL pointers are reported before anything is dereferenced.
    unsafe {
        assert_eq!(
            vramswap_malloc(null_mut(), 16, null_mut(), &mut p),
            VRAMSWAP_NULL_POINTER
        );
        assert!(last_error().contains("ctx"), "{}", last_error());
        assert_eq!(
            vramswap_malloc(c.0, 16, null_mut(), null_mut()),
            VRAMSWAP_NULL_POINTER
        );
        assert_eq!(vramswap_free(c.0, null_mut()), VRAMSWAP_NULL_POINTER);
        assert_eq!(
            vramswap_free(null_mut(), 0x1000 as *mut c_void),
            VRAMSWAP_NULL_POINTER
        );
        assert_eq!(
            vramswap_record_stream(null_mut(), null_mut(), null_mut()),
            VRAMSWAP_NULL_POINTER
        );
        assert_eq!(vramswap_empty_cache(null_mut()), VRAMSWAP_NULL_POINTER);
        assert_eq!(
            vramswap_stats_json(null_mut(), null_mut(), 0, null_mut()),
            VRAMSWAP_NULL_POINTER
        );
        assert_eq!(
            vramswap_device_json(null_mut(), null_mut(), 0, null_mut()),
            VRAMSWAP_NULL_POINTER
        );
        let mut b = 0u8;
        let b: *mut c_void = (&mut b as *mut u8).cast();
        assert_eq!(
            vramswap_copy_to_device(c.0, null_mut(), b, 1, null_mut()),
            VRAMSWAP_NULL_POINTER
        );
        assert_eq!(
            vramswap_copy_to_host(c.0, null_mut(), b, 1, null_mut()),
            VRAMSWAP_NULL_POINTER
        );
        assert_eq!(
            vramswap_copy_to_host(c.0, b, b, 0, null_mut()),
            VRAMSWAP_INVALID_ARGUMENT
        );
        assert_eq!(
            vramswap_stream_create(c.0, null_mut()),
            VRAMSWAP_NULL_POINTER
        );
    }
}

#[test]
fn double_free_and_unknown_pointers_are_statuses() {
    let c = context();
    let p = malloc(&c, 256);
    // SAFETY: live context; the pointers are only looked up, never dereferenced.
    unsafe {
        assert_eq!(vramswap_free(c.0, p), VRAMSWAP_OK);
        assert_eq!(vramswap_free(c.0, p), VRAMSWAP_INVALID_STATE);
        assert!(last_error().contains("double free"), "{}", last_error());
        let never = 0xdead_0000usize as *mut c_void;
        assert_eq!(vramswap_free(c.0, never), VRAMSWAP_NOT_FOUND);
        assert_eq!(
            vramswap_record_stream(c.0, never, null_mut()),
            VRAMSWAP_NOT_FOUND
        );
    }
}

#[test]
fn record_stream_and_streams() {
    let c = context();
    let mut s = null_mut();
    // SAFETY: live context, valid out-pointers; `p` live until freed.
    unsafe {
        assert_eq!(
            vramswap_stream_create(c.0, &mut s),
            VRAMSWAP_OK,
            "{}",
            last_error()
        );
        assert!(!s.is_null());
        let p = malloc(&c, 512);
        assert_eq!(
            vramswap_record_stream(c.0, p, s),
            VRAMSWAP_OK,
            "{}",
            last_error()
        );
        assert_eq!(vramswap_free(c.0, p), VRAMSWAP_OK);
        assert_eq!(
            vramswap_stream_destroy(c.0, s),
            VRAMSWAP_OK,
            "{}",
            last_error()
        );
        assert_eq!(
            vramswap_stream_destroy(c.0, null_mut()),
            VRAMSWAP_INVALID_ARGUMENT
        );
    }
}

#[test]
fn empty_cache_returns_reserved_memory() {
    let c = context();
    let p = malloc(&c, 3 << 20);
    // SAFETY: live context; `p` live.
    assert_eq!(unsafe { vramswap_free(c.0, p) }, VRAMSWAP_OK);
    assert_ne!(stats(&c)["reserved_bytes"]["current"], 0);
    // SAFETY: live context.
    assert_eq!(unsafe { vramswap_empty_cache(c.0) }, VRAMSWAP_OK);
    assert_eq!(stats(&c)["reserved_bytes"]["current"], 0);
}

#[test]
fn allocator_limit_gives_out_of_memory_with_numbers() {
    let c = context_with(Some("limit_mb:4"), Some(""));
    let mut p = null_mut();
    // SAFETY: live context, valid out-pointer.
    let st = unsafe { vramswap_malloc(c.0, 8 << 20, null_mut(), &mut p) };
    assert_eq!(st, VRAMSWAP_OUT_OF_MEMORY);
    assert!(last_error().contains("limit"), "{}", last_error());
    assert!(p.is_null());
}

#[test]
fn json_calls_report_the_size_they_need() {
    let c = context();
    let mut needed = 0usize;
    let mut small = [0x55u8; 4];
    // SAFETY: buffers as described by their lengths; `needed` valid or NULL.
    unsafe {
        let st = vramswap_stats_json(c.0, small.as_mut_ptr().cast(), small.len(), &mut needed);
        assert_eq!(st, VRAMSWAP_BUFFER_TOO_SMALL);
        assert!(needed > 4);
        assert_eq!(small, [0x55; 4], "a too-small buffer is untouched");
        assert_eq!(
            vramswap_stats_json(c.0, null_mut(), 16, &mut needed),
            VRAMSWAP_NULL_POINTER
        );
        let st = vramswap_stats_json(c.0, small.as_mut_ptr().cast(), 4, null_mut());
        assert_eq!(st, VRAMSWAP_BUFFER_TOO_SMALL, "`needed` is optional");
        let mut exact = vec![0u8; needed];
        let st = vramswap_stats_json(c.0, exact.as_mut_ptr().cast(), needed, null_mut());
        assert_eq!(st, VRAMSWAP_OK, "a buffer of exactly `needed` bytes fits");
        assert_eq!(exact.last(), Some(&0));
    }
}

#[test]
fn status_names_and_version() {
    for (i, s) in vramswap_status::ALL.iter().enumerate() {
        assert_eq!(*s as usize, i, "ALL is in value order");
        // SAFETY: a static NUL-terminated string.
        let name = unsafe { CStr::from_ptr(vramswap_status_name(i as i32)) };
        assert_eq!(name.to_str().unwrap(), format!("{s:?}"));
    }
    // SAFETY: as above.
    let unknown = unsafe { CStr::from_ptr(vramswap_status_name(99)) };
    assert_eq!(unknown.to_str().unwrap(), "VRAMSWAP_UNKNOWN_STATUS");
    let unknown = unsafe { CStr::from_ptr(vramswap_status_name(-1)) };
    assert_eq!(unknown.to_str().unwrap(), "VRAMSWAP_UNKNOWN_STATUS");
    let v = unsafe { CStr::from_ptr(vramswap_version()) };
    assert_eq!(v.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
}

#[test]
fn last_error_is_per_thread() {
    // SAFETY: NULL context: reported.
    assert_eq!(
        unsafe { vramswap_empty_cache(null_mut()) },
        VRAMSWAP_NULL_POINTER
    );
    assert!(!last_error().is_empty());
    let other = std::thread::spawn(last_error).join().unwrap();
    assert_eq!(other, "", "another thread sees no error");
    assert!(!last_error().is_empty(), "this thread still sees it");
}
