//! The swap engine under injected faults and concurrency: after every fault the set is usable
//! from its last good tier, a retry succeeds, and nothing leaks; many threads at once produce no
//! race and no deadlock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, RngCore, SeedableRng};
use vramswap::backend::sim::SimBackend;
use vramswap::backend::{self, SharedBackend, Stream};
use vramswap::swap::{Residency, SwapConfig, SwapEngine};
use vramswap::transfer::TransferConfig;
use vramswap::weights::DType;
use vramswap_sim::{FaultOp, RaceMode, SimConfig};

fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::SmallRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

fn setup() -> (SharedBackend, SwapEngine, Vec<u8>) {
    let b: SharedBackend = Arc::new(SimBackend::new(SimConfig {
        capacity: 128 << 20,
        race_mode: RaceMode::Record,
        ..SimConfig::default()
    }));
    let cfg = SwapConfig {
        transfer: TransferConfig {
            chunk_bytes: 64 << 10,
            streams_per_direction: 2,
            verify: false,
        },
        ..SwapConfig::default()
    };
    let e = SwapEngine::new(b.clone(), cfg).unwrap();
    let w = data(1, 3 << 20);
    e.register_arrays(
        "m",
        vec![(
            "model.layers.0.w".into(),
            DType::U8,
            vec![w.len() as u64],
            &w[..],
        )],
    )
    .unwrap();
    (b, e, w)
}

fn state(e: &SwapEngine) -> Residency {
    e.status().sets[0].state
}

fn finish(b: SharedBackend, e: SwapEngine) {
    drop(e);
    let sim = b.sim_device().unwrap();
    sim.synchronize().unwrap();
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
    let l = sim.leaks();
    assert!(l.is_clean(), "leaked after faults: {l:?}");
}

#[test]
fn every_fault_of_a_swap_in_leaves_the_set_in_host_and_a_retry_succeeds() {
    for (op, nth) in [
        (FaultOp::Reserve, 1),
        (FaultOp::PhysCreate, 1),
        (FaultOp::Map, 1),
        (FaultOp::Copy, 1),
        (FaultOp::Copy, 20),       // midway through the chunks
        (FaultOp::EventCreate, 2), // the first chunk's event (the timing event is optional)
    ] {
        let (b, e, w) = setup();
        b.sim_device().unwrap().inject_fault(op, nth);
        let r = e.acquire("m");
        assert!(r.is_err(), "{op:?}#{nth}: the acquire should fail");
        drop(r);
        assert_eq!(state(&e), Residency::InHost, "{op:?}#{nth}");
        assert!(e.status().sets[0].last_error.is_some());
        let g = e
            .acquire("m")
            .unwrap_or_else(|err| panic!("{op:?}#{nth}: retry failed: {err}"));
        assert_eq!(g.read(0, w.len() as u64).unwrap(), w, "{op:?}#{nth}");
        drop(g);
        finish(b, e);
    }
}

#[test]
fn a_fault_during_prefetch_leaves_the_set_in_host() {
    for op in [FaultOp::PhysCreate, FaultOp::Map, FaultOp::Copy] {
        let (b, e, w) = setup();
        b.sim_device().unwrap().inject_fault(op, 1);
        assert!(e.prefetch("m").is_err(), "{op:?}");
        assert_eq!(state(&e), Residency::InHost);
        e.prefetch("m").unwrap();
        assert_eq!(e.acquire("m").unwrap().read(0, 64).unwrap(), w[..64]);
        finish(b, e);
    }
}

#[test]
fn a_fault_while_copying_a_dirty_set_back_keeps_it_resident_and_dirty() {
    let (b, e, _) = setup();
    let g = e.acquire("m").unwrap();
    backend::upload(b.as_ref(), g.base(), &[9u8; 32], Stream::DEFAULT).unwrap();
    drop(g);
    e.mark_dirty("m").unwrap();
    b.sim_device().unwrap().inject_fault(FaultOp::Copy, 3);
    assert!(e.offload("m").is_err());
    let s = &e.status().sets[0];
    assert_eq!(s.state, Residency::OnDevice);
    assert!(s.dirty);
    e.offload("m").unwrap();
    assert_eq!(&e.acquire("m").unwrap().read(0, 32).unwrap(), &[9u8; 32]);
    finish(b, e);
}

#[test]
fn a_fault_in_the_load_after_release_keeps_the_set_on_disk_and_retry_works() {
    let dir = std::env::temp_dir().join(format!("vramswap-faults-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("m.safetensors");
    let w = data(2, 1 << 20);
    vramswap::load::save(&path, &[("w", DType::U8, &[w.len() as u64], &w[..])]).unwrap();
    let b: SharedBackend = Arc::new(SimBackend::with_capacity(64 << 20));
    let e = SwapEngine::new(b.clone(), SwapConfig::default()).unwrap();
    e.register_path("m", &path, Default::default()).unwrap();
    drop(e.acquire("m").unwrap());
    e.release("m").unwrap();
    b.sim_device().unwrap().inject_fault(FaultOp::HostAlloc, 1);
    assert!(e.acquire("m").is_err());
    assert_eq!(state(&e), Residency::OnDisk);
    assert_eq!(e.acquire("m").unwrap().read(0, w.len() as u64).unwrap(), w);
    finish(b, e);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn many_threads_acquiring_prefetching_and_offloading_race_nothing_and_finish() {
    let b: SharedBackend = Arc::new(SimBackend::new(SimConfig {
        capacity: 64 << 20,
        race_mode: RaceMode::Record,
        ..SimConfig::default()
    }));
    let cfg = SwapConfig {
        device_budget: Some(12 << 20),
        transfer: TransferConfig {
            chunk_bytes: 256 << 10,
            streams_per_direction: 2,
            verify: false,
        },
        ..SwapConfig::default()
    };
    let e = SwapEngine::new(b.clone(), cfg).unwrap();
    let sets: Vec<Vec<u8>> = (0..6)
        .map(|i| data(10 + i, (3 << 20) + i as usize * 4096))
        .collect();
    for (i, w) in sets.iter().enumerate() {
        e.register_arrays(
            &format!("s{i}"),
            vec![(
                format!("model.layers.{i}.w"),
                DType::U8,
                vec![w.len() as u64],
                &w[..],
            )],
        )
        .unwrap();
    }
    let sets = Arc::new(sets);
    let start = Instant::now();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let e = e.clone();
            let sets = sets.clone();
            std::thread::spawn(move || {
                let mut rng = rand::rngs::SmallRng::seed_from_u64(t);
                for _ in 0..40 {
                    let i = rng.random_range(0..sets.len());
                    let name = format!("s{i}");
                    match rng.random_range(0..4) {
                        0 => {
                            let _ = e.prefetch(&name);
                        }
                        1 => {
                            let _ = e.offload(&name); // may be refused: another thread holds it
                        }
                        _ => match e.acquire(&name) {
                            Ok(g) => {
                                let off = rng.random_range(0..sets[i].len() - 64) as u64;
                                let got = g.read(off, 64).unwrap();
                                assert_eq!(
                                    got,
                                    sets[i][off as usize..off as usize + 64],
                                    "{name}@{off}"
                                );
                            }
                            // Every resident set may be held by the other threads at once.
                            Err(vramswap::Error::DeviceBudgetExceeded { .. }) => {}
                            Err(err) => panic!("{name}: {err}"),
                        },
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a worker panicked");
    }
    assert!(
        start.elapsed() < Duration::from_secs(120),
        "suspiciously slow: a near-deadlock?"
    );
    assert!(e.status().device_used <= 12 << 20);
    finish(b, e);
}
