//! The C ABI called from Rust: every entry point with good and bad arguments.
//!
//! Runs on `sim` by default and on the CUDA backend with `VRAMSWAP_TEST_BACKEND=cuda` (the
//! emulated driver in CI), through the context's backend kind: every test destroys what it
//! creates, so the emulator's leak report stays clean. The PyTorch entry points, whose contexts
//! live for the whole process, are tested in `capi_torch.rs`.

use std::ffi::{c_char, c_void, CStr, CString};
use std::ptr::{null, null_mut};

use vramswap::capi::vramswap_status::*;
use vramswap::capi::*;
use vramswap::weights::DType;

fn backend_kind() -> vramswap_backend_kind {
    match std::env::var("VRAMSWAP_TEST_BACKEND").as_deref() {
        Ok("cuda") => VRAMSWAP_BACKEND_CUDA,
        Ok("sim") | Err(_) => VRAMSWAP_BACKEND_SIM,
        Ok(other) => panic!("VRAMSWAP_TEST_BACKEND={other}: expected sim or cuda"),
    }
}

/// A context destroyed on drop.
struct Ctx(*mut vramswap_context);

impl Drop for Ctx {
    fn drop(&mut self) {
        // SAFETY: a live context from vramswap_context_create, destroyed once.
        unsafe { vramswap_context_destroy(self.0) };
    }
}

fn context_with(alloc_conf: Option<&str>, swap_conf: Option<&str>) -> Ctx {
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

fn context() -> Ctx {
    context_with(Some(""), Some(""))
}

fn last_error() -> String {
    // SAFETY: never NULL, NUL-terminated, valid until the next call on this thread.
    unsafe { CStr::from_ptr(vramswap_last_error_message()) }
        .to_string_lossy()
        .into_owned()
}

fn malloc(c: &Ctx, size: usize) -> *mut c_void {
    let mut p = null_mut();
    // SAFETY: live context, valid out-pointer.
    let st = unsafe { vramswap_malloc(c.0, size, null_mut(), &mut p) };
    assert_eq!(st, VRAMSWAP_OK, "{}", last_error());
    p
}

type JsonFn =
    unsafe extern "C" fn(*mut vramswap_context, *mut c_char, usize, *mut usize) -> vramswap_status;

fn json(c: &Ctx, f: JsonFn) -> serde_json::Value {
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

fn stats(c: &Ctx) -> serde_json::Value {
    json(c, vramswap_stats_json)
}

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

/// Writes a small safetensors file with two tensors; returns its directory and path.
fn weights_file() -> (tempfile::TempDir, CString, Vec<u8>) {
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

fn cstr(s: &str) -> CString {
    CString::new(s).unwrap()
}

fn acquire(c: &Ctx, name: &CStr) -> *mut vramswap_guard {
    let mut g = null_mut();
    // SAFETY: live context, NUL-terminated name, valid out-pointer.
    let st = unsafe { vramswap_engine_acquire(c.0, name.as_ptr(), &mut g) };
    assert_eq!(st, VRAMSWAP_OK, "{}", last_error());
    g
}

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
        let mut p = null_mut();
        let mut n = 0u64;
        assert_eq!(
            vramswap_guard_tensor_ptr(g, cstr("ghost").as_ptr(), &mut p, null_mut()),
            VRAMSWAP_NOT_FOUND
        );
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
