//! The copy engine on the simulated device: chunked multi-stream copies, readiness per group,
//! verification, failure handling, and stream ordering for consumers.

mod common;

use std::sync::Arc;

use rand::{RngCore, SeedableRng};
use vramswap::backend::sim::SimBackend;
use vramswap::backend::{self, SharedBackend, Stream};
use vramswap::transfer::{
    host_checksums, CopyEngine, CopyPlan, Direction, Group, HostPiece, TransferConfig,
};
use vramswap::Error;
use vramswap_sim::FaultOp;

fn setup(chunk: u64, streams: usize) -> (SharedBackend, Arc<CopyEngine>) {
    let b: SharedBackend = Arc::new(SimBackend::with_capacity(512 << 20));
    let e = CopyEngine::new(
        b.clone(),
        TransferConfig {
            chunk_bytes: chunk,
            streams_per_direction: streams,
            verify: false,
        },
    )
    .unwrap();
    (b, Arc::new(e))
}

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::SmallRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

fn layers(n: usize, each: u64) -> Vec<Group> {
    (0..n)
        .map(|i| Group {
            name: format!("layer.{i}"),
            offset: i as u64 * each,
            len: each,
        })
        .collect()
}

/// A pinned host buffer holding `data`.
fn pinned(b: &SharedBackend, data: &[u8]) -> *mut u8 {
    let p = b.host_alloc_pinned(data.len() as u64).unwrap();
    // SAFETY: `p` holds `data.len()` bytes and nothing else uses it yet.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
    p
}

#[test]
fn upload_then_download_round_trips_through_many_chunks_and_streams() {
    let (b, e) = setup(100_000, 3);
    let len = 8 * 250_000;
    let data = random(len, 1);
    let src = pinned(&b, &data);
    let back = b.host_alloc_pinned(len as u64).unwrap();
    let d = b.alloc(len as u64).unwrap();
    let plan = CopyPlan::new(layers(8, 250_000), 100_000).unwrap();
    assert_eq!(plan.chunks.len(), 24);
    // SAFETY: `src` and `back` outlive the transfers, which are waited for (and dropped).
    unsafe {
        let up = e
            .start(
                Direction::HostToDevice,
                &HostPiece::whole(src, plan.extent()),
                d,
                &plan,
            )
            .unwrap();
        up.wait().unwrap();
        assert!(up.is_complete().unwrap());
        assert_eq!(up.bytes_done().unwrap(), len as u64);
        drop(up);
        let down = e
            .start(
                Direction::DeviceToHost,
                &HostPiece::whole(back, plan.extent()),
                d,
                &plan,
            )
            .unwrap();
        down.wait().unwrap();
        assert_eq!(std::slice::from_raw_parts(back, len), &data[..]);
    }
    let sim = b.sim_device().unwrap();
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
    // SAFETY: no transfer is in flight.
    unsafe {
        b.host_free_pinned(src).unwrap();
        b.host_free_pinned(back).unwrap();
    }
    b.free(d).unwrap();
}

#[test]
fn verification_passes_for_a_good_copy_and_names_the_corrupted_group() {
    let (b, e) = setup(64 << 10, 2);
    let len = 4 * (256 << 10);
    let data = random(len, 2);
    let src = pinned(&b, &data);
    let d = b.alloc(len as u64).unwrap();
    let plan = CopyPlan::new(layers(4, 256 << 10), 64 << 10).unwrap();
    let sums = host_checksums(&data, &plan.groups);
    // SAFETY: `src` outlives the transfer.
    let t = unsafe {
        e.start(
            Direction::HostToDevice,
            &HostPiece::whole(src, plan.extent()),
            d,
            &plan,
        )
        .unwrap()
    };
    t.verify(&sums, Stream::DEFAULT).unwrap();
    // Corrupt one byte of layer 2 on the device.
    backend::upload(
        b.as_ref(),
        d.offset(2 * (256 << 10) + 5),
        &[0xFF ^ data[2 * (256 << 10) + 5]],
        Stream::DEFAULT,
    )
    .unwrap();
    match t.verify(&sums, Stream::DEFAULT) {
        Err(Error::ChecksumMismatch { what, .. }) => assert!(what.contains("layer.2"), "{what}"),
        other => panic!("expected a checksum mismatch, got {other:?}"),
    }
    drop(t);
    // SAFETY: no transfer in flight.
    unsafe { b.host_free_pinned(src).unwrap() };
    b.free(d).unwrap();
}

#[test]
fn a_compute_stream_ordered_after_a_layer_reads_it_without_a_race() {
    let (b, e) = setup(32 << 10, 2);
    let len = 4 * (128 << 10);
    let data = random(len, 3);
    let src = pinned(&b, &data);
    let d = b.alloc(len as u64).unwrap();
    let out = b.alloc(128 << 10).unwrap();
    let compute = b.stream_create().unwrap();
    let plan = CopyPlan::new(layers(4, 128 << 10), 32 << 10).unwrap();
    // SAFETY: `src` outlives the transfer.
    let t = unsafe {
        e.start(
            Direction::HostToDevice,
            &HostPiece::whole(src, plan.extent()),
            d,
            &plan,
        )
        .unwrap()
    };
    // The consumer waits for layer 1 only, then reads it.
    t.order_before(compute, Some(1)).unwrap();
    b.copy_dtod_async(out, d.offset(128 << 10), 128 << 10, compute)
        .unwrap();
    let mut got = vec![0u8; 128 << 10];
    backend::download(b.as_ref(), &mut got, out, compute).unwrap();
    assert_eq!(got, data[128 << 10..256 << 10]);
    t.wait().unwrap();
    assert!(t.is_group_ready(3).unwrap());
    let v = b.sim_device().unwrap().violations();
    assert!(v.is_empty(), "{v:?}");
    drop(t);
    b.stream_destroy(compute).unwrap();
    // SAFETY: no transfer in flight.
    unsafe { b.host_free_pinned(src).unwrap() };
    b.free(d).unwrap();
    b.free(out).unwrap();
}

#[test]
fn reading_a_layer_without_ordering_is_caught_by_the_race_checker() {
    let (b, e) = setup(32 << 10, 2);
    let len = 2 * (128 << 10);
    let src = pinned(&b, &random(len, 4));
    let d = b.alloc(len as u64).unwrap();
    let out = b.alloc(128 << 10).unwrap();
    let compute = b.stream_create().unwrap();
    let plan = CopyPlan::new(layers(2, 128 << 10), 32 << 10).unwrap();
    // SAFETY: `src` outlives the transfer.
    let t = unsafe {
        e.start(
            Direction::HostToDevice,
            &HostPiece::whole(src, plan.extent()),
            d,
            &plan,
        )
        .unwrap()
    };
    b.copy_dtod_async(out, d, 128 << 10, compute).unwrap();
    t.wait().unwrap();
    b.synchronize().unwrap();
    assert!(!b.sim_device().unwrap().violations().is_empty());
    drop(t);
    b.stream_destroy(compute).unwrap();
    // SAFETY: no transfer in flight.
    unsafe { b.host_free_pinned(src).unwrap() };
    b.free(d).unwrap();
    b.free(out).unwrap();
}

#[test]
fn a_copy_that_fails_midway_returns_the_error_and_leaks_nothing() {
    let (b, e) = setup(16 << 10, 2);
    let len = 256 << 10;
    let src = pinned(&b, &random(len, 5));
    let d = b.alloc(len as u64).unwrap();
    let plan = CopyPlan::whole(len as u64, 16 << 10).unwrap();
    b.sim_device().unwrap().inject_fault(FaultOp::Copy, 7);
    // SAFETY: `src` outlives the attempt (the failed transfer waits for its queued chunks).
    let r = unsafe {
        e.start(
            Direction::HostToDevice,
            &HostPiece::whole(src, plan.extent()),
            d,
            &plan,
        )
    };
    assert!(r.is_err());
    // A retry succeeds.
    // SAFETY: as above.
    let t = unsafe {
        e.start(
            Direction::HostToDevice,
            &HostPiece::whole(src, plan.extent()),
            d,
            &plan,
        )
        .unwrap()
    };
    t.wait().unwrap();
    drop(t);
    drop(e);
    // SAFETY: no transfer in flight.
    unsafe { b.host_free_pinned(src).unwrap() };
    b.free(d).unwrap();
    common::assert_device_clean(b.sim_device().unwrap(), "transfer");
}

#[test]
fn bad_settings_are_configuration_errors() {
    let b: SharedBackend = Arc::new(SimBackend::with_capacity(64 << 20));
    let bad = TransferConfig {
        streams_per_direction: 0,
        ..TransferConfig::default()
    };
    assert!(matches!(CopyEngine::new(b, bad), Err(Error::Config { .. })));
}
