//! Expandable segments: `max_split_size` does not refuse expandable blocks, and snapshots
//! count mapped bytes only. From a review; each test failed before its fix.

use std::sync::Arc;

use vramswap::alloc::{AllocatorConfig, CachingAllocator, MemoryLimit};
use vramswap::backend::{sim::SimBackend, SharedBackend};

const MIB: u64 = 1 << 20;

fn sim(capacity: u64) -> (SharedBackend, Arc<SimBackend>) {
    let sb = Arc::new(SimBackend::with_capacity(capacity));
    (sb.clone(), sb)
}

fn expandable(b: &SharedBackend, limit: MemoryLimit) -> CachingAllocator {
    CachingAllocator::new(
        b.clone(),
        AllocatorConfig {
            expandable_segments: true,
            limit,
            ..Default::default()
        },
    )
    .unwrap()
}

/// With `max_split_size`, a free block of an expandable segment larger than the bound serves
/// a small request from the cache (it is split, as `take` splits expandable blocks), without
/// releasing the cache or mapping anything.
#[test]
fn max_split_size_does_not_refuse_a_free_expandable_block() {
    let (b, _sb) = sim(256 * MIB);
    let s = b.stream_create().unwrap();
    let a = CachingAllocator::new(
        b.clone(),
        AllocatorConfig {
            expandable_segments: true,
            max_split_size: 32 * MIB,
            limit: MemoryLimit::Bytes(44 * MIB),
            ..Default::default()
        },
    )
    .unwrap();
    let x = a.allocate(40 * MIB, s).unwrap();
    let _y = a.allocate(2 * MIB, s).unwrap();
    a.free(x).unwrap();
    let before = a.stats();
    let r = a.allocate(4 * MIB, s).unwrap();
    assert_eq!(r, x);
    let st = a.stats();
    assert_eq!(st.cache_hits, before.cache_hits + 1);
    assert_eq!(st.num_alloc_retries, 0);
    assert_eq!(st.num_device_alloc, before.num_device_alloc);
    assert_eq!(st.reserved_bytes.current, 42 * MIB);
}

#[test]
fn a_snapshot_counts_mapped_bytes_only() {
    let (b, _sb) = sim(256 * MIB);
    let s = b.stream_create().unwrap();
    let a = expandable(&b, MemoryLimit::None);
    let _x = a.allocate(4 * MIB, s).unwrap();
    let y = a.allocate(8 * MIB, s).unwrap();
    let _z = a.allocate(2 * MIB, s).unwrap();
    a.free(y).unwrap();
    a.empty_cache().unwrap();
    let snap = a.snapshot();
    let seg = &snap.segments[0];
    assert_eq!(seg.active_size, snap.stats.active_bytes.current);
    assert_eq!(seg.active_size, 6 * MIB);
    assert_eq!(seg.total_size, snap.stats.reserved_bytes.current);
    assert_eq!(seg.total_size, 6 * MIB);
}
