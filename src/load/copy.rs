//! Parallel copy of tensor bytes into one destination buffer, with optional float casts
//! (f32, f16, bf16; round to nearest even through `half`).
//!
//! Sources in files are read with positioned reads (`pread`), never through a mapping: a file
//! truncated by another process while it is copied is a short read, reported as an error naming
//! the file and the offset, where a mapping would kill the process with `SIGBUS`.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

use crate::error::{Error, Result};
use crate::weights::DType;

/// Bytes of destination per work item: big enough that scheduling costs nothing, small enough
/// to balance threads and report progress smoothly.
const PIECE_BYTES: u64 = 8 << 20;

/// How often progress is reported while copying.
const REPORT_EVERY: Duration = Duration::from_millis(50);

/// Where a job's source bytes are: `len` bytes of `file` (named `path` in errors) from byte
/// `offset`.
#[derive(Clone, Copy)]
pub(crate) struct Src<'a> {
    pub(crate) file: &'a File,
    pub(crate) path: &'a Path,
    pub(crate) offset: u64,
    pub(crate) len: u64,
}

impl<'a> Src<'a> {
    /// The first `n` bytes and the rest.
    fn split_at(self, n: u64) -> (Src<'a>, Src<'a>) {
        (
            Src { len: n, ..self },
            Src {
                offset: self.offset + n,
                len: self.len - n,
                ..self
            },
        )
    }

    /// Reads the first `buf.len()` bytes into `buf`.
    fn read_into(&self, buf: &mut [u8]) -> Result<()> {
        read_exact_at(self.file, self.path, buf, self.offset)
    }
}

/// Reads `buf.len()` bytes of `file` at `offset`; a short read is [`Error::Malformed`] saying
/// where the file ended, other failures are [`Error::Io`].
pub(crate) fn read_exact_at(file: &File, path: &Path, buf: &mut [u8], offset: u64) -> Result<()> {
    let mut done = 0usize;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => {
                let now = file.metadata().map(|m| m.len()).ok();
                let now = now.map_or(String::new(), |n| format!("; it is now {n} bytes long"));
                return Err(Error::Malformed {
                    path: path.to_path_buf(),
                    problem: format!(
                        "file ended while reading {} bytes at offset {offset} (got {done}){now} \
                         (was it truncated or replaced while loading?)",
                        buf.len()
                    ),
                });
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(Error::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    }
    Ok(())
}

/// One tensor to copy: its source bytes and types, and where it goes in the destination.
pub(crate) struct CopyJob<'a> {
    pub(crate) src: Src<'a>,
    pub(crate) from: DType,
    pub(crate) to: DType,
    pub(crate) dst_offset: u64,
}

impl CopyJob<'_> {
    fn elements(&self) -> u64 {
        self.src.len / self.from.size_bytes()
    }
}

struct Piece<'a> {
    src: Src<'a>,
    dst: &'a mut [u8],
    from: DType,
    to: DType,
}

impl Piece<'_> {
    /// Copies (and casts) this piece; `scratch` holds file bytes that need a cast.
    fn run(self, scratch: &mut Vec<u8>) -> Result<()> {
        if self.from == self.to {
            return self.src.read_into(self.dst);
        }
        scratch.resize(self.src.len as usize, 0);
        self.src.read_into(scratch)?;
        convert(scratch, self.from, self.dst, self.to);
        Ok(())
    }
}

/// Copies (and casts) every job into `dst` with `threads` threads; bytes of `dst` no job
/// covers are zeroed. `jobs` must lie inside `dst` without overlapping (a laid-out set
/// guarantees it); a job that does not is skipped. `progress(done)` is called on this thread
/// with destination bytes done, now and then and once at the end.
///
/// The first failed read (a file that ended early) stops every thread and is returned; `dst`
/// is then partly written and must be discarded.
pub(crate) fn copy_all(
    mut jobs: Vec<CopyJob<'_>>,
    dst: &mut [u8],
    threads: usize,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    jobs.sort_by_key(|j| j.dst_offset);
    // Carve `dst` into disjoint pieces in offset order: safe `&mut` splitting, no aliasing.
    let mut pieces: Vec<Piece> = Vec::new();
    let mut rest: &mut [u8] = dst;
    let mut at = 0u64;
    for job in &jobs {
        let out_len = job.elements() * job.to.size_bytes();
        if job.dst_offset < at || job.dst_offset - at + out_len > rest.len() as u64 {
            tracing::error!(offset = job.dst_offset, "copy job outside its destination");
            continue;
        }
        let (gap, tail) = rest.split_at_mut((job.dst_offset - at) as usize);
        gap.fill(0);
        let (mut out, tail) = tail.split_at_mut(out_len as usize);
        rest = tail;
        at = job.dst_offset + out_len;
        let per = (PIECE_BYTES / job.to.size_bytes()).max(1);
        let mut src = job.src;
        while !out.is_empty() {
            let n = per.min(out.len() as u64 / job.to.size_bytes());
            let (o, ot) = out.split_at_mut((n * job.to.size_bytes()) as usize);
            let (s, st) = src.split_at(n * job.from.size_bytes());
            pieces.push(Piece {
                src: s,
                dst: o,
                from: job.from,
                to: job.to,
            });
            out = ot;
            src = st;
        }
    }
    rest.fill(0);
    // Largest first would balance better; offset order keeps the page cache streaming.
    pieces.reverse();
    let queue = Mutex::new(pieces);
    let done = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    let (tx, rx) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            let tx = tx.clone();
            let (queue, done, failed, first_error) = (&queue, &done, &failed, &first_error);
            s.spawn(move || {
                let _alive = tx;
                let mut scratch = Vec::new();
                while !failed.load(Ordering::Relaxed) {
                    let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop();
                    let Some(p) = next else { break };
                    let n = p.dst.len() as u64;
                    if let Err(e) = p.run(&mut scratch) {
                        failed.store(true, Ordering::Relaxed);
                        first_error
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_or_insert(e);
                        break;
                    }
                    done.fetch_add(n, Ordering::Relaxed);
                }
            });
        }
        drop(tx);
        // Every worker holds a sender; the channel disconnects when the last one finishes.
        while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(REPORT_EVERY) {
            progress(done.load(Ordering::Relaxed));
        }
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    progress(done.load(Ordering::Relaxed));
    Ok(())
}

/// Elements converted per block through an `f32` buffer on the stack.
const BLOCK: usize = 2048;

/// Converts `src` (elements of `from`) into `dst` (as many elements of `to`). Types other than
/// F32/F16/BF16 are copied only when `from == to`.
///
/// Float casts go through blocks of `f32`, converted by `half`'s slice functions (F16C
/// instructions where the CPU has them), rounding to nearest even; the source may be unaligned
/// (a mapped file), so elements are decoded from little-endian bytes.
pub(crate) fn convert(src: &[u8], from: DType, dst: &mut [u8], to: DType) {
    if from == to {
        dst.copy_from_slice(&src[..dst.len()]);
        return;
    }
    if !(from.is_castable_float() && to.is_castable_float()) {
        tracing::error!("no cast from {from} to {to}");
        return;
    }
    let (fs, ts) = (from.size_bytes() as usize, to.size_bytes() as usize);
    let mut wide = [0f32; BLOCK];
    let mut halves = [f16::ZERO; BLOCK];
    let mut brains = [bf16::ZERO; BLOCK];
    for (s, d) in src.chunks(BLOCK * fs).zip(dst.chunks_mut(BLOCK * ts)) {
        let n = (s.len() / fs).min(d.len() / ts);
        let w = &mut wide[..n];
        match from {
            DType::F32 => {
                for (x, b) in w.iter_mut().zip(s.chunks_exact(4)) {
                    *x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            DType::F16 => {
                for (x, b) in halves[..n].iter_mut().zip(s.chunks_exact(2)) {
                    *x = f16::from_bits(u16::from_le_bytes([b[0], b[1]]));
                }
                halves[..n].convert_to_f32_slice(w);
            }
            _ => {
                for (x, b) in brains[..n].iter_mut().zip(s.chunks_exact(2)) {
                    *x = bf16::from_bits(u16::from_le_bytes([b[0], b[1]]));
                }
                brains[..n].convert_to_f32_slice(w);
            }
        }
        match to {
            DType::F32 => {
                for (x, b) in w.iter().zip(d.chunks_exact_mut(4)) {
                    b.copy_from_slice(&x.to_le_bytes());
                }
            }
            DType::F16 => {
                halves[..n].convert_from_f32_slice(w);
                for (x, b) in halves[..n].iter().zip(d.chunks_exact_mut(2)) {
                    b.copy_from_slice(&x.to_bits().to_le_bytes());
                }
            }
            _ => {
                brains[..n].convert_from_f32_slice(w);
                for (x, b) in brains[..n].iter().zip(d.chunks_exact_mut(2)) {
                    b.copy_from_slice(&x.to_bits().to_le_bytes());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_to_f16_rounds_to_nearest_even() {
        // 1 + 2^-11 is exactly halfway between 1 and the next f16; even rounds down to 1.
        let x = 1.0f32 + f32::powi(2.0, -11);
        let mut out = [0u8; 2];
        convert(&x.to_le_bytes(), DType::F32, &mut out, DType::F16);
        assert_eq!(f16::from_le_bytes(out), f16::ONE);
        // 1 + 3 * 2^-11 is halfway between two f16s; the even one is 1 + 2^-9.
        let y = 1.0f32 + 3.0 * f32::powi(2.0, -11);
        convert(&y.to_le_bytes(), DType::F32, &mut out, DType::F16);
        assert_eq!(f16::from_le_bytes(out).to_f32(), 1.0 + f32::powi(2.0, -9));
    }

    proptest::proptest! {
        /// Block conversion agrees with `half`'s scalar conversion for every bit pattern,
        /// whatever the length (blocks and their tails).
        #[test]
        fn block_casts_match_scalar_casts(bits in proptest::collection::vec(proptest::prelude::any::<u32>(), 0..5000)) {
            let src: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
            let mut h = vec![0u8; bits.len() * 2];
            convert(&src, DType::F32, &mut h, DType::F16);
            let mut bb = vec![0u8; bits.len() * 2];
            convert(&h, DType::F16, &mut bb, DType::BF16);
            for (i, &b) in bits.iter().enumerate() {
                let want = f16::from_f32(f32::from_bits(b));
                let got = f16::from_le_bytes([h[2 * i], h[2 * i + 1]]);
                proptest::prop_assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()));
                let want_b = bf16::from_f32(want.to_f32());
                let got_b = bf16::from_le_bytes([bb[2 * i], bb[2 * i + 1]]);
                proptest::prop_assert!(got_b.to_bits() == want_b.to_bits() || (got_b.is_nan() && want_b.is_nan()));
            }
        }
    }

    #[test]
    fn bf16_round_trips_through_f32_exactly() {
        let vals: Vec<u8> = [1.5f32, -2.25, 65504.0, 0.0]
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
            .collect();
        let mut wide = vec![0u8; vals.len() * 2];
        convert(&vals, DType::BF16, &mut wide, DType::F32);
        let mut back = vec![0u8; vals.len()];
        convert(&wide, DType::F32, &mut back, DType::BF16);
        assert_eq!(back, vals);
    }

    fn file_of(bytes: &[u8]) -> tempfile::NamedTempFile {
        use std::io::Write;
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    #[test]
    fn copy_all_fills_gaps_with_zeros_and_reports_every_byte() {
        let a = [1u8; 10];
        let b = [2u8; 4];
        let fa = file_of(&[[9u8; 3].as_slice(), &a].concat());
        let fb = file_of(&b);
        let mut dst = vec![0xffu8; 300];
        let jobs = vec![
            CopyJob {
                src: Src {
                    file: fb.as_file(),
                    path: fb.path(),
                    offset: 0,
                    len: 4,
                },
                from: DType::U8,
                to: DType::U8,
                dst_offset: 256,
            },
            CopyJob {
                src: Src {
                    file: fa.as_file(),
                    path: fa.path(),
                    offset: 3,
                    len: 10,
                },
                from: DType::U8,
                to: DType::U8,
                dst_offset: 0,
            },
        ];
        let mut last = 0;
        copy_all(jobs, &mut dst, 3, &mut |d| last = d).unwrap();
        assert_eq!(last, 14);
        assert_eq!(&dst[..10], &a);
        assert!(dst[10..256].iter().all(|&x| x == 0));
        assert_eq!(&dst[256..260], &b);
        assert!(dst[260..].iter().all(|&x| x == 0));
    }

    /// A source that ends before its job does (a file truncated under a load) is an error
    /// naming the file and where it ended, for plain copies and for casts, on any thread count.
    #[test]
    fn a_short_file_is_an_error_naming_file_and_offset() {
        let f = file_of(&[7u8; 100]);
        for (to, threads) in [(DType::F32, 1), (DType::F16, 4)] {
            let mut dst = vec![0u8; 256];
            let jobs = vec![CopyJob {
                src: Src {
                    file: f.as_file(),
                    path: f.path(),
                    offset: 40,
                    len: 128,
                },
                from: DType::F32,
                to,
                dst_offset: 0,
            }];
            let err = copy_all(
                jobs,
                &mut dst[..(128 / 4 * to.size_bytes()) as usize],
                threads,
                &mut |_| {},
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains(&f.path().display().to_string()), "{err}");
            assert!(err.contains("it is now 100 bytes long"), "{err}");
            assert!(err.contains("at offset 40"), "{err}");
        }
    }
}
