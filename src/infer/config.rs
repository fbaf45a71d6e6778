//! The model's `config.json`: the Hugging Face fields this layer reads, for the families it
//! implements, resolved the way transformers resolves them (family defaults, transformers 4's
//! top-level `rope_theta`/`rope_scaling` and transformers 5's `rope_parameters`). Whatever would
//! change the model's math and is not implemented is refused with an error naming it.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::rope::Rope;
use crate::error::{Error, Result};

/// A token id or a list of them, as `eos_token_id` may be either in Hugging Face configs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    /// One id.
    One(u32),
    /// Several ids.
    Many(Vec<u32>),
}

impl TokenIds {
    /// The ids as a list.
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(t) => vec![*t],
            TokenIds::Many(v) => v.clone(),
        }
    }
}

/// The model families this layer implements: variations of one decoder (see [`FamilyTraits`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Family {
    /// `LlamaForCausalLM` (`model_type` `llama`).
    Llama,
    /// `MistralForCausalLM` (`mistral`).
    Mistral,
    /// `Qwen2ForCausalLM` (`qwen2`).
    Qwen2,
    /// `Qwen3ForCausalLM` (`qwen3`).
    Qwen3,
    /// `GemmaForCausalLM` (`gemma`).
    Gemma,
    /// `Phi3ForCausalLM` (`phi3`).
    Phi3,
}

/// What differs between the families: the table the one model definition reads.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FamilyTraits {
    /// The `architectures` entry.
    pub architecture: &'static str,
    /// The `model_type`.
    pub model_type: &'static str,
    /// q/k/v projections always carry a bias (Qwen2), whatever `attention_bias` says.
    pub qkv_bias_always: bool,
    /// `attention_bias` is read (q/k/v/o biases when true).
    pub reads_attention_bias: bool,
    /// `mlp_bias` is read (gate/up/down biases when true).
    pub reads_mlp_bias: bool,
    /// RMSNorm over each query/key head before the rotary embedding (`q_norm`, `k_norm`).
    pub qk_norm: bool,
    /// Embeddings multiplied by `sqrt(hidden_size)`.
    pub embed_scale: bool,
    /// RMSNorm multiplies by `1 + w` instead of `w`.
    pub norm_plus_one: bool,
    /// q/k/v in one `qkv_proj`, gate/up in one `gate_up_proj`.
    pub fused_projections: bool,
    /// How the family decides which layers use a sliding window.
    pub window: WindowRule,
    /// `hidden_act` when the config has none.
    pub default_act: Activation,
    /// `head_dim` when the config has none (`None`: hidden / heads).
    pub default_head_dim: Option<usize>,
    /// `tie_word_embeddings` when the config has none.
    pub default_tie: bool,
    /// `rms_norm_eps` when the config has none.
    pub default_eps: f64,
    /// `max_position_embeddings` when the config has none.
    pub default_max_pos: usize,
}

/// How a family reads `sliding_window`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowRule {
    /// No sliding window (a non-null `sliding_window` is refused).
    Never,
    /// Every layer uses `sliding_window` when it is set; `default` when the field is absent.
    AllLayers {
        /// The window when the config has no `sliding_window` field.
        default: Option<usize>,
    },
    /// Qwen2/Qwen3: only with `use_sliding_window`, for the layers `layer_types` names
    /// `sliding_attention` (by default those from `max_window_layers` on).
    UseSlidingWindow,
}

impl Family {
    /// Every family, in the order the errors list them.
    pub const ALL: [Family; 6] = [
        Family::Llama,
        Family::Mistral,
        Family::Qwen2,
        Family::Qwen3,
        Family::Gemma,
        Family::Phi3,
    ];

    /// The table row of this family.
    pub fn traits(self) -> FamilyTraits {
        let base = FamilyTraits {
            architecture: "LlamaForCausalLM",
            model_type: "llama",
            qkv_bias_always: false,
            reads_attention_bias: true,
            reads_mlp_bias: false,
            qk_norm: false,
            embed_scale: false,
            norm_plus_one: false,
            fused_projections: false,
            window: WindowRule::Never,
            default_act: Activation::Silu,
            default_head_dim: None,
            default_tie: false,
            default_eps: 1e-6,
            default_max_pos: 2048,
        };
        match self {
            Family::Llama => FamilyTraits {
                reads_mlp_bias: true,
                ..base
            },
            Family::Mistral => FamilyTraits {
                architecture: "MistralForCausalLM",
                model_type: "mistral",
                reads_attention_bias: false,
                window: WindowRule::AllLayers {
                    default: Some(4096),
                },
                default_max_pos: 4096 * 32,
                ..base
            },
            Family::Qwen2 => FamilyTraits {
                architecture: "Qwen2ForCausalLM",
                model_type: "qwen2",
                qkv_bias_always: true,
                reads_attention_bias: false,
                window: WindowRule::UseSlidingWindow,
                default_max_pos: 32768,
                ..base
            },
            Family::Qwen3 => FamilyTraits {
                architecture: "Qwen3ForCausalLM",
                model_type: "qwen3",
                qk_norm: true,
                window: WindowRule::UseSlidingWindow,
                default_head_dim: Some(128),
                default_max_pos: 32768,
                ..base
            },
            Family::Gemma => FamilyTraits {
                architecture: "GemmaForCausalLM",
                model_type: "gemma",
                embed_scale: true,
                norm_plus_one: true,
                default_act: Activation::GeluTanh,
                default_head_dim: Some(256),
                default_tie: true,
                default_max_pos: 8192,
                ..base
            },
            Family::Phi3 => FamilyTraits {
                architecture: "Phi3ForCausalLM",
                model_type: "phi3",
                reads_attention_bias: false,
                fused_projections: true,
                window: WindowRule::AllLayers { default: None },
                default_eps: 1e-5,
                default_max_pos: 4096,
                ..base
            },
        }
    }

    fn supported() -> String {
        Family::ALL
            .iter()
            .map(|f| format!("{} ({})", f.traits().architecture, f.traits().model_type))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The MLP's activation (`hidden_act`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Activation {
    /// `silu` (SwiGLU).
    Silu,
    /// `gelu`: the exact, erf-based GELU.
    Gelu,
    /// `gelu_pytorch_tanh`: the tanh approximation.
    GeluTanh,
}

impl Activation {
    fn parse(s: &str) -> std::result::Result<Activation, String> {
        match s {
            "silu" | "swish" => Ok(Activation::Silu),
            "gelu" => Ok(Activation::Gelu),
            "gelu_pytorch_tanh" => Ok(Activation::GeluTanh),
            other => Err(format!(
                "`hidden_act` {other:?} is not implemented; supported: silu, gelu, \
                 gelu_pytorch_tanh"
            )),
        }
    }
}

/// A model's config, resolved: the family, its sizes and every choice the forward pass makes.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LlamaConfig {
    /// The model family (from `architectures` / `model_type`).
    pub family: Family,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP's hidden layer.
    pub intermediate_size: usize,
    /// Transformer blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); absent means as many as query heads.
    pub num_key_value_heads: Option<usize>,
    /// Width of one attention head (`head_dim`, or hidden / heads).
    pub head_dim: usize,
    /// Epsilon of RMSNorm.
    pub rms_norm_eps: f64,
    /// The rotary embedding.
    pub rope: Rope,
    /// The MLP's activation.
    pub hidden_act: Activation,
    /// q/k/v projections carry biases.
    pub qkv_bias: bool,
    /// The output projection carries a bias.
    pub o_bias: bool,
    /// gate/up/down projections carry biases (`mlp_bias`).
    pub mlp_bias: bool,
    /// Per layer, the sliding window its attention uses (`None`: full causal attention).
    pub layer_windows: Vec<Option<usize>>,
    /// Tokens in the vocabulary (rows of the embedding).
    pub vocab_size: usize,
    /// The longest sequence (prompt plus generated tokens) a row may reach.
    pub max_position_embeddings: usize,
    /// The output head reuses the embedding matrix (no `lm_head.weight`).
    pub tie_word_embeddings: bool,
    /// Beginning-of-sequence token. Prompts get it only when the tokenizer adds it.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token(s): generation of a row stops there.
    pub eos_token_id: Option<TokenIds>,
}

/// A field's value; `None` when absent or null.
fn get<'a>(m: &'a Map<String, Value>, k: &str) -> Option<&'a Value> {
    m.get(k).filter(|v| !v.is_null())
}

fn usize_of(m: &Map<String, Value>, k: &str) -> std::result::Result<Option<usize>, String> {
    get(m, k)
        .map(|v| {
            v.as_u64()
                .map(|n| n as usize)
                .ok_or_else(|| format!("`{k}` must be a non-negative integer, not {v}"))
        })
        .transpose()
}

fn need(m: &Map<String, Value>, k: &str) -> std::result::Result<usize, String> {
    usize_of(m, k)?.ok_or_else(|| format!("`{k}` is missing"))
}

fn bool_of(m: &Map<String, Value>, k: &str) -> std::result::Result<Option<bool>, String> {
    get(m, k)
        .map(|v| {
            v.as_bool()
                .ok_or_else(|| format!("`{k}` must be true or false, not {v}"))
        })
        .transpose()
}

fn ids_of(m: &Map<String, Value>, k: &str) -> std::result::Result<Option<TokenIds>, String> {
    get(m, k)
        .map(|v| {
            serde_json::from_value(v.clone())
                .map_err(|_| format!("`{k}` must be a token id or a list of them, not {v}"))
        })
        .transpose()
}

impl LlamaConfig {
    /// Reads and checks `config.json` at `path`.
    pub fn from_file(path: &Path) -> Result<LlamaConfig> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text).map_err(|problem| Error::Malformed {
            path: path.to_path_buf(),
            problem,
        })
    }

    /// Parses a `config.json`, resolving defaults as transformers does for the family and
    /// refusing what the model here does not implement. The error names the field.
    pub fn from_json(text: &str) -> std::result::Result<LlamaConfig, String> {
        let m: Map<String, Value> =
            serde_json::from_str(text).map_err(|e| format!("not a config.json object: {e}"))?;
        let family = family_of(&m)?;
        let t = family.traits();
        if let Some(q) = get(&m, "quantization_config") {
            let method = q
                .get("quant_method")
                .and_then(Value::as_str)
                .unwrap_or("unnamed");
            return Err(format!(
                "`quantization_config` ({method}) is not implemented: only unquantized f32, f16 \
                 and bf16 checkpoints are read"
            ));
        }
        if bool_of(&m, "use_bidirectional_attention")? == Some(true) {
            return Err("`use_bidirectional_attention` is not implemented".into());
        }
        let hidden_size = need(&m, "hidden_size")?;
        let num_attention_heads = need(&m, "num_attention_heads")?;
        let num_hidden_layers = need(&m, "num_hidden_layers")?;
        let head_dim = match usize_of(&m, "head_dim")? {
            Some(d) => d,
            None => t
                .default_head_dim
                .unwrap_or(hidden_size / num_attention_heads.max(1)),
        };
        let act_field = if get(&m, "hidden_act").is_some() {
            "hidden_act"
        } else {
            "hidden_activation"
        };
        let mut hidden_act = match get(&m, act_field) {
            None => t.default_act,
            Some(Value::String(s)) => Activation::parse(s)?,
            Some(v) => return Err(format!("`{act_field}` must be a string, not {v}")),
        };
        if family == Family::Gemma && hidden_act == Activation::Gelu {
            // As transformers' GemmaConfig does: "gelu" in Gemma configs means the tanh form.
            hidden_act = Activation::GeluTanh;
        }
        let max_position_embeddings =
            usize_of(&m, "max_position_embeddings")?.unwrap_or(t.default_max_pos);
        let rope_params = match get(&m, "rope_parameters").or(get(&m, "rope_scaling")) {
            None => None,
            Some(Value::Object(o)) => Some(o),
            Some(v) => {
                return Err(format!(
                    "`rope_parameters` must be an object (one rope for every layer), not {v}"
                ))
            }
        };
        let rope = Rope::parse(rope_params, &m, max_position_embeddings, 10_000.0)?;
        if rope.partial_rotary_factor != 1.0 && family != Family::Phi3 {
            return Err(format!(
                "`partial_rotary_factor` {} is only implemented for Phi3",
                rope.partial_rotary_factor
            ));
        }
        let attention_bias = bool_of(&m, "attention_bias")?.unwrap_or(false);
        if attention_bias && !t.reads_attention_bias {
            return Err(format!(
                "`attention_bias` true is not implemented for {}",
                t.architecture
            ));
        }
        let mlp_bias = bool_of(&m, "mlp_bias")?.unwrap_or(false);
        if mlp_bias && !t.reads_mlp_bias {
            return Err(format!(
                "`mlp_bias` true is not implemented for {}",
                t.architecture
            ));
        }
        let window = usize_of(&m, "sliding_window")?;
        let layer_windows = match t.window {
            WindowRule::Never => {
                if let Some(w) = window {
                    return Err(format!(
                        "`sliding_window` {w} is not implemented for {}",
                        t.architecture
                    ));
                }
                vec![None; num_hidden_layers]
            }
            WindowRule::AllLayers { default } => {
                let w = if m.contains_key("sliding_window") {
                    window
                } else {
                    default
                };
                if get(&m, "layer_types").is_some() {
                    return Err(format!(
                        "`layer_types` is not implemented for {}",
                        t.architecture
                    ));
                }
                vec![w; num_hidden_layers]
            }
            WindowRule::UseSlidingWindow => {
                let used = bool_of(&m, "use_sliding_window")?.unwrap_or(false);
                let w = if used { window.or(Some(4096)) } else { None };
                let from = usize_of(&m, "max_window_layers")?.unwrap_or(28);
                let types: Vec<String> = match get(&m, "layer_types") {
                    Some(v) => serde_json::from_value(v.clone())
                        .map_err(|_| format!("`layer_types` must be a list of strings, not {v}"))?,
                    None => (0..num_hidden_layers)
                        .map(|i| {
                            if w.is_some() && i >= from {
                                "sliding_attention".to_string()
                            } else {
                                "full_attention".to_string()
                            }
                        })
                        .collect(),
                };
                if types.len() != num_hidden_layers {
                    return Err(format!(
                        "`layer_types` names {} layers, the model has {num_hidden_layers}",
                        types.len()
                    ));
                }
                types
                    .iter()
                    .map(|ty| match ty.as_str() {
                        "full_attention" => Ok(None),
                        "sliding_attention" => Ok(w),
                        other => Err(format!(
                            "layer type {other:?} is not implemented (full_attention, \
                             sliding_attention)"
                        )),
                    })
                    .collect::<std::result::Result<_, _>>()?
            }
        };
        let c = LlamaConfig {
            family,
            hidden_size,
            intermediate_size: need(&m, "intermediate_size")?,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads: usize_of(&m, "num_key_value_heads")?,
            head_dim,
            rms_norm_eps: match get(&m, "rms_norm_eps") {
                None => t.default_eps,
                Some(v) => v
                    .as_f64()
                    .ok_or_else(|| format!("`rms_norm_eps` must be a number, not {v}"))?,
            },
            rope,
            hidden_act,
            qkv_bias: t.qkv_bias_always || attention_bias,
            o_bias: attention_bias,
            mlp_bias,
            layer_windows,
            vocab_size: need(&m, "vocab_size")?,
            max_position_embeddings,
            tie_word_embeddings: bool_of(&m, "tie_word_embeddings")?.unwrap_or(t.default_tie),
            bos_token_id: usize_of(&m, "bos_token_id")?.map(|b| b as u32),
            eos_token_id: ids_of(&m, "eos_token_id")?,
        };
        c.validate()?;
        Ok(c)
    }

    /// `config.json` as transformers 4 writes it for this config (the fields of the tiny
    /// models [`super::new_model`] writes: default rope, no biases, no window).
    pub(crate) fn to_json(&self) -> Value {
        let t = self.family.traits();
        serde_json::json!({
            "architectures": [t.architecture],
            "model_type": t.model_type,
            "torch_dtype": "float32",
            "hidden_act": match self.hidden_act {
                Activation::Silu => "silu",
                Activation::Gelu => "gelu",
                Activation::GeluTanh => "gelu_pytorch_tanh",
            },
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.kv_heads(),
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope.theta,
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
        })
    }

    /// Key/value heads (defaults to the query heads).
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// End-of-sequence ids (empty when the config names none).
    pub fn eos_ids(&self) -> Vec<u32> {
        self.eos_token_id
            .as_ref()
            .map(TokenIds::to_vec)
            .unwrap_or_default()
    }

    /// Checks that the sizes fit together; says what does not.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let positive = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.kv_heads()),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (k, v) in positive {
            if v == 0 {
                return Err(format!("`{k}` must be positive"));
            }
        }
        if !self.num_attention_heads.is_multiple_of(self.kv_heads()) {
            return Err(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads,
                self.kv_heads()
            ));
        }
        let rot = self.rope.rotary_dim(self.head_dim);
        if rot == 0 || !rot.is_multiple_of(2) {
            return Err(format!(
                "the rotary width {rot} (head_dim {} times partial_rotary_factor {}) must be \
                 even and positive",
                self.head_dim, self.rope.partial_rotary_factor
            ));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return Err("`rms_norm_eps` must be a positive number".into());
        }
        if let Some(w) = self.layer_windows.iter().flatten().find(|&&w| w == 0) {
            return Err(format!("`sliding_window` must be positive, not {w}"));
        }
        if self.layer_windows.len() != self.num_hidden_layers {
            return Err(format!(
                "{} layer windows for {} layers",
                self.layer_windows.len(),
                self.num_hidden_layers
            ));
        }
        for t in self.bos_token_id.iter().chain(self.eos_ids().iter()) {
            if *t as usize >= self.vocab_size {
                return Err(format!(
                    "token id {t} is outside the vocabulary ({})",
                    self.vocab_size
                ));
            }
        }
        Ok(())
    }
}

/// The family named by `architectures` (its first entry) and `model_type`.
fn family_of(m: &Map<String, Value>) -> std::result::Result<Family, String> {
    let arch = match get(m, "architectures") {
        None => None,
        Some(Value::Array(a)) if a.len() == 1 => Some(
            a[0].as_str()
                .ok_or_else(|| format!("`architectures` must list names, not {}", a[0]))?,
        ),
        Some(v) => {
            return Err(format!(
                "`architectures` must name one architecture, not {v}; supported: {}",
                Family::supported()
            ))
        }
    };
    let model_type = get(m, "model_type").and_then(Value::as_str);
    let by_arch = arch.map(|a| Family::ALL.iter().find(|f| f.traits().architecture == a));
    let by_type = model_type.map(|ty| Family::ALL.iter().find(|f| f.traits().model_type == ty));
    match (by_arch, by_type) {
        (Some(None), _) => Err(format!(
            "architecture {:?} is not implemented; supported: {}",
            arch.unwrap_or_default(),
            Family::supported()
        )),
        (_, Some(None)) => Err(format!(
            "model_type {:?} is not implemented; supported: {}",
            model_type.unwrap_or_default(),
            Family::supported()
        )),
        (Some(Some(a)), Some(Some(b))) if a != b => Err(format!(
            "`architectures` says {} but `model_type` says {}",
            a.traits().architecture,
            b.traits().model_type
        )),
        (Some(Some(f)), _) | (None, Some(Some(f))) => Ok(*f),
        (None, None) => Err(format!(
            "the config names no `architectures` nor `model_type`; supported: {}",
            Family::supported()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#""hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,
        "num_attention_heads":4,"num_key_value_heads":2,"vocab_size":300"#;

    fn cfg(extra: &str) -> std::result::Result<LlamaConfig, String> {
        LlamaConfig::from_json(&format!("{{{BASE}{extra}}}"))
    }

    #[test]
    fn hf_config_with_extra_fields_and_eos_list_parses() {
        let c = cfg(r#","architectures":["LlamaForCausalLM"],"eos_token_id":[1,2],"torch_dtype":"bfloat16""#)
            .unwrap();
        assert_eq!(c.eos_ids(), vec![1, 2]);
        assert_eq!(c.head_dim(), 16);
        assert_eq!(c.rope.theta, 10_000.0);
        assert_eq!(c.family, Family::Llama);
    }

    #[test]
    fn head_dim_comes_from_the_config() {
        let c = cfg(r#","model_type":"mistral","head_dim":32"#).unwrap();
        assert_eq!(c.head_dim(), 32);
        assert_eq!(c.layer_windows, vec![Some(4096); 2]);
    }

    #[test]
    fn heads_that_do_not_divide_are_rejected() {
        let e = LlamaConfig::from_json(
            r#"{"model_type":"llama","hidden_size":64,"intermediate_size":128,
               "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":3,
               "vocab_size":300}"#,
        );
        assert!(e.unwrap_err().contains("num_key_value_heads"));
    }

    #[test]
    fn each_refusal_names_what_it_refuses() {
        let cases = [
            (r#","architectures":["GPT2LMHeadModel"]"#, "GPT2LMHeadModel"),
            (r#","model_type":"falcon""#, "falcon"),
            (r#","model_type":"llama","hidden_act":"relu""#, "relu"),
            (
                r#","model_type":"llama","quantization_config":{"quant_method":"gptq"}"#,
                "quantization_config",
            ),
            (
                r#","model_type":"llama","rope_scaling":{"type":"longrope"}"#,
                "longrope",
            ),
            (
                r#","model_type":"llama","sliding_window":8"#,
                "sliding_window",
            ),
            (
                r#","model_type":"mistral","attention_bias":true"#,
                "attention_bias",
            ),
            (
                r#","model_type":"llama","partial_rotary_factor":0.5"#,
                "partial_rotary_factor",
            ),
            (r#""#, "architectures"),
        ];
        for (extra, word) in cases {
            let e = cfg(extra).unwrap_err();
            assert!(e.contains(word), "{extra}: {e}");
        }
    }

    #[test]
    fn qwen2_windows_follow_max_window_layers() {
        let c = cfg(
            r#","model_type":"qwen2","use_sliding_window":true,"sliding_window":8,
               "max_window_layers":1"#,
        )
        .unwrap();
        assert_eq!(c.layer_windows, vec![None, Some(8)]);
        assert!(c.qkv_bias && !c.o_bias);
        let c = cfg(r#","model_type":"qwen2","sliding_window":8"#).unwrap();
        assert_eq!(c.layer_windows, vec![None, None]);
    }

    #[test]
    fn gemma_defaults_are_the_familys() {
        let c = cfg(r#","model_type":"gemma","hidden_act":"gelu""#).unwrap();
        assert_eq!(c.hidden_act, Activation::GeluTanh);
        assert_eq!(c.head_dim(), 256);
        assert!(c.tie_word_embeddings);
    }
}
