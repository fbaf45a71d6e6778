//! Reliability: handles from one context are never valid in another. Two contexts on the
//! simulated device hand out distinct device addresses and stream handles, so a pointer or
//! stream from context A given to context B is `VRAMSWAP_NOT_FOUND`, never B's own block
//! freed by accident (as the driver's unified addressing guarantees on CUDA). See the README,
//! "Reliability".

mod common;

use std::ffi::c_void;
use std::ptr::null_mut;

use common::capi::*;
use vramswap::capi::vramswap_status::*;
use vramswap::capi::*;

#[test]
fn a_pointer_or_stream_from_another_context_is_not_found() {
    let a = context();
    let b = context();
    let pa = malloc(&a, 4096);
    let pb = malloc(&b, 4096);
    assert_ne!(pa, pb, "two contexts handed out the same device address");
    let (mut sa, mut sb): (*mut c_void, *mut c_void) = (null_mut(), null_mut());
    // SAFETY: live contexts, valid out-pointers; pointers are only looked up.
    unsafe {
        assert_eq!(vramswap_stream_create(a.0, &mut sa), VRAMSWAP_OK);
        assert_eq!(vramswap_stream_create(b.0, &mut sb), VRAMSWAP_OK);
        assert_ne!(sa, sb, "two contexts handed out the same stream handle");
        assert_eq!(
            vramswap_free(b.0, pa),
            VRAMSWAP_NOT_FOUND,
            "{}",
            last_error()
        );
        if backend_kind() == VRAMSWAP_BACKEND_SIM {
            // On CUDA a caller's own `CUstream` is accepted (as PyTorch's allocator passes
            // them); on sim every stream comes from a context, so another's is unknown.
            let mut p = null_mut();
            assert_eq!(
                vramswap_malloc(b.0, 256, sa, &mut p),
                VRAMSWAP_NOT_FOUND,
                "{}",
                last_error()
            );
        }
        // Each context's own handles still work after the refusals.
        assert_eq!(vramswap_free(a.0, pa), VRAMSWAP_OK);
        assert_eq!(vramswap_free(b.0, pb), VRAMSWAP_OK);
        assert_eq!(vramswap_stream_destroy(a.0, sa), VRAMSWAP_OK);
        assert_eq!(vramswap_stream_destroy(b.0, sb), VRAMSWAP_OK);
    }
}

/// Destroying a context destroys the streams made on it that the caller left alive, with
/// blocks allocated on them freed first. Under the emulated driver (`scripts/test.sh` runs
/// this suite there) the exit report counts live streams: 3 cycles used to leave 3.
#[test]
fn context_destroy_destroys_the_streams_made_on_it() {
    for _ in 0..3 {
        let c = context();
        let mut s: *mut c_void = null_mut();
        // SAFETY: live context, valid out-pointers; `p` is freed before the context goes.
        unsafe {
            assert_eq!(vramswap_stream_create(c.0, &mut s), VRAMSWAP_OK);
            let mut p = null_mut();
            assert_eq!(vramswap_malloc(c.0, 4096, s, &mut p), VRAMSWAP_OK);
            assert_eq!(vramswap_free(c.0, p), VRAMSWAP_OK);
        }
        drop(c);
    }
}

/// Handles are generation-tagged: destroying a context twice, releasing a guard twice, or
/// using either afterwards is `VRAMSWAP_INVALID_STATE` (it was a SIGSEGV), also once a new
/// object took the released one's slot, and the new object is untouched.
#[test]
fn double_release_and_destroy_are_statuses() {
    let (_dir, path, _w) = weights_file();
    let name = cstr("tiny");
    // SAFETY: every handle below is passed as the C contract allows: live, NULL, or one
    // released before (which is what is tested); handles are never dereferenced by C.
    unsafe {
        let mut ctx = null_mut();
        assert_eq!(
            vramswap_context_create(backend_kind(), 0, 0, &mut ctx),
            VRAMSWAP_OK
        );
        let c = Ctx(ctx);
        assert_eq!(
            vramswap_engine_register(c.0, name.as_ptr(), path.as_ptr()),
            VRAMSWAP_OK
        );
        let g = acquire(&c, &name);
        assert_eq!(vramswap_guard_release(g), VRAMSWAP_OK);
        assert_eq!(vramswap_guard_release(g), VRAMSWAP_INVALID_STATE);
        assert!(last_error().contains("not live"), "{}", last_error());
        let mut base = null_mut();
        assert_eq!(vramswap_guard_base(g, &mut base), VRAMSWAP_INVALID_STATE);
        // A new guard may reuse the slot; the stale handle still does not reach it.
        let g2 = acquire(&c, &name);
        assert_ne!(g, g2);
        assert_eq!(vramswap_guard_release(g), VRAMSWAP_INVALID_STATE);
        assert_eq!(vramswap_guard_base(g2, &mut base), VRAMSWAP_OK);
        assert_eq!(vramswap_guard_release(g2), VRAMSWAP_OK);
        assert_eq!(vramswap_guard_release(null_mut()), VRAMSWAP_OK);

        let dead = c.0;
        std::mem::forget(c);
        assert_eq!(vramswap_context_destroy(dead), VRAMSWAP_OK);
        assert_eq!(vramswap_context_destroy(dead), VRAMSWAP_INVALID_STATE);
        let mut p = null_mut();
        assert_eq!(
            vramswap_malloc(dead, 256, null_mut(), &mut p),
            VRAMSWAP_INVALID_STATE
        );
        let fresh = context();
        assert_ne!(fresh.0, dead);
        assert_eq!(vramswap_context_destroy(dead), VRAMSWAP_INVALID_STATE);
        malloc_and_free(&fresh, 4096);
        assert_eq!(vramswap_context_destroy(null_mut()), VRAMSWAP_OK);
    }
}

/// A context exists only for the ordinals of devices the backend has, as on CUDA: on `sim` 1
/// unless `VRAMSWAP_SIM_DEVICES` says more (`context_create(SIM, 99999)` succeeded, and the
/// PyTorch entry points made a context, and threads, for every ordinal asked); on `cuda` what the
/// driver counts (it was `VRAMSWAP_BACKEND_UNAVAILABLE`). Either way `VRAMSWAP_INVALID_DEVICE`.
#[test]
fn device_ordinals_are_checked() {
    let kind = backend_kind();
    // SAFETY: valid out-pointers; a context made is destroyed.
    unsafe {
        for device in [1, 2, 99999] {
            let mut ctx = null_mut();
            assert_eq!(
                vramswap_context_create(kind, device, 0, &mut ctx),
                VRAMSWAP_INVALID_DEVICE
            );
            assert!(ctx.is_null());
            let e = last_error();
            assert!(
                e.contains(&format!("device {device} does not exist")) && e.contains("1 device"),
                "{e}"
            );
        }
        let mut ctx = null_mut();
        assert_eq!(vramswap_context_create(kind, 0, 0, &mut ctx), VRAMSWAP_OK);
        assert_eq!(vramswap_context_destroy(ctx), VRAMSWAP_OK);
    }
}
