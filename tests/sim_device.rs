//! Behaviour specific to the simulated device: fault injection, the stream-ordering checker,
//! pinned versus pageable copies, the bandwidth model, virtual-memory rules, leak reports.

use std::time::Duration;

use vramswap::backend::sim::{parse_sim_config, SimBackend};
use vramswap::backend::{self, Backend, Stream};
use vramswap::Error;
use vramswap_sim::{Bandwidth, FaultOp, LinkDir, RaceMode, SimConfig};

fn sim() -> SimBackend {
    SimBackend::with_capacity(256 << 20)
}

#[test]
fn out_of_memory_error_names_request_and_free_memory() {
    let b = sim();
    let x = b.alloc(200 << 20).unwrap();
    match b.alloc(100 << 20) {
        Err(Error::DeviceOutOfMemory {
            requested,
            free,
            total,
            call,
        }) => {
            assert_eq!(requested, 100 << 20);
            assert_eq!(total, 256 << 20);
            assert_eq!(free, 56 << 20);
            assert_eq!(call, "simulated alloc"); // not the driver call: this is `sim`
        }
        other => panic!("expected DeviceOutOfMemory, got {other:?}"),
    }
    b.free(x).unwrap();
    // The memory is back: the same request now fits.
    let y = b.alloc(100 << 20).unwrap();
    b.free(y).unwrap();
}

#[test]
fn injected_fault_fails_exactly_the_nth_call() {
    let b = sim();
    b.inject_fault(FaultOp::DeviceAlloc, 3);
    let a = b.alloc(4096).unwrap();
    let c = b.alloc(4096).unwrap();
    let err = b.alloc(4096).unwrap_err();
    assert!(
        err.is_out_of_memory(),
        "an injected allocation fault reads as OOM: {err}"
    );
    let d = b.alloc(4096).expect("only the third call fails");
    for p in [a, c, d] {
        b.free(p).unwrap();
    }
    let l = b.device().leaks();
    assert!(l.is_clean(), "{l:?}");
}

#[test]
fn injected_copy_and_map_faults_are_driver_errors() {
    let b = sim();
    let g = b.properties().vmm_granularity;
    let va = b.reserve(g).unwrap();
    let h = b.create_physical(g).unwrap();
    b.inject_fault(FaultOp::Map, 1);
    let err = b.map(va, g, h).unwrap_err();
    assert_eq!(err.driver_name(), Some("CUDA_ERROR_INVALID_VALUE"), "{err}");
    b.map(va, g, h).expect("the retry succeeds");
    b.inject_fault(FaultOp::Copy, 1);
    let data = [1u8; 16];
    assert!(backend::upload(&b, va, &data, Stream::DEFAULT).is_err());
    backend::upload(&b, va, &data, Stream::DEFAULT).expect("the retry succeeds");
    b.unmap(va, g).unwrap();
    b.release_physical(h).unwrap();
    b.free_reservation(va, g).unwrap();
    let l = b.device().leaks();
    assert!(l.is_clean(), "{l:?}");
}

#[test]
fn faults_can_be_planted_through_the_environment_syntax() {
    let plan = vramswap_sim::parse_faults("map:3, copy:10").unwrap();
    assert_eq!(plan, vec![(FaultOp::Map, 3), (FaultOp::Copy, 10)]);
    assert!(vramswap_sim::parse_faults("mapp:3")
        .unwrap_err()
        .contains("unknown operation"));
    assert!(vramswap_sim::parse_faults("map:0").is_err());
    assert!(vramswap_sim::parse_faults("map").is_err());
}

/// Writes a pinned buffer to device memory on stream `a`, then reads the same device bytes on
/// stream `b`, ordered by an event when `ordered`.
fn two_stream_copy(ordered: bool) -> Vec<vramswap_sim::Violation> {
    let b = SimBackend::new(SimConfig {
        capacity: 64 << 20,
        // A slow link keeps the first copy in flight while the second is queued.
        bandwidth: Some(Bandwidth {
            h2d: 2e9,
            ..Bandwidth::default()
        }),
        ..SimConfig::default()
    });
    let len = 4u64 << 20;
    let x = b.alloc(len).unwrap();
    let y = b.alloc(len).unwrap();
    let host = b.host_alloc_pinned(len).unwrap();
    let s1 = b.stream_create().unwrap();
    let s2 = b.stream_create().unwrap();
    let ev = b.event_create(false).unwrap();
    // SAFETY: `host` is freed only after synchronizing below.
    unsafe { b.copy_htod_async(x, host, len, s1).unwrap() };
    if ordered {
        b.event_record(ev, s1).unwrap();
        b.stream_wait_event(s2, ev).unwrap();
    }
    b.copy_dtod_async(y, x, len, s2).unwrap();
    b.synchronize().unwrap();
    let v = b.device().violations();
    // SAFETY: all copies have completed.
    unsafe { b.host_free_pinned(host).unwrap() };
    b.free(x).unwrap();
    b.free(y).unwrap();
    b.event_destroy(ev).unwrap();
    b.stream_destroy(s1).unwrap();
    b.stream_destroy(s2).unwrap();
    v
}

#[test]
fn race_checker_reports_unordered_access_on_two_streams() {
    let v = two_stream_copy(false);
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(
        v[0].message.contains("no event ordering"),
        "{}",
        v[0].message
    );
}

#[test]
fn race_checker_is_clean_when_an_event_orders_the_streams() {
    let v = two_stream_copy(true);
    assert!(v.is_empty(), "{v:?}");
}

#[test]
fn race_checker_in_error_mode_refuses_the_racing_operation() {
    let b = SimBackend::new(SimConfig {
        race_mode: RaceMode::Error,
        ..SimConfig::default()
    });
    let x = b.alloc(1 << 20).unwrap();
    let s1 = b.stream_create().unwrap();
    let s2 = b.stream_create().unwrap();
    b.memset_d8_async(x, 1, 1 << 20, s1).unwrap();
    let err = b.memset_d8_async(x, 2, 1 << 20, s2).unwrap_err();
    assert!(
        err.to_string().contains("stream-ordering violation"),
        "{err}"
    );
    b.synchronize().unwrap();
    // After a host synchronisation, everything before it is ordered.
    b.memset_d8_async(x, 2, 1 << 20, s2).unwrap();
    b.synchronize().unwrap();
    b.free(x).unwrap();
}

#[test]
fn unmapping_memory_a_stream_still_uses_is_reported() {
    let b = SimBackend::new(SimConfig {
        bandwidth: Some(Bandwidth {
            d2d: 1e9,
            ..Bandwidth::default()
        }),
        ..SimConfig::default()
    });
    let g = b.properties().vmm_granularity;
    let va = b.reserve(g).unwrap();
    let h = b.create_physical(g).unwrap();
    b.map(va, g, h).unwrap();
    let other = b.alloc(g).unwrap();
    let s = b.stream_create().unwrap();
    b.copy_dtod_async(other, va, g, s).unwrap();
    b.unmap(va, g).unwrap();
    let v = b.device().violations();
    assert!(v.iter().any(|v| v.message.contains("cuMemUnmap")), "{v:?}");
    b.synchronize().unwrap();
    b.release_physical(h).unwrap();
    b.free_reservation(va, g).unwrap();
    b.free(other).unwrap();
}

#[test]
fn pinned_and_pageable_copies_both_return_before_the_transfer_ends() {
    let b = SimBackend::new(SimConfig {
        bandwidth: Some(Bandwidth {
            h2d: 1e9,
            d2h: 1e9,
            d2d: 1e12,
            pageable_factor: 0.5,
        }),
        ..SimConfig::default()
    });
    let len = 64u64 << 20; // 67 ms at 1 GB/s: far longer than the gap between the calls
    let x = b.alloc(len).unwrap();
    let s = b.stream_create().unwrap();
    let pinned = b.host_alloc_pinned(len).unwrap();
    // SAFETY: synchronised before `pinned` is freed.
    unsafe { b.copy_htod_async(x, pinned, len, s).unwrap() };
    assert!(!b.stream_query(s).unwrap(), "a pinned copy is asynchronous");
    b.stream_synchronize(s).unwrap();
    let pageable = vec![0u8; len as usize];
    // SAFETY: `pageable` outlives the copy, synchronised below.
    unsafe { b.copy_htod_async(x, pageable.as_ptr(), len, s).unwrap() };
    // The reference says a pageable copy "might be synchronous", no more: the model keeps it
    // asynchronous, so code that relies on it completing by the return fails on `sim`.
    assert!(
        !b.stream_query(s).unwrap(),
        "a pageable copy is only stream-ordered"
    );
    b.stream_synchronize(s).unwrap();
    let c = b.device().counters();
    assert_eq!(c.pageable_copies, 1);
    assert_eq!(c.copies_h2d, 2);
    // SAFETY: nothing is in flight.
    unsafe { b.host_free_pinned(pinned).unwrap() };
    b.free(x).unwrap();
}

#[test]
fn bandwidth_model_reserves_each_copy_for_its_bytes_and_serialises_a_direction() {
    let b = SimBackend::new(SimConfig {
        bandwidth: Some(Bandwidth {
            h2d: 2e9,
            d2h: 2e9,
            d2d: 1e12,
            pageable_factor: 0.5,
        }),
        ..SimConfig::default()
    });
    let len = 8u64 << 20;
    let (x, y) = (b.alloc(len).unwrap(), b.alloc(len).unwrap());
    let (h1, h2) = (
        b.host_alloc_pinned(len).unwrap(),
        b.host_alloc_pinned(len).unwrap(),
    );
    let (s1, s2) = (b.stream_create().unwrap(), b.stream_create().unwrap());
    // SAFETY: synchronised before the buffers are freed.
    unsafe {
        b.copy_htod_async(x, h1, len, s1).unwrap();
        b.copy_dtoh_async(h2, y, len, s2).unwrap();
        b.copy_htod_async(y, h2, len, s2).unwrap();
    }
    b.synchronize().unwrap();
    // The model's schedule, not the wall clock: each copy is reserved for exactly its bytes over
    // the link's bandwidth, and the two host-to-device copies share their link one after the
    // other. (That the directions are independent links is a unit test of the model in
    // `vramswap-sim`, with a controlled clock.)
    let sim = b.device();
    let up = sim.link_intervals(LinkDir::HostToDevice);
    let down = sim.link_intervals(LinkDir::DeviceToHost);
    assert_eq!((up.len(), down.len()), (2, 1));
    let per_copy = Duration::from_secs_f64(len as f64 / 2e9);
    for (s, e) in up.iter().chain(&down) {
        let d = *e - *s;
        assert!(
            d >= per_copy.mul_f64(0.999) && d <= per_copy.mul_f64(1.001),
            "{d:?}"
        );
    }
    assert!(
        up[1].0 >= up[0].1,
        "copies in one direction are serialised on their link"
    );
    // SAFETY: nothing in flight.
    unsafe {
        b.host_free_pinned(h1).unwrap();
        b.host_free_pinned(h2).unwrap();
    }
    b.free(x).unwrap();
    b.free(y).unwrap();
}

#[test]
fn freeing_a_reservation_with_live_mappings_is_refused() {
    let b = sim();
    let g = b.properties().vmm_granularity;
    let va = b.reserve(g).unwrap();
    let h = b.create_physical(g).unwrap();
    b.map(va, g, h).unwrap();
    let err = b.free_reservation(va, g).unwrap_err();
    assert_eq!(err.driver_name(), Some("CUDA_ERROR_NOT_PERMITTED"), "{err}");
    b.unmap(va, g).unwrap();
    b.free_reservation(va, g).unwrap();
    b.release_physical(h).unwrap();
    let l = b.device().leaks();
    assert!(l.is_clean(), "{l:?}");
}

#[test]
fn device_cannot_write_read_only_registered_memory() {
    let b = sim();
    let mut buf = vec![0u8; 8192];
    let x = b.alloc(8192).unwrap();
    // SAFETY: `buf` outlives the registration, which is undone below.
    unsafe { b.host_register(buf.as_mut_ptr(), 8192, true).unwrap() };
    // SAFETY: as above; the copy is refused before touching memory.
    let err = unsafe { b.copy_dtoh_async(buf.as_mut_ptr(), x, 8192, Stream::DEFAULT) }.unwrap_err();
    assert_eq!(err.driver_name(), Some("CUDA_ERROR_NOT_PERMITTED"), "{err}");
    // Reading from it is fine.
    // SAFETY: synchronised right after.
    unsafe {
        b.copy_htod_async(x, buf.as_ptr(), 8192, Stream::DEFAULT)
            .unwrap()
    };
    b.synchronize().unwrap();
    // SAFETY: no copy in flight.
    unsafe { b.host_unregister(buf.as_mut_ptr()).unwrap() };
    b.free(x).unwrap();
}

#[test]
fn stale_device_pointer_is_an_illegal_address() {
    let b = sim();
    let x = b.alloc(4096).unwrap();
    b.free(x).unwrap();
    let err = backend::upload(&b, x, &[1, 2, 3], Stream::DEFAULT).unwrap_err();
    assert_eq!(
        err.driver_name(),
        Some("CUDA_ERROR_ILLEGAL_ADDRESS"),
        "{err}"
    );
}

#[test]
fn leak_report_lists_what_was_not_freed() {
    let b = sim();
    let _x = b.alloc(4096).unwrap();
    let p = b.host_alloc_pinned(4096).unwrap();
    let _s = b.stream_create().unwrap();
    let l = b.device().leaks();
    assert_eq!(l.allocations, 1);
    assert_eq!(l.pinned_bytes, 4096);
    assert_eq!(l.streams, 1);
    assert!(!l.is_clean());
    // SAFETY: nothing in flight.
    unsafe { b.host_free_pinned(p).unwrap() };
}

#[test]
fn sim_configuration_string_is_parsed_strictly() {
    let c = parse_sim_config("capacity_mb:512,h2d_gbps:12.5,race:error").unwrap();
    assert_eq!(c.capacity, 512 << 20);
    assert_eq!(c.race_mode, RaceMode::Error);
    assert_eq!(c.bandwidth.unwrap().h2d, 12.5e9);
    let err = parse_sim_config("capacity:512").unwrap_err().to_string();
    assert!(err.contains("unknown key `capacity`"), "{err}");
    assert!(parse_sim_config("capacity_mb:-1").is_err());
    assert!(parse_sim_config("race:maybe").is_err());
}

#[test]
fn device_synchronisation_waits_for_work_left_on_a_destroyed_stream() {
    let b = SimBackend::new(SimConfig {
        bandwidth: Some(Bandwidth {
            d2d: 1e9,
            ..Bandwidth::default()
        }),
        ..SimConfig::default()
    });
    let len = 32u64 << 20; // 34 ms at 1 GB/s
    let (x, y) = (b.alloc(len).unwrap(), b.alloc(len).unwrap());
    let s1 = b.stream_create().unwrap();
    b.copy_dtod_async(y, x, len, s1).unwrap();
    b.stream_destroy(s1).unwrap(); // returns at once; the copy still runs
    b.synchronize().unwrap();
    let c = b.device().counters();
    assert_eq!(c.copies_d2d, 1);
    // The host saw that work finish: freeing its memory now is no use-after-free.
    b.free(y).unwrap();
    b.free(x).unwrap();
    let v = b.device().violations();
    assert!(v.is_empty(), "{v:?}");
}

#[test]
fn every_concurrent_device_synchronisation_waits_for_destroyed_streams() {
    let b = SimBackend::new(SimConfig {
        bandwidth: Some(Bandwidth {
            h2d: 20e6,
            ..Bandwidth::default()
        }),
        ..SimConfig::default()
    });
    let sim = b.device().clone();
    let s = sim.stream_create(false).unwrap();
    let d = sim.alloc(4 << 20).unwrap();
    let h = sim.host_alloc(4 << 20).unwrap();
    // SAFETY: `h` is freed only after the synchronisations below.
    unsafe { sim.copy_htod(d, h, 4 << 20, s).unwrap() }; // 200 ms on the model
    sim.stream_destroy(s).unwrap();
    let other = sim.clone();
    let t = std::thread::spawn(move || other.synchronize().unwrap());
    sim.synchronize().unwrap();
    // Both returned only after the copy: freeing its pinned source is no use-after-free.
    sim.host_free(h).unwrap();
    t.join().unwrap();
    let v = sim.violations();
    assert!(v.is_empty(), "{v:?}");
    sim.free(d).unwrap();
}

#[test]
#[cfg(feature = "cli")] // `vramswap::bench` is part of the command-line tool
fn the_bandwidth_bench_still_measures_after_the_links_interval_log_is_full() {
    use vramswap::bench::bandwidth::{self, BandwidthConfig};
    // The device keeps only the latest LINK_LOG intervals per link; the bench used to count
    // the log's length before and after a run, so once it was full every later measurement
    // saw no new copy ("the bandwidth model recorded no copy"), and `bench` failed part-way
    // through its sweep. Small chunks overflow the log within the first few measurements.
    let b: vramswap::backend::SharedBackend = std::sync::Arc::new(SimBackend::new(SimConfig {
        bandwidth: Some(Bandwidth {
            // 1 KiB in exactly 1 µs, so no rounding of the model's times flatters a sweep.
            h2d: 1.024e9,
            d2h: 1.024e9,
            d2d: 1e12,
            pageable_factor: 0.5,
        }),
        ..SimConfig::default()
    }));
    let chunk = 1u64 << 10;
    let cfg = BandwidthConfig {
        buffer_bytes: 1 << 20,
        chunk_sizes: vec![chunk, 64 << 10],
        stream_counts: vec![1, 2],
        reps: 1,
    };
    let r = bandwidth::run(&b, &cfg, &mut |_| {}).unwrap();
    let sim = b.sim_device().unwrap();
    // Each direction alone made more copies than the log holds.
    assert!(sim.counters().copies_h2d > vramswap_sim::LINK_LOG as u64);
    assert_eq!(
        sim.link_intervals(LinkDir::HostToDevice).len(),
        vramswap_sim::LINK_LOG
    );
    for d in [&r.h2d, &r.d2h] {
        assert_eq!(d.sweep.len(), 4);
        for p in &d.sweep {
            assert!(p.gbps > 0.0 && p.ratio <= 1.0 + 1e-6, "{p:?}");
        }
    }
    assert!(r.d2d.gbps > 0.0 && r.bidir.gbps > 0.0);
}
