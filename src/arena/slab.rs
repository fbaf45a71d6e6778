//! Slabs: large pinned host regions the arena sub-allocates. A slab comes either from the
//! backend's pinned allocation (`cuMemHostAlloc`) or from an anonymous mapping that several
//! threads pre-fault before it is registered (`cuMemHostRegister`) in chunks.

use std::time::{Duration, Instant};

use memmap2::{MmapMut, MmapOptions};

use super::freelist::FreeList;
use crate::backend::Backend;
use crate::error::{Error, Result};

/// The largest range registered with one `host_register` call: 512 GiB. Registering more at
/// once is slow to fail and has tripped driver limits; several chunks cost nothing extra.
pub const MAX_REGISTER_BYTES: u64 = 512 << 30;

/// Page size used to pre-fault mappings.
const PAGE: usize = 4096;

/// Where a slab's memory came from.
enum Memory {
    /// `host_alloc_pinned`.
    Pinned,
    /// An anonymous mapping, registered as `chunks` (start pointers) with the backend.
    Mapped { _map: MmapMut, chunks: Vec<*mut u8> },
}

/// One pinned region and its free ranges.
pub(crate) struct Slab {
    pub(crate) ptr: *mut u8,
    pub(crate) len: u64,
    pub(crate) free: FreeList,
    memory: Memory,
}

// SAFETY: a slab owns its memory outright (a pinned allocation or a private mapping); the raw
// pointers are only addresses of that memory, handed out to disjoint `HostRange`s under the
// arena's lock, so moving or sharing the bookkeeping between threads is sound.
unsafe impl Send for Slab {}

impl Slab {
    /// Pins `len` bytes with `cuMemHostAlloc`. Returns the slab and the time pinning took.
    pub(crate) fn host_alloc(backend: &dyn Backend, len: u64) -> Result<(Slab, Duration)> {
        let t = Instant::now();
        let ptr = backend.host_alloc_pinned(len)?;
        let slab = Slab {
            ptr,
            len,
            free: FreeList::new(len),
            memory: Memory::Pinned,
        };
        Ok((slab, t.elapsed()))
    }

    /// Maps `len` anonymous bytes, touches every page from `threads` threads, then registers
    /// the mapping in chunks of at most `chunk` bytes (never over [`MAX_REGISTER_BYTES`]).
    pub(crate) fn mmap_register(
        backend: &dyn Backend,
        len: u64,
        threads: usize,
        chunk: u64,
    ) -> Result<(Slab, Duration)> {
        let t = Instant::now();
        let bytes = usize::try_from(len)
            .map_err(|_| Error::InvalidArgument(format!("slab of {len} bytes")))?;
        let mut map = MmapOptions::new()
            .len(bytes)
            .map_anon()
            .map_err(|source| Error::Io {
                path: "anonymous mapping".into(),
                source,
            })?;
        prefault(&mut map, threads.max(1));
        let ptr = map.as_mut_ptr();
        let chunk = chunk.clamp(PAGE as u64, MAX_REGISTER_BYTES) / PAGE as u64 * PAGE as u64;
        let mut chunks = Vec::new();
        let mut off = 0u64;
        while off < len {
            let n = chunk.min(len - off);
            // SAFETY: `off < len`, so the pointer stays inside the mapping.
            let p = unsafe { ptr.add(off as usize) };
            // SAFETY: `[p, p + n)` lies inside `map`, which lives in the slab until every chunk
            // is unregistered in `release` (or below, on failure).
            if let Err(e) = unsafe { backend.host_register(p, n, false) } {
                for &c in &chunks {
                    // SAFETY: registered above; nothing has used the memory yet.
                    let _ = unsafe { backend.host_unregister(c) };
                }
                return Err(e);
            }
            chunks.push(p);
            off += n;
        }
        let slab = Slab {
            ptr,
            len,
            free: FreeList::new(len),
            memory: Memory::Mapped { _map: map, chunks },
        };
        Ok((slab, t.elapsed()))
    }

    /// Number of backend registrations this slab holds (0 for `host_alloc` slabs).
    #[cfg(test)]
    pub(crate) fn registrations(&self) -> usize {
        match &self.memory {
            Memory::Pinned => 0,
            Memory::Mapped { chunks, .. } => chunks.len(),
        }
    }

    /// Unpins and frees the slab. The caller guarantees no range of it is in use.
    pub(crate) fn release(self, backend: &dyn Backend) {
        match self.memory {
            Memory::Pinned => {
                // SAFETY: `ptr` came from this backend's `host_alloc_pinned`; every range of
                // the slab has been returned (the arena only releases empty slabs or releases at
                // drop, when no `HostRange` can exist because each holds the arena).
                if let Err(e) = unsafe { backend.host_free_pinned(self.ptr) } {
                    tracing::warn!("freeing a pinned slab of {} bytes: {e}", self.len);
                }
            }
            Memory::Mapped { _map, chunks } => {
                for c in chunks {
                    // SAFETY: `c` was registered in `mmap_register`; no range is in use (see
                    // above). The mapping is dropped only after this loop.
                    if let Err(e) = unsafe { backend.host_unregister(c) } {
                        tracing::warn!("unregistering a slab chunk: {e}");
                    }
                }
                drop(_map);
            }
        }
    }
}

/// Writes one byte per page of `map`, splitting the pages over `threads` threads, so the kernel
/// faults them in parallel instead of inside the (serial) registration.
fn prefault(map: &mut MmapMut, threads: usize) {
    let pages_per = map.len().div_ceil(PAGE).div_ceil(threads).max(1);
    std::thread::scope(|s| {
        for part in map.chunks_mut(pages_per * PAGE) {
            s.spawn(move || {
                for page in part.chunks_mut(PAGE) {
                    // SAFETY: `page` is a valid, exclusively borrowed, non-empty slice; a
                    // volatile write keeps the compiler from dropping the store of a zero the
                    // fresh page already holds.
                    unsafe { std::ptr::write_volatile(page.as_mut_ptr(), 0) };
                }
            });
        }
    });
}
