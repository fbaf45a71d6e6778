//! The price of the driver's virtual-memory calls at one granule (2 MiB on current GPUs):
//! what the page pool (`page_pool:true`) and the expandable segments pay per map and unmap,
//! beside a plain allocation and free of the same size.
//!
//! The counts come from `vramswap replay --compare` (calls per 1000 operations of a trace);
//! this is their price per call, so the two multiply into the time a trace spends in the
//! driver. On `sim` and the emulated driver the figures are host-clock bookkeeping, not a
//! driver's price; only a GPU's figures mean anything.

use std::time::Instant;

use serde::Serialize;

use crate::backend::{Backend, DevicePtr, PhysHandle};
use crate::error::Result;

/// Microseconds per call of each virtual-memory operation, each the mean over `calls` calls
/// timed together on the host clock.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct VmmPrice {
    /// Bytes per call (the device's granularity).
    pub granule_bytes: u64,
    /// Calls timed per operation.
    pub calls: usize,
    /// `cuMemAddressReserve` of one granule.
    pub reserve_us: f64,
    /// `cuMemCreate` of one granule.
    pub create_us: f64,
    /// `cuMemMap` plus `cuMemSetAccess` of one granule (what [`Backend::map`] does).
    pub map_us: f64,
    /// `cuMemUnmap` of one granule.
    pub unmap_us: f64,
    /// `cuMemRelease` of one granule.
    pub release_us: f64,
    /// `cuMemAddressFree` of one granule.
    pub free_reservation_us: f64,
    /// `cuMemAlloc` of the same size, for comparison.
    pub alloc_us: f64,
    /// `cuMemFree` of the same size.
    pub free_us: f64,
}

impl VmmPrice {
    /// One map and one unmap: what the page pool pays per page it moves between blocks.
    pub fn map_unmap_pair_us(&self) -> f64 {
        self.map_us + self.unmap_us
    }
}

/// Times `calls` calls of each operation at the device's granularity. `None` where the device
/// has no virtual-memory management. Everything made is released, also on an error.
pub fn run(b: &dyn Backend, calls: usize) -> Result<Option<VmmPrice>> {
    let p = b.properties();
    if !p.vmm_supported || p.vmm_granularity == 0 {
        return Ok(None);
    }
    let g = p.vmm_granularity;
    let calls = calls.max(1);
    let per_call = |t: Instant| t.elapsed().as_secs_f64() * 1e6 / calls as f64;
    let mut held = Held {
        b,
        bytes: g,
        reservations: Vec::new(),
        handles: Vec::new(),
        mapped: Vec::new(),
        allocations: Vec::new(),
    };
    let t = Instant::now();
    for _ in 0..calls {
        held.reservations.push(b.reserve(g)?);
    }
    let reserve_us = per_call(t);
    let t = Instant::now();
    for _ in 0..calls {
        held.handles.push(b.create_physical(g)?);
    }
    let create_us = per_call(t);
    let t = Instant::now();
    for (va, h) in held
        .reservations
        .clone()
        .into_iter()
        .zip(held.handles.clone())
    {
        b.map(va, g, h)?;
        held.mapped.push(va);
    }
    let map_us = per_call(t);
    let t = Instant::now();
    while let Some(va) = held.mapped.pop() {
        b.unmap(va, g)?;
    }
    let unmap_us = per_call(t);
    let t = Instant::now();
    while let Some(h) = held.handles.pop() {
        b.release_physical(h)?;
    }
    let release_us = per_call(t);
    let t = Instant::now();
    while let Some(va) = held.reservations.pop() {
        b.free_reservation(va, g)?;
    }
    let free_reservation_us = per_call(t);
    let t = Instant::now();
    for _ in 0..calls {
        held.allocations.push(b.alloc(g)?);
    }
    let alloc_us = per_call(t);
    let t = Instant::now();
    while let Some(ptr) = held.allocations.pop() {
        b.free(ptr)?;
    }
    let free_us = per_call(t);
    Ok(Some(VmmPrice {
        granule_bytes: g,
        calls,
        reserve_us,
        create_us,
        map_us,
        unmap_us,
        release_us,
        free_reservation_us,
        alloc_us,
        free_us,
    }))
}

/// What a run holds, released in reverse on drop (an error part way leaves nothing behind).
struct Held<'a> {
    b: &'a dyn Backend,
    bytes: u64,
    reservations: Vec<DevicePtr>,
    handles: Vec<PhysHandle>,
    mapped: Vec<DevicePtr>,
    allocations: Vec<DevicePtr>,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        // Errors here are ignored: this runs only after an earlier error, which is reported.
        for va in self.mapped.drain(..) {
            let _ = self.b.unmap(va, self.bytes);
        }
        for h in self.handles.drain(..) {
            let _ = self.b.release_physical(h);
        }
        for va in self.reservations.drain(..) {
            let _ = self.b.free_reservation(va, self.bytes);
        }
        for ptr in self.allocations.drain(..) {
            let _ = self.b.free(ptr);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::sim::SimBackend;

    #[test]
    fn times_every_call_and_leaves_nothing_behind() {
        let backend = SimBackend::with_capacity(1 << 30);
        let before = backend.mem_info().unwrap();
        let price = run(&backend, 16).unwrap().expect("sim has VMM");
        assert_eq!(price.granule_bytes, backend.properties().vmm_granularity);
        assert_eq!(price.calls, 16);
        for us in [
            price.reserve_us,
            price.create_us,
            price.map_us,
            price.unmap_us,
            price.release_us,
            price.free_reservation_us,
            price.alloc_us,
            price.free_us,
        ] {
            assert!(us.is_finite() && us >= 0.0, "{price:?}");
        }
        assert_eq!(backend.mem_info().unwrap(), before);
        let leaks = backend.device().leaks();
        assert!(leaks.is_clean(), "{leaks:?}");
    }

    #[test]
    fn an_out_of_memory_part_way_releases_what_was_made() {
        // 64 granules do not fit in a 16-granule device: creation fails part way.
        let backend = SimBackend::with_capacity(32 << 20);
        let before = backend.mem_info().unwrap();
        assert!(run(&backend, 64).is_err());
        assert_eq!(backend.mem_info().unwrap(), before);
        let leaks = backend.device().leaks();
        assert!(leaks.is_clean(), "{leaks:?}");
    }
}
