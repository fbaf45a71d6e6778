//! The round-robin pipeline of `vramswap demo`: several models share a device whose budget
//! holds fewer of them; each step's output texts are the next model's prompts; the next model
//! is prefetched while the current one computes. Two baselines run in the same call:
//! unloading and reloading from disk at every step (what pipelines do today), and generating
//! one prompt at a time.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::generate::GenerateOptions;
use super::model_dir::{new_model, ModelDir, TinyModelSpec};
use super::text::{generate_text, load_model};
use crate::arena::{ArenaConfig, PinnedArena, SLAB_GRANULE};
use crate::backend::SharedBackend;
use crate::error::{Error, Result};
use crate::load;
use crate::swap::{SwapConfig, SwapEngine};

/// Settings of [`run`].
#[derive(Clone, Debug)]
pub struct DemoConfig {
    /// Model directories; empty: three tiny models are written under `work_dir`.
    pub models: Vec<PathBuf>,
    /// Where the tiny models go (a temporary directory the caller owns).
    pub work_dir: PathBuf,
    /// Rounds through every model.
    pub cycles: usize,
    /// Prompts of the first step (the batch).
    pub prompts: Vec<String>,
    /// Tokens per prompt per step.
    pub max_new_tokens: usize,
    /// Settings of the engines (the device budget is set by the demo: two models' worth).
    pub swap: SwapConfig,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            models: Vec::new(),
            work_dir: std::env::temp_dir().join("vramswap-demo"),
            cycles: 3,
            prompts: [
                "a lighthouse at dusk",
                "two cats on a red sofa",
                "rain over a quiet harbour",
                "an old map",
                "snow",
                "a train crossing a bridge at night",
                "three paper boats",
                "the last bus home",
            ]
            .map(String::from)
            .to_vec(),
            max_new_tokens: 16,
            swap: SwapConfig::default(),
        }
    }
}

/// The shapes of the three demo models: a few MB each, so a swap is visible.
pub fn demo_specs() -> Vec<TinyModelSpec> {
    (0..3)
        .map(|i| TinyModelSpec {
            layers: 4,
            hidden: 256,
            heads: 8,
            kv_heads: 4,
            intermediate: 512 + 128 * i,
            vocab: 259,
            seed: 100 + i as u64,
            ..TinyModelSpec::default()
        })
        .collect()
}

/// One step of the pipeline.
#[derive(Clone, Debug, Serialize)]
pub struct StepRow {
    /// Step number.
    pub step: usize,
    /// The model.
    pub model: String,
    /// Where its weights came from: `disk` (first load), `host` (swap-in from the arena),
    /// `device` (already resident).
    pub source: &'static str,
    /// Time of the swap-in copies (engine counter), ms; 0 when none was needed.
    pub swap_in_ms: f64,
    /// Bytes swapped in.
    pub bytes: u64,
    /// Swap-in throughput, GB/s.
    pub gbps: f64,
    /// Time the step waited in `acquire`, ms.
    pub wait_ms: f64,
    /// Share of the swap-in the step did not wait for (it ran behind the previous step's
    /// compute), 0..1.
    pub hidden: f64,
    /// Building the model from the set plus generating, ms.
    pub compute_ms: f64,
    /// Generated tokens per second of compute.
    pub tok_s: f64,
}

/// A whole run of one strategy.
#[derive(Clone, Debug, Serialize)]
pub struct RunTotals {
    /// Wall time, s.
    pub total_s: f64,
    /// Time not spent building and generating (waiting for weights, reloading), s.
    pub switch_s: f64,
    /// Tokens generated.
    pub tokens: usize,
}

/// Everything the demo measured.
#[derive(Clone, Debug, Serialize)]
pub struct DemoReport {
    /// The models, in pipeline order, with their weight bytes.
    pub models: Vec<(String, u64)>,
    /// Device budget of the engines, bytes.
    pub device_budget: u64,
    /// Steps of the pipeline with prefetch.
    pub steps: Vec<StepRow>,
    /// The pipeline with prefetch, batched.
    pub pipeline: RunTotals,
    /// Baseline: release and reload from disk at every step, no prefetch, batched.
    pub reload: RunTotals,
    /// Baseline: the pipeline with prefetch, one prompt at a time.
    pub serial: RunTotals,
    /// Whether the three runs produced the same texts at every step.
    pub outputs_agree: bool,
    /// The last step's texts.
    pub final_texts: Vec<String>,
}

/// Runs the demo on `backend`; `on_step` sees each pipeline step as it finishes.
pub fn run(
    backend: SharedBackend,
    cfg: &DemoConfig,
    on_step: &mut dyn FnMut(&StepRow),
) -> Result<DemoReport> {
    if cfg.prompts.is_empty() || cfg.cycles == 0 || cfg.max_new_tokens == 0 {
        return Err(Error::InvalidArgument(
            "the demo needs prompts, at least one cycle and a positive token count".into(),
        ));
    }
    let paths = if cfg.models.is_empty() {
        let mut v = Vec::new();
        for (i, spec) in demo_specs().iter().enumerate() {
            let p = cfg
                .work_dir
                .join(format!("model-{}", (b'a' + i as u8) as char));
            new_model(&p, spec)?;
            v.push(p);
        }
        v
    } else {
        cfg.models.clone()
    };
    if paths.len() < 2 {
        return Err(Error::InvalidArgument(
            "the demo needs two models or more".into(),
        ));
    }
    let dirs = paths
        .iter()
        .map(|p| ModelDir::open(p))
        .collect::<Result<Vec<_>>>()?;
    let names: Vec<String> = paths
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let base = p
                .file_name()
                .map_or_else(|| format!("model{i}"), |n| n.to_string_lossy().into_owned());
            format!("{i}:{base}")
        })
        .collect();
    let device = super::device_for(&backend)?;
    let sizes = paths
        .iter()
        .map(|p| load::inspect(p).map(|i| i.desc.total_bytes))
        .collect::<Result<Vec<u64>>>()?;
    let gran = backend.properties().vmm_granularity.max(1);
    let mut dev_sizes: Vec<u64> = sizes
        .iter()
        .map(|&s| s.max(1).div_ceil(gran) * gran)
        .collect();
    dev_sizes.sort_unstable_by(|a, b| b.cmp(a));
    let budget = dev_sizes[0] + dev_sizes[1];
    let swap_cfg = SwapConfig {
        device_budget: Some(budget),
        ..cfg.swap.clone()
    };
    let opts = GenerateOptions {
        max_new_tokens: cfg.max_new_tokens,
        ..GenerateOptions::default()
    };
    let steps = cfg.cycles * paths.len();

    // Warm-up, untimed, on a scratch engine: one short generation with the first model, so
    // that whichever strategy runs first does not pay the process's one-time costs (thread
    // pool start, allocator growth, first page faults) that the others then skip. Without it
    // the pipeline, which runs first, lost 50-80 ms to its first step.
    {
        let warm = demo_engine(&backend, &swap_cfg)?;
        dirs[0].register(&warm, &names[0])?;
        let guard = warm.acquire(&names[0])?;
        let model = load_model(&dirs[0], &guard, &device)?;
        let short = GenerateOptions {
            max_new_tokens: 2,
            ..GenerateOptions::default()
        };
        generate_text(&dirs[0], &model, &cfg.prompts, &short)?;
    }

    // The pipeline: prefetch the next model, then compute with the current one.
    let engine = demo_engine(&backend, &swap_cfg)?;
    for (d, n) in dirs.iter().zip(&names) {
        d.register(&engine, n)?;
    }
    let mut prompts = cfg.prompts.clone();
    let mut rows = Vec::new();
    let mut texts_pipeline = Vec::new();
    let (mut switch, mut tokens) = (Duration::ZERO, 0usize);
    let start = Instant::now();
    // Counters as they were before this step's set was asked for (the previous prefetch).
    let mut mark = engine.status().counters;
    for step in 0..steps {
        let k = step % paths.len();
        let t = Instant::now();
        let guard = engine.acquire(&names[k])?;
        let wait = t.elapsed();
        let after = engine.status().counters;
        engine.prefetch(&names[(step + 1) % paths.len()])?;
        let t = Instant::now();
        let model = load_model(&dirs[k], &guard, &device)?;
        let out = generate_text(&dirs[k], &model, &prompts, &opts)?;
        let compute = t.elapsed();
        drop(guard);
        let n_tok: usize = out.iter().map(|g| g.token_ids.len()).sum();
        let swapped = after.h2d_swaps > mark.h2d_swaps;
        let source = if after.loads > mark.loads {
            "disk"
        } else if swapped {
            "host"
        } else {
            "device"
        };
        mark = after.clone();
        let swap_ms = if swapped { after.last_swap_in_ms } else { 0.0 };
        let wait_ms = wait.as_secs_f64() * 1e3;
        let row = StepRow {
            step,
            model: names[k].clone(),
            source,
            swap_in_ms: swap_ms,
            bytes: if swapped { sizes[k] } else { 0 },
            gbps: if swapped {
                after.last_swap_in_gbps
            } else {
                0.0
            },
            wait_ms,
            hidden: if swap_ms > 0.0 {
                (1.0 - wait_ms / swap_ms).clamp(0.0, 1.0)
            } else {
                1.0
            },
            compute_ms: compute.as_secs_f64() * 1e3,
            tok_s: n_tok as f64 / compute.as_secs_f64().max(1e-9),
        };
        on_step(&row);
        rows.push(row);
        switch += wait;
        tokens += n_tok;
        prompts = out.into_iter().map(|g| g.text).collect();
        texts_pipeline.push(prompts.clone());
    }
    let pipeline = RunTotals {
        total_s: start.elapsed().as_secs_f64(),
        switch_s: switch.as_secs_f64(),
        tokens,
    };

    // Baseline (a): every step re-opens the directory and reloads the weights from disk.
    let reload_engine = demo_engine(&backend, &swap_cfg)?;
    for (p, n) in paths.iter().zip(&names) {
        reload_engine.register_path(n, p, load::LoadOptions::default())?;
    }
    let (reload, texts_reload) = run_plain(&reload_engine, &paths, &names, cfg, &device, true)?;
    drop(reload_engine);
    // Baseline (b): the prefetching pipeline, one prompt at a time.
    let (serial, texts_serial) = run_plain(&engine, &paths, &names, cfg, &device, false)?;

    Ok(DemoReport {
        models: names.iter().cloned().zip(sizes).collect(),
        device_budget: budget,
        steps: rows,
        pipeline,
        reload,
        serial,
        outputs_agree: texts_pipeline == texts_reload && texts_pipeline == texts_serial,
        final_texts: texts_pipeline.last().cloned().unwrap_or_default(),
    })
}

/// An engine for one strategy of the demo. Its pinned arena gives every weight set a slab of
/// the set's own size (instead of the default 256 MiB slabs): `release` unpins what it frees,
/// so with default slabs the reload baseline would re-pin 256 MiB for a 10 MB model at every
/// step, a cost of our defaults rather than of reloading (a pipeline that reloads today pins
/// nothing). Both strategies use the same arena settings.
fn demo_engine(backend: &SharedBackend, swap: &SwapConfig) -> Result<SwapEngine> {
    let arena = PinnedArena::new(
        backend.clone(),
        ArenaConfig {
            budget: swap.host_budget,
            slab_size: SLAB_GRANULE,
            ..ArenaConfig::default()
        },
    )?;
    SwapEngine::with_arena(backend.clone(), arena, swap.clone())
}

/// A baseline run: `reload` re-opens each model directory and reloads its weights from disk at
/// every step (batched, no prefetch); otherwise prefetching as the pipeline does, but one
/// prompt at a time.
fn run_plain(
    engine: &SwapEngine,
    paths: &[PathBuf],
    names: &[String],
    cfg: &DemoConfig,
    device: &candle_core::Device,
    reload: bool,
) -> Result<(RunTotals, Vec<Vec<String>>)> {
    let opts = GenerateOptions {
        max_new_tokens: cfg.max_new_tokens,
        ..GenerateOptions::default()
    };
    let mut prompts = cfg.prompts.clone();
    let mut texts = Vec::new();
    let (mut switch, mut tokens) = (Duration::ZERO, 0usize);
    let start = Instant::now();
    for step in 0..cfg.cycles * paths.len() {
        let k = step % paths.len();
        let t = Instant::now();
        let dir = ModelDir::open(Path::new(&paths[k]))?;
        let guard = engine.acquire(&names[k])?;
        if !reload {
            engine.prefetch(&names[(step + 1) % paths.len()])?;
        }
        switch += t.elapsed();
        let model = load_model(&dir, &guard, device)?;
        let out = if reload {
            generate_text(&dir, &model, &prompts, &opts)?
        } else {
            let mut v = Vec::with_capacity(prompts.len());
            for p in &prompts {
                v.extend(generate_text(&dir, &model, std::slice::from_ref(p), &opts)?);
            }
            v
        };
        drop(guard);
        if reload {
            let t = Instant::now();
            engine.release(&names[k])?;
            switch += t.elapsed();
        }
        tokens += out.iter().map(|g| g.token_ids.len()).sum::<usize>();
        prompts = out.into_iter().map(|g| g.text).collect();
        texts.push(prompts.clone());
    }
    Ok((
        RunTotals {
            total_s: start.elapsed().as_secs_f64(),
            switch_s: switch.as_secs_f64(),
            tokens,
        },
        texts,
    ))
}

impl DemoReport {
    /// The step table and the summary, as the CLI prints them.
    pub fn summary(&self) -> String {
        let p = &self.pipeline;
        let mut s = String::new();
        let line = |name: &str, r: &RunTotals| {
            format!(
                "  {name:<44} {:>8.1} ms total {:>8.1} ms switching {:>7.0} tok/s\n",
                r.total_s * 1e3,
                r.switch_s * 1e3,
                r.tokens as f64 / r.total_s.max(1e-9)
            )
        };
        s += &line("pipeline: batched, prefetch next model", p);
        s += &line(
            "baseline: unload + reload from disk each step",
            &self.reload,
        );
        s += &line(
            "baseline: one prompt at a time (with prefetch)",
            &self.serial,
        );
        s += &format!(
            "  pipeline vs reload: {:.2}x faster in total, {:.1}x less time switching models\n",
            self.reload.total_s / p.total_s.max(1e-9),
            self.reload.switch_s / p.switch_s.max(1e-9),
        );
        s += &format!(
            "  pipeline vs one prompt at a time: {:.2}x faster\n",
            self.serial.total_s / p.total_s.max(1e-9)
        );
        s += &format!(
            "  outputs of the three runs agree: {}\n",
            if self.outputs_agree { "yes" } else { "NO" }
        );
        s
    }
}
