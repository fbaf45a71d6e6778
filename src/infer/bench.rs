//! Batched against one-prompt-at-a-time generation on the same prompts: tokens per second at
//! each batch size, and a check that both give the same tokens.

use std::time::Instant;

use serde::Serialize;

use super::generate::{generate, GenerateOptions, Sampling};
use super::model::Llama;
use crate::error::{Error, Result};

/// One batch size's figures.
#[derive(Clone, Debug, Serialize)]
pub struct BatchBenchRow {
    /// Prompts in the batch.
    pub batch: usize,
    /// Tokens generated (every row generates the same number: no stop tokens).
    pub tokens: usize,
    /// Seconds for the whole batch at once.
    pub batched_s: f64,
    /// Seconds for the same prompts one at a time.
    pub serial_s: f64,
    /// Generated tokens per second, batched.
    pub batched_tok_s: f64,
    /// Generated tokens per second, one at a time.
    pub serial_tok_s: f64,
    /// `batched_tok_s / serial_tok_s`.
    pub speedup: f64,
    /// Whether batched and one-at-a-time greedy output agree token for token.
    pub identical: bool,
    /// The CPU linear kernel the model ran (`avx512`, `avx2` or `portable`; see
    /// [`crate::infer::linear_kernel_name`]), or `none` where it runs candle's generic ops (a
    /// GPU).
    pub linear_kernel: &'static str,
}

/// Runs greedy generation of `max_new_tokens` for the first `b` prompts (cycling through
/// `prompts` when there are fewer) at each batch size `b` in `batches`, batched and one at a
/// time, taking the best of `reps` runs of each.
pub fn batch_vs_serial(
    model: &Llama,
    prompts: &[Vec<u32>],
    batches: &[usize],
    max_new_tokens: usize,
    reps: usize,
) -> Result<Vec<BatchBenchRow>> {
    if prompts.is_empty() || batches.contains(&0) || max_new_tokens == 0 {
        return Err(Error::InvalidArgument(
            "the benchmark needs prompts, positive batch sizes and a positive token count".into(),
        ));
    }
    let opts = GenerateOptions {
        max_new_tokens,
        max_new_per_row: None,
        stop_tokens: Vec::new(),
        sampling: Sampling::Greedy,
    };
    let mut rows = Vec::new();
    for &b in batches {
        let batch: Vec<Vec<u32>> = (0..b).map(|i| prompts[i % prompts.len()].clone()).collect();
        let (mut best_batched, mut best_serial) = (f64::INFINITY, f64::INFINITY);
        let (mut batched_out, mut serial_out) = (Vec::new(), Vec::new());
        for _ in 0..reps.max(1) {
            let t = Instant::now();
            batched_out = generate(model, &batch, &opts)?;
            best_batched = best_batched.min(t.elapsed().as_secs_f64());
            let t = Instant::now();
            serial_out = batch
                .iter()
                .map(|p| generate(model, std::slice::from_ref(p), &opts).map(|mut g| g.remove(0)))
                .collect::<Result<Vec<_>>>()?;
            best_serial = best_serial.min(t.elapsed().as_secs_f64());
        }
        let tokens: usize = batched_out.iter().map(|g| g.tokens.len()).sum();
        let batched_tok_s = tokens as f64 / best_batched;
        let serial_tok_s = tokens as f64 / best_serial;
        rows.push(BatchBenchRow {
            batch: b,
            tokens,
            batched_s: best_batched,
            serial_s: best_serial,
            batched_tok_s,
            serial_tok_s,
            speedup: batched_tok_s / serial_tok_s,
            identical: batched_out == serial_out,
            linear_kernel: if model.uses_cpu_kernels() {
                super::linear::linear_kernel_name()
            } else {
                "none"
            },
        });
    }
    Ok(rows)
}

/// The rows as a text table.
pub fn table(rows: &[BatchBenchRow]) -> String {
    let mut s = format!(
        "{:>5} {:>7} {:>12} {:>12} {:>13} {:>13} {:>8} {:>10}\n",
        "batch",
        "tokens",
        "batched ms",
        "serial ms",
        "batched tok/s",
        "serial tok/s",
        "speedup",
        "identical"
    );
    for r in rows {
        s += &format!(
            "{:>5} {:>7} {:>12.1} {:>12.1} {:>13.0} {:>13.0} {:>7.2}x {:>10}\n",
            r.batch,
            r.tokens,
            r.batched_s * 1e3,
            r.serial_s * 1e3,
            r.batched_tok_s,
            r.serial_tok_s,
            r.speedup,
            if r.identical { "yes" } else { "NO" }
        );
    }
    if let Some(r) = rows.first() {
        s += &format!("linear kernel: {}\n", r.linear_kernel);
    }
    s
}
