//! The caching allocator on the test backend (`sim` by default; the `cuda` backend with
//! `VRAMSWAP_TEST_BACKEND=cuda`, which `scripts/test.sh` runs over the emulated driver): bytes
//! written through its blocks survive cross-stream reuse and segment growth, and
//! `empty_cache` hands memory back to the device.

mod common;

use vramswap::alloc::{AllocatorConfig, CachingAllocator, LargeBlocks};
use vramswap::backend::{download, upload};

const MIB: u64 = 1 << 20;

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn blocks_hold_their_bytes_across_cross_stream_reuse() {
    let b = common::test_backend();
    let (s1, s2) = (b.stream_create().unwrap(), b.stream_create().unwrap());
    {
        let a = CachingAllocator::new(b.clone(), AllocatorConfig::default()).unwrap();
        let p = a.allocate(MIB, s1).unwrap();
        b.memset_d8_async(p, 0x11, MIB, s1).unwrap();
        a.free(p).unwrap();
        let q = a.allocate(MIB, s2).unwrap();
        assert_eq!(q, p);
        let data = pattern(MIB as usize, 3);
        upload(b.as_ref(), q, &data, s2).unwrap();
        let mut back = vec![0u8; MIB as usize];
        download(b.as_ref(), &mut back, q, s2).unwrap();
        assert_eq!(back, data);
        a.free(q).unwrap();
    }
    b.stream_destroy(s1).unwrap();
    b.stream_destroy(s2).unwrap();
}

#[test]
fn expandable_segments_keep_bytes_while_growing_and_return_pages() {
    let b = common::test_backend();
    let s = b.stream_create().unwrap();
    {
        let free0 = b.mem_info().unwrap().free;
        let a = CachingAllocator::new(
            b.clone(),
            AllocatorConfig {
                large_blocks: LargeBlocks::Expandable,
                ..Default::default()
            },
        )
        .unwrap();
        let p = a.allocate(3 * MIB, s).unwrap();
        let data = pattern(3 * MIB as usize, 7);
        upload(b.as_ref(), p, &data, s).unwrap();
        let q = a.allocate(9 * MIB, s).unwrap();
        b.memset_d8_async(q, 0x5A, 9 * MIB, s).unwrap();
        let mut back = vec![0u8; 3 * MIB as usize];
        download(b.as_ref(), &mut back, p, s).unwrap();
        assert_eq!(back, data);
        a.free(p).unwrap();
        a.free(q).unwrap();
        a.empty_cache().unwrap();
        assert_eq!(a.stats().reserved_bytes.current, 0);
        assert_eq!(b.mem_info().unwrap().free, free0);
    }
    b.stream_destroy(s).unwrap();
}

#[test]
fn page_pool_keeps_bytes_while_pages_move_between_blocks_and_returns_them() {
    let b = common::test_backend();
    let (s1, s2) = (b.stream_create().unwrap(), b.stream_create().unwrap());
    {
        let free0 = b.mem_info().unwrap().free;
        let a = CachingAllocator::new(
            b.clone(),
            AllocatorConfig {
                large_blocks: LargeBlocks::PagePool,
                ..Default::default()
            },
        )
        .unwrap();
        let keep = a.allocate(3 * MIB, s1).unwrap();
        let data = pattern(3 * MIB as usize, 9);
        upload(b.as_ref(), keep, &data, s1).unwrap();
        // A block of another size on another stream, freed: its pages go back to the pool
        // when the next request (of yet another size) needs them.
        let p = a.allocate(8 * MIB, s2).unwrap();
        b.memset_d8_async(p, 0x33, 8 * MIB, s2).unwrap();
        a.free(p).unwrap();
        // Larger than the freed block (a smaller request may take it whole, pages and all).
        let q = a.allocate(12 * MIB, s1).unwrap();
        let fill = pattern(12 * MIB as usize, 4);
        upload(b.as_ref(), q, &fill, s1).unwrap();
        let mut back = vec![0u8; 12 * MIB as usize];
        download(b.as_ref(), &mut back, q, s1).unwrap();
        assert_eq!(back, fill);
        let mut back = vec![0u8; 3 * MIB as usize];
        download(b.as_ref(), &mut back, keep, s1).unwrap();
        assert_eq!(back, data);
        assert!(a.stats().num_unmaps > 0, "pages moved between blocks");
        a.free(keep).unwrap();
        a.free(q).unwrap();
        a.empty_cache().unwrap();
        assert_eq!(a.stats().reserved_bytes.current, 0);
        assert_eq!(b.mem_info().unwrap().free, free0);
    }
    b.stream_destroy(s1).unwrap();
    b.stream_destroy(s2).unwrap();
}
