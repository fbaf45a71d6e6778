//! Statistics and snapshots of the caching allocator. Names follow PyTorch's
//! `torch.cuda.memory_stats()` and `memory_snapshot()` where one exists.

use serde::Serialize;

use super::pool::BlockState;
use super::sizing::PoolKind;

/// One statistic: its current value, its peak since the last reset, and the totals added and
/// removed (PyTorch's `current`, `peak`, `allocated`, `freed`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stat {
    /// Now.
    pub current: u64,
    /// Highest value since creation or [`crate::alloc::CachingAllocator::reset_peak`].
    pub peak: u64,
    /// Sum of all increases.
    pub allocated: u64,
    /// Sum of all decreases.
    pub freed: u64,
}

impl Stat {
    /// Adds `n`.
    #[inline]
    pub fn add(&mut self, n: u64) {
        self.current += n;
        self.allocated += n;
        if self.current > self.peak {
            self.peak = self.current;
        }
    }

    /// Subtracts `n`.
    #[inline]
    pub fn sub(&mut self, n: u64) {
        self.current -= n;
        self.freed += n;
    }

    /// Sets the current value (for values computed rather than counted).
    #[inline]
    pub fn set(&mut self, v: u64) {
        if v > self.current {
            self.add(v - self.current)
        } else {
            self.sub(self.current - v)
        }
    }

    fn reset_peak(&mut self) {
        self.peak = self.current;
    }
}

/// What the allocator has done. Byte statistics count rounded block sizes, as PyTorch does.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AllocatorStats {
    /// Bytes in blocks handed to users.
    pub allocated_bytes: Stat,
    /// Bytes the user asked for (before rounding).
    pub requested_bytes: Stat,
    /// Bytes held from the backend (segments; mapped pages of expandable segments).
    pub reserved_bytes: Stat,
    /// Bytes allocated or freed but still waiting for other streams' work.
    pub active_bytes: Stat,
    /// Free bytes in segments that also hold other blocks (fragmentation).
    pub inactive_split_bytes: Stat,
    /// Blocks handed to users.
    pub allocation: Stat,
    /// Segments held from the backend.
    pub segment: Stat,
    /// Allocated or pending blocks.
    pub active: Stat,
    /// Free blocks in segments that also hold other blocks.
    pub inactive_split: Stat,
    /// Requests served from the cache.
    pub cache_hits: u64,
    /// Requests that needed memory from the backend.
    pub cache_misses: u64,
    /// Hits served from another stream's free blocks through an event wait.
    pub cross_stream_reuses: u64,
    /// Times the allocator freed its cache (or asked pressure handlers) and retried.
    pub num_alloc_retries: u64,
    /// Requests that failed with out-of-memory.
    pub num_ooms: u64,
    /// Backend allocations (segments, and page mappings of expandable segments).
    pub num_device_alloc: u64,
    /// Backend frees (segments, and page unmappings).
    pub num_device_free: u64,
    /// Whole-device synchronisations: cache releases (`empty_cache` and the out-of-memory
    /// ladder), and the fallbacks where a stream is gone (destroyed by its user): a free whose
    /// recorded stream or poison fill stream is gone, and an allocation that borrows a block
    /// of a gone stream (the one case on the allocation path).
    pub num_sync_all_streams: u64,
    /// Calls of pressure handlers.
    pub num_pressure_calls: u64,
    /// Pages mapped (`cuMemMap`, with its `cuMemSetAccess`): expandable segments and the page
    /// pool.
    pub num_maps: u64,
    /// Pages unmapped (`cuMemUnmap`).
    pub num_unmaps: u64,
}

impl AllocatorStats {
    /// Resets every peak to the current value.
    pub fn reset_peak(&mut self) {
        for s in [
            &mut self.allocated_bytes,
            &mut self.requested_bytes,
            &mut self.reserved_bytes,
            &mut self.active_bytes,
            &mut self.inactive_split_bytes,
            &mut self.allocation,
            &mut self.segment,
            &mut self.active,
            &mut self.inactive_split,
        ] {
            s.reset_peak();
        }
    }

    /// Peak reserved / peak allocated (1.0 when nothing was allocated).
    pub fn fragmentation(&self) -> f64 {
        if self.allocated_bytes.peak == 0 {
            1.0
        } else {
            self.reserved_bytes.peak as f64 / self.allocated_bytes.peak as f64
        }
    }
}

/// One block in a [`Snapshot`].
#[derive(Clone, Debug, Serialize)]
pub struct BlockInfo {
    /// Device address.
    pub address: u64,
    /// Bytes.
    pub size: u64,
    /// Bytes the user asked for (0 when free).
    pub requested_size: u64,
    /// `active_allocated`, `active_pending_free`, `inactive`, or `unmapped` (a hole in an
    /// expandable segment).
    pub state: &'static str,
    /// Stream whose work last used the block.
    pub stream: u64,
}

impl BlockInfo {
    pub(crate) fn state_name(s: BlockState) -> &'static str {
        match s {
            BlockState::Allocated => "active_allocated",
            BlockState::PendingFree => "active_pending_free",
            BlockState::Free => "inactive",
            BlockState::Unmapped => "unmapped",
        }
    }
}

/// One segment in a [`Snapshot`].
#[derive(Clone, Debug, Serialize)]
pub struct SegmentInfo {
    /// Device address of the first byte.
    pub address: u64,
    /// Bytes held (mapped bytes, for an expandable segment).
    pub total_size: u64,
    /// Reserved address range (an expandable segment's room to grow).
    pub reserved_range: u64,
    /// Bytes in allocated blocks.
    pub allocated_size: u64,
    /// Bytes in allocated or pending blocks.
    pub active_size: u64,
    /// Stream the segment was created for.
    pub stream: u64,
    /// `small` or `large`.
    pub segment_type: PoolKind,
    /// Whether it grows by mapping pages.
    pub expandable: bool,
    /// Its blocks in address order.
    pub blocks: Vec<BlockInfo>,
}

/// The allocator's segments and blocks at one moment (PyTorch's `memory_snapshot()`).
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    /// Segments in address order.
    pub segments: Vec<SegmentInfo>,
    /// Bytes of the page pool's physical pages mapped nowhere (reserved, in no segment).
    pub pooled_page_bytes: u64,
    /// Statistics at the same moment.
    pub stats: AllocatorStats,
}

impl Snapshot {
    /// The snapshot as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}
