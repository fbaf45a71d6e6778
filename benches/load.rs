//! Load throughput from the page cache into the pinned arena, beside two references measured
//! in the same run:
//!
//! * the ceiling: a plain multi-threaded memcpy of the same bytes, from memory into the same
//!   (already faulted) arena range, with as many threads as the load uses;
//! * the peer: the `safetensors` crate's plain path, `std::fs::read` + `SafeTensors::deserialize`
//!   + `to_vec` per tensor.
//!
//! ```text
//! cargo bench --bench load                      # 512 MiB of tensors, best of 7
//! VRAMSWAP_BENCH_MB=256 VRAMSWAP_BENCH_RUNS=3 VRAMSWAP_BENCH_THREADS=4 cargo bench --bench load
//! ```
//!
//! A plain `harness = false` program rather than criterion: the figure that matters is the
//! ratio of three paths within one run, reported as best-of-N each.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vramswap::arena::{ArenaConfig, PinnedArena, SlabSource};
use vramswap::backend::sim::SimBackend;
use vramswap::load::{load, save, LoadOptions};
use vramswap::weights::DType;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn gbs(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

/// Copies `src` into `dst` with `threads` threads, in 8 MiB pieces.
fn parallel_memcpy(src: &[u8], dst: &mut [u8], threads: usize) {
    let per = src.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        for (a, b) in src.chunks(per).zip(dst.chunks_mut(per)) {
            s.spawn(move || {
                for (x, y) in a.chunks(8 << 20).zip(b.chunks_mut(8 << 20)) {
                    y.copy_from_slice(x);
                }
            });
        }
    });
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing special. Either way
    // the program runs once.
    let mb = env("VRAMSWAP_BENCH_MB", 512);
    let runs = env("VRAMSWAP_BENCH_RUNS", 7).max(1);
    let threads = env(
        "VRAMSWAP_BENCH_THREADS",
        std::thread::available_parallelism()
            .map_or(4, |n| n.get())
            .min(8),
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("model.safetensors");

    // A Llama-like layout: 32 layers of 7 tensors plus embeddings, F16, `mb` MB in all.
    let per_tensor = (mb << 20) / (32 * 7 + 2);
    let elems = (per_tensor / 2 / 4096).max(1) as u64 * 4096;
    let data: Vec<u8> = (0..elems * 2).map(|i| (i * 31 % 251) as u8).collect();
    let mut names = vec![
        "model.embed_tokens.weight".to_string(),
        "lm_head.weight".into(),
    ];
    for l in 0..32 {
        for w in ["q", "k", "v", "o", "gate", "up", "down"] {
            names.push(format!("model.layers.{l}.{w}.weight"));
        }
    }
    let shape = [elems / 4096, 4096];
    let tensors: Vec<(&str, DType, &[u64], &[u8])> = names
        .iter()
        .map(|n| (n.as_str(), DType::F16, &shape[..], &data[..]))
        .collect();
    save(&path, &tensors).expect("write the bench file");
    let file_bytes = std::fs::metadata(&path).expect("stat").len();
    let payload = data.len() as u64 * names.len() as u64;

    let backend = Arc::new(SimBackend::with_capacity(1 << 30));
    let arena = PinnedArena::new(
        backend,
        ArenaConfig {
            source: SlabSource::MmapRegister,
            slab_size: 64 << 20,
            ..Default::default()
        },
    )
    .expect("arena");
    let opts = LoadOptions {
        threads,
        ..Default::default()
    };
    let cast = LoadOptions {
        cast: Some(DType::BF16),
        ..opts.clone()
    };
    // The memcpy ceiling's source (the same bytes, in memory) and destination (an arena range,
    // faulted when its slab was pinned).
    let src = std::fs::read(&path).expect("read");
    let mut range = arena.alloc(src.len() as u64).expect("arena range");
    // Warm the page cache and pin the load's slab once; later loads reuse the slab.
    let before = arena.stats().pin_time;
    drop(load(&path, &arena, &opts).expect("load"));
    let pinned_once = arena.stats().pin_time - before;

    // Interleaved, so that every path sees the same load from the rest of the machine; the best
    // of `runs` for each.
    let time = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        t.elapsed()
    };
    let mut t_memcpy = Duration::MAX;
    let mut t_load = Duration::MAX;
    let mut t_cast = Duration::MAX;
    let mut t_st = Duration::MAX;
    for _ in 0..runs {
        t_memcpy = t_memcpy.min(time(&mut || {
            parallel_memcpy(&src, range.as_mut_slice(), threads)
        }));
        t_load = t_load.min(time(&mut || {
            let w = load(&path, &arena, &opts).expect("load");
            std::hint::black_box(w.total_bytes());
        }));
        t_cast = t_cast.min(time(&mut || {
            let w = load(&path, &arena, &cast).expect("load with cast");
            std::hint::black_box(w.total_bytes());
        }));
        t_st = t_st.min(time(&mut || {
            let bytes = std::fs::read(&path).expect("read");
            let st = safetensors::SafeTensors::deserialize(&bytes).expect("deserialize");
            let vecs: Vec<Vec<u8>> = st
                .tensors()
                .iter()
                .map(|(_, v)| v.data().to_vec())
                .collect();
            std::hint::black_box(vecs.len());
        }));
    }
    drop((range, src));

    let (load_gbs, ceil_gbs, st_gbs) = (
        gbs(payload, t_load),
        gbs(file_bytes, t_memcpy),
        gbs(payload, t_st),
    );
    println!(
        "load bench: {:.0} MB file, {} tensors, {threads} threads, best of {runs}",
        file_bytes as f64 / 1e6,
        names.len()
    );
    println!(
        "  pinning one slab of the file's size (mmap + prefault + register): {:.3} s",
        pinned_once.as_secs_f64()
    );
    println!("  path                                   time      GB/s   vs ceiling");
    println!(
        "  memcpy ceiling ({threads} threads)              {:>7.3} s {:>7.2}   100.0%",
        t_memcpy.as_secs_f64(),
        ceil_gbs
    );
    println!(
        "  vramswap load -> arena                 {:>7.3} s {:>7.2}   {:>5.1}%",
        t_load.as_secs_f64(),
        load_gbs,
        load_gbs / ceil_gbs * 100.0
    );
    let cast_gbs = gbs(payload, t_cast);
    println!(
        "  vramswap load, cast F16 -> BF16        {:>7.3} s {:>7.2}   {:>5.1}%",
        t_cast.as_secs_f64(),
        cast_gbs,
        cast_gbs / ceil_gbs * 100.0
    );
    println!(
        "  safetensors read + to_vec              {:>7.3} s {:>7.2}   {:>5.1}%",
        t_st.as_secs_f64(),
        st_gbs,
        st_gbs / ceil_gbs * 100.0
    );
    println!("  load vs safetensors: {:.2}x", load_gbs / st_gbs);
}
