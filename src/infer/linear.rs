//! A batch-invariant matrix product for the CPU: `y = x @ w.T` with `x` `[m, k]` and a linear
//! layer's weight `w` `[n, k]` as checkpoints store it, both row-major f32.
//!
//! Two reasons not to use candle's CPU matmul (the `gemm` crate) for the model's linears:
//!
//! - **Speed at decode shapes.** Decoding multiplies a few rows (`m` = the batch) by weights
//!   that do not fit in cache. `gemm` is built for large products: at `m` = 4-16 over a
//!   demo-sized model's 10 MB of weights it took 4-12x the time of `m` = 1 (it re-reads the
//!   weights per block of its own and packs them on every call), so batching bought almost
//!   nothing. Here each output is a dot product of a row of `x` with a row of `w`, read in
//!   order, and each weight row is read from memory once per product (a tile's weight rows
//!   stay in L1 while every row of `x` passes): what decoding a batch should cost.
//! - **Batch invariance.** A row's result must not depend on what else is in the batch, or
//!   greedy batched output can drift from one-prompt-at-a-time output at a near tie.
//!   `gemm` picks different kernels (and summation orders) for different `m`. Here every
//!   output element is the dot product of `x[r]` and `w[c]` summed the same way (lane sums in
//!   `k` order, 16 lanes with AVX-512, 8 with AVX2 or portable code, a fixed reduction tree,
//!   fused multiply-adds where the CPU has them; the kernel is chosen once per process),
//!   whichever rows share its tile and however many threads run: the same bits for any batch.
//!
//! AVX-512 against AVX2 on the same machine (`VRAMSWAP_LINEAR_KERNEL=avx2` picks the latter):
//! about 20 % more multiply-adds per second on one core for a prompt's hundreds of rows, where
//! the product is compute-bound, and the same at decode's few rows, where reading the weights
//! is the cost.
//!
//! The kernels assume the default floating-point environment on every thread (no flush-to-zero
//! or denormals-are-zero): the product runs on the calling thread or on rayon's workers
//! depending on its size, a batch's rows run their whole forward pass on rayon's workers (see
//! `generate`'s groups) while a prompt alone runs on the caller's thread, and a host that set
//! FTZ/DAZ on some threads only (a library built with `-ffast-math` can) would make subnormal
//! results differ between a row alone and the same row in a large batch.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape};
use rayon::prelude::*;

use crate::error::{Error, Result};

/// Multiply-adds below which the product runs on the calling thread.
const PARALLEL_WORK: usize = 1 << 18;

/// [`matmul_t`] as a candle op on the CPU: `x` `[m, k]` and `w` `[n, k]`, contiguous f32.
pub(crate) struct CpuLinear;

impl CustomOp2 for CpuLinear {
    fn name(&self) -> &'static str {
        "vramswap-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, k) = xl.shape().dims2()?;
        let (n, wk) = wl.shape().dims2()?;
        let (Some((x0, x1)), Some((w0, w1))) = (xl.contiguous_offsets(), wl.contiguous_offsets())
        else {
            return Err(candle_core::Error::Msg(
                "linear: operands must be contiguous".into(),
            ));
        };
        if wk != k {
            return Err(candle_core::Error::Msg(format!(
                "linear: [{m}, {k}] @ [{n}, {wk}].T"
            )));
        }
        let x = &xs.as_slice::<f32>()?[x0..x1];
        let w = &ws.as_slice::<f32>()?[w0..w1];
        Ok((
            CpuStorage::F32(
                matmul_t(x, w, m, k, n).map_err(|e| candle_core::Error::Msg(e.to_string()))?,
            ),
            Shape::from((m, n)),
        ))
    }
}

/// `x @ w.T`: `x` is `[m, k]`, `w` `[n, k]` (a linear layer's weight as checkpoints store it),
/// both contiguous row-major f32; returns `[m, n]`. Batch-invariant: row `r` of the result
/// has the same bits whatever the other rows of `x` are (see the module docs).
///
/// Fails with [`Error::InvalidArgument`] when the slice lengths do not match `m`, `k` and `n`
/// or the sizes overflow.
pub fn matmul_t(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Result<Vec<f32>> {
    let (Some(xl), Some(wl), Some(yl)) = (m.checked_mul(k), n.checked_mul(k), m.checked_mul(n))
    else {
        return Err(Error::InvalidArgument(format!(
            "matmul_t: [{m}, {k}] @ [{n}, {k}].T overflows"
        )));
    };
    if x.len() != xl || w.len() != wl {
        return Err(Error::InvalidArgument(format!(
            "matmul_t: x has {} elements and w {}; [{m}, {k}] and [{n}, {k}] need {xl} and {wl}",
            x.len(),
            w.len()
        )));
    }
    let mut y = vec![0f32; yl];
    if m == 0 || n == 0 {
        return Ok(y);
    }
    let threads = if m.saturating_mul(k).saturating_mul(n) >= PARALLEL_WORK {
        rayon::current_num_threads().max(1)
    } else {
        1
    };
    if threads == 1 {
        band(x, w, m, k, 0, n, &mut y);
        return Ok(y);
    }
    // Column bands that threads take whole, two per thread so a slow thread is not the tail.
    let band_cols = n.div_ceil(threads * 2).max(8);
    let bands: Vec<(usize, Vec<f32>)> = (0..n)
        .step_by(band_cols)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|c0| {
            let c1 = (c0 + band_cols).min(n);
            let mut part = vec![0f32; m * (c1 - c0)];
            band(x, w, m, k, c0, c1, &mut part);
            (c0, part)
        })
        .collect();
    for (c0, part) in bands {
        let width = part.len() / m;
        for r in 0..m {
            y[r * n + c0..r * n + c0 + width].copy_from_slice(&part[r * width..(r + 1) * width]);
        }
    }
    Ok(y)
}

/// The kernels, fastest first. One is chosen per process (see [`kernel`]), so every product
/// of the process sums the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    /// 16-lane sums in AVX-512 registers, 4x4 tiles.
    Avx512,
    /// 8-lane sums in AVX2 registers with fused multiply-adds, 4x3 tiles.
    Avx2,
    /// 8-lane sums in portable code (unfused), 4x3 tiles.
    Portable,
}

/// The kernel this CPU runs best, chosen once: AVX-512 where the CPU has AVX-512F, else AVX2
/// with FMA, else portable code. `VRAMSWAP_LINEAR_KERNEL=avx2|portable` picks a slower one
/// (for benchmarks that compare them in one run; a name the CPU cannot run is ignored).
fn kernel() -> Kernel {
    static KERNEL: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
    *KERNEL.get_or_init(|| {
        let best = [Kernel::Avx512, Kernel::Avx2, Kernel::Portable]
            .into_iter()
            .find(|&k| runs_here(k))
            .unwrap_or(Kernel::Portable);
        match std::env::var("VRAMSWAP_LINEAR_KERNEL").as_deref() {
            Ok("portable") => Kernel::Portable,
            Ok("avx2") if runs_here(Kernel::Avx2) => Kernel::Avx2,
            _ => best,
        }
    })
}

/// Whether this CPU has what `k` needs (std caches the feature checks).
fn runs_here(k: Kernel) -> bool {
    match k {
        Kernel::Portable => true,
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        }
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        }
        #[cfg(not(target_arch = "x86_64"))]
        _ => false,
    }
}

/// The name of the kernel [`matmul_t`] runs in this process (`avx512`, `avx2` or `portable`),
/// for benchmark reports.
pub fn linear_kernel_name() -> &'static str {
    match kernel() {
        Kernel::Avx512 => "avx512",
        Kernel::Avx2 => "avx2",
        Kernel::Portable => "portable",
    }
}

/// Kernel ids for the const parameter of [`band_generic`] (the vector ones are used on x86_64
/// only).
const PORTABLE: u8 = 0;
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const AVX2: u8 = 1;
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const AVX512: u8 = 2;

/// Output columns `c0..c1` of `x @ w.T` into `out` (`[m, c1 - c0]`), with the kernel of
/// [`kernel`].
fn band(x: &[f32], w: &[f32], m: usize, k: usize, c0: usize, c1: usize, out: &mut [f32]) {
    band_with(kernel(), x, w, m, k, c0, c1, out);
}

/// [`band`] with kernel `kern`, or the portable one where this CPU cannot run `kern`.
#[allow(clippy::too_many_arguments)]
fn band_with(
    kern: Kernel,
    x: &[f32],
    w: &[f32],
    m: usize,
    k: usize,
    c0: usize,
    c1: usize,
    out: &mut [f32],
) {
    match kern {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 if runs_here(kern) => {
            // SAFETY: `band_avx512` only requires AVX-512F, AVX2 and FMA, which `runs_here`
            // has just confirmed.
            unsafe { band_avx512(x, w, m, k, c0, c1, out) }
        }
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 if runs_here(kern) => {
            // SAFETY: `band_avx2` only requires AVX2 and FMA, which `runs_here` has just
            // confirmed.
            unsafe { band_avx2(x, w, m, k, c0, c1, out) }
        }
        _ => band_generic::<PORTABLE, 8, 3>(x, w, m, k, c0, c1, out),
    }
}

/// [`band_generic`] compiled for AVX2 with fused multiply-adds.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn band_avx2(x: &[f32], w: &[f32], m: usize, k: usize, c0: usize, c1: usize, out: &mut [f32]) {
    band_generic::<AVX2, 8, 3>(x, w, m, k, c0, c1, out);
}

/// [`band_generic`] compiled for AVX-512.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn band_avx512(x: &[f32], w: &[f32], m: usize, k: usize, c0: usize, c1: usize, out: &mut [f32]) {
    band_generic::<AVX512, 16, 4>(x, w, m, k, c0, c1, out);
}

/// Walks the band column tile by column tile, and within a tile over every row group, so a
/// tile's weight rows are read from memory once and then served from L1 to all the rows of
/// `x`. Tiles are 4 rows x `C` columns of `L`-lane sums: with AVX2 4x3, 12 accumulators, which
/// with 3 weight vectors and one row vector fill its 16 registers; with AVX-512 4x4, 16
/// accumulators + 4 + 1 of its 32 (wider tiles had the compiler spill accumulators and ran
/// slower) (then 2 rows, then 1, for what `m` leaves; the last `n % C` columns one at a time).
#[inline(always)]
fn band_generic<const K: u8, const L: usize, const C: usize>(
    x: &[f32],
    w: &[f32],
    m: usize,
    k: usize,
    c0: usize,
    c1: usize,
    out: &mut [f32],
) {
    let o = Band {
        width: c1 - c0,
        c0,
        prefetch: m <= PREFETCH_ROWS,
    };
    let mut c = c0;
    while c + C <= c1 {
        rows::<K, L, C>(x, w, m, k, c, out, &o);
        c += C;
    }
    while c < c1 {
        rows::<K, L, 1>(x, w, m, k, c, out, &o);
        c += 1;
    }
}

/// A band's columns: where its results go, `out[r * width + (c - c0)]`, and how it reads the
/// weights.
struct Band {
    width: usize,
    c0: usize,
    /// Whether tiles fetch the next tile's weight rows ahead. For a few rows (decoding) the
    /// weights come from memory and a tile is too short for the hardware prefetcher to catch
    /// up; for many rows (a prompt) the weights are in cache and the extra loads cost (4x4
    /// AVX-512 tiles, one core, 8 rows: 41 GMAC/s with, 34 without; 256 rows: 44 with, 51
    /// without).
    prefetch: bool,
}

/// Rows up to which [`Band::prefetch`] is on.
const PREFETCH_ROWS: usize = 32;

/// Columns `c..c + C` against every row of `x`, 4 rows at a time, then 2, then the last one.
#[inline(always)]
fn rows<const K: u8, const L: usize, const C: usize>(
    x: &[f32],
    w: &[f32],
    m: usize,
    k: usize,
    c: usize,
    out: &mut [f32],
    o: &Band,
) {
    let mut r = 0;
    while r + 4 <= m {
        tile::<K, L, 4, C>(x, w, k, r, c, out, o);
        r += 4;
    }
    if r + 2 <= m {
        tile::<K, L, 2, C>(x, w, k, r, c, out, o);
        r += 2;
    }
    if r < m {
        tile::<K, L, 1, C>(x, w, k, r, c, out, o);
    }
}

/// One `R x C` block of dot products over the whole `k`. Each dot product keeps `L` lane sums
/// over `k` in order, adds the `k % L` tail into its own sum, and reduces the lanes in a fixed
/// tree: its bits depend on its row and column (and the process's kernel) only, never on the
/// tile it is computed in.
#[inline(always)]
fn tile<const K: u8, const L: usize, const R: usize, const C: usize>(
    x: &[f32],
    w: &[f32],
    k: usize,
    r0: usize,
    c0: usize,
    out: &mut [f32],
    o: &Band,
) {
    let xs: [&[f32]; R] = std::array::from_fn(|i| &x[(r0 + i) * k..(r0 + i + 1) * k]);
    let ws: [&[f32]; C] = std::array::from_fn(|j| &w[(c0 + j) * k..(c0 + j + 1) * k]);
    let body = k - k % L;
    let sums = body_sums::<K, L, R, C>(&xs, &ws, body, o.prefetch);
    for i in 0..R {
        for j in 0..C {
            let mut tail = 0f32;
            for t in body..k {
                tail = fma::<K>(xs[i][t], ws[j][t], tail);
            }
            out[(r0 + i) * o.width + c0 + j - o.c0] = sums[i][j] + tail;
        }
    }
}

/// The sum of `L` lanes (a power of two) in a fixed tree: halves added pairwise until one is
/// left.
#[inline(always)]
fn reduce<const L: usize>(mut a: [f32; L]) -> f32 {
    let mut half = L / 2;
    while half > 0 {
        for i in 0..half {
            a[i] += a[i + half];
        }
        half /= 2;
    }
    a[0]
}

/// Every dot product of the block over `k` in `0..body` (a multiple of `L`): `L` lane sums,
/// lane `l` adding `x[kk + l] * w[kk + l]` for `kk` = 0, `L`, `2L`, ... in order, then
/// [`reduce`]d (the vector kernels reduce in registers, in the same tree).
#[inline(always)]
fn body_sums<const K: u8, const L: usize, const R: usize, const C: usize>(
    xs: &[&[f32]; R],
    ws: &[&[f32]; C],
    body: usize,
    prefetch: bool,
) -> [[f32; C]; R] {
    #[cfg(target_arch = "x86_64")]
    {
        if K == AVX512 && L == avx512::LANES && runs_here(Kernel::Avx512) {
            // SAFETY: `avx512::body_sums` needs AVX-512F, AVX2 and FMA, which `runs_here` has
            // confirmed (std caches the check).
            return unsafe { avx512::body_sums::<R, C>(xs, ws, body, prefetch) };
        }
        if K == AVX2 && L == avx2::LANES && runs_here(Kernel::Avx2) {
            // SAFETY: `avx2::body_sums` needs AVX2 and FMA, which `runs_here` has confirmed
            // (std caches the check).
            return unsafe { avx2::body_sums::<R, C>(xs, ws, body, prefetch) };
        }
    }
    let mut acc = [[[0f32; L]; C]; R];
    let mut kk = 0;
    while kk < body {
        for i in 0..R {
            for j in 0..C {
                for l in 0..L {
                    acc[i][j][l] = fma::<K>(xs[i][kk + l], ws[j][kk + l], acc[i][j][l]);
                }
            }
        }
        kk += L;
    }
    acc.map(|row| row.map(reduce))
}

/// The lane sums with AVX2 vectors: one `__m256` per dot product, one fused multiply-add per 8
/// products (the compiler does not vectorise the portable loop on its own).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{
        __m256, _mm256_castps256_ps128, _mm256_extractf128_ps, _mm256_fmadd_ps, _mm256_loadu_ps,
        _mm256_setzero_ps, _mm_add_ps, _mm_add_ss, _mm_cvtss_f32, _mm_movehl_ps, _mm_prefetch,
        _mm_shuffle_ps, _MM_HINT_T0,
    };

    /// Lanes of one vector.
    pub(super) const LANES: usize = 8;

    /// [`super::body_sums`] of the `R x C` block.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn body_sums<const R: usize, const C: usize>(
        xs: &[&[f32]; R],
        ws: &[&[f32]; C],
        body: usize,
        prefetch: bool,
    ) -> [[f32; C]; R] {
        assert!(
            body.is_multiple_of(LANES)
                && xs.iter().all(|x| x.len() >= body)
                && ws.iter().all(|w| w.len() >= body)
        );
        let mut acc: [[__m256; C]; R] = [[_mm256_setzero_ps(); C]; R];
        let mut wv: [__m256; C] = [_mm256_setzero_ps(); C];
        let mut kk = 0;
        // The next tile's weight rows follow this tile's in memory (`w` is row-major and a tile
        // is `C` consecutive rows): fetch them while this tile computes, so the next tile does
        // not start by waiting on memory (its rows are too short for the hardware prefetcher
        // to have caught up).
        let ahead = C * ws[0].len();
        while kk < body {
            for j in 0..C {
                // SAFETY: `kk + 8 <= body <= ws[j].len()` (asserted above), so the 8 floats
                // read are inside the slice; `loadu` has no alignment requirement.
                wv[j] = unsafe { _mm256_loadu_ps(ws[j].as_ptr().add(kk)) };
                if prefetch && kk % 16 == 0 {
                    // A hint that never faults, even past the end of `w` (hence
                    // `wrapping_add`: the address is never read).
                    _mm_prefetch::<_MM_HINT_T0>(
                        ws[j].as_ptr().wrapping_add(kk + ahead).cast::<i8>(),
                    );
                }
            }
            for i in 0..R {
                // SAFETY: as above, for `xs[i]`.
                let xv = unsafe { _mm256_loadu_ps(xs[i].as_ptr().add(kk)) };
                for j in 0..C {
                    acc[i][j] = _mm256_fmadd_ps(xv, wv[j], acc[i][j]);
                }
            }
            kk += LANES;
        }
        let mut sums = [[0f32; C]; R];
        for i in 0..R {
            for j in 0..C {
                sums[i][j] = reduce8(acc[i][j]);
            }
        }
        sums
    }

    /// [`super::reduce`] of 8 lanes in registers: the halves added, then their halves, ...
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn reduce8(v: __m256) -> f32 {
        let s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps::<1>(s2, s2)))
    }
}

/// The lane sums with AVX-512 vectors: one `__m512` per dot product, 16 products per fused
/// multiply-add, twice the work per instruction of AVX2 where the products are compute-bound
/// (a prompt's many rows).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::{
        __m512, _mm256_add_ps, _mm256_castpd_ps, _mm512_castps512_ps256, _mm512_castps_pd,
        _mm512_extractf64x4_pd, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_setzero_ps, _mm_prefetch,
        _MM_HINT_T0,
    };

    /// Lanes of one vector.
    pub(super) const LANES: usize = 16;

    /// [`super::body_sums`] of the `R x C` block.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) fn body_sums<const R: usize, const C: usize>(
        xs: &[&[f32]; R],
        ws: &[&[f32]; C],
        body: usize,
        prefetch: bool,
    ) -> [[f32; C]; R] {
        assert!(
            body.is_multiple_of(LANES)
                && xs.iter().all(|x| x.len() >= body)
                && ws.iter().all(|w| w.len() >= body)
        );
        let mut acc: [[__m512; C]; R] = [[_mm512_setzero_ps(); C]; R];
        let mut wv: [__m512; C] = [_mm512_setzero_ps(); C];
        let mut kk = 0;
        // Fetch the next tile's weight rows while this one computes (as in `avx2`): one cache
        // line per row per step.
        let ahead = C * ws[0].len();
        while kk < body {
            for j in 0..C {
                // SAFETY: `kk + 16 <= body <= ws[j].len()` (asserted above), so the 16 floats
                // read are inside the slice; `loadu` has no alignment requirement.
                wv[j] = unsafe { _mm512_loadu_ps(ws[j].as_ptr().add(kk)) };
                // A hint that never faults, even past the end of `w` (hence `wrapping_add`:
                // the address is never read).
                if prefetch {
                    _mm_prefetch::<_MM_HINT_T0>(
                        ws[j].as_ptr().wrapping_add(kk + ahead).cast::<i8>(),
                    );
                }
            }
            for i in 0..R {
                // SAFETY: as above, for `xs[i]`.
                let xv = unsafe { _mm512_loadu_ps(xs[i].as_ptr().add(kk)) };
                for j in 0..C {
                    acc[i][j] = _mm512_fmadd_ps(xv, wv[j], acc[i][j]);
                }
            }
            kk += LANES;
        }
        let mut sums = [[0f32; C]; R];
        for i in 0..R {
            for j in 0..C {
                sums[i][j] = reduce16(acc[i][j]);
            }
        }
        sums
    }

    /// [`super::reduce`] of 16 lanes in registers: lane `i` plus lane `i + 8`, then the rest
    /// as [`super::avx2::reduce8`] does it.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) fn reduce16(v: __m512) -> f32 {
        let lo = _mm512_castps512_ps256(v);
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
        super::avx2::reduce8(_mm256_add_ps(lo, hi))
    }
}

/// `a * b + c`, fused (one rounding) or not.
#[inline(always)]
fn fma<const K: u8>(a: f32, b: f32, c: f32) -> f32 {
    if K != PORTABLE {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
        (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    fn reference(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut y = vec![0f64; m * n];
        for r in 0..m {
            for c in 0..n {
                y[r * n + c] = (0..k)
                    .map(|i| x[r * k + i] as f64 * w[c * k + i] as f64)
                    .sum();
            }
        }
        y
    }

    #[test]
    fn products_match_a_double_precision_reference_at_every_shape() {
        for &(m, k, n) in &[
            (1, 1, 1),
            (1, 64, 259),
            (3, 7, 16),
            (4, 256, 512),
            (5, 33, 47),
            (9, 128, 1000),
            (16, 512, 256),
        ] {
            let (x, w) = (random(m * k, 1), random(k * n, 2));
            let y = matmul_t(&x, &w, m, k, n).unwrap();
            let want = reference(&x, &w, m, k, n);
            for (i, (&a, &b)) in y.iter().zip(&want).enumerate() {
                assert!(
                    (a as f64 - b).abs() <= 1e-5 * (k as f64).sqrt() * 4.0,
                    "[{m}x{k}x{n}] element {i}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn the_portable_kernel_matches_the_reference_too() {
        // The path of CPUs without AVX2 and FMA, run here directly.
        for &(m, k, n) in &[(1, 9, 5), (3, 64, 33), (6, 100, 17)] {
            let (x, w) = (random(m * k, 4), random(k * n, 5));
            let mut y = vec![0f32; m * n];
            band_generic::<PORTABLE, 8, 3>(&x, &w, m, k, 0, n, &mut y);
            let want = reference(&x, &w, m, k, n);
            for (&a, &b) in y.iter().zip(&want) {
                assert!((a as f64 - b).abs() <= 1e-4, "[{m}x{k}x{n}]: {a} vs {b}");
            }
            if m > 1 {
                let mut alone = vec![0f32; n];
                band_generic::<PORTABLE, 8, 3>(&x[k..2 * k], &w, 1, k, 0, n, &mut alone);
                assert_eq!(
                    alone,
                    y[n..2 * n],
                    "row 1 alone differs from row 1 in the batch"
                );
            }
        }
    }

    #[test]
    fn every_kernel_this_cpu_runs_matches_the_reference_and_is_batch_invariant() {
        // `matmul_t` runs the best kernel only; this runs each one the CPU has, so the AVX2
        // kernel stays tested on an AVX-512 machine. Shapes with `k % 16`, `k % 8` and
        // `n % 4`, `n % 3` tails; 9 rows leave a 4-4-1 split of the tile rows.
        let kernels: Vec<Kernel> = [Kernel::Avx512, Kernel::Avx2, Kernel::Portable]
            .into_iter()
            .filter(|&k| runs_here(k))
            .collect();
        eprintln!("kernels run on this CPU: {kernels:?}");
        for kern in kernels {
            for &(m, k, n) in &[(9, 64, 37), (9, 100, 23), (6, 389, 41), (3, 7, 5)] {
                let (x, w) = (random(m * k, 6), random(k * n, 7));
                let mut y = vec![0f32; m * n];
                band_with(kern, &x, &w, m, k, 0, n, &mut y);
                let want = reference(&x, &w, m, k, n);
                for (&a, &b) in y.iter().zip(&want) {
                    assert!(
                        (a as f64 - b).abs() <= 1e-5 * (k as f64).sqrt() * 4.0,
                        "{kern:?} [{m}x{k}x{n}]: {a} vs {b}"
                    );
                }
                for r in 0..m {
                    let mut alone = vec![0f32; n];
                    band_with(kern, &x[r * k..(r + 1) * k], &w, 1, k, 0, n, &mut alone);
                    assert!(
                        alone
                            .iter()
                            .zip(&y[r * n..(r + 1) * n])
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{kern:?} [{m}x{k}x{n}]: row {r} alone differs from row {r} in the batch"
                    );
                }
                // A band of columns gives the same bits as the whole product's columns.
                let (c0, c1) = (n / 3, n - 2);
                let mut part = vec![0f32; m * (c1 - c0)];
                band_with(kern, &x, &w, m, k, c0, c1, &mut part);
                for r in 0..m {
                    assert_eq!(
                        part[r * (c1 - c0)..(r + 1) * (c1 - c0)],
                        y[r * n + c0..r * n + c1],
                        "{kern:?}: a band's columns differ from the product's"
                    );
                }
            }
        }
    }

    #[test]
    fn the_vector_reductions_add_in_the_portable_tree() {
        let a: [f32; 16] = std::array::from_fn(|i| 1.0 + (i as f32) * 1e-7 * (i as f32).powi(3));
        // Halves added pairwise: (0+8, 1+9, ..), then their halves.
        let mut want = a;
        for half in [8, 4, 2, 1] {
            for i in 0..half {
                want[i] += want[i + half];
            }
        }
        assert_eq!(reduce(a).to_bits(), want[0].to_bits());
        #[cfg(target_arch = "x86_64")]
        if runs_here(Kernel::Avx2) {
            let eight: [f32; 8] = a[..8].try_into().unwrap();
            // SAFETY: the CPU has AVX2 and FMA (checked above); `loadu` reads the 8 floats of
            // `eight` with no alignment requirement.
            let got = unsafe { avx2::reduce8(std::arch::x86_64::_mm256_loadu_ps(eight.as_ptr())) };
            assert_eq!(got.to_bits(), reduce(eight).to_bits());
        }
        #[cfg(target_arch = "x86_64")]
        if runs_here(Kernel::Avx512) {
            // SAFETY: the CPU has AVX-512F, AVX2 and FMA (checked above); `loadu` reads the
            // 16 floats of `a` with no alignment requirement.
            let got = unsafe { avx512::reduce16(std::arch::x86_64::_mm512_loadu_ps(a.as_ptr())) };
            assert_eq!(got.to_bits(), reduce(a).to_bits());
        }
    }

    #[test]
    fn a_rows_result_has_the_same_bits_in_any_batch() {
        // One row stays under the threading threshold (256 x 700 < 2^18 multiply-adds) and
        // two rows and more take the threaded path, so a row computed on the calling thread is
        // compared with the same row computed in bands on rayon's threads; the second shape
        // has `k % 16`, `k % 8` and `n % 4`, `n % 3` tails.
        for (k, n) in [(256, 700), (257, 701)] {
            assert!(k * n < PARALLEL_WORK && 2 * k * n >= PARALLEL_WORK);
            let w = random(k * n, 3);
            let rows: Vec<Vec<f32>> = (0..17).map(|s| random(k, 10 + s)).collect();
            let alone: Vec<Vec<f32>> = rows
                .iter()
                .map(|x| matmul_t(x, &w, 1, k, n).unwrap())
                .collect();
            for m in [2, 3, 4, 5, 8, 17] {
                let x: Vec<f32> = rows[..m].concat();
                let y = matmul_t(&x, &w, m, k, n).unwrap();
                for r in 0..m {
                    let got = &y[r * n..(r + 1) * n];
                    assert!(
                        got.iter()
                            .zip(&alone[r])
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "k {k}: row {r} differs in a batch of {m}"
                    );
                }
            }
        }
    }

    #[test]
    fn empty_shapes_give_zeros() {
        assert!(matmul_t(&[], &[0.0; 6], 0, 2, 3).unwrap().is_empty());
        assert_eq!(matmul_t(&[], &[], 2, 0, 3).unwrap(), vec![0.0; 6]);
    }

    #[test]
    fn mismatched_or_overflowing_sizes_are_errors() {
        assert!(matmul_t(&[0.0; 5], &[0.0; 6], 2, 3, 2).is_err());
        assert!(matmul_t(&[0.0; 6], &[0.0; 5], 2, 3, 2).is_err());
        assert!(matmul_t(&[], &[], usize::MAX, 2, 1).is_err());
    }
}
