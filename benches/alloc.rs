//! Caching allocator benchmarks, each beside a peer in the same run:
//!
//! - `hit_pair/*`: a cached alloc+free pair with sizes drawn from a transformer trace, through
//!   the caching allocator with fixed segments (`caching_allocator`), expandable segments (the
//!   default where the virtual-memory API exists) and the page pool (`page_pool`), and through the system allocator (`std::alloc`) on the same stream of
//!   sizes;
//! - `replay/*`: a whole transformer trace replayed through a fresh allocator (ops/s).
//!
//! Run: `cargo bench --bench alloc -- --warm-up-time 1 --measurement-time 3`.

use std::alloc::{alloc, dealloc, Layout};
use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vramswap::alloc::{
    replay, transformer_trace, AllocatorConfig, CachingAllocator, LargeBlocks, TraceOp,
    TransformerShape,
};
use vramswap::backend::{sim::SimBackend, SharedBackend};

fn sizes() -> Vec<u64> {
    transformer_trace(&TransformerShape::mixed_lengths())
        .iter()
        .filter_map(|o| match o {
            TraceOp::Alloc { size, .. } => Some(*size),
            _ => None,
        })
        .take(4096)
        .collect()
}

fn hit_pair(c: &mut Criterion) {
    let sizes = sizes();
    let mut g = c.benchmark_group("hit_pair");
    g.throughput(Throughput::Elements(1));
    // Fixed segments (`caching_allocator`, the name kept for comparison with earlier runs) and
    // the page pool, on the same stream of sizes.
    for (name, large_blocks) in [
        ("caching_allocator", LargeBlocks::Fixed),
        ("expandable_segments", LargeBlocks::Expandable),
        ("page_pool", LargeBlocks::PagePool),
    ] {
        let b: SharedBackend = Arc::new(SimBackend::with_capacity(64 << 30));
        let s = b.stream_create().unwrap();
        let config = AllocatorConfig {
            large_blocks,
            ..Default::default()
        };
        let a = CachingAllocator::new(b.clone(), config).unwrap();
        let warm: Vec<_> = sizes.iter().map(|&n| a.allocate(n, s).unwrap()).collect();
        for p in warm {
            a.free(p).unwrap();
        }
        let mut i = 0usize;
        g.bench_function(name, |bench| {
            bench.iter(|| {
                let n = sizes[i % sizes.len()];
                i += 1;
                let p = a.allocate(black_box(n), s).unwrap();
                a.free(black_box(p)).unwrap();
            })
        });
        drop(a);
        b.stream_destroy(s).unwrap();
    }
    let mut j = 0usize;
    g.bench_function("std_alloc", |bench| {
        bench.iter(|| {
            let n = sizes[j % sizes.len()];
            j += 1;
            let layout = Layout::from_size_align(black_box(n) as usize, 512).unwrap();
            // SAFETY: the layout has a non-zero size; the pointer is freed with the same layout.
            unsafe {
                let p = alloc(layout);
                assert!(!p.is_null());
                dealloc(black_box(p), layout);
            }
        })
    });
    g.finish();
}

fn replay_throughput(c: &mut Criterion) {
    let mut g = c.benchmark_group("replay");
    g.sample_size(10);
    for shape in [TransformerShape::small(), TransformerShape::mixed_lengths()] {
        let ops: Vec<_> = transformer_trace(&shape)
            .into_iter()
            .enumerate()
            .map(|(i, o)| (i + 1, o))
            .collect();
        g.throughput(Throughput::Elements(ops.len() as u64));
        g.bench_function(shape.name.as_str(), |bench| {
            bench.iter(|| {
                let b: SharedBackend = Arc::new(SimBackend::with_capacity(64 << 30));
                let a = CachingAllocator::new(b, AllocatorConfig::default()).unwrap();
                black_box(replay(&a, &ops).unwrap());
            })
        });
    }
    g.finish();
}

criterion_group!(benches, hit_pair, replay_throughput);
criterion_main!(benches);
