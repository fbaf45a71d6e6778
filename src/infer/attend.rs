//! Causal attention over the KV cache on the CPU as one fused candle op.
//!
//! Written with generic candle ops, a decode step's attention is a broadcast product of the
//! probabilities with the whole value cache and a strided sum: on the CPU that materialises
//! `[batch, heads, slots, head_dim]` and walks it element by element, and it was half of a
//! decode step's time at batch 8. This op reads each row's keys and values in place and skips
//! the row's left padding and future slots entirely (no mask tensor), so its cost is the real
//! tokens' and nothing else.
//!
//! It is also what keeps batched output equal to one-prompt-at-a-time output: every
//! (row, query, head) result is computed by the same arithmetic, in the same order, over the same real
//! keys, whatever the batch and the padding around it. Dot products over the head dimension
//! use a fixed split into 8 partial sums (a function of the head dimension only); softmax and
//! the weighted sum of values go over the keys in order.

use std::ops::RangeInclusive;

use candle_core::{CpuStorage, CustomOp3, Layout, Shape};
use rayon::prelude::*;

/// Work (multiply-adds) below which the op runs on the calling thread. Waking rayon's workers
/// costs tens of microseconds on an idle machine and far more where the other cores are busy:
/// at 2^18 (a batch of 8 decoding past 128 tokens), a 2-core machine with one core taken spent
/// a third of a 160-token generation in the scheduler, and batch 8 ran 1.2-1.5x slower than
/// on one thread. From 2^20 (about a millisecond of work) splitting pays.
const PARALLEL_WORK: usize = 1 << 20;

/// The op: `q` is `[batch, heads, t, head_dim]` (the queries of the last `t` slots), `k` and
/// `v` are `[batch, kv_heads, slots, head_dim]`, all f32 with a unit last stride; the result is
/// `[batch, t, heads, head_dim]` (ready to merge the heads). Query head `h` reads key/value
/// head `h / (heads / kv_heads)`. Row `r`'s query at slot `p` attends to slots `pads[r]..=p`;
/// a padding query (`p < pads[r]`) attends to itself only, so its values stay finite while no
/// real query ever reads them.
pub(crate) struct CausalAttention {
    /// Left padding per row.
    pub(crate) pads: Vec<usize>,
    /// Score scale, `1 / sqrt(head_dim)`.
    pub(crate) scale: f32,
    /// Sliding window: a query sees only the keys fewer than this many slots back (itself
    /// included); `None` for full causal attention.
    pub(crate) window: Option<usize>,
}

/// The key slots a query at `slot` sees in a row left-padded by `pad`: its row's real slots up
/// to itself, or only itself while it is padding (so its values stay finite; no real query
/// ever reads them). With a sliding `window` (as transformers masks it: key `j` is visible
/// while `slot - j < window`) the oldest keys drop out. The rule of both attention paths: this
/// op and the generic path's mask.
pub(crate) fn visible_keys(
    slot: usize,
    pad: usize,
    window: Option<usize>,
) -> RangeInclusive<usize> {
    let first = slot.min(pad);
    let first = match window {
        Some(w) => first.max((slot + 1).saturating_sub(w)),
        None => first,
    };
    first..=slot
}

/// A 4-d view of one operand: base offset and strides in elements.
struct View<'a> {
    data: &'a [f32],
    start: usize,
    stride: [usize; 3],
}

impl<'a> View<'a> {
    fn new(
        s: &'a CpuStorage,
        l: &Layout,
        what: &str,
    ) -> candle_core::Result<(View<'a>, [usize; 4])> {
        let data = s.as_slice::<f32>()?;
        let dims: [usize; 4] = l
            .dims()
            .try_into()
            .map_err(|_| candle_core::Error::Msg(format!("decode attention: {what} is not 4-d")))?;
        let st = l.stride();
        if st[3] != 1 {
            return Err(candle_core::Error::Msg(format!(
                "decode attention: {what}'s last dimension is strided"
            )));
        }
        Ok((
            View {
                data,
                start: l.start_offset(),
                stride: [st[0], st[1], st[2]],
            },
            dims,
        ))
    }

    /// The `hd` elements at `[a, b, c, ..]`.
    fn row(&self, a: usize, b: usize, c: usize, hd: usize) -> &'a [f32] {
        let o = self.start + a * self.stride[0] + b * self.stride[1] + c * self.stride[2];
        &self.data[o..o + hd]
    }
}

/// `Σ x[i] y[i]` with 8 partial sums in a fixed order (vectorises; the order depends only on
/// the length).
fn dot(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
    let (xr, yr) = (xc.remainder(), yc.remainder());
    for (a, b) in xc.zip(yc) {
        for i in 0..8 {
            acc[i] += a[i] * b[i];
        }
    }
    let mut tail = 0f32;
    for (a, b) in xr.iter().zip(yr) {
        tail += a * b;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

impl CustomOp3 for CausalAttention {
    fn name(&self) -> &'static str {
        "vramswap-causal-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (q, [b, nh, t, hd]) = View::new(qs, ql, "q")?;
        let (k, [kb, nkv, s, khd]) = View::new(ks, kl, "k")?;
        let (v, vdims) = View::new(vs, vl, "v")?;
        if t == 0
            || nh == 0
            || hd == 0
            || t > s
            || kb != b
            || khd != hd
            || vdims != [b, nkv, s, hd]
            || nkv == 0
            || nh % nkv != 0
            || self.pads.len() != b
        {
            return Err(candle_core::Error::Msg(format!(
                "causal attention: shapes q {:?} k {:?} v {vdims:?} with {} pads do not fit",
                ql.dims(),
                kl.dims(),
                self.pads.len()
            )));
        }
        let rep = nh / nkv;
        let mut out = vec![0f32; b * t * nh * hd];
        // Output chunk `c` is row `r`, query `i` (all heads): `c = r * t + i`. A chunk is the
        // unit of work a thread takes, with one score buffer for all its heads.
        let one = |(c, o): (usize, &mut [f32])| {
            let (r, i) = (c / t, c % t);
            let slot = s - t + i;
            let keys = visible_keys(slot, self.pads[r], self.window);
            let mut p = vec![0f32; slot + 1 - keys.start()];
            for (h, o) in o.chunks_mut(hd).enumerate() {
                let kvh = h / rep;
                let qr = q.row(r, h, i, hd);
                for (x, j) in p.iter_mut().zip(keys.clone()) {
                    *x = dot(qr, k.row(r, kvh, j, hd)) * self.scale;
                }
                let max = p.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f32;
                for x in &mut p {
                    *x = (*x - max).exp();
                    sum += *x;
                }
                for (j, &e) in keys.clone().zip(&p) {
                    let w = e / sum;
                    for (a, &x) in o.iter_mut().zip(v.row(r, kvh, j, hd)) {
                        *a += w * x;
                    }
                }
            }
        };
        let work = (b * nh * t).saturating_mul(s * hd);
        if work >= PARALLEL_WORK && b * t > 1 {
            out.par_chunks_mut(nh * hd).enumerate().for_each(one);
        } else {
            out.chunks_mut(nh * hd).enumerate().for_each(one);
        }
        Ok((CpuStorage::F32(out), Shape::from((b, t, nh, hd))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};
    use rand::{Rng, SeedableRng};

    fn random(shape: &[usize], seed: u64) -> (Vec<f32>, Tensor) {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
        let v: Vec<f32> = (0..shape.iter().product())
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        let t = Tensor::from_vec(v.clone(), shape, &Device::Cpu).unwrap();
        (v, t)
    }

    /// Softmax attention in f64 from the definition, for one (row, head, query).
    #[allow(clippy::too_many_arguments)]
    fn reference(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        dims: (usize, usize, usize, usize, usize),
        (r, h, i): (usize, usize, usize),
        pad: usize,
        scale: f64,
    ) -> Vec<f64> {
        let (nh, nkv, t, s, hd) = dims;
        let kvh = h / (nh / nkv);
        let slot = s - t + i;
        let keys: Vec<usize> = if slot < pad {
            vec![slot]
        } else {
            (pad..=slot).collect()
        };
        let qv = &q[((r * nh + h) * t + i) * hd..][..hd];
        let at = |buf: &[f32], j: usize| -> Vec<f64> {
            buf[((r * nkv + kvh) * s + j) * hd..][..hd]
                .iter()
                .map(|&x| x as f64)
                .collect()
        };
        let sc: Vec<f64> = keys
            .iter()
            .map(|&j| {
                at(k, j)
                    .iter()
                    .zip(qv)
                    .map(|(a, &b)| a * b as f64)
                    .sum::<f64>()
                    * scale
            })
            .collect();
        let max = sc.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = sc.iter().map(|x| (x - max).exp()).collect();
        let z: f64 = e.iter().sum();
        let mut out = vec![0f64; hd];
        for (&j, &ej) in keys.iter().zip(&e) {
            for (o, x) in out.iter_mut().zip(at(v, j)) {
                *o += ej / z * x;
            }
        }
        out
    }

    #[test]
    fn matches_softmax_attention_from_the_definition_with_padding_and_shared_kv_heads() {
        // 3 rows (pads 0, 2, 4), 4 query heads over 2 key/value heads, 3 queries over 7 slots
        // (the first queries of row 2 are padding), head_dim 12 (a tail after 8 lanes).
        let (b, nh, nkv, t, s, hd) = (3, 4, 2, 3, 7, 12);
        let (q, qt) = random(&[b, nh, t, hd], 1);
        let (k, kt) = random(&[b, nkv, s, hd], 2);
        let (v, vt) = random(&[b, nkv, s, hd], 3);
        let pads = vec![0, 2, 5];
        let scale = 1.0 / (hd as f64).sqrt();
        let op = CausalAttention {
            pads: pads.clone(),
            scale: scale as f32,
            window: None,
        };
        let out = qt.apply_op3_no_bwd(&kt, &vt, &op).unwrap();
        assert_eq!(out.dims(), &[b, t, nh, hd]);
        let got: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
        for (r, &pad) in pads.iter().enumerate() {
            for i in 0..t {
                for h in 0..nh {
                    let want = reference(&q, &k, &v, (nh, nkv, t, s, hd), (r, h, i), pad, scale);
                    let at = ((r * t + i) * nh + h) * hd;
                    for (d, w) in want.iter().enumerate() {
                        assert!(
                            (got[at + d] as f64 - w).abs() < 1e-5,
                            "row {r} query {i} head {h} dim {d}: {} vs {w}",
                            got[at + d]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn strided_cache_views_read_the_same_as_contiguous_ones() {
        // The model passes views of larger cache buffers (slots 0..s of a capacity).
        let (b, nh, nkv, s, cap, hd) = (2, 2, 1, 5, 9, 8);
        let (_, qt) = random(&[b, nh, 1, hd], 4);
        let (_, kbuf) = random(&[b, nkv, cap, hd], 5);
        let (_, vbuf) = random(&[b, nkv, cap, hd], 6);
        let op = CausalAttention {
            pads: vec![1, 0],
            scale: 0.3,
            window: None,
        };
        let (kv, vv) = (kbuf.narrow(2, 0, s).unwrap(), vbuf.narrow(2, 0, s).unwrap());
        let a = qt.apply_op3_no_bwd(&kv, &vv, &op).unwrap();
        let c = qt
            .apply_op3_no_bwd(&kv.contiguous().unwrap(), &vv.contiguous().unwrap(), &op)
            .unwrap();
        let (a, c): (Vec<f32>, Vec<f32>) = (
            a.flatten_all().unwrap().to_vec1().unwrap(),
            c.flatten_all().unwrap().to_vec1().unwrap(),
        );
        assert_eq!(a, c);
    }

    #[test]
    fn the_threaded_path_gives_each_row_the_bits_it_has_alone() {
        // Large enough to be split over rayon's threads; each row alone (one row, one query)
        // runs on the calling thread.
        let (b, nh, nkv, s, hd) = (4, 8, 4, 1024, 64);
        assert!(b * nh * s * hd >= PARALLEL_WORK);
        let (_, qt) = random(&[b, nh, 1, hd], 10);
        let (_, kt) = random(&[b, nkv, s, hd], 11);
        let (_, vt) = random(&[b, nkv, s, hd], 12);
        let pads = vec![0, 17, 3, 900];
        let op = CausalAttention {
            pads: pads.clone(),
            scale: 0.125,
            window: None,
        };
        let all: Vec<f32> = qt
            .apply_op3_no_bwd(&kt, &vt, &op)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (r, &pad) in pads.iter().enumerate() {
            let one = CausalAttention {
                pads: vec![pad],
                scale: 0.125,
                window: None,
            };
            let row = |t: &Tensor| t.narrow(0, r, 1).unwrap();
            let alone: Vec<f32> = row(&qt)
                .apply_op3_no_bwd(&row(&kt), &row(&vt), &one)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let width = nh * hd;
            let got = &all[r * width..(r + 1) * width];
            assert!(
                got.iter()
                    .zip(&alone)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "row {r}"
            );
        }
    }

    #[test]
    fn shapes_that_do_not_fit_are_errors_not_panics() {
        let (_, q) = random(&[1, 3, 1, 8], 7);
        let (_, k) = random(&[1, 2, 4, 8], 8);
        let op = CausalAttention {
            pads: vec![0],
            scale: 1.0,
            window: None,
        };
        // 3 query heads cannot share 2 key/value heads.
        assert!(q.apply_op3_no_bwd(&k, &k, &op).is_err());
        let (_, q) = random(&[1, 2, 1, 8], 9);
        let bad_pads = CausalAttention {
            pads: vec![0, 0],
            scale: 1.0,
            window: None,
        };
        assert!(q.apply_op3_no_bwd(&k, &k, &bad_pads).is_err());
    }

    /// A sliding window drops the oldest keys: a window as long as the cache changes nothing,
    /// and a window of 1 leaves each query its own value (as transformers masks it, key `j` is
    /// seen from slot `i` while `i - j < window`).
    #[test]
    fn a_sliding_window_sees_only_the_last_keys() {
        let (b, nh, nkv, t, s, hd) = (1, 2, 1, 4, 6, 8);
        let (_, qt) = random(&[b, nh, t, hd], 4);
        let (_, kt) = random(&[b, nkv, s, hd], 5);
        let (v, vt) = random(&[b, nkv, s, hd], 6);
        let run = |window| {
            let op = CausalAttention {
                pads: vec![0],
                scale: 0.3,
                window,
            };
            let out = qt.apply_op3_no_bwd(&kt, &vt, &op).unwrap();
            out.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        assert_eq!(run(None), run(Some(s)));
        assert_ne!(run(None), run(Some(2)));
        let own = run(Some(1));
        for i in 0..t {
            let slot = s - t + i;
            for h in 0..nh {
                let got = &own[(i * nh + h) * hd..][..hd];
                assert_eq!(got, &v[slot * hd..][..hd], "query {i} head {h}");
            }
        }
        assert_eq!(visible_keys(5, 0, Some(2)), 4..=5);
        assert_eq!(visible_keys(5, 5, Some(3)), 5..=5);
        assert_eq!(visible_keys(1, 3, Some(3)), 1..=1);
    }
}
