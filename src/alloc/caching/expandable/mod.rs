//! Expandable segments: reserved virtual ranges per stream for the large pool, grown by
//! mapping granularity-sized pages (in unmapped holes, or at the end) and shrunk by unmapping
//! free pages.

use super::{is_oom, CachingAllocator, State};
use crate::alloc::history::HistoryEvent;
use crate::alloc::pool::Backing;
use crate::alloc::sizing::PoolKind;
use crate::backend::{DevicePtr, Stream};
use crate::error::{Error, Result};

/// How many times the device's memory one reserved range spans. Address space is cheap, and a
/// larger range fills up with unmapped holes later; a full one gets a successor anyway.
const RANGE_PER_DEVICE: u64 = 2;

/// Where freshly mapped pages go in the pool.
#[derive(Clone, Copy)]
enum Into {
    /// The start of an unmapped hole (block index).
    Hole(u32),
    /// The end of a segment.
    Tail(u32),
    /// A new segment over a reservation of this many bytes.
    Fresh(u64),
}

#[cfg(test)]
thread_local! {
    /// Test hook: the number of backend unmaps that succeed before one fails (once).
    pub(super) static UNMAP_FAILS_AFTER: std::cell::Cell<Option<u64>> =
        const { std::cell::Cell::new(None) };
    /// Test hook: the next `free_reservation` fails (once).
    pub(super) static FREE_RESERVATION_FAILS: std::cell::Cell<bool> =
        const { std::cell::Cell::new(false) };
}

impl CachingAllocator {
    /// Maps pages of the stream's expandable segments so that a free block can serve
    /// `rounded` bytes, and hands it out: the pages a request needs in an unmapped hole, else
    /// at the end of a segment with room, else in a new reserved range. `Ok(None)` when the
    /// limit or the device has no room.
    pub(super) fn try_expand(
        &self,
        st: &mut State,
        size: u64,
        rounded: u64,
        stream: Stream,
    ) -> Result<Option<DevicePtr>> {
        let g = self.granularity;
        // Nothing larger than the device (or the limit) can ever be mapped. Refusing it here
        // also keeps every sum below far from overflowing.
        let most = self.limit.unwrap_or(u64::MAX).min(self.device_total);
        if rounded > most {
            return Ok(None);
        }
        let segs: Vec<u32> = st
            .pool
            .expandable_segments(PoolKind::Large, stream.0)
            .collect();
        // A hole left by an earlier cache release: map only the pages the request needs.
        if let Some((hole, start, bytes)) = segs
            .iter()
            .filter_map(|&s| st.pool.hole_for(s, stream.0, rounded, g))
            .min_by_key(|&(_, _, bytes)| bytes)
        {
            if self.within_limit(st, bytes) {
                // Not the hole's free neighbours: the request joins them.
                let seg = st.pool.block(hole).segment;
                let (lo, hi) = st.pool.span_with_neighbours(hole);
                self.reclaim_pages(st, Some((seg, lo, hi)), bytes);
                if let Some(i) = self.map_into(st, Into::Hole(hole), start, bytes, stream)? {
                    return Ok(Some(self.hand_out(st, i, size, rounded)));
                }
            }
            // Over the limit or the device full: growing a tail may need fewer pages.
        }
        // The end of the segment that needs the fewest new pages and has room for them.
        let tail = segs
            .iter()
            .filter_map(|&s| {
                let have = st.pool.free_tail(s, stream.0).map_or(0, |(_, n)| n);
                let need = (rounded - have.min(rounded)).next_multiple_of(g);
                let sg = st.pool.segment(s);
                (need <= sg.capacity - sg.size).then_some((need, s))
            })
            .min();
        if let Some((need, seg)) = tail {
            if need == 0 {
                if let Some((i, _)) = st.pool.free_tail(seg, stream.0) {
                    return Ok(Some(self.hand_out(st, i, size, rounded)));
                }
            }
            if !self.within_limit(st, need) {
                return Ok(None);
            }
            // Not the free tail the request grows from.
            let from = st
                .pool
                .free_tail(seg, stream.0)
                .map_or(u64::MAX, |(i, _)| st.pool.block(i).addr);
            self.reclaim_pages(st, Some((seg, from, u64::MAX)), need);
            let sg = st.pool.segment(seg);
            let at = sg.base + sg.size;
            return match self.map_into(st, Into::Tail(seg), at, need, stream)? {
                Some(i) => Ok(Some(self.hand_out(st, i, size, rounded))),
                None => Ok(None),
            };
        }
        // Every range is full (of mapped pages and holes), or there is none: reserve one.
        let need = rounded.next_multiple_of(g);
        if !self.within_limit(st, need) {
            return Ok(None);
        }
        let cap = self
            .device_total
            .saturating_mul(RANGE_PER_DEVICE)
            .max(need)
            .checked_next_multiple_of(g)
            .ok_or_else(|| Error::InvalidArgument(format!("a range of {need} bytes overflows")))?;
        self.reclaim_pages(st, None, need);
        let va = match self.backend.reserve(cap) {
            Ok(v) => v,
            Err(e) if is_oom(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        match self.map_into(st, Into::Fresh(cap), va.0, need, stream)? {
            Some(i) => Ok(Some(self.hand_out(st, i, size, rounded))),
            None => Ok(None),
        }
    }

    /// Before `want` bytes of new pages are mapped, unmaps up to as many whole free pages of
    /// the expandable segments, oldest first (none in `avoid`'s `[lo, hi)` of its segment: the
    /// free blocks the request will use), and frees empty fixed segments: the new pages then
    /// take the place of pages no block uses instead of adding to them. Without it, the free
    /// pages of one stream's segment stay mapped while another stream's segment grows (a KV
    /// cache's stream and the compute stream peak at different times), and reserved memory is
    /// the sum of each stream's peak rather than the peak of their sum. Best effort: a page
    /// that will not unmap stays mapped and free (logged), and the allocation goes on.
    /// Returns the bytes unmapped.
    fn reclaim_pages(&self, st: &mut State, avoid: Option<(u32, u64, u64)>, want: u64) -> u64 {
        let mut plan = self.reclaim_plan(st, avoid, want);
        let planned: u64 = plan.iter().map(|p| p.2).sum();
        if planned < want && !st.pending.is_empty() {
            // Blocks freed with `record_stream` wait for events before they count as free;
            // growing now would leave their pages mapped beside the new ones. Wait for them
            // (this is the path that waits anyway) and plan again: what is reclaimed then
            // no longer depends on how far other streams got.
            for p in std::mem::take(&mut st.pending) {
                if let Err(e) = self.finish_pending(st, p) {
                    tracing::warn!("reclaiming free pages: {e}");
                    break;
                }
            }
            plan = self.reclaim_plan(st, avoid, want);
        }
        // Empty fixed segments (the small pool's 2 MiB ones) count too: cached and unused,
        // they are reserved memory the new pages can replace.
        let planned: u64 = plan.iter().map(|p| p.2).sum();
        let mut empties = Vec::new();
        let mut found = planned;
        for seg in st.pool.empty_segments() {
            if found >= want {
                break;
            }
            let sg = st.pool.segment(seg);
            if sg.backing == Backing::Fixed {
                found += sg.size;
                empties.push(seg);
            }
        }
        if plan.is_empty() && empties.is_empty() {
            return 0;
        }
        // A free block's pages may still be read or written by work queued on its stream
        // before the free (stream-ordered reuse): wait for the device before unmapping, as a
        // cache release does. Growth that finds pages to take is rare (a few per 1000
        // operations on the serving traces); growth that finds none does not wait.
        if let Err(e) = self.backend.synchronize() {
            tracing::warn!("reclaiming free pages: {e}");
            return 0;
        }
        st.stats.num_sync_all_streams += 1;
        let mut total = 0;
        for (seg, start, take) in plan {
            let (done, failed) = self.unmap_free_range(st, seg, start, take);
            total += done;
            if let Some(e) = failed {
                tracing::warn!("reclaiming a free page: {e}");
                return total;
            }
        }
        for seg in empties {
            match self.free_fixed_segment(st, seg) {
                Ok(bytes) => total += bytes,
                Err(e) => {
                    tracing::warn!("reclaiming an empty segment: {e}");
                    break;
                }
            }
        }
        total
    }

    /// Up to `want` bytes of whole free pages to unmap, as `(segment, start, bytes)`, none in
    /// `avoid`'s range (see [`CachingAllocator::reclaim_pages`]).
    fn reclaim_plan(
        &self,
        st: &State,
        avoid: Option<(u32, u64, u64)>,
        want: u64,
    ) -> Vec<(u32, u64, u64)> {
        let g = self.granularity;
        let mut plan = Vec::new();
        let mut planned = 0;
        let segs = st
            .pool
            .segments()
            .filter(|&(_, s)| s.backing == Backing::Expandable)
            .map(|(i, _)| i);
        'segs: for seg in segs {
            for (start, bytes) in st.pool.unmappable_ranges(seg, g) {
                if planned >= want {
                    break 'segs;
                }
                if let Some((s, lo, hi)) = avoid {
                    if s == seg && start < hi && start + bytes > lo {
                        continue;
                    }
                }
                let take = bytes.min((want - planned).next_multiple_of(g));
                plan.push((seg, start, take));
                planned += take;
            }
        }
        plan
    }

    /// Whether `bytes` more stay under the limit.
    pub(super) fn within_limit(&self, st: &State, bytes: u64) -> bool {
        let reserved = st.stats.reserved_bytes.current;
        self.limit
            .is_none_or(|l| reserved.checked_add(bytes).is_some_and(|r| r <= l))
    }

    /// Maps `bytes` of pages at `va` for `into` and records in the pool whatever stays mapped.
    /// Returns the free block that holds the new pages (merged with its free neighbours) when
    /// all were mapped; `None` when the device is full (nothing stays mapped then).
    fn map_into(
        &self,
        st: &mut State,
        into: Into,
        va: u64,
        bytes: u64,
        stream: Stream,
    ) -> Result<Option<u32>> {
        let (mapped, err) = self.map_pages(st, va, bytes);
        let block = if mapped > 0 {
            Some(match into {
                Into::Hole(h) => st.pool.map_hole(h, mapped, stream.0),
                Into::Tail(seg) => st.pool.grow(seg, mapped, stream.0),
                Into::Fresh(cap) => {
                    st.stats.segment.add(1);
                    st.pool.add_segment(
                        va,
                        mapped,
                        cap,
                        stream.0,
                        PoolKind::Large,
                        Backing::Expandable,
                    )
                }
            })
        } else {
            if let Into::Fresh(cap) = into {
                if let Err(e) = self.free_reservation(DevicePtr(va), cap) {
                    return Err(match err {
                        Some(m) if !is_oom(&m) => m,
                        _ => e,
                    });
                }
            }
            None
        };
        match err {
            None => Ok(block),
            Some(e) if is_oom(&e) => Ok(None),
            Some(e) => Err(e),
        }
    }

    /// Maps `bytes` of fresh pages at `va`, one physical allocation per page so any page can
    /// be unmapped alone. On a failure the pages mapped are unmapped again, last first.
    /// Returns the bytes that stay mapped from `va` on (all, or normally none after a failure;
    /// some when unmapping failed too), accounted in the statistics, and the error (the
    /// unmap's, when undoing failed).
    fn map_pages(&self, st: &mut State, va: u64, bytes: u64) -> (u64, Option<Error>) {
        let g = self.granularity;
        let mut done = 0;
        let mut fail = None;
        while done < bytes {
            let h = match self.backend.create_physical(g) {
                Ok(h) => h,
                Err(e) => {
                    fail = Some(e);
                    break;
                }
            };
            let mapped = self.backend.map(DevicePtr(va + done), g, h);
            // The mapping keeps the memory; the handle is not needed after it (or, unmapped,
            // at all).
            let released = crate::backend::release_physical_retrying(self.backend.as_ref(), h);
            match (mapped, released) {
                (Ok(()), released) => {
                    st.stats.num_maps += 1;
                    // The page is mapped whatever the release said: count it, so it is
                    // tracked (and unmapped below if the whole request fails). A handle the
                    // driver would not release leaks only that handle, not the page.
                    done += g;
                    if let Err(e) = released {
                        tracing::warn!("releasing a mapped page's handle failed: {e}");
                    }
                }
                (Err(e), _) => {
                    fail = Some(e);
                    break;
                }
            }
        }
        if fail.is_some() {
            while done > 0 {
                if let Err(e) = self.unmap_page(va + done - g) {
                    fail = Some(e);
                    break;
                }
                st.stats.num_unmaps += 1;
                done -= g;
            }
        }
        if done > 0 {
            st.stats.num_device_alloc += done / g;
            st.stats.reserved_bytes.add(done);
            st.history.push(HistoryEvent::SegmentAlloc {
                addr: va,
                size: done,
            });
        }
        (done, fail)
    }

    /// Unmaps the whole free pages of expandable segment `seg` and marks them as holes.
    /// Returns the first error, with exactly the pages unmapped until then marked.
    pub(super) fn unmap_free_pages(&self, st: &mut State, seg: u32) -> Result<()> {
        let g = self.granularity;
        for (start, bytes) in st.pool.unmappable_ranges(seg, g) {
            if let (_, Some(e)) = self.unmap_free_range(st, seg, start, bytes) {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Unmaps the `bytes` of whole free pages at `start` of segment `seg`, page by page, and
    /// marks what was unmapped as a hole, counted. Returns the bytes unmapped and the error
    /// that stopped it, if one did (the pages until then stay marked).
    fn unmap_free_range(
        &self,
        st: &mut State,
        seg: u32,
        start: u64,
        bytes: u64,
    ) -> (u64, Option<Error>) {
        let g = self.granularity;
        let mut done = 0;
        let mut fail = None;
        while done < bytes {
            if let Err(e) = self.unmap_page(start + done) {
                fail = Some(e);
                break;
            }
            st.stats.num_unmaps += 1;
            done += g;
        }
        if done > 0 {
            st.pool.mark_unmapped(seg, start, done);
            st.stats.num_device_free += done / g;
            st.stats.reserved_bytes.sub(done);
            st.history.push(HistoryEvent::SegmentFree {
                addr: start,
                size: done,
            });
        }
        (done, fail)
    }

    pub(super) fn unmap_page(&self, va: u64) -> Result<()> {
        #[cfg(test)]
        if let Some(n) = UNMAP_FAILS_AFTER.get() {
            UNMAP_FAILS_AFTER.set(n.checked_sub(1));
            if n == 0 {
                return Err(Error::InvalidState("injected unmap failure".into()));
            }
        }
        self.backend.unmap(DevicePtr(va), self.granularity)
    }

    pub(super) fn free_reservation(&self, va: DevicePtr, bytes: u64) -> Result<()> {
        #[cfg(test)]
        if FREE_RESERVATION_FAILS.replace(false) {
            return Err(Error::InvalidState(
                "injected free_reservation failure".into(),
            ));
        }
        self.backend.free_reservation(va, bytes)
    }
}

#[cfg(test)]
mod tests;
