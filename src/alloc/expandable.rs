//! Expandable segments: one reserved virtual range per stream for the large pool, grown by
//! mapping granularity-sized pages at its end and shrunk by unmapping free tail pages.

use super::{is_oom, CachingAllocator, State};
use crate::alloc::history::HistoryEvent;
use crate::alloc::sizing::PoolKind;
use crate::backend::{DevicePtr, Stream};
use crate::error::Result;

impl CachingAllocator {
    /// Grows the stream's expandable segment so that its free tail can serve `rounded` bytes.
    pub(super) fn try_expand(
        &self,
        st: &mut State,
        size: u64,
        rounded: u64,
        stream: Stream,
    ) -> Result<Option<DevicePtr>> {
        let g = self.granularity;
        let seg = st.pool.expandable_segment(PoolKind::Large, stream.0);
        let (have, used, capacity) = match seg {
            Some(s) => {
                let tail = st.pool.free_tail(s, stream.0).map_or(0, |(_, n)| n);
                let sg = st.pool.segment(s);
                (tail, sg.size, sg.capacity)
            }
            None => (0, 0, 0),
        };
        // A hole left by an earlier cache release, mapped again, may be enough.
        if let Some((hole, addr, bytes)) = seg.and_then(|s| st.pool.find_hole(s, stream.0, rounded))
        {
            let reserved = st.stats.reserved_bytes.current;
            if self
                .limit
                .is_some_and(|l| reserved.saturating_add(bytes) > l)
            {
                return Ok(None);
            }
            if !self.map_pages(st, addr, bytes)? {
                return Ok(None);
            }
            st.pool.fill_hole(hole, stream.0);
            let idx = st.pool.find_free(
                PoolKind::Large,
                stream.0,
                rounded,
                self.config.max_split_size,
            );
            return Ok(idx.map(|i| self.hand_out(st, i, size, rounded)));
        }
        let need = (rounded - have.min(rounded)).div_ceil(g) * g;
        if need == 0 {
            if let Some((i, _)) = seg.and_then(|s| st.pool.free_tail(s, stream.0)) {
                return Ok(Some(self.hand_out(st, i, size, rounded)));
            }
        }
        let reserved = st.stats.reserved_bytes.current;
        if self
            .limit
            .is_some_and(|l| reserved.saturating_add(need) > l)
        {
            return Ok(None);
        }
        let (seg, base) = match seg {
            Some(s) if used + need <= capacity => (Some(s), st.pool.segment(s).base),
            Some(_) => return Ok(None),
            None => {
                // Reserve room for the whole device (or the limit): address space is free.
                let total = self.backend.mem_info()?.total;
                let cap = self.limit.unwrap_or(total).min(total).max(need).div_ceil(g) * g;
                let va = match self.backend.reserve(cap) {
                    Ok(v) => v,
                    Err(e) if is_oom(&e) => return Ok(None),
                    Err(e) => return Err(e),
                };
                match self.map_pages(st, va.0, need) {
                    Ok(true) => {}
                    Ok(false) => {
                        self.backend.free_reservation(va, cap)?;
                        return Ok(None);
                    }
                    Err(e) => {
                        let _ = self.backend.free_reservation(va, cap);
                        return Err(e);
                    }
                }
                let idx = st
                    .pool
                    .add_segment(va.0, need, cap, stream.0, PoolKind::Large, true);
                st.stats.segment.add(1);
                return Ok(Some(self.hand_out(st, idx, size, rounded)));
            }
        };
        let seg = seg.expect("matched Some above");
        if !self.map_pages(st, base + used, need)? {
            return Ok(None);
        }
        let idx = st.pool.grow(seg, need, stream.0);
        Ok(Some(self.hand_out(st, idx, size, rounded)))
    }

    /// Maps `bytes` of fresh pages at `va`, one physical allocation per page so any page can
    /// be unmapped alone. `Ok(false)` (with nothing left mapped) when the device is full.
    fn map_pages(&self, st: &mut State, va: u64, bytes: u64) -> Result<bool> {
        let g = self.granularity;
        let mut done = 0;
        let mut fail = None;
        while done < bytes {
            let r = self.backend.create_physical(g).and_then(|h| {
                let m = self.backend.map(DevicePtr(va + done), g, h);
                // The mapping keeps the memory; the handle is not needed after it.
                let rel = self.backend.release_physical(h);
                m.and(rel)
            });
            match r {
                Ok(()) => done += g,
                Err(e) => {
                    fail = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = fail {
            let mut off = 0;
            while off < done {
                self.backend.unmap(DevicePtr(va + off), g)?;
                off += g;
            }
            return if is_oom(&e) { Ok(false) } else { Err(e) };
        }
        st.stats.num_device_alloc += bytes / g;
        st.stats.reserved_bytes.add(bytes);
        st.history.push(HistoryEvent::SegmentAlloc {
            addr: va,
            size: bytes,
        });
        Ok(true)
    }

    pub(super) fn unmap_pages(&self, st: &mut State, va: u64, bytes: u64) -> Result<()> {
        let g = self.granularity;
        let mut off = 0;
        while off < bytes {
            self.backend.unmap(DevicePtr(va + off), g)?;
            off += g;
        }
        st.stats.num_device_free += bytes / g;
        st.stats.reserved_bytes.sub(bytes);
        st.history.push(HistoryEvent::SegmentFree {
            addr: va,
            size: bytes,
        });
        Ok(())
    }
}
