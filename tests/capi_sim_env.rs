//! A non-zero `sim_capacity_bytes` in the C ABI merges with `VRAMSWAP_SIM_CONF` and
//! `VRAMSWAP_SIM_FAULTS`, the argument first. Its own test binary: the one test sets the
//! environment, which no other test in the process reads.

mod common;

use std::ptr::null_mut;

use common::capi::*;
use vramswap::capi::vramswap_status::*;
use vramswap::capi::*;
use vramswap::Backend;

#[test]
fn capacity_argument_overrides_only_the_capacity_of_the_environment() {
    // Set before any thread of this process reads the environment (the only test here).
    std::env::set_var(
        "VRAMSWAP_SIM_CONF",
        "capacity_mb:64,name:from-the-environment",
    );
    std::env::set_var("VRAMSWAP_SIM_FAULTS", "alloc:1");
    let mut ctx = null_mut();
    // SAFETY: valid out-pointer.
    let st = unsafe { vramswap_context_create(VRAMSWAP_BACKEND_SIM, 0, 1 << 30, &mut ctx) };
    assert_eq!(st, VRAMSWAP_OK, "{}", last_error());
    let c = Ctx(ctx);
    let dev = json(&c, vramswap_device_json);
    assert_eq!(dev["total_memory"], 1u64 << 30, "the argument wins: {dev}");
    assert_eq!(dev["name"], "from-the-environment", "{dev}");
    drop(c);
    // The same merge plants the fault plan: the first device allocation fails, the next does not
    // (the C context's allocator retries a failed allocation, which hides a single fault there).
    let b = vramswap::backend::sim::SimBackend::from_env_with_capacity(Some(1 << 30)).unwrap();
    assert_eq!(b.properties().total_memory, 1 << 30);
    b.alloc(1 << 20)
        .expect_err("VRAMSWAP_SIM_FAULTS was not planted");
    let p = b.alloc(1 << 20).unwrap();
    b.free(p).unwrap();
}
