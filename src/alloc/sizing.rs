//! Size rules of the caching allocator: request rounding, segment sizes, split decisions. The
//! constants follow PyTorch's `CUDACachingAllocator`.

/// Every block size is a multiple of this many bytes.
pub const MIN_BLOCK_SIZE: u64 = 512;
/// Requests up to this size come from the small pool.
pub const SMALL_SIZE: u64 = 1 << 20;
/// Segment size of the small pool.
pub const SMALL_BUFFER: u64 = 2 << 20;
/// Segment size for large requests under [`MIN_LARGE_ALLOC`].
pub const LARGE_BUFFER: u64 = 20 << 20;
/// Large requests from this size on get a segment of their own size (rounded to 2 MiB).
pub const MIN_LARGE_ALLOC: u64 = 10 << 20;
/// Large segments are multiples of this.
pub const ROUND_LARGE: u64 = 2 << 20;

/// Which pool a block belongs to.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolKind {
    /// Requests of at most 1 MiB, packed into 2 MiB segments.
    Small,
    /// Everything else.
    Large,
}

impl PoolKind {
    /// The pool a rounded size belongs to.
    pub fn of(rounded: u64) -> PoolKind {
        if rounded <= SMALL_SIZE {
            PoolKind::Small
        } else {
            PoolKind::Large
        }
    }
}

fn round_up(v: u64, to: u64) -> Option<u64> {
    v.checked_add(to - 1).map(|x| x / to * to)
}

/// Rounds a request: at least 512 bytes, a multiple of 512, and with `divisions > 1` rounded up
/// to the next of `divisions` equal steps between powers of two (PyTorch's
/// `roundup_power2_divisions`). `None` when the size overflows.
///
/// ```
/// use vramswap::alloc::round_size;
/// assert_eq!(round_size(1, 0), Some(512));
/// assert_eq!(round_size(513, 0), Some(1024));
/// // 4 divisions between 1 MiB and 2 MiB: steps of 256 KiB.
/// assert_eq!(round_size((1 << 20) + 1, 4), Some((1 << 20) + (256 << 10)));
/// ```
pub fn round_size(size: u64, divisions: u32) -> Option<u64> {
    if size <= MIN_BLOCK_SIZE {
        return Some(MIN_BLOCK_SIZE);
    }
    if divisions > 1 {
        let floor = 1u64 << (63 - size.leading_zeros());
        let step = (floor / divisions as u64).max(MIN_BLOCK_SIZE);
        if floor != size {
            return round_up(size, step).and_then(|s| round_up(s, MIN_BLOCK_SIZE));
        }
    }
    round_up(size, MIN_BLOCK_SIZE)
}

/// Size of the segment allocated for a rounded request that the cache cannot serve. `None` on
/// overflow.
pub fn segment_size(rounded: u64) -> Option<u64> {
    if rounded <= SMALL_SIZE {
        Some(SMALL_BUFFER)
    } else if rounded < MIN_LARGE_ALLOC {
        Some(LARGE_BUFFER)
    } else {
        round_up(rounded, ROUND_LARGE)
    }
}

/// Whether a free block of `block` bytes serving `rounded` bytes is split, leaving the rest free.
pub fn should_split(kind: PoolKind, block: u64, rounded: u64, max_split: u64) -> bool {
    let remaining = block - rounded;
    match kind {
        PoolKind::Small => remaining >= MIN_BLOCK_SIZE,
        PoolKind::Large => rounded < max_split && remaining > SMALL_SIZE,
    }
}

/// Whether a free block of `block` bytes may serve `rounded` bytes under the max-split rule:
/// oversize blocks (≥ `max_split`) serve only oversize requests, and only with less than
/// [`LARGE_BUFFER`] to spare.
pub fn may_serve(block: u64, rounded: u64, max_split: u64) -> bool {
    if block < rounded {
        return false;
    }
    if rounded < max_split {
        block < max_split
    } else {
        block - rounded < LARGE_BUFFER
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_512_granular_and_never_shrinks() {
        for s in [0, 1, 511, 512, 513, 1000, 4096, 1 << 20, (1 << 20) + 7] {
            let r = round_size(s, 0).unwrap();
            assert!(
                r >= s && r.is_multiple_of(512) && r - s.max(1) < 512,
                "{s} -> {r}"
            );
        }
    }

    #[test]
    fn power2_divisions_round_to_steps() {
        assert_eq!(round_size((3 << 20) + 1, 2), Some(4 << 20));
        assert_eq!(round_size(3 << 20, 2), Some(3 << 20));
        assert_eq!(round_size((5 << 20) + 1, 4), Some(6 << 20));
        assert_eq!(round_size(8 << 20, 4), Some(8 << 20));
    }

    #[test]
    fn overflowing_sizes_are_none() {
        assert_eq!(round_size(u64::MAX, 0), None);
        assert_eq!(round_size(u64::MAX - 3, 8), None);
        assert_eq!(segment_size(u64::MAX - 511), None);
    }

    #[test]
    fn segment_sizes_follow_the_pools() {
        assert_eq!(segment_size(512), Some(2 << 20));
        assert_eq!(segment_size(1 << 20), Some(2 << 20));
        assert_eq!(segment_size((1 << 20) + 512), Some(20 << 20));
        assert_eq!(segment_size(11 << 20), Some(12 << 20));
    }

    #[test]
    fn split_rules() {
        assert!(should_split(PoolKind::Small, 2 << 20, 512, u64::MAX));
        assert!(!should_split(PoolKind::Small, 1024, 1024, u64::MAX));
        assert!(!should_split(PoolKind::Large, 20 << 20, 19 << 20, u64::MAX));
        assert!(should_split(PoolKind::Large, 20 << 20, 2 << 20, u64::MAX));
        assert!(!should_split(PoolKind::Large, 40 << 20, 32 << 20, 16 << 20));
    }

    #[test]
    fn oversize_blocks_serve_only_close_oversize_requests() {
        let max = 16 << 20;
        assert!(!may_serve(32 << 20, 4 << 20, max));
        assert!(may_serve(32 << 20, 20 << 20, max));
        assert!(!may_serve(64 << 20, 20 << 20, max));
        assert!(may_serve(8 << 20, 4 << 20, max));
    }
}
