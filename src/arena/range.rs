//! [`HostRange`]: one live range of the pinned arena, returned on drop.

use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;

use super::PinnedArena;

/// A range of pinned host memory from a [`PinnedArena`]; its bytes go back to the arena when it
/// is dropped. The arena stays alive (its slabs pinned) while any range does.
///
/// # Accessors and the device
///
/// [`HostRange::as_slice`] and [`HostRange::as_mut_slice`] are safe: no other `HostRange`
/// aliases these bytes, and the borrow checker orders host accesses. The device reaches the
/// bytes only through `unsafe` backend calls (`copy_htod_async`, `copy_dtoh_async` with
/// [`HostRange::as_ptr`]), and whoever starts such an asynchronous copy takes on its contract:
/// until the copy has completed (stream or event synchronised), the host must not write the
/// range (either direction) nor read it (device-to-host), through these accessors or otherwise,
/// and the `HostRange` must not be dropped.
pub struct HostRange {
    arena: Arc<PinnedArena>,
    slab: u64,
    offset: u64,
    /// Bytes reserved in the slab (the request rounded up to the arena's alignment).
    reserved: u64,
    /// Bytes the owner asked for.
    len: u64,
    ptr: NonNull<u8>,
}

// SAFETY: a `HostRange` owns its bytes exclusively (the arena hands each byte to one range at a
// time), so sending it to another thread moves that ownership; the arena handle is `Arc` of a
// `Sync` type.
unsafe impl Send for HostRange {}
// SAFETY: shared references only give `&[u8]` reads and a raw pointer; mutation needs `&mut`.
unsafe impl Sync for HostRange {}

impl HostRange {
    pub(crate) fn new(
        arena: Arc<PinnedArena>,
        slab: u64,
        offset: u64,
        reserved: u64,
        len: u64,
        ptr: *mut u8,
    ) -> HostRange {
        HostRange {
            arena,
            slab,
            offset,
            reserved,
            len,
            ptr: NonNull::new(ptr).unwrap_or(NonNull::dangling()),
        }
    }

    /// A zero-length range that owns no slab bytes.
    pub(crate) fn empty(arena: Arc<PinnedArena>) -> HostRange {
        HostRange {
            arena,
            slab: u64::MAX,
            offset: 0,
            reserved: 0,
            len: 0,
            ptr: NonNull::dangling(),
        }
    }

    /// The first byte (dangling but non-null for an empty range).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Bytes in the range, exactly as requested.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for a zero-length range.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The arena this range belongs to.
    pub fn arena(&self) -> &Arc<PinnedArena> {
        &self.arena
    }

    /// The bytes, for reading. See the type's docs for the contract with asynchronous copies.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` points at `len` bytes this range owns exclusively inside a pinned slab
        // that outlives `self` (the range holds the arena); the bytes are initialised (fresh
        // pinned memory and anonymous mappings are zero pages from the OS, and later writes come
        // from these accessors or device copies); `len` fits in `usize` since the slab of at
        // least that size was allocated.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len as usize) }
    }

    /// The bytes, for writing. See the type's docs for the contract with asynchronous copies.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`; `&mut self` makes this the only host access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len as usize) }
    }
}

impl fmt::Debug for HostRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostRange")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .field("slab", &self.slab)
            .field("offset", &self.offset)
            .finish()
    }
}

impl Drop for HostRange {
    fn drop(&mut self) {
        if self.reserved > 0 {
            self.arena
                .release(self.slab, self.offset, self.reserved, self.len);
        }
    }
}
