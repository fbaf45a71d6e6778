//! The swap engine under injected faults and concurrency: after every fault the set is usable
//! from its last good tier, a retry succeeds, and nothing leaks; many threads at once produce no
//! race and no deadlock.

mod common;

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
    common::assert_device_clean(b.sim_device().unwrap(), "after faults");
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

fn verified(b: &SharedBackend, vmm: bool) -> SwapEngine {
    let cfg = SwapConfig {
        use_vmm: Some(vmm),
        transfer: TransferConfig {
            verify: true,
            ..TransferConfig::default()
        },
        ..SwapConfig::default()
    };
    SwapEngine::new(b.clone(), cfg).unwrap()
}

fn one_tensor(e: &SwapEngine, name: &str, len: usize) {
    let w = vec![5u8; len];
    e.register_arrays(
        name,
        vec![(
            "model.layers.0.w".into(),
            DType::U8,
            vec![len as u64],
            &w[..],
        )],
    )
    .unwrap();
}

#[test]
fn a_failed_verification_never_unmaps_a_set_another_guard_holds() {
    let b: SharedBackend = Arc::new(SimBackend::with_capacity(256 << 20));
    let e = verified(&b, true);
    one_tensor(&e, "m", 4 << 20);
    let held = e.acquire_streaming("m").unwrap();
    b.sim_device().unwrap().inject_fault(FaultOp::Launch, 1); // the checksum kernel fails
    assert!(e.acquire("m").is_err());
    held.wait_all().unwrap();
    assert_eq!(
        held.read(0, 16).unwrap(),
        vec![5u8; 16],
        "the held set stayed mapped"
    );
    drop(held);
    // With no guard left, the next acquire discards the unverified copy and uploads afresh.
    assert_eq!(e.acquire("m").unwrap().read(0, 16).unwrap(), vec![5u8; 16]);
    finish(b, e);
}

#[test]
fn concurrent_acquires_after_a_failed_verification_neither_panic_nor_hand_out_unmapped_sets() {
    for vmm in [false, true] {
        let b: SharedBackend = Arc::new(SimBackend::new(SimConfig {
            capacity: 256 << 20,
            bandwidth: Some(vramswap_sim::Bandwidth {
                h2d: 100e6,
                ..Default::default()
            }),
            ..SimConfig::default()
        }));
        let e = verified(&b, vmm);
        one_tensor(&e, "m", 8 << 20);
        e.prefetch("m").unwrap();
        b.sim_device().unwrap().inject_fault(FaultOp::Launch, 1);
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let e = e.clone();
                std::thread::spawn(move || match e.acquire("m") {
                    Ok(g) => g.read(0, 16).map(|bytes| assert_eq!(bytes, vec![5u8; 16])),
                    Err(err) => Err(err),
                })
            })
            .collect();
        for t in threads {
            // Either outcome is fine; a guard over unmapped memory (a read error) or a panic
            // is not.
            match t.join().expect("an acquire panicked") {
                Ok(()) => {}
                Err(err) => assert!(
                    matches!(
                        err,
                        vramswap::Error::Driver { .. } | vramswap::Error::ChecksumMismatch { .. }
                    ),
                    "vmm={vmm}: {err}"
                ),
            }
        }
        assert_eq!(
            e.status().sets[0].guards,
            0,
            "the engine lock is not poisoned and guards balance"
        );
        finish(b, e);
    }
}

#[test]
fn allocator_pressure_waits_for_a_busy_engine_instead_of_failing() {
    use vramswap::alloc::{AllocatorConfig, CachingAllocator};
    let b: SharedBackend = Arc::new(SimBackend::new(SimConfig {
        capacity: 64 << 20,
        bandwidth: Some(vramswap_sim::Bandwidth {
            d2h: 40e6,
            ..Default::default()
        }),
        ..SimConfig::default()
    }));
    let e = SwapEngine::new(b.clone(), SwapConfig::default()).unwrap();
    one_tensor(&e, "d1", 8 << 20);
    one_tensor(&e, "d2", 8 << 20);
    one_tensor(&e, "idle", 40 << 20);
    for n in ["d1", "d2", "idle"] {
        drop(e.acquire(n).unwrap());
    }
    e.mark_dirty("d1").unwrap();
    e.mark_dirty("d2").unwrap();
    let a = Arc::new(CachingAllocator::new(b.clone(), AllocatorConfig::default()).unwrap());
    e.attach_allocator(&a);
    let e2 = e.clone();
    let busy = std::thread::spawn(move || e2.offload_idle().unwrap()); // long copy-backs under the lock
                                                                       // Whenever it runs, before, during or after the copy-backs, the allocation finds room.
    let p = a
        .allocate(30 << 20, Stream::DEFAULT)
        .expect("an idle set could be offloaded");
    busy.join().unwrap();
    a.free(p).unwrap();
    drop(a);
    finish(b, e);
}

#[test]
fn a_transfer_that_fails_inside_a_chunk_returns_only_after_its_queued_pieces() {
    use vramswap::transfer::{CopyEngine, CopyPlan, Direction, HostPiece};
    let b: SharedBackend = Arc::new(SimBackend::new(SimConfig {
        capacity: 256 << 20,
        bandwidth: Some(vramswap_sim::Bandwidth {
            h2d: 50e6,
            ..Default::default()
        }),
        ..SimConfig::default()
    }));
    let ce = Arc::new(
        CopyEngine::new(
            b.clone(),
            TransferConfig {
                chunk_bytes: 4 << 20,
                streams_per_direction: 1,
                verify: false,
            },
        )
        .unwrap(),
    );
    let (p0, p1) = (
        b.host_alloc_pinned(1 << 20).unwrap(),
        b.host_alloc_pinned(1 << 20).unwrap(),
    );
    // One chunk over two host pieces: the first piece is queued, the second copy fails.
    let pieces = [
        HostPiece {
            offset: 0,
            len: 1 << 20,
            ptr: p0,
        },
        HostPiece {
            offset: 1 << 20,
            len: 1 << 20,
            ptr: p1,
        },
    ];
    let d = b.alloc(2 << 20).unwrap();
    let plan = CopyPlan::whole(2 << 20, 4 << 20).unwrap();
    b.sim_device().unwrap().inject_fault(FaultOp::Copy, 2);
    // SAFETY: the pieces outlive the attempt.
    let r = unsafe { ce.start(Direction::HostToDevice, &pieces, d, &plan) };
    assert!(r.is_err());
    let s = ce.streams(Direction::HostToDevice)[0];
    assert!(
        b.stream_query(s).unwrap(),
        "the failed chunk's first piece was still being copied"
    );
    // Freeing the pinned source now is safe: no violation.
    // SAFETY: nothing is in flight (checked above).
    unsafe {
        b.host_free_pinned(p0).unwrap();
        b.host_free_pinned(p1).unwrap();
    }
    assert!(b.sim_device().unwrap().violations().is_empty());
    drop(ce);
    b.free(d).unwrap();
}

/// A verified engine on a simulated device with `conf` (`VRAMSWAP_SIM_CONF` syntax), and one
/// set `m` of four 256 KiB layers with distinct bytes; returns the layers' names and bytes.
fn verified_layers(conf: &str) -> (SharedBackend, SwapEngine, Vec<(String, Vec<u8>)>) {
    let b: SharedBackend = Arc::new(SimBackend::new(
        vramswap::backend::sim::parse_sim_config(conf).unwrap(),
    ));
    let cfg = SwapConfig {
        transfer: TransferConfig {
            chunk_bytes: 4096,
            streams_per_direction: 2,
            verify: true,
        },
        ..SwapConfig::default()
    };
    let e = SwapEngine::new(b.clone(), cfg).unwrap();
    let layers: Vec<(String, Vec<u8>)> = (0..4)
        .map(|l| (format!("model.layers.{l}.w"), data(60 + l, 256 << 10)))
        .collect();
    e.register_arrays(
        "m",
        layers
            .iter()
            .map(|(n, d)| (n.clone(), DType::U8, vec![d.len() as u64], &d[..]))
            .collect(),
    )
    .unwrap();
    (b, e, layers)
}

#[test]
fn a_change_made_under_a_streaming_guard_survives_its_verification() {
    // Written on the device and marked dirty under a streaming guard, with `verify` on: the
    // copy no longer matches the host checksums by design, and must be kept, not discarded,
    // whether the upload is finished at the guard's drop or (still in flight then) at the
    // offload.
    for conf in ["capacity_mb:256", "capacity_mb:256,h2d_gbps:0.05"] {
        let (b, e, layers) = verified_layers(conf);
        let g = e.acquire_streaming("m").unwrap();
        let first = g.group_of(&layers[0].0).unwrap();
        g.wait_layer(first).unwrap();
        let changed = data(99, layers[0].1.len());
        let at = g.tensor_ptr(&layers[0].0).unwrap();
        backend::upload(b.as_ref(), at, &changed, Stream::DEFAULT).unwrap();
        e.mark_dirty("m").unwrap();
        drop(g);
        e.offload("m").unwrap();
        let g = e.acquire("m").unwrap();
        assert_eq!(g.read_tensor(&layers[0].0).unwrap(), changed, "{conf}");
        assert_eq!(g.read_tensor(&layers[3].0).unwrap(), layers[3].1, "{conf}");
        drop(g);
        finish(b, e);
    }
}

#[test]
fn a_dirty_offload_whose_unmap_fails_leaves_the_set_on_the_device_and_usable() {
    let (b, e, w) = setup();
    drop(e.acquire("m").unwrap());
    e.mark_dirty("m").unwrap();
    b.sim_device().unwrap().inject_fault(FaultOp::Unmap, 1);
    assert!(e.offload("m").is_err());
    // Copied back, still mapped: on the device (it stayed `Downloading`, and every acquire
    // waited forever).
    assert_eq!(state(&e), Residency::OnDevice);
    assert_eq!(e.acquire("m").unwrap().read(0, 16).unwrap(), w[..16]);
    e.offload("m").unwrap();
    assert_eq!(state(&e), Residency::InHost);
    finish(b, e);
}

#[test]
fn a_bad_copy_that_cannot_be_unmapped_stays_uploading_and_the_next_acquire_retries() {
    // Verification fails (the checksum kernel's launch) and discarding the copy fails too (the
    // unmap): the set must keep its transfer, so the next acquire verifies again instead of
    // finding an `Uploading` set without one.
    let b: SharedBackend = Arc::new(SimBackend::with_capacity(256 << 20));
    let e = verified(&b, true);
    one_tensor(&e, "m", 4 << 20);
    let sim = b.sim_device().unwrap();
    sim.inject_fault(FaultOp::Launch, 1);
    sim.inject_fault(FaultOp::Unmap, 1);
    assert!(e.acquire("m").is_err());
    assert_eq!(state(&e), Residency::Uploading);
    assert_eq!(e.acquire("m").unwrap().read(0, 16).unwrap(), vec![5u8; 16]);
    finish(b, e);
}

#[test]
fn a_release_that_fails_once_while_offloading_is_tried_again_and_nothing_leaks() {
    // `VRAMSWAP_SIM_FAULTS=release:1` through the C ABI used to lose the set's physical memory
    // (unmapped, then forgotten) with no error reaching the caller.
    let (b, e, w) = setup();
    drop(e.acquire("m").unwrap());
    b.sim_device()
        .unwrap()
        .inject_fault(FaultOp::PhysRelease, 1);
    e.offload("m").unwrap();
    assert_eq!(state(&e), Residency::InHost);
    assert_eq!(b.sim_device().unwrap().leaks().physical_handles, 0);
    assert_eq!(e.acquire("m").unwrap().read(0, 16).unwrap(), w[..16]);
    finish(b, e);
}
