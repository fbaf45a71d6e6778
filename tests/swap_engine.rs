//! The swap engine on the simulated device: residency, stable addresses, clean and dirty
//! offloads, budgets and LRU, prefetch, streaming acquire, idle timeout, status.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};
use vramswap::backend::sim::SimBackend;
use vramswap::backend::{self, SharedBackend, Stream};
use vramswap::load::LoadOptions;
use vramswap::swap::{Residency, SwapConfig, SwapEngine};
use vramswap::weights::DType;
use vramswap::Error;

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::SmallRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

fn sim(capacity: u64) -> SharedBackend {
    Arc::new(SimBackend::with_capacity(capacity))
}

/// The backend under test: a simulated device of `capacity` bytes, or the CUDA backend when
/// `VRAMSWAP_TEST_BACKEND=cuda` (the emulated driver in CI; its capacity is its own).
fn backend(capacity: u64) -> SharedBackend {
    match std::env::var("VRAMSWAP_TEST_BACKEND").as_deref() {
        Ok("cuda") => common::test_backend(),
        _ => sim(capacity),
    }
}

/// Named arrays: (name, dtype, shape, bytes).
type Arrays = Vec<(String, DType, Vec<u64>, Vec<u8>)>;

/// A small Llama-like set: an embedding, two layers of a few tensors, a norm.
fn model(seed: u64, scale: usize) -> Arrays {
    let mut v = Vec::new();
    let mut t = |name: &str, shape: Vec<u64>| {
        let n: u64 = shape.iter().product::<u64>() * 2;
        let data = random(n as usize, seed ^ (v.len() as u64 * 7919));
        v.push((name.to_string(), DType::F16, shape, data));
    };
    t("model.embed_tokens.weight", vec![256, 16 * scale as u64]);
    for l in 0..2 {
        t(
            &format!("model.layers.{l}.self_attn.q_proj.weight"),
            vec![64, 16 * scale as u64],
        );
        t(
            &format!("model.layers.{l}.mlp.up_proj.weight"),
            vec![128, 16 * scale as u64],
        );
        t(
            &format!("model.layers.{l}.input_layernorm.weight"),
            vec![16 * scale as u64],
        );
    }
    t("model.norm.weight", vec![16 * scale as u64]);
    v
}

fn register(e: &SwapEngine, name: &str, m: &[(String, DType, Vec<u64>, Vec<u8>)]) {
    e.register_arrays(
        name,
        m.iter()
            .map(|(n, d, s, b)| (n.clone(), *d, s.clone(), &b[..]))
            .collect(),
    )
    .unwrap();
}

fn state(e: &SwapEngine, name: &str) -> Residency {
    e.status()
        .sets
        .into_iter()
        .find(|s| s.name == name)
        .unwrap()
        .state
}

/// On `sim`: no race, nothing leaked. (On the emulated driver the same is checked for the whole
/// process by its exit report, which `scripts/test.sh` reads.)
fn assert_clean(b: &SharedBackend) {
    let Some(sim) = b.sim_device() else { return };
    common::assert_device_clean(sim, "swap engine");
}

#[test]
fn acquired_set_holds_every_tensor_at_its_address() {
    let b = backend(256 << 20);
    let e = SwapEngine::new(b.clone(), SwapConfig::default()).unwrap();
    let m = model(1, 4);
    register(&e, "a", &m);
    let g = e.acquire("a").unwrap();
    for (name, _, _, data) in &m {
        let p = g.tensor_ptr(name).unwrap();
        let mut out = vec![0u8; data.len()];
        backend::download(b.as_ref(), &mut out, p, Stream::DEFAULT).unwrap();
        assert_eq!(&out, data, "{name}");
        assert_eq!(&g.read_tensor(name).unwrap(), data);
    }
    assert!(matches!(g.tensor_ptr("nope"), Err(Error::NotFound { .. })));
    drop(g);
    drop(e);
    assert_clean(&b);
}

#[test]
fn clean_offload_unmaps_without_copying_and_returns_device_memory() {
    let b = backend(256 << 20);
    let e = SwapEngine::new(b.clone(), SwapConfig::default()).unwrap();
    register(&e, "a", &model(2, 64));
    let free_before = b.mem_info().unwrap().free;
    drop(e.acquire("a").unwrap());
    assert!(b.mem_info().unwrap().free < free_before);
    // On `sim`, the device's own counters prove no copy ran; on CUDA, the engine's do.
    let d2h = |b: &SharedBackend| b.sim_device().map(|s| s.counters().copies_d2h);
    let d2h_before = d2h(&b);
    e.offload("a").unwrap();
    assert_eq!(d2h(&b), d2h_before, "a clean offload copies nothing");
    assert_eq!(b.mem_info().unwrap().free, free_before);
    assert_eq!(state(&e, "a"), Residency::InHost);
    let c = e.status().counters;
    assert_eq!(
        (c.h2d_swaps, c.d2h_swaps, c.dirty_copies, c.bytes_d2h),
        (1, 1, 0, 0)
    );
    drop(e);
    assert_clean(&b);
}

#[test]
fn addresses_are_stable_across_offload_and_reacquire() {
    let b = backend(256 << 20);
    let e = SwapEngine::new(b.clone(), SwapConfig::default()).unwrap();
    let m = model(3, 8);
    register(&e, "a", &m);
    let g = e.acquire("a").unwrap();
    let (base, ptr) = (g.base(), g.tensor_ptr("model.norm.weight").unwrap());
    assert!(g.stable_addresses());
    drop(g);
    e.offload("a").unwrap();
    let g = e.acquire("a").unwrap();
    assert_eq!(g.base(), base);
    assert_eq!(g.tensor_ptr("model.norm.weight").unwrap(), ptr);
    assert_eq!(
        g.read_tensor("model.norm.weight").unwrap(),
        m.last().unwrap().3
    );
    drop(g);
    drop(e);
    assert_clean(&b);
}

#[test]
fn without_vmm_the_fallback_works_and_says_addresses_may_move() {
    let b = backend(256 << 20);
    let cfg = SwapConfig {
        use_vmm: Some(false),
        ..SwapConfig::default()
    };
    let e = SwapEngine::new(b.clone(), cfg).unwrap();
    let m = model(4, 2);
    register(&e, "a", &m);
    let g = e.acquire("a").unwrap();
    assert!(!g.stable_addresses());
    assert_eq!(g.read_tensor(&m[0].0).unwrap(), m[0].3);
    drop(g);
    assert!(!e.status().sets[0].stable_addresses);
    e.offload("a").unwrap();
    drop(e);
    assert_clean(&b);
}

#[test]
fn dirty_set_is_copied_back_and_the_change_survives_a_swap() {
    let b = backend(256 << 20);
    let e = SwapEngine::new(b.clone(), SwapConfig::default()).unwrap();
    register(&e, "a", &model(5, 2));
    let g = e.acquire("a").unwrap();
    let p = g.tensor_ptr("model.norm.weight").unwrap();
    backend::upload(b.as_ref(), p, &[0xAB; 8], Stream::DEFAULT).unwrap();
    drop(g);
    e.mark_dirty("a").unwrap();
    e.offload("a").unwrap();
    let c = e.status().counters;
    assert_eq!(c.dirty_copies, 1);
    assert!(c.bytes_d2h > 0);
    let g = e.acquire("a").unwrap();
    assert_eq!(
        &g.read_tensor("model.norm.weight").unwrap()[..8],
        &[0xAB; 8]
    );
    drop(g);
    drop(e);
    assert_clean(&b);
}

#[test]
fn a_guarded_set_cannot_be_offloaded_released_or_evicted() {
    let b = backend(256 << 20);
    let e = SwapEngine::new(b.clone(), SwapConfig::default()).unwrap();
    register(&e, "a", &model(6, 2));
    let g = e.acquire("a").unwrap();
    assert!(matches!(e.offload("a"), Err(Error::InvalidState(_))));
    assert!(matches!(e.release("a"), Err(Error::InvalidState(_))));
    assert_eq!(e.relieve(u64::MAX), 0, "nothing idle to evict");
    assert_eq!(e.status().sets[0].guards, 1);
    drop(g);
    assert_eq!(e.status().sets[0].guards, 0);
    drop(e);
    assert_clean(&b);
}

#[test]
fn device_budget_evicts_the_least_recently_used_idle_set() {
    let b = backend(512 << 20);
    let m = model(7, 256); // about 2.7 MiB: two granules each
    let probe = SwapEngine::new(b.clone(), SwapConfig::default()).unwrap();
    register(&probe, "x", &m);
    let one = {
        drop(probe.acquire("x").unwrap());
        probe.status().sets[0].device_bytes
    };
    drop(probe);
    let cfg = SwapConfig {
        device_budget: Some(2 * one),
        ..SwapConfig::default()
    };
    let e = SwapEngine::new(b.clone(), cfg).unwrap();
    for n in ["a", "b", "c"] {
        register(&e, n, &m);
    }
    drop(e.acquire("a").unwrap());
    drop(e.acquire("b").unwrap());
    drop(e.acquire("a").unwrap()); // a is now more recent than b
    drop(e.acquire("c").unwrap()); // evicts b
    assert_eq!(state(&e, "a"), Residency::OnDevice);
    assert_eq!(state(&e, "b"), Residency::InHost);
    assert_eq!(state(&e, "c"), Residency::OnDevice);
    let s = e.status();
    assert!(s.device_used <= 2 * one);
    assert_eq!(s.counters.evictions, 1);
    // With both resident sets guarded, a third cannot fit.
    let ga = e.acquire("a").unwrap();
    let gc = e.acquire("c").unwrap();
    match e.acquire("b") {
        Err(Error::DeviceBudgetExceeded {
            requested,
            pinned,
            budget,
        }) => {
            assert_eq!((requested, pinned, budget), (one, 2 * one, 2 * one));
        }
        other => panic!("expected DeviceBudgetExceeded, got {other:?}"),
    }
    assert_eq!(
        state(&e, "b"),
        Residency::InHost,
        "the failed acquire left b as it was"
    );
    drop((ga, gc));
    drop(e.acquire("b").unwrap());
    drop(e);
    assert_clean(&b);
}

#[test]
fn device_out_of_memory_evicts_idle_sets_even_without_a_budget() {
    let m = model(8, 512);
    let probe = SwapEngine::new(sim(256 << 20), SwapConfig::default()).unwrap();
    register(&probe, "x", &m);
    drop(probe.acquire("x").unwrap());
    let one = probe.status().sets[0].device_bytes;
    drop(probe);
    let b = sim(2 * one + one / 2); // room for two
    let e = SwapEngine::new(b.clone(), SwapConfig::default()).unwrap();
    for n in ["a", "b", "c"] {
        register(&e, n, &m);
        drop(e.acquire(n).unwrap());
    }
    let resident = e
        .status()
        .sets
        .iter()
        .filter(|s| s.state == Residency::OnDevice)
        .count();
    assert_eq!(resident, 2);
    assert_eq!(state(&e, "a"), Residency::InHost);
    drop(e);
    assert_clean(&b);
}

fn save_model(dir: &std::path::Path, name: &str, seed: u64) -> (PathBuf, Arrays) {
    let m = model(seed, 4);
    let path = dir.join(format!("{name}.safetensors"));
    let tensors: Vec<(&str, DType, &[u64], &[u8])> = m
        .iter()
        .map(|(n, d, s, b)| (n.as_str(), *d, &s[..], &b[..]))
        .collect();
    vramswap::load::save(&path, &tensors).unwrap();
    (path, m)
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vramswap-swap-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn a_path_set_loads_lazily_and_reloads_after_release() {
    let dir = temp_dir("lazy");
    let (path, m) = save_model(&dir, "m", 9);
    let b = backend(256 << 20);
    let e = SwapEngine::new(b.clone(), SwapConfig::default()).unwrap();
    e.register_path("m", &path, LoadOptions::default()).unwrap();
    assert_eq!(state(&e, "m"), Residency::OnDisk);
    assert_eq!(e.status().counters.loads, 0, "registering reads nothing");
    let g = e.acquire("m").unwrap();
    assert_eq!(g.read_tensor(&m[1].0).unwrap(), m[1].3);
    drop(g);
    e.release("m").unwrap();
    assert_eq!(state(&e, "m"), Residency::OnDisk);
    assert_eq!(e.status().host_used, 0);
    // Releasing it again frees nothing and is not counted again.
    e.release("m").unwrap();
    assert_eq!(e.status().counters.releases, 1);
    let g = e.acquire("m").unwrap();
    assert_eq!(g.read_tensor(&m[2].0).unwrap(), m[2].3);
    drop(g);
    let c = e.status().counters;
    assert_eq!((c.loads, c.releases, c.h2d_swaps), (2, 1, 2));
    assert!(matches!(
        e.register_path("m", &path, LoadOptions::default()),
        Err(Error::AlreadyExists { .. })
    ));
    assert!(matches!(
        e.register_path("x", dir.join("missing.safetensors"), LoadOptions::default()),
        Err(Error::Io { .. })
    ));
    drop(e);
    assert_clean(&b);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_set_registered_from_memory_cannot_be_released() {
    let b = backend(64 << 20);
    let e = SwapEngine::new(b.clone(), SwapConfig::default()).unwrap();
    register(&e, "a", &model(10, 1));
    let err = e.release("a").unwrap_err();
    assert!(
        err.to_string().contains("no source to reload from"),
        "{err}"
    );
    e.unregister("a").unwrap();
    assert!(matches!(e.acquire("a"), Err(Error::NotFound { .. })));
    drop(e);
    assert_clean(&b);
}

/// Three path sets `a`, `b`, `c` (models of seeds `seed`, `seed + 1`, `seed + 2`) under a host
/// budget that holds two of them; returns the directory, the backend, the engine and the
/// models' arrays.
fn host_budget_engine(tag: &str, seed: u64) -> (PathBuf, SharedBackend, SwapEngine, [Arrays; 3]) {
    let dir = temp_dir(tag);
    let saved = [0, 1, 2].map(|i| save_model(&dir, ["a", "b", "c"][i], seed + i as u64));
    let b = backend(256 << 20);
    let size = std::fs::metadata(&saved[0].0).unwrap().len();
    let cfg = SwapConfig {
        host_budget: Some(2 * size + (1 << 16)),
        ..SwapConfig::default()
    };
    let e = SwapEngine::new(b.clone(), cfg).unwrap();
    for (n, (p, _)) in ["a", "b", "c"].iter().zip(&saved) {
        e.register_path(n, p, LoadOptions::default()).unwrap();
    }
    (dir, b, e, saved.map(|(_, m)| m))
}

#[test]
fn host_budget_releases_the_least_recently_used_reloadable_copy() {
    let (dir, b, e, [_, _, mc]) = host_budget_engine("hostbudget", 11);
    drop(e.acquire("a").unwrap());
    e.offload("a").unwrap();
    drop(e.acquire("b").unwrap());
    e.offload("b").unwrap();
    let g = e.acquire("c").unwrap(); // needs room: releases a's host copy
    assert_eq!(g.read_tensor(&mc[0].0).unwrap(), mc[0].3);
    drop(g);
    assert_eq!(state(&e, "a"), Residency::OnDisk);
    assert_eq!(state(&e, "b"), Residency::InHost);
    assert_eq!(e.status().counters.releases, 1);
    drop(e);
    assert_clean(&b);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn prefetch_brings_a_set_in_the_background_and_acquire_finds_it() {
    let dir = temp_dir("prefetch");
    let (path, m) = save_model(&dir, "p", 14);
    let b = backend(256 << 20);
    let e = SwapEngine::new(b.clone(), SwapConfig::default()).unwrap();
    e.register_path("p", &path, LoadOptions::default()).unwrap();
    register(&e, "q", &model(15, 4));
    e.prefetch("p").unwrap(); // from disk: a background thread
    e.prefetch("q").unwrap(); // from the arena: copies queued, returns at once
    assert!(matches!(
        state(&e, "q"),
        Residency::Uploading | Residency::OnDevice
    ));
    let g = e.acquire("p").unwrap();
    assert_eq!(g.read_tensor(&m[0].0).unwrap(), m[0].3);
    drop(g);
    drop(e.acquire("q").unwrap());
    assert_eq!(e.status().counters.h2d_swaps, 2);
    assert!(matches!(e.prefetch("nope"), Err(Error::NotFound { .. })));
    drop(e);
    assert_clean(&b);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn streaming_acquire_exposes_layers_as_they_arrive() {
    let b = backend(256 << 20);
    let cfg = SwapConfig {
        transfer: vramswap::transfer::TransferConfig {
            chunk_bytes: 4096,
            streams_per_direction: 2,
            verify: false,
        },
        ..SwapConfig::default()
    };
    let e = SwapEngine::new(b.clone(), cfg).unwrap();
    let m = model(16, 16);
    register(&e, "a", &m);
    let g = e.acquire_streaming("a").unwrap();
    let k = g.group_of("model.layers.1.mlp.up_proj.weight").unwrap();
    assert!(
        g.groups()[k].name.contains("layers.1"),
        "{:?}",
        g.groups()[k]
    );
    g.wait_layer(k).unwrap();
    assert!(g.is_layer_ready(k).unwrap());
    // A compute stream ordered after the layer reads it with no race.
    let s = b.stream_create().unwrap();
    g.order_before(s, Some(k)).unwrap();
    let out = b.alloc(64).unwrap();
    b.copy_dtod_async(
        out,
        g.tensor_ptr("model.layers.1.mlp.up_proj.weight").unwrap(),
        64,
        s,
    )
    .unwrap();
    g.record_stream(s).unwrap();
    drop(g);
    e.offload("a").unwrap(); // waits for the recorded use before unmapping
    assert!(matches!(
        e.acquire_streaming("a").unwrap().wait_layer(999),
        Err(Error::InvalidArgument(_))
    ));
    b.stream_synchronize(s).unwrap();
    b.stream_destroy(s).unwrap();
    b.free(out).unwrap();
    drop(e);
    assert_clean(&b);
}

#[test]
fn idle_sets_are_offloaded_after_the_timeout() {
    let b = backend(256 << 20);
    let cfg = SwapConfig {
        idle_timeout: Some(Duration::from_millis(30)),
        ..SwapConfig::default()
    };
    let e = SwapEngine::new(b.clone(), cfg).unwrap();
    register(&e, "a", &model(17, 2));
    register(&e, "held", &model(18, 2));
    drop(e.acquire("a").unwrap());
    let g = e.acquire("held").unwrap();
    let t = Instant::now();
    while state(&e, "a") != Residency::InHost {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the idle offloader never ran"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        state(&e, "held"),
        Residency::OnDevice,
        "a guarded set is never idle-offloaded"
    );
    drop(g);
    drop(e); // stops the thread
    assert_clean(&b);
}

#[test]
fn status_serialises_with_the_seeds_counters() {
    let b = backend(64 << 20);
    let e = SwapEngine::new(b, SwapConfig::default()).unwrap();
    register(&e, "a", &model(19, 1));
    drop(e.acquire("a").unwrap());
    e.offload("a").unwrap();
    let v = serde_json::to_value(e.status()).unwrap();
    assert_eq!(v["sets"][0]["name"], "a");
    assert_eq!(v["sets"][0]["state"], "in_host");
    for k in [
        "loads",
        "h2d_swaps",
        "d2h_swaps",
        "releases",
        "bytes_h2d",
        "bytes_d2h",
        "mean_swap_in_ms",
        "last_swap_in_gbps",
    ] {
        assert!(v["counters"].get(k).is_some(), "counter {k} missing: {v}");
    }
    assert_eq!(v["counters"]["h2d_swaps"], 1);
    assert!(v["counters"]["last_swap_in_ms"].as_f64().unwrap() >= 0.0);
}

#[test]
fn verified_swaps_keep_every_byte_over_many_cycles() {
    let b = backend(64 << 20);
    let cfg = SwapConfig {
        transfer: vramswap::transfer::TransferConfig {
            chunk_bytes: 8192,
            streams_per_direction: 3,
            verify: true,
        },
        device_budget: None,
        ..SwapConfig::default()
    };
    let e = SwapEngine::new(b.clone(), cfg).unwrap();
    let sets: Vec<_> = (0..3).map(|i| model(100 + i, 8)).collect();
    for (i, m) in sets.iter().enumerate() {
        register(&e, &format!("s{i}"), m);
    }
    for cycle in 0..30 {
        let i = cycle % 3;
        let g = e.acquire(&format!("s{i}")).unwrap();
        let (name, _, _, data) = &sets[i][cycle % sets[i].len()];
        assert_eq!(&g.read_tensor(name).unwrap(), data, "cycle {cycle}");
        drop(g);
        e.offload(&format!("s{i}")).unwrap();
    }
    assert_eq!(e.status().counters.h2d_swaps, 30);
    drop(e);
    assert_clean(&b);
}

#[test]
fn allocator_pressure_offloads_idle_sets_and_swap_ins_reclaim_the_allocator_cache() {
    use vramswap::alloc::{AllocatorConfig, CachingAllocator};
    let m = model(20, 512);
    let probe = SwapEngine::new(sim(256 << 20), SwapConfig::default()).unwrap();
    register(&probe, "x", &m);
    drop(probe.acquire("x").unwrap());
    let one = probe.status().sets[0].device_bytes;
    drop(probe);
    let b = sim(3 * one);
    let alloc = Arc::new(CachingAllocator::new(b.clone(), AllocatorConfig::default()).unwrap());
    let e = SwapEngine::new(b.clone(), SwapConfig::default()).unwrap();
    e.attach_allocator(&alloc);
    register(&e, "a", &m);
    register(&e, "b", &m);
    drop(e.acquire("a").unwrap());
    drop(e.acquire("b").unwrap());
    // Activations need more than what is free: the allocator's ladder asks the engine, which
    // offloads the least recently used idle set.
    let p = alloc.allocate(one + one / 2, Stream::DEFAULT).unwrap();
    assert_eq!(state(&e, "a"), Residency::InHost);
    assert_eq!(e.status().counters.evictions, 1);
    alloc.free(p).unwrap();
    // The freed block stays cached in the allocator; a swap-in that needs the room gets it back
    // by asking the allocator to release its cache.
    drop(e.acquire("a").unwrap());
    assert_eq!(state(&e, "b"), Residency::OnDevice);
    assert_eq!(state(&e, "a"), Residency::OnDevice);
    drop(e);
    drop(alloc);
    assert_clean(&b);
}

#[test]
fn a_verified_set_changed_on_the_device_verifies_against_its_new_bytes() {
    let b = backend(256 << 20);
    let mut cfg = SwapConfig::default();
    cfg.transfer.verify = true;
    let e = SwapEngine::new(b.clone(), cfg).unwrap();
    register(&e, "a", &model(21, 4));
    let g = e.acquire("a").unwrap();
    backend::upload(b.as_ref(), g.base(), &[1, 2, 3, 4], Stream::DEFAULT).unwrap();
    drop(g);
    e.mark_dirty("a").unwrap();
    e.offload("a").unwrap();
    // The swap-in is verified against the host copy as it is now, changes included.
    let g = e.acquire("a").unwrap();
    assert_eq!(g.read(0, 4).unwrap(), [1, 2, 3, 4]);
    drop(g);
    drop(e);
    assert_clean(&b);
}

#[test]
fn direct_mode_sets_swap_in_whatever_their_files_order_and_shards() {
    let dir = temp_dir("direct");
    // Hugging Face order: the embedding, the layers, then the norm, so the `other` tensors lie
    // before and after the layers (a layer group spanning them would overlap the layers).
    let (hf, m) = save_model(&dir, "hf", 21);
    // Two shards whose data sections are not multiples of the 256-byte alignment (gaps between
    // them that no file holds), with layer 0 split across them.
    let shards = dir.join("sharded");
    std::fs::create_dir_all(&shards).unwrap();
    let t = |name: &str, n: usize, seed: u64| {
        (
            name.to_string(),
            DType::F16,
            vec![n as u64],
            random(2 * n, seed),
        )
    };
    let files: [(&str, Arrays); 2] = [
        (
            "part-1.safetensors",
            vec![
                t("model.embed_tokens.weight", 50, 1),
                t("model.layers.0.self_attn.q_proj.weight", 25, 2),
            ],
        ),
        (
            "part-2.safetensors",
            vec![
                t("model.layers.0.mlp.up_proj.weight", 25, 3),
                t("model.norm.weight", 50, 4),
            ],
        ),
    ];
    let mut map = serde_json::Map::new();
    let mut sharded = Arrays::new();
    for (file, arrays) in &files {
        let v: Vec<(&str, DType, &[u64], &[u8])> = arrays
            .iter()
            .map(|(n, d, s, b)| (n.as_str(), *d, &s[..], &b[..]))
            .collect();
        vramswap::load::save(&shards.join(file), &v).unwrap();
        for a in arrays {
            map.insert(a.0.clone(), serde_json::Value::from(*file));
        }
        sharded.extend(arrays.iter().cloned());
    }
    std::fs::write(
        shards.join("model.safetensors.index.json"),
        serde_json::json!({ "metadata": {}, "weight_map": map }).to_string(),
    )
    .unwrap();

    let b = backend(256 << 20);
    let cfg = SwapConfig {
        transfer: vramswap::transfer::TransferConfig {
            verify: true,
            ..Default::default()
        },
        ..SwapConfig::default()
    };
    let e = SwapEngine::new(b.clone(), cfg).unwrap();
    let direct = LoadOptions {
        direct: true,
        ..LoadOptions::default()
    };
    e.register_path("hf", &hf, direct.clone()).unwrap();
    e.register_path("sharded", &shards, direct).unwrap();
    for (name, arrays) in [("hf", &m), ("sharded", &sharded)] {
        for round in 0..2 {
            let g = e.acquire(name).unwrap();
            for (n, _, _, bytes) in arrays {
                assert_eq!(
                    &g.read_tensor(n).unwrap(),
                    bytes,
                    "{name} {n} round {round}"
                );
                // Every tensor lies in exactly one group, and groups never overlap.
                g.group_of(n).unwrap();
            }
            let mut groups: Vec<_> = g.groups().iter().map(|x| (x.offset, x.len)).collect();
            groups.sort_unstable();
            assert!(groups.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0));
            drop(g);
            e.offload(name).unwrap();
        }
    }
    drop(e);
    assert_clean(&b);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn host_budget_takes_idle_sets_off_the_device_too_but_never_device_changes() {
    let (dir, b, e, [ma, mb, _]) = host_budget_engine("hostbudget-device", 31);
    // a and b end up on the device, idle: loading c must take the least recently used one (a)
    // off the device and drop its host copy rather than fail.
    drop(e.acquire("a").unwrap());
    drop(e.acquire("b").unwrap());
    drop(e.acquire("c").unwrap());
    assert_eq!(state(&e, "a"), Residency::OnDisk);
    assert_eq!(state(&e, "b"), Residency::OnDevice);
    assert_eq!(e.status().counters.releases, 1);

    // b is changed on the device and offloaded: its host copy now holds the only copy of the
    // change, so it is never dropped to make room, even when nothing else can go.
    let changed = random(mb[1].3.len(), 99);
    let g = e.acquire("b").unwrap();
    backend::upload(
        b.as_ref(),
        g.tensor_ptr(&mb[1].0).unwrap(),
        &changed,
        Stream::DEFAULT,
    )
    .unwrap();
    drop(g);
    e.mark_dirty("b").unwrap();
    e.offload("b").unwrap();
    let held = e.acquire("c").unwrap();
    assert!(matches!(
        e.acquire("a"),
        Err(Error::HostBudgetExceeded { .. })
    ));
    drop(held);
    assert_eq!(
        e.acquire("b").unwrap().read_tensor(&mb[1].0).unwrap(),
        changed
    );
    // With c idle again, a loads (c goes).
    assert_eq!(
        e.acquire("a").unwrap().read_tensor(&ma[0].0).unwrap(),
        ma[0].3
    );
    assert_eq!(state(&e, "c"), Residency::OnDisk);
    drop(e);
    assert_clean(&b);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn streaming_acquires_and_unused_prefetches_are_finished_verified_and_counted() {
    let b = backend(256 << 20);
    let cfg = SwapConfig {
        transfer: vramswap::transfer::TransferConfig {
            chunk_bytes: 4096,
            streams_per_direction: 2,
            verify: true,
        },
        ..SwapConfig::default()
    };
    let e = SwapEngine::new(b.clone(), cfg).unwrap();
    register(&e, "a", &model(41, 4));
    register(&e, "b", &model(42, 4));
    let g = e.acquire_streaming("a").unwrap();
    g.wait_all().unwrap();
    drop(g);
    assert_eq!(state(&e, "a"), Residency::OnDevice);
    assert_eq!(e.status().counters.h2d_swaps, 1);
    // A prefetch nobody acquired still moved the bytes: counted when it is offloaded.
    e.prefetch("b").unwrap();
    e.offload("b").unwrap();
    assert_eq!(state(&e, "b"), Residency::InHost);
    let c = e.status().counters;
    assert_eq!((c.h2d_swaps, c.d2h_swaps), (2, 1));
    drop(e);
    assert_clean(&b);
}

#[test]
fn a_load_that_panics_does_not_leave_the_set_busy_forever() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = temp_dir("panic");
    let (path, m) = save_model(&dir, "p", 51);
    let b = backend(256 << 20);
    let e = SwapEngine::new(b.clone(), SwapConfig::default()).unwrap();
    let first = Arc::new(AtomicBool::new(true));
    let opts = LoadOptions {
        progress: Some(Arc::new(move |_| {
            if first.swap(false, Ordering::SeqCst) {
                panic!("a progress callback that panics once");
            }
        })),
        ..LoadOptions::default()
    };
    e.register_path("p", &path, opts).unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| e.acquire("p")));
    assert!(r.is_err());
    assert_eq!(state(&e, "p"), Residency::OnDisk);
    // Before the fix this waited forever for the panicked load.
    let g = e.acquire("p").unwrap();
    assert_eq!(g.read_tensor(&m[0].0).unwrap(), m[0].3);
    drop(g);
    drop(e);
    assert_clean(&b);
    let _ = std::fs::remove_dir_all(&dir);
}
