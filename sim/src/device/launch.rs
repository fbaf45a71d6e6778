//! Kernel launches on the simulated device: the Rust implementations of the project's kernels
//! (`kernels/`), run in stream order with their accesses checked.

use super::{gather, scatter, SimDevice};
use crate::error::{SimError, SimResult};
use crate::kernels::{self, CastType};
use crate::race::{Access, Space};
use crate::FaultOp;

/// A kernel the simulated device can run (the operations of `kernels/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Writes the checksum (see [`kernels::checksum`]) of `[src, src + len)` as a little-endian
    /// `u64` at device address `out`.
    Checksum {
        /// First byte to sum.
        src: u64,
        /// Bytes to sum.
        len: u64,
        /// Device address receiving the 8-byte result.
        out: u64,
    },
    /// Fills `[dst, dst + len)` with the little-endian bytes of `pattern`.
    Fill {
        /// First byte to fill.
        dst: u64,
        /// Bytes to fill.
        len: u64,
        /// The 32-bit pattern.
        pattern: u32,
    },
    /// Converts `count` elements at `src` of type `from` into `dst` of type `to`.
    Cast {
        /// Source elements.
        src: u64,
        /// Source element type.
        from: CastType,
        /// Destination elements.
        dst: u64,
        /// Destination element type.
        to: CastType,
        /// Number of elements.
        count: u64,
    },
    /// Adds the partial checksum of `[src, src + len)` (see [`kernels::checksum_partial`], the
    /// range starting at word 0) to the little-endian `u64` at `sum`, wrapping: the
    /// `vramswap_checksum_partial` kernel, whose blocks add their partial sums atomically.
    ChecksumPartial {
        /// First byte to sum.
        src: u64,
        /// Bytes to sum.
        len: u64,
        /// Device address of the 8-byte running sum.
        sum: u64,
    },
    /// Replaces the `u64` at `sum` with [`kernels::checksum_finish`] of it and `len`: the
    /// `vramswap_checksum_finish` kernel.
    ChecksumFinish {
        /// Device address of the 8-byte running sum.
        sum: u64,
        /// Bytes that were summed.
        len: u64,
    },
}

impl SimDevice {
    /// Runs `kernel` on `stream` (`cuLaunchKernel`).
    pub fn launch(&self, kernel: Kernel, stream: u64) -> SimResult<()> {
        self.fault(FaultOp::Launch)?;
        self.inner.counters.lock().expect("counters lock").launches += 1;
        match kernel {
            Kernel::Checksum { src, len, out } => {
                let from = self.resolve(src, len)?;
                let to = self.resolve(out, 8)?;
                self.enqueue(
                    stream,
                    "checksum kernel",
                    vec![
                        Access::read(Space::Device, src, len),
                        Access::write(Space::Device, out, 8),
                    ],
                    Box::new(move || {
                        // Partial sums combine only at 8-byte boundaries of the range, so a range
                        // spread over several mappings is gathered first.
                        let sum = if from.len() == 1 {
                            let seg = &from[0];
                            // SAFETY: the segment lies inside its physical allocation.
                            let bytes = unsafe {
                                std::slice::from_raw_parts(
                                    seg.phys.bytes_ptr(seg.off, seg.len),
                                    seg.len,
                                )
                            };
                            kernels::checksum_partial(bytes, 0)
                        } else {
                            let mut tmp = vec![0u8; len as usize];
                            gather(&from, &mut tmp);
                            kernels::checksum_partial(&tmp, 0)
                        };
                        scatter(&kernels::checksum_finish(sum, len).to_le_bytes(), &to);
                        Ok(())
                    }),
                )?;
            }
            Kernel::Fill { dst, len, pattern } => {
                let to = self.resolve(dst, len)?;
                self.enqueue(
                    stream,
                    "fill kernel",
                    vec![Access::write(Space::Device, dst, len)],
                    Box::new(move || {
                        let mut tmp = vec![0u8; len as usize];
                        kernels::fill_u32(&mut tmp, pattern);
                        scatter(&tmp, &to);
                        Ok(())
                    }),
                )?;
            }
            Kernel::Cast {
                src,
                from,
                dst,
                to,
                count,
            } => {
                let in_len = count
                    .checked_mul(from.size() as u64)
                    .ok_or_else(|| SimError::InvalidValue("cast size overflows".into()))?;
                let out_len = count
                    .checked_mul(to.size() as u64)
                    .ok_or_else(|| SimError::InvalidValue("cast size overflows".into()))?;
                let a = self.resolve(src, in_len)?;
                let b = self.resolve(dst, out_len)?;
                self.enqueue(
                    stream,
                    "cast kernel",
                    vec![
                        Access::read(Space::Device, src, in_len),
                        Access::write(Space::Device, dst, out_len),
                    ],
                    Box::new(move || {
                        let mut input = vec![0u8; in_len as usize];
                        gather(&a, &mut input);
                        let mut output = vec![0u8; out_len as usize];
                        kernels::cast(&input, from, &mut output, to, count as usize);
                        scatter(&output, &b);
                        Ok(())
                    }),
                )?;
            }
            Kernel::ChecksumPartial { src, len, sum } => {
                let from = self.resolve(src, len)?;
                let acc = self.resolve(sum, 8)?;
                self.enqueue(
                    stream,
                    "checksum partial kernel",
                    vec![
                        Access::read(Space::Device, src, len),
                        Access::write(Space::Device, sum, 8),
                    ],
                    Box::new(move || {
                        let mut tmp = vec![0u8; len as usize];
                        gather(&from, &mut tmp);
                        let part = kernels::checksum_partial(&tmp, 0);
                        let mut cur = [0u8; 8];
                        gather(&acc, &mut cur);
                        let total = u64::from_le_bytes(cur).wrapping_add(part);
                        scatter(&total.to_le_bytes(), &acc);
                        Ok(())
                    }),
                )?;
            }
            Kernel::ChecksumFinish { sum, len } => {
                let acc = self.resolve(sum, 8)?;
                self.enqueue(
                    stream,
                    "checksum finish kernel",
                    vec![Access::write(Space::Device, sum, 8)],
                    Box::new(move || {
                        let mut cur = [0u8; 8];
                        gather(&acc, &mut cur);
                        let done = kernels::checksum_finish(u64::from_le_bytes(cur), len);
                        scatter(&done.to_le_bytes(), &acc);
                        Ok(())
                    }),
                )?;
            }
        }
        Ok(())
    }
}
