//! Property tests over random operation sequences on several streams, under fixed segments,
//! expandable segments and the page pool: live blocks never overlap, every byte of a live
//! block can be written (it is mapped), the statistics equal what a simple model computes,
//! the device holds exactly the reserved bytes (no page is created or mapped twice unseen),
//! and everything returns to the backend after `empty_cache`.

use std::sync::Arc;

use proptest::prelude::*;
use vramswap::alloc::MemoryLimit;
use vramswap::alloc::{round_size, AllocatorConfig, CachingAllocator, LargeBlocks};
use vramswap::backend::{sim::SimBackend, DevicePtr, SharedBackend};
use vramswap::Error;

const MIB: u64 = 1 << 20;

#[derive(Debug, Clone)]
enum Op {
    Alloc { size: u64, stream: usize },
    Free(usize),
    RecordStream(usize, usize),
    EmptyCache,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (prop_oneof![1u64..4096, 4096u64..MIB, MIB..24 * MIB], 0usize..3)
            .prop_map(|(size, stream)| Op::Alloc { size, stream }),
        4 => any::<usize>().prop_map(Op::Free),
        1 => (any::<usize>(), 0usize..3).prop_map(|(i, s)| Op::RecordStream(i, s)),
        1 => Just(Op::EmptyCache),
    ]
}

/// How large blocks are held.
#[derive(Debug, Clone, Copy)]
enum Mode {
    Fixed,
    Expandable,
    PagePool,
}

fn mode() -> impl Strategy<Value = Mode> {
    prop_oneof![
        Just(Mode::Fixed),
        Just(Mode::Expandable),
        Just(Mode::PagePool)
    ]
}

fn config(mode: Mode) -> AllocatorConfig {
    AllocatorConfig {
        large_blocks: match mode {
            Mode::Fixed => LargeBlocks::Fixed,
            Mode::Expandable => LargeBlocks::Expandable,
            Mode::PagePool => LargeBlocks::PagePool,
        },
        ..Default::default()
    }
}

fn run(ops: Vec<Op>, mode: Mode) -> Result<(), TestCaseError> {
    let config = config(mode);
    run_on(ops, 512 * MIB, config)
}

/// Runs `ops` on a device of `capacity` bytes. Where the device or the limit is too small for
/// every request, an allocation may fail, with out-of-memory only.
fn run_on(ops: Vec<Op>, capacity: u64, config: AllocatorConfig) -> Result<(), TestCaseError> {
    let sb = Arc::new(SimBackend::with_capacity(capacity));
    let b: SharedBackend = sb.clone();
    let streams: Vec<_> = (0..3).map(|_| b.stream_create().unwrap()).collect();
    let a = CachingAllocator::new(b.clone(), config).unwrap();
    // The model: live blocks (address, rounded size, requested size).
    let mut live: Vec<(DevicePtr, u64, u64)> = Vec::new();
    for op in ops {
        match op {
            Op::Alloc { size, stream } => {
                let p = match a.allocate(size, streams[stream]) {
                    Ok(p) => p,
                    Err(e @ Error::AllocatorOutOfMemory { .. }) if capacity < 512 * MIB => {
                        prop_assert!(e.is_out_of_memory());
                        continue;
                    }
                    Err(e) => return Err(TestCaseError::fail(format!("{e}"))),
                };
                let bs = a.block_size(p).unwrap();
                prop_assert!(bs >= round_size(size, 0).unwrap());
                // Every byte is mapped: the device refuses writes to unmapped addresses.
                b.memset_d8_async(p, 0xA5, bs, streams[stream]).unwrap();
                for &(q, qs, _) in &live {
                    prop_assert!(p.0 + bs <= q.0 || q.0 + qs <= p.0, "overlap {p:?} {q:?}");
                }
                live.push((p, bs, size));
            }
            Op::Free(i) if !live.is_empty() => {
                let (p, _, _) = live.swap_remove(i % live.len());
                a.free(p).unwrap();
            }
            Op::RecordStream(i, s) if !live.is_empty() => {
                a.record_stream(live[i % live.len()].0, streams[s]).unwrap();
            }
            Op::EmptyCache => a.empty_cache().unwrap(),
            _ => {}
        }
        check(&a, &sb, &live, capacity < 512 * MIB)?;
    }
    for (p, _, _) in live.drain(..) {
        a.free(p).unwrap();
    }
    a.empty_cache().unwrap();
    let st = a.stats();
    prop_assert_eq!(st.reserved_bytes.current, 0);
    prop_assert_eq!(st.segment.current, 0);
    prop_assert_eq!(st.active.current, 0);
    prop_assert_eq!(sb.device().leaks().device_bytes, 0);
    prop_assert!(sb.device().violations().is_empty());
    drop(a);
    for s in streams {
        b.stream_destroy(s).unwrap();
    }
    prop_assert!(sb.device().leaks().is_clean(), "{:?}", sb.device().leaks());
    Ok(())
}

/// The statistics equal the model's, and the reserved bytes what the device and the snapshot
/// hold. `tight`: requests may have missed the cache, then been served from it after a
/// release, or failed.
fn check(
    a: &CachingAllocator,
    sb: &SimBackend,
    live: &[(DevicePtr, u64, u64)],
    tight: bool,
) -> Result<(), TestCaseError> {
    {
        let st = a.stats();
        prop_assert_eq!(
            st.allocated_bytes.current,
            live.iter().map(|l| l.1).sum::<u64>()
        );
        prop_assert_eq!(
            st.requested_bytes.current,
            live.iter().map(|l| l.2).sum::<u64>()
        );
        prop_assert_eq!(st.allocation.current, live.len() as u64);
        prop_assert!(st.active.current >= st.allocation.current);
        prop_assert!(st.reserved_bytes.current >= st.active_bytes.current);
        prop_assert!(st.active_bytes.current >= st.allocated_bytes.current);
        if tight {
            prop_assert!(st.cache_hits + st.cache_misses >= st.allocation.allocated);
        } else {
            prop_assert_eq!(st.cache_hits + st.cache_misses, st.allocation.allocated);
        }
        prop_assert_eq!(st.reserved_bytes.current, sb.device().leaks().device_bytes);
        let snap = a.snapshot();
        let held: u64 = snap.segments.iter().map(|s| s.total_size).sum();
        prop_assert_eq!(held + snap.pooled_page_bytes, st.reserved_bytes.current);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn random_ops_keep_blocks_disjoint_stats_exact_and_return_everything(
        ops in proptest::collection::vec(op(), 1..80)
    ) {
        run(ops, Mode::Fixed)?;
    }

    #[test]
    fn random_ops_on_expandable_segments_do_the_same(
        ops in proptest::collection::vec(op(), 1..80)
    ) {
        run(ops, Mode::Expandable)?;
    }

    #[test]
    fn random_ops_on_the_page_pool_do_the_same(
        ops in proptest::collection::vec(op(), 1..80)
    ) {
        run(ops, Mode::PagePool)?;
    }

    #[test]
    fn random_ops_on_a_small_device_under_a_limit_fail_only_with_out_of_memory(
        ops in proptest::collection::vec(op(), 1..120),
        mode in mode(),
        limit in prop_oneof![Just(MemoryLimit::None), (16u64..64).prop_map(|m| MemoryLimit::Bytes(m * MIB))],
        max_split in prop_oneof![Just(u64::MAX), Just(8 * MIB), Just(20 * MIB)],
    ) {
        let config = AllocatorConfig {
            limit,
            max_split_size: max_split,
            ..config(mode)
        };
        run_on(ops, 64 * MIB, config)?;
    }
}
