//! The pinned host arena: pins large slabs once and hands out exact-size ranges of them.
//!
//! Pinning is slow (about 0.24 s/GiB through `cuMemHostAlloc`; registering pages runs at 1-2
//! GB/s) and copies from pageable memory reach a fraction of the link, so weight sets and
//! staging buffers live in ranges of a few large pinned slabs.
//!
//! * **Slabs** come from [`SlabSource::HostAlloc`] (`cuMemHostAlloc`) or
//!   [`SlabSource::MmapRegister`] (an anonymous mapping pre-faulted by
//!   [`ArenaConfig::pin_threads`] threads, then registered in chunks of at most
//!   [`MAX_REGISTER_BYTES`]).
//! * **Sub-allocation** is exact-size best fit with coalescing over offsets ([`FreeList`]);
//!   sizes are rounded only to [`ARENA_ALIGN`]. A request larger than
//!   [`ArenaConfig::slab_size`] gets a slab of its own, so a weight set is one contiguous range.
//! * **Budget**: pinned bytes never exceed [`ArenaConfig::budget`]; a request that cannot fit
//!   (after trimming empty slabs) fails with [`Error::HostBudgetExceeded`].
//! * [`PinnedArena::trim`] unpins empty slabs; dropping the last `Arc` unpins everything.
//!
//! ```
//! use std::sync::Arc;
//! use vramswap::arena::{ArenaConfig, PinnedArena};
//! use vramswap::backend::sim::SimBackend;
//!
//! let arena = PinnedArena::new(Arc::new(SimBackend::with_capacity(1 << 30)), ArenaConfig::default())?;
//! let mut r = arena.alloc(1000)?;
//! r.as_mut_slice().fill(7);
//! assert_eq!(arena.stats().used_bytes, 4096);
//! drop(r);
//! assert_eq!(arena.stats().used_bytes, 0);
//! # Ok::<(), vramswap::Error>(())
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;

use crate::backend::SharedBackend;
use crate::error::{Error, Result};

mod config;
mod freelist;
mod range;
mod slab;

pub use config::{parse_arena_config, ArenaConfig, SlabSource, ARENA_ENV};
pub use freelist::FreeList;
pub use range::HostRange;
use slab::Slab;
pub use slab::MAX_REGISTER_BYTES;

/// Alignment (and size granule) of every range: 4 KiB, one page.
///
/// Copy engines reach full speed from any 256-byte-aligned pinned address, so 256 B would do for
/// DMA alone; a page costs at most 4 KiB per range, nothing beside ranges of whole weight sets
/// (hundreds of MB), and buys ranges that share no page with another range, so a range can be
/// registered, advised (`madvise`) or protected on its own, and offsets inside a range keep the
/// same alignment as on the device (whose allocations are 256 B or 2 MiB aligned).
pub const ARENA_ALIGN: u64 = 4096;

/// Granule of slab sizes: 2 MiB, a huge page.
pub const SLAB_GRANULE: u64 = 2 << 20;

/// A snapshot of the arena.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ArenaStats {
    /// Bytes pinned in slabs.
    pub pinned_bytes: u64,
    /// Bytes in live ranges (rounded to [`ARENA_ALIGN`]).
    pub used_bytes: u64,
    /// Bytes the live ranges' owners asked for.
    pub requested_bytes: u64,
    /// Longest free range in any slab.
    pub largest_free: u64,
    /// Slabs held.
    pub slabs: u64,
    /// Live ranges.
    pub ranges: u64,
    /// Most bytes ever pinned at once.
    pub peak_pinned_bytes: u64,
    /// The budget, if any.
    pub budget: Option<u64>,
    /// Time spent pinning slabs (allocation or pre-fault + registration), in all.
    pub pin_time: Duration,
}

struct State {
    slabs: BTreeMap<u64, Slab>,
    next_id: u64,
    /// Pinned bytes plus bytes being pinned right now (counted against the budget).
    pinned: u64,
    peak_pinned: u64,
    used: u64,
    requested: u64,
    ranges: u64,
    pin_time: Duration,
}

/// Pinned host memory, pinned in slabs and handed out as exact-size [`HostRange`]s.
pub struct PinnedArena {
    backend: SharedBackend,
    config: ArenaConfig,
    state: Mutex<State>,
}

impl std::fmt::Debug for PinnedArena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedArena")
            .field("config", &self.config)
            .field("stats", &self.stats())
            .finish()
    }
}

fn round_up(v: u64, to: u64) -> Option<u64> {
    v.checked_add(to - 1).map(|x| x / to * to)
}

impl PinnedArena {
    /// An arena over `backend`. Pins nothing until the first allocation.
    pub fn new(backend: SharedBackend, config: ArenaConfig) -> Result<Arc<PinnedArena>> {
        if config.slab_size == 0 {
            return Err(Error::Config {
                key: "slab_size".into(),
                problem: "must be more than 0".into(),
            });
        }
        Ok(Arc::new(PinnedArena {
            backend,
            config,
            state: Mutex::new(State {
                slabs: BTreeMap::new(),
                next_id: 0,
                pinned: 0,
                peak_pinned: 0,
                used: 0,
                requested: 0,
                ranges: 0,
                pin_time: Duration::ZERO,
            }),
        }))
    }

    /// The backend the arena pins through.
    pub fn backend(&self) -> &SharedBackend {
        &self.backend
    }

    /// The configuration.
    pub fn config(&self) -> &ArenaConfig {
        &self.config
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent bookkeeping (every update is a few
        // plain assignments), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A range of `bytes` bytes (the size is rounded up to [`ARENA_ALIGN`] internally; `len()`
    /// is exactly `bytes`). Pins a new slab when no free range fits. The bytes are not zeroed.
    ///
    /// Fails with [`Error::HostBudgetExceeded`] when a new slab would pass the budget, even
    /// after trimming empty slabs.
    pub fn alloc(self: &Arc<Self>, bytes: u64) -> Result<HostRange> {
        if bytes == 0 {
            return Ok(HostRange::empty(self.clone()));
        }
        let len = round_up(bytes, ARENA_ALIGN)
            .ok_or_else(|| Error::InvalidArgument(format!("arena allocation of {bytes} bytes")))?;
        let mut st = self.lock();
        if let Some(r) = self.take_from_slabs(&mut st, bytes, len) {
            return Ok(r);
        }
        // No slab fits: pin a new one, outside the lock (pinning takes seconds).
        let mut size = self
            .config
            .slab_size
            .max(len)
            .checked_next_multiple_of(SLAB_GRANULE)
            .ok_or_else(|| Error::InvalidArgument(format!("arena allocation of {bytes} bytes")))?;
        if let Some(budget) = self.config.budget {
            if st.pinned.saturating_add(size) > budget {
                self.trim_locked(&mut st);
            }
            let room = budget.saturating_sub(st.pinned) / ARENA_ALIGN * ARENA_ALIGN;
            if len > room {
                return Err(Error::HostBudgetExceeded {
                    requested: bytes,
                    used: st.pinned,
                    budget,
                });
            }
            size = size.min(room);
        }
        st.pinned += size;
        drop(st);
        let made = match self.config.source {
            SlabSource::HostAlloc => Slab::host_alloc(self.backend.as_ref(), size),
            SlabSource::MmapRegister => Slab::mmap_register(
                self.backend.as_ref(),
                size,
                self.config.pin_threads,
                self.config.register_chunk,
            ),
        };
        let mut st = self.lock();
        let (slab, took) = match made {
            Ok(v) => v,
            Err(e) => {
                st.pinned -= size;
                return Err(e);
            }
        };
        st.peak_pinned = st.peak_pinned.max(st.pinned);
        st.pin_time += took;
        tracing::debug!(bytes = size, ?took, "pinned a slab");
        let id = st.next_id;
        st.next_id += 1;
        st.slabs.insert(id, slab);
        // Another thread may have freed a better range meanwhile; best fit over all slabs still
        // finds room, since the new slab holds `len`.
        self.take_from_slabs(&mut st, bytes, len)
            .ok_or_else(|| Error::InvalidState("fresh slab could not hold its request".into()))
    }

    fn take_from_slabs(
        self: &Arc<Self>,
        st: &mut State,
        bytes: u64,
        len: u64,
    ) -> Option<HostRange> {
        let (&id, _) = st
            .slabs
            .iter()
            .filter_map(|(id, s)| s.free.best_fit(len).map(|fit| (id, fit)))
            .min_by_key(|&(_, fit)| fit)?;
        let slab = st.slabs.get_mut(&id)?;
        let offset = slab.free.alloc(len)?;
        // SAFETY: `offset + len <= slab.len`, so the pointer stays inside the slab.
        let ptr = unsafe { slab.ptr.add(offset as usize) };
        st.used += len;
        st.requested += bytes;
        st.ranges += 1;
        Some(HostRange::new(self.clone(), id, offset, len, bytes, ptr))
    }

    /// Returns a range's bytes (called by `HostRange::drop`).
    pub(crate) fn release(&self, slab: u64, offset: u64, len: u64, requested: u64) {
        let mut st = self.lock();
        let freed = st
            .slabs
            .get_mut(&slab)
            .is_some_and(|s| s.free.free(offset, len));
        if freed {
            st.used -= len;
            st.requested -= requested;
            st.ranges -= 1;
        } else {
            tracing::error!(
                slab,
                offset,
                len,
                "arena range returned twice or to no slab"
            );
        }
    }

    /// Unpins every empty slab; returns the bytes unpinned.
    pub fn trim(&self) -> u64 {
        let mut st = self.lock();
        self.trim_locked(&mut st)
    }

    fn trim_locked(&self, st: &mut State) -> u64 {
        let empty: Vec<u64> = st
            .slabs
            .iter()
            .filter(|(_, s)| s.free.is_empty())
            .map(|(&id, _)| id)
            .collect();
        let mut bytes = 0;
        for id in empty {
            if let Some(s) = st.slabs.remove(&id) {
                bytes += s.len;
                s.release(self.backend.as_ref());
            }
        }
        st.pinned -= bytes;
        bytes
    }

    /// A snapshot of the arena's numbers.
    pub fn stats(&self) -> ArenaStats {
        let st = self.lock();
        ArenaStats {
            pinned_bytes: st.slabs.values().map(|s| s.len).sum(),
            used_bytes: st.used,
            requested_bytes: st.requested,
            largest_free: st
                .slabs
                .values()
                .map(|s| s.free.largest_free())
                .max()
                .unwrap_or(0),
            slabs: st.slabs.len() as u64,
            ranges: st.ranges,
            peak_pinned_bytes: st.peak_pinned,
            budget: self.config.budget,
            pin_time: st.pin_time,
        }
    }

    /// Backend registrations held by mapped slabs, per slab (for tests).
    #[cfg(test)]
    fn registrations(&self) -> Vec<usize> {
        self.lock()
            .slabs
            .values()
            .map(|s| s.registrations())
            .collect()
    }
}

impl Drop for PinnedArena {
    fn drop(&mut self) {
        // Every `HostRange` holds an `Arc` of the arena, so none is alive here.
        let st = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        for (_, s) in std::mem::take(&mut st.slabs) {
            s.release(self.backend.as_ref());
        }
    }
}

#[cfg(test)]
mod tests;
