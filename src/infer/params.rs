//! The model's parameters as candle tensors, built from an acquired weight set.
//!
//! On the CPU the tensors are built from the set's host copy in the pinned arena
//! ([`WeightGuard::host_tensor`]) when the set is acquired, converted to f32 (the compute type
//! here). With candle's CUDA device the same bytes are uploaded by candle into tensors it owns:
//! a copy, not tensors over the set's own device addresses (see the module docs of
//! [`crate::infer`] for why).

use candle_core::{DType as CDType, Device, Tensor};

use super::candle_err;
use super::config::LlamaConfig;
use crate::error::{Error, Result};
use crate::swap::WeightGuard;
use crate::weights::{DType, TensorInfo};

/// Where tensor bytes come from: a name gives (info, bytes).
pub trait TensorSource {
    /// The tensor's description and its bytes, `None` when the set has no such tensor.
    fn tensor(&self, name: &str) -> Option<(&TensorInfo, &[u8])>;
    /// A name for messages (the weight set's name).
    fn label(&self) -> &str;
    /// Every tensor name the source holds (to refuse the ones the model does not read).
    fn names(&self) -> Vec<String>;
}

impl TensorSource for WeightGuard {
    fn tensor(&self, name: &str) -> Option<(&TensorInfo, &[u8])> {
        let info = self.tensors().iter().find(|t| t.name == name)?;
        let bytes = self.host_tensor(name).ok()?;
        Some((info, bytes))
    }
    fn label(&self) -> &str {
        self.name()
    }
    fn names(&self) -> Vec<String> {
        self.tensors().iter().map(|t| t.name.clone()).collect()
    }
}

/// A linear layer: weight `[out, in]` and an optional bias `[out]`.
#[derive(Debug, Clone)]
pub struct Linear {
    pub(crate) w: Tensor,
    pub(crate) b: Option<Tensor>,
}

/// One transformer block's parameters. RMSNorm weights are stored as the factor the norm
/// multiplies by (`1 + w` for Gemma's checkpoints).
#[derive(Debug, Clone)]
pub struct BlockParams {
    pub(crate) ln1: Tensor,
    pub(crate) q: Linear,
    pub(crate) k: Linear,
    pub(crate) v: Linear,
    pub(crate) o: Linear,
    /// Per-head RMSNorm of queries and keys (Qwen3).
    pub(crate) q_norm: Option<Tensor>,
    pub(crate) k_norm: Option<Tensor>,
    pub(crate) ln2: Tensor,
    pub(crate) gate: Linear,
    pub(crate) up: Linear,
    pub(crate) down: Linear,
}

/// Every parameter of a Llama model, on one candle device, in f32.
#[derive(Debug, Clone)]
pub struct LlamaParams {
    pub(crate) embed: Tensor,
    pub(crate) blocks: Vec<BlockParams>,
    pub(crate) norm: Tensor,
    pub(crate) lm_head: Tensor,
}

impl LlamaParams {
    /// Bytes of the weights a decode step reads whole: every block's projections and the
    /// output head (the embedding is read a row per token).
    pub fn step_weight_bytes(&self) -> usize {
        let bytes = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        let blocks: usize = self
            .blocks
            .iter()
            .flat_map(|b| [&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down])
            .map(|l| bytes(&l.w))
            .sum();
        blocks + bytes(&self.lm_head)
    }

    /// Builds the parameters from `src`, checking every name, dtype and shape against `cfg`,
    /// and refusing a checkpoint that holds a tensor the model does not read (a feature this
    /// model does not implement).
    pub fn build(
        cfg: &LlamaConfig,
        src: &dyn TensorSource,
        device: &Device,
    ) -> Result<LlamaParams> {
        let t = cfg.family.traits();
        let h = cfg.hidden_size;
        let hd = cfg.head_dim();
        let q_out = cfg.num_attention_heads * hd;
        let kv_out = cfg.kv_heads() * hd;
        let i = cfg.intermediate_size;
        let read = std::cell::RefCell::new(std::collections::BTreeSet::<String>::new());
        let get = |name: &str, shape: &[usize]| {
            read.borrow_mut().insert(name.to_string());
            tensor(src, name, shape, device)
        };
        let norm = |name: &str| -> Result<Tensor> {
            let w = get(name, &[h])?;
            if t.norm_plus_one {
                (w + 1.0).map_err(candle_err)
            } else {
                Ok(w)
            }
        };
        let lin = |name: &str, out: usize, inp: usize, bias: bool| -> Result<Linear> {
            Ok(Linear {
                w: get(&format!("{name}.weight"), &[out, inp])?,
                b: if bias {
                    Some(get(&format!("{name}.bias"), &[out])?)
                } else {
                    None
                },
            })
        };
        let split = |w: &Tensor, at: &[usize]| -> Result<Vec<Linear>> {
            let mut start = 0;
            at.iter()
                .map(|&n| {
                    let part = w.narrow(0, start, n).and_then(|p| p.contiguous());
                    start += n;
                    Ok(Linear {
                        w: part.map_err(candle_err)?,
                        b: None,
                    })
                })
                .collect()
        };
        let embed = get("model.embed_tokens.weight", &[cfg.vocab_size, h])?;
        let mut blocks = Vec::with_capacity(cfg.num_hidden_layers);
        for n in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{n}.");
            let (q, k, v, gate, up) = if t.fused_projections {
                let qkv = get(
                    &format!("{p}self_attn.qkv_proj.weight"),
                    &[q_out + 2 * kv_out, h],
                )?;
                let mut qkv = split(&qkv, &[q_out, kv_out, kv_out])?.into_iter();
                let gu = get(&format!("{p}mlp.gate_up_proj.weight"), &[2 * i, h])?;
                let mut gu = split(&gu, &[i, i])?.into_iter();
                let mut next = || qkv.next().or_else(|| gu.next()).expect("five parts");
                (next(), next(), next(), next(), next())
            } else {
                let a = format!("{p}self_attn.");
                let m = format!("{p}mlp.");
                (
                    lin(&format!("{a}q_proj"), q_out, h, cfg.qkv_bias)?,
                    lin(&format!("{a}k_proj"), kv_out, h, cfg.qkv_bias)?,
                    lin(&format!("{a}v_proj"), kv_out, h, cfg.qkv_bias)?,
                    lin(&format!("{m}gate_proj"), i, h, cfg.mlp_bias)?,
                    lin(&format!("{m}up_proj"), i, h, cfg.mlp_bias)?,
                )
            };
            let (q_norm, k_norm) = if t.qk_norm {
                (
                    Some(get(&format!("{p}self_attn.q_norm.weight"), &[hd])?),
                    Some(get(&format!("{p}self_attn.k_norm.weight"), &[hd])?),
                )
            } else {
                (None, None)
            };
            blocks.push(BlockParams {
                ln1: norm(&format!("{p}input_layernorm.weight"))?,
                q,
                k,
                v,
                o: lin(&format!("{p}self_attn.o_proj"), h, q_out, cfg.o_bias)?,
                q_norm,
                k_norm,
                ln2: norm(&format!("{p}post_attention_layernorm.weight"))?,
                gate,
                up,
                down: lin(&format!("{p}mlp.down_proj"), h, i, cfg.mlp_bias)?,
            });
        }
        let final_norm = norm("model.norm.weight")?;
        let lm_head = if src.tensor("lm_head.weight").is_some() {
            get("lm_head.weight", &[cfg.vocab_size, h])?
        } else if cfg.tie_word_embeddings {
            embed.clone()
        } else {
            return Err(Error::NotFound {
                kind: "tensor",
                name: format!(
                    "{}/lm_head.weight (and tie_word_embeddings is false)",
                    src.label()
                ),
            });
        };
        let read = read.into_inner();
        let mut unread: Vec<String> = src
            .names()
            .into_iter()
            .filter(|n| !read.contains(n))
            .collect();
        if !unread.is_empty() {
            unread.sort();
            let more = unread.len();
            unread.truncate(5);
            return Err(Error::Unsupported(format!(
                "{} holds {more} tensor(s) a {} model does not read, so it would compute \
                 something else: {}{}",
                src.label(),
                t.architecture,
                unread.join(", "),
                if more > 5 { ", ..." } else { "" }
            )));
        }
        Ok(LlamaParams {
            embed,
            blocks,
            norm: final_norm,
            lm_head,
        })
    }
}

/// One tensor as f32 on `device`, after checking its shape and dtype.
fn tensor(src: &dyn TensorSource, name: &str, shape: &[usize], device: &Device) -> Result<Tensor> {
    let (info, bytes) = src.tensor(name).ok_or_else(|| Error::NotFound {
        kind: "tensor",
        name: format!("{}/{name}", src.label()),
    })?;
    let got: Vec<u64> = info.shape.clone();
    let want: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    if got != want {
        return Err(Error::InvalidArgument(format!(
            "tensor `{}/{name}` has shape {got:?}, the config asks for {want:?}",
            src.label()
        )));
    }
    let dtype = match info.dtype {
        DType::F32 => CDType::F32,
        DType::F16 => CDType::F16,
        DType::BF16 => CDType::BF16,
        other => {
            return Err(Error::Unsupported(format!(
                "tensor `{}/{name}` is {other}; the model reads F32, F16 or BF16",
                src.label()
            )))
        }
    };
    let t = Tensor::from_raw_buffer(bytes, dtype, shape, device).map_err(candle_err)?;
    t.to_dtype(CDType::F32).map_err(candle_err)
}
