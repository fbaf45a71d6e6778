//! Copies and memsets on the simulated device: every copy runs in stream order, asynchronous to
//! the host whether the host side is pinned or pageable, each reserving its link under the
//! bandwidth model.
//!
//! For pageable memory the reference promises no more: "For transfers between device memory and
//! pageable host memory, the function might be synchronous with respect to host" (CUDA Driver
//! API, "API synchronization behavior"), and "undocumented behavior should not be relied upon".
//! A real driver usually completes such a copy (or stages it) before returning; the model does
//! not, so code that reads a pageable destination, or reuses a pageable source, before
//! synchronising reads stale bytes here instead of working by luck.

use super::{sleep_until, CopyJob, Dir, Link, SimDevice};
use crate::error::{SimError, SimResult};
use crate::host::HostKind;
use crate::memory::Segment;
use crate::race::{Access, Space};
use crate::stream::Job;
use crate::FaultOp;

impl SimDevice {
    pub(crate) fn resolve(&self, addr: u64, len: u64) -> SimResult<Vec<Segment>> {
        self.inner
            .memory
            .lock()
            .expect("memory lock")
            .resolve(addr, len)
    }

    pub(crate) fn link(&self, dir: Dir) -> Option<&Link> {
        self.inner.links.as_ref().map(|l| match dir {
            Dir::H2D => &l[0],
            Dir::D2H => &l[1],
            Dir::D2D => &l[2],
        })
    }

    /// Queues a copy job on the stream. `pageable` only slows it under the bandwidth model.
    pub(crate) fn submit_copy(&self, stream: u64, copy: CopyJob) -> SimResult<()> {
        let CopyJob {
            op,
            accesses,
            dir,
            bytes,
            pageable,
            body,
        } = copy;
        let factor = if pageable {
            self.inner
                .config
                .bandwidth
                .map(|b| b.pageable_factor)
                .unwrap_or(1.0)
        } else {
            1.0
        };
        let dev = self.clone();
        let job: Job = Box::new(move || {
            // The link is reserved when the copy starts, so a copy takes the longer of its
            // modelled transfer time and the host memcpy, not their sum.
            let end = dev.link(dir).map(|link| link.reserve(bytes, factor));
            body();
            if let Some(end) = end {
                sleep_until(end);
            }
            Ok(())
        });
        self.enqueue(stream, op, accesses, job)?;
        let mut c = self.inner.counters.lock().expect("counters lock");
        match dir {
            Dir::H2D => {
                c.copies_h2d += 1;
                c.bytes_h2d += bytes;
            }
            Dir::D2H => {
                c.copies_d2h += 1;
                c.bytes_d2h += bytes;
            }
            Dir::D2D => c.copies_d2d += 1,
        }
        if pageable {
            c.pageable_copies += 1;
        }
        Ok(())
    }

    /// Copies `len` bytes from host `src` to device `dst` on `stream` (`cuMemcpyHtoDAsync`),
    /// asynchronously, from pinned and pageable memory alike.
    ///
    /// # Safety
    /// `src` must be valid for reads of `len` bytes, and not be written by the host, until the
    /// stream has passed this operation.
    pub unsafe fn copy_htod(
        &self,
        dst: u64,
        src: *const u8,
        len: u64,
        stream: u64,
    ) -> SimResult<()> {
        // SAFETY: forwarded contract; a host-to-device copy only reads `src`.
        unsafe { self.copy_host(Dir::H2D, src as *mut u8, dst, len, stream) }
    }

    /// Copies `len` bytes from device `src` to host `dst` on `stream` (`cuMemcpyDtoHAsync`),
    /// asynchronously, into pinned and pageable memory alike.
    ///
    /// # Safety
    /// `dst` must be valid for writes of `len` bytes until the stream has passed this operation,
    /// and not be accessed by the host in the meantime.
    pub unsafe fn copy_dtoh(&self, dst: *mut u8, src: u64, len: u64, stream: u64) -> SimResult<()> {
        // SAFETY: forwarded contract.
        unsafe { self.copy_host(Dir::D2H, dst, src, len, stream) }
    }

    /// A copy between host memory at `host` and device memory at `dev`, in direction `dir`
    /// (`H2D` or `D2H`).
    ///
    /// # Safety
    /// `host` must be valid for `len` bytes (reads for `H2D`, writes for `D2H`) until the copy
    /// has completed.
    unsafe fn copy_host(
        &self,
        dir: Dir,
        host: *mut u8,
        dev: u64,
        len: u64,
        stream: u64,
    ) -> SimResult<()> {
        self.fault(FaultOp::Copy)?;
        if len == 0 {
            return Ok(());
        }
        if host.is_null() {
            return Err(SimError::InvalidValue("null host pointer".into()));
        }
        let segs = self.resolve(dev, len)?;
        let kind = self.host_kind(host, len);
        let to_device = dir == Dir::H2D;
        if !to_device && kind == HostKind::PinnedReadOnly {
            // CU_MEMHOSTREGISTER_READ_ONLY: "the memory ... will be considered read-only by the
            // device"; a device write to it faults.
            return Err(SimError::NotPermitted(format!(
                "device-to-host copy into read-only registered memory {host:p}"
            )));
        }
        let pageable = kind == HostKind::Pageable;
        // Recorded on the stream only: the host is ordered after the copy by a synchronisation,
        // never by the call returning, whatever kind of host memory it is.
        let accesses = if to_device {
            vec![
                Access::write(Space::Device, dev, len),
                Access::read(Space::Host, host as u64, len),
            ]
        } else {
            vec![
                Access::read(Space::Device, dev, len),
                Access::write(Space::Host, host as u64, len),
            ]
        };
        let host = host as usize;
        self.submit_copy(
            stream,
            CopyJob {
                op: if to_device {
                    "copy host-to-device"
                } else {
                    "copy device-to-host"
                },
                accesses,
                dir,
                bytes: len,
                pageable,
                body: Box::new(move || {
                    let mut off = 0usize;
                    for s in segs {
                        let h = (host as *mut u8).wrapping_add(off);
                        let d = s.phys.bytes_ptr(s.off, s.len);
                        // SAFETY: the caller keeps the host range valid for `len` bytes until the
                        // copy runs; `s` stays inside its physical allocation (resolved above).
                        unsafe {
                            if to_device {
                                std::ptr::copy_nonoverlapping(h, d, s.len)
                            } else {
                                std::ptr::copy_nonoverlapping(d, h, s.len)
                            }
                        };
                        off += s.len;
                    }
                }),
            },
        )
    }

    /// Copies `len` bytes between device ranges on `stream` (`cuMemcpyDtoDAsync`).
    pub fn copy_dtod(&self, dst: u64, src: u64, len: u64, stream: u64) -> SimResult<()> {
        self.fault(FaultOp::Copy)?;
        if len == 0 {
            return Ok(());
        }
        let from = self.resolve(src, len)?;
        let to = self.resolve(dst, len)?;
        let acc = vec![
            Access::read(Space::Device, src, len),
            Access::write(Space::Device, dst, len),
        ];
        self.submit_copy(
            stream,
            CopyJob {
                op: "copy device-to-device",
                accesses: acc,
                dir: Dir::D2D,
                bytes: len,
                pageable: false,
                body: Box::new(move || copy_segments(&from, &to)),
            },
        )
    }

    /// Sets `len` bytes at `dst` to `value` on `stream` (`cuMemsetD8Async`).
    pub fn memset_d8(&self, dst: u64, value: u8, len: u64, stream: u64) -> SimResult<()> {
        self.fault(FaultOp::Memset)?;
        if len == 0 {
            return Ok(());
        }
        let to = self.resolve(dst, len)?;
        self.enqueue(
            stream,
            "memset",
            vec![Access::write(Space::Device, dst, len)],
            Box::new(move || {
                for s in to {
                    // SAFETY: the segment lies inside its physical allocation.
                    unsafe { std::ptr::write_bytes(s.phys.bytes_ptr(s.off, s.len), value, s.len) };
                }
                Ok(())
            }),
        )?;
        Ok(())
    }
}

/// Copies the bytes of `from` into `to` (both covering the same number of bytes), piece by
/// piece, with `memmove` semantics where a source and destination piece share memory.
pub(crate) fn copy_segments(from: &[Segment], to: &[Segment]) {
    let (mut i, mut io) = (0usize, 0usize);
    let (mut j, mut jo) = (0usize, 0usize);
    while i < from.len() && j < to.len() {
        let n = (from[i].len - io).min(to[j].len - jo);
        // SAFETY: both pieces lie inside their physical allocations (resolved by the caller);
        // `ptr::copy` allows overlap.
        unsafe {
            std::ptr::copy(
                from[i].phys.bytes_ptr(from[i].off + io, n),
                to[j].phys.bytes_ptr(to[j].off + jo, n),
                n,
            )
        };
        io += n;
        jo += n;
        if io == from[i].len {
            i += 1;
            io = 0;
        }
        if jo == to[j].len {
            j += 1;
            jo = 0;
        }
    }
}

pub(crate) fn gather(from: &[Segment], out: &mut [u8]) {
    let mut off = 0;
    for s in from {
        // SAFETY: the segment lies inside its physical allocation; `out` holds the whole range.
        unsafe {
            std::ptr::copy_nonoverlapping(
                s.phys.bytes_ptr(s.off, s.len),
                out[off..].as_mut_ptr(),
                s.len,
            )
        };
        off += s.len;
    }
}

pub(crate) fn scatter(data: &[u8], to: &[Segment]) {
    let mut off = 0;
    for s in to {
        // SAFETY: as in `gather`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data[off..].as_ptr(),
                s.phys.bytes_ptr(s.off, s.len),
                s.len,
            )
        };
        off += s.len;
    }
}
