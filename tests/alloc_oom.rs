//! The out-of-memory ladder, one test per rung: cached blocks, freeing empty cached segments,
//! pressure handlers, and the final error.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use vramswap::alloc::{AllocatorConfig, CachingAllocator, LargeBlocks};
use vramswap::backend::{sim::SimBackend, DevicePtr, SharedBackend};
use vramswap::Error;

const MIB: u64 = 1 << 20;

fn setup() -> (SharedBackend, Arc<CachingAllocator>, vramswap::Stream) {
    let b: SharedBackend = Arc::new(SimBackend::with_capacity(48 * MIB));
    let s = b.stream_create().unwrap();
    // The ladder of fixed segments (PyTorch's layout, the fallback without the virtual-memory
    // API), whose rungs count whole segments; expandable segments climb the same ladder in
    // pages (tests/alloc_expandable_holes.rs).
    let config = AllocatorConfig {
        large_blocks: LargeBlocks::Fixed,
        ..AllocatorConfig::default()
    };
    let a = Arc::new(CachingAllocator::new(b.clone(), config).unwrap());
    (b, a, s)
}

#[test]
fn rung1_cached_block_serves_a_request_the_device_could_not() {
    let (b, a, s) = setup();
    let p = a.allocate(40 * MIB, s).unwrap();
    a.free(p).unwrap();
    assert!(b.mem_info().unwrap().free < 40 * MIB);
    let q = a.allocate(40 * MIB, s).unwrap();
    assert_eq!(p, q);
    let st = a.stats();
    assert_eq!(
        (st.num_device_alloc, st.num_alloc_retries, st.num_ooms),
        (1, 0, 0)
    );
}

#[test]
fn rung2_empty_cached_segments_are_freed_and_the_request_retried() {
    let (_b, a, s) = setup();
    let p = a.allocate(40 * MIB, s).unwrap();
    a.free(p).unwrap();
    let q = a.allocate(44 * MIB, s).unwrap();
    assert_eq!(a.block_size(q), Some(44 * MIB));
    let st = a.stats();
    assert_eq!(st.num_alloc_retries, 1);
    assert_eq!(st.num_device_free, 1);
    assert_eq!(st.num_ooms, 0);
    assert_eq!(st.reserved_bytes.current, 44 * MIB);
}

#[test]
fn rung3_pressure_handlers_run_without_the_lock_and_their_memory_is_used() {
    let (b, a, s) = setup();
    let held = a.allocate(40 * MIB, s).unwrap();
    let asked = Arc::new(AtomicU64::new(0));
    let (a2, asked2, b2) = (a.clone(), asked.clone(), b.clone());
    let id = a.add_pressure_handler(Box::new(move |need| {
        asked2.store(need, Ordering::SeqCst);
        // A handler may call the backend and free allocator memory: no lock is held.
        let _ = b2.mem_info().unwrap();
        a2.free(held).map(|_| 40 * MIB).unwrap_or(0)
    }));
    let q = a.allocate(44 * MIB, s).unwrap();
    assert_eq!(asked.load(Ordering::SeqCst), 44 * MIB);
    assert_eq!(a.block_size(q), Some(44 * MIB));
    let st = a.stats();
    assert_eq!(st.num_pressure_calls, 1);
    assert_eq!(st.num_alloc_retries, 2);
    assert_eq!(st.num_ooms, 0);
    assert!(a.remove_pressure_handler(id));
    assert!(!a.remove_pressure_handler(id));
}

#[test]
fn rung4_failure_reports_requested_allocated_reserved_free_limit_and_fragmentation() {
    let (_b, a, s) = setup();
    let _held = a.allocate(40 * MIB, s).unwrap();
    // A handler that frees nothing does not help.
    a.add_pressure_handler(Box::new(|_| 0));
    let small = a.allocate(600 << 10, s).unwrap();
    let _small2 = a.allocate(600 << 10, s).unwrap();
    a.free(small).unwrap();
    let e = a.allocate(20 * MIB, s).unwrap_err();
    match &e {
        Error::AllocatorOutOfMemory {
            requested,
            allocated,
            reserved,
            device_free,
            limit,
            fragmented,
        } => {
            assert_eq!(*requested, 20 * MIB);
            assert_eq!(*allocated, 40 * MIB + (600 << 10));
            assert_eq!(*reserved, 42 * MIB);
            assert_eq!(*device_free, 6 * MIB);
            assert_eq!(*limit, None);
            assert_eq!(*fragmented, 2 * MIB - (600 << 10));
        }
        other => panic!("{other:?}"),
    }
    assert!(e.is_out_of_memory());
    let msg = e.to_string();
    assert!(
        msg.contains("20971520") && msg.contains("limit none"),
        "{msg}"
    );
    assert_eq!(a.stats().num_ooms, 1);
    // The allocator still works after an OOM.
    let p = a.allocate(MIB, s).unwrap();
    a.free(p).unwrap();
    assert!(matches!(a.free(DevicePtr(1)), Err(Error::NotFound { .. })));
}

#[test]
fn a_handler_that_allocates_and_runs_short_does_not_recurse() {
    let (_b, a, s) = setup();
    let _held = a.allocate(40 * MIB, s).unwrap();
    let a2 = a.clone();
    let calls = Arc::new(AtomicU64::new(0));
    let calls2 = calls.clone();
    a.add_pressure_handler(Box::new(move |_| {
        calls2.fetch_add(1, Ordering::SeqCst);
        assert!(a2.allocate(30 * MIB, s).is_err());
        0
    }));
    assert!(a.allocate(30 * MIB, s).is_err());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(a.stats().num_ooms, 2);
}

/// Blocks of the request's size class that are too small, more of them than the bounded
/// best-fit scan looks at, ahead of the one that fits: the fitting block is still found (the
/// device has no room for a new segment).
#[test]
fn a_fitting_cached_block_behind_many_smaller_ones_of_its_class_is_found() {
    let b: SharedBackend = Arc::new(SimBackend::with_capacity(3 * MIB));
    let s = b.stream_create().unwrap();
    let a = CachingAllocator::new(b.clone(), AllocatorConfig::default()).unwrap();
    let fit = a.allocate(9728, s).unwrap();
    let mut seps = vec![a.allocate(512, s).unwrap()];
    let mut small = Vec::new();
    for _ in 0..17 {
        small.push(a.allocate(9216, s).unwrap());
        seps.push(a.allocate(512, s).unwrap());
    }
    let used = 9728 + 512 + 17 * (9216 + 512);
    let _rest = a.allocate(MIB, s).unwrap();
    let _rest2 = a.allocate(MIB - used, s).unwrap();
    assert_eq!(a.stats().segment.current, 1);
    a.free(fit).unwrap();
    for p in small {
        a.free(p).unwrap();
    }
    // The last freed is first in its list: the 17 small blocks come before the fitting one.
    let before = a.stats();
    let q = a.allocate(9728, s).unwrap();
    assert_eq!(q, fit);
    let st = a.stats();
    assert_eq!(st.cache_hits, before.cache_hits + 1);
    assert_eq!((st.num_alloc_retries, st.num_ooms), (0, 0));
}

/// Handlers after the one that freed enough are not called, nor counted.
#[test]
fn pressure_calls_count_the_handlers_called() {
    let (_b, a, s) = setup();
    let held = a.allocate(40 * MIB, s).unwrap();
    let a2 = a.clone();
    let second = Arc::new(AtomicU64::new(0));
    let second2 = second.clone();
    a.add_pressure_handler(Box::new(move |_| {
        a2.free(held).map(|_| 40 * MIB).unwrap_or(0)
    }));
    a.add_pressure_handler(Box::new(move |_| {
        second2.fetch_add(1, Ordering::SeqCst);
        0
    }));
    let _q = a.allocate(40 * MIB, s).unwrap();
    assert_eq!(second.load(Ordering::SeqCst), 0);
    assert_eq!(a.stats().num_pressure_calls, 1);
}
