//! Batched generation: left padding, per-row positions, a KV cache, greedy or seeded sampling,
//! stop tokens and a token budget per row.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::model::{logits_rows, KvCache, Llama};
use crate::error::{Error, Result};

/// How the next token is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampling {
    /// The most likely token (the lowest id among equals).
    Greedy,
    /// Sampling from the softmax at `temperature`, restricted to the smallest set of tokens
    /// whose probability reaches `top_p`. Row `r` draws from its own generator seeded with
    /// `seed + r`, so a row's draws do not depend on the other rows.
    Sample {
        /// Softmax temperature (> 0).
        temperature: f32,
        /// Nucleus mass in (0, 1].
        top_p: f32,
        /// Seed of row 0's generator.
        seed: u64,
    },
}

/// Settings of [`generate`].
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateOptions {
    /// Tokens to generate per row at most.
    pub max_new_tokens: usize,
    /// Per-row overrides of `max_new_tokens` (one per prompt), if any.
    pub max_new_per_row: Option<Vec<usize>>,
    /// A row stops after producing one of these (it is kept in the output).
    pub stop_tokens: Vec<u32>,
    /// Greedy or sampled.
    pub sampling: Sampling,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 16,
            max_new_per_row: None,
            stop_tokens: Vec::new(),
            sampling: Sampling::Greedy,
        }
    }
}

/// Why a row stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// It produced a stop token.
    StopToken,
    /// It reached its token budget.
    Length,
}

/// One row's result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Generation {
    /// Generated ids (a final stop token included).
    pub tokens: Vec<u32>,
    /// Why it stopped.
    pub stop: StopReason,
}

/// Generates continuations of every prompt (token ids) in one batch. Prompts may differ in
/// length; each is left-padded to the longest. Finished rows leave the batch (their cache rows
/// are dropped), so the work per step follows the rows still running.
pub fn generate(
    model: &Llama,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
) -> Result<Vec<Generation>> {
    check(model, prompts, opts)?;
    let n = prompts.len();
    if n == 0 {
        return Ok(Vec::new());
    }
    let budget: Vec<usize> = opts
        .max_new_per_row
        .clone()
        .unwrap_or_else(|| vec![opts.max_new_tokens; n]);
    let mut rngs: Vec<Option<SmallRng>> = (0..n)
        .map(|r| match opts.sampling {
            Sampling::Greedy => None,
            Sampling::Sample { seed, .. } => {
                Some(SmallRng::seed_from_u64(seed.wrapping_add(r as u64)))
            }
        })
        .collect();
    let mut out: Vec<Generation> = (0..n)
        .map(|_| Generation {
            tokens: Vec::new(),
            stop: StopReason::Length,
        })
        .collect();
    // Rows still running, as indices into `prompts`.
    let mut live: Vec<usize> = (0..n).filter(|&r| budget[r] > 0).collect();
    if live.is_empty() {
        return Ok(out);
    }
    let longest = live.iter().map(|&r| prompts[r].len()).max().unwrap_or(0);
    let mut pads: Vec<usize> = live.iter().map(|&r| longest - prompts[r].len()).collect();
    let batch: Vec<Vec<u32>> = live
        .iter()
        .map(|&r| {
            let mut row = vec![0u32; longest - prompts[r].len()];
            row.extend_from_slice(&prompts[r]);
            row
        })
        .collect();
    let mut cache = KvCache::new();
    let mut logits = model.forward(&batch, &pads, &mut cache)?;
    loop {
        let rows = logits_rows(&logits)?;
        let mut next = Vec::with_capacity(live.len());
        let mut keep = Vec::with_capacity(live.len());
        for (i, &r) in live.iter().enumerate() {
            let tok = pick(&rows[i], opts.sampling, rngs[r].as_mut());
            out[r].tokens.push(tok);
            if opts.stop_tokens.contains(&tok) {
                out[r].stop = StopReason::StopToken;
            } else if out[r].tokens.len() < budget[r] {
                keep.push(i);
                next.push(vec![tok]);
            }
        }
        if keep.is_empty() {
            return Ok(out);
        }
        if keep.len() < live.len() {
            cache.retain_rows(&keep)?;
            live = keep.iter().map(|&i| live[i]).collect();
            pads = keep.iter().map(|&i| pads[i]).collect();
        }
        logits = model.forward(&next, &pads, &mut cache)?;
    }
}

fn check(model: &Llama, prompts: &[Vec<u32>], opts: &GenerateOptions) -> Result<()> {
    let cfg = model.config();
    if let Some(per) = &opts.max_new_per_row {
        if per.len() != prompts.len() {
            return Err(Error::InvalidArgument(format!(
                "{} per-row token budgets for {} prompts",
                per.len(),
                prompts.len()
            )));
        }
    }
    if let Sampling::Sample {
        temperature, top_p, ..
    } = opts.sampling
    {
        if !(temperature.is_finite() && temperature > 0.0) {
            return Err(Error::InvalidArgument(
                "temperature must be positive".into(),
            ));
        }
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(Error::InvalidArgument("top_p must be in (0, 1]".into()));
        }
    }
    for (r, p) in prompts.iter().enumerate() {
        if p.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "prompt {r} has no tokens (the model has no BOS token to start from)"
            )));
        }
        let most = opts
            .max_new_per_row
            .as_ref()
            .map_or(opts.max_new_tokens, |v| v[r]);
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        if longest + most > cfg.max_position_embeddings {
            return Err(Error::InvalidArgument(format!(
                "prompt {r}: the batch's longest prompt ({longest} tokens) plus {most} new tokens \
                 exceeds max_position_embeddings {}",
                cfg.max_position_embeddings
            )));
        }
    }
    Ok(())
}

/// Chooses a token from one row of logits.
fn pick(logits: &[f32], sampling: Sampling, rng: Option<&mut SmallRng>) -> u32 {
    match (sampling, rng) {
        (
            Sampling::Sample {
                temperature, top_p, ..
            },
            Some(rng),
        ) => sample(logits, temperature, top_p, rng),
        _ => argmax(logits),
    }
}

/// Index of the largest value, the first among equals; NaN never wins.
pub fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] || xs[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

/// Samples from softmax(logits / temperature) restricted to the top-p nucleus.
fn sample(logits: &[f32], temperature: f32, top_p: f32, rng: &mut SmallRng) -> u32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, (((l - max) / temperature) as f64).exp()))
        .filter(|(_, p)| p.is_finite())
        .collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    if probs.is_empty() || total <= 0.0 {
        return argmax(logits);
    }
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept = 0;
    let mut mass = 0.0;
    for p in &probs {
        kept += 1;
        mass += p.1 / total;
        if mass >= top_p as f64 {
            break;
        }
    }
    probs.truncate(kept);
    let sum: f64 = probs.iter().map(|p| p.1).sum();
    let mut u = rng.random::<f64>() * sum;
    for &(id, p) in &probs {
        if u < p {
            return id;
        }
        u -= p;
    }
    probs[probs.len() - 1].0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_of_equal_maxima_and_skips_nan() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 0.5, 0.2]), 1);
    }

    #[test]
    fn tiny_top_p_samples_only_the_most_likely_token() {
        let mut rng = SmallRng::seed_from_u64(7);
        for _ in 0..50 {
            assert_eq!(sample(&[0.1, 2.0, 1.9, -1.0], 1.0, 1e-6, &mut rng), 1);
        }
    }

    #[test]
    fn sampling_at_high_temperature_reaches_several_tokens() {
        let mut rng = SmallRng::seed_from_u64(7);
        let seen: std::collections::BTreeSet<u32> = (0..200)
            .map(|_| sample(&[0.0, 0.1, 0.2, 0.3], 5.0, 1.0, &mut rng))
            .collect();
        assert_eq!(seen.len(), 4);
    }
}
