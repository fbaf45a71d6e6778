//! The model's `config.json`: the Hugging Face Llama fields this layer reads.

use std::path::Path;

use serde::{Deserialize, Serialize};

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

fn default_eps() -> f64 {
    1e-6
}

fn default_theta() -> f64 {
    10_000.0
}

fn default_max_pos() -> usize {
    2048
}

/// The fields of a Hugging Face Llama `config.json` this layer uses. Other fields in the file
/// (architectures, torch_dtype, ...) are ignored, as transformers ignores unknown ones.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP's hidden layer.
    pub intermediate_size: usize,
    /// Transformer blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); absent means as many as query heads.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Epsilon of RMSNorm.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// Base of the rotary embedding frequencies.
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    /// Tokens in the vocabulary (rows of the embedding).
    pub vocab_size: usize,
    /// The longest sequence (prompt plus generated tokens) a row may reach.
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    /// The output head reuses the embedding matrix (no `lm_head.weight`).
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Beginning-of-sequence token, prepended to prompts when set.
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token(s): generation of a row stops there.
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
}

impl LlamaConfig {
    /// Reads and checks `config.json` at `path`.
    pub fn from_file(path: &Path) -> Result<LlamaConfig> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let c: LlamaConfig = serde_json::from_str(&text).map_err(|e| Error::Malformed {
            path: path.to_path_buf(),
            problem: format!("not a Llama config.json: {e}"),
        })?;
        c.validate().map_err(|problem| Error::Malformed {
            path: path.to_path_buf(),
            problem,
        })?;
        Ok(c)
    }

    /// Key/value heads (defaults to the query heads).
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
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
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (k, v) in positive {
            if v == 0 {
                return Err(format!("`{k}` must be positive"));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self.num_attention_heads.is_multiple_of(self.kv_heads()) {
            return Err(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads,
                self.kv_heads()
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(format!(
                "head dimension {} must be even for rotary embeddings",
                self.head_dim()
            ));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return Err("`rms_norm_eps` must be a positive number".into());
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err("`rope_theta` must be a positive number".into());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_config_with_extra_fields_and_eos_list_parses() {
        let c: LlamaConfig = serde_json::from_str(
            r#"{"architectures":["LlamaForCausalLM"],"hidden_size":64,"intermediate_size":128,
               "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,
               "vocab_size":300,"eos_token_id":[1,2],"torch_dtype":"bfloat16"}"#,
        )
        .unwrap();
        assert_eq!(c.eos_ids(), vec![1, 2]);
        assert_eq!(c.head_dim(), 16);
        assert_eq!(c.rope_theta, 10_000.0);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn heads_that_do_not_divide_are_rejected() {
        let mut c: LlamaConfig = serde_json::from_str(
            r#"{"hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,
               "num_attention_heads":4,"num_key_value_heads":3,"vocab_size":300}"#,
        )
        .unwrap();
        assert!(c.validate().unwrap_err().contains("num_key_value_heads"));
        c.num_key_value_heads = Some(2);
        c.hidden_size = 66;
        assert!(c.validate().is_err());
    }
}
