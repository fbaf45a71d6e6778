//! Model directories as Hugging Face writes them, and tiny random ones for tests and the demo.

use std::path::{Path, PathBuf};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::chat::{render_chat, ChatMessage, TokenizerConfig};
use super::config::{Activation, Family, LlamaConfig, TokenIds};
use super::rope::{Rope, RopeKind};
use super::tokenizer::{byte_level_tokenizer_json, TextTokenizer};
use crate::error::{Error, Result};
use crate::load::{self, LoadOptions};
use crate::swap::SwapEngine;
use crate::weights::DType;

/// A model directory: `config.json`, `tokenizer.json`, and `model.safetensors` or shards with
/// `model.safetensors.index.json`. The weights are not read here: register the directory with
/// a [`SwapEngine`] ([`ModelDir::register`]) and acquire it.
#[derive(Debug, Clone)]
pub struct ModelDir {
    /// The directory.
    pub path: PathBuf,
    /// Its `config.json`.
    pub config: LlamaConfig,
    /// Its `tokenizer.json`.
    pub tokenizer: TextTokenizer,
    /// Its `tokenizer_config.json` (and `chat_template.jinja`); empty when it has none.
    pub tokenizer_config: TokenizerConfig,
    /// End-of-sequence ids as transformers' `generate` reads them: `generation_config.json`'s
    /// `eos_token_id` when the directory has that file, else `config.json`'s.
    pub eos_ids: Vec<u32>,
}

impl ModelDir {
    /// Reads `config.json` and `tokenizer.json` in `path`.
    pub fn open(path: &Path) -> Result<ModelDir> {
        if !path.is_dir() {
            return Err(Error::InvalidArgument(format!(
                "{} is not a model directory",
                path.display()
            )));
        }
        let config = LlamaConfig::from_file(&path.join("config.json"))?;
        let tokenizer_config = TokenizerConfig::from_dir(path)?;
        let tokenizer = TextTokenizer::from_file(&path.join("tokenizer.json"))?;
        let gen_path = path.join("generation_config.json");
        let eos_ids = match std::fs::read_to_string(&gen_path) {
            Ok(text) => {
                #[derive(serde::Deserialize)]
                struct GenerationConfig {
                    eos_token_id: Option<TokenIds>,
                }
                let g: GenerationConfig =
                    serde_json::from_str(&text).map_err(|e| Error::Malformed {
                        path: gen_path.clone(),
                        problem: format!("not a generation_config.json: {e}"),
                    })?;
                g.eos_token_id.map(|t| t.to_vec()).unwrap_or_default()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => config.eos_ids(),
            Err(source) => {
                return Err(Error::Io {
                    path: gen_path,
                    source,
                })
            }
        };
        if let Some(bad) = eos_ids.iter().find(|&&t| t as usize >= config.vocab_size) {
            return Err(Error::Malformed {
                path: gen_path,
                problem: format!(
                    "eos_token_id {bad} is outside the vocabulary ({})",
                    config.vocab_size
                ),
            });
        }
        Ok(ModelDir {
            path: path.to_path_buf(),
            config,
            tokenizer,
            tokenizer_config,
            eos_ids,
        })
    }

    /// Registers the directory's weights with `engine` as set `name` (loaded lazily).
    pub fn register(&self, engine: &SwapEngine, name: &str) -> Result<()> {
        engine.register_path(name, &self.path, LoadOptions::default())
    }

    /// Prompt ids as transformers' tokenizer gives them: `tokenizer.json`'s post-processor
    /// decides the special tokens ([`TextTokenizer::encode_prompt`]); the config's
    /// `bos_token_id` adds nothing.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let ids = self.tokenizer.encode_prompt(text)?;
        self.check_ids(ids)
    }

    /// Prompt ids of `text` as the user message of a chat, as transformers'
    /// `apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)`
    /// gives them: the model's chat template rendered, then tokenized without added specials.
    pub fn encode_chat(&self, text: &str) -> Result<Vec<u32>> {
        let template = self
            .tokenizer_config
            .chat_template
            .as_deref()
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "{} has no chat template (tokenizer_config.json's `chat_template` or \
                 chat_template.jinja)",
                    self.path.display()
                ))
            })?;
        let messages = [ChatMessage {
            role: "user".into(),
            content: text.into(),
        }];
        let rendered = render_chat(template, &messages, true, &self.tokenizer_config)?;
        let ids = self.tokenizer.encode(&rendered)?;
        self.check_ids(ids)
    }

    fn check_ids(&self, ids: Vec<u32>) -> Result<Vec<u32>> {
        if let Some(bad) = ids.iter().find(|&&t| t as usize >= self.config.vocab_size) {
            return Err(Error::InvalidArgument(format!(
                "the tokenizer gave id {bad}, outside the model's vocabulary ({})",
                self.config.vocab_size
            )));
        }
        Ok(ids)
    }

    /// Text of generated ids (special tokens skipped).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer.decode(ids)
    }
}

/// Shape and seed of a tiny random model ([`new_model`]).
#[derive(Clone, Debug, PartialEq)]
pub struct TinyModelSpec {
    /// Transformer blocks.
    pub layers: usize,
    /// Hidden size.
    pub hidden: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// MLP width (0: about 8/3 of hidden, rounded up to a multiple of 8).
    pub intermediate: usize,
    /// Vocabulary: 256 bytes, 3 specials, then unused extras (at least 259).
    pub vocab: usize,
    /// Longest sequence.
    pub max_positions: usize,
    /// Output head shares the embedding.
    pub tie_embeddings: bool,
    /// Seed of the weights.
    pub seed: u64,
}

impl Default for TinyModelSpec {
    fn default() -> Self {
        TinyModelSpec {
            layers: 2,
            hidden: 64,
            heads: 4,
            kv_heads: 2,
            intermediate: 0,
            vocab: 259,
            max_positions: 512,
            tie_embeddings: false,
            seed: 0,
        }
    }
}

impl TinyModelSpec {
    /// The `config.json` this spec gives.
    pub fn config(&self) -> LlamaConfig {
        let intermediate = if self.intermediate == 0 {
            (self.hidden * 8 / 3).div_ceil(8) * 8
        } else {
            self.intermediate
        };
        LlamaConfig {
            family: Family::Llama,
            head_dim: self.hidden / self.heads.max(1),
            rope: Rope {
                theta: 10_000.0,
                kind: RopeKind::Default,
                partial_rotary_factor: 1.0,
            },
            hidden_act: Activation::Silu,
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            layer_windows: vec![None; self.layers],
            hidden_size: self.hidden,
            intermediate_size: intermediate,
            num_hidden_layers: self.layers,
            num_attention_heads: self.heads,
            num_key_value_heads: Some(self.kv_heads),
            rms_norm_eps: 1e-5,
            vocab_size: self.vocab,
            max_position_embeddings: self.max_positions,
            tie_word_embeddings: self.tie_embeddings,
            bos_token_id: Some(256),
            eos_token_id: Some(TokenIds::One(257)),
        }
    }
}

/// Writes a tiny Llama model with seeded random f32 weights to `dir` (created if missing):
/// `config.json`, `model.safetensors`, and a byte-level `tokenizer.json`. Returns its config.
pub fn new_model(dir: &Path, spec: &TinyModelSpec) -> Result<LlamaConfig> {
    let cfg = spec.config();
    cfg.validate()
        .map_err(|p| Error::InvalidArgument(format!("model shape: {p}")))?;
    let tok = byte_level_tokenizer_json(cfg.vocab_size)?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut rng = SmallRng::seed_from_u64(spec.seed);
    let (h, i, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let hd = cfg.head_dim();
    let (q_out, kv_out) = (cfg.num_attention_heads * hd, cfg.kv_heads() * hd);
    let mut tensors: Vec<(String, Vec<u64>, Vec<u8>)> = Vec::new();
    let mut add = |name: String, shape: &[usize], fill: Fill| {
        let n: usize = shape.iter().product();
        let bytes: Vec<u8> = (0..n)
            .flat_map(|_| {
                let x: f32 = match fill {
                    Fill::Ones => 1.0,
                    Fill::Uniform(a) => rng.random_range(-a..a),
                };
                x.to_le_bytes()
            })
            .collect();
        tensors.push((name, shape.iter().map(|&d| d as u64).collect(), bytes));
    };
    let lin = |fan_in: usize| Fill::Uniform(1.0 / (fan_in as f32).sqrt());
    add(
        "model.embed_tokens.weight".into(),
        &[v, h],
        Fill::Uniform(1.0),
    );
    for n in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{n}.");
        add(format!("{p}input_layernorm.weight"), &[h], Fill::Ones);
        add(format!("{p}self_attn.q_proj.weight"), &[q_out, h], lin(h));
        add(format!("{p}self_attn.k_proj.weight"), &[kv_out, h], lin(h));
        add(format!("{p}self_attn.v_proj.weight"), &[kv_out, h], lin(h));
        add(
            format!("{p}self_attn.o_proj.weight"),
            &[h, q_out],
            lin(q_out),
        );
        add(
            format!("{p}post_attention_layernorm.weight"),
            &[h],
            Fill::Ones,
        );
        add(format!("{p}mlp.gate_proj.weight"), &[i, h], lin(h));
        add(format!("{p}mlp.up_proj.weight"), &[i, h], lin(h));
        add(format!("{p}mlp.down_proj.weight"), &[h, i], lin(i));
    }
    add("model.norm.weight".into(), &[h], Fill::Ones);
    if !cfg.tie_word_embeddings {
        add("lm_head.weight".into(), &[v, h], lin(h));
        // Only printable ASCII can win greedy decoding: the other rows of the head are zero, so
        // their logits are 0 while some printable token's is almost surely above it. Random
        // text stays readable in a terminal and round-trips through the tokenizer.
        // Printable rows are scaled up so that sampling, too, mostly picks printable tokens.
        let head = &mut tensors.last_mut().expect("just added").2;
        for id in 0..v {
            let row = &mut head[id * h * 4..(id + 1) * h * 4];
            if (0x20..0x7f).contains(&id) {
                for w in row.chunks_exact_mut(4) {
                    let x = f32::from_le_bytes([w[0], w[1], w[2], w[3]]) * 8.0;
                    w.copy_from_slice(&x.to_le_bytes());
                }
            } else {
                row.fill(0);
            }
        }
    }
    let views: Vec<(&str, DType, &[u64], &[u8])> = tensors
        .iter()
        .map(|(n, s, b)| (n.as_str(), DType::F32, s.as_slice(), b.as_slice()))
        .collect();
    load::save(&dir.join("model.safetensors"), &views)?;
    let cfg_json = serde_json::to_string_pretty(&cfg.to_json()).expect("a config serialises");
    let cfg_path = dir.join("config.json");
    std::fs::write(&cfg_path, cfg_json).map_err(io(&cfg_path))?;
    let tok_path = dir.join("tokenizer.json");
    std::fs::write(&tok_path, tok).map_err(io(&tok_path))?;
    Ok(cfg)
}

#[derive(Clone, Copy)]
enum Fill {
    Ones,
    Uniform(f32),
}
