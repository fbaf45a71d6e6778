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

/// Generates a continuation of every prompt in one batch. The model's end-of-sequence ids
/// ([`ModelDir::eos_ids`]) are added to `opts.stop_tokens`.
pub fn generate_text(
    dir: &ModelDir,
    model: &Llama,
    prompts: &[String],
    opts: &GenerateOptions,
) -> Result<Vec<TextGeneration>> {
    generate_text_as(dir, model, prompts, PromptForm::Plain, opts)
}

/// How a prompt's text becomes token ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromptForm {
    /// The text itself, with the special tokens the tokenizer adds
    /// ([`ModelDir::encode_prompt`]).
    Plain,
    /// The text as a user message through the model's chat template
    /// ([`ModelDir::encode_chat`]).
    Chat,
}

impl PromptForm {
    /// The prompt ids of `text` in this form.
    pub fn encode(self, dir: &ModelDir, text: &str) -> Result<Vec<u32>> {
        match self {
            PromptForm::Plain => dir.encode_prompt(text),
            PromptForm::Chat => dir.encode_chat(text),
        }
    }
}

/// [`generate_text`] with the prompts encoded in `form`.
pub fn generate_text_as(
    dir: &ModelDir,
    model: &Llama,
    prompts: &[String],
    form: PromptForm,
    opts: &GenerateOptions,
) -> Result<Vec<TextGeneration>> {
    let ids = prompts
        .iter()
        .map(|p| form.encode(dir, p))
        .collect::<Result<Vec<_>>>()?;
    let mut opts = opts.clone();
    opts.stop_tokens.extend(dir.eos_ids.iter().copied());
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
