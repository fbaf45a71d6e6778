//! Batched generation: left padding, per-row positions, a KV cache, greedy or seeded sampling,
//! stop tokens and a token budget per row.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use candle_core::Tensor;
use rayon::prelude::*;

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
/// length; each is left-padded to the longest of its group. On the CPU a batch of several
/// prompts runs as up to one group of rows per thread, side by side (see `Group`); every row's
/// output is the same as alone. Finished rows leave the batch (their cache rows are dropped),
/// so the work per step follows the rows still running.
pub fn generate(
    model: &Llama,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
) -> Result<Vec<Generation>> {
    let groups = if model.device().is_cpu() {
        max_groups(rayon::current_num_threads(), model.step_weight_bytes())
    } else {
        1
    };
    generate_split(model, prompts, opts, groups)
}

/// Groups a CPU batch may run as: one per thread, as many as keep their weight reads within
/// [`GROUP_READ_BUDGET`] a step, and at least one.
fn max_groups(threads: usize, step_weight_bytes: usize) -> usize {
    let reads = GROUP_READ_BUDGET / step_weight_bytes.max(1);
    threads.min(reads).max(1)
}

/// Weight bytes the groups of a CPU batch may read per decode step, all groups together: each
/// group reads every weight, so a model over half of this runs as one group whose products
/// are split over the threads instead (the weights then come from memory once per step; for
/// products that big the threads' wake-ups are a small cost).
const GROUP_READ_BUDGET: usize = 128 << 20;

/// [`generate`] with the batch split into `most_groups` groups at most (see [`Group::split`]).
fn generate_split(
    model: &Llama,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
    most_groups: usize,
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
    let live: Vec<usize> = (0..n).filter(|&r| budget[r] > 0).collect();
    let mut groups = Group::split(prompts, live, most_groups);
    // Every group's prompt pass, then one decode step of every group at a time, the groups side
    // by side on rayon's threads.
    let mut logits: Vec<Result<Tensor>> = groups
        .par_iter_mut()
        .map(|g| g.prefill(model, prompts))
        .collect();
    loop {
        for (g, l) in groups.iter_mut().zip(logits) {
            let rows = logits_rows(&l?)?;
            let mut next = Vec::with_capacity(g.live.len());
            let mut keep = Vec::with_capacity(g.live.len());
            for (i, &r) in g.live.iter().enumerate() {
                let tok = pick(&rows[i], opts.sampling, rngs[r].as_mut());
                out[r].tokens.push(tok);
                if opts.stop_tokens.contains(&tok) {
                    out[r].stop = StopReason::StopToken;
                } else if out[r].tokens.len() < budget[r] {
                    keep.push(i);
                    next.push(vec![tok]);
                }
            }
            g.retain(&keep)?;
            g.next = next;
        }
        groups.retain(|g| !g.live.is_empty());
        if groups.is_empty() {
            return Ok(out);
        }
        logits = groups
            .par_iter_mut()
            .map(|g| model.forward(&g.next, &g.pads, &mut g.cache))
            .collect();
    }
}

/// Rows (prompts) a batch gives one thread: fewer, and a group's weight reads (every group
/// reads all the weights each step) cost more than running its rows on a thread of their own
/// saves.
const ROWS_PER_GROUP: usize = 2;

/// Some rows of a batch that run through the model together, with their own KV cache. A batch
/// of several groups runs them side by side on rayon's threads: every layer of a decode step,
/// attention and norms included, is then parallel, where splitting each product over the
/// threads woke them (tens of microseconds, more on a busy machine) dozens of times a step for
/// a few hundred microseconds of work each. A group's large products are still split in
/// bands, so a thread that finishes its group early takes bands of another's instead of
/// waiting (a row's bits do not depend on which thread computes it). Each row's arithmetic is
/// the same in any group (the kernels are batch-invariant and padding is never read), so the
/// split changes no bits. Like the kernels, it assumes every thread has the default
/// floating-point environment (see `linear`): a row runs on the caller's thread alone and on
/// rayon's workers in a batch.
struct Group {
    /// Rows still running, as indices into the prompts.
    live: Vec<usize>,
    /// Left padding per live row (to the group's longest prompt).
    pads: Vec<usize>,
    /// The token each live row feeds the next decode step.
    next: Vec<Vec<u32>>,
    cache: KvCache,
}

impl Group {
    /// `live` (indices into `prompts`) in groups of similar prompt lengths, so little is
    /// padded: at most `most_groups` groups (see [`max_groups`]; one on a GPU: its kernels are
    /// the parallelism), each of at least [`ROWS_PER_GROUP`] rows (or one group), sizes
    /// differing by one at most.
    fn split(prompts: &[Vec<u32>], mut live: Vec<usize>, most_groups: usize) -> Vec<Group> {
        let count = (live.len() / ROWS_PER_GROUP).clamp(1, most_groups.max(1));
        live.sort_by_key(|&r| prompts[r].len());
        let len = live.len();
        (0..count)
            .map(|g| Group {
                live: live[g * len / count..(g + 1) * len / count].to_vec(),
                pads: Vec::new(),
                next: Vec::new(),
                cache: KvCache::new(),
            })
            .filter(|g| !g.live.is_empty())
            .collect()
    }

    /// Runs the group's prompts, left-padded to its longest, and returns the logits of their
    /// last tokens.
    fn prefill(&mut self, model: &Llama, prompts: &[Vec<u32>]) -> Result<Tensor> {
        let longest = self
            .live
            .iter()
            .map(|&r| prompts[r].len())
            .max()
            .unwrap_or(0);
        self.pads = self
            .live
            .iter()
            .map(|&r| longest - prompts[r].len())
            .collect();
        let batch: Vec<Vec<u32>> = self
            .live
            .iter()
            .zip(&self.pads)
            .map(|(&r, &pad)| {
                let mut row = vec![0u32; pad];
                row.extend_from_slice(&prompts[r]);
                row
            })
            .collect();
        model.forward(&batch, &self.pads, &mut self.cache)
    }

    /// Keeps the live rows at positions `keep` (in order), dropping the others' cache rows.
    fn retain(&mut self, keep: &[usize]) -> Result<()> {
        if keep.len() < self.live.len() {
            if !keep.is_empty() {
                self.cache.retain_rows(keep)?;
            }
            self.live = keep.iter().map(|&i| self.live[i]).collect();
            self.pads = keep.iter().map(|&i| self.pads[i]).collect();
        }
        Ok(())
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
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
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
        if longest.saturating_add(most) > cfg.max_position_embeddings {
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

    use crate::infer::test_support::cpu_model;
    use crate::infer::TinyModelSpec;

    fn prompts(lens: &[usize]) -> Vec<Vec<u32>> {
        lens.iter()
            .enumerate()
            .map(|(i, &n)| {
                (0..n as u32)
                    .map(|t| 1 + (t * 7 + i as u32 * 13) % 200)
                    .collect()
            })
            .collect()
    }

    #[test]
    fn a_batch_splits_into_groups_of_similar_lengths_one_per_thread_at_most() {
        let p = prompts(&[5, 1, 9, 2, 8, 3, 7]);
        let live: Vec<usize> = (0..7).collect();
        let one = Group::split(&p, live.clone(), 1);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].live.len(), 7);
        let three = Group::split(&p, live.clone(), 3);
        assert_eq!(three.len(), 3, "7 rows, 3 threads");
        let lens: Vec<Vec<usize>> = three
            .iter()
            .map(|g| g.live.iter().map(|&r| p[r].len()).collect())
            .collect();
        assert_eq!(lens, [vec![1, 2], vec![3, 5], vec![7, 8, 9]]);
        // As many groups as allowed, none under 2 rows, sizes within one of each other.
        for (rows, threads, want) in [(9, 4, 4), (16, 6, 6), (10, 4, 4), (5, 8, 2), (2, 8, 1)] {
            let p = prompts(&vec![3; rows]);
            let groups = Group::split(&p, (0..rows).collect(), threads);
            let sizes: Vec<usize> = groups.iter().map(|g| g.live.len()).collect();
            assert_eq!(
                groups.len(),
                want,
                "{rows} rows, {threads} threads: {sizes:?}"
            );
            assert!(sizes.iter().all(|&s| s >= ROWS_PER_GROUP), "{sizes:?}");
            assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
            assert_eq!(sizes.iter().sum::<usize>(), rows);
        }
        // Every row once; never more groups than rows allow.
        let mut all: Vec<usize> = three.iter().flat_map(|g| g.live.clone()).collect();
        all.sort();
        assert_eq!(all, live);
        assert_eq!(Group::split(&p, live[..3].to_vec(), 8).len(), 1, "3 rows");
        assert_eq!(Group::split(&p, live[..4].to_vec(), 8).len(), 2, "4 rows");
        assert!(Group::split(&p, Vec::new(), 4).is_empty());
    }

    #[test]
    fn groups_keep_their_weight_reads_within_the_budget() {
        let mib = 1 << 20;
        assert_eq!(max_groups(2, 47 * mib), 2, "the 47 MB model of the README");
        assert_eq!(max_groups(16, 12 * mib), 10);
        assert_eq!(
            max_groups(2, 64 * mib),
            2,
            "two reads of 64 MiB fit 128 MiB"
        );
        assert_eq!(max_groups(2, 64 * mib + 1), 1);
        assert_eq!(max_groups(8, 179 * mib), 1, "over the budget: one group");
        assert_eq!(max_groups(0, 0), 1);
    }

    #[test]
    fn grouped_generation_gives_every_row_the_tokens_of_one_group() {
        let dir = tempfile::tempdir().unwrap();
        let (_, m) = cpu_model(
            dir.path(),
            &TinyModelSpec {
                layers: 2,
                hidden: 32,
                heads: 4,
                kv_heads: 2,
                seed: 5,
                ..Default::default()
            },
        );
        let p = prompts(&[4, 1, 9, 2, 6, 3, 7]);
        // Rows stop at different steps (budgets, and the most frequent first token as a stop
        // token), so groups lose rows and some empty before the others.
        let plain = GenerateOptions {
            max_new_tokens: 8,
            ..Default::default()
        };
        let first = generate_split(&m, &p, &plain, 1).unwrap();
        let mut count = std::collections::BTreeMap::new();
        for g in &first {
            *count.entry(g.tokens[1]).or_insert(0) += 1;
        }
        let stop = *count.iter().max_by_key(|(_, &c)| c).unwrap().0;
        for opts in [
            plain.clone(),
            GenerateOptions {
                max_new_per_row: Some(vec![8, 1, 5, 0, 8, 2, 3]),
                stop_tokens: vec![stop],
                ..plain.clone()
            },
            GenerateOptions {
                sampling: Sampling::Sample {
                    temperature: 1.5,
                    top_p: 0.95,
                    seed: 9,
                },
                ..plain.clone()
            },
        ] {
            let want = generate_split(&m, &p, &opts, 1).unwrap();
            for threads in [2, 3, 8] {
                assert_eq!(
                    generate_split(&m, &p, &opts, threads).unwrap(),
                    want,
                    "{threads} groups at most, {opts:?}"
                );
            }
            if opts.stop_tokens.contains(&stop) {
                assert!(want.iter().any(|g| g.stop == StopReason::StopToken));
            }
        }
    }

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
