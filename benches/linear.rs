//! The batch-invariant CPU linear of `vramswap::infer` beside candle's CPU matmul (the `gemm`
//! crate), at decode shapes: a batch of `m` rows times one demo-sized layer's weights, in one
//! run.
//!
//! `cargo bench --bench linear`. Each iteration multiplies by all seven projections of four
//! layers (12 MB of f32 weights, more than L2), as a decode step does.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::{Rng, SeedableRng};

use candle_core::{Device, Tensor};
use vramswap::infer::matmul_t;

/// `(out, in)` of a layer's projections: q, k, v, o, gate, up, down (hidden 256, 4 heads of
/// key/value out of 8, intermediate 688).
const LAYER: [(usize, usize); 7] = [
    (256, 256),
    (128, 256),
    (128, 256),
    (256, 256),
    (688, 256),
    (688, 256),
    (256, 688),
];

fn linears(c: &mut Criterion) {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
    let mut random =
        |len: usize| -> Vec<f32> { (0..len).map(|_| rng.random_range(-0.05f32..0.05)).collect() };
    let weights: Vec<(usize, usize, Vec<f32>)> = (0..4)
        .flat_map(|_| LAYER)
        .map(|(n, k)| (n, k, random(n * k)))
        .collect();
    let tensors: Vec<Tensor> = weights
        .iter()
        .map(|(n, k, w)| Tensor::from_vec(w.clone(), (*n, *k), &Device::Cpu).unwrap())
        .collect();
    let fmas: usize = weights.iter().map(|(n, k, _)| n * k).sum();
    let mut g = c.benchmark_group("decode_step_linears");
    g.sample_size(30);
    for m in [1usize, 4, 8, 16] {
        let x256 = random(m * 256);
        let x688 = random(m * 688);
        let pick = |k: usize| if k == 256 { &x256 } else { &x688 };
        let t256 = Tensor::from_vec(x256.clone(), (m, 256), &Device::Cpu).unwrap();
        let t688 = Tensor::from_vec(x688.clone(), (m, 688), &Device::Cpu).unwrap();
        let tpick = |k: usize| if k == 256 { &t256 } else { &t688 };
        g.throughput(Throughput::Elements((m * fmas) as u64));
        g.bench_with_input(BenchmarkId::new("vramswap", m), &m, |b, &m| {
            b.iter(|| {
                for (n, k, w) in &weights {
                    std::hint::black_box(matmul_t(pick(*k), w, m, *k, *n).unwrap());
                }
            })
        });
        g.bench_with_input(BenchmarkId::new("candle_gemm", m), &m, |b, _| {
            b.iter(|| {
                for ((_, k, _), w) in weights.iter().zip(&tensors) {
                    std::hint::black_box(tpick(*k).matmul(&w.t().unwrap()).unwrap());
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, linears);
criterion_main!(benches);
