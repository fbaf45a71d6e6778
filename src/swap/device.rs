//! Device memory of one weight set.
//!
//! With the virtual-memory API, a set owns a reserved address range for its whole life; it is
//! backed by physical memory only while resident. Offloading a clean set unmaps and releases
//! the physical memory, no copy; bringing it back creates physical memory and maps it at the
//! same addresses, so tensors built over the set (candle's, PyTorch's) stay valid across swaps.
//!
//! Without the virtual-memory API, the set gets a plain allocation each time it becomes
//! resident, and its addresses may change between visits (reported in the status).

use crate::backend::{Backend, DevicePtr, PhysHandle};
use crate::error::Result;

/// Rounds `bytes` up to a multiple of `granularity` (at least one granule).
pub(crate) fn round_up(bytes: u64, granularity: u64) -> u64 {
    bytes.max(1).div_ceil(granularity) * granularity
}

#[derive(Debug)]
pub(crate) enum DeviceSpace {
    /// A reserved range, mapped to `phys` while resident.
    Vmm {
        va: DevicePtr,
        size: u64,
        phys: Option<PhysHandle>,
    },
    /// A plain allocation while resident.
    Plain { ptr: Option<DevicePtr>, size: u64 },
}

impl DeviceSpace {
    /// Reserves the address range (VMM) or records the size (plain); nothing is backed yet.
    pub(crate) fn new(b: &dyn Backend, bytes: u64, vmm: bool) -> Result<DeviceSpace> {
        let p = b.properties();
        if vmm && p.vmm_supported {
            let size = round_up(bytes, p.vmm_granularity);
            let va = b.reserve(size)?;
            Ok(DeviceSpace::Vmm {
                va,
                size,
                phys: None,
            })
        } else {
            Ok(DeviceSpace::Plain {
                ptr: None,
                size: bytes.max(1),
            })
        }
    }

    /// Bytes of device memory the set occupies while resident.
    pub(crate) fn size(&self) -> u64 {
        match self {
            DeviceSpace::Vmm { size, .. } | DeviceSpace::Plain { size, .. } => *size,
        }
    }

    /// Whether the addresses survive offloads.
    pub(crate) fn stable(&self) -> bool {
        matches!(self, DeviceSpace::Vmm { .. })
    }

    /// Whether physical memory backs the range now.
    pub(crate) fn is_backed(&self) -> bool {
        match self {
            DeviceSpace::Vmm { phys, .. } => phys.is_some(),
            DeviceSpace::Plain { ptr, .. } => ptr.is_some(),
        }
    }

    /// The base address: stable for VMM; for plain, valid only while backed.
    pub(crate) fn base(&self) -> Option<DevicePtr> {
        match self {
            DeviceSpace::Vmm { va, .. } => Some(*va),
            DeviceSpace::Plain { ptr, .. } => *ptr,
        }
    }

    /// Backs the range with device memory. On failure nothing is left allocated or mapped.
    pub(crate) fn back(&mut self, b: &dyn Backend) -> Result<DevicePtr> {
        match self {
            DeviceSpace::Vmm { va, size, phys } => {
                if phys.is_none() {
                    let h = b.create_physical(*size)?;
                    if let Err(e) = b.map(*va, *size, h) {
                        let _ = crate::backend::release_physical_retrying(b, h);
                        return Err(e);
                    }
                    *phys = Some(h);
                }
                Ok(*va)
            }
            DeviceSpace::Plain { ptr, size } => {
                if ptr.is_none() {
                    *ptr = Some(b.alloc(*size)?);
                }
                Ok(ptr.expect("set above"))
            }
        }
    }

    /// Returns the physical memory to the device; the reservation stays. The caller has made
    /// sure no work still uses the range.
    pub(crate) fn unback(&mut self, b: &dyn Backend) -> Result<()> {
        match self {
            DeviceSpace::Vmm { va, size, phys } => {
                if let Some(h) = *phys {
                    b.unmap(*va, *size)?;
                    *phys = None;
                    // Unmapped, the handle is reachable from here only: a failed release is
                    // tried once more, or the memory would be lost for the process's life.
                    crate::backend::release_physical_retrying(b, h)?;
                }
                Ok(())
            }
            DeviceSpace::Plain { ptr, .. } => {
                if let Some(p) = ptr.take() {
                    b.free(p)?;
                }
                Ok(())
            }
        }
    }

    /// Unbacks and frees the reservation. On failure the space keeps what it still owns (the
    /// mapping, or the reservation), so the caller can keep it and try again; on success the
    /// caller drops it.
    pub(crate) fn destroy(&mut self, b: &dyn Backend) -> Result<()> {
        self.unback(b)?;
        if let DeviceSpace::Vmm { va, size, .. } = self {
            b.free_reservation(*va, *size)?;
        }
        Ok(())
    }
}
