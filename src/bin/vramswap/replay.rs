//! `vramswap replay`: a trace through the caching allocator.

use std::path::PathBuf;
use std::process::ExitCode;

use vramswap::alloc::trace::{read_trace, write_trace};
use vramswap::alloc::{
    replay, transformer_trace, AllocatorConfig, CachingAllocator, TransformerShape,
};
use vramswap::backend::SharedBackend;
use vramswap::{Error, Result};

/// Arguments of `replay`.
#[derive(clap::Args)]
pub struct Args {
    /// Trace file: JSON lines of {"op":"alloc","id":N,"size":BYTES,"stream":S},
    /// {"op":"free","id":N}, {"op":"record_stream","id":N,"stream":S}.
    #[arg(required_unless_present = "generate", conflicts_with = "generate")]
    trace: Option<PathBuf>,
    /// Replay a generated transformer trace instead: small, mixed or long.
    #[arg(long, value_name = "SHAPE")]
    generate: Option<String>,
    /// With --generate, also write the trace to this file.
    #[arg(long, value_name = "FILE", requires = "generate")]
    write: Option<PathBuf>,
    /// Allocator configuration (`key:value,...`); defaults to VRAMSWAP_ALLOC_CONF.
    #[arg(long, value_name = "CONF")]
    alloc_conf: Option<String>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Draw allocated and reserved bytes over the ops into this SVG file.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
}

pub fn run(b: SharedBackend, args: &Args) -> Result<ExitCode> {
    let (ops, title) = match (&args.trace, &args.generate) {
        (Some(path), _) => (read_trace(path)?, path.display().to_string()),
        (None, Some(name)) => {
            let shape = TransformerShape::preset(name).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "unknown trace shape `{name}` (known: small, mixed, long)"
                ))
            })?;
            let ops = transformer_trace(&shape);
            if let Some(w) = &args.write {
                std::fs::write(w, write_trace(&ops)).map_err(|source| Error::Io {
                    path: w.clone(),
                    source,
                })?;
            }
            let numbered = ops
                .into_iter()
                .enumerate()
                .map(|(i, o)| (i + 1, o))
                .collect();
            (numbered, format!("transformer trace `{name}`"))
        }
        (None, None) => return Err(Error::InvalidArgument("no trace given".into())),
    };
    let config = match &args.alloc_conf {
        Some(c) => AllocatorConfig::parse(c)?,
        None => AllocatorConfig::from_env()?,
    };
    let alloc = CachingAllocator::new(b, config)?;
    let report = replay(&alloc, &ops)?;
    if let Some(path) = &args.svg {
        std::fs::write(path, report.chart(&title).render()).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("serialisable")
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    println!("trace            {title}");
    println!("ops              {}", report.ops);
    println!(
        "peak allocated   {:.1} MiB",
        mib(report.peak_allocated_bytes)
    );
    println!(
        "peak reserved    {:.1} MiB",
        mib(report.peak_reserved_bytes)
    );
    println!(
        "fragmentation    {:.3} (peak reserved / peak allocated)",
        report.fragmentation
    );
    println!("backend allocs   {}", report.backend_allocs);
    println!(
        "cache hit rate   {:.1} % ({} hits, {} misses)",
        100.0 * report.cache_hit_rate,
        report.cache_hits,
        report.cache_misses
    );
    println!("ops per second   {:.0}", report.ops_per_sec);
    Ok(ExitCode::SUCCESS)
}
