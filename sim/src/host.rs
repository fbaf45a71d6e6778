//! Host memory the simulated device knows about: pinned allocations and registered ranges.
//!
//! A copy whose host side lies entirely inside a known range is a pinned copy; anything else is
//! pageable memory, slower under the bandwidth model. Both are asynchronous in the model: the
//! reference says only that a pageable copy "might be synchronous".

use std::alloc::{self, Layout};
use std::collections::BTreeMap;

use crate::error::{SimError, SimResult};

pub(crate) struct HostRange {
    pub(crate) len: u64,
    pub(crate) read_only: bool,
    /// Set when the device allocated this memory (`host_alloc`); `None` for registrations.
    pub(crate) layout: Option<Layout>,
}

#[derive(Default)]
pub(crate) struct HostMemory {
    pub(crate) ranges: BTreeMap<u64, HostRange>,
}

/// How a host range is known to the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    /// Not pinned: copies are synchronous.
    Pageable,
    /// Pinned (allocated or registered), writable by the device.
    Pinned,
    /// Registered read-only: the device may read it but never write it.
    PinnedReadOnly,
}

impl HostMemory {
    pub(crate) fn kind(&self, ptr: u64, len: u64) -> HostKind {
        let Some((&start, r)) = self.ranges.range(..=ptr).next_back() else {
            return HostKind::Pageable;
        };
        if ptr.saturating_add(len) <= start + r.len {
            if r.read_only {
                HostKind::PinnedReadOnly
            } else {
                HostKind::Pinned
            }
        } else {
            HostKind::Pageable
        }
    }

    fn overlaps(&self, ptr: u64, len: u64) -> bool {
        if let Some((&start, r)) = self.ranges.range(..ptr.saturating_add(len)).next_back() {
            return start + r.len > ptr;
        }
        false
    }

    pub(crate) fn alloc(&mut self, len: u64) -> SimResult<*mut u8> {
        if len == 0 {
            return Err(SimError::InvalidValue(
                "pinned allocation of 0 bytes".into(),
            ));
        }
        let layout = Layout::from_size_align(len as usize, 4096).map_err(|e| {
            SimError::InvalidValue(format!("pinned allocation of {len} bytes: {e}"))
        })?;
        // SAFETY: non-zero size checked above.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(SimError::OutOfMemory {
                requested: len,
                free: 0,
                capacity: 0,
            });
        }
        self.ranges.insert(
            ptr as u64,
            HostRange {
                len,
                read_only: false,
                layout: Some(layout),
            },
        );
        Ok(ptr)
    }

    pub(crate) fn free(&mut self, ptr: *mut u8) -> SimResult<u64> {
        match self.ranges.get(&(ptr as u64)) {
            Some(HostRange {
                layout: Some(_), ..
            }) => {}
            _ => {
                return Err(SimError::InvalidValue(format!(
                    "{ptr:p} is not a pinned allocation of this device"
                )))
            }
        }
        let r = self.ranges.remove(&(ptr as u64)).expect("checked above");
        let layout = r.layout.expect("checked above");
        // SAFETY: `ptr` was returned by `alloc_zeroed` with this layout in `alloc`, and its
        // entry is removed, so it is freed exactly once.
        unsafe { alloc::dealloc(ptr, layout) };
        Ok(r.len)
    }

    pub(crate) fn register(&mut self, ptr: u64, len: u64, read_only: bool) -> SimResult<()> {
        if ptr == 0 || len == 0 {
            return Err(SimError::InvalidValue(
                "host registration of a null pointer or 0 bytes".into(),
            ));
        }
        if self.overlaps(ptr, len) {
            return Err(SimError::HostMemoryAlreadyRegistered(format!(
                "{ptr:#x}+{len} overlaps a range already pinned or registered"
            )));
        }
        self.ranges.insert(
            ptr,
            HostRange {
                len,
                read_only,
                layout: None,
            },
        );
        Ok(())
    }

    pub(crate) fn unregister(&mut self, ptr: u64) -> SimResult<u64> {
        match self.ranges.get(&ptr) {
            Some(HostRange { layout: None, .. }) => {
                Ok(self.ranges.remove(&ptr).expect("present").len)
            }
            _ => Err(SimError::HostMemoryNotRegistered(format!(
                "{ptr:#x} is not the start of a registered host range"
            ))),
        }
    }
}

impl Drop for HostMemory {
    fn drop(&mut self) {
        for (&ptr, r) in &self.ranges {
            if let Some(layout) = r.layout {
                // SAFETY: allocated by `alloc` with this layout and still owned by the device,
                // which is going away; nothing can use the pointer after the device is gone.
                unsafe { alloc::dealloc(ptr as *mut u8, layout) };
            }
        }
    }
}
