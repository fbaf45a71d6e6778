//! `vramswap load PATH`: loads a checkpoint into a pinned arena, with a progress bar, and
//! reports the time and throughput.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use vramswap::arena::{ArenaConfig, PinnedArena, SlabSource};
use vramswap::backend::SharedBackend;
use vramswap::load::{self, LoadOptions, LoadProgress};
use vramswap::weights::DType;
use vramswap::Result;

/// How slabs are pinned.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Source {
    /// The backend's pinned allocation.
    HostAlloc,
    /// An anonymous mapping, pre-faulted by several threads, then registered.
    MmapRegister,
}

/// Arguments of `load`.
#[derive(clap::Args)]
pub struct Args {
    /// A .safetensors file, a model.safetensors.index.json, or a model directory.
    path: PathBuf,
    /// Cast F32/F16/BF16 tensors to this type while loading: f32, f16 or bf16.
    #[arg(long, value_parser = cast_dtype)]
    cast: Option<DType>,
    /// Register the mapped files read-only instead of copying them into the arena.
    #[arg(long)]
    direct: bool,
    /// Copy threads, 1 to 256 (`load::MAX_LOAD_THREADS`; default: up to 8, one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// How the arena pins its slabs (default: host-alloc, or as `VRAMSWAP_ARENA` says).
    #[arg(long, value_enum)]
    source: Option<Source>,
    /// Host budget of the arena: bytes, or a size such as `24GiB` or `1.5GB` (default: none, or
    /// as `VRAMSWAP_ARENA` says).
    #[arg(long, value_parser = crate::size_bytes)]
    budget: Option<u64>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Loads shorter than this show no progress bar.
const BAR_AFTER: Duration = Duration::from_millis(300);

pub fn run(backend: SharedBackend, args: &Args) -> Result<ExitCode> {
    let mut config = ArenaConfig::from_env()?;
    if args.budget.is_some() {
        config.budget = args.budget;
    }
    match args.source {
        Some(Source::HostAlloc) => config.source = SlabSource::HostAlloc,
        Some(Source::MmapRegister) => config.source = SlabSource::MmapRegister,
        None => {}
    }
    let arena = PinnedArena::new(backend, config)?;
    let bar: Arc<OnceLock<ProgressBar>> = Arc::new(OnceLock::new());
    let b2 = bar.clone();
    // The bar is drawn on stderr, so `--json` keeps stdout clean; it shows on a terminal only.
    let quiet = args.json && !std::io::stderr().is_terminal();
    let progress = move |p: LoadProgress| {
        if quiet || p.elapsed < BAR_AFTER {
            return;
        }
        let pb = b2.get_or_init(|| {
            let pb = ProgressBar::new(p.bytes_total);
            let style = ProgressStyle::with_template(
                "{elapsed_precise} [{wide_bar}] {decimal_bytes}/{decimal_total_bytes} {decimal_bytes_per_sec}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            pb.set_style(style.progress_chars("=> "));
            pb
        });
        pb.set_position(p.bytes_done);
    };
    let mut opts = LoadOptions {
        cast: args.cast,
        direct: args.direct,
        progress: Some(Arc::new(progress)),
        ..Default::default()
    };
    if let Some(t) = args.threads {
        opts.threads = t.max(1);
    }
    let started = Instant::now();
    let result = load::load(&args.path, &arena, &opts);
    if let Some(pb) = bar.get() {
        pb.finish_and_clear();
    }
    let weights = result?;
    let took = started.elapsed();
    let bytes = weights.total_bytes();
    let gbs = bytes as f64 / took.as_secs_f64().max(1e-9) / 1e9;
    let stats = arena.stats();
    // The arena is this command's own, so every slab was pinned inside `took`: a cost paid once
    // per arena in a long-lived process, not per load. Report the copy apart from it.
    let copy = took.saturating_sub(stats.pin_time);
    let copy_gbs = bytes as f64 / copy.as_secs_f64().max(1e-9) / 1e9;
    if args.json {
        let v = serde_json::json!({
            "path": args.path,
            "tensors": weights.desc().tensors.len(),
            "bytes": bytes,
            "seconds": took.as_secs_f64(),
            "gb_per_s": gbs,
            "pin_seconds": stats.pin_time.as_secs_f64(),
            "copy_gb_per_s": copy_gbs,
            "direct": weights.is_direct(),
            "arena": stats,
        });
        let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
        s.push('\n');
        return crate::print(&s);
    }
    let how = if weights.is_direct() {
        "registered read-only (direct)".to_string()
    } else {
        format!(
            "into the pinned arena ({} slab(s), {} pinned in {:.3} s)",
            stats.slabs,
            crate::human(stats.pinned_bytes),
            stats.pin_time.as_secs_f64()
        )
    };
    let rate = if weights.is_direct() || stats.pin_time.is_zero() {
        format!("{gbs:.2} GB/s")
    } else {
        format!(
            "{gbs:.2} GB/s with the one-time pinning, {copy_gbs:.2} GB/s without (what each \
             further load into a pinned arena costs)"
        )
    };
    crate::print(&format!(
        "loaded {} tensors, {} {how} in {:.3} s: {rate}\n",
        weights.desc().tensors.len(),
        crate::human(bytes),
        took.as_secs_f64(),
    ))
}

/// Parses `--cast`: the three floating types a load converts between, any case.
fn cast_dtype(s: &str) -> std::result::Result<DType, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        _ => Err(format!(
            "`{s}` is not a type --cast converts to; valid types: f32, f16, bf16"
        )),
    }
}
