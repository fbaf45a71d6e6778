//! The page pool: large blocks are virtual ranges of exactly the pages they need, mapped to
//! physical pages (the device's virtual-memory granularity, 2 MiB on CUDA) from one pool
//! shared by every block size and stream.
//!
//! A freed block keeps its mapping and is reused as it is by a request needing as many pages
//! (no map call on a steady state). A request that finds none takes pages from the pool of
//! unmapped pages, then unmaps cached empty blocks of any size (after their stream's work is
//! done) into that pool, and only then creates new pages on the device. Reserved memory (pages
//! held) thus stays within page rounding of allocated memory. Virtual ranges whose pages were
//! taken are cached by size for later blocks.

use std::collections::HashMap;

use super::{is_oom, CachingAllocator, State};
use crate::alloc::history::HistoryEvent;
use crate::alloc::pool::Backing;
use crate::alloc::sizing::PoolKind;
use crate::backend::{DevicePtr, PhysHandle, Stream};
use crate::error::Result;

/// Physical pages and virtual ranges held by the page pool.
#[derive(Debug, Default)]
pub(super) struct Pages {
    /// Pages mapped nowhere, ready for any block.
    pub(super) free: Vec<PhysHandle>,
    /// The pages of each paged segment, in address order from its base (only the first ones
    /// are mapped when unmapping failed part way: as many as the segment's size needs).
    pub(super) of_segment: HashMap<u32, Vec<PhysHandle>>,
    /// Reserved virtual ranges with nothing mapped, by size.
    pub(super) ranges: HashMap<u64, Vec<u64>>,
}

impl CachingAllocator {
    /// Serves a large request from the page pool with a fresh mapping: `Ok(None)` when the
    /// limit or the device has no room (the pages gathered stay pooled for the next try or a
    /// cache release).
    pub(super) fn try_paged(
        &self,
        st: &mut State,
        size: u64,
        rounded: u64,
        stream: Stream,
    ) -> Result<Option<DevicePtr>> {
        let g = self.granularity;
        let most = self.limit.unwrap_or(u64::MAX).min(self.device_total);
        if rounded > most {
            return Ok(None);
        }
        let need = rounded.next_multiple_of(g);
        let n = (need / g) as usize;
        while st.pages.free.len() < n {
            if !self.reclaim_one(st, n - st.pages.free.len())? {
                break;
            }
        }
        while st.pages.free.len() < n && self.within_limit(st, g) {
            match self.backend.create_physical(g) {
                Ok(h) => {
                    st.pages.free.push(h);
                    st.stats.reserved_bytes.add(g);
                    st.stats.num_device_alloc += 1;
                }
                Err(e) if is_oom(&e) => break,
                Err(e) => return Err(e),
            }
        }
        if st.pages.free.len() < n {
            return Ok(None);
        }
        let va = match st.pages.ranges.get_mut(&need).and_then(Vec::pop) {
            Some(va) => va,
            None => match self.backend.reserve(need) {
                Ok(v) => v.0,
                Err(e) if is_oom(&e) => return Ok(None),
                Err(e) => return Err(e),
            },
        };
        let handles = st.pages.free.split_off(st.pages.free.len() - n);
        let mut mapped = 0usize;
        let mut fail = None;
        for &h in &handles {
            match self.backend.map(DevicePtr(va + mapped as u64 * g), g, h) {
                Ok(()) => {
                    mapped += 1;
                    st.stats.num_maps += 1;
                }
                Err(e) => {
                    fail = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = fail {
            // Undo, last page first; what cannot be unmapped stays a (free) paged segment, so
            // the bookkeeping says what is mapped and a cache release tries again.
            let mut undo = None;
            while mapped > 0 {
                match self.unmap_page(va + (mapped as u64 - 1) * g) {
                    Ok(()) => {
                        mapped -= 1;
                        st.stats.num_unmaps += 1;
                    }
                    Err(u) => {
                        undo = Some(u);
                        break;
                    }
                }
            }
            if mapped == 0 {
                st.pages.free.extend(handles);
                st.pages.ranges.entry(need).or_default().push(va);
            } else {
                let bytes = mapped as u64 * g;
                let idx = st
                    .pool
                    .add_segment(va, bytes, need, stream.0, PoolKind::Large, paged(g));
                let seg = st.pool.block(idx).segment;
                st.pages.of_segment.insert(seg, handles);
                st.stats.segment.add(1);
            }
            return match undo {
                Some(u) => Err(u),
                None if is_oom(&e) => Ok(None),
                None => Err(e),
            };
        }
        let idx = st
            .pool
            .add_segment(va, rounded, need, stream.0, PoolKind::Large, paged(g));
        let seg = st.pool.block(idx).segment;
        st.pages.of_segment.insert(seg, handles);
        st.stats.segment.add(1);
        st.history.push(HistoryEvent::SegmentAlloc {
            addr: va,
            size: need,
        });
        Ok(Some(self.hand_out(st, idx, size, rounded)))
    }

    /// Unmaps one cached empty paged block into the pool of free pages, after its stream's
    /// work is done; its virtual range is cached. Picks the smallest holding at least `want`
    /// pages, else the largest. `Ok(false)` when there is none.
    pub(super) fn reclaim_one(&self, st: &mut State, want: usize) -> Result<bool> {
        let mut best: Option<(usize, u32)> = None;
        for (seg, handles) in &st.pages.of_segment {
            if !st.pool.is_empty_segment(*seg) {
                continue;
            }
            let n = handles.len();
            let better = match best {
                None => true,
                Some((b, _)) if b >= want => n >= want && n < b,
                Some((b, _)) => n > b,
            };
            if better {
                best = Some((n, *seg));
            }
        }
        let Some((_, seg)) = best else {
            return Ok(false);
        };
        self.reclaim(st, seg)?;
        Ok(true)
    }

    /// Unmaps empty paged segment `seg` (last page first) into the pool of free pages and
    /// caches its range. Its stream's queued work is waited for first (an event, or the
    /// device when the stream is gone). On an unmap error the segment keeps the pages still
    /// mapped and the rest are pooled.
    fn reclaim(&self, st: &mut State, seg: u32) -> Result<()> {
        let g = self.granularity;
        let (base, capacity, stream) = {
            let s = st.pool.segment(seg);
            let b = st
                .pool
                .blocks_of(seg)
                .next()
                .map_or(s.stream, |(_, b)| b.stream);
            (s.base, s.capacity, Stream(b))
        };
        let ev = self.stream_event(st, stream)?;
        let waited = self
            .backend
            .event_record(ev, stream)
            .and_then(|()| self.backend.event_synchronize(ev));
        if waited.is_err() {
            self.backend.synchronize()?;
            st.stats.num_sync_all_streams += 1;
        }
        let mut handles = st.pages.of_segment.remove(&seg).unwrap_or_default();
        let mapped = st.pool.segment(seg).size.div_ceil(g) as usize;
        st.pages
            .free
            .extend(handles.drain(mapped.min(handles.len())..));
        while let Some(&h) = handles.last() {
            let at = base + (handles.len() as u64 - 1) * g;
            if let Err(e) = self.unmap_page(at) {
                st.pool.shrink_paged(seg, handles.len() as u64 * g);
                st.pages.of_segment.insert(seg, handles);
                return Err(e);
            }
            st.stats.num_unmaps += 1;
            handles.pop();
            st.pages.free.push(h);
        }
        st.pool.remove_segment(seg);
        st.stats.segment.sub(1);
        st.pages.ranges.entry(capacity).or_default().push(base);
        Ok(())
    }

    /// Returns every empty paged block's pages, every pooled page and every cached range to
    /// the backend (the device was waited for by the caller).
    pub(super) fn release_paged(&self, st: &mut State) -> Result<()> {
        let empty: Vec<u32> = st
            .pages
            .of_segment
            .keys()
            .copied()
            .filter(|&s| st.pool.is_empty_segment(s))
            .collect();
        for seg in empty {
            self.reclaim(st, seg)?;
        }
        while let Some(h) = st.pages.free.pop() {
            if let Err(e) = self.backend.release_physical(h) {
                st.pages.free.push(h);
                return Err(e);
            }
            st.stats.reserved_bytes.sub(self.granularity);
            st.stats.num_device_free += 1;
        }
        let ranges: Vec<(u64, u64)> = st
            .pages
            .ranges
            .iter()
            .flat_map(|(&bytes, vas)| vas.iter().map(move |&va| (va, bytes)))
            .collect();
        for (va, bytes) in ranges {
            self.free_reservation(DevicePtr(va), bytes)?;
            if let Some(v) = st.pages.ranges.get_mut(&bytes) {
                v.retain(|&x| x != va);
            }
        }
        st.pages.ranges.retain(|_, v| !v.is_empty());
        Ok(())
    }
}

fn paged(page: u64) -> Backing {
    Backing::Paged { page }
}
