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
}

/// One transformer block's parameters.
#[derive(Debug, Clone)]
pub struct BlockParams {
    pub(crate) ln1: Tensor,
    pub(crate) q: Tensor,
    pub(crate) k: Tensor,
    pub(crate) v: Tensor,
    pub(crate) o: Tensor,
    pub(crate) ln2: Tensor,
    pub(crate) gate: Tensor,
    pub(crate) up: Tensor,
    pub(crate) down: Tensor,
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
    /// Builds the parameters from `src`, checking every name, dtype and shape against `cfg`.
    pub fn build(
        cfg: &LlamaConfig,
        src: &dyn TensorSource,
        device: &Device,
    ) -> Result<LlamaParams> {
        let h = cfg.hidden_size;
        let hd = cfg.head_dim();
        let q_out = cfg.num_attention_heads * hd;
        let kv_out = cfg.kv_heads() * hd;
        let i = cfg.intermediate_size;
        let get = |name: &str, shape: &[usize]| tensor(src, name, shape, device);
        let embed = get("model.embed_tokens.weight", &[cfg.vocab_size, h])?;
        let mut blocks = Vec::with_capacity(cfg.num_hidden_layers);
        for n in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{n}.");
            let g = |rest: &str, shape: &[usize]| get(&format!("{p}{rest}"), shape);
            blocks.push(BlockParams {
                ln1: g("input_layernorm.weight", &[h])?,
                q: g("self_attn.q_proj.weight", &[q_out, h])?,
                k: g("self_attn.k_proj.weight", &[kv_out, h])?,
                v: g("self_attn.v_proj.weight", &[kv_out, h])?,
                o: g("self_attn.o_proj.weight", &[h, q_out])?,
                ln2: g("post_attention_layernorm.weight", &[h])?,
                gate: g("mlp.gate_proj.weight", &[i, h])?,
                up: g("mlp.up_proj.weight", &[i, h])?,
                down: g("mlp.down_proj.weight", &[h, i])?,
            });
        }
        let norm = get("model.norm.weight", &[h])?;
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
        Ok(LlamaParams {
            embed,
            blocks,
            norm,
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
