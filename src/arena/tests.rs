use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::backend::sim::SimBackend;
use crate::backend::Backend;

fn sim() -> Arc<SimBackend> {
    Arc::new(SimBackend::with_capacity(1 << 30))
}

fn arena(b: &Arc<SimBackend>, config: ArenaConfig) -> Arc<PinnedArena> {
    PinnedArena::new(b.clone(), config).unwrap()
}

fn small() -> ArenaConfig {
    ArenaConfig {
        slab_size: 4 << 20,
        ..Default::default()
    }
}

#[test]
fn ranges_are_exact_size_rounded_only_to_the_alignment() {
    let b = sim();
    let a = arena(&b, small());
    let r = a.alloc(5000).unwrap();
    assert_eq!(r.len(), 5000);
    assert_eq!(r.as_ptr() as u64 % ARENA_ALIGN, 0);
    let s = a.stats();
    assert_eq!(s.used_bytes, 8192);
    assert_eq!(s.requested_bytes, 5000);
    assert_eq!(s.pinned_bytes, 4 << 20);
    assert_eq!(s.largest_free, (4 << 20) - 8192);
}

#[test]
fn dropped_ranges_coalesce_so_a_full_slab_request_fits_again() {
    let b = sim();
    let a = arena(&b, small());
    let parts: Vec<_> = (0..4).map(|_| a.alloc(1 << 20).unwrap()).collect();
    assert_eq!(a.stats().slabs, 1);
    drop(parts);
    let whole = a.alloc(4 << 20).unwrap();
    assert_eq!(a.stats().slabs, 1, "coalesced slab reused, no new slab");
    drop(whole);
}

#[test]
fn large_request_gets_one_contiguous_slab_of_its_own() {
    let b = sim();
    let a = arena(&b, small());
    let mut r = a.alloc(10 << 20).unwrap();
    r.as_mut_slice().fill(3);
    assert!(r.as_slice().iter().all(|&x| x == 3));
    let s = a.stats();
    assert_eq!(s.slabs, 1);
    assert_eq!(s.pinned_bytes, 10 << 20);
}

#[test]
fn budget_exceeded_is_a_clear_error_and_changes_nothing() {
    let b = sim();
    let a = arena(
        &b,
        ArenaConfig {
            budget: Some(6 << 20),
            ..small()
        },
    );
    let _r = a.alloc(4 << 20).unwrap();
    let e = a.alloc(3 << 20).unwrap_err();
    assert!(
        matches!(e, Error::HostBudgetExceeded { requested, budget, .. } if requested == 3 << 20 && budget == 6 << 20),
        "{e}"
    );
    assert!(e.is_out_of_memory());
    // A smaller request still fits: the last slab is clipped to the budget.
    let r2 = a.alloc(2 << 20).unwrap();
    assert_eq!(a.stats().pinned_bytes, 6 << 20);
    drop(r2);
}

#[test]
fn budget_pressure_trims_empty_slabs_before_failing() {
    let b = sim();
    let a = arena(
        &b,
        ArenaConfig {
            budget: Some(8 << 20),
            ..small()
        },
    );
    drop(a.alloc(4 << 20).unwrap());
    drop(a.alloc(4 << 20).unwrap());
    // An empty 4 MiB slab stands in the way of an 8 MiB request; it is trimmed.
    let r = a.alloc(8 << 20).unwrap();
    assert_eq!(a.stats().slabs, 1);
    drop(r);
}

#[test]
fn trim_unpins_only_empty_slabs() {
    let b = sim();
    let a = arena(&b, small());
    let keep = a.alloc(3 << 20).unwrap();
    let gone = a.alloc(3 << 20).unwrap();
    assert_eq!(a.stats().slabs, 2);
    drop(gone);
    assert_eq!(a.trim(), 4 << 20);
    assert_eq!(a.stats().slabs, 1);
    assert_eq!(b.device().leaks().pinned_bytes, 4 << 20);
    drop(keep);
}

#[test]
fn dropping_the_arena_unpins_every_slab() {
    let b = sim();
    let a = arena(&b, small());
    let r = a.alloc(1 << 20).unwrap();
    let r2 = a.alloc(9 << 20).unwrap();
    drop(a);
    assert!(
        b.device().leaks().pinned_bytes > 0,
        "ranges keep the arena alive"
    );
    drop((r, r2));
    assert_eq!(b.device().leaks().pinned_bytes, 0);
}

#[test]
fn mapped_slabs_are_registered_in_chunks_and_unregistered_on_drop() {
    let b = sim();
    let a = arena(
        &b,
        ArenaConfig {
            source: SlabSource::MmapRegister,
            register_chunk: 1 << 20,
            pin_threads: 3,
            ..small()
        },
    );
    let mut r = a.alloc(3 << 20).unwrap();
    assert_eq!(a.registrations(), vec![4]);
    assert_eq!(b.device().leaks().registered_ranges, 4);
    assert_eq!(b.device().leaks().pinned_bytes, 0);
    r.as_mut_slice().fill(9);
    drop(r);
    assert!(a.stats().pin_time > Duration::ZERO);
    drop(a);
    assert_eq!(b.device().leaks().registered_ranges, 0);
}

#[test]
fn mapped_slab_memory_is_pinned_for_the_device() {
    let b = sim();
    let a = arena(
        &b,
        ArenaConfig {
            source: SlabSource::MmapRegister,
            ..small()
        },
    );
    let mut r = a.alloc(1 << 20).unwrap();
    r.as_mut_slice().fill(0x5a);
    let d = b.alloc(1 << 20).unwrap();
    let s = b.stream_create().unwrap();
    // SAFETY: `r` outlives the copy, waited for below, and is not written meanwhile.
    unsafe { b.copy_htod_async(d, r.as_ptr(), 1 << 20, s).unwrap() };
    b.stream_synchronize(s).unwrap();
    let mut back = vec![0u8; 1 << 20];
    crate::backend::download(b.as_ref(), &mut back, d, s).unwrap();
    assert!(back.iter().all(|&x| x == 0x5a));
    b.free(d).unwrap();
    b.stream_destroy(s).unwrap();
}

#[test]
fn failed_pinning_leaves_the_budget_untouched() {
    let b = sim();
    b.inject_fault(vramswap_sim::FaultOp::HostAlloc, 1);
    let a = arena(&b, small());
    assert!(a.alloc(100).is_err());
    assert_eq!(a.stats(), ArenaStats::default());
    let r = a.alloc(100).unwrap();
    drop(r);
}

#[test]
fn zero_byte_range_pins_nothing() {
    let b = sim();
    let a = arena(&b, small());
    let r = a.alloc(0).unwrap();
    assert!(r.is_empty());
    assert_eq!(r.as_slice(), &[] as &[u8]);
    assert_eq!(a.stats().slabs, 0);
}

#[test]
fn ranges_can_be_used_and_dropped_from_other_threads() {
    let b = sim();
    let a = arena(&b, small());
    std::thread::scope(|s| {
        for t in 0..4u8 {
            let a = a.clone();
            s.spawn(move || {
                for i in 0..50u64 {
                    let mut r = a.alloc(1000 + i * 97).unwrap();
                    r.as_mut_slice().fill(t);
                    assert!(r.as_slice().iter().all(|&x| x == t));
                }
            });
        }
    });
    assert_eq!(a.stats().used_bytes, 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    /// Live ranges never overlap in memory, stats add up, and everything returns on drop.
    #[test]
    fn live_ranges_are_disjoint_and_fully_returned(sizes in proptest::collection::vec(1u64..3_000_000, 1..40), drops in proptest::collection::vec(any::<bool>(), 40)) {
        let b = sim();
        let a = arena(&b, small());
        let mut live: Vec<HostRange> = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            live.push(a.alloc(n).unwrap());
            if drops[i] && live.len() > 1 {
                live.remove(i % live.len());
            }
            let mut spans: Vec<(u64, u64)> = live.iter().map(|r| (r.as_ptr() as u64, r.len())).collect();
            spans.sort();
            for w in spans.windows(2) {
                prop_assert!(w[0].0 + w[0].1 <= w[1].0);
            }
            let s = a.stats();
            prop_assert_eq!(s.requested_bytes, live.iter().map(|r| r.len()).sum::<u64>());
            prop_assert!(s.used_bytes <= s.pinned_bytes);
        }
        drop(live);
        prop_assert_eq!(a.stats().used_bytes, 0);
        a.trim();
        prop_assert_eq!(b.device().leaks().pinned_bytes, 0);
    }
}
