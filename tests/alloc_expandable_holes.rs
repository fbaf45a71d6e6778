//! Expandable segments with unmapped holes: a hole maps only the pages a request needs, a full
//! range gets a successor, `max_split_size` does not refuse expandable blocks, impossible sizes
//! are errors, and snapshots count mapped bytes only. From a review; each test failed before
//! its fix.

use std::sync::Arc;

use vramswap::alloc::{AllocatorConfig, CachingAllocator, LargeBlocks, MemoryLimit};
use vramswap::backend::{sim::SimBackend, DevicePtr, SharedBackend, Stream};
use vramswap::Error;

const MIB: u64 = 1 << 20;

fn sim(capacity: u64) -> (SharedBackend, Arc<SimBackend>) {
    let sb = Arc::new(SimBackend::with_capacity(capacity));
    (sb.clone(), sb)
}

fn expandable(b: &SharedBackend, limit: MemoryLimit) -> CachingAllocator {
    CachingAllocator::new(
        b.clone(),
        AllocatorConfig {
            large_blocks: LargeBlocks::Expandable,
            limit,
            ..Default::default()
        },
    )
    .unwrap()
}

/// Allocates blocks of `mib[0]`, `mib[1]` and `mib[2]` MiB on `s`, frees the middle one and
/// empties the cache: an unmapped hole between two live blocks (which stay allocated). Returns
/// the hole's address.
fn hole(a: &CachingAllocator, s: Stream, mib: [u64; 3]) -> DevicePtr {
    a.allocate(mib[0] * MIB, s).unwrap();
    let y = a.allocate(mib[1] * MIB, s).unwrap();
    a.allocate(mib[2] * MIB, s).unwrap();
    a.free(y).unwrap();
    a.empty_cache().unwrap();
    y
}

/// Reserved bytes as the device sees them: the allocator's count must agree.
fn assert_reserved_matches_device(a: &CachingAllocator, sb: &SimBackend, other: u64) {
    assert_eq!(
        a.stats().reserved_bytes.current + other,
        sb.device().leaks().device_bytes,
        "the allocator's reserved bytes are what the device holds"
    );
}

#[test]
fn a_small_request_maps_only_its_pages_of_a_hole() {
    let (b, sb) = sim(256 * MIB);
    let s = b.stream_create().unwrap();
    let a = expandable(&b, MemoryLimit::None);
    let y = hole(&a, s, [10, 40, 10]);
    assert_eq!(a.stats().reserved_bytes.current, 20 * MIB);
    let w = a.allocate(6 * MIB, s).unwrap();
    assert_eq!(w, y, "served from the start of the hole");
    assert_eq!(
        a.stats().reserved_bytes.current,
        26 * MIB,
        "6 MiB mapped, not the whole 40 MiB hole"
    );
    assert_reserved_matches_device(&a, &sb, 0);
    let snap = a.snapshot();
    let holes: u64 = snap.segments[0]
        .blocks
        .iter()
        .filter(|b| b.state == "unmapped")
        .map(|b| b.size)
        .sum();
    assert_eq!(holes, 34 * MIB);
}

/// Under a limit the hole's few pages fit where the whole hole would not; and the tail grows
/// although the range's address space (holes included) exceeds the limit.
#[test]
fn under_a_limit_a_hole_serves_a_request_with_only_the_pages_it_needs() {
    let (b, sb) = sim(256 * MIB);
    let s = b.stream_create().unwrap();
    let a = expandable(&b, MemoryLimit::Bytes(70 * MIB));
    let y = hole(&a, s, [10, 40, 10]);
    assert_eq!(a.stats().reserved_bytes.current, 20 * MIB);
    // The hole is too small: the tail grows, past 70 MiB of address space.
    let _f = a.allocate(44 * MIB, s).unwrap();
    assert_eq!(a.stats().reserved_bytes.current, 64 * MIB);
    // 2 MiB of the hole fit under the limit; all 40 MiB would not.
    let g = a.allocate(2 * MIB, s).unwrap();
    assert_eq!(g, y);
    assert_eq!(a.stats().reserved_bytes.current, 66 * MIB);
    assert_reserved_matches_device(&a, &sb, 0);
}

/// The same with the device, not a limit, being nearly full.
#[test]
fn on_a_nearly_full_device_a_hole_serves_a_request_with_only_the_pages_it_needs() {
    let (b, sb) = sim(70 * MIB);
    let s = b.stream_create().unwrap();
    let a = expandable(&b, MemoryLimit::None);
    let y = hole(&a, s, [10, 40, 10]);
    let _f = a.allocate(44 * MIB, s).unwrap();
    assert!(b.mem_info().unwrap().free < 40 * MIB);
    let g = a.allocate(2 * MIB, s).unwrap();
    assert_eq!(g, y);
    assert_reserved_matches_device(&a, &sb, 0);
}

/// Memory taken by someone else: the whole hole cannot be mapped, the pages needed can.
#[test]
fn a_hole_too_large_for_the_device_still_serves_a_small_request() {
    let (b, sb) = sim(256 * MIB);
    let s = b.stream_create().unwrap();
    let a = expandable(&b, MemoryLimit::None);
    let y = hole(&a, s, [10, 100, 10]);
    let other = b.alloc(150 * MIB).unwrap(); // e.g. the swap engine's weights
    assert!(b.mem_info().unwrap().free < 100 * MIB);
    let r = a.allocate(2 * MIB, s).unwrap();
    assert_eq!(r, y);
    assert_eq!(a.stats().reserved_bytes.current, 22 * MIB);
    assert_reserved_matches_device(&a, &sb, 150 * MIB);
    b.free(other).unwrap();
}

/// Holes take address space: 50 + 150 + 50 MiB with the 150 unmapped leave 100 MiB mapped and
/// 156 MiB free on the device, and 152 MiB must still be allocatable.
#[test]
fn holes_do_not_use_up_the_room_to_grow() {
    let (b, sb) = sim(256 * MIB);
    let s = b.stream_create().unwrap();
    let a = expandable(&b, MemoryLimit::None);
    hole(&a, s, [50, 150, 50]);
    assert_eq!(a.stats().reserved_bytes.current, 100 * MIB);
    let _w = a.allocate(152 * MIB, s).unwrap();
    assert_eq!(a.stats().reserved_bytes.current, 252 * MIB);
    assert_reserved_matches_device(&a, &sb, 0);
}

/// A range whose address space is used up by holes gets a successor. Each round leaves a
/// hole too small for the next, larger request, pinned by a 2 MiB block after it: stream `t`
/// borrows the start of a free block of `s` and `s` borrows back the 2 MiB after it, so the
/// pin does not land in an older hole.
#[test]
fn a_range_full_of_holes_gets_a_second_range() {
    let (b, sb) = sim(256 * MIB);
    let (s, t) = (b.stream_create().unwrap(), b.stream_create().unwrap());
    let a = expandable(&b, MemoryLimit::None);
    let mut pins = Vec::new();
    for i in 0..6u64 {
        let big = (100 + 6 * i) * MIB;
        let x = a.allocate(big + 4 * MIB, s).unwrap();
        a.free(x).unwrap();
        let y = a.allocate(big, t).unwrap();
        assert_eq!(y, x, "t borrows the start of s's free block");
        let pin = a.allocate(2 * MIB, s).unwrap();
        assert_eq!(pin, x.offset(big), "s borrows back the 2 MiB after it");
        pins.push(pin);
        a.free(y).unwrap();
        a.empty_cache().unwrap();
        assert_reserved_matches_device(&a, &sb, 0);
    }
    let st = a.stats();
    assert_eq!(st.segment.current, 2, "the first range (512 MiB) is full");
    assert_eq!(st.reserved_bytes.current, 12 * MIB);
    assert_eq!(st.num_ooms, 0);
    for p in pins {
        a.free(p).unwrap();
    }
    a.empty_cache().unwrap();
    let st = a.stats();
    assert_eq!((st.reserved_bytes.current, st.segment.current), (0, 0));
    let leaks = sb.device().leaks();
    assert_eq!((leaks.mappings, leaks.reservations), (0, 0));
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
            large_blocks: LargeBlocks::Expandable,
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

/// Sizes no device can hold are out-of-memory errors, not overflows (a debug panic, or in
/// release the whole device mapped page by page first).
#[test]
fn a_huge_request_with_an_expandable_segment_is_an_error() {
    let (b, sb) = sim(256 * MIB);
    let s = b.stream_create().unwrap();
    for limit in [MemoryLimit::None, MemoryLimit::Bytes(64 * MIB)] {
        let a = expandable(&b, limit);
        let _x = a.allocate(4 * MIB, s).unwrap();
        let maps = a.stats().num_device_alloc;
        for size in [u64::MAX - (4 << 20), u64::MAX / 2, 257 * MIB] {
            let e = a.allocate(size, s).unwrap_err();
            assert!(
                matches!(e, Error::AllocatorOutOfMemory { .. }),
                "{size}: {e:?}"
            );
        }
        assert_eq!(a.stats().num_device_alloc, maps, "nothing was mapped");
        assert_reserved_matches_device(&a, &sb, 0);
    }
}

#[test]
fn a_snapshot_counts_mapped_bytes_only() {
    let (b, _sb) = sim(256 * MIB);
    let s = b.stream_create().unwrap();
    let a = expandable(&b, MemoryLimit::None);
    hole(&a, s, [4, 8, 2]);
    let snap = a.snapshot();
    let seg = &snap.segments[0];
    assert_eq!(seg.active_size, snap.stats.active_bytes.current);
    assert_eq!(seg.active_size, 6 * MIB);
    assert_eq!(seg.total_size, snap.stats.reserved_bytes.current);
    assert_eq!(seg.total_size, 6 * MIB);
}
