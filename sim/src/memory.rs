//! Device memory of the simulated GPU: physical allocations, a virtual address space of
//! reservations, and the mappings between them.
//!
//! Device addresses are opaque numbers in a range no host pointer uses; the bytes behind them
//! live in host allocations that only the device model touches. Virtual addresses are never
//! reused, so an access through a stale pointer finds no mapping and fails, as an illegal
//! address would on a GPU.

use std::alloc::{self, Layout};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{SimError, SimResult};
use crate::host_visible::{HostRange, Memfd};

/// First device address handed out. Device addresses are only compared and offset by the
/// model, never dereferenced by the host.
pub const VA_BASE: u64 = 0x0000_7e00_0000_0000;

/// The next free virtual address, shared by every simulated device in the process.
static NEXT_VA: AtomicU64 = AtomicU64::new(VA_BASE);

/// Alignment of plain allocations (`cuMemAlloc` guarantees at least 256 bytes).
pub(crate) const PLAIN_ALIGN: u64 = 512;

/// Physical buffers given back by the device, kept for reuse as a driver keeps its pages: a
/// fresh host allocation costs a page fault per 4 KiB on first touch and an `munmap` on free,
/// which a real GPU's allocation does not, and which would make the simulator's swap timings
/// measure the host's page-fault path instead of the copies. Reused memory is not zeroed;
/// neither is CUDA's.
pub(crate) struct PhysCache {
    free: std::sync::Mutex<HashMap<usize, Vec<usize>>>,
    /// The same for a host-visible device's memfds (already populated, so a swap-in into one
    /// costs a copy, not a page fault per 4 KiB).
    memfds: std::sync::Mutex<HashMap<usize, Vec<Memfd>>>,
    cached: AtomicU64,
    limit: u64,
}

impl PhysCache {
    pub(crate) fn new(limit: u64) -> Arc<PhysCache> {
        Arc::new(PhysCache {
            free: std::sync::Mutex::new(HashMap::new()),
            memfds: std::sync::Mutex::new(HashMap::new()),
            cached: AtomicU64::new(0),
            limit,
        })
    }

    fn take(&self, len: usize) -> Option<*mut u8> {
        let mut f = self.free.lock().expect("phys cache lock");
        let p = f.get_mut(&len)?.pop()?;
        self.cached.fetch_sub(len as u64, Ordering::SeqCst);
        Some(p as *mut u8)
    }

    fn take_memfd(&self, len: usize) -> Option<Memfd> {
        let mut f = self.memfds.lock().expect("phys cache lock");
        let m = f.get_mut(&len)?.pop()?;
        self.cached.fetch_sub(len as u64, Ordering::SeqCst);
        Some(m)
    }

    /// Keeps `m` (of `len` bytes) for reuse if there is room; otherwise it is dropped (closed).
    fn put_memfd(&self, m: Memfd, len: usize) {
        if self.cached.load(Ordering::SeqCst) + len as u64 > self.limit {
            return;
        }
        self.cached.fetch_add(len as u64, Ordering::SeqCst);
        self.memfds
            .lock()
            .expect("phys cache lock")
            .entry(len)
            .or_default()
            .push(m);
    }

    /// Keeps `ptr` for reuse if there is room; otherwise hands it back to the caller to free.
    fn put(&self, ptr: *mut u8, len: usize) -> Option<*mut u8> {
        if self.cached.load(Ordering::SeqCst) + len as u64 > self.limit {
            return Some(ptr);
        }
        self.cached.fetch_add(len as u64, Ordering::SeqCst);
        self.free
            .lock()
            .expect("phys cache lock")
            .entry(len)
            .or_default()
            .push(ptr as usize);
        None
    }
}

impl Drop for PhysCache {
    fn drop(&mut self) {
        for (len, ptrs) in self.free.get_mut().expect("phys cache lock").drain() {
            let layout = Layout::from_size_align(len.max(1), 4096).expect("layout was valid");
            for p in ptrs {
                // SAFETY: every cached pointer came from `alloc_zeroed` with this layout and is
                // owned by the cache alone.
                unsafe { alloc::dealloc(p as *mut u8, layout) };
            }
        }
    }
}

/// Bytes of simulated device memory, owned by the model and freed (or cached for reuse) when the
/// last mapping and handle to it are gone.
pub(crate) struct Phys {
    ptr: *mut u8,
    len: usize,
    used: Arc<AtomicU64>,
    cache: Arc<PhysCache>,
    /// The shared memory behind `ptr` on a host-visible device; `None`: a heap allocation.
    memfd: Option<Memfd>,
}

// SAFETY: `Phys` owns a heap allocation that nothing else aliases; the raw pointer is only
// dereferenced through `bytes_ptr`, whose callers follow the device's memory model (concurrent
// unordered access is reported by the race checker, as on a GPU).
unsafe impl Send for Phys {}
// SAFETY: see `Send`; `Phys` has no interior state besides the byte buffer.
unsafe impl Sync for Phys {}

impl Phys {
    pub(crate) fn new(
        len: usize,
        used: Arc<AtomicU64>,
        cache: Arc<PhysCache>,
        host_visible: bool,
    ) -> SimResult<Arc<Phys>> {
        if host_visible {
            let memfd = match cache.take_memfd(len) {
                Some(m) => m,
                None => Memfd::new(len)?,
            };
            used.fetch_add(len as u64, Ordering::SeqCst);
            return Ok(Arc::new(Phys {
                ptr: memfd.view(),
                len,
                used,
                cache,
                memfd: Some(memfd),
            }));
        }
        let ptr = match cache.take(len) {
            Some(p) => p,
            None => {
                let layout = Layout::from_size_align(len.max(1), 4096).map_err(|e| {
                    SimError::InvalidValue(format!("allocation of {len} bytes: {e}"))
                })?;
                // SAFETY: the layout has a non-zero size. Zeroed memory is requested lazily from
                // the OS, so a large simulated device costs host memory only for bytes written.
                let p = unsafe { alloc::alloc_zeroed(layout) };
                if p.is_null() {
                    return Err(SimError::OutOfMemory {
                        requested: len as u64,
                        free: 0,
                        capacity: 0,
                    });
                }
                p
            }
        };
        used.fetch_add(len as u64, Ordering::SeqCst);
        Ok(Arc::new(Phys {
            ptr,
            len,
            used,
            cache,
            memfd: None,
        }))
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The shared memory behind this allocation on a host-visible device.
    pub(crate) fn memfd(&self) -> Option<&Memfd> {
        self.memfd.as_ref()
    }

    /// Pointer to byte `off`; `off + len` must lie within the allocation.
    pub(crate) fn bytes_ptr(&self, off: usize, len: usize) -> *mut u8 {
        assert!(off + len <= self.len, "physical range out of bounds");
        // SAFETY: checked above that the offset stays inside the allocation.
        unsafe { self.ptr.add(off) }
    }
}

impl Drop for Phys {
    fn drop(&mut self) {
        self.used.fetch_sub(self.len as u64, Ordering::SeqCst);
        if let Some(m) = self.memfd.take() {
            self.cache.put_memfd(m, self.len);
            return;
        }
        if let Some(p) = self.cache.put(self.ptr, self.len) {
            let layout = Layout::from_size_align(self.len.max(1), 4096).expect("layout was valid");
            // SAFETY: `p` came from `alloc_zeroed` with this layout and is freed once.
            unsafe { alloc::dealloc(p, layout) };
        }
    }
}

/// A physical range mapped into a reservation.
#[derive(Clone)]
pub(crate) struct Mapping {
    pub(crate) len: u64,
    pub(crate) phys: Arc<Phys>,
    pub(crate) phys_off: u64,
    pub(crate) accessible: bool,
}

/// What a region of the address space is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RegionKind {
    /// A `cuMemAlloc`-style allocation: reserved, backed and mapped in one step.
    Plain,
    /// A `cuMemAllocAsync` allocation (stream ordered); freed with `free_async`.
    Async,
    /// A `cuMemAddressReserve` range.
    Reservation,
}

pub(crate) struct Region {
    pub(crate) len: u64,
    pub(crate) kind: RegionKind,
    /// Mappings by start address.
    pub(crate) maps: BTreeMap<u64, Mapping>,
    /// The host address range behind the region on a host-visible device, given back when the
    /// region is dropped.
    pub(crate) host: Option<HostRange>,
}

/// One resolved piece of a device range: bytes in a physical allocation.
pub(crate) struct Segment {
    pub(crate) phys: Arc<Phys>,
    pub(crate) off: usize,
    pub(crate) len: usize,
}

/// The address space and physical allocations of one device.
pub(crate) struct Memory {
    pub(crate) regions: BTreeMap<u64, Region>,
    pub(crate) handles: HashMap<u64, Arc<Phys>>,
    next_handle: u64,
    pub(crate) used: Arc<AtomicU64>,
    pub(crate) cache: Arc<PhysCache>,
    /// Device addresses are host addresses (see [`crate::SimConfig::host_visible`]).
    pub(crate) host_visible: bool,
}

impl Memory {
    /// A new address space whose freed physical memory is cached up to `cache_limit` bytes.
    pub(crate) fn new(cache_limit: u64, host_visible: bool) -> Self {
        Memory {
            host_visible,
            cache: PhysCache::new(cache_limit),
            regions: BTreeMap::new(),
            handles: HashMap::new(),
            next_handle: 1,
            used: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A fresh, never used address range of `len` bytes aligned to `align`, with a guard gap
    /// after it so an overrun never lands in a neighbour. Addresses are unique in the process
    /// across every simulated device (as device addresses are under CUDA's unified addressing),
    /// so a pointer from one device is never a valid pointer on another.
    pub(crate) fn take_va(&mut self, len: u64, align: u64) -> u64 {
        let mut start = 0;
        let _ = NEXT_VA.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |next| {
            start = next.div_ceil(align) * align;
            Some(start + len + align.max(PLAIN_ALIGN))
        });
        start
    }

    /// A fresh address range as [`Memory::take_va`] gives, backed by an inaccessible host range
    /// on a host-visible device (whose start is then the address).
    pub(crate) fn new_va(&mut self, len: u64, align: u64) -> SimResult<(u64, Option<HostRange>)> {
        if !self.host_visible {
            return Ok((self.take_va(len, align), None));
        }
        let align = align.max(crate::host_visible::page_size() as u64);
        let r = HostRange::reserve(len, align, align.max(PLAIN_ALIGN))?;
        Ok((r.addr(), Some(r)))
    }

    /// Allocates physical memory of `len` bytes in this address space's mode.
    pub(crate) fn new_phys(&self, len: usize) -> SimResult<Arc<Phys>> {
        Phys::new(
            len,
            self.used.clone(),
            self.cache.clone(),
            self.host_visible,
        )
    }

    pub(crate) fn new_handle(&mut self, phys: Arc<Phys>) -> u64 {
        let h = self.next_handle;
        self.next_handle += 1;
        self.handles.insert(h, phys);
        h
    }

    /// The region containing `addr`, with its base.
    pub(crate) fn region_of(&self, addr: u64) -> Option<(u64, &Region)> {
        let (&base, region) = self.regions.range(..=addr).next_back()?;
        (addr < base + region.len).then_some((base, region))
    }

    /// Resolves `[addr, addr + len)` into the physical bytes behind it, failing if any byte is
    /// outside a region, unmapped, or not made accessible.
    pub(crate) fn resolve(&self, addr: u64, len: u64) -> SimResult<Vec<Segment>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let (base, region) = self.region_of(addr).ok_or_else(|| {
            SimError::IllegalAddress(format!(
                "{addr:#x}: no allocation or reservation contains this address"
            ))
        })?;
        let end = addr
            .checked_add(len)
            .ok_or_else(|| SimError::InvalidValue(format!("range {addr:#x}+{len} overflows")))?;
        if end > base + region.len {
            return Err(SimError::IllegalAddress(format!(
                "range {addr:#x}+{len} runs past the end of its allocation {base:#x}+{}",
                region.len
            )));
        }
        let mut out = Vec::new();
        let mut cur = addr;
        // The mapping that starts at or before `cur`, then the following ones.
        let first = region
            .maps
            .range(..=cur)
            .next_back()
            .map(|(k, _)| *k)
            .unwrap_or(cur);
        for (&mstart, m) in region.maps.range(first..) {
            if cur >= end {
                break;
            }
            if mstart > cur || mstart + m.len <= cur {
                if mstart + m.len <= cur {
                    continue;
                }
                return Err(SimError::IllegalAddress(format!(
                    "{cur:#x} (in range {addr:#x}+{len}) is not mapped"
                )));
            }
            if !m.accessible {
                return Err(SimError::IllegalAddress(format!(
                    "{cur:#x} is mapped but access was never granted (cuMemSetAccess)"
                )));
            }
            let take = (mstart + m.len).min(end) - cur;
            out.push(Segment {
                phys: m.phys.clone(),
                off: (m.phys_off + (cur - mstart)) as usize,
                len: take as usize,
            });
            cur += take;
        }
        if cur < end {
            return Err(SimError::IllegalAddress(format!(
                "{cur:#x} (in range {addr:#x}+{len}) is not mapped"
            )));
        }
        Ok(out)
    }
}
