//! The caching allocator's rules, one behaviour per test, on the `sim` backend.

mod common;

use std::sync::Arc;

use vramswap::alloc::{
    AllocatorConfig, CachingAllocator, HistoryEvent, LargeBlocks, MemoryLimit, TraceOp,
};
use vramswap::backend::{sim::SimBackend, DevicePtr, SharedBackend};
use vramswap::{Error, Stream};

const MIB: u64 = 1 << 20;

fn sim(capacity: u64) -> (SharedBackend, Arc<SimBackend>) {
    let b = Arc::new(SimBackend::with_capacity(capacity));
    (b.clone(), b)
}

/// PyTorch's fixed segments, whose sizing rules (20 MiB segments, max_split_size) these tests
/// pin down; the default where the device has the virtual-memory API is expandable segments.
fn fixed() -> AllocatorConfig {
    AllocatorConfig {
        large_blocks: LargeBlocks::Fixed,
        ..AllocatorConfig::default()
    }
}

fn alloc_with(b: &SharedBackend, config: AllocatorConfig) -> CachingAllocator {
    CachingAllocator::new(b.clone(), config).unwrap()
}

#[test]
fn requests_are_rounded_to_512_bytes() {
    let (b, _) = sim(256 * MIB);
    let s = b.stream_create().unwrap();
    let a = alloc_with(&b, AllocatorConfig::default());
    let p = a.allocate(1, s).unwrap();
    assert_eq!(a.block_size(p), Some(512));
    let q = a.allocate(513, s).unwrap();
    assert_eq!(a.block_size(q), Some(1024));
    assert_eq!(a.stats().requested_bytes.current, 514);
    assert_eq!(a.stats().allocated_bytes.current, 1536);
}

#[test]
fn small_requests_share_one_2mib_segment() {
    let (b, _) = sim(256 * MIB);
    let s = b.stream_create().unwrap();
    let a = alloc_with(&b, AllocatorConfig::default());
    let ps: Vec<_> = (0..8).map(|_| a.allocate(100 << 10, s).unwrap()).collect();
    let st = a.stats();
    assert_eq!(st.segment.current, 1);
    assert_eq!(st.reserved_bytes.current, 2 * MIB);
    assert_eq!(st.num_device_alloc, 1);
    for w in ps.windows(2) {
        assert_ne!(w[0], w[1]);
    }
}

#[test]
fn large_requests_get_20mib_or_their_own_rounded_segment() {
    let (b, _) = sim(256 * MIB);
    let s = b.stream_create().unwrap();
    let a = alloc_with(&b, fixed());
    a.allocate(11 * MIB + 1, s).unwrap();
    assert_eq!(a.stats().reserved_bytes.current, 12 * MIB);
    a.allocate(3 * MIB, s).unwrap();
    assert_eq!(a.stats().reserved_bytes.current, 32 * MIB);
}

#[test]
fn freed_block_is_reused_on_same_stream_without_sync() {
    let (b, _) = sim(256 * MIB);
    let s = b.stream_create().unwrap();
    let a = alloc_with(&b, AllocatorConfig::default());
    let p = a.allocate(4096, s).unwrap();
    a.free(p).unwrap();
    let q = a.allocate(4096, s).unwrap();
    assert_eq!(p, q);
    let st = a.stats();
    assert_eq!((st.cache_hits, st.cache_misses), (1, 1));
    assert_eq!(st.num_sync_all_streams, 0);
    assert_eq!(st.cross_stream_reuses, 0);
}

#[test]
fn split_blocks_coalesce_when_freed() {
    let (b, _) = sim(256 * MIB);
    let s = b.stream_create().unwrap();
    let a = alloc_with(&b, AllocatorConfig::default());
    let x = a.allocate(4096, s).unwrap();
    let y = a.allocate(4096, s).unwrap();
    assert_eq!(a.stats().inactive_split.current, 1);
    a.free(x).unwrap();
    a.free(y).unwrap();
    let snap = a.snapshot();
    assert_eq!(snap.segments.len(), 1);
    assert_eq!(snap.segments[0].blocks.len(), 1, "{}", snap.to_json());
    assert_eq!(a.stats().inactive_split.current, 0);
}

#[test]
fn max_split_size_keeps_big_blocks_whole_and_away_from_small_requests() {
    let (b, _) = sim(512 * MIB);
    let s = b.stream_create().unwrap();
    let cfg = AllocatorConfig {
        max_split_size: 32 * MIB,
        ..fixed()
    };
    let a = alloc_with(&b, cfg);
    let big = a.allocate(40 * MIB, s).unwrap();
    a.free(big).unwrap();
    // A 4 MiB request does not carve up the cached 40 MiB block.
    let small = a.allocate(4 * MIB, s).unwrap();
    assert_ne!(small, big);
    assert_eq!(a.stats().cache_misses, 2);
    // A close oversize request takes the whole block, unsplit.
    let again = a.allocate(36 * MIB, s).unwrap();
    assert_eq!(again, big);
    assert_eq!(a.block_size(again), Some(40 * MIB));
}

#[test]
fn roundup_power2_divisions_round_large_requests_to_steps() {
    let (b, _) = sim(256 * MIB);
    let s = b.stream_create().unwrap();
    let cfg = AllocatorConfig {
        roundup_power2_divisions: 4,
        ..Default::default()
    };
    let a = alloc_with(&b, cfg);
    let p = a.allocate(5 * MIB + 1, s).unwrap();
    assert_eq!(a.block_size(p), Some(6 * MIB));
}

#[test]
fn double_free_and_unknown_pointers_are_errors_not_panics() {
    let (b, _) = sim(256 * MIB);
    let s = b.stream_create().unwrap();
    let a = alloc_with(&b, AllocatorConfig::default());
    let p = a.allocate(4096, s).unwrap();
    a.free(p).unwrap();
    assert!(matches!(a.free(p), Err(Error::InvalidState(_))));
    assert!(matches!(
        a.free(DevicePtr(12345)),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        a.record_stream(DevicePtr(12345), s),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        a.allocate(u64::MAX - 10, s),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn another_stream_reuses_a_free_block_through_an_event_wait() {
    let (b, sb) = sim(256 * MIB);
    let s1 = b.stream_create().unwrap();
    let s2 = b.stream_create().unwrap();
    let a = alloc_with(&b, AllocatorConfig::default());
    let p = a.allocate(MIB, s1).unwrap();
    b.memset_d8_async(p, 1, MIB, s1).unwrap();
    a.free(p).unwrap();
    let q = a.allocate(MIB, s2).unwrap();
    assert_eq!(p, q);
    b.memset_d8_async(q, 2, MIB, s2).unwrap();
    b.synchronize().unwrap();
    let st = a.stats();
    assert_eq!(st.cross_stream_reuses, 1);
    assert_eq!(st.num_sync_all_streams, 0);
    assert!(
        sb.device().violations().is_empty(),
        "{:?}",
        sb.device().violations()
    );
}

#[test]
fn record_stream_holds_a_block_until_the_other_stream_is_done() {
    let (b, sb) = sim(256 * MIB);
    let s1 = b.stream_create().unwrap();
    let s2 = b.stream_create().unwrap();
    let a = alloc_with(&b, AllocatorConfig::default());
    let p = a.allocate(MIB, s1).unwrap();
    // Stream 2 reads the block after stream 1 wrote it.
    b.memset_d8_async(p, 7, MIB, s1).unwrap();
    let ev = b.event_create(false).unwrap();
    b.event_record(ev, s1).unwrap();
    b.stream_wait_event(s2, ev).unwrap();
    let other = b.alloc(MIB).unwrap();
    b.copy_dtod_async(other, p, MIB, s2).unwrap();
    a.record_stream(p, s2).unwrap();
    a.free(p).unwrap();
    assert_eq!(
        a.stats().active.current,
        1,
        "pending until stream 2 is done"
    );
    b.stream_synchronize(s2).unwrap();
    let q = a.allocate(MIB, s1).unwrap();
    assert_eq!(q, p, "returned to the pool once stream 2 finished");
    b.memset_d8_async(q, 9, MIB, s1).unwrap();
    b.synchronize().unwrap();
    assert!(
        sb.device().violations().is_empty(),
        "{:?}",
        sb.device().violations()
    );
    b.free(other).unwrap();
    b.event_destroy(ev).unwrap();
}

#[test]
fn empty_cache_returns_every_unused_segment() {
    let (b, sb) = sim(256 * MIB);
    let s = b.stream_create().unwrap();
    let a = alloc_with(&b, AllocatorConfig::default());
    let keep = a.allocate(4096, s).unwrap();
    let ps: Vec<_> = [30 * MIB, 3 * MIB, 64 << 10]
        .iter()
        .map(|&n| a.allocate(n, s).unwrap())
        .collect();
    for p in ps {
        a.free(p).unwrap();
    }
    a.empty_cache().unwrap();
    let st = a.stats();
    assert_eq!(
        st.reserved_bytes.current,
        2 * MIB,
        "only the small segment in use stays"
    );
    assert_eq!(st.segment.current, 1);
    a.free(keep).unwrap();
    a.empty_cache().unwrap();
    assert_eq!(a.stats().reserved_bytes.current, 0);
    assert_eq!(sb.device().leaks().device_bytes, 0);
}

#[test]
fn dropping_the_allocator_returns_everything_to_the_backend() {
    let (b, sb) = sim(256 * MIB);
    let s = b.stream_create().unwrap();
    let s2 = b.stream_create().unwrap();
    {
        let a = alloc_with(
            &b,
            AllocatorConfig {
                large_blocks: LargeBlocks::Expandable,
                ..Default::default()
            },
        );
        let p = a.allocate(30 * MIB, s).unwrap();
        let q = a.allocate(4096, s2).unwrap();
        a.record_stream(q, s).unwrap();
        a.free(p).unwrap();
        a.free(q).unwrap();
    }
    b.stream_destroy(s).unwrap();
    b.stream_destroy(s2).unwrap();
    common::assert_no_leaks(sb.device(), "allocator");
}

#[test]
fn expandable_segments_grow_by_mapping_and_shrink_by_unmapping() {
    let (b, sb) = sim(256 * MIB);
    let s = b.stream_create().unwrap();
    let a = alloc_with(
        &b,
        AllocatorConfig {
            large_blocks: LargeBlocks::Expandable,
            ..Default::default()
        },
    );
    let free0 = b.mem_info().unwrap().free;
    let p = a.allocate(3 * MIB, s).unwrap();
    let q = a.allocate(5 * MIB, s).unwrap();
    assert_eq!(
        q,
        p.offset(4 * MIB),
        "the second block follows in the same range"
    );
    assert_eq!(a.stats().segment.current, 1);
    assert_eq!(a.stats().reserved_bytes.current, 10 * MIB);
    assert_eq!(free0 - b.mem_info().unwrap().free, 10 * MIB);
    a.free(q).unwrap();
    a.empty_cache().unwrap();
    assert_eq!(
        a.stats().reserved_bytes.current,
        4 * MIB,
        "tail pages unmapped"
    );
    assert_eq!(free0 - b.mem_info().unwrap().free, 4 * MIB);
    a.free(p).unwrap();
    a.empty_cache().unwrap();
    assert_eq!(b.mem_info().unwrap().free, free0);
    let leaks = sb.device().leaks();
    assert_eq!(
        (leaks.mappings, leaks.reservations, leaks.device_bytes),
        (0, 0, 0)
    );
}

#[test]
fn memory_limit_caps_reserved_bytes() {
    let (b, _) = sim(256 * MIB);
    let s = b.stream_create().unwrap();
    let a = alloc_with(
        &b,
        AllocatorConfig {
            limit: MemoryLimit::Bytes(24 * MIB),
            ..fixed()
        },
    );
    assert_eq!(a.limit(), Some(24 * MIB));
    let _p = a.allocate(3 * MIB, s).unwrap(); // 20 MiB segment
    match a.allocate(18 * MIB, s) {
        Err(Error::AllocatorOutOfMemory { limit, .. }) => assert_eq!(limit, Some(24 * MIB)),
        other => panic!("{other:?}"),
    }
    let f = alloc_with(
        &b,
        AllocatorConfig {
            limit: MemoryLimit::Fraction(0.25),
            ..Default::default()
        },
    );
    assert_eq!(f.limit(), Some(64 * MIB));
}

#[test]
fn poison_fills_freed_blocks_on_their_stream() {
    let (b, _) = sim(256 * MIB);
    let s = b.stream_create().unwrap();
    let a = alloc_with(
        &b,
        AllocatorConfig {
            poison: true,
            ..Default::default()
        },
    );
    let p = a.allocate(4096, s).unwrap();
    b.memset_d8_async(p, 0, 4096, s).unwrap();
    a.free(p).unwrap();
    let q = a.allocate(4096, s).unwrap();
    let mut out = vec![0u8; 8];
    vramswap::backend::download(b.as_ref(), &mut out, q, s).unwrap();
    assert_eq!(out[..4], 0xDEAD_BEEFu32.to_le_bytes());
}

#[test]
fn history_exports_a_replayable_trace() {
    let (b, _) = sim(256 * MIB);
    let s = b.stream_create().unwrap();
    let s2 = b.stream_create().unwrap();
    let a = alloc_with(
        &b,
        AllocatorConfig {
            history: 100,
            ..Default::default()
        },
    );
    let p = a.allocate(1000, s).unwrap();
    a.record_stream(p, s2).unwrap();
    a.free(p).unwrap();
    let ev = a.history();
    assert!(matches!(ev[0], HistoryEvent::SegmentAlloc { size, .. } if size == 2 * MIB));
    assert!(matches!(
        ev[1],
        HistoryEvent::Alloc {
            id: 0,
            size: 1000,
            ..
        }
    ));
    let ops = vramswap::alloc::trace::parse_trace(&a.history_trace(), "h").unwrap();
    let ops: Vec<TraceOp> = ops.into_iter().map(|(_, o)| o).collect();
    assert!(ops.contains(&TraceOp::Alloc {
        id: 0,
        size: 1000,
        stream: 0,
        addr: None,
    }));
    assert!(ops.contains(&TraceOp::RecordStream { id: 0, stream: 1 }));
    assert!(ops.contains(&TraceOp::Free { id: 0 }));
}

#[test]
fn stats_follow_pytorch_names_and_peaks_reset() {
    let (b, _) = sim(256 * MIB);
    let s = b.stream_create().unwrap();
    let a = alloc_with(&b, AllocatorConfig::default());
    let p = a.allocate(MIB, s).unwrap();
    a.free(p).unwrap();
    let st = a.stats();
    assert_eq!(st.allocated_bytes.peak, MIB);
    assert_eq!(st.allocated_bytes.current, 0);
    a.reset_peak();
    assert_eq!(a.stats().allocated_bytes.peak, 0);
    let v = serde_json::to_value(a.stats()).unwrap();
    for k in [
        "allocated_bytes",
        "reserved_bytes",
        "active_bytes",
        "inactive_split_bytes",
        "num_alloc_retries",
        "num_ooms",
        "num_device_alloc",
        "num_device_free",
    ] {
        assert!(v.get(k).is_some(), "{k}");
    }
    let snap: serde_json::Value = serde_json::from_str(&a.snapshot().to_json()).unwrap();
    assert_eq!(snap["segments"][0]["blocks"][0]["state"], "inactive");
}

#[test]
fn stream_default_is_accepted() {
    let (b, _) = sim(64 * MIB);
    let a = alloc_with(&b, AllocatorConfig::default());
    let p = a.allocate(10, Stream::DEFAULT).unwrap();
    a.free(p).unwrap();
}

#[test]
fn expandable_segments_unmap_free_holes_in_the_middle_and_map_them_again() {
    let (b, sb) = sim(256 * MIB);
    let s = b.stream_create().unwrap();
    let a = alloc_with(
        &b,
        AllocatorConfig {
            large_blocks: LargeBlocks::Expandable,
            ..Default::default()
        },
    );
    let free0 = b.mem_info().unwrap().free;
    let x = a.allocate(4 * MIB, s).unwrap();
    let y = a.allocate(8 * MIB, s).unwrap();
    let z = a.allocate(2 * MIB, s).unwrap();
    assert_eq!(a.stats().reserved_bytes.current, 14 * MIB);
    a.free(y).unwrap();
    a.empty_cache().unwrap();
    assert_eq!(
        a.stats().reserved_bytes.current,
        6 * MIB,
        "the 8 MiB hole is unmapped"
    );
    assert_eq!(free0 - b.mem_info().unwrap().free, 6 * MIB);
    let snap = a.snapshot();
    assert!(snap.segments[0]
        .blocks
        .iter()
        .any(|b| b.state == "unmapped"));
    let w = a.allocate(6 * MIB, s).unwrap();
    assert_eq!(w, y, "the hole is mapped again and reused");
    assert_eq!(
        a.stats().reserved_bytes.current,
        12 * MIB,
        "only the 6 MiB the request needs are mapped; 2 MiB of the hole stay unmapped"
    );
    let data = vec![0x42u8; 4096];
    vramswap::backend::upload(b.as_ref(), w, &data, s).unwrap();
    for p in [x, z, w] {
        a.free(p).unwrap();
    }
    a.empty_cache().unwrap();
    assert_eq!(b.mem_info().unwrap().free, free0);
    let leaks = sb.device().leaks();
    assert_eq!(
        (leaks.mappings, leaks.reservations, leaks.device_bytes),
        (0, 0, 0)
    );
}

#[test]
fn dropping_an_allocator_with_unmapped_holes_returns_everything() {
    let (b, sb) = sim(256 * MIB);
    let s = b.stream_create().unwrap();
    {
        let a = alloc_with(
            &b,
            AllocatorConfig {
                large_blocks: LargeBlocks::Expandable,
                ..Default::default()
            },
        );
        let x = a.allocate(4 * MIB, s).unwrap();
        let y = a.allocate(8 * MIB, s).unwrap();
        let z = a.allocate(2 * MIB, s).unwrap();
        a.free(y).unwrap();
        a.empty_cache().unwrap();
        a.free(x).unwrap();
        a.free(z).unwrap();
    }
    b.stream_destroy(s).unwrap();
    let leaks = sb.device().leaks();
    assert!(leaks.is_clean(), "{leaks:?}");
}
