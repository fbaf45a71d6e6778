//! The C ABI's context reads `VRAMSWAP_STORE` like the rest of the environment: its engine's
//! sets come from the shared host store. Its own test binary: the one test sets the
//! environment, which no other test in the process reads.
#![cfg(target_os = "linux")]

mod common;

use std::ptr::null_mut;

use common::capi::*;
use common::store::Store;
use vramswap::capi::vramswap_status::*;
use vramswap::capi::*;

fn read_w(c: &Ctx) -> Vec<u8> {
    let name = cstr("tiny");
    let g = acquire(c, &name);
    let t = cstr("w");
    let mut buf = vec![0u8; 128];
    let mut needed = 0;
    // SAFETY: a live guard, NUL-terminated name, a buffer of `buf.len()` bytes.
    let st = unsafe {
        vramswap_guard_read_tensor(
            g,
            t.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut needed,
        )
    };
    assert_eq!(st, VRAMSWAP_OK, "{}", last_error());
    // SAFETY: acquired above, released once.
    unsafe { vramswap_guard_release(g) };
    buf.truncate(needed);
    buf
}

#[test]
fn a_context_attaches_to_the_store_that_vramswap_store_names() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::start(dir.path(), &[]);
    // Set before any thread of this process reads the environment (the only test here).
    std::env::set_var("VRAMSWAP_STORE", &store.socket);
    let (_wdir, path, w) = weights_file();
    let mut reads = Vec::new();
    for _ in 0..2 {
        let c = context();
        // SAFETY: a live context and NUL-terminated strings.
        let st = unsafe { vramswap_engine_register(c.0, cstr("tiny").as_ptr(), path.as_ptr()) };
        assert_eq!(st, VRAMSWAP_OK, "{}", last_error());
        reads.push(read_w(&c));
        let status = json(&c, vramswap_engine_status_json);
        assert_eq!(status["counters"]["loads"], 0, "{status}");
        assert_eq!(status["counters"]["store_attaches"], 1, "{status}");
    }
    assert_eq!(reads[0], w);
    assert_eq!(reads[1], w);
    let s = store.status();
    assert_eq!((s.counters.loads, s.counters.attaches), (1, 1), "{s:?}");
    // A store that does not answer is a status of its own at context creation.
    std::env::set_var("VRAMSWAP_STORE", dir.path().join("nobody.sock"));
    let mut ctx = null_mut();
    // SAFETY: valid out-pointer.
    let st = unsafe { vramswap_context_create(backend_kind(), 0, 1 << 30, &mut ctx) };
    assert_eq!(st, VRAMSWAP_STORE_ERROR);
    assert!(ctx.is_null());
    assert!(last_error().contains("cannot connect"), "{}", last_error());
}
