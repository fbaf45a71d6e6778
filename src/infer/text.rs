//! Text in, text out: a model directory's tokenizer around [`generate`].

use candle_core::Device;
use serde::Serialize;

use super::generate::{generate, GenerateOptions};
use super::model::Llama;
use super::model_dir::ModelDir;
use super::params::LlamaParams;
use crate::error::Result;
use crate::swap::WeightGuard;

/// One prompt's continuation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TextGeneration {
    /// The prompt.
    pub prompt: String,
    /// The generated text (special tokens skipped).
    pub text: String,
    /// The generated ids.
    pub token_ids: Vec<u32>,
}

/// Builds the model of `dir` from the acquired weight set `guard` on `device`.
pub fn load_model(dir: &ModelDir, guard: &WeightGuard, device: &Device) -> Result<Llama> {
    let params = LlamaParams::build(&dir.config, guard, device)?;
    Llama::new(dir.config.clone(), params, device)
}

/// Generates a continuation of every prompt in one batch. The config's end-of-sequence ids are
/// added to `opts.stop_tokens`.
pub fn generate_text(
    dir: &ModelDir,
    model: &Llama,
    prompts: &[String],
    opts: &GenerateOptions,
) -> Result<Vec<TextGeneration>> {
    let ids = prompts
        .iter()
        .map(|p| dir.encode_prompt(p))
        .collect::<Result<Vec<_>>>()?;
    let mut opts = opts.clone();
    opts.stop_tokens.extend(dir.config.eos_ids());
    let out = generate(model, &ids, &opts)?;
    prompts
        .iter()
        .zip(out)
        .map(|(p, g)| {
            Ok(TextGeneration {
                prompt: p.clone(),
                text: dir.decode(&g.tokens)?,
                token_ids: g.tokens,
            })
        })
        .collect()
}
