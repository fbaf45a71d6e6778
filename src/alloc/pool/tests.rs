use proptest::prelude::*;

use super::*;

const MAX: u64 = u64::MAX;
const MIB: u64 = 1 << 20;

fn pool_with_segment(size: u64, kind: PoolKind) -> (BlockPool, u32) {
    let mut p = BlockPool::new();
    let b = p.add_segment(0x1000_0000, size, size, 1, kind, Backing::Fixed);
    (p, b)
}

#[test]
fn taking_a_block_splits_off_the_rest() {
    let (mut p, b) = pool_with_segment(2 * MIB, PoolKind::Small);
    let a = p.take(b, 4096, MAX);
    assert_eq!(p.block(a).size, 4096);
    assert_eq!(p.free_bytes(), 2 * MIB - 4096);
    assert_eq!(p.inactive_split(), (2 * MIB - 4096, 1));
    p.check().unwrap();
}

#[test]
fn only_blocks_given_to_a_user_are_marked_handed_out() {
    let (mut p, b) = pool_with_segment(2 * MIB, PoolKind::Small);
    assert!(!p.block(b).handed_out);
    let a = p.take(b, 4096, MAX);
    p.set_user(a, 4000, 7);
    let rest = p.find_block_at(0x1000_0000 + 4096).unwrap();
    assert!(p.block(a).handed_out);
    assert!(
        !p.block(rest).handed_out,
        "the split-off rest was never handed out"
    );
    // Freed, the block keeps the mark (a second free is a double free) and absorbs the rest.
    let merged = p.release(a);
    assert_eq!(merged, a);
    assert!(p.block(a).handed_out);
    assert_eq!(p.find_block_at(0x1000_0000 + 4096), None);
    p.check().unwrap();
}

#[test]
fn freed_neighbours_coalesce_back_into_one_block() {
    let (mut p, b) = pool_with_segment(2 * MIB, PoolKind::Small);
    let a = p.take(b, 4096, MAX);
    let f = p.find_free(PoolKind::Small, 1, 8192, MAX).unwrap();
    let c = p.take(f, 8192, MAX);
    p.release(a);
    p.release(c);
    p.check().unwrap();
    assert_eq!(p.empty_segments().len(), 1);
    assert_eq!(p.inactive_split(), (0, 0));
}

#[test]
fn free_blocks_of_different_streams_do_not_merge() {
    let (mut p, b) = pool_with_segment(2 * MIB, PoolKind::Small);
    let a = p.take(b, 4096, MAX);
    let rest = p.find_free(PoolKind::Small, 1, 4096, MAX).unwrap();
    p.retag(rest, 2);
    p.release(a);
    p.check().unwrap();
    assert!(p.empty_segments().is_empty());
    p.merge_all_free();
    p.check().unwrap();
    assert_eq!(p.empty_segments().len(), 1);
}

#[test]
fn moving_a_stream_merges_its_free_blocks_into_the_new_one() {
    let (mut p, b) = pool_with_segment(2 * MIB, PoolKind::Small);
    let a = p.take(b, 4096, MAX);
    let f = p.find_free(PoolKind::Small, 1, 4096, MAX).unwrap();
    let c = p.take(f, 4096, MAX);
    let f = p.find_free(PoolKind::Small, 1, 4096, MAX).unwrap();
    let live = p.take(f, 4096, MAX);
    let a = p.release(a);
    p.retag(a, 2);
    p.release(c);
    p.check().unwrap();
    p.move_stream(1, 2);
    p.check().unwrap();
    assert_eq!(p.block(live).stream, 2, "allocated blocks move too");
    assert_eq!(p.segment(p.block(live).segment).stream, 2);
    assert_eq!(p.find_free(PoolKind::Small, 1, 512, MAX), None);
    assert_eq!(p.block(a).size, 8192, "merged with its moved neighbour");
    p.release(live);
    p.check().unwrap();
    assert_eq!(p.empty_segments().len(), 1);
}

#[test]
fn best_fit_prefers_the_smallest_block_that_fits() {
    let mut p = BlockPool::new();
    let first = p.add_segment(
        0x1000_0000,
        2 * MIB,
        2 * MIB,
        1,
        PoolKind::Small,
        Backing::Fixed,
    );
    let hole = p.take(first, 64 << 10, MAX);
    let rest = p
        .find_free(PoolKind::Small, 1, 2 * MIB - (64 << 10), MAX)
        .unwrap();
    p.take(rest, 2 * MIB - (64 << 10), MAX);
    p.release(hole);
    p.add_segment(
        0x2000_0000,
        2 * MIB,
        2 * MIB,
        1,
        PoolKind::Small,
        Backing::Fixed,
    );
    let got = p.find_free(PoolKind::Small, 1, 32 << 10, MAX).unwrap();
    assert_eq!(p.block(got).addr, 0x1000_0000);
}

#[test]
fn oversize_blocks_are_not_split_nor_used_for_small_requests() {
    let (mut p, b) = pool_with_segment(64 * MIB, PoolKind::Large);
    assert!(p.find_free(PoolKind::Large, 1, 2 * MIB, 32 * MIB).is_none());
    let a = p.take(b, 50 * MIB, 32 * MIB);
    assert_eq!(p.block(a).size, 64 * MIB);
}

#[test]
fn expandable_segment_grows_and_trims_its_tail() {
    let mut p = BlockPool::new();
    let b = p.add_segment(
        0x1000_0000,
        4 * MIB,
        64 * MIB,
        1,
        PoolKind::Large,
        Backing::Expandable,
    );
    let a = p.take(b, 3 * MIB / 2, MAX);
    let tail = p.grow(0, 4 * MIB, 1);
    assert_eq!(p.block(tail).size, 6 * MIB + MIB / 2);
    p.check().unwrap();
    let (start, cut) = p.trim_tail(0, 2 * MIB);
    assert_eq!((start, cut), (0x1000_0000 + 2 * MIB, 6 * MIB));
    p.check().unwrap();
    p.release(a);
    let (start, cut) = p.trim_tail(0, 2 * MIB);
    assert_eq!((start, cut), (0x1000_0000, 2 * MIB));
    assert_eq!(p.segments().count(), 0);
}

#[derive(Debug, Clone)]
enum Op {
    Alloc(u64, u64),
    Free(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1u64..600, 0u64..3).prop_map(|(k, s)| Op::Alloc(k * 512 * (1 + k % 7), s)),
        any::<usize>().prop_map(Op::Free),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn live_blocks_never_overlap_and_the_tiling_holds(ops in proptest::collection::vec(op(), 1..120)) {
        let mut p = BlockPool::new();
        let mut live: Vec<(u32, u64, u64)> = Vec::new();
        let mut next_base = 0x1000_0000u64;
        for o in ops {
            match o {
                Op::Alloc(size, stream) => {
                    let kind = PoolKind::of(size);
                    let idx = match p.find_free(kind, stream, size, MAX) {
                        Some(i) => i,
                        None => {
                            let seg = crate::alloc::sizing::segment_size(size).unwrap();
                            let b = p.add_segment(next_base, seg, seg, stream, kind, Backing::Fixed);
                            next_base += seg + 4096;
                            b
                        }
                    };
                    let a = p.take(idx, size, MAX);
                    let blk = p.block(a);
                    prop_assert!(blk.size >= size);
                    for &(_, addr, sz) in &live {
                        prop_assert!(blk.addr + blk.size <= addr || addr + sz <= blk.addr);
                    }
                    live.push((a, blk.addr, blk.size));
                }
                Op::Free(i) if !live.is_empty() => {
                    let (idx, _, _) = live.swap_remove(i % live.len());
                    p.release(idx);
                }
                Op::Free(_) => {}
            }
            p.check().map_err(TestCaseError::fail)?;
        }
        for (idx, _, _) in live.drain(..) {
            p.release(idx);
        }
        p.merge_all_free();
        let empties = p.empty_segments();
        prop_assert_eq!(empties.len(), p.segments().count());
        for s in empties {
            prop_assert!(p.remove_segment(s).is_some());
        }
        prop_assert_eq!(p.free_bytes(), 0);
    }
}

#[test]
fn whole_free_granules_are_carved_out_and_filled_again() {
    let mut p = BlockPool::new();
    let b = p.add_segment(
        0x1000_0000,
        8 * MIB,
        64 * MIB,
        1,
        PoolKind::Large,
        Backing::Expandable,
    );
    let a = p.take(b, 3 * MIB / 2, MAX);
    let rest = p.find_free(PoolKind::Large, 1, 4 * MIB, MAX).unwrap();
    let c = p.take(rest, 4 * MIB + MIB / 2, MAX);
    let _ = c;
    p.release(a);
    // Free: [0, 1.5 MiB) and [6, 8 MiB). Whole 2 MiB granules: none in the first, [6, 8) in
    // the second.
    let holes = p.carve_unmappable(0, 2 * MIB);
    assert_eq!(holes, vec![(0x1000_0000 + 6 * MIB, 2 * MIB)]);
    p.check().unwrap();
    assert!(!p.drop_unmapped_tail(0));
    assert_eq!(p.segment(0).size, 6 * MIB);
    p.check().unwrap();
    assert_eq!(p.mapped_ranges(0), vec![(0x1000_0000, 6 * MIB)]);
}

#[test]
fn a_middle_hole_is_found_and_merges_with_its_free_neighbours() {
    let mut p = BlockPool::new();
    let b = p.add_segment(
        0x1000_0000,
        8 * MIB,
        64 * MIB,
        1,
        PoolKind::Large,
        Backing::Expandable,
    );
    let a = p.take(b, 2 * MIB, MAX);
    let mid = p.find_free(PoolKind::Large, 1, 4 * MIB, MAX).unwrap();
    let m = p.take(mid, 4 * MIB, MAX);
    let _tail = p.take(
        p.find_free(PoolKind::Large, 1, 2 * MIB, MAX).unwrap(),
        2 * MIB,
        MAX,
    );
    p.release(m);
    let holes = p.carve_unmappable(0, 2 * MIB);
    assert_eq!(holes, vec![(0x1000_0000 + 2 * MIB, 4 * MIB)]);
    assert_eq!(p.free_bytes(), 0);
    assert_eq!(p.mapped_ranges(0).len(), 2);
    let (h, addr, size) = p.hole_for(0, 1, 3 * MIB, 2 * MIB).unwrap();
    assert_eq!((addr, size), (0x1000_0000 + 2 * MIB, 4 * MIB));
    // A 1.5 MiB request needs one of the hole's two 2 MiB pages; the other stays unmapped.
    let (h2, addr2, size2) = p.hole_for(0, 1, 3 * MIB / 2, 2 * MIB).unwrap();
    assert_eq!((h2, addr2, size2), (h, addr, 2 * MIB));
    let m = p.map_hole(h, size2, 1);
    assert_eq!(p.block(m).size, 2 * MIB);
    p.check().unwrap();
    assert_eq!(p.free_bytes(), 2 * MIB);
    assert_eq!(
        p.mapped_ranges(0),
        vec![(0x1000_0000, 4 * MIB), (0x1000_0000 + 6 * MIB, 2 * MIB)]
    );
    // The rest of the hole, mapped too, merges with the free block before it.
    let (h3, addr3, size3) = p.hole_for(0, 1, 4 * MIB, 2 * MIB).unwrap();
    assert_eq!((addr3, size3), (0x1000_0000 + 4 * MIB, 2 * MIB));
    let m = p.map_hole(h3, size3, 1);
    assert_eq!(p.block(m).size, 4 * MIB);
    p.check().unwrap();
    assert_eq!(p.free_bytes(), 4 * MIB);
    let _ = a;
}
