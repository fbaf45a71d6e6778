//! Reports of the caching allocator (statistics, snapshot, history) and its teardown.

use super::CachingAllocator;
use crate::alloc::history::{to_trace, HistoryEvent};
use crate::alloc::pool::Backing;
use crate::alloc::stats::{AllocatorStats, BlockInfo, SegmentInfo, Snapshot};
use crate::alloc::trace::{write_trace, TraceOp};
use crate::backend::{DevicePtr, Event};

impl CachingAllocator {
    /// Statistics now.
    pub fn stats(&self) -> AllocatorStats {
        self.lock().stats.clone()
    }

    /// Resets every peak statistic to its current value.
    pub fn reset_peak(&self) {
        self.lock().stats.reset_peak();
    }

    /// Segments and blocks now.
    pub fn snapshot(&self) -> Snapshot {
        let st = self.lock();
        let mut segments: Vec<SegmentInfo> = st
            .pool
            .segments()
            .map(|(i, s)| {
                let blocks: Vec<BlockInfo> = st
                    .pool
                    .blocks_of(i)
                    .map(|(_, b)| BlockInfo {
                        address: b.addr,
                        size: b.size,
                        requested_size: b.requested,
                        state: BlockInfo::state_name(b.state),
                        stream: b.stream,
                    })
                    .collect();
                let sum = |f: &dyn Fn(&&BlockInfo) -> bool| {
                    blocks.iter().filter(f).map(|b| b.size).sum::<u64>()
                };
                SegmentInfo {
                    address: s.base,
                    total_size: match s.backing {
                        // Whole pages are mapped under the block.
                        Backing::Paged { page } => s.size.div_ceil(page) * page,
                        _ => sum(&|b| b.state != "unmapped"),
                    },
                    reserved_range: s.capacity,
                    allocated_size: sum(&|b| b.state == "active_allocated"),
                    active_size: sum(&|b| b.state.starts_with("active")),
                    stream: s.stream,
                    segment_type: s.kind,
                    expandable: s.backing == Backing::Expandable,
                    blocks,
                }
            })
            .collect();
        segments.sort_by_key(|s| s.address);
        Snapshot {
            segments,
            pooled_page_bytes: st.pages.free.len() as u64 * self.granularity,
            stats: st.stats.clone(),
        }
    }

    /// The history ring's events, oldest first (empty unless `history` is configured).
    pub fn history(&self) -> Vec<HistoryEvent> {
        self.lock().history.events()
    }

    /// The history as a trace (JSON lines) that `vramswap replay` reads.
    pub fn history_trace(&self) -> String {
        let ops: Vec<TraceOp> = to_trace(&self.history());
        write_trace(&ops)
    }

    /// Current allocated and reserved bytes (cheaper than [`CachingAllocator::stats`]).
    pub fn current_bytes(&self) -> (u64, u64) {
        let st = self.lock();
        (
            st.stats.allocated_bytes.current,
            st.stats.reserved_bytes.current,
        )
    }

    /// Bytes of the block at `ptr`, for live blocks.
    pub fn block_size(&self, ptr: DevicePtr) -> Option<u64> {
        let st = self.lock();
        st.live.get(&ptr.0).map(|&i| st.pool.block(i).size)
    }
}

impl Drop for CachingAllocator {
    fn drop(&mut self) {
        let backend = self.backend.clone();
        let st = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        let mut events: Vec<Event> = Vec::new();
        for p in std::mem::take(&mut st.pending) {
            for e in p.events {
                let _ = backend.event_synchronize(e);
                events.push(e);
            }
        }
        if let Err(e) = backend.synchronize() {
            tracing::warn!("caching allocator drop: synchronize failed: {e}");
        }
        let segs: Vec<u32> = st.pool.segments().map(|(i, _)| i).collect();
        for seg in segs {
            let mapped = st.pool.mapped_ranges(seg);
            let s = st.pool.forget_segment(seg);
            let r = if let Backing::Paged { page } = s.backing {
                let handles = st.pages.of_segment.remove(&seg).unwrap_or_default();
                let mapped = s.size.div_ceil(page) as usize;
                let pages = (0..handles.len().min(mapped)).map(|i| s.base + i as u64 * page);
                let r = unmap_each(backend.as_ref(), pages, page);
                for &h in &handles {
                    // A handle released while mapped keeps its page until the unmap. A failed
                    // release is tried once more, as a failed unmap is.
                    let _ = crate::backend::release_physical_retrying(backend.as_ref(), h);
                }
                r.and_then(|_| backend.free_reservation(DevicePtr(s.base), s.capacity))
            } else if s.backing == Backing::Expandable {
                let g = self.granularity;
                let pages = mapped
                    .into_iter()
                    .flat_map(|(start, bytes)| (0..bytes / g).map(move |i| start + i * g));
                unmap_each(backend.as_ref(), pages, g)
                    .and_then(|_| backend.free_reservation(DevicePtr(s.base), s.capacity))
            } else {
                backend.free(DevicePtr(s.base))
            };
            if let Err(e) = r {
                tracing::warn!("caching allocator drop: returning segment failed: {e}");
            }
        }
        for h in st.pages.free.drain(..) {
            if let Err(e) = crate::backend::release_physical_retrying(backend.as_ref(), h) {
                tracing::warn!("caching allocator drop: releasing a pooled page failed: {e}");
            }
        }
        for (bytes, vas) in st.pages.ranges.drain() {
            for va in vas {
                if let Err(e) = backend.free_reservation(DevicePtr(va), bytes) {
                    tracing::warn!("caching allocator drop: freeing a cached range failed: {e}");
                }
            }
        }
        events.append(&mut st.spare_events);
        events.extend(st.stream_events.drain(..).map(|(_, e)| e));
        for e in events {
            let _ = backend.event_destroy(e);
        }
    }
}

/// Unmaps every page of `pages` (each `page` bytes) at teardown, trying a failed unmap once
/// more and going on past a page that still fails, so that one failure does not abandon the
/// rest of a segment (issue 19: one failed `cuMemUnmap` used to leave a whole segment mapped
/// and reserved). Ok when every page is unmapped; else the first error (the reservation is then
/// kept: freeing it under a mapping is an error too).
fn unmap_each(
    backend: &dyn crate::backend::Backend,
    pages: impl Iterator<Item = u64>,
    page: u64,
) -> crate::error::Result<()> {
    let mut first = Ok(());
    for va in pages {
        let r = backend
            .unmap(DevicePtr(va), page)
            .or_else(|_| backend.unmap(DevicePtr(va), page));
        if let (Err(e), Ok(())) = (r, &first) {
            first = Err(e);
        }
    }
    first
}
