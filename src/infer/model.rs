//! The decoder forward pass shared by every family (see [`super::config::FamilyTraits`] for
//! what differs): RMSNorm, rotary embeddings, grouped-query attention with a KV cache and an
//! optional sliding window, gated MLP, written with candle ops.
//!
//! A batch shares one timeline of cache slots. Rows are left-padded: row `r`'s first `pad[r]`
//! slots hold padding, its tokens sit at positions `slot - pad[r]`, and the attention mask lets
//! a real query see only the row's real keys at or before it. A padding query sees only itself,
//! so its values stay finite and nothing it computes can reach a real row (a masked weight is
//! an exact zero).

use candle_core::{DType as CDType, Device, Tensor, D};

use super::attend::{visible_keys, CausalAttention};
use super::candle_err;
use super::config::{Activation, LlamaConfig};
use super::linear::CpuLinear;
use super::params::{BlockParams, Linear, LlamaParams};
use crate::error::{Error, Result};

type CResult<T> = candle_core::Result<T>;

/// Keys and values of every block for one batch: per block two buffers `[batch, kv_heads,
/// capacity, head_dim]` whose first [`KvCache::slots`] slots are filled.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    slots: usize,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> KvCache {
        KvCache::default()
    }

    /// Slots filled so far.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Keeps only the batch rows `rows` (in that order), dropping the others' keys and values.
    pub fn retain_rows(&mut self, rows: &[usize]) -> Result<()> {
        let Some(dev) = self
            .layers
            .iter()
            .flatten()
            .next()
            .map(|(k, _)| k.device().clone())
        else {
            return Ok(());
        };
        let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let idx = Tensor::from_vec(idx, rows.len(), &dev).map_err(candle_err)?;
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.index_select(&idx, 0).map_err(candle_err)?;
            *v = v.index_select(&idx, 0).map_err(candle_err)?;
        }
        Ok(())
    }
}

/// A Llama model: config plus parameters on a candle device.
#[derive(Debug, Clone)]
pub struct Llama {
    cfg: LlamaConfig,
    params: LlamaParams,
    inv_freq: Tensor,
    /// The rope's attention scaling (cos and sin are multiplied by it).
    rope_scale: f32,
    device: Device,
    /// Whether the linears and the attention run the CPU kernels of `linear` and `attend`
    /// (f32 on the CPU: always, as the parameters are f32) rather than candle's generic ops.
    fused: bool,
}

impl Llama {
    /// A model over `params` (see [`LlamaParams::build`]).
    pub fn new(cfg: LlamaConfig, params: LlamaParams, device: &Device) -> Result<Llama> {
        let tables = cfg.rope.tables(cfg.head_dim(), cfg.max_position_embeddings);
        let n = tables.inv_freq.len();
        let inv_freq = Tensor::from_vec(tables.inv_freq, (1, 1, n), device).map_err(candle_err)?;
        let fused = matches!(device, Device::Cpu) && params.embed.dtype() == CDType::F32;
        Ok(Llama {
            cfg,
            params,
            inv_freq,
            rope_scale: tables.attention_scaling,
            device: device.clone(),
            fused,
        })
    }

    /// The config.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// Bytes of the weights each decode step reads (see [`LlamaParams::step_weight_bytes`]).
    pub fn step_weight_bytes(&self) -> usize {
        self.params.step_weight_bytes()
    }

    /// Whether the linears and the attention run this crate's batch-invariant CPU kernels
    /// (an f32 model on the CPU) rather than candle's generic ops.
    pub fn uses_cpu_kernels(&self) -> bool {
        self.fused
    }

    /// The candle device it computes on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Runs `tokens` (`[batch][t]`, the same `t` for every row) through the model at the cache's
    /// next `t` slots and returns the logits of the last slot of each row, `[batch, vocab]`.
    /// `pads[r]` is row `r`'s left padding (slots before its first token).
    pub fn forward(
        &self,
        tokens: &[Vec<u32>],
        pads: &[usize],
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let b = tokens.len();
        let t = tokens.first().map_or(0, Vec::len);
        if b == 0 || t == 0 || tokens.iter().any(|r| r.len() != t) || pads.len() != b {
            return Err(Error::InvalidArgument(format!(
                "forward needs a non-empty batch of equal-length rows and one pad per row \
                 ({b} rows, {} pads)",
                pads.len()
            )));
        }
        let start = cache.slots;
        if start + t > self.cfg.max_position_embeddings {
            return Err(Error::InvalidArgument(format!(
                "{} slots exceed max_position_embeddings {}",
                start + t,
                self.cfg.max_position_embeddings
            )));
        }
        if let Some(bad) = tokens
            .iter()
            .flatten()
            .find(|&&id| id as usize >= self.cfg.vocab_size)
        {
            return Err(Error::InvalidArgument(format!(
                "token id {bad} is outside the vocabulary ({})",
                self.cfg.vocab_size
            )));
        }
        let layers = self.cfg.num_hidden_layers;
        if cache.layers.is_empty() {
            cache.layers = vec![None; layers];
        } else if cache.layers.len() != layers {
            return Err(Error::InvalidArgument(format!(
                "the cache holds {} layers, this model has {layers}",
                cache.layers.len()
            )));
        }
        if start > 0 {
            for layer in &cache.layers {
                let rows = match layer {
                    Some((k, _)) => k.dim(0).map_err(candle_err)?,
                    None => {
                        return Err(Error::InvalidState(
                            "the cache has filled slots but a layer without keys".into(),
                        ))
                    }
                };
                if rows != b {
                    return Err(Error::InvalidArgument(format!(
                        "the cache holds {rows} rows, this step has {b}"
                    )));
                }
            }
        }
        let out = self
            .forward_inner(tokens, pads, start, cache)
            .map_err(candle_err)?;
        cache.slots = start + t;
        Ok(out)
    }

    fn forward_inner(
        &self,
        tokens: &[Vec<u32>],
        pads: &[usize],
        start: usize,
        cache: &mut KvCache,
    ) -> CResult<Tensor> {
        let (b, t) = (tokens.len(), tokens[0].len());
        let s = start + t;
        let h = self.cfg.hidden_size;
        let dev = &self.device;
        let ids: Vec<u32> = tokens.iter().flatten().copied().collect();
        let ids = Tensor::from_vec(ids, b * t, dev)?;
        let mut x = self
            .params
            .embed
            .index_select(&ids, 0)?
            .reshape((b, t, h))?;
        if self.cfg.family.traits().embed_scale {
            // As Gemma does: times sqrt(hidden_size), rounded to the compute type first.
            x = (x * f64::from((h as f64).sqrt() as f32))?;
        }

        // Rotary angles per row and slot: [b, 1, t, hd/2].
        let pos: Vec<f32> = (0..b)
            .flat_map(|r| (start..s).map(move |slot| slot.saturating_sub(pads[r]) as f32))
            .collect();
        let freqs = Tensor::from_vec(pos, (b, t, 1), dev)?.broadcast_mul(&self.inv_freq)?;
        let (mut cos, mut sin) = (freqs.cos()?.unsqueeze(1)?, freqs.sin()?.unsqueeze(1)?);
        if self.rope_scale != 1.0 {
            cos = (cos * f64::from(self.rope_scale))?;
            sin = (sin * f64::from(self.rope_scale))?;
        }

        // Additive masks [b, 1, t, s] for candle's generic attention, one per sliding window
        // the layers use: 0 where query slot i may see key slot j. The fused CPU attention
        // applies the same rule without one.
        let mut masks: Vec<(Option<usize>, Tensor)> = Vec::new();
        if !self.fused {
            for &window in &self.cfg.layer_windows {
                if masks.iter().any(|(w, _)| *w == window) {
                    continue;
                }
                let mut mask = Vec::with_capacity(b * t * s);
                for &pad in pads {
                    for i in start..s {
                        let keys = visible_keys(i, pad, window);
                        for j in 0..s {
                            mask.push(if keys.contains(&j) {
                                0f32
                            } else {
                                f32::NEG_INFINITY
                            });
                        }
                    }
                }
                masks.push((window, Tensor::from_vec(mask, (b, 1, t, s), dev)?));
            }
        }

        for (n, blk) in self.params.blocks.iter().enumerate() {
            let window = self.cfg.layer_windows[n];
            let step = Step {
                cos: &cos,
                sin: &sin,
                mask: masks.iter().find(|(w, _)| *w == window).map(|(_, m)| m),
                window,
                pads,
                start,
            };
            let y = self.attention(
                &rms_norm(&x, &blk.ln1, self.cfg.rms_norm_eps)?,
                blk,
                &step,
                &mut cache.layers[n],
            )?;
            x = (x + y)?;
            let y = mlp(
                &rms_norm(&x, &blk.ln2, self.cfg.rms_norm_eps)?,
                blk,
                self.cfg.hidden_act,
                self.fused,
            )?;
            x = (x + y)?;
        }
        let last = x.narrow(1, t - 1, 1)?;
        let last = rms_norm(&last, &self.params.norm, self.cfg.rms_norm_eps)?;
        let head = Linear {
            w: self.params.lm_head.clone(),
            b: None,
        };
        linear(&last, &head, self.fused)?.reshape((b, self.cfg.vocab_size))
    }

    /// Writes this step's keys and values (`[b, kv, t, hd]`) into the layer's cache buffers at
    /// slot `start` and returns views of the filled slots `0..start + t`. The buffers hold
    /// more slots than are filled and grow by doubling (up to `max_position_embeddings`), so a
    /// decode step copies only its own token's keys and values, not the whole cache.
    fn cache_append(
        &self,
        cache: &mut Option<(Tensor, Tensor)>,
        start: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> CResult<(Tensor, Tensor)> {
        let (b, nkv, t, hd) = k.dims4()?;
        let s = start + t;
        let room = |have: usize| {
            (s.next_multiple_of(64).max(2 * have)).min(self.cfg.max_position_embeddings.max(s))
        };
        // The cache is replaced only once this layer's write has succeeded: a failed step
        // leaves it as it was (slots past `KvCache::slots` are never read).
        let (kb, vb) = match cache.as_ref() {
            Some((kb, vb)) if kb.dim(2)? >= s => (kb.clone(), vb.clone()),
            Some((kb, vb)) => {
                let have = kb.dim(2)?;
                let more = Tensor::zeros((b, nkv, room(have) - have, hd), k.dtype(), k.device())?;
                (Tensor::cat(&[kb, &more], 2)?, Tensor::cat(&[vb, &more], 2)?)
            }
            None => {
                let z = || Tensor::zeros((b, nkv, room(0), hd), k.dtype(), k.device());
                (z()?, z()?)
            }
        };
        kb.slice_set(&k.contiguous()?, 2, start)?;
        vb.slice_set(&v.contiguous()?, 2, start)?;
        let views = (kb.narrow(2, 0, s)?, vb.narrow(2, 0, s)?);
        *cache = Some((kb, vb));
        Ok(views)
    }

    fn attention(
        &self,
        x: &Tensor,
        blk: &BlockParams,
        step: &Step<'_>,
        cache: &mut Option<(Tensor, Tensor)>,
    ) -> CResult<Tensor> {
        let Step {
            cos,
            sin,
            mask,
            pads,
            ..
        } = *step;
        let (b, t, _) = x.dims3()?;
        let hd = self.cfg.head_dim();
        let nh = self.cfg.num_attention_heads;
        let nkv = self.cfg.kv_heads();
        let h = nh * hd;
        let eps = self.cfg.rms_norm_eps;
        let heads = |w: &Linear, n: usize, norm: Option<&Tensor>| -> CResult<Tensor> {
            let y = linear(x, w, self.fused)?.reshape((b, t, n, hd))?;
            let y = match norm {
                Some(w) => rms_norm(&y, w, eps)?,
                None => y,
            };
            y.transpose(1, 2)?.contiguous()
        };
        let q = rope(&heads(&blk.q, nh, blk.q_norm.as_ref())?, cos, sin)?;
        let k = rope(&heads(&blk.k, nkv, blk.k_norm.as_ref())?, cos, sin)?;
        let v = heads(&blk.v, nkv, None)?;
        let (k, v) = self.cache_append(cache, step.start, &k, &v)?;
        let scale = 1.0 / (hd as f64).sqrt();
        let y = match mask {
            // No mask: the fused CPU op (see `attend`).
            None => {
                let op = CausalAttention {
                    pads: pads.to_vec(),
                    scale: scale as f32,
                    window: step.window,
                };
                q.apply_op3_no_bwd(&k, &v, &op)?.reshape((b, t, h))?
            }
            Some(mask) if t == 1 => {
                let (k, v) = (k.contiguous()?, v.contiguous()?);
                // One new token per row: broadcast products and sums instead of a matmul per
                // (row, head), so the cost of a decode step hardly grows with the batch. Each key
                // and value head serves `rep` query heads without being copied.
                let (rep, s) = (nh / nkv, k.dim(2)?);
                // Scores: one small matmul per (row, key/value head) over the head dimension,
                // which no padding touches.
                let qg = q.reshape((b * nkv, rep, hd))?;
                let kg = k.reshape((b * nkv, s, hd))?;
                let att = qg.matmul(&kg.t()?)?;
                let att = (att * scale)?.reshape((b, nh, 1, s))?.broadcast_add(mask)?;
                let p = softmax_last(&att)?.reshape((b, nkv, rep, s, 1))?;
                p.broadcast_mul(&v.unsqueeze(2)?)?
                    .sum(3)?
                    .reshape((b, 1, h))?
            }
            Some(mask) => {
                let (k, v) = (k.contiguous()?, v.contiguous()?);
                let k = repeat_kv(&k, nh / nkv)?;
                let v = repeat_kv(&v, nh / nkv)?;
                let att = (q.matmul(&k.t()?.contiguous()?)? * scale)?.broadcast_add(mask)?;
                let p = softmax_last(&att)?;
                p.matmul(&v)?.transpose(1, 2)?.reshape((b, t, h))?
            }
        };
        linear(&y, &blk.o, self.fused)
    }
}

/// What every block's attention shares in one forward call.
struct Step<'a> {
    /// Rotary cosines and sines, `[b, 1, t, hd/2]`.
    cos: &'a Tensor,
    sin: &'a Tensor,
    /// Additive mask, `[b, 1, t, s]` for candle's generic attention; `None` on the CPU, whose
    /// fused attention needs none (see `Llama::fused`).
    mask: Option<&'a Tensor>,
    /// This layer's sliding window (`None`: full causal attention).
    window: Option<usize>,
    /// Left padding per row.
    pads: &'a [usize],
    /// The cache slot of the first new token.
    start: usize,
}

/// `x @ w.T (+ bias)` over the last dimension of `x`, `w` being `[out, in]`; through the
/// batch-invariant CPU kernel of `linear` when `fused` (see `Llama::fused`).
fn linear(x: &Tensor, lin: &Linear, fused: bool) -> CResult<Tensor> {
    let w = &lin.w;
    let dims = x.dims().to_vec();
    let last = dims[dims.len() - 1];
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let x = x.reshape((rows, last))?;
    let y = if fused {
        x.contiguous()?.apply_op2_no_bwd(w, &CpuLinear)?
    } else {
        x.matmul(&w.t()?)?
    };
    let y = match &lin.b {
        Some(bias) => y.broadcast_add(bias)?,
        None => y,
    };
    let mut out = dims;
    let n = out.len();
    out[n - 1] = w.dim(0)?;
    y.reshape(out)
}

/// RMSNorm as transformers computes it: `w * x / sqrt(mean(x^2) + eps)`.
fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> CResult<Tensor> {
    let var = x.sqr()?.mean_keepdim(D::Minus1)?;
    x.broadcast_div(&(var + eps)?.sqrt()?)?.broadcast_mul(w)
}

/// Rotary embedding in the rotate-half layout of Hugging Face checkpoints. `x` is
/// `[b, heads, t, hd]`; `cos`/`sin` are `[b, 1, t, rot/2]`: the first `rot` dimensions of each
/// head rotate, the rest pass through (partial rotary, as Phi-3 does).
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> CResult<Tensor> {
    let hd = x.dim(D::Minus1)?;
    let half = cos.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let a = (x1.broadcast_mul(cos)? - x2.broadcast_mul(sin)?)?;
    let c = (x2.broadcast_mul(cos)? + x1.broadcast_mul(sin)?)?;
    if 2 * half == hd {
        Tensor::cat(&[&a, &c], D::Minus1)
    } else {
        // Contiguous parts make a contiguous result (candle concatenates a strided part along
        // the last dimension into a transposed layout, which the fused attention refuses).
        let rest = x.narrow(D::Minus1, 2 * half, hd - 2 * half)?.contiguous()?;
        Tensor::cat(&[&a, &c, &rest], D::Minus1)
    }
}

/// Softmax over the last dimension (keys); a masked (-inf) entry becomes an exact zero.
///
/// The denominator is summed in key order on every target: candle sums a contiguous last
/// dimension with SIMD lanes where the build enables them (AVX2, NEON), and lanes would shift
/// with a row's padding; a trailing unit dimension sends the sum down candle's sequential path,
/// so padded and unpadded rows add the same numbers in the same order.
fn softmax_last(x: &Tensor) -> CResult<Tensor> {
    let max = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    let sum = e
        .unsqueeze(D::Minus1)?
        .sum_keepdim(D::Minus2)?
        .squeeze(D::Minus1)?;
    e.broadcast_div(&sum)
}

/// `[b, kv, s, hd]` → `[b, kv * n, s, hd]`, each key/value head shared by `n` query heads.
fn repeat_kv(x: &Tensor, n: usize) -> CResult<Tensor> {
    if n == 1 {
        return Ok(x.clone());
    }
    let (b, kv, s, hd) = x.dims4()?;
    x.unsqueeze(2)?
        .broadcast_as((b, kv, n, s, hd))?
        .contiguous()?
        .reshape((b, kv * n, s, hd))
}

/// Gated MLP: `down(act(gate(x)) * up(x))` (SwiGLU with SiLU, GeGLU with GELU).
fn mlp(x: &Tensor, blk: &BlockParams, act: Activation, fused: bool) -> CResult<Tensor> {
    let g = linear(x, &blk.gate, fused)?;
    let g = match act {
        Activation::Silu => g.silu()?,
        Activation::Gelu => g.gelu_erf()?,
        Activation::GeluTanh => g.gelu()?,
    };
    let u = linear(x, &blk.up, fused)?;
    linear(&(g * u)?, &blk.down, fused)
}

/// Last-slot logits (`[batch, vocab]`, as [`Llama::forward`] returns them) to host rows in f32.
pub fn logits_rows(logits: &Tensor) -> Result<Vec<Vec<f32>>> {
    logits
        .to_dtype(CDType::F32)
        .and_then(|l| l.to_vec2::<f32>())
        .map_err(candle_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::test_support::cpu_model;
    use crate::infer::TinyModelSpec;

    /// candle's generic path (the one CUDA runs) and the fused CPU kernels compute the same
    /// model: on a padded batch, at the prompt and at decode steps, their logits agree to
    /// float rounding. Here on the CPU, by turning the kernels off.
    #[test]
    fn the_generic_path_agrees_with_the_fused_cpu_kernels() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = TinyModelSpec {
            layers: 2,
            hidden: 32,
            heads: 4,
            kv_heads: 2,
            seed: 9,
            ..Default::default()
        };
        let (_, fused) = cpu_model(tmp.path(), &spec);
        assert!(fused.fused);
        let generic = Llama {
            fused: false,
            ..fused.clone()
        };
        let prompts = [vec![3u32, 70, 71, 72], vec![9, 10]];
        let pads = [0usize, 2];
        let padded = vec![prompts[0].clone(), vec![0, 0, 9, 10]];
        let (mut cf, mut cg) = (KvCache::new(), KvCache::new());
        let mut a = fused.forward(&padded, &pads, &mut cf).unwrap();
        let mut b = generic.forward(&padded, &pads, &mut cg).unwrap();
        for step in 0..4 {
            let (ra, rb) = (logits_rows(&a).unwrap(), logits_rows(&b).unwrap());
            for (x, y) in ra.iter().flatten().zip(rb.iter().flatten()) {
                assert!((x - y).abs() < 1e-4, "step {step}: {x} vs {y}");
            }
            let next: Vec<Vec<u32>> = ra.iter().map(|r| vec![crate::infer::argmax(r)]).collect();
            a = fused.forward(&next, &pads, &mut cf).unwrap();
            b = generic.forward(&next, &pads, &mut cg).unwrap();
        }
    }
}
