//! Device and pinned host memory of the simulated device: plain and stream-ordered
//! allocations, the virtual-memory calls, pinned allocations and registrations.

use std::sync::atomic::Ordering;

use super::SimDevice;
use crate::error::{SimError, SimResult};
use crate::host::HostKind;
use crate::memory::{Mapping, Memory, Region, RegionKind, PLAIN_ALIGN};
use crate::race::{Access, Space};
use crate::FaultOp;

impl SimDevice {
    // ----- device memory ---------------------------------------------------------------------

    pub(crate) fn check_capacity(&self, mem: &Memory, len: u64) -> SimResult<()> {
        let used = mem.used.load(Ordering::SeqCst);
        let cap = self.inner.config.capacity;
        if used.checked_add(len).is_none_or(|t| t > cap) {
            return Err(SimError::OutOfMemory {
                requested: len,
                free: cap.saturating_sub(used),
                capacity: cap,
            });
        }
        Ok(())
    }

    pub(crate) fn new_region(&self, len: u64, kind: RegionKind) -> SimResult<u64> {
        if len == 0 {
            return Err(SimError::InvalidValue("allocation of 0 bytes".into()));
        }
        let rounded = len.checked_next_multiple_of(PLAIN_ALIGN).ok_or_else(|| {
            SimError::InvalidValue(format!("allocation of {len} bytes overflows"))
        })?;
        let mut mem = self.inner.memory.lock().expect("memory lock");
        self.check_capacity(&mem, rounded)?;
        let phys = mem.new_phys(rounded as usize)?;
        let (va, host) = mem.new_va(rounded, PLAIN_ALIGN)?;
        if let Some(fd) = phys.memfd() {
            fd.map_at(va, rounded, 0, true)?;
        }
        let mut maps = std::collections::BTreeMap::new();
        maps.insert(
            va,
            Mapping {
                len: rounded,
                phys,
                phys_off: 0,
                accessible: true,
            },
        );
        mem.regions.insert(
            va,
            Region {
                len: rounded,
                kind,
                maps,
                host,
            },
        );
        self.inner
            .counters
            .lock()
            .expect("counters lock")
            .allocations += 1;
        Ok(va)
    }

    /// Allocates `len` bytes of device memory (`cuMemAlloc`).
    pub fn alloc(&self, len: u64) -> SimResult<u64> {
        self.fault(FaultOp::DeviceAlloc)?;
        self.new_region(len, RegionKind::Plain)
    }

    /// Frees an allocation made by [`SimDevice::alloc`] (`cuMemFree`). Like `cudaFree`, this
    /// waits for all work on the device first.
    pub fn free(&self, ptr: u64) -> SimResult<()> {
        {
            let mem = self.inner.memory.lock().expect("memory lock");
            match mem.regions.get(&ptr) {
                Some(r) if r.kind == RegionKind::Plain => {}
                Some(r) if r.kind == RegionKind::Async => {}
                _ => {
                    return Err(SimError::InvalidValue(format!(
                        "{ptr:#x} is not the start of a live device allocation"
                    )))
                }
            }
        }
        self.synchronize()?;
        self.drop_region(ptr, "free");
        Ok(())
    }

    pub(crate) fn drop_region(&self, ptr: u64, what: &str) {
        let region = self
            .inner
            .memory
            .lock()
            .expect("memory lock")
            .regions
            .remove(&ptr);
        if let Some(r) = region {
            self.release_check(Space::Device, ptr, ptr + r.len, what);
        }
    }

    pub(crate) fn release_check(&self, space: Space, start: u64, end: u64, what: &str) {
        // How far each stream has got, destroyed streams with work left included (their work
        // still runs); read before the checker lock is taken.
        let mut done: std::collections::HashMap<u64, u64> = self
            .inner
            .streams
            .read()
            .expect("streams lock")
            .iter()
            .map(|(id, st)| (*id, st.shared.completed()))
            .collect();
        for (id, st, _) in self.inner.retired.lock().expect("retired lock").iter() {
            done.insert(*id, st.shared.completed());
        }
        let completed = |s: u64| done.get(&s).copied().unwrap_or(u64::MAX);
        self.inner
            .checker
            .lock()
            .expect("checker lock")
            .release(space, start, end, &completed, what);
    }

    /// Stream-ordered allocation (`cuMemAllocAsync`): usable by work queued on `stream` after
    /// this call.
    pub fn alloc_async(&self, len: u64, stream: u64) -> SimResult<u64> {
        self.stream(stream)?;
        self.fault(FaultOp::DeviceAlloc)?;
        self.new_region(len, RegionKind::Async)
    }

    /// Stream-ordered free (`cuMemFreeAsync`): the memory is released once the work queued on
    /// `stream` before this call has completed.
    pub fn free_async(&self, ptr: u64, stream: u64) -> SimResult<()> {
        {
            let mem = self.inner.memory.lock().expect("memory lock");
            match mem.regions.get(&ptr) {
                Some(r) if r.kind == RegionKind::Async || r.kind == RegionKind::Plain => {}
                _ => {
                    return Err(SimError::InvalidValue(format!(
                        "{ptr:#x} is not the start of a live device allocation"
                    )))
                }
            }
        }
        let len = self.region_len(ptr);
        let dev = self.clone();
        // The free is an operation of the stream that writes (invalidates) the whole range.
        self.enqueue(
            stream,
            "cuMemFreeAsync",
            vec![Access::write(Space::Device, ptr, len)],
            Box::new(move || {
                dev.inner
                    .memory
                    .lock()
                    .expect("memory lock")
                    .regions
                    .remove(&ptr);
                Ok(())
            }),
        )?;
        Ok(())
    }

    pub(crate) fn region_len(&self, ptr: u64) -> u64 {
        self.inner
            .memory
            .lock()
            .expect("memory lock")
            .regions
            .get(&ptr)
            .map(|r| r.len)
            .unwrap_or(0)
    }

    /// The allocation granularity of the virtual-memory calls.
    pub fn granularity(&self) -> u64 {
        self.inner.config.granularity
    }

    pub(crate) fn check_granular(&self, what: &str, v: u64) -> SimResult<()> {
        let g = self.inner.config.granularity;
        if v == 0 || !v.is_multiple_of(g) {
            return Err(SimError::InvalidValue(format!(
                "{what} {v:#x} is not a non-zero multiple of the granularity {g:#x}"
            )));
        }
        Ok(())
    }

    /// Reserves a virtual address range (`cuMemAddressReserve`). `len` must be a multiple of the
    /// granularity; `align` 0 means the granularity.
    pub fn reserve(&self, len: u64, align: u64) -> SimResult<u64> {
        self.fault(FaultOp::Reserve)?;
        self.check_granular("reservation size", len)?;
        let g = self.inner.config.granularity;
        let align = if align == 0 { g } else { align };
        if !align.is_power_of_two() {
            return Err(SimError::InvalidValue(format!(
                "alignment {align} is not a power of two"
            )));
        }
        let mut mem = self.inner.memory.lock().expect("memory lock");
        let (va, host) = mem.new_va(len, align.max(g))?;
        mem.regions.insert(
            va,
            Region {
                len,
                kind: RegionKind::Reservation,
                maps: Default::default(),
                host,
            },
        );
        Ok(va)
    }

    /// Frees a reservation (`cuMemAddressFree`). The range must be a whole reservation, and
    /// every mapping in it must have been unmapped first.
    pub fn address_free(&self, va: u64, len: u64) -> SimResult<()> {
        let mut mem = self.inner.memory.lock().expect("memory lock");
        match mem.regions.get(&va) {
            Some(r) if r.kind == RegionKind::Reservation => {
                if r.len != len {
                    return Err(SimError::InvalidValue(format!(
                        "cuMemAddressFree of {va:#x}+{len}: the reservation is {} bytes",
                        r.len
                    )));
                }
                if !r.maps.is_empty() {
                    return Err(SimError::NotPermitted(format!(
                        "reservation {va:#x} still has {} mapping(s); unmap them first",
                        r.maps.len()
                    )));
                }
            }
            _ => {
                return Err(SimError::InvalidValue(format!(
                    "{va:#x} is not the start of a reserved address range"
                )))
            }
        }
        mem.regions.remove(&va);
        Ok(())
    }

    /// Creates physical memory of `len` bytes (`cuMemCreate`); `len` must be a multiple of the
    /// granularity. Returns the allocation handle.
    pub fn create(&self, len: u64) -> SimResult<u64> {
        self.fault(FaultOp::PhysCreate)?;
        self.check_granular("physical allocation size", len)?;
        let mut mem = self.inner.memory.lock().expect("memory lock");
        self.check_capacity(&mem, len)?;
        let phys = mem.new_phys(len as usize)?;
        self.inner
            .counters
            .lock()
            .expect("counters lock")
            .allocations += 1;
        Ok(mem.new_handle(phys))
    }

    /// Releases a physical allocation handle (`cuMemRelease`). The memory itself is freed when
    /// the last mapping of it is unmapped.
    pub fn release(&self, handle: u64) -> SimResult<()> {
        self.fault(FaultOp::PhysRelease)?;
        let mut mem = self.inner.memory.lock().expect("memory lock");
        mem.handles.remove(&handle).map(|_| ()).ok_or_else(|| {
            SimError::InvalidValue(format!("{handle:#x} is not a live allocation handle"))
        })
    }

    /// Maps `len` bytes of physical allocation `handle`, from `offset`, at `va` (`cuMemMap`).
    /// The range must lie in a reservation, be granularity-aligned and not already mapped.
    /// The mapping is not accessible until [`SimDevice::set_access`].
    pub fn map(&self, va: u64, len: u64, handle: u64, offset: u64) -> SimResult<()> {
        self.fault(FaultOp::Map)?;
        // cuMemMap: "offset - Offset into the memory represented by handle ... Currently must be
        // zero."
        if offset != 0 {
            return Err(SimError::InvalidValue(format!(
                "cuMemMap offset must be 0, got {offset}"
            )));
        }
        self.check_granular("mapping size", len)?;
        self.check_granular("mapping address", va)?;
        let mut mem = self.inner.memory.lock().expect("memory lock");
        let phys = mem.handles.get(&handle).cloned().ok_or_else(|| {
            SimError::InvalidHandle(format!("{handle:#x} is not a live allocation handle"))
        })?;
        if len > phys.len() as u64 {
            return Err(SimError::InvalidValue(format!(
                "mapping of {len} bytes exceeds the physical allocation of {} bytes",
                phys.len()
            )));
        }
        let (base, region) = mem
            .region_of(va)
            .ok_or_else(|| SimError::InvalidValue(format!("{va:#x} is not in a reserved range")))?;
        if region.kind != RegionKind::Reservation || va + len > base + region.len {
            return Err(SimError::InvalidValue(format!(
                "{va:#x}+{len} does not lie within one reserved range"
            )));
        }
        let overlapping = region
            .maps
            .range(..va + len)
            .next_back()
            .is_some_and(|(&s, m)| s + m.len > va);
        if overlapping {
            return Err(SimError::InvalidValue(format!(
                "{va:#x}+{len} overlaps an existing mapping"
            )));
        }
        if let Some(fd) = phys.memfd() {
            fd.map_at(va, len, 0, false)?;
        }
        let region = mem.regions.get_mut(&base).expect("found above");
        region.maps.insert(
            va,
            Mapping {
                len,
                phys,
                phys_off: 0,
                accessible: false,
            },
        );
        Ok(())
    }

    /// Grants read-write access to the mappings covering `[va, va + len)` (`cuMemSetAccess`).
    /// Every byte of the range must be mapped.
    pub fn set_access(&self, va: u64, len: u64) -> SimResult<()> {
        let mut mem = self.inner.memory.lock().expect("memory lock");
        let (base, _) = mem
            .region_of(va)
            .ok_or_else(|| SimError::InvalidValue(format!("{va:#x} is not in a reserved range")))?;
        let region = mem.regions.get_mut(&base).expect("found above");
        let end = va + len;
        let mut cur = va;
        let keys: Vec<u64> = region.maps.range(..end).map(|(&k, _)| k).collect();
        for k in keys {
            let m = region.maps.get_mut(&k).expect("key from map");
            if k + m.len <= va {
                continue;
            }
            if k > cur {
                break;
            }
            if m.phys.memfd().is_some() {
                crate::host_visible::grant(k, m.len)?;
            }
            m.accessible = true;
            cur = k + m.len;
        }
        if cur < end {
            return Err(SimError::InvalidValue(format!(
                "cuMemSetAccess: {cur:#x} in {va:#x}+{len} is not mapped"
            )));
        }
        Ok(())
    }

    /// Unmaps `[va, va + len)` (`cuMemUnmap`), which must consist of whole mappings.
    pub fn unmap(&self, va: u64, len: u64) -> SimResult<()> {
        self.fault(FaultOp::Unmap)?;
        {
            let mut mem = self.inner.memory.lock().expect("memory lock");
            let (base, region) = mem.region_of(va).ok_or_else(|| {
                SimError::InvalidValue(format!("{va:#x} is not in a reserved range"))
            })?;
            if region.kind != RegionKind::Reservation {
                return Err(SimError::InvalidValue(format!(
                    "{va:#x} is a plain allocation, not a mapping"
                )));
            }
            // cuMemUnmap: "The range must be the entire contiguous address range that was
            // mapped to."
            let end = va + len;
            let mut cur = va;
            let mut keys = Vec::new();
            for (&k, m) in region.maps.range(va..end) {
                if k != cur || k + m.len > end {
                    break;
                }
                keys.push(k);
                cur = k + m.len;
            }
            if cur != end || keys.is_empty() {
                return Err(SimError::InvalidValue(format!(
                    "cuMemUnmap of {va:#x}+{len} does not cover whole mappings"
                )));
            }
            let region = mem.regions.get_mut(&base).expect("found above");
            for k in keys {
                if let Some(m) = region.maps.remove(&k) {
                    if region.host.is_some() {
                        crate::host_visible::revoke(k, m.len)?;
                    }
                }
            }
        }
        self.release_check(Space::Device, va, va + len, "cuMemUnmap");
        Ok(())
    }

    // ----- pinned host memory ----------------------------------------------------------------

    /// Allocates page-locked host memory (`cuMemHostAlloc`).
    pub fn host_alloc(&self, len: u64) -> SimResult<*mut u8> {
        self.fault(FaultOp::HostAlloc)?;
        let p = self.inner.host.lock().expect("host lock").alloc(len)?;
        self.inner.pinned_bytes.fetch_add(len, Ordering::SeqCst);
        Ok(p)
    }

    /// Frees memory from [`SimDevice::host_alloc`] (`cuMemFreeHost`).
    pub fn host_free(&self, ptr: *mut u8) -> SimResult<()> {
        let len = self.inner.host.lock().expect("host lock").free(ptr)?;
        self.release_check(Space::Host, ptr as u64, ptr as u64 + len, "cuMemFreeHost");
        self.inner.pinned_bytes.fetch_sub(len, Ordering::SeqCst);
        Ok(())
    }

    /// Page-locks an existing host range (`cuMemHostRegister`); `read_only` ranges may be read
    /// by the device but never written.
    pub fn host_register(&self, ptr: *const u8, len: u64, read_only: bool) -> SimResult<()> {
        self.fault(FaultOp::HostRegister)?;
        self.inner
            .host
            .lock()
            .expect("host lock")
            .register(ptr as u64, len, read_only)
    }

    /// Unregisters a range registered by [`SimDevice::host_register`] (`cuMemHostUnregister`).
    pub fn host_unregister(&self, ptr: *const u8) -> SimResult<()> {
        let len = self
            .inner
            .host
            .lock()
            .expect("host lock")
            .unregister(ptr as u64)?;
        self.release_check(
            Space::Host,
            ptr as u64,
            ptr as u64 + len,
            "cuMemHostUnregister",
        );
        Ok(())
    }

    /// How the device sees `[ptr, ptr + len)`.
    pub fn host_kind(&self, ptr: *const u8, len: u64) -> HostKind {
        self.inner
            .host
            .lock()
            .expect("host lock")
            .kind(ptr as u64, len)
    }
}
