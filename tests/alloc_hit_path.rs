//! The hit path: a cached alloc+free pair touches neither the heap nor the backend.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use vramswap::alloc::{
    transformer_trace, AllocatorConfig, CachingAllocator, TraceOp, TransformerShape,
};
use vramswap::backend::{sim::SimBackend, SharedBackend};

struct Counting;

thread_local! {
    static HEAP_CALLS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator unchanged; the counter is a const-initialised
// thread-local `Cell`, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let _ = HEAP_CALLS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        let _ = HEAP_CALLS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        let _ = HEAP_CALLS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn cached_alloc_free_pairs_touch_neither_heap_nor_backend() {
    let b: SharedBackend = Arc::new(SimBackend::with_capacity(4 << 30));
    let s = b.stream_create().unwrap();
    let a = CachingAllocator::new(b.clone(), AllocatorConfig::default()).unwrap();
    let sizes: Vec<u64> = transformer_trace(&TransformerShape::small())
        .iter()
        .filter_map(|o| match o {
            TraceOp::Alloc { size, .. } => Some(*size),
            _ => None,
        })
        .take(2000)
        .collect();
    // Warm the cache with every size at once, then free them.
    let warm: Vec<_> = sizes.iter().map(|&n| a.allocate(n, s).unwrap()).collect();
    for p in warm {
        a.free(p).unwrap();
    }
    let before = a.stats();
    let heap0 = HEAP_CALLS.with(|c| c.get());
    for &n in &sizes {
        let p = a.allocate(n, s).unwrap();
        a.free(p).unwrap();
    }
    let heap = HEAP_CALLS.with(|c| c.get()) - heap0;
    let after = a.stats();
    assert_eq!(heap, 0, "heap calls on the hit path");
    // The counter does count.
    let c0 = HEAP_CALLS.with(|c| c.get());
    drop(std::hint::black_box(vec![1u8; 64]));
    assert!(HEAP_CALLS.with(|c| c.get()) > c0);
    assert_eq!(after.num_device_alloc, before.num_device_alloc);
    assert_eq!(after.cache_hits - before.cache_hits, sizes.len() as u64);
}
