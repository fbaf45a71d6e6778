//! Frees whose streams were destroyed by their user: each either succeeds, with the block
//! released, or fails with nothing changed.

use std::sync::Arc;

use super::*;
use crate::backend::{self, sim::SimBackend, Backend};
use vramswap_sim::FaultOp;

fn setup(conf: &str) -> (Arc<SimBackend>, CachingAllocator) {
    let backend = Arc::new(SimBackend::with_capacity(64 << 20));
    let config = AllocatorConfig::parse(conf).unwrap();
    let alloc = CachingAllocator::new(backend.clone(), config).unwrap();
    (backend, alloc)
}

fn destroy(backend: &SimBackend, s: Stream) {
    backend.stream_synchronize(s).unwrap();
    backend.stream_destroy(s).unwrap();
}

fn first_word(backend: &SimBackend, p: DevicePtr) -> u32 {
    let mut w = [0u8; 4];
    backend::download(backend, &mut w, p, Stream::default()).unwrap();
    u32::from_le_bytes(w)
}

fn assert_double_free(alloc: &CachingAllocator, p: DevicePtr) {
    let e = alloc.free(p).unwrap_err();
    assert!(e.to_string().contains("double free"), "{e}");
}

#[test]
fn free_after_a_recorded_stream_was_destroyed_waits_for_the_device() {
    let (backend, alloc) = setup("");
    let s = backend.stream_create().unwrap();
    let p = alloc.allocate(1000, Stream::default()).unwrap();
    alloc.record_stream(p, s).unwrap();
    destroy(&backend, s);
    let syncs = alloc.stats().num_sync_all_streams;
    alloc.free(p).unwrap();
    let st = alloc.stats();
    assert_eq!(st.allocated_bytes.current, 0);
    assert_eq!(st.active_bytes.current, 0, "released at once, not parked");
    assert_eq!(st.num_sync_all_streams, syncs + 1);
    assert_double_free(&alloc, p);
    alloc.lock().pool.check().unwrap();
}

#[test]
fn poisoned_free_on_a_destroyed_stream_fills_on_the_default_stream() {
    let (backend, alloc) = setup("poison:true");
    let s = backend.stream_create().unwrap();
    let p = alloc.allocate(4096, s).unwrap();
    destroy(&backend, s);
    alloc.free(p).unwrap();
    assert_eq!(alloc.stats().allocated_bytes.current, 0);
    assert_eq!(first_word(&backend, p), POISON_PATTERN);
    assert_double_free(&alloc, p);
}

#[test]
fn parked_block_on_a_destroyed_stream_is_released_at_the_next_allocation() {
    let (backend, alloc) = setup("poison:true");
    let (s, s2) = (
        backend.stream_create().unwrap(),
        backend.stream_create().unwrap(),
    );
    let p = alloc.allocate(4096, s).unwrap();
    alloc.record_stream(p, s2).unwrap();
    alloc.free(p).unwrap();
    assert_eq!(alloc.stats().active_bytes.current, 4096, "parked");
    destroy(&backend, s);
    backend.stream_synchronize(s2).unwrap();
    let q = alloc.allocate(512, Stream::default()).unwrap();
    assert_eq!(alloc.stats().active_bytes.current, 512);
    assert_eq!(first_word(&backend, p), POISON_PATTERN);
    alloc.free(q).unwrap();
    destroy(&backend, s2);
}

#[test]
fn a_forgotten_stream_is_never_named_again() {
    let (backend, alloc) = setup("");
    let (s, s2) = (
        backend.stream_create().unwrap(),
        backend.stream_create().unwrap(),
    );
    let cached = alloc.allocate(8192, s).unwrap();
    let live = alloc.allocate(1000, s).unwrap();
    let used = alloc.allocate(1000, Stream::default()).unwrap();
    alloc.free(cached).unwrap();
    alloc.record_stream(used, s).unwrap();
    // A block of `s` borrowed by `s2` leaves an event of `s` behind.
    let borrowed = alloc.allocate(8192, s2).unwrap();
    assert_eq!(borrowed, cached);
    alloc.free(borrowed).unwrap();
    backend.stream_synchronize(s).unwrap();
    alloc.forget_stream(s);
    backend.stream_destroy(s).unwrap();
    {
        let st = alloc.lock();
        st.pool.check().unwrap();
        assert!(st.used_on.is_empty());
        assert!(st.stream_events.iter().all(|(x, _)| *x != s));
        let of_s = st
            .pool
            .segments()
            .flat_map(|(i, _)| st.pool.blocks_of(i))
            .any(|(_, b)| b.stream == s.0);
        assert!(!of_s, "no block names the destroyed stream");
    }
    let syncs = alloc.stats().num_sync_all_streams;
    // Frees and reuses on the default stream: no event on `s`, no device-wide wait.
    alloc.free(live).unwrap();
    alloc.free(used).unwrap();
    let again = alloc.allocate(1000, Stream::default()).unwrap();
    alloc.free(again).unwrap();
    assert_eq!(alloc.stats().num_sync_all_streams, syncs);
    assert_eq!(alloc.stats().allocated_bytes.current, 0);
    alloc.lock().pool.check().unwrap();
    destroy(&backend, s2);
}

#[test]
fn a_poison_fill_that_fails_leaves_the_block_allocated() {
    let (backend, alloc) = setup("poison:true");
    let dev = backend.device();
    let p = alloc.allocate(4096, Stream::default()).unwrap();
    // The fill on the block's stream and the one on the default stream both fail.
    dev.inject_fault(FaultOp::Launch, 1);
    dev.inject_fault(FaultOp::Launch, 2);
    let before = alloc.stats();
    alloc.free(p).unwrap_err();
    let after = alloc.stats();
    assert_eq!(
        after.allocated_bytes.current,
        before.allocated_bytes.current
    );
    assert_eq!(after.active_bytes.current, before.active_bytes.current);
    // Nothing changed: the retry frees it.
    alloc.free(p).unwrap();
    assert_eq!(alloc.stats().allocated_bytes.current, 0);
    assert_eq!(first_word(&backend, p), POISON_PATTERN);
    alloc.lock().pool.check().unwrap();
}

#[test]
fn a_parked_block_is_released_even_when_its_poison_fill_fails() {
    let (backend, alloc) = setup("poison:true");
    let dev = backend.device();
    let s = backend.stream_create().unwrap();
    let p = alloc.allocate(4096, Stream::default()).unwrap();
    alloc.record_stream(p, s).unwrap();
    alloc.free(p).unwrap();
    backend.stream_synchronize(s).unwrap();
    dev.inject_fault(FaultOp::Launch, 1);
    dev.inject_fault(FaultOp::Launch, 2);
    // The allocation is about other memory: it succeeds, and the parked block is released.
    let q = alloc.allocate(512, Stream::default()).unwrap();
    assert_eq!(alloc.stats().active_bytes.current, 512);
    alloc.free(q).unwrap();
    destroy(&backend, s);
}

#[test]
fn poison_on_a_backend_that_cannot_fill_is_refused_up_front() {
    // Every fill fails (as on the cuda backend without its kernels): with poison on, no free
    // could ever succeed, so the allocator refuses the configuration instead.
    let backend = Arc::new(SimBackend::with_capacity(64 << 20));
    backend.device().inject_fault(FaultOp::Launch, 1);
    let config = AllocatorConfig::parse("poison:true").unwrap();
    let Err(e) = CachingAllocator::new(backend.clone(), config.clone()) else {
        panic!("poison without a working fill was accepted");
    };
    assert!(matches!(e, Error::Unsupported(_)), "{e}");
    assert!(e.to_string().contains("poison"), "{e}");
    assert!(
        backend.device().leaks().is_clean(),
        "the probe freed its scratch"
    );
    // Where the fill works, the same configuration is accepted.
    let alloc = CachingAllocator::new(backend, config).unwrap();
    let p = alloc.allocate(4096, Stream::DEFAULT).unwrap();
    alloc.free(p).unwrap();
}

#[test]
fn a_request_larger_than_the_device_skips_the_out_of_memory_ladder() {
    // Nothing freed could make 1 TiB fit a 64 MiB device: the cache stays, no handler runs.
    let (backend, alloc) = setup("");
    let called = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let c = called.clone();
    alloc.add_pressure_handler(Box::new(move |_| {
        c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        0
    }));
    let p = alloc.allocate(8 << 20, Stream::DEFAULT).unwrap();
    alloc.free(p).unwrap();
    let reserved = alloc.stats().reserved_bytes.current;
    let e = alloc.allocate(1 << 40, Stream::DEFAULT).unwrap_err();
    assert!(matches!(e, Error::AllocatorOutOfMemory { .. }), "{e}");
    assert_eq!(
        alloc.stats().reserved_bytes.current,
        reserved,
        "the cache was kept"
    );
    assert_eq!(called.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(alloc.stats().num_ooms, 1);
    drop(backend);
}
