//! Cross-stream correctness on the simulated device with its stream-ordering checker on: many
//! threads and streams through one allocator report no race, and the same reuse without the
//! event wait is reported.

mod common;

use std::sync::Arc;

use rand::{rngs::SmallRng, Rng, SeedableRng};
use vramswap::alloc::{AllocatorConfig, CachingAllocator, LargeBlocks};
use vramswap::backend::{sim::SimBackend, SharedBackend};

const MIB: u64 = 1 << 20;

#[test]
fn naive_cross_stream_reuse_without_an_event_wait_is_reported_as_a_race() {
    let sb = Arc::new(SimBackend::with_capacity(64 * MIB));
    let b: SharedBackend = sb.clone();
    let (s1, s2) = (b.stream_create().unwrap(), b.stream_create().unwrap());
    // What a naive cache does: the block freed after work on s1 is handed straight to s2.
    let block = b.alloc(MIB).unwrap();
    b.memset_d8_async(block, 1, MIB, s1).unwrap();
    b.memset_d8_async(block, 2, MIB, s2).unwrap();
    b.synchronize().unwrap();
    assert!(!sb.device().violations().is_empty());
    b.free(block).unwrap();
}

fn stress(config: AllocatorConfig, seed: u64) {
    let sb = Arc::new(SimBackend::with_capacity(256 * MIB));
    let b: SharedBackend = sb.clone();
    let alloc = Arc::new(CachingAllocator::new(b.clone(), config).unwrap());
    let streams: Vec<_> = (0..4).map(|_| b.stream_create().unwrap()).collect();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (alloc, b, streams) = (alloc.clone(), b.clone(), streams.clone());
            std::thread::spawn(move || {
                let mut rng = SmallRng::seed_from_u64(seed + t as u64);
                let mine = streams[t];
                let mut live = Vec::new();
                let ev = b.event_create(false).unwrap();
                for _ in 0..250 {
                    if live.len() < 6 && rng.random_bool(0.6) {
                        let size = match rng.random_range(0..3) {
                            0 => rng.random_range(1..64 << 10),
                            1 => rng.random_range(64 << 10..MIB),
                            _ => rng.random_range(MIB..6 * MIB),
                        };
                        let p = alloc.allocate(size, mine).unwrap();
                        b.memset_d8_async(p, t as u8, size, mine).unwrap();
                        if rng.random_bool(0.3) {
                            // Use it on another stream too, ordered after the write, as a
                            // correct user does, and tell the allocator.
                            let other = streams[(t + 1 + rng.random_range(0..3)) % 4];
                            b.event_record(ev, mine).unwrap();
                            b.stream_wait_event(other, ev).unwrap();
                            b.memset_d8_async(p, 0xAA, size.min(4096), other).unwrap();
                            alloc.record_stream(p, other).unwrap();
                        }
                        live.push(p);
                    } else if !live.is_empty() {
                        let i = rng.random_range(0..live.len());
                        alloc.free(live.swap_remove(i)).unwrap();
                    }
                    if rng.random_bool(0.01) {
                        alloc.empty_cache().unwrap();
                    }
                }
                for p in live {
                    alloc.free(p).unwrap();
                }
                b.stream_synchronize(mine).unwrap();
                b.event_destroy(ev).unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    b.synchronize().unwrap();
    let st = alloc.stats();
    assert!(
        st.cross_stream_reuses > 0,
        "the test must exercise cross-stream reuse: {st:?}"
    );
    assert_eq!(st.allocated_bytes.current, 0);
    let v = sb.device().violations();
    assert!(
        v.is_empty(),
        "{} violations, first: {}",
        v.len(),
        v[0].message
    );
    drop(alloc);
    for s in streams {
        b.stream_destroy(s).unwrap();
    }
    common::assert_no_leaks(sb.device(), "allocator");
}

#[test]
fn many_threads_and_streams_share_one_allocator_without_a_race() {
    // The default: expandable segments that take pages back across streams.
    stress(AllocatorConfig::default(), 1);
}

#[test]
fn fixed_segments_under_many_threads_and_streams_without_a_race() {
    stress(
        AllocatorConfig {
            large_blocks: LargeBlocks::Fixed,
            ..Default::default()
        },
        50,
    );
}

/// A segment about to grow takes back another stream's free pages instead of adding to them,
/// and waits for the work queued on them before the free: reserved memory stays at one
/// stream's worth, and the stream-ordering checker sees no race.
#[test]
fn growth_on_one_stream_takes_back_the_free_pages_of_another_without_a_race() {
    let sb = Arc::new(SimBackend::with_capacity(256 * MIB));
    let b: SharedBackend = sb.clone();
    let (s1, s2) = (b.stream_create().unwrap(), b.stream_create().unwrap());
    let a = CachingAllocator::new(b.clone(), AllocatorConfig::default()).unwrap();
    // On s1: two 20 MiB blocks with a live 2 MiB block between them, then both freed: 40 MiB
    // free on s1, but no free block of 40 MiB.
    let x = a.allocate(20 * MIB, s1).unwrap();
    let keep = a.allocate(2 * MIB, s1).unwrap();
    let y = a.allocate(20 * MIB, s1).unwrap();
    for p in [x, y] {
        b.memset_d8_async(p, 1, 20 * MIB, s1).unwrap(); // still queued at the free
        a.free(p).unwrap();
    }
    assert_eq!(a.stats().reserved_bytes.current, 42 * MIB);
    let q = a.allocate(40 * MIB, s2).unwrap();
    b.memset_d8_async(q, 2, 40 * MIB, s2).unwrap();
    let st = a.stats();
    assert_eq!(st.num_unmaps, 20, "s1's 20 free pages were taken back");
    assert_eq!(
        st.reserved_bytes.peak,
        42 * MIB,
        "new pages replaced them: {st:?}"
    );
    a.free(keep).unwrap();
    b.synchronize().unwrap();
    assert!(
        sb.device().violations().is_empty(),
        "{:?}",
        sb.device().violations()
    );
    a.free(q).unwrap();
    a.empty_cache().unwrap();
    drop(a);
    for s in [s1, s2] {
        b.stream_destroy(s).unwrap();
    }
    common::assert_no_leaks(sb.device(), "growth across streams");
}

#[test]
fn expandable_segments_under_many_threads_and_streams_without_a_race() {
    stress(
        AllocatorConfig {
            large_blocks: LargeBlocks::Expandable,
            ..Default::default()
        },
        100,
    );
}

#[test]
fn using_a_block_on_another_stream_without_record_stream_is_reported_as_a_race() {
    let sb = Arc::new(SimBackend::with_capacity(64 * MIB));
    let b: SharedBackend = sb.clone();
    let (s1, s2) = (b.stream_create().unwrap(), b.stream_create().unwrap());
    let a = CachingAllocator::new(b.clone(), AllocatorConfig::default()).unwrap();
    let p = a.allocate(MIB, s1).unwrap();
    b.memset_d8_async(p, 1, MIB, s1).unwrap();
    let ev = b.event_create(false).unwrap();
    b.event_record(ev, s1).unwrap();
    b.stream_wait_event(s2, ev).unwrap();
    b.memset_d8_async(p, 2, MIB, s2).unwrap();
    // The user forgets `record_stream(p, s2)`: the block is reused on s1 at once.
    a.free(p).unwrap();
    let q = a.allocate(MIB, s1).unwrap();
    assert_eq!(q, p);
    b.memset_d8_async(q, 3, MIB, s1).unwrap();
    b.synchronize().unwrap();
    assert!(!sb.device().violations().is_empty());
    a.free(q).unwrap();
    b.event_destroy(ev).unwrap();
}

/// A block freed on a stream that was then destroyed is reused only after a device
/// synchronisation, which waits for the destroyed stream's remaining work.
#[test]
fn blocks_freed_on_a_destroyed_stream_are_reused_after_a_device_sync() {
    let b: SharedBackend = Arc::new(SimBackend::with_capacity(64 * MIB));
    let (s1, s2) = (b.stream_create().unwrap(), b.stream_create().unwrap());
    let a = CachingAllocator::new(b.clone(), AllocatorConfig::default()).unwrap();
    let p = a.allocate(MIB, s1).unwrap();
    b.memset_d8_async(p, 1, MIB, s1).unwrap();
    a.free(p).unwrap();
    b.stream_destroy(s1).unwrap();
    let q = a.allocate(MIB, s2).unwrap();
    assert_eq!(q, p);
    assert_eq!(a.stats().num_sync_all_streams, 1);
    b.memset_d8_async(q, 2, MIB, s2).unwrap();
    let mut back = vec![0u8; MIB as usize];
    vramswap::backend::download(b.as_ref(), &mut back, q, s2).unwrap();
    assert!(back.iter().all(|&x| x == 2));
    let v = b.sim_device().unwrap().violations();
    assert!(v.is_empty(), "{v:?}");
    a.free(q).unwrap();
    b.stream_destroy(s2).unwrap();
}
