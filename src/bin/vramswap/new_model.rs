//! `vramswap new-model`: a tiny Llama model with seeded random weights, in Hugging Face format.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use vramswap::backend::BackendChoice;
use vramswap::infer::{new_model, TinyModelSpec};
use vramswap::{Error, Result};

/// Arguments of `new-model`.
#[derive(clap::Args)]
pub struct Args {
    /// Directory to write (created if missing): config.json, model.safetensors, tokenizer.json.
    /// A directory that exists and is not empty is refused unless `--force` is given.
    dir: PathBuf,
    /// Write into a non-empty directory, replacing the files named above.
    #[arg(long)]
    force: bool,
    /// Transformer blocks.
    #[arg(long, default_value_t = 2)]
    layers: usize,
    /// Hidden size.
    #[arg(long, default_value_t = 64)]
    hidden: usize,
    /// Attention (query) heads.
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// Key/value heads (grouped-query attention).
    #[arg(long, default_value_t = 2)]
    kv_heads: usize,
    /// MLP width (default: about 8/3 of the hidden size).
    #[arg(long, default_value_t = 0)]
    intermediate: usize,
    /// Vocabulary (at least 259: 256 bytes and 3 specials).
    #[arg(long, default_value_t = 259)]
    vocab: usize,
    /// Share the embedding with the output head.
    #[arg(long)]
    tie_embeddings: bool,
    /// Seed of the weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    // The global `--backend` and `--device` do nothing here (no device is touched): these take
    // their ids in this subcommand so that its help does not list them; the values are unused.
    #[arg(id = "backend", long = "backend", hide = true)]
    _backend: Option<BackendChoice>,
    #[arg(id = "device", long = "device", hide = true)]
    _device: Option<i32>,
}

pub fn run(args: &Args) -> Result<ExitCode> {
    if !args.force {
        refuse_non_empty(&args.dir)?;
    }
    let spec = TinyModelSpec {
        layers: args.layers,
        hidden: args.hidden,
        heads: args.heads,
        kv_heads: args.kv_heads,
        intermediate: args.intermediate,
        vocab: args.vocab,
        tie_embeddings: args.tie_embeddings,
        seed: args.seed,
        ..TinyModelSpec::default()
    };
    let cfg = new_model(&args.dir, &spec)?;
    crate::print(&format!(
        "wrote {}: {} layers, hidden {}, {} heads ({} key/value), vocab {}\n",
        args.dir.display(),
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.kv_heads(),
        cfg.vocab_size
    ))
}

/// Refuses a directory that exists and holds anything: writing a model there would overwrite
/// files without a word.
fn refuse_non_empty(dir: &Path) -> Result<()> {
    let mut entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(Error::Io {
                path: dir.into(),
                source: e,
            })
        }
    };
    match entries.next() {
        None => Ok(()),
        Some(_) => Err(Error::InvalidArgument(format!(
            "{} exists and is not empty; pass --force to write the model into it anyway",
            dir.display()
        ))),
    }
}
