//! Backend failures while mapping and unmapping pages of expandable segments: the bookkeeping
//! says exactly what is mapped and reserved afterwards, and a later release returns it all.

use std::sync::Arc;

use super::{FREE_RESERVATION_FAILS, UNMAP_FAILS_AFTER};
use crate::alloc::{AllocatorConfig, CachingAllocator, LargeBlocks};
use crate::backend::{sim::SimBackend, Backend, Stream};

const MIB: u64 = 1 << 20;

fn setup() -> (Arc<SimBackend>, CachingAllocator) {
    let backend = Arc::new(SimBackend::with_capacity(64 * MIB));
    let config = AllocatorConfig {
        large_blocks: LargeBlocks::Expandable,
        ..Default::default()
    };
    let alloc = CachingAllocator::new(backend.clone(), config).unwrap();
    (backend, alloc)
}

/// The allocator's reserved bytes, its pool, and the device agree.
fn assert_exact(backend: &SimBackend, alloc: &CachingAllocator, other: u64) {
    alloc.lock().pool.check().unwrap();
    assert_eq!(
        alloc.stats().reserved_bytes.current + other,
        backend.device().leaks().device_bytes
    );
    let mapped: u64 = {
        let st = alloc.lock();
        let segs: Vec<u32> = st.pool.segments().map(|(i, _)| i).collect();
        segs.iter()
            .flat_map(|&s| st.pool.mapped_ranges(s))
            .map(|(_, n)| n)
            .sum()
    };
    assert_eq!(mapped, alloc.stats().reserved_bytes.current);
}

fn unmapped_bytes(alloc: &CachingAllocator) -> u64 {
    alloc.snapshot().segments[0]
        .blocks
        .iter()
        .filter(|b| b.state == "unmapped")
        .map(|b| b.size)
        .sum()
}

#[test]
fn an_unmap_failing_partway_marks_only_the_pages_unmapped() {
    let (backend, alloc) = setup();
    let s = Stream::default();
    let _x = alloc.allocate(4 * MIB, s).unwrap();
    let y = alloc.allocate(8 * MIB, s).unwrap();
    let _z = alloc.allocate(2 * MIB, s).unwrap();
    alloc.free(y).unwrap();
    UNMAP_FAILS_AFTER.set(Some(2));
    alloc.empty_cache().unwrap_err();
    assert_eq!(alloc.stats().reserved_bytes.current, 10 * MIB);
    assert_eq!(unmapped_bytes(&alloc), 4 * MIB);
    assert_exact(&backend, &alloc, 0);
    // The rest goes at the next release, and the two holes are one again.
    alloc.empty_cache().unwrap();
    assert_eq!(alloc.stats().reserved_bytes.current, 6 * MIB);
    assert_eq!(unmapped_bytes(&alloc), 8 * MIB);
    assert_exact(&backend, &alloc, 0);
    assert_eq!(
        alloc.allocate(8 * MIB, s).unwrap(),
        y,
        "the hole serves 8 MiB"
    );
    assert_exact(&backend, &alloc, 0);
}

#[test]
fn a_reservation_that_cannot_be_freed_stays_and_is_freed_later() {
    let (backend, alloc) = setup();
    let s = Stream::default();
    let x = alloc.allocate(4 * MIB, s).unwrap();
    alloc.free(x).unwrap();
    FREE_RESERVATION_FAILS.set(true);
    alloc.empty_cache().unwrap_err();
    let st = alloc.stats();
    assert_eq!((st.reserved_bytes.current, st.segment.current), (0, 1));
    assert_exact(&backend, &alloc, 0);
    assert_eq!(backend.device().leaks().reservations, 1);
    // The kept range serves again, as one hole.
    assert_eq!(alloc.allocate(4 * MIB, s).unwrap(), x);
    assert_exact(&backend, &alloc, 0);
    alloc.free(x).unwrap();
    alloc.empty_cache().unwrap();
    assert_eq!(alloc.stats().segment.current, 0);
    drop(alloc);
    assert!(backend.device().leaks().is_clean());
}

#[test]
fn pages_that_cannot_be_unmapped_after_a_failed_mapping_are_kept_and_counted() {
    let (backend, alloc) = setup();
    let s = Stream::default();
    let other = backend.alloc(58 * MIB).unwrap();
    // 6 MiB free: three pages of the 10 MiB map, the fourth fails; undoing, the second of
    // the three unmaps fails, so two pages stay mapped.
    UNMAP_FAILS_AFTER.set(Some(1));
    let e = alloc.allocate(10 * MIB, s).unwrap_err();
    assert!(!e.is_out_of_memory(), "the unmap's error: {e}");
    let st = alloc.stats();
    assert_eq!(
        (st.reserved_bytes.current, st.segment.current),
        (4 * MIB, 1)
    );
    assert_exact(&backend, &alloc, 58 * MIB);
    backend.free(other).unwrap();
    // The kept pages serve, as cached memory.
    let p = alloc.allocate(4 * MIB, s).unwrap();
    assert_eq!(alloc.stats().reserved_bytes.current, 4 * MIB);
    alloc.free(p).unwrap();
    alloc.empty_cache().unwrap();
    let st = alloc.stats();
    assert_eq!((st.reserved_bytes.current, st.segment.current), (0, 0));
    drop(alloc);
    assert!(backend.device().leaks().is_clean());
}

#[test]
fn a_page_mapped_whose_handle_cannot_be_released_is_counted_and_unmapped_later() {
    use vramswap_sim::FaultOp;
    let (backend, alloc) = setup();
    let s = Stream::DEFAULT;
    let a = alloc.allocate(4 * MIB, s).unwrap();
    // The next page's handle is not released after mapping it: the page is mapped all the same
    // and must be counted (it was left mapped and untracked, and every later growth of the
    // range then failed with an overlapping mapping).
    backend.device().inject_fault(FaultOp::PhysRelease, 1);
    let b = alloc.allocate(4 * MIB, s).unwrap();
    assert_exact(&backend, &alloc, 0);
    let c = alloc.allocate(4 * MIB, s).unwrap();
    assert_exact(&backend, &alloc, 0);
    for p in [a, b, c] {
        alloc.free(p).unwrap();
    }
    alloc.empty_cache().unwrap();
    assert_eq!(alloc.stats().reserved_bytes.current, 0);
}

#[test]
fn an_unmap_failing_while_pages_are_taken_back_leaves_the_allocation_served_and_exact() {
    let (backend, alloc) = setup();
    let (s1, s2) = (
        backend.stream_create().unwrap(),
        backend.stream_create().unwrap(),
    );
    // 20 MiB free on s1 in two pieces around a live block: no block for 20 MiB on s2.
    let x = alloc.allocate(10 * MIB, s1).unwrap();
    let keep = alloc.allocate(2 * MIB, s1).unwrap();
    let y = alloc.allocate(10 * MIB, s1).unwrap();
    alloc.free(x).unwrap();
    alloc.free(y).unwrap();
    // Taking s1's pages back fails after three pages: the growth goes on regardless.
    UNMAP_FAILS_AFTER.set(Some(3));
    let q = alloc.allocate(20 * MIB, s2).unwrap();
    UNMAP_FAILS_AFTER.set(None);
    assert_eq!(alloc.stats().num_unmaps, 3);
    assert_eq!(alloc.stats().reserved_bytes.current, (22 + 20 - 6) * MIB);
    assert_exact(&backend, &alloc, 0);
    for p in [q, keep] {
        alloc.free(p).unwrap();
    }
    alloc.empty_cache().unwrap();
    assert_eq!(alloc.stats().reserved_bytes.current, 0);
    assert_exact(&backend, &alloc, 0);
    for s in [s1, s2] {
        backend.stream_destroy(s).unwrap();
    }
}
