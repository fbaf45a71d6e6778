//! Host-visible device memory (`host_visible:true`): device addresses that are real host virtual
//! addresses, so host code (CPU PyTorch over DLPack) reads and writes a weight set in place.
//!
//! - A reservation is an inaccessible host range (`PROT_NONE`, `MAP_NORESERVE`): it costs
//!   address space only, and any access to it faults, as an illegal address does on a GPU.
//! - A physical allocation is a `memfd` (shared memory), also mapped once at a private view the
//!   device model copies through.
//! - Mapping maps the memfd at the reserved address (`MAP_FIXED | MAP_SHARED`), inaccessible until
//!   access is granted (`cuMemSetAccess`); unmapping puts `PROT_NONE` back, so a read of an
//!   unmapped or offloaded range faults and never sees stale bytes or another set's.
//! - A plain allocation is a reservation with its own memfd mapped read-write at once.
//! - Freed memfds are kept for reuse (up to the device's physical-memory cache limit), populated,
//!   as freed heap buffers are on the default device: not zeroed, as CUDA's are not.
//!
//! `rustix` rather than raw `libc`: the calls return `io::Result` and take typed flags, and
//! `memfd_create` hands back an `OwnedFd` closed on drop. Address ranges are given back to the
//! host when freed, so (as with CUDA) a later allocation may get a freed address; the model's own
//! bookkeeping still rejects any access to a range that is not mapped.

use std::ffi::c_void;
use std::os::fd::OwnedFd;

use rustix::fs::{ftruncate, memfd_create, MemfdFlags};
use rustix::mm::{mmap, mmap_anonymous, mprotect, munmap, MapFlags, MprotectFlags, ProtFlags};

use crate::error::{SimError, SimResult};

fn os_err(what: &str, len: u64, e: rustix::io::Errno) -> SimError {
    match e {
        rustix::io::Errno::NOMEM => SimError::OutOfMemory {
            requested: len,
            free: 0,
            capacity: 0,
        },
        _ => SimError::InvalidValue(format!("host-visible memory: {what} of {len} bytes: {e}")),
    }
}

/// An inaccessible host address range standing for a device reservation; given back to the host
/// on drop.
pub(crate) struct HostRange {
    base: *mut c_void,
    total: usize,
    addr: u64,
}

// SAFETY: the range is plain address space owned by this value; it holds no thread-bound state.
unsafe impl Send for HostRange {}
// SAFETY: see `Send`; `HostRange` is never mutated after creation.
unsafe impl Sync for HostRange {}

impl HostRange {
    /// Reserves `len` bytes aligned to `align` (a power of two), with at least `guard` bytes of
    /// inaccessible space after it so an overrun faults instead of landing in a neighbour.
    pub(crate) fn reserve(len: u64, align: u64, guard: u64) -> SimResult<HostRange> {
        let total = len
            .checked_add(align)
            .and_then(|t| t.checked_add(guard))
            .ok_or_else(|| {
                SimError::InvalidValue(format!("reservation of {len} bytes overflows"))
            })? as usize;
        // SAFETY: a fresh anonymous mapping at an address the kernel picks; it aliases nothing.
        let base = unsafe {
            mmap_anonymous(
                std::ptr::null_mut(),
                total,
                ProtFlags::empty(),
                MapFlags::PRIVATE | MapFlags::NORESERVE,
            )
        }
        .map_err(|e| os_err("reserve", len, e))?;
        let addr = (base as u64).next_multiple_of(align);
        Ok(HostRange { base, total, addr })
    }

    /// The aligned start of the range: the device address.
    pub(crate) fn addr(&self) -> u64 {
        self.addr
    }
}

impl Drop for HostRange {
    fn drop(&mut self) {
        // SAFETY: `base..base + total` is the mapping made in `reserve` (pieces of it replaced by
        // fixed mappings since, all inside it); nothing of the model refers to it any more.
        let _ = unsafe { munmap(self.base, self.total) };
    }
}

/// Shared memory backing one physical allocation, with a read-write view for the device model.
pub(crate) struct Memfd {
    fd: OwnedFd,
    view: *mut u8,
    len: usize,
}

// SAFETY: the fd and the view are owned by this value; the view is accessed under the device
// model's memory rules, as a heap-backed `Phys` is.
unsafe impl Send for Memfd {}
// SAFETY: see `Send`.
unsafe impl Sync for Memfd {}

impl Memfd {
    /// Zero-filled shared memory of `len` bytes (rounded up to whole pages).
    pub(crate) fn new(len: usize) -> SimResult<Memfd> {
        let len = len.max(1).next_multiple_of(page_size());
        let fd = memfd_create("vramswap-sim-device", MemfdFlags::CLOEXEC)
            .map_err(|e| os_err("memfd_create", len as u64, e))?;
        ftruncate(&fd, len as u64).map_err(|e| os_err("ftruncate", len as u64, e))?;
        // SAFETY: a fresh shared mapping of the whole file at an address the kernel picks.
        let view = unsafe {
            mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &fd,
                0,
            )
        }
        .map_err(|e| os_err("mmap", len as u64, e))?;
        Ok(Memfd {
            fd,
            view: view.cast(),
            len,
        })
    }

    /// The device model's view of the bytes.
    pub(crate) fn view(&self) -> *mut u8 {
        self.view
    }

    /// Maps `len` bytes from offset `off` at `addr`, which must lie in a [`HostRange`] and be
    /// page aligned; readable and writable only if `accessible`.
    pub(crate) fn map_at(&self, addr: u64, len: u64, off: u64, accessible: bool) -> SimResult<()> {
        let len_pages = (len as usize).next_multiple_of(page_size());
        if off as usize + len_pages > self.len {
            return Err(SimError::InvalidValue(format!(
                "mapping {off}+{len} exceeds the {} bytes of its memfd",
                self.len
            )));
        }
        let prot = if accessible {
            ProtFlags::READ | ProtFlags::WRITE
        } else {
            ProtFlags::empty()
        };
        // SAFETY: `addr..addr + len` lies in a reservation this device owns (checked by the
        // callers against the model's regions), so MAP_FIXED replaces only our own PROT_NONE
        // pages.
        unsafe {
            mmap(
                addr as *mut c_void,
                len_pages,
                prot,
                MapFlags::SHARED | MapFlags::FIXED,
                &self.fd,
                off,
            )
        }
        .map_err(|e| os_err("mmap at reserved address", len, e))?;
        Ok(())
    }
}

impl Drop for Memfd {
    fn drop(&mut self) {
        // SAFETY: the view was mapped in `new` with this length and is used by nobody else now.
        let _ = unsafe { munmap(self.view.cast(), self.len) };
    }
}

/// Makes `[addr, addr + len)` (mapped by [`Memfd::map_at`]) readable and writable.
pub(crate) fn grant(addr: u64, len: u64) -> SimResult<()> {
    // SAFETY: the range is a mapping of this device inside its own reservation.
    unsafe {
        mprotect(
            addr as *mut c_void,
            (len as usize).next_multiple_of(page_size()),
            MprotectFlags::READ | MprotectFlags::WRITE,
        )
    }
    .map_err(|e| os_err("mprotect", len, e))
}

/// Puts inaccessible, unbacked pages back over `[addr, addr + len)`, dropping the mapping of
/// shared memory there: any later access faults.
pub(crate) fn revoke(addr: u64, len: u64) -> SimResult<()> {
    // SAFETY: the range lies in a reservation of this device (checked by the caller); MAP_FIXED
    // replaces only our own pages with fresh PROT_NONE ones.
    unsafe {
        mmap_anonymous(
            addr as *mut c_void,
            (len as usize).next_multiple_of(page_size()),
            ProtFlags::empty(),
            MapFlags::PRIVATE | MapFlags::NORESERVE | MapFlags::FIXED,
        )
    }
    .map_err(|e| os_err("unmap (PROT_NONE)", len, e))?;
    Ok(())
}

/// The host page size.
pub(crate) fn page_size() -> usize {
    rustix::param::page_size()
}
