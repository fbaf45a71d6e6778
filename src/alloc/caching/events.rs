//! `record_stream`: blocks used on other streams wait, after their free, for events recorded
//! on those streams; the events are queried lazily at the next allocation.

use super::{CachingAllocator, Pending, State};
use crate::alloc::history::HistoryEvent;
use crate::backend::{DevicePtr, Stream};
use crate::error::{Error, Result};

impl CachingAllocator {
    /// Returns blocks whose `record_stream` events have all completed to the free lists.
    pub(super) fn process_events(&self, st: &mut State) -> Result<()> {
        let mut i = 0;
        while i < st.pending.len() {
            let mut done = true;
            for &e in &st.pending[i].events {
                if !self.backend.event_query(e)? {
                    done = false;
                    break;
                }
            }
            if done {
                let p = st.pending.swap_remove(i);
                self.finish_pending(st, p)?;
            } else {
                i += 1;
            }
        }
        Ok(())
    }

    /// Returns a parked block to its free list once its events completed (waiting for them
    /// first; for the device when an event cannot be waited for), poisoning it when so
    /// configured. Fails, with the block still parked in `st.pending`, only when neither its
    /// events nor the device can be waited for: then its reuse could not be ordered. A poison
    /// fill that fails is logged, not returned: the free said Ok long ago, and the call that
    /// got here (an allocation, a cache release) is about other memory.
    pub(super) fn finish_pending(&self, st: &mut State, p: Pending) -> Result<()> {
        // Complete already (or waited for here, on a cache release); this tells the backend
        // the host observed it, which orders the block's next use after that work.
        if let Some(Err(e)) = p
            .events
            .iter()
            .map(|&e| self.backend.event_synchronize(e))
            .find(Result::is_err)
        {
            if let Err(sync) = self.backend.synchronize() {
                tracing::debug!("a freed block's event: {e}; waiting for the device failed too");
                st.pending.push(p);
                return Err(sync);
            }
            st.stats.num_sync_all_streams += 1;
        }
        let (addr, size, stream) = {
            let b = st.pool.block(p.block);
            (b.addr, b.size, b.stream)
        };
        if self.config.poison {
            // The other streams' work is done; the fill is ordered before reuse on `stream`.
            if let Err(e) = self.poison(st, DevicePtr(addr), size, Stream(stream)) {
                tracing::warn!("a freed block at {addr:#x} was not poisoned: {e}");
            }
        }
        st.spare_events.extend(p.events);
        st.stats.active_bytes.sub(size);
        st.stats.active.sub(1);
        st.pool.release(p.block);
        self.update_split_stats(st);
        Ok(())
    }

    /// Records an event on each of `streams` and parks the block until all complete.
    pub(super) fn free_after(&self, st: &mut State, idx: u32, streams: &[Stream]) -> Result<()> {
        let mut events = Vec::with_capacity(streams.len());
        for &s in streams {
            let e = match st.spare_events.pop() {
                Some(e) => e,
                None => match self.backend.event_create(false) {
                    Ok(e) => e,
                    Err(err) => {
                        st.spare_events.extend(events);
                        return Err(err);
                    }
                },
            };
            if let Err(err) = self.backend.event_record(e, s) {
                st.spare_events.push(e);
                st.spare_events.extend(events);
                return Err(err);
            }
            events.push(e);
        }
        st.pool.set_pending(idx);
        st.pending.push(Pending { block: idx, events });
        Ok(())
    }

    /// Marks a live block as used on `stream` too: when freed, it returns to the pool only
    /// after the work queued on `stream` up to the free has completed.
    pub fn record_stream(&self, ptr: DevicePtr, stream: Stream) -> Result<()> {
        let mut st = self.lock();
        let idx = *st.live.get(&ptr.0).ok_or_else(|| Error::NotFound {
            kind: "allocation",
            name: ptr.to_string(),
        })?;
        let b = st.pool.block(idx);
        if b.stream == stream.0 {
            return Ok(());
        }
        let id = b.tag;
        let list = st.used_on.entry(idx).or_default();
        if !list.contains(&stream) {
            list.push(stream);
        }
        if st.history.enabled() {
            st.history.push(HistoryEvent::RecordStream {
                id,
                stream: stream.0,
            });
        }
        Ok(())
    }
}
