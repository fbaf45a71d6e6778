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
fn out_of_memory_numbers_reach_c_as_fields() {
    let c = context_with(Some("limit_mb:64"), Some(""));
    let held = malloc(&c, 32 << 20);
    let mut p = null_mut();
    let mut info = vramswap_oom_info {
        requested: 0,
        allocated: 0,
        reserved: 0,
        device_free: 0,
        limit: 0,
        fragmented: 0,
    };
    // SAFETY: live context, valid out-pointers.
    let st = unsafe { vramswap_malloc(c.0, 48 << 20, null_mut(), &mut p) };
    assert_eq!(st, VRAMSWAP_OUT_OF_MEMORY, "{}", last_error());
    // SAFETY: valid out-pointer.
    assert_eq!(unsafe { vramswap_last_error_oom(&mut info) }, VRAMSWAP_OK);
    assert_eq!(info.requested, 48 << 20, "{info:?}");
    assert_eq!(info.allocated, 32 << 20, "{info:?}");
    assert!(info.reserved >= info.allocated, "{info:?}");
    assert_eq!(info.limit, 64 << 20, "{info:?}");
    assert!(info.device_free > 0, "{info:?}");
    // The message carries the same numbers as text.
    assert!(
        last_error().contains(&(48u64 << 20).to_string()),
        "{}",
        last_error()
    );
    // SAFETY: NULL is reported, not written.
    assert_eq!(
        unsafe { vramswap_last_error_oom(null_mut()) },
        VRAMSWAP_NULL_POINTER
    );
    // Another kind of failure, and a success, leave no numbers behind.
    // SAFETY: live context, valid out-pointer.
    let st = unsafe { vramswap_malloc(c.0, 0, null_mut(), &mut p) };
    assert_eq!(st, VRAMSWAP_INVALID_ARGUMENT);
    // SAFETY: valid out-pointer.
    assert_eq!(
        unsafe { vramswap_last_error_oom(&mut info) },
        VRAMSWAP_NOT_FOUND
    );
    // SAFETY: `held` came from vramswap_malloc on this context.
    ok(unsafe { vramswap_free(c.0, held) });
    // SAFETY: valid out-pointer.
    assert_eq!(
        unsafe { vramswap_last_error_oom(&mut info) },
        VRAMSWAP_NOT_FOUND
    );
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
        // As cuMemcpy: a copy of 0 bytes succeeds and touches nothing.
        assert_eq!(
            vramswap_copy_to_host(c.0, b, b, 0, null_mut()),
            VRAMSWAP_OK,
            "{}",
            last_error()
        );
        assert_eq!(
            vramswap_copy_to_device(c.0, b, b, 0, null_mut()),
            VRAMSWAP_OK
        );
        assert_eq!(
            vramswap_copy_to_host(c.0, b, b, usize::MAX, null_mut()),
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
        ok(vramswap_stream_create(c.0, &mut s));
        assert!(!s.is_null());
        let p = malloc(&c, 512);
        ok(vramswap_record_stream(c.0, p, s));
        assert_eq!(vramswap_free(c.0, p), VRAMSWAP_OK);
        ok(vramswap_stream_destroy(c.0, s));
        assert_eq!(
            vramswap_stream_destroy(c.0, null_mut()),
            VRAMSWAP_INVALID_ARGUMENT
        );
    }
}

/// A context's allocator is the default one: large blocks from expandable segments wherever
/// the virtual-memory API exists (sim and CUDA alike), mapped page by page, not cut from a
/// fixed 20 MiB segment (issue 21's default reaches C, and PyTorch through it).
#[test]
fn large_blocks_come_from_expandable_segments_by_default() {
    let c = context();
    let p = malloc(&c, 3 << 20);
    let st = stats(&c);
    assert_eq!(st["num_maps"], 2, "two 2 MiB pages: {st}");
    assert_eq!(st["reserved_bytes"]["current"], 4u64 << 20, "{st}");
    // SAFETY: live context; `p` live.
    assert_eq!(unsafe { vramswap_free(c.0, p) }, VRAMSWAP_OK);
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

fn stream(c: &Ctx) -> *mut c_void {
    let mut s = null_mut();
    // SAFETY: live context, valid out-pointer.
    let st = unsafe { vramswap_stream_create(c.0, &mut s) };
    ok(st);
    s
}

#[test]
fn streams_the_caller_may_not_use_are_not_found() {
    let c = context();
    let (_dir, path, _) = weights_file();
    let name = cstr("tiny");
    // SAFETY: live context, NUL-terminated strings.
    let st = unsafe { vramswap_engine_register(c.0, name.as_ptr(), path.as_ptr()) };
    ok(st);
    let p = malloc(&c, 256);
    let mut b = [0u8; 256];
    // SAFETY: live context; the handles are only looked up, never used as host pointers; `b`
    // has 256 bytes, `p` 256 device bytes.
    unsafe {
        // Small integers are the engine's own copy streams on sim (and CU_STREAM_LEGACY /
        // _PER_THREAD on CUDA): never the caller's to destroy.
        for h in 1..=4usize {
            let foreign = h as *mut c_void;
            assert_eq!(
                vramswap_stream_destroy(c.0, foreign),
                VRAMSWAP_NOT_FOUND,
                "stream {h}"
            );
            assert!(last_error().contains("stream"), "{}", last_error());
        }
        // On sim every stream comes from the context, so anything else is refused everywhere.
        // (On CUDA a caller's own CUstream is accepted, as by PyTorch's allocator: CUDA's
        // special handles 1 and 2 are used below.)
        for h in 1..=4usize {
            if backend_kind() == VRAMSWAP_BACKEND_CUDA {
                break;
            }
            let foreign = h as *mut c_void;
            assert_eq!(vramswap_record_stream(c.0, p, foreign), VRAMSWAP_NOT_FOUND);
            let mut q = std::ptr::dangling_mut::<c_void>();
            assert_eq!(
                vramswap_malloc(c.0, 64, foreign, &mut q),
                VRAMSWAP_NOT_FOUND
            );
            assert!(q.is_null());
            assert_eq!(
                vramswap_copy_to_device(c.0, p, b.as_ptr().cast(), 256, foreign),
                VRAMSWAP_NOT_FOUND
            );
            assert_eq!(
                vramswap_copy_to_host(c.0, b.as_mut_ptr().cast(), p, 256, foreign),
                VRAMSWAP_NOT_FOUND
            );
        }
        // The engine's streams survived.
        let g = acquire(&c, &name);
        vramswap_guard_release(g);
        if backend_kind() == VRAMSWAP_BACKEND_CUDA {
            // CU_STREAM_LEGACY: a stream of the caller's, accepted.
            for h in 1..=1usize {
                let s = h as *mut c_void;
                let mut q = null_mut();
                assert_eq!(vramswap_malloc(c.0, 64, s, &mut q), VRAMSWAP_OK, "{h}");
                assert_eq!(vramswap_record_stream(c.0, p, s), VRAMSWAP_OK, "{h}");
                assert_eq!(
                    vramswap_copy_to_device(c.0, p, b.as_ptr().cast(), 256, s),
                    VRAMSWAP_OK
                );
                ok(vramswap_free(c.0, q));
            }
        }
        // The default stream still works everywhere but in destroy.
        assert_eq!(vramswap_record_stream(c.0, p, null_mut()), VRAMSWAP_OK);
        assert_eq!(
            vramswap_copy_to_device(c.0, p, b.as_ptr().cast(), 256, null_mut()),
            VRAMSWAP_OK
        );
        assert_eq!(vramswap_free(c.0, p), VRAMSWAP_OK);
    }
    assert_eq!(stats(&c)["allocated_bytes"]["current"], 0);
}

#[test]
fn a_stream_is_destroyed_once() {
    let c = context();
    let s = stream(&c);
    let p = {
        let mut p = null_mut();
        // SAFETY: live context, a stream of this context, valid out-pointer.
        let st = unsafe { vramswap_malloc(c.0, 512, s, &mut p) };
        ok(st);
        p
    };
    // SAFETY: live context; `s` from vramswap_stream_create, looked up before any use.
    unsafe {
        assert_eq!(vramswap_free(c.0, p), VRAMSWAP_OK);
        ok(vramswap_stream_destroy(c.0, s));
        assert_eq!(vramswap_stream_destroy(c.0, s), VRAMSWAP_NOT_FOUND);
        if backend_kind() == VRAMSWAP_BACKEND_SIM {
            // On CUDA a destroyed CUstream is as unusable as in CUDA itself (the context
            // accepts the caller's own streams there, and cannot tell a dead one).
            let mut q = null_mut();
            assert_eq!(vramswap_malloc(c.0, 512, s, &mut q), VRAMSWAP_NOT_FOUND);
        }
        // Another context never knew it.
        let other = context();
        let s2 = stream(&c);
        assert_eq!(vramswap_stream_destroy(other.0, s2), VRAMSWAP_NOT_FOUND);
        ok(vramswap_stream_destroy(c.0, s2));
    }
}

/// A block used on a stream that is destroyed before the free: the free says OK, and the
/// block is freed (the allocator forgot the stream when it was destroyed; had it not, the free
/// could not record an event there).
#[test]
fn free_after_the_recorded_stream_is_gone_succeeds_once() {
    for conf in ["", "poison:true"] {
        let c = context_with(Some(conf), Some(""));
        let s = stream(&c);
        let p = malloc(&c, 1000);
        // SAFETY: live context; `p` live; `s` created above.
        unsafe {
            ok(vramswap_record_stream(c.0, p, s));
            ok(vramswap_stream_destroy(c.0, s));
            assert_eq!(
                vramswap_free(c.0, p),
                VRAMSWAP_OK,
                "{conf}: {}",
                last_error()
            );
            assert_eq!(stats(&c)["allocated_bytes"]["current"], 0);
            assert_eq!(vramswap_free(c.0, p), VRAMSWAP_INVALID_STATE, "{conf}");
        }
        // The block is reusable.
        malloc_and_free(&c, 1000);
    }
}

/// With `poison:true` a freed block is filled on its own stream; when the caller destroyed
/// that stream first, the fill runs on the default stream and the free says OK.
#[test]
fn poisoned_free_of_a_block_whose_stream_is_gone_succeeds_once() {
    let c = context_with(Some("poison:true"), Some(""));
    let s = stream(&c);
    let mut p = null_mut();
    // SAFETY: live context; `s` created above; valid out-pointer.
    unsafe {
        let st = vramswap_malloc(c.0, 4096, s, &mut p);
        ok(st);
        ok(vramswap_stream_destroy(c.0, s));
        ok(vramswap_free(c.0, p));
        assert_eq!(stats(&c)["allocated_bytes"]["current"], 0);
        assert_eq!(vramswap_free(c.0, p), VRAMSWAP_INVALID_STATE);
        let mut back = [0u8; 8];
        let st = vramswap_copy_to_host(c.0, back.as_mut_ptr().cast(), p, 8, null_mut());
        ok(st);
        assert_eq!(
            back,
            [0xef, 0xbe, 0xad, 0xde, 0xef, 0xbe, 0xad, 0xde],
            "poisoned"
        );
    }
    // The block is reusable on the default stream.
    malloc_and_free(&c, 4096);
}

/// The free remainder of a split segment was never handed out: NOT_FOUND, as documented,
/// not a double free.
#[test]
fn free_of_a_split_remainder_is_not_found() {
    let c = context();
    let p = malloc(&c, 1024);
    let rest = p.wrapping_byte_add(1024);
    // SAFETY: live context; the pointers are only looked up.
    unsafe {
        assert_eq!(
            vramswap_free(c.0, rest),
            VRAMSWAP_NOT_FOUND,
            "{}",
            last_error()
        );
        assert_eq!(
            vramswap_record_stream(c.0, rest, null_mut()),
            VRAMSWAP_NOT_FOUND
        );
        assert_eq!(vramswap_free(c.0, p), VRAMSWAP_OK);
        assert_eq!(vramswap_free(c.0, p), VRAMSWAP_INVALID_STATE);
        assert!(last_error().contains("double free"), "{}", last_error());
    }
    // A block handed out and freed at that address is a double free again.
    let a = malloc(&c, 1024);
    let b = malloc(&c, 1024);
    assert_eq!((a, b), (p, rest));
    // SAFETY: as above.
    unsafe {
        assert_eq!(vramswap_free(c.0, b), VRAMSWAP_OK);
        assert_eq!(vramswap_free(c.0, b), VRAMSWAP_INVALID_STATE);
        assert_eq!(vramswap_free(c.0, a), VRAMSWAP_OK);
    }
}

/// A block parked by `record_stream` is poisoned when its events complete, at a later
/// allocation; by then the caller may have destroyed both its streams, and that allocation
/// still succeeds.
#[test]
fn parked_block_whose_streams_are_gone_is_poisoned_at_the_next_malloc() {
    let c = context_with(Some("poison:true"), Some(""));
    let (s, s2) = (stream(&c), stream(&c));
    let mut p = null_mut();
    // SAFETY: live context; `s`, `s2` created above; valid out-pointers.
    unsafe {
        assert_eq!(vramswap_malloc(c.0, 4096, s, &mut p), VRAMSWAP_OK);
        assert_eq!(vramswap_record_stream(c.0, p, s2), VRAMSWAP_OK);
        ok(vramswap_free(c.0, p));
        // Destroying waits for each stream: the event on `s2` is complete after this.
        ok(vramswap_stream_destroy(c.0, s));
        ok(vramswap_stream_destroy(c.0, s2));
        let q = malloc(&c, 512);
        assert_eq!(stats(&c)["active_bytes"]["current"], 512);
        let mut back = [0u8; 4];
        let st = vramswap_copy_to_host(c.0, back.as_mut_ptr().cast(), p, 4, null_mut());
        ok(st);
        assert_eq!(u32::from_le_bytes(back), 0xDEAD_BEEF, "poisoned");
        assert_eq!(vramswap_free(c.0, q), VRAMSWAP_OK);
    }
}
