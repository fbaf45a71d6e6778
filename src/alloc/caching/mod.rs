//! [`CachingAllocator`]: the block bookkeeping of [`super::pool`] over a backend, with
//! per-stream reuse, `record_stream` events, the out-of-memory ladder and expandable segments.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

use super::config::{AllocatorConfig, LargeBlocks, MemoryLimit, POISON_PATTERN};
use super::history::{History, HistoryEvent};
use super::pool::{Backing, BlockPool};
use super::sizing::{round_size, segment_size, PoolKind};
use super::stats::AllocatorStats;
use crate::backend::{DevicePtr, Event, SharedBackend, Stream};
use crate::error::{Error, Result};

/// A pressure handler: given the bytes needed, frees what it can and returns the bytes freed.
pub type PressureHandler = Box<dyn Fn(u64) -> u64 + Send + Sync>;

thread_local! {
    /// Set while this thread runs pressure handlers.
    static IN_HANDLER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

type SharedHandler = Arc<dyn Fn(u64) -> u64 + Send + Sync>;

/// Identifies a registered pressure handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PressureHandlerId(u64);

/// Hashes 512-byte-aligned addresses with one multiply.
#[derive(Default)]
struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (v >> 9).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type AddrMap<V> = HashMap<u64, V, BuildHasherDefault<AddrHasher>>;

struct Pending {
    block: u32,
    events: Vec<Event>,
}

struct State {
    pool: BlockPool,
    /// Allocated blocks by address.
    live: AddrMap<u32>,
    /// Streams other than its own that a live block was used on (`record_stream`).
    used_on: HashMap<u32, Vec<Stream>>,
    pending: Vec<Pending>,
    /// One event per stream, recorded when another stream takes over its free blocks.
    stream_events: Vec<(Stream, Event)>,
    spare_events: Vec<Event>,
    stats: AllocatorStats,
    history: History,
    next_id: u64,
    /// The page pool's pages and ranges (empty unless the page pool is on).
    pages: paged::Pages,
}

/// A caching device allocator in the manner of PyTorch's `CUDACachingAllocator` and RMM's
/// stream-ordered pool, one per device, `Send + Sync`.
///
/// Blocks are cached per stream: a block freed on stream S is reused on S at once (work on S
/// runs in order); another stream T borrows S's free blocks after making T wait on an event
/// recorded on S, never through a host synchronisation. `record_stream` delays a block's
/// return until the other streams' work is done. When memory runs short the allocator frees
/// its empty cached segments, then calls the registered pressure handlers, retrying after each,
/// and only then fails with [`Error::AllocatorOutOfMemory`].
///
/// ```
/// use std::sync::Arc;
/// use vramswap::alloc::{AllocatorConfig, CachingAllocator};
/// use vramswap::backend::{sim::SimBackend, Backend};
///
/// let backend = Arc::new(SimBackend::with_capacity(64 << 20));
/// let stream = backend.stream_create().unwrap();
/// let alloc = CachingAllocator::new(backend.clone(), AllocatorConfig::default()).unwrap();
/// let p = alloc.allocate(1000, stream).unwrap();
/// alloc.free(p).unwrap();
/// let q = alloc.allocate(1000, stream).unwrap(); // served from the cache
/// assert_eq!(p, q);
/// assert_eq!(alloc.stats().cache_hits, 1);
/// alloc.free(q).unwrap();
/// drop(alloc);
/// backend.stream_destroy(stream).unwrap();
/// assert!(backend.device().leaks().is_clean());
/// ```
pub struct CachingAllocator {
    backend: SharedBackend,
    config: AllocatorConfig,
    limit: Option<u64>,
    granularity: u64,
    /// Where large blocks come from, resolved for this device (never `Auto`).
    large: LargeBlocks,
    /// The device's memory in all.
    device_total: u64,
    state: Mutex<State>,
    handlers: Mutex<Vec<(u64, SharedHandler)>>,
    next_handler: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for CachingAllocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachingAllocator")
            .field("config", &self.config)
            .field("limit", &self.limit)
            .finish()
    }
}

fn is_oom(e: &Error) -> bool {
    e.is_out_of_memory()
}

impl CachingAllocator {
    /// An allocator over `backend`. A fractional limit is resolved against the device's total
    /// memory now. Returns the allocator itself; share it with `Arc`.
    pub fn new(backend: SharedBackend, config: AllocatorConfig) -> Result<CachingAllocator> {
        let total = backend.mem_info()?.total;
        let limit = match config.limit {
            MemoryLimit::None => None,
            MemoryLimit::Bytes(b) => Some(b),
            MemoryLimit::Fraction(f) if f > 0.0 && f <= 1.0 => Some((total as f64 * f) as u64),
            MemoryLimit::Fraction(f) => {
                return Err(Error::Config {
                    key: "limit_fraction".into(),
                    problem: format!("{f} is not in (0, 1]"),
                })
            }
        };
        let props = backend.properties();
        if config.large_blocks == LargeBlocks::Expandable && !props.vmm_supported {
            return Err(Error::Unsupported(
                "expandable segments need the virtual-memory API, which this device lacks".into(),
            ));
        }
        let granularity = props.vmm_granularity.max(1);
        let large = config.large_blocks.resolve(props.vmm_supported);
        if config.poison {
            probe_fill(backend.as_ref()).map_err(|e| {
                Error::Unsupported(format!(
                    "poison fills freed blocks with a kernel this backend cannot run ({e}); \
                     without it no free could succeed"
                ))
            })?;
        }
        let history = History::new(config.history);
        Ok(CachingAllocator {
            backend,
            limit,
            granularity,
            large,
            device_total: total,
            state: Mutex::new(State {
                pool: BlockPool::new(),
                live: AddrMap::with_capacity_and_hasher(1024, Default::default()),
                used_on: HashMap::new(),
                pending: Vec::new(),
                stream_events: Vec::new(),
                spare_events: Vec::new(),
                stats: AllocatorStats::default(),
                history,
                next_id: 0,
                pages: paged::Pages::default(),
            }),
            config,
            handlers: Mutex::new(Vec::new()),
            next_handler: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// An allocator configured by `VRAMSWAP_ALLOC_CONF`.
    pub fn from_env(backend: SharedBackend) -> Result<CachingAllocator> {
        Self::new(backend, AllocatorConfig::from_env()?)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the bookkeeping half-updated in a way
        // that matters more than refusing all further service, so recover the guard.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The backend.
    pub fn backend(&self) -> &SharedBackend {
        &self.backend
    }

    /// The configuration.
    pub fn config(&self) -> &AllocatorConfig {
        &self.config
    }

    /// The limit on reserved bytes, if any.
    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    /// Bytes free on the device now.
    pub fn device_free(&self) -> Result<u64> {
        Ok(self.backend.mem_info()?.free)
    }

    /// Allocates at least `size` bytes for use on `stream`. The block is remembered with its
    /// stream: [`CachingAllocator::free`] needs only the pointer.
    pub fn allocate(&self, size: u64, stream: Stream) -> Result<DevicePtr> {
        let rounded = round_size(size, self.config.roundup_power2_divisions)
            .filter(|r| segment_size(*r).is_some())
            .ok_or_else(|| {
                Error::InvalidArgument(format!("allocation of {size} bytes overflows"))
            })?;
        let kind = PoolKind::of(rounded);
        let mut st = self.lock();
        if !st.pending.is_empty() {
            self.process_events(&mut st)?;
        }
        if let Some(p) = self.try_cached(&mut st, size, rounded, kind, stream)? {
            return Ok(p);
        }
        st.stats.cache_misses += 1;
        if let Some(p) = self.try_backend(&mut st, size, rounded, kind, stream)? {
            return Ok(p);
        }
        // A request larger than the device (or the limit) fails whatever is freed: no cache
        // release, no pressure handlers evicting other users' memory for nothing.
        let ceiling = self
            .limit
            .map_or(self.device_total, |l| l.min(self.device_total));
        if rounded <= ceiling {
            // Rung 2: free empty cached segments and retry.
            st.stats.num_alloc_retries += 1;
            self.release_cached(&mut st)?;
            if let Some(p) = self.try_cached(&mut st, size, rounded, kind, stream)? {
                return Ok(p);
            }
            if let Some(p) = self.try_backend(&mut st, size, rounded, kind, stream)? {
                return Ok(p);
            }
            // Rung 3: pressure handlers, called without the lock.
            let handlers: Vec<_> = self
                .handlers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(_, h)| h.clone())
                .collect();
            // A handler that allocates and runs short does not call the handlers again.
            if !handlers.is_empty() && !IN_HANDLER.with(|f| f.get()) {
                drop(st);
                let mut freed = 0u64;
                let mut calls = 0u64;
                IN_HANDLER.with(|f| f.set(true));
                // Cleared on the way out, a panicking handler included.
                struct Clear;
                impl Drop for Clear {
                    fn drop(&mut self) {
                        IN_HANDLER.with(|f| f.set(false));
                    }
                }
                let clear = Clear;
                for h in &handlers {
                    calls += 1;
                    freed = freed.saturating_add(h(rounded.saturating_sub(freed)));
                    if freed >= rounded {
                        break;
                    }
                }
                drop(clear);
                st = self.lock();
                st.stats.num_pressure_calls += calls;
                st.stats.num_alloc_retries += 1;
                if !st.pending.is_empty() {
                    self.process_events(&mut st)?;
                }
                if let Some(p) = self.try_cached(&mut st, size, rounded, kind, stream)? {
                    return Ok(p);
                }
                self.release_cached(&mut st)?;
                if let Some(p) = self.try_cached(&mut st, size, rounded, kind, stream)? {
                    return Ok(p);
                }
                if let Some(p) = self.try_backend(&mut st, size, rounded, kind, stream)? {
                    return Ok(p);
                }
            }
        }
        st.stats.num_ooms += 1;
        st.history.push(HistoryEvent::Oom { size });
        let allocated = st.stats.allocated_bytes.current;
        let reserved = st.stats.reserved_bytes.current;
        drop(st);
        Err(Error::AllocatorOutOfMemory {
            requested: rounded,
            allocated,
            reserved,
            device_free: self.device_free().unwrap_or(0),
            limit: self.limit,
            fragmented: reserved.saturating_sub(allocated),
        })
    }

    /// Serves a request from the cache: the stream's own free blocks, else another stream's
    /// after an event wait.
    fn try_cached(
        &self,
        st: &mut State,
        size: u64,
        rounded: u64,
        kind: PoolKind,
        stream: Stream,
    ) -> Result<Option<DevicePtr>> {
        let max_split = self.config.max_split_size;
        let idx = match st.pool.find_free(kind, stream.0, rounded, max_split) {
            Some(i) => i,
            None => {
                let Some(i) = st
                    .pool
                    .find_free_elsewhere(kind, stream.0, rounded, max_split)
                else {
                    return Ok(None);
                };
                // Order `stream` after everything queued so far on the block's stream.
                let from = Stream(st.pool.block(i).stream);
                let ev = self.stream_event(st, from)?;
                if self.backend.event_record(ev, from).is_ok() {
                    self.backend.stream_wait_event(stream, ev)?;
                } else {
                    // The block's stream is gone (destroyed by its user): nothing can be
                    // recorded on it any more, so wait for the device instead.
                    self.backend.synchronize()?;
                    st.stats.num_sync_all_streams += 1;
                }
                st.pool.retag(i, stream.0);
                st.stats.cross_stream_reuses += 1;
                i
            }
        };
        st.stats.cache_hits += 1;
        Ok(Some(self.hand_out(st, idx, size, rounded)))
    }

    fn hand_out(&self, st: &mut State, idx: u32, size: u64, rounded: u64) -> DevicePtr {
        let idx = st.pool.take(idx, rounded, self.config.max_split_size);
        let id = st.next_id;
        st.next_id += 1;
        st.pool.set_user(idx, size, id);
        let (addr, bsize, stream) = {
            let b = st.pool.block(idx);
            (b.addr, b.size, b.stream)
        };
        st.live.insert(addr, idx);
        let s = &mut st.stats;
        s.allocated_bytes.add(bsize);
        s.requested_bytes.add(size);
        s.active_bytes.add(bsize);
        s.allocation.add(1);
        s.active.add(1);
        self.update_split_stats(st);
        if st.history.enabled() {
            st.history.push(HistoryEvent::Alloc {
                id,
                size,
                stream,
                addr: Some(addr),
            });
        }
        DevicePtr(addr)
    }

    #[inline]
    fn update_split_stats(&self, st: &mut State) {
        let (bytes, count) = st.pool.inactive_split();
        st.stats.inactive_split_bytes.set(bytes);
        st.stats.inactive_split.set(count);
    }

    fn stream_event(&self, st: &mut State, stream: Stream) -> Result<Event> {
        if let Some((_, e)) = st.stream_events.iter().find(|(s, _)| *s == stream) {
            return Ok(*e);
        }
        let e = self.backend.event_create(false)?;
        st.stream_events.push((stream, e));
        Ok(e)
    }

    /// Gets memory from the backend for a request; `Ok(None)` when the device or the limit
    /// has no room.
    fn try_backend(
        &self,
        st: &mut State,
        size: u64,
        rounded: u64,
        kind: PoolKind,
        stream: Stream,
    ) -> Result<Option<DevicePtr>> {
        if self.large == LargeBlocks::Expandable && kind == PoolKind::Large {
            return self.try_expand(st, size, rounded, stream);
        }
        if self.large == LargeBlocks::PagePool && kind == PoolKind::Large {
            return self.try_paged(st, size, rounded, stream);
        }
        let Some(seg) = segment_size(rounded) else {
            return Ok(None);
        };
        let reserved = st.stats.reserved_bytes.current;
        if self.limit.is_some_and(|l| reserved.saturating_add(seg) > l) {
            return Ok(None);
        }
        let base = match self.backend.alloc(seg) {
            Ok(p) => p,
            Err(e) if is_oom(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        st.stats.num_device_alloc += 1;
        st.stats.reserved_bytes.add(seg);
        st.stats.segment.add(1);
        st.history.push(HistoryEvent::SegmentAlloc {
            addr: base.0,
            size: seg,
        });
        let idx = st
            .pool
            .add_segment(base.0, seg, seg, stream.0, kind, Backing::Fixed);
        Ok(Some(self.hand_out(st, idx, size, rounded)))
    }

    /// Waits for pending blocks and the device, then returns every empty segment (and every
    /// whole free page of expandable segments) to the backend.
    fn release_cached(&self, st: &mut State) -> Result<()> {
        let mut result = Ok(());
        for p in std::mem::take(&mut st.pending) {
            if let Err(e) = self.finish_pending(st, p) {
                result = Err(e);
            }
        }
        result?;
        self.backend.synchronize()?;
        st.stats.num_sync_all_streams += 1;
        st.pool.merge_all_free();
        for seg in st.pool.empty_segments() {
            if st.pool.segment(seg).backing == Backing::Fixed {
                self.free_fixed_segment(st, seg)?;
            }
        }
        let expandable: Vec<u32> = st
            .pool
            .segments()
            .filter(|(_, s)| s.backing == Backing::Expandable)
            .map(|(i, _)| i)
            .collect();
        let mut result = Ok(());
        for seg in expandable {
            result = self.release_expandable(st, seg);
            if result.is_err() {
                break;
            }
        }
        if result.is_ok() {
            result = self.release_paged(st);
        }
        self.update_split_stats(st);
        result
    }

    /// Gives an empty fixed segment back to the backend, counted; returns its bytes.
    fn free_fixed_segment(&self, st: &mut State, seg: u32) -> Result<u64> {
        let s = st.pool.segment(seg).clone();
        self.backend.free(DevicePtr(s.base))?;
        st.pool.remove_segment(seg);
        st.stats.num_device_free += 1;
        st.stats.reserved_bytes.sub(s.size);
        st.stats.segment.sub(1);
        st.history.push(HistoryEvent::SegmentFree {
            addr: s.base,
            size: s.size,
        });
        Ok(s.size)
    }

    /// Unmaps the whole free pages of an expandable segment, cuts unmapped pages off its end,
    /// and frees its reservation when nothing of it is mapped. On an error the bookkeeping
    /// says exactly what is still mapped and reserved.
    fn release_expandable(&self, st: &mut State, seg: u32) -> Result<()> {
        self.unmap_free_pages(st, seg)?;
        if st.pool.all_unmapped(seg) {
            let s = st.pool.segment(seg);
            // Freed first: a segment whose reservation could not be freed stays, as one
            // hole, and a later release tries again.
            self.free_reservation(DevicePtr(s.base), s.capacity)?;
            st.stats.segment.sub(1);
        }
        st.pool.drop_unmapped_tail(seg);
        Ok(())
    }

    /// Frees a block. It goes back to its stream's free list at once, or, when
    /// [`CachingAllocator::record_stream`] named other streams, once their work is done. An
    /// unknown pointer (one never handed out, such as the free rest of a split segment) is
    /// [`Error::NotFound`]; a second free is [`Error::InvalidState`].
    ///
    /// A stream the block was used on may be gone (destroyed by its user): its event cannot be
    /// recorded, and the free waits for the whole device instead. Likewise a poison fill that
    /// its stream no longer takes runs on the default stream. Either the block is freed and the
    /// result is `Ok`, or the error (the device cannot be waited for; with `poison`, the fill
    /// fails on the default stream too) leaves it allocated, as it was.
    pub fn free(&self, ptr: DevicePtr) -> Result<()> {
        let mut st = self.lock();
        let Some(&idx) = st.live.get(&ptr.0) else {
            return Err(self.not_live(&st, ptr));
        };
        let (size, requested, stream, id) = {
            let b = st.pool.block(idx);
            (b.size, b.requested, Stream(b.stream), b.tag)
        };
        let others = if st.used_on.is_empty() {
            None
        } else {
            st.used_on.remove(&idx)
        };
        let mut parked = false;
        if let Some(streams) = &others {
            match self.free_after(&mut st, idx, streams) {
                Ok(()) => parked = true,
                Err(e) => {
                    // The events could not be recorded: order the reuse by waiting for the
                    // device instead.
                    if let Err(sync) = self.backend.synchronize() {
                        tracing::debug!("free of {ptr}: {e}; waiting for the device failed too");
                        st.used_on.insert(idx, others.unwrap_or_default());
                        return Err(sync);
                    }
                    st.stats.num_sync_all_streams += 1;
                    tracing::debug!("free of {ptr}: {e}; waited for the device instead");
                }
            }
        }
        if !parked && self.config.poison {
            if let Err(e) = self.poison(&mut st, ptr, size, stream) {
                if let Some(streams) = others {
                    st.used_on.insert(idx, streams);
                }
                return Err(e);
            }
        }
        // Nothing below fails.
        st.live.remove(&ptr.0);
        let s = &mut st.stats;
        s.allocated_bytes.sub(size);
        s.requested_bytes.sub(requested);
        s.allocation.sub(1);
        if st.history.enabled() {
            st.history.push(HistoryEvent::Free { id });
        }
        if !parked {
            st.stats.active_bytes.sub(size);
            st.stats.active.sub(1);
            st.pool.release(idx);
            self.update_split_stats(&mut st);
        }
        Ok(())
    }

    /// The error for freeing `ptr`, which is no live block: a block handed out at that
    /// address and freed is a double free, anything else is not found.
    #[cold]
    fn not_live(&self, st: &State, ptr: DevicePtr) -> Error {
        match st.pool.find_block_at(ptr.0) {
            Some(i) if st.pool.block(i).handed_out => {
                Error::InvalidState(format!("double free of device pointer {ptr}"))
            }
            _ => Error::NotFound {
                kind: "allocation",
                name: ptr.to_string(),
            },
        }
    }

    /// Fills a freed block with [`POISON_PATTERN`], ordered before its reuse on `stream`.
    /// When `stream` no longer takes work (its user destroyed it), the fill runs on the
    /// default stream after the device is idle, and is waited for.
    fn poison(&self, st: &mut State, ptr: DevicePtr, size: u64, stream: Stream) -> Result<()> {
        let Err(e) = self
            .backend
            .fill_u32_async(ptr, size, POISON_PATTERN, stream)
        else {
            return Ok(());
        };
        let fallback = || -> Result<()> {
            self.backend.synchronize()?;
            self.backend
                .fill_u32_async(ptr, size, POISON_PATTERN, Stream::default())?;
            self.backend.synchronize()
        };
        if let Err(f) = fallback() {
            tracing::debug!("poisoning freed block {ptr}: {e}; on the default stream: {f}");
            return Err(f);
        }
        st.stats.num_sync_all_streams += 1;
        tracing::debug!("poisoning freed block {ptr}: {e}; filled on the default stream");
        Ok(())
    }

    /// Forgets `stream` before its user destroys it: the blocks allocated or cached on it
    /// belong to the default stream from now on, and nothing is recorded on it again (a
    /// destroyed `CUstream` must not reach the driver). The caller has synchronised `stream`,
    /// so its blocks may be reused on the default stream at once.
    pub fn forget_stream(&self, stream: Stream) {
        let to = Stream::default();
        if stream == to {
            return;
        }
        let mut st = self.lock();
        st.pool.move_stream(stream.0, to.0);
        st.used_on.retain(|_, on| {
            on.retain(|s| *s != stream);
            !on.is_empty()
        });
        if let Some(i) = st.stream_events.iter().position(|(s, _)| *s == stream) {
            let (_, e) = st.stream_events.swap_remove(i);
            st.spare_events.push(e);
        }
        self.update_split_stats(&mut st);
    }

    /// Returns every unused cached byte to the backend (after waiting for the device).
    pub fn empty_cache(&self) -> Result<()> {
        let mut st = self.lock();
        self.release_cached(&mut st)
    }

    /// Registers a handler called (without any allocator lock held) when a request cannot be
    /// served after freeing the cache; it gets the bytes needed and returns the bytes it freed.
    /// It may free allocator blocks or call the backend.
    pub fn add_pressure_handler(&self, f: PressureHandler) -> PressureHandlerId {
        let id = self
            .next_handler
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.handlers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((id, Arc::from(f)));
        PressureHandlerId(id)
    }

    /// Removes a handler; false when it was not registered.
    pub fn remove_pressure_handler(&self, id: PressureHandlerId) -> bool {
        let mut h = self.handlers.lock().unwrap_or_else(|p| p.into_inner());
        let before = h.len();
        h.retain(|(i, _)| *i != id.0);
        h.len() != before
    }
}

mod events;
mod expandable;
mod paged;
mod report;
#[cfg(test)]
mod tests;

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<CachingAllocator>();
}

/// One fill of a small scratch allocation, waited for: whether [`CachingAllocator::free`] can
/// poison at all on this backend (the cuda backend's kernels may be unavailable).
fn probe_fill(b: &dyn crate::backend::Backend) -> Result<()> {
    let p = b.alloc(4)?;
    let r = b
        .fill_u32_async(p, 4, POISON_PATTERN, Stream::DEFAULT)
        .and_then(|()| b.synchronize());
    let freed = b.free(p);
    r.and(freed)
}
