//! Parallel copy of tensor bytes into one destination buffer, with optional float casts
//! (f32, f16, bf16; round to nearest even through `half`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use half::{bf16, f16};

use crate::weights::DType;

/// Bytes of destination per work item: big enough that scheduling costs nothing, small enough
/// to balance threads and report progress smoothly.
const PIECE_BYTES: u64 = 8 << 20;

/// How often progress is reported while copying.
const REPORT_EVERY: Duration = Duration::from_millis(50);

/// One tensor to copy: its source bytes and types, and where it goes in the destination.
pub(crate) struct CopyJob<'a> {
    pub(crate) src: &'a [u8],
    pub(crate) from: DType,
    pub(crate) to: DType,
    pub(crate) dst_offset: u64,
}

impl CopyJob<'_> {
    fn elements(&self) -> u64 {
        self.src.len() as u64 / self.from.size_bytes()
    }
}

struct Piece<'a> {
    src: &'a [u8],
    dst: &'a mut [u8],
    from: DType,
    to: DType,
}

/// Copies (and casts) every job into `dst` with `threads` threads; bytes of `dst` no job
/// covers are zeroed. `jobs` must lie inside `dst` without overlapping (a laid-out set
/// guarantees it); a job that does not is skipped. `progress(done)` is called on this thread
/// with destination bytes done, now and then and once at the end.
pub(crate) fn copy_all(
    mut jobs: Vec<CopyJob<'_>>,
    dst: &mut [u8],
    threads: usize,
    progress: &mut dyn FnMut(u64),
) {
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
            let (s, st) = src.split_at((n * job.from.size_bytes()) as usize);
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
    let (tx, rx) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            let tx = tx.clone();
            let (queue, done) = (&queue, &done);
            s.spawn(move || {
                let _alive = tx;
                loop {
                    let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop();
                    let Some(p) = next else { break };
                    convert(p.src, p.from, p.dst, p.to);
                    done.fetch_add(p.dst.len() as u64, Ordering::Relaxed);
                }
            });
        }
        drop(tx);
        // Every worker holds a sender; the channel disconnects when the last one finishes.
        while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(REPORT_EVERY) {
            progress(done.load(Ordering::Relaxed));
        }
    });
    progress(done.load(Ordering::Relaxed));
}

/// Converts `src` (elements of `from`) into `dst` (as many elements of `to`). Types other than
/// F32/F16/BF16 are copied only when `from == to`.
pub(crate) fn convert(src: &[u8], from: DType, dst: &mut [u8], to: DType) {
    use DType::{BF16, F16, F32};
    fn each<const A: usize, const B: usize>(
        src: &[u8],
        dst: &mut [u8],
        f: impl Fn([u8; A]) -> [u8; B],
    ) {
        for (s, d) in src.chunks_exact(A).zip(dst.chunks_exact_mut(B)) {
            let mut a = [0u8; A];
            a.copy_from_slice(s);
            d.copy_from_slice(&f(a));
        }
    }
    let h = |b: [u8; 2]| f16::from_bits(u16::from_le_bytes(b)).to_f32();
    let bh = |b: [u8; 2]| bf16::from_bits(u16::from_le_bytes(b)).to_f32();
    match (from, to) {
        (a, b) if a == b => dst.copy_from_slice(&src[..dst.len()]),
        (F32, F16) => each(src, dst, |b| {
            f16::from_f32(f32::from_le_bytes(b)).to_le_bytes()
        }),
        (F32, BF16) => each(src, dst, |b| {
            bf16::from_f32(f32::from_le_bytes(b)).to_le_bytes()
        }),
        (F16, F32) => each(src, dst, |b| h(b).to_le_bytes()),
        (BF16, F32) => each(src, dst, |b| bh(b).to_le_bytes()),
        (F16, BF16) => each(src, dst, |b| bf16::from_f32(h(b)).to_le_bytes()),
        (BF16, F16) => each(src, dst, |b| f16::from_f32(bh(b)).to_le_bytes()),
        _ => tracing::error!("no cast from {from} to {to}"),
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

    #[test]
    fn copy_all_fills_gaps_with_zeros_and_reports_every_byte() {
        let a = [1u8; 10];
        let b = [2u8; 4];
        let mut dst = vec![0xffu8; 300];
        let jobs = vec![
            CopyJob {
                src: &b,
                from: DType::U8,
                to: DType::U8,
                dst_offset: 256,
            },
            CopyJob {
                src: &a,
                from: DType::U8,
                to: DType::U8,
                dst_offset: 0,
            },
        ];
        let mut last = 0;
        copy_all(jobs, &mut dst, 3, &mut |d| last = d);
        assert_eq!(last, 14);
        assert_eq!(&dst[..10], &a);
        assert!(dst[10..256].iter().all(|&x| x == 0));
        assert_eq!(&dst[256..260], &b);
        assert!(dst[260..].iter().all(|&x| x == 0));
    }
}
