//! `vramswap generate`: batched text generation from a model directory, through the swap engine.

use std::path::PathBuf;
use std::process::ExitCode;

use vramswap::backend::SharedBackend;
use vramswap::infer::{self, bench, GenerateOptions, ModelDir, Sampling};
use vramswap::swap::{SwapConfig, SwapEngine};
use vramswap::{Error, Result};

/// Arguments of `generate`.
#[derive(clap::Args)]
pub struct Args {
    /// Model directory (config.json, model.safetensors or shards, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// A prompt; repeat for a batch.
    #[arg(long = "prompt")]
    prompts: Vec<String>,
    /// Tokens to generate per prompt at most.
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
    /// Greedy decoding (otherwise seeded sampling).
    #[arg(long)]
    greedy: bool,
    /// Sampling temperature.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// Sampling nucleus (top-p).
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print a JSON array of {prompt, text, token_ids}.
    #[arg(long)]
    json: bool,
    /// Chat: each prompt is a user message rendered through the model's chat template (as
    /// transformers' `apply_chat_template(..., add_generation_prompt=True)`).
    #[arg(long)]
    chat: bool,
    /// With --json: add each prompt's token ids and the logits of its first generated token
    /// (the prompt run alone, in f32) to its entry, for comparison with a reference.
    #[arg(long, requires = "json")]
    first_logits: bool,
    /// Benchmark instead: greedy tokens/s at batch 1, 4, 8, 16 beside one prompt at a time.
    #[arg(long)]
    bench: bool,
}

pub fn run(b: SharedBackend, args: &Args) -> Result<ExitCode> {
    let dir = ModelDir::open(&args.model)?;
    let engine = SwapEngine::new(b.clone(), SwapConfig::from_env()?)?;
    dir.register(&engine, "model")?;
    let guard = engine.acquire("model")?;
    let device = infer::device_for(&b)?;
    let model = infer::load_model(&dir, &guard, &device)?;
    if args.bench {
        let prompts: Vec<String> = if args.prompts.is_empty() {
            (0..16)
                .map(|i| format!("prompt number {i}: {}", "abc ".repeat(i % 5)))
                .collect()
        } else {
            args.prompts.clone()
        };
        let ids = prompts
            .iter()
            .map(|p| dir.encode_prompt(p))
            .collect::<Result<Vec<_>>>()?;
        let rows = bench::batch_vs_serial(&model, &ids, &[1, 4, 8, 16], args.max_new_tokens, 3)?;
        if args.json {
            return crate::print_json(&rows);
        }
        return crate::print(&bench::table(&rows));
    }
    if args.prompts.is_empty() {
        return Err(Error::InvalidArgument("give at least one --prompt".into()));
    }
    let sampling = if args.greedy {
        Sampling::Greedy
    } else {
        Sampling::Sample {
            temperature: args.temperature,
            top_p: args.top_p,
            seed: args.seed,
        }
    };
    let opts = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        sampling,
        ..GenerateOptions::default()
    };
    let form = if args.chat {
        infer::PromptForm::Chat
    } else {
        infer::PromptForm::Plain
    };
    let out = infer::generate_text_as(&dir, &model, &args.prompts, form, &opts)?;
    if args.json {
        let mut v = serde_json::to_value(&out).expect("serialisable");
        if args.first_logits {
            for (entry, prompt) in v
                .as_array_mut()
                .expect("a list")
                .iter_mut()
                .zip(&args.prompts)
            {
                let ids = form.encode(&dir, prompt)?;
                let logits =
                    model.forward(std::slice::from_ref(&ids), &[0], &mut infer::KvCache::new())?;
                let rows = infer::logits_rows(&logits)?;
                entry["prompt_ids"] = serde_json::json!(ids);
                entry["first_logits"] = serde_json::json!(rows[0]);
            }
        }
        return crate::print_json(&v);
    }
    let mut s = String::new();
    for g in &out {
        s += &format!("{} ⟶ {}\n", g.prompt, g.text);
    }
    crate::print(&s)
}
