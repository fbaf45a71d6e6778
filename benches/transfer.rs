//! The copy engine on the simulated device: chunked uploads through the copy plan beside the
//! single-large-copy ceiling, in one run.
//!
//! `cargo bench --bench transfer`. The device copies at host memcpy speed (no bandwidth model),
//! so the ratio to the ceiling is the engine's overhead: chunking, events, streams.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use vramswap::backend::sim::SimBackend;
use vramswap::backend::{SharedBackend, Stream};
use vramswap::transfer::{CopyEngine, CopyPlan, Direction, Group, HostPiece, TransferConfig};

const BYTES: u64 = 64 << 20;

fn uploads(c: &mut Criterion) {
    let b: SharedBackend = Arc::new(SimBackend::with_capacity(1 << 30));
    let host = b.host_alloc_pinned(BYTES).unwrap();
    let dev = b.alloc(BYTES).unwrap();
    let mut g = c.benchmark_group("upload_64MiB");
    g.throughput(Throughput::Bytes(BYTES));
    g.sample_size(20);
    g.bench_function("ceiling_one_copy", |bench| {
        bench.iter(|| {
            // SAFETY: `host` is live until freed after the benchmark; each copy is synchronised.
            unsafe {
                b.copy_htod_async(dev, host, BYTES, Stream::DEFAULT)
                    .unwrap()
            };
            b.stream_synchronize(Stream::DEFAULT).unwrap();
        })
    });
    for streams in [1usize, 2, 4] {
        for chunk_mb in [1u64, 4, 16] {
            let engine = Arc::new(
                CopyEngine::new(
                    b.clone(),
                    TransferConfig {
                        chunk_bytes: chunk_mb << 20,
                        streams_per_direction: streams,
                        verify: false,
                    },
                )
                .unwrap(),
            );
            // Eight layers, as a model's groups would be.
            let groups = (0..8)
                .map(|i| Group {
                    name: format!("layer.{i}"),
                    offset: i * BYTES / 8,
                    len: BYTES / 8,
                })
                .collect();
            let plan = CopyPlan::new(groups, chunk_mb << 20).unwrap();
            g.bench_with_input(
                BenchmarkId::new(format!("plan_{streams}_streams"), format!("{chunk_mb}MiB")),
                &plan,
                |bench, plan| {
                    bench.iter(|| {
                        // SAFETY: `host` outlives the transfer, which is waited for.
                        let t = unsafe {
                            engine
                                .start(
                                    Direction::HostToDevice,
                                    &HostPiece::whole(host, BYTES),
                                    dev,
                                    plan,
                                )
                                .unwrap()
                        };
                        t.wait().unwrap();
                    })
                },
            );
        }
    }
    g.finish();
    // SAFETY: nothing is in flight.
    unsafe { b.host_free_pinned(host).unwrap() };
    b.free(dev).unwrap();
}

fn plan_building(c: &mut Criterion) {
    let groups: Vec<Group> = (0..80)
        .map(|i| Group {
            name: format!("model.layers.{i}"),
            offset: i * (200 << 20),
            len: 200 << 20,
        })
        .collect();
    c.bench_function("plan_16GB_in_16MiB_chunks", |bench| {
        bench.iter(|| CopyPlan::new(groups.clone(), 16 << 20).unwrap())
    });
}

criterion_group!(benches, uploads, plan_building);
criterion_main!(benches);
